//! The durable callback outbox: `callback_url` deliveries that survive a
//! runner's death.
//!
//! A runner that ends (or parks) a job with a `callback_url` first writes
//! the delivery to `outbox/<job_id>~<attempt>.json` under the queue root
//! (durably, *before* the queue move: the exact body, the delivery id, the
//! queue state and claim attempt that commit the outcome, the attempts made
//! so far and when the next is due), then moves the job. Every runner scans
//! the outbox (at once when one of its jobs ends, else every second) and
//! delivers what is due:
//!
//! * **Committed only**: an entry is sent only while the queue shows its
//!   outcome (the job in the entry's state under the entry's attempt). An
//!   entry whose job is still running under that attempt waits (its move is
//!   under way); one whose job moved on (reaped back to pending, retried,
//!   unlocked) is discarded, because that outcome never happened or is no
//!   longer the job's: the next outcome brings its own entry.
//! * **One sender at a time**: the sender holds an exclusive `flock` on the
//!   entry while it attempts (and checks the locked file is still the one
//!   at the path), so runners sharing the queue never send the same entry
//!   concurrently.
//! * **Retries survive restarts**: after each failed attempt the entry is
//!   rewritten with the attempt recorded and the next one scheduled
//!   (`callback::ATTEMPTS` in all, exponential backoff); a runner killed
//!   with SIGKILL leaves it for the next scan of any runner. Delivery is at
//!   least once; the body, `X-Orch-Delivery` and the signature rules are
//!   the same for every attempt, so receivers can deduplicate.
//! * When delivered, refused for good or out of attempts, the outcome goes
//!   to `artifacts/<job_id>/callback.json` and the entry is removed.

use crate::callback::{self, Settings};
use contracts::{ResultDoc, Status};
use fsqueue::{Queue, State};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The outbox directory under the queue root.
pub const OUTBOX_DIR: &str = "outbox";
/// How often the outbox is scanned without a nudge.
const SCAN_EVERY: Duration = Duration::from_secs(1);
/// An entry whose job cannot be found for this long is dropped.
const LOST_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Largest entry file read.
const MAX_ENTRY_BYTES: u64 = 16 * 1024 * 1024;

/// One delivery as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    job_id: String,
    /// The claim attempt whose outcome this is.
    attempt: u32,
    /// The queue state that commits the outcome.
    state: String,
    /// The claim's file (`running/<name>`) and the file that commits the
    /// outcome (`<state>/<name>`), relative to the queue root: the commit
    /// check is two `stat`s, not a search.
    #[serde(default)]
    running: String,
    #[serde(default)]
    committed: String,
    url: String,
    job_status: Status,
    delivery_id: String,
    /// The exact body (the job's result.json), sent byte for byte.
    body: String,
    attempts: Vec<Value>,
    created_at: String,
    /// Unix milliseconds before which no attempt is made.
    next_at_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The outbox of one runner process (all runners share the directory).
