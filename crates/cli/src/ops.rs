//! Operator transitions (`approve`, `reject`, `cancel`, `retry`, `unlock`)
//! and `recover`. Each transition is one atomic queue move with a clear
//! error (exit 3) when the job is not in a state that allows it.

use crate::{CliError, Ctx, print_json};
use artifacts::control::{self, Action, Outcome};
use contracts::JobId;
use fsqueue::State;
use serde_json::json;
use std::time::{Duration, Instant};

fn id(s: &str) -> Result<JobId, CliError> {
    JobId::parse(s).map_err(|e| CliError::invalid(e.to_string()))
}

/// Applies an operator action through the implementation shared with the
/// gateway (`artifacts::control`), and says what happened.
pub fn act(ctx: &Ctx, s: &str, action: Action) -> Result<u8, CliError> {
    let job_id = id(s)?;
    let queue = ctx.queue()?;
    match control::apply(&queue, &ctx.store(), &job_id, action).map_err(|e| match e {
        fsqueue::QueueError::WrongState { .. } => {
            CliError::not_found(e.to_string()).hint(match action {
                Action::Approve | Action::Reject => {
                    "only jobs in awaiting_approval can be approved or rejected"
                }
                Action::Cancel => {
                    "only pending, awaiting_approval or running jobs can be cancelled"
                }
                Action::Retry => "only failed (or cancelled) jobs can be retried",
                Action::Unlock => "only running jobs can be unlocked",
            })
        }
        e => e.into(),
    })? {
        Outcome::Moved(_) => {
            let what = match action {
                Action::Approve => "approved: queued to resume where it paused",
                Action::Reject => "rejected: it ends as cancelled",
                Action::Cancel => "cancelled",
                Action::Retry => "re-queued: it resumes at its first unfinished step",
                Action::Unlock => "unlocked: moved to failed",
            };
            eprintln!("{job_id} {what}");
        }
        Outcome::CancelRequested => {
            // The owning runner checks requests several times a second.
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if queue
                    .find(job_id.as_str())?
                    .is_some_and(|l| l.state != State::Running)
                {
                    eprintln!("{job_id} cancelled");
                    return Ok(0);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!(
                "cancel of {job_id} requested; its runner has not acted yet (it will when it next checks)"
            );
        }
    }
    Ok(0)
}

pub fn recover(ctx: &Ctx, as_json: bool) -> Result<u8, CliError> {
    let queue = ctx.queue()?;
    // Structure only: a job naming an agent this host's AGENTS_CONFIG does
    // not list may belong to a runner elsewhere that has it.
    let validate = |b: &[u8]| -> Result<(), String> {
        let v: serde_json::Value =
            serde_json::from_slice(b).map_err(|e| format!("not valid JSON: {e}"))?;
        contracts::validate::validate_job_structure(&v)
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
    let store = ctx.store();
    for o in &reaped {
        control::record_reaped(&queue, &store, o);
    }
    // What dead processes left: their runners' files, requests of ended
    // claims, old temp files, quarantine reasons whose file never arrived.
    let paths = contracts::config::Paths::resolve(&ctx.env)?;
    let dead_runners = fsqueue::tidy::prune_dead_runners(&queue, Some(&paths.metrics_dir), lease);
    let requests_removed = queue.prune_requests();
    let temps_removed = fsqueue::tidy::remove_orphan_temps(
        &[
            (queue.root(), 2),
            (store.root(), 4),
            (&paths.metrics_dir, 1),
        ],
        fsqueue::recover::STALE_TEMP_AGE,
    );
    let reasons_removed =
        fsqueue::tidy::remove_orphan_reasons(&queue, fsqueue::recover::STALE_TEMP_AGE);
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
        "temp_removed": report.temp_removed + temps_removed,
        "dead_runners_removed": dead_runners,
        "requests_removed": requests_removed,
        "orphan_reasons_removed": reasons_removed,
        "skipped_live": report.skipped_live,
        "quarantined": report.quarantined.iter().map(|(p, r)| json!({"file": p.display().to_string(), "reason": r})).collect::<Vec<_>>(),
        "reaped": reaped_doc,
    });
    if as_json {
        print_json(&doc);
    } else {
        println!(
            "checked {} live job files (left {} claims of live runners alone); removed {} stale temp files, {} stale requests, the files of {} dead runners; quarantined {}; reaped {}",
            report.checked,
            report.skipped_live,
            report.temp_removed + temps_removed,
            requests_removed,
            dead_runners.len(),
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
