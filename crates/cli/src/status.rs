//! `orch status`, `orch list`, `orch logs`: read-only views assembled from
//! the queue (where a job is) and the artifacts tree (how it is doing).

use crate::{CliError, Ctx, print_json, text};
use contracts::{JobId, JobState, ResultDoc};
use fsqueue::State;
use serde_json::{Value, json};
use std::io::{IsTerminal, Write};
use std::time::Duration;

fn parse_id(id: &str) -> Result<JobId, CliError> {
    JobId::parse(id).map_err(|e| CliError::invalid(e.to_string()))
}

fn duration_ms(start: Option<&str>, end: Option<&str>) -> Option<u64> {
    let s: jiff::Timestamp = start?.parse().ok()?;
    let e: jiff::Timestamp = end?.parse().ok()?;
    let ms = e.since(s).ok()?.total(jiff::Unit::Millisecond).ok()?;
    Some(ms.max(0.0) as u64)
}

pub fn status(ctx: &Ctx, id: &str, as_json: bool) -> Result<u8, CliError> {
    let job_id = parse_id(id)?;
    let queue = ctx.queue()?;
    let loc = queue.find(job_id.as_str())?;
    let arts = ctx.store().job(&job_id);
    let st: Option<JobState> = arts.read_state().ok().flatten();
    let Some(loc) = loc else {
        if st.is_none() {
            return Err(CliError::not_found(format!("no job {job_id}")).hint(
                "`orch list` shows known jobs; finished jobs are pruned after ARTIFACTS_TTL_SEC",
            ));
        }
        // Artifacts without a queue file: pruned from the queue, kept on disk.
        return print_status(ctx, &job_id, None, st, as_json);
    };
    print_status(ctx, &job_id, Some(loc), st, as_json)
}

fn print_status(
    ctx: &Ctx,
    job_id: &JobId,
    loc: Option<fsqueue::Located>,
    st: Option<JobState>,
    as_json: bool,
) -> Result<u8, CliError> {
    let queue = ctx.queue()?;
    let arts = ctx.store().job(job_id);
    let job: Option<contracts::Job> = loc
        .as_ref()
        .and_then(|l| queue.read(l).ok())
        .and_then(|b| serde_json::from_slice(&b).ok());
    let result: Option<ResultDoc> = arts.read_result().ok().flatten();
    let state_name = loc.as_ref().map(|l| l.state.dir_name());
    // Step order comes from the job; state.json holds what happened.
    let order: Vec<String> = match &job {
        Some(j) => j.steps.iter().map(|s| s.step_id.to_string()).collect(),
        None => st
            .as_ref()
            .map(|s| s.steps.keys().cloned().collect())
            .unwrap_or_default(),
    };
    let steps: Vec<Value> = order
        .iter()
        .map(|sid| {
            let s = st.as_ref().and_then(|st| st.steps.get(sid));
            json!({
                "step_id": sid,
                "status": s.map(|s| s.status.as_str()),
                "attempts": s.map(|s| s.attempt).unwrap_or(0),
                "agent": s.map(|s| s.agent.clone()),
                "role": s.map(|s| s.role.clone()),
                "started_at": s.and_then(|s| s.started_at.clone()),
                "finished_at": s.and_then(|s| s.finished_at.clone()),
                "duration_ms": s.and_then(|s| duration_ms(s.started_at.as_deref(), s.finished_at.as_deref())),
                "summary": s.map(|s| s.summary.clone()),
            })
        })
        .collect();
    // Until a runner has written state.json, a queued job has no status yet.
    let status = st.as_ref().map(|s| s.status.as_str());
    let doc = json!({
        "job_id": job_id,
        "state": state_name,
        "status": status,
        "goal": job.as_ref().map(|j| j.goal.clone()),
        "attempt": loc.as_ref().map(|l| l.entry.attempt),
        "current_step": st.as_ref().and_then(|s| s.current_step.clone()),
        "started_at": st.as_ref().and_then(|s| s.started_at.clone()),
        "finished_at": st.as_ref().and_then(|s| s.finished_at.clone()),
        "summary": result.as_ref().filter(|r| r.status != contracts::Status::Running).map(|r| r.summary.clone()),
        "error": result.as_ref().and_then(|r| r.error.clone()),
        "steps": steps,
        "artifacts_dir": arts.dir().display().to_string(),
    });
    if as_json {
        print_json(&doc);
        return Ok(0);
    }
    let mut out = String::new();
    out.push_str(&format!("job       {job_id}\n"));
    out.push_str(&format!(
        "state     {}\n",
        state_name.unwrap_or("(not in queue)")
    ));
    out.push_str(&format!(
        "status    {}\n",
        status.unwrap_or("(not started)")
    ));
    // Job text is caller-chosen: redacted, escaped and cut (`text`).
    if let Some(g) = doc["goal"].as_str() {
        out.push_str(&format!("goal      {}\n", text::one_line(g, 200)));
    }
    if let Some(s) = doc["summary"].as_str() {
        out.push_str(&format!("summary   {}\n", text::one_line(s, 500)));
    }
    if let Some(e) = doc["error"].as_object() {
        out.push_str(&format!(
            "error     {}: {}\n",
            text::one_line(e.get("code").and_then(Value::as_str).unwrap_or("?"), 64),
            text::one_line(e.get("message").and_then(Value::as_str).unwrap_or(""), 1000)
        ));
    }
    out.push_str(&format!("artifacts {}\n", arts.dir().display()));
    if !steps.is_empty() {
        out.push_str("steps\n");
        for s in &steps {
            let dur = s["duration_ms"]
                .as_u64()
                .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {:<24} {:<12} attempts {:<3} {}\n",
                text::one_line(s["step_id"].as_str().unwrap_or(""), 64),
                s["status"].as_str().unwrap_or("pending"),
                s["attempts"],
                dur
            ));
        }
    }
    print!("{out}");
    Ok(0)
}

