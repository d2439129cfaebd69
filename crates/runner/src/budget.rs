//! The runner's side of the budget gate (`artifacts::budget` holds the
//! ledger and its protocol): before every real agent attempt a reservation,
//! after it the settlement with the cost the agent reported.
//!
//! Simulated agents are never charged: without `ENABLE_REAL_CLI=1` the gate
//! admits everything and never opens the database.
//!
//! When the ledger cannot be written (disk full, a lock held past the busy
//! timeout) and a limit is set, the attempt is refused as retryable
//! (`budget_unavailable`): running unmetered would break the operator's cap.
//! Without limits the attempt goes ahead and the problem is logged.

use artifacts::budget::{BudgetConfig, Charge, Decision, Ledger, OverBudget, Reservation};
use contracts::{ErrorInfo, Job, Status, Step};
use serde_json::{Value, json};
use std::sync::Mutex;
use workers::StepOutcome;

/// The error code of a refused attempt.
pub const EXCEEDED: &str = "budget_exceeded";

/// What the gate says about one attempt.
pub enum Admit {
    /// Run it; settle the reservation (if any) afterwards.
    Go(Option<Reservation>),
    /// Do not run it: this is the attempt's outcome (not retryable, or
    /// retryable when the ledger is unavailable).
    Refuse(Box<StepOutcome>),
    /// Do not run it: send the job back to `pending/` until the next UTC day.
    Defer(Deferred),
}

/// A job deferred by the gate (carried out of the step as an error value,
/// so the job's state machine handles it in one place).
#[derive(Debug)]
pub struct Deferred {
    /// Unix seconds before which the job is not claimed again.
    pub until: u64,
    /// The attempt number that was refused (it never ran).
    pub attempt: u32,
    pub message: String,
}

impl std::fmt::Display for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "deferred until the next UTC day: {}", self.message)
    }
}

impl std::error::Error for Deferred {}

/// The gate of one runner process.
pub struct Gate {
    cfg: BudgetConfig,
    runner_id: String,
    /// Opened on first use; `None` in simulation.
    ledger: Option<Mutex<Option<Ledger>>>,
}

impl Gate {
    /// A gate for real agents (`real`) or one that admits everything.
    /// With real agents the ledger is opened (created, migrated) now, so a
    /// broken `STATE_DB_PATH` is reported at start-up.
    pub fn new(cfg: BudgetConfig, runner_id: &str, real: bool) -> Self {
        let ledger = real.then(|| {
            Mutex::new(match Ledger::open(&cfg.db_path) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::error!(error = %e, "budget ledger unavailable; will retry on the next attempt");
                    None
                }
            })
        });
        Self {
            cfg,
            runner_id: runner_id.to_owned(),
            ledger,
        }
    }

    /// Step 1: asks the ledger for one call of `step.agent`.
    pub fn admit(&self, job: &Job, step: &Step, attempt: u32) -> Admit {
        let Some(slot) = &self.ledger else {
            return Admit::Go(None);
        };
        let now = fsqueue::clock::now_unix();
        let charge = Charge {
            agent: &step.agent,
            project: job.project_id.as_deref(),
            job_id: job.job_id.as_str(),
            step_id: step.step_id.as_str(),
            attempt,
            runner_id: &self.runner_id,
            now,
        };
        let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            match Ledger::open(&self.cfg.db_path) {
                Ok(l) => *guard = Some(l),
                Err(e) => return self.unavailable(&e.to_string()),
            }
        }
        let Some(ledger) = guard.as_ref() else {
            return self.unavailable("not open");
        };
        match ledger.reserve(&self.cfg, &charge) {
            Ok(Decision::Granted(r)) => Admit::Go(Some(r)),
            Ok(Decision::Refused { day, hit }) => {
                let message = hit.message(&day);
                let action = self.cfg.action;
                metrics::counter!("orch_budget_refusals_total", "agent" => step.agent.clone(), "action" => action.as_str())
                    .increment(1);
                tracing::warn!(job_id = %job.job_id, step_id = %step.step_id, agent = %step.agent, action = action.as_str(), %message, "attempt refused: over budget");
                match action {
                    OverBudget::Fail => {
                        let mut e = ErrorInfo::new(EXCEEDED, message);
                        e.details.insert("day".into(), json!(day));
                        e.details.insert("action".into(), json!("fail"));
                        let mut o = StepOutcome::failure(Status::Failed, e);
                        o.logs = "[orch] attempt refused by the budget gate; the agent was not started\n".into();
                        Admit::Refuse(Box::new(o))
                    }
                    OverBudget::Defer => Admit::Defer(Deferred {
                        until: fsqueue::clock::next_utc_midnight(now),
                        attempt,
                        message,
                    }),
                }
            }
            Err(e) => self.unavailable(&e.to_string()),
        }
    }

    fn unavailable(&self, why: &str) -> Admit {
        if !self.cfg.limited() {
            tracing::warn!(
                error = why,
                "budget ledger unavailable; no limit is set, so the attempt runs uncounted"
            );
            return Admit::Go(None);
        }
        tracing::error!(
            error = why,
            "budget ledger unavailable; refusing the attempt (retryable)"
        );
        Admit::Refuse(Box::new(StepOutcome::failure(
            Status::Retryable,
            ErrorInfo::new(
                "budget_unavailable",
                format!(
                    "the budget ledger could not be updated, so the attempt was not started: {why}"
                ),
            ),
        )))
    }

    /// Step 3: charges what the attempt cost. The cost counts as known when
    /// the agent reported it or a price table computed it; otherwise the
    /// estimate stays charged.
    pub fn settle(&self, r: Option<Reservation>, outcome: &StepOutcome) {
        let (Some(r), Some(slot)) = (r, &self.ledger) else {
            return;
        };
        let known = matches!(
            outcome.metrics.get("cost_source").and_then(Value::as_str),
            Some("agent" | "price_table")
        );
        let actual = if known {
            outcome
                .metrics
                .get("cost_usd")
                .and_then(Value::as_f64)
                .map(artifacts::budget::usd_to_micros)
        } else {
            None
        };
        let guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ledger) = guard.as_ref() else { return };
        match ledger.settle(&r, actual) {
            Ok(charged) => tracing::debug!(
                reservation = r.id,
                charged_usd = artifacts::budget::micros_to_usd(charged),
                "attempt settled"
            ),
            // The estimate stays reserved: the ledger errs on the side of
            // the limit.
            Err(e) => {
                tracing::error!(error = %e, reservation = r.id, "could not settle a budget reservation; its estimate stays charged")
            }
        }
    }
}

/// Whether a step result is a budget refusal (the job then ends, whatever
/// the step's `on_failure` says: every further step would be refused too).
pub fn refused(result: &contracts::ResultDoc) -> bool {
    result.error.as_ref().is_some_and(|e| e.code == EXCEEDED)
}