pub struct Outbox {
    queue: Queue,
    store: artifacts::ArtifactStore,
    settings: Settings,
    dir: PathBuf,
    wake: tokio::sync::Notify,
    /// Entries being attempted by this process, and entries to leave alone
    /// until a time (their job's move is still under way).
    busy: Mutex<HashSet<PathBuf>>,
    later: Mutex<HashMap<PathBuf, Instant>>,
    /// Entries this process wrote, for `--drain` to wait on.
    mine: Mutex<HashSet<PathBuf>>,
    tasks: Mutex<tokio::task::JoinSet<()>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("dir", &self.dir).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Outbox {
    pub fn open(
        queue: Queue,
        store: artifacts::ArtifactStore,
        settings: Settings,
    ) -> Result<Self, fsqueue::durable::DurableError> {
        let dir = queue.internal_dir(OUTBOX_DIR);
        fsqueue::durable::create_dir_all(&dir)?;
        Ok(Self {
            queue,
            store,
            settings,
            dir,
            wake: tokio::sync::Notify::new(),
            busy: Mutex::default(),
            later: Mutex::default(),
            mine: Mutex::default(),
            tasks: Mutex::new(tokio::task::JoinSet::new()),
        })
    }

    /// Durably records the delivery of `result` (the outcome of claim
    /// `attempt`, committed by the job reaching `state`). Call before the
    /// queue move; [`Outbox::discard`] it if the move fails.
    pub fn stage(
        &self,
        claim: &fsqueue::Located,
        state: State,
        url: &str,
        result: &ResultDoc,
    ) -> Result<PathBuf, crate::error::AttemptError> {
        let attempt = claim.entry.attempt;
        let body = serde_json::to_string_pretty(result)?;
        let e = Entry {
            job_id: result.job_id.clone(),
            attempt,
            state: state.dir_name().to_owned(),
            running: format!("{}/{}", State::Running.dir_name(), claim.entry.file_name()),
            committed: format!("{}/{}", state.dir_name(), claim.entry.unowned().file_name()),
            url: url.to_owned(),
            job_status: result.status,
            delivery_id: contracts::ids::random_hex32(),
            body,
            attempts: Vec::new(),
            created_at: contracts::now_rfc3339(),
            next_at_ms: 0,
        };
        let path = self.dir.join(format!("{}~{attempt}.json", result.job_id));
        fsqueue::durable::write_file(&path, &serde_json::to_vec(&e)?)?;
        fsqueue::fault::point("runner.callback.staged");
        lock(&self.mine).insert(path.clone());
        Ok(path)
    }

    /// Drops a staged delivery whose outcome was not committed.
    pub fn discard(&self, path: &Path) {
        let _ = fsqueue::durable::remove_file(path);
        lock(&self.mine).remove(path);
    }

    /// Asks the worker to scan now (a job just ended): entries put off
    /// because their move was under way are looked at again at once.
    pub fn kick(&self) {
        lock(&self.later).clear();
        self.wake.notify_one();
    }

    /// The worker: scans and sends until `stop`.
    pub async fn run(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            self.scan();
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(SCAN_EVERY) => {}
            }
        }
    }

    /// Waits for attempts in flight up to `limit`; with `all`, also for
    /// every entry this process wrote to be settled (delivered, given up or
    /// discarded), scanning meanwhile.
    pub async fn drain(self: &Arc<Self>, limit: Duration, all: bool) {
        let deadline = Instant::now() + limit;
        loop {
            let pending_mine = {
                let mut m = lock(&self.mine);
                m.retain(|p| p.exists());
                m.len()
            };
            let in_flight = lock(&self.busy).len();
            if in_flight == 0 && (!all || pending_mine == 0) {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    in_flight,
                    waiting = pending_mine,
                    "callback deliveries left in the outbox at shutdown (any runner will send them)"
                );
                return;
            }
            if all {
                self.scan();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn scan(self: &Arc<Self>) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = Instant::now();
        lock(&self.later).retain(|_, t| *t > now);
        let mut set = lock(&self.tasks);
        while set.try_join_next().is_some() {}
        for ent in rd.flatten() {
            let Ok(name) = ent.file_name().into_string() else {
                continue;
            };
            if fsqueue::durable::is_temp_name(&name) || !name.ends_with(".json") {
                continue;
            }
            let path = ent.path();
            if lock(&self.later).contains_key(&path) || !lock(&self.busy).insert(path.clone()) {
                continue;
            }
            let me = self.clone();
            set.spawn(async move {
                me.attempt(&path).await;
                lock(&me.busy).remove(&path);
            });
        }
    }

    fn later(&self, path: &Path, wait: Duration) {
        lock(&self.later).insert(path.to_path_buf(), Instant::now() + wait);
    }

    /// One attempt on one entry, if it is due, committed and not locked by
    /// another sender.
    async fn attempt(&self, path: &Path) {
        let Ok(file) = std::fs::File::open(path) else {
            return;
        };
        let Ok(held) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            self.later(path, SCAN_EVERY);
            return;
        };
        let same = std::fs::symlink_metadata(path)
            .ok()
            .zip(held.metadata().ok())
            .is_some_and(|(a, b)| a.ino() == b.ino() && a.dev() == b.dev() && a.is_file());
        if !same || held.metadata().map(|m| m.len()).unwrap_or(0) > MAX_ENTRY_BYTES {
            return;
        }
        let Some(mut e) = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Entry>(&b).ok())
        else {
            tracing::warn!(file = %path.display(), "unreadable outbox entry; removed");
            let _ = fsqueue::durable::remove_file(path);
            return;
        };
        let due = e.next_at_ms.saturating_sub(now_ms());
        if due > 0 {
            self.later(path, Duration::from_millis(due));
            return;
        }
        match self.committed(&e) {
            Commit::Yes => {}
            Commit::NotYet => {
                self.later(path, SCAN_EVERY);
                return;
            }
            Commit::Never(why) => {
                tracing::info!(job_id = %e.job_id, attempt = e.attempt, why, "callback dropped: its outcome is not the job's");
                let _ = fsqueue::durable::remove_file(path);
                return;
            }
        }
        let n = e.attempts.len() as u32 + 1;
        let at = contracts::now_rfc3339();
        let out = callback::post(
            &self.settings,
            &e.url,
            &e.job_id,
            e.job_status,
            &e.delivery_id,
            e.body.as_bytes(),
        )
        .await;
        fsqueue::fault::point("runner.callback.delivered");
        let (record, settled, delivered, error) = match out {
            callback::Posted::Delivered(code) => (
                json!({"attempt": n, "at": at, "http_status": code}),
                true,
                true,
                None,
            ),
            callback::Posted::Answered { code, retry } => (
                json!({"attempt": n, "at": at, "http_status": code}),
                !retry,
                false,
                Some(format!("the receiver answered HTTP {code}")),
            ),
            callback::Posted::Failed { error, retry } => (
                json!({"attempt": n, "at": at, "error": error}),
                !retry,
                false,
                Some(error),
            ),
        };
        e.attempts.push(record);
        if settled || n >= callback::ATTEMPTS {
            self.settle(&e, delivered, error);
            let _ = fsqueue::durable::remove_file(path);
            lock(&self.mine).remove(path);
        } else {
            e.next_at_ms = now_ms() + callback::backoff(n).as_millis() as u64;
            match serde_json::to_vec(&e) {
                Ok(b) => {
                    if let Err(err) = fsqueue::durable::write_file(path, &b) {
                        tracing::warn!(job_id = %e.job_id, error = %err, "cannot record the callback attempt; it will be repeated");
                    }
                }
                Err(err) => {
                    tracing::warn!(job_id = %e.job_id, error = %err, "cannot encode the outbox entry")
                }
            }
            self.later(path, callback::backoff(n));
        }
        drop(held);
    }

    /// A queue path named by an entry, if it is one (`<state>/<name>` of
    /// this job and attempt; anything else is ignored).
    fn queue_path(&self, e: &Entry, rel: &str) -> Option<PathBuf> {
        let (dir, name) = rel.split_once('/')?;
        let st = State::parse(dir)?;
        let parsed = fsqueue::Entry::parse(name)?;
        (parsed.job_id == e.job_id && parsed.attempt == e.attempt)
            .then(|| self.queue.dir(st).join(name))
    }

    fn committed(&self, e: &Entry) -> Commit {
        // The claim's file first: once it is gone it never comes back, so
        // if the outcome's file is not there after it, it never will be.
        if let (Some(running), Some(done)) = (
            self.queue_path(e, &e.running),
            self.queue_path(e, &e.committed),
        ) {
            if running.exists() {
                return Commit::NotYet;
            }
            if done.exists() {
                return Commit::Yes;
            }
        }
        let want = State::parse(&e.state);
        match self.queue.find(&e.job_id) {
            Ok(Some(loc)) if Some(loc.state) == want && loc.entry.attempt == e.attempt => {
                Commit::Yes
            }
            Ok(Some(loc)) if loc.state == State::Running && loc.entry.attempt == e.attempt => {
                Commit::NotYet
            }
            Ok(Some(loc)) => Commit::Never(format!(
                "the job is {} under attempt {}",
                loc.state, loc.entry.attempt
            )),
            Ok(None) | Err(_) => {
                let old = jiff::Timestamp::now()
                    .since(
                        e.created_at
                            .parse::<jiff::Timestamp>()
                            .unwrap_or_else(|_| jiff::Timestamp::now()),
                    )
                    .ok()
                    .and_then(|s| s.total(jiff::Unit::Second).ok())
                    .is_some_and(|s| s > LOST_AFTER.as_secs_f64());
                if old {
                    Commit::Never("the job is gone".into())
                } else {
                    Commit::NotYet
                }
            }
        }
    }

    /// Records the delivery's outcome in the job's artifacts.
    fn settle(&self, e: &Entry, delivered: bool, error: Option<String>) {
        let record = json!({
            "url": callback::redact_url(&e.url),
            "job_status": e.job_status.as_str(),
            "delivery_id": e.delivery_id,
            "delivered": delivered,
            "error": error,
            "attempts": e.attempts,
            "finished_at": contracts::now_rfc3339(),
        });
        if delivered {
            metrics::counter!("orch_callbacks_total", "outcome" => "delivered").increment(1);
            tracing::info!(job_id = %e.job_id, status = %e.job_status, "callback delivered");
        } else {
            metrics::counter!("orch_callbacks_total", "outcome" => "failed").increment(1);
            tracing::warn!(job_id = %e.job_id, status = %e.job_status, error = ?record["error"], "callback not delivered");
        }
        let Ok(id) = contracts::JobId::parse(&e.job_id) else {
            return;
        };
        let bytes = serde_json::to_vec_pretty(&record).unwrap_or_default();
        let dir = self.store.job(&id).dir().to_path_buf();
        if let Err(err) = fsqueue::durable::write_file(&dir.join(callback::CALLBACK_JSON), &bytes) {
            tracing::warn!(job_id = %e.job_id, error = %err, "cannot record the callback outcome");
        }
        fsqueue::fault::point("runner.callback.settled");
    }
}

enum Commit {
    Yes,
    NotYet,
    Never(String),
}