pub fn list(ctx: &Ctx, state: Option<&str>, limit: usize, as_json: bool) -> Result<u8, CliError> {
    let states: Vec<State> = match state {
        None => State::ALL.to_vec(),
        Some(s) => vec![State::parse(s).ok_or_else(|| {
            CliError::invalid(format!("unknown state {s:?}"))
                .hint("states: pending, awaiting_approval, running, done, failed")
        })?],
    };
    let queue = ctx.queue()?;
    let mut all = Vec::new();
    for st in states {
        all.extend(queue.list(st)?);
    }
    // Newest first by enqueue sequence.
    all.sort_by_key(|l| std::cmp::Reverse(l.entry.seq));
    all.truncate(limit);
    let rows: Vec<Value> = all
        .iter()
        .map(|l| {
            let goal = queue
                .read(l)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v.get("goal").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            let enq = jiff::Timestamp::from_nanosecond(l.entry.seq as i128)
                .map(|t| format!("{t:.0}"))
                .unwrap_or_default();
            json!({"job_id": l.entry.job_id, "state": l.state.dir_name(), "attempt": l.entry.attempt, "enqueued_at": enq, "goal": goal})
        })
        .collect();
    if as_json {
        print_json(&Value::Array(rows));
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    for r in rows {
        let goal = text::one_line(r["goal"].as_str().unwrap_or(""), 60);
        let _ = writeln!(
            out,
            "{:<34} {:<18} {:<21} {}",
            text::one_line(r["job_id"].as_str().unwrap_or(""), 64),
            r["state"].as_str().unwrap_or(""),
            r["enqueued_at"].as_str().unwrap_or(""),
            goal
        );
    }
    Ok(0)
}

/// `orch logs`: every step's `logs.txt` in job order (or one step's), each
/// under a `==> steps/<id>/logs.txt <==` header.
///
/// With `-f` it follows the job until it ends or parks: step transitions
/// (`running`, attempts, outcomes) are reported on stderr as `state.json`
/// changes, and each step's logs are printed as soon as the step publishes
/// them. A step that runs again (retry, `goto`, resume) republishes its
/// logs; they are printed again under a `(again)` header rather than
/// spliced by byte offset into the old ones.
pub fn logs(ctx: &Ctx, id: &str, step: Option<&str>, follow: bool) -> Result<u8, CliError> {
    let job_id = parse_id(id)?;
    let step_id = step
        .map(|s| contracts::StepId::parse(s).map_err(|e| CliError::invalid(e.to_string())))
        .transpose()?;
    let queue = ctx.queue()?;
    let arts = ctx.store().job(&job_id);
    if queue.find(job_id.as_str())?.is_none() && !arts.dir().exists() {
        return Err(CliError::not_found(format!("no job {job_id}")));
    }
    // Which files to print: one step's logs, or every step's in job order.
    let files = |arts: &artifacts::JobArtifacts| -> Vec<String> {
        match &step_id {
            Some(s) => vec![format!("steps/{s}/logs.txt")],
            None => {
                let st = arts.read_state().ok().flatten();
                let job: Option<contracts::Job> = arts.read_job().ok().flatten();
                match (job, st) {
                    (Some(j), _) => j
                        .steps
                        .iter()
                        .map(|s| format!("steps/{}/logs.txt", s.step_id))
                        .collect(),
                    (None, Some(st)) => st
                        .steps
                        .keys()
                        .map(|s| format!("steps/{s}/logs.txt"))
                        .collect(),
                    _ => Vec::new(),
                }
            }
        }
    };
    // What was printed of each file, to print only what is new.
    let mut printed: std::collections::HashMap<String, Vec<u8>> = Default::default();
    // The last (status, attempt) reported of each step.
    let mut reported: std::collections::HashMap<String, (contracts::Status, u32)> =
        Default::default();
    let tty = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    loop {
        // Read the state before the files, so a job found terminal below
        // has had its final logs printed in this very round.
        let state = queue.find(job_id.as_str())?.map(|l| l.state);
        if follow && let Some(st) = arts.read_state().ok().flatten() {
            for (sid, s) in &st.steps {
                if step_id.as_ref().is_some_and(|want| want.as_str() != sid) {
                    continue;
                }
                let now = (s.status, s.attempt);
                if reported.get(sid) != Some(&now) {
                    eprintln!(
                        "[orch] step {}: {} (attempt {})",
                        text::one_line(sid, 64),
                        s.status,
                        s.attempt
                    );
                    reported.insert(sid.clone(), now);
                }
            }
        }
        for rel in files(&arts) {
            let Ok(read) = arts.read_file(&rel, 64 * 1024 * 1024) else {
                continue;
            };
            let bytes = read.data;
            let seen = printed.entry(rel.clone()).or_default();
            if bytes == *seen {
                continue;
            }
            let (header, new): (Option<String>, &[u8]) = if seen.is_empty() {
                (Some(format!("==> {rel} <==")), &bytes)
            } else if bytes.starts_with(seen) {
                (None, &bytes[seen.len()..])
            } else {
                (Some(format!("==> {rel} (again) <==")), &bytes)
            };
            if let Some(h) = header
                && (step_id.is_none() || follow)
            {
                let _ = writeln!(out, "{h}");
            }
            // On a terminal, escape sequences in agent output are shown,
            // not obeyed; a pipe gets the bytes as published.
            if tty {
                let _ = out.write_all(text::block(new).as_bytes());
            } else {
                let _ = out.write_all(new);
            }
            let _ = out.flush();
            *seen = bytes;
        }
        if !follow {
            return Ok(0);
        }
        if matches!(
            state,
            Some(State::Done) | Some(State::Failed) | Some(State::AwaitingApproval) | None
        ) {
            let status = arts
                .read_state()
                .ok()
                .flatten()
                .map(|s| s.status.as_str().to_owned())
                .unwrap_or_else(|| "unknown".into());
            eprintln!(
                "[orch] job {job_id} {}: status {status}",
                match state {
                    Some(State::AwaitingApproval) => "is waiting for approval",
                    Some(State::Done) | Some(State::Failed) => "ended",
                    _ => "is no longer in the queue",
                }
            );
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
