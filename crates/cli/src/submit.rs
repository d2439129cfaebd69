//! `orch submit` and `orch validate`: the trusted shell entry point. The
//! payload goes through the same normalisation and validation as the
//! webhook and the scheduler; nothing is written unless it passes.

use crate::{CliError, Ctx, print_json, read_input};
use contracts::normalize::{EntryPoint, NormalizeOptions};
use contracts::{Job, Status};
use fsqueue::State;
use serde_json::json;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

fn normalize_file(ctx: &Ctx, file: &str) -> Result<Job, CliError> {
    let bytes = read_input(file)?;
    let shown = if file == "-" { "<stdin>" } else { file };
    let value =
        contracts::normalize::parse_payload_bytes(&bytes).map_err(|v| invalid_job(shown, &v))?;
    let opts = normalize_options(ctx)?;
    let entry = EntryPoint::Manual {
        file: shown.to_owned(),
    };
    let mut job = contracts::normalize::normalize(value, &entry, &opts)
        .map_err(|v| invalid_job(shown, &v))?;
    // A relative workdir names a directory relative to where the operator
    // ran the command; the runner may run elsewhere, so store it absolute.
    if job.workdir != "." && !std::path::Path::new(&job.workdir).is_absolute() {
        let abs = std::path::absolute(&job.workdir)
            .map_err(|e| CliError::invalid(format!("{shown}: workdir {:?}: {e}", job.workdir)))?;
        job.workdir = abs.display().to_string();
    }
    if job.workdir != "." && !std::path::Path::new(&job.workdir).is_dir() {
        return Err(CliError::invalid(format!("{shown}: /workdir: {} is not a directory", job.workdir))
            .hint("workdir names a local directory whose contents seed the job's workspace; omit it for an empty workspace"));
    }
    // The directory it really is (`..` and symlinks resolved) is never `/`
    // or a system directory; the runner checks again before copying.
    if job.workdir != "."
        && let Ok(real) = std::fs::canonicalize(&job.workdir)
        && let Err(why) = contracts::validate::check_workdir(&real.to_string_lossy())
    {
        return Err(CliError::invalid(format!("{shown}: /workdir: {why}"))
            .hint("workdir names the project directory whose contents seed the job's workspace"));
    }
    Ok(job)
}

pub(crate) fn normalize_options(ctx: &Ctx) -> Result<NormalizeOptions, CliError> {
    Ok(NormalizeOptions {
        known_agents: contracts::config::known_agents(&ctx.env)?,
        project_ids: ctx
            .paths
            .project_aliases
            .iter()
            .map(|(id, _)| id.clone())
            .collect(),
        default_artifact_handoff: contracts::config::artifact_handoff(&ctx.env)?,
        prompts_dir: contracts::config::path_opt(&ctx.env, &contracts::env::PROMPTS_DIR)?,
        ..NormalizeOptions::default()
    })
}

fn invalid_job(file: &str, v: &contracts::Violations) -> CliError {
    let mut msg = format!(
        "{file}: invalid job ({} problem{}):",
        v.0.len(),
        if v.0.len() == 1 { "" } else { "s" }
    );
    for x in &v.0 {
        let p = if x.pointer.is_empty() {
            "/"
        } else {
            &x.pointer
        };
        msg.push_str(&format!("\n  {p}: {}", x.message));
    }
    CliError::invalid(msg).hint("`orch validate FILE` checks a file without submitting; contracts/job.schema.json is the full contract")
}

pub fn validate(ctx: &Ctx, file: &str, as_json: bool) -> Result<u8, CliError> {
    let job = normalize_file(ctx, file)?;
    if as_json {
        print_json(&json!({"valid": true, "steps": job.steps.len(), "job": job}));
    } else {
        eprintln!("ok: {file} is a valid job with {} step(s)", job.steps.len());
    }
    Ok(0)
}

