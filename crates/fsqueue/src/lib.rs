//! The file queue of orch: a directory protocol in which a job is one JSON
//! file that moves between state directories by atomic rename, plus the one
//! durable-write primitive every other crate publishes through.
//!
//! Layout under the queue root (`QUEUE_ROOT`, default `var/queue`):
//!
//! ```text
//! pending/ awaiting_approval/ running/ done/ failed/   job files (see `name`)
//! tmp/        staging for enqueues (files appear in pending/ by rename)
//! corrupt/    quarantined files, each with a `.reason` beside it
//! ids/        one empty file per job id ever enqueued: exactly-once ids
//! runners/    `<id>.lock` (flock held by a live runner), `<id>.json` heartbeat
//! control/    operator requests to the runner of one claim (`<job_id>~<attempt>.cancel`)
//! outbox/     callback deliveries waiting to be sent (the runner's `outbox`)
//! schedules/  the schedulers' per-schedule state (`<schedule_id>.json`)
//! ```

pub mod claim;
pub mod clock;
pub mod commit;
pub mod control;
pub mod durable;
pub mod fault;
pub mod fence;
pub mod lease;
pub mod name;
pub mod notify;
pub mod queue;
pub mod recover;
pub mod signal;
pub mod tidy;

pub use claim::{Claim, Claimer};
pub use lease::{ReapOutcome, Reaper, RunnerLock};
pub use name::Entry;
pub use queue::{Located, NewJob, Queue, QueueError, State};
