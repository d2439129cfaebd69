//! Between a claim and its run: is this job for us?
//!
//! * Operator requests written for earlier claims of the job (an unlock's
//!   cancel, a cancel that lost a race) are removed: they can never apply to
//!   this claim (see `fsqueue::control`).
//! * A job naming an agent this runner's registry does not have (a custom
//!   agent from another runner's `AGENTS_CONFIG`) is not this runner's to
//!   judge: it goes back to `pending/` at once, for a runner that knows the
//!   agent, and this runner passes over it for [`PASS_OVER`] instead of
//!   claiming it again in a loop. It is never quarantined or failed here.
//!   A job whose structure is broken is left to the run, which quarantines
//!   it.

use crate::exec::Ctx;
use fsqueue::{Claim, Claimer, State};
use std::time::Duration;

/// How long a runner leaves a job it cannot run to other runners.
pub const PASS_OVER: Duration = Duration::from_secs(30);

/// Structure-only validation of a job file (parse and shape, no agent
/// registry): what start-up recovery quarantines by.
pub fn validate_structure(bytes: &[u8]) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    contracts::validate::validate_job_structure(&v)
        .map(|_| ())
        .map_err(|v| v.to_string())
}

/// The agents a well-formed job document names that are not in `known`
/// (empty for a malformed document: the run quarantines it).
pub fn unknown_agents(doc: &[u8], known: &[&str]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(doc) else {
        return Vec::new();
    };
    let Ok(job) = contracts::validate::validate_job_structure(&v) else {
        return Vec::new();
    };
    let mut out: Vec<String> = job
        .steps
        .iter()
        .map(|s| s.agent.clone())
        .filter(|a| !known.contains(&a.as_str()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether the claimed job should run here. When not, it has been given
/// back (or, if that failed, left for the reaper) and is passed over.
pub fn admit(ctx: &Ctx, claimer: &Claimer, claim: &Claim) -> bool {
    let loc = &claim.loc;
    let job_id = &loc.entry.job_id;
    let cleared = ctx
        .queue
        .clear_requests(job_id, Some(loc.entry.attempt.saturating_sub(1)));
    if cleared > 0 {
        tracing::info!(
            job_id,
            cleared,
            "removed operator requests left from earlier claims"
        );
    }
    let unknown = unknown_agents(&claim.doc, &ctx.known_agents());
    if unknown.is_empty() {
        return true;
    }
    claimer.pass_over(job_id, PASS_OVER);
    metrics::counter!("orch_jobs_passed_over_total").increment(1);
    match ctx.queue.move_to(loc, State::Pending, &loc.entry.unowned()) {
        Ok(_) => tracing::warn!(
            job_id,
            agents = %unknown.join(", "),
            "the job names agents this runner does not know; left in pending/ for a runner that knows them"
        ),
        // Not renewed by us, the claim expires and the reaper requeues it.
        Err(e) => tracing::warn!(
            job_id,
            error = %e,
            "could not give back a job naming agents this runner does not know; its lease will expire"
        ),
    }
    false
}