pub fn submit(
    ctx: &Ctx,
    file: &str,
    as_json: bool,
    wait: bool,
    timeout: Option<u64>,
) -> Result<u8, CliError> {
    let job = normalize_file(ctx, file)?;
    let queue = ctx.queue()?;
    let doc = serde_json::to_vec_pretty(&job).map_err(|e| CliError::failed(e.to_string()))?;
    let state = if job.policy.requires_approval {
        State::AwaitingApproval
    } else {
        State::Pending
    };
    queue
        .enqueue(
            job.job_id.as_str(),
            &doc,
            fsqueue::name::DEFAULT_PRIO,
            state,
        )
        .map_err(|e| match e {
            fsqueue::QueueError::Duplicate { .. } => {
                CliError::not_found(format!("job id {} is already in use", job.job_id))
                    .hint("omit job_id to get a fresh one")
            }
            e => CliError::failed(format!("could not enqueue: {e}")),
        })?;
    if as_json {
        println!(
            "{}",
            json!({"job_id": job.job_id, "state": state.dir_name()})
        );
    } else {
        println!("{}", job.job_id);
    }
    if state == State::AwaitingApproval {
        eprintln!(
            "job {} waits for approval: orch approve {}",
            job.job_id, job.job_id
        );
    }
    if !wait {
        return Ok(0);
    }
    follow(ctx, &job, timeout.map(Duration::from_secs))
}

/// Follows a job until it reaches a terminal state, reporting each step's
/// progress on stderr. Exit code 0 only for `success`.
fn follow(ctx: &Ctx, job: &Job, timeout: Option<Duration>) -> Result<u8, CliError> {
    let queue = ctx.queue()?;
    let store = ctx.store();
    let arts = store.job(&job.job_id);
    let tty = std::io::stderr().is_terminal();
    let t0 = Instant::now();
    let mut last = String::new();
    loop {
        let loc = queue.find(job.job_id.as_str())?;
        let state = loc.as_ref().map(|l| l.state);
        let st = arts.read_state().ok().flatten();
        let line = progress_line(job, state, st.as_ref());
        if line != last {
            if tty {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
            last = line;
        }
        let terminal = matches!(state, Some(State::Done) | Some(State::Failed));
        let parked = state == Some(State::AwaitingApproval)
            && st.as_ref().is_some_and(|s| s.status == Status::NeedsHuman);
        if terminal || parked {
            if tty {
                eprintln!();
            }
            let status = st.map(|s| s.status);
            let ok = state == Some(State::Done) && status == Some(Status::Success);
            eprintln!(
                "job {} ended: state {}, status {}",
                job.job_id,
                state.map(|s| s.dir_name()).unwrap_or("unknown"),
                status.map(|s| s.as_str()).unwrap_or("unknown")
            );
            return Ok(if ok { 0 } else { 1 });
        }
        if timeout.is_some_and(|t| t0.elapsed() > t) {
            if tty {
                eprintln!();
            }
            return Err(CliError::failed(format!(
                "gave up waiting for job {} after {}s",
                job.job_id,
                t0.elapsed().as_secs()
            ))
            .hint(format!(
                "it keeps running; `orch status {}` shows where it is",
                job.job_id
            )));
        }
        std::thread::sleep(Duration::from_millis(150));
    }
}

fn progress_line(job: &Job, state: Option<State>, st: Option<&contracts::JobState>) -> String {
    let total = job.steps.len();
    let Some(st) = st else {
        return format!(
            "[{}] {} — waiting for a runner",
            state.map(|s| s.dir_name()).unwrap_or("?"),
            job.job_id
        );
    };
    let done = st
        .steps
        .values()
        .filter(|s| s.status == Status::Success)
        .count();
    let state_name = state.map(|s| s.dir_name()).unwrap_or("?");
    let current = st.current_step.as_ref().map(|c| {
        let attempt = st.steps.get(c).map(|s| s.attempt).unwrap_or(1);
        format!("; step {c} (attempt {attempt})")
    });
    format!(
        "[{state_name}] {} — {done}/{total} steps done{} — {}",
        job.job_id,
        current.unwrap_or_default(),
        st.status
    )
}
