//! Group commit of webhook intakes.
//!
//! Every accepted webhook is a durable job file, and durability is a wait
//! for the disk. Instead of one blocking task (and one wait) per request,
//! requests hand their job to one writer thread; while it is writing a
//! batch, the next requests queue up and are written together as the next
//! batch (`Queue::enqueue_many`: one data barrier and one name barrier per
//! batch). A request is answered only once its own job is durable, so the
//! HTTP contract — 202 only after the file is on disk — is unchanged; what
//! changes is that 32 concurrent requests share two flushes instead of each
//! paying for its own.

use fsqueue::{NewJob, Queue, QueueError, State};
use std::sync::mpsc;
use tokio::sync::oneshot;

/// Most jobs written in one batch; the rest wait for the next.
const MAX_BATCH: usize = 256;

struct Request {
    job_id: String,
    doc: Vec<u8>,
    state: State,
    reply: oneshot::Sender<Result<(), QueueError>>,
}

/// Handle on the writer thread; the thread ends when the last handle is
/// dropped.
pub struct Batcher {
    tx: mpsc::Sender<Request>,
}

impl Batcher {
    pub fn start(queue: Queue) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("orch-intake".into())
            .spawn(move || run(&queue, &rx))?;
        Ok(Self { tx })
    }

    /// Durably enqueues one job; returns once it is on disk (or failed).
    pub async fn enqueue(
        &self,
        job_id: &str,
        doc: Vec<u8>,
        state: State,
    ) -> Result<(), QueueError> {
        let (reply, rx) = oneshot::channel();
        let req = Request {
            job_id: job_id.to_owned(),
            doc,
            state,
            reply,
        };
        let gone = || {
            QueueError::Io(fsqueue::durable::DurableError::new(
                "enqueue",
                "orch-intake",
                std::io::Error::other("the intake writer failed; the job was not stored"),
            ))
        };
        self.tx.send(req).map_err(|_| gone())?;
        rx.await.unwrap_or_else(|_| Err(gone()))
    }
}

fn run(queue: &Queue, rx: &mpsc::Receiver<Request>) {
    // Each batch: whatever queued up while the previous one was written.
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let jobs: Vec<NewJob<'_>> = batch
            .iter()
            .map(|r| NewJob {
                job_id: &r.job_id,
                doc: &r.doc,
                prio: fsqueue::name::DEFAULT_PRIO,
                state: r.state,
            })
            .collect();
        // A panic here must not take intake down for good: the batch's
        // callers get an error (their reply channels close) and the
        // writer goes on with the next batch.
        let Ok(results) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| queue.enqueue_many(&jobs)))
        else {
            tracing::error!(jobs = batch.len(), "intake writer panicked; batch refused");
            continue;
        };
        metrics::histogram!("orch_gateway_intake_batch_size").record(batch.len() as f64);
        for (req, res) in batch.into_iter().zip(results) {
            // A client that went away no longer waits for its answer; its
            // job is durable all the same.
            let _ = req.reply.send(res.map(drop));
        }
    }
}
