//! Operator actions on a job — approve, reject, cancel, retry, unlock — as
//! one shared implementation for `orch` and the gateway's job API. Each is a
//! single atomic queue transition; the ones that end a job also record the
//! outcome in its artifacts so `status` and the API tell the same story as
//! the queue.

use crate::ArtifactStore;
use contracts::{Job, JobId, Status};
use fsqueue::{Located, Queue, QueueError, State};

/// What an operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// awaiting_approval → pending; the job resumes where it paused.
    Approve,
    /// awaiting_approval → failed, recorded as `cancelled`.
    Reject,
    /// pending or awaiting_approval → failed as `cancelled`; a running job
    /// is asked to stop (its runner finishes it as `cancelled`).
    Cancel,
    /// failed → pending; resumes at the first unfinished step.
    Retry,
    /// running → failed at once; its runner loses the lease and stops.
    Unlock,
}

impl Action {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "approve" => Self::Approve,
            "reject" => Self::Reject,
            "cancel" => Self::Cancel,
            "retry" => Self::Retry,
            "unlock" => Self::Unlock,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Reject => "reject",
            Self::Cancel => "cancel",
            Self::Retry => "retry",
            Self::Unlock => "unlock",
        }
    }
}

/// What happened.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The job moved; here is where it is now.
    Moved(Located),
    /// The job is running: its runner was asked to cancel it.
    CancelRequested,
}

/// Applies `action` to `job_id`. Errors: `NotFound`, `WrongState` (with the
/// actual and expected states), or I/O. A failure to update the artifacts
/// after a successful move is logged, not returned: the queue is the truth.
pub fn apply(
    queue: &Queue,
    store: &ArtifactStore,
    job_id: &JobId,
    action: Action,
) -> Result<Outcome, QueueError> {
    let id = job_id.as_str();
    let moved = match action {
        Action::Approve => {
            queue.transition(id, &[State::AwaitingApproval], State::Pending, false)?
        }
        Action::Retry => {
            let to = queue.transition(id, &[State::Failed], State::Pending, true)?;
            // Requests written for earlier claims (an unlock's, or a cancel
            // that lost a race) must not reach the next one.
            queue.clear_requests(id, Some(to.entry.attempt));
            to
        }
        Action::Reject => {
            let to = queue.transition(id, &[State::AwaitingApproval], State::Failed, false)?;
            record(
                queue,
                store,
                job_id,
                &to,
                Status::Cancelled,
                "rejected",
                "rejected by an operator",
            );
            to
        }
        Action::Cancel => {
            // A job can move between the transition and the request (a
            // running job reaped back to pending): look again, a few times.
            let mut tries = 0;
            loop {
                tries += 1;
                match queue.transition(
                    id,
                    &[State::Pending, State::AwaitingApproval],
                    State::Failed,
                    false,
                ) {
                    Ok(to) => {
                        record(
                            queue,
                            store,
                            job_id,
                            &to,
                            Status::Cancelled,
                            "cancelled",
                            "cancelled by an operator",
                        );
                        break to;
                    }
                    Err(QueueError::WrongState {
                        actual: State::Running,
                        ..
                    }) => {
                        // The request names the claim seen running: only
                        // that attempt's runner obeys it.
                        if let Some(loc) = queue.find(id)?
                            && loc.state == State::Running
                        {
                            queue.request(&loc, "cancel")?;
                            return Ok(Outcome::CancelRequested);
                        }
                    }
                    Err(QueueError::NotFound { .. }) if tries < 3 => {}
                    Err(e) => return Err(e),
                }
                if tries >= 3 {
                    return Err(QueueError::NotFound {
                        job_id: id.to_owned(),
                    });
                }
            }
        }
        Action::Unlock => {
            let to = queue.transition(id, &[State::Running], State::Failed, false)?;
            // The owner finds its lease gone at its next renewal and stops
            // the agent; the request (for the claim just unlocked, which
            // keeps its attempt number in failed/) makes it notice within a
            // second, and can never stop a later claim.
            let _ = queue.request(&to, "cancel");
            record(
                queue,
                store,
                job_id,
                &to,
                Status::Failed,
                "unlocked",
                "forced to failed by an operator (unlock)",
            );
            to
        }
    };
    Ok(Outcome::Moved(moved))
}

fn record(
    queue: &Queue,
    store: &ArtifactStore,
    job_id: &JobId,
    loc: &Located,
    status: Status,
    code: &str,
    msg: &str,
) {
    let job: Option<Job> = queue
        .read(loc)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let Err(e) = store
        .job(job_id)
        .record_terminal(job.as_ref(), status, code, msg)
    {
        tracing::warn!(job_id = %job_id, error = %e, "job moved, but its artifacts could not be updated");
    }
}

/// Records in its artifacts why a job the reaper gave up on (a poison job,
/// reclaimed more than `RUNNER_MAX_RECLAIMS` times) ended in `failed/`.
/// Requeued outcomes need no record: the next runner resumes them.
pub fn record_reaped(queue: &Queue, store: &ArtifactStore, outcome: &fsqueue::ReapOutcome) {
    if let fsqueue::ReapOutcome::Failed { to, reason, .. } = outcome
        && let Ok(id) = JobId::parse(&to.entry.job_id)
    {
        record(queue, store, &id, to, Status::Failed, "poison_job", reason);
    }
}
