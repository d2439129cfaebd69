//! Operator transitions (`approve`, `reject`, `cancel`, `retry`, `unlock`)
//! and `recover`. Each transition is one atomic queue move with a clear
//! error (exit 3) when the job is not in a state that allows it.

use crate::{CliError, Ctx, print_json};
use contracts::{JobId, Status};
use fsqueue::{Located, State};
use serde_json::json;
use std::time::{Duration, Instant};

fn id(s: &str) -> Result<JobId, CliError> {
    JobId::parse(s).map_err(|e| CliError::invalid(e.to_string()))
}

/// Records a terminal status decided outside a runner in the job's
/// artifacts, so `status` and the API tell the truth.
fn record(ctx: &Ctx, job_id: &JobId, loc: &Located, status: Status, code: &str, msg: &str) {
    let queue = match ctx.queue() {
        Ok(q) => q,
        Err(_) => return,
    };
    let job: Option<contracts::Job> = queue
        .read(loc)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let arts = ctx.store().job(job_id);
    if let Err(e) = arts.record_terminal(job.as_ref(), status, code, msg) {
        eprintln!("warning: the job moved, but its artifacts could not be updated: {e}");
    }
}

pub fn approve(ctx: &Ctx, s: &str) -> Result<u8, CliError> {
    let job_id = id(s)?;
    ctx.queue()?.transition(
        job_id.as_str(),
        &[State::AwaitingApproval],
        State::Pending,
        false,
    )?;
    eprintln!("approved {job_id}: queued to resume where it paused");
    Ok(0)
}

pub fn reject(ctx: &Ctx, s: &str) -> Result<u8, CliError> {
    let job_id = id(s)?;
    let to = ctx.queue()?.transition(
        job_id.as_str(),
        &[State::AwaitingApproval],
        State::Failed,
        false,
    )?;
    record(
        ctx,
        &job_id,
        &to,
        Status::Cancelled,
        "rejected",
        "rejected by an operator",
    );
    eprintln!("rejected {job_id}: it ends as cancelled");
    Ok(0)
}

pub fn cancel(ctx: &Ctx, s: &str) -> Result<u8, CliError> {
    let job_id = id(s)?;
    let queue = ctx.queue()?;
    let loc = queue
        .find(job_id.as_str())?
        .ok_or_else(|| CliError::not_found(format!("no job {job_id}")))?;
    match loc.state {
        State::Pending | State::AwaitingApproval => {
            let to = queue.transition(
                job_id.as_str(),
                &[State::Pending, State::AwaitingApproval],
                State::Failed,
                false,
            )?;
            record(
                ctx,
                &job_id,
                &to,
                Status::Cancelled,
                "cancelled",
                "cancelled by an operator",
            );
            eprintln!("cancelled {job_id}");
            Ok(0)
        }
        State::Running => {
            queue.request(job_id.as_str(), "cancel")?;
            // The owning runner checks requests several times a second.
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if queue
                    .find(job_id.as_str())?
                    .is_some_and(|l| l.state != State::Running)
                {
                    eprintln!("cancelled {job_id}");
                    return Ok(0);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!(
                "cancel of {job_id} requested; its runner has not acted yet (it will when it next checks)"
            );
            Ok(0)
        }
        st => Err(CliError::not_found(format!(
            "job {job_id} is {st}; only pending, awaiting_approval or running jobs can be cancelled"
        ))),
    }
}

pub fn retry(ctx: &Ctx, s: &str) -> Result<u8, CliError> {
    let job_id = id(s)?;
    ctx.queue()?
        .transition(job_id.as_str(), &[State::Failed], State::Pending, true)?;
    eprintln!("re-queued {job_id}: it resumes at its first unfinished step");
    Ok(0)
}

pub fn unlock(ctx: &Ctx, s: &str) -> Result<u8, CliError> {
    let job_id = id(s)?;
    let queue = ctx.queue()?;
    let to = queue.transition(job_id.as_str(), &[State::Running], State::Failed, false)?;
    // The owner finds its lease gone on its next renewal and stops the
    // agent; the request makes it notice sooner.
    let _ = queue.request(job_id.as_str(), "cancel");
    record(
        ctx,
        &job_id,
        &to,
        Status::Failed,
        "unlocked",
        "forced to failed by `orch unlock`",
    );
    eprintln!("unlocked {job_id}: moved to failed");
    Ok(0)
}

pub fn recover(ctx: &Ctx, as_json: bool) -> Result<u8, CliError> {
    let queue = ctx.queue()?;
    let agents: Vec<&str> = contracts::BUILTIN_AGENTS.to_vec();
    let validate = |b: &[u8]| -> Result<(), String> {
        let v: serde_json::Value =
            serde_json::from_slice(b).map_err(|e| format!("not valid JSON: {e}"))?;
        contracts::validate::validate_job(&v, &agents)
            .map(|_| ())
            .map_err(|v| v.to_string())
    };
    let report = fsqueue::recover::recover(&queue, &validate)?;
    let lease = Duration::from_secs(ctx.env.get_u64_range(
        &contracts::env::RUNNER_LEASE_SEC,
        1,
        3600,
    )?);
    let max = ctx
        .env
        .get_u64_range(&contracts::env::RUNNER_MAX_RECLAIMS, 0, 100)? as u32;
    let reaped = fsqueue::Reaper::new(queue.clone(), lease, max).reap()?;
    for o in &reaped {
        if let fsqueue::ReapOutcome::Failed { to, reason, .. } = o
            && let Ok(jid) = JobId::parse(&to.entry.job_id)
        {
            record(ctx, &jid, to, Status::Failed, "poison_job", reason);
        }
    }
    let reaped_doc: Vec<_> = reaped
        .iter()
        .map(|o| match o {
            fsqueue::ReapOutcome::Requeued { to, reason, .. } => {
                json!({"job_id": to.entry.job_id, "to": "pending", "reason": reason})
            }
            fsqueue::ReapOutcome::Failed { to, reason, .. } => {
                json!({"job_id": to.entry.job_id, "to": "failed", "reason": reason})
            }
        })
        .collect();
    let doc = json!({
        "checked": report.checked,
        "temp_removed": report.temp_removed,
        "quarantined": report.quarantined.iter().map(|(p, r)| json!({"file": p.display().to_string(), "reason": r})).collect::<Vec<_>>(),
        "reaped": reaped_doc,
    });
    if as_json {
        print_json(&doc);
    } else {
        println!(
            "checked {} live job files; removed {} stale temp files; quarantined {}; reaped {}",
            report.checked,
            report.temp_removed,
            report.quarantined.len(),
            reaped.len()
        );
        for (p, r) in &report.quarantined {
            println!("  quarantined {}: {r}", p.display());
        }
        for d in &reaped_doc {
            println!(
                "  reaped {} -> {}: {}",
                d["job_id"].as_str().unwrap_or(""),
                d["to"].as_str().unwrap_or(""),
                d["reason"].as_str().unwrap_or("")
            );
        }
    }
    Ok(0)
}
