//! Simulated agents (SPEC §6): orch works out of the box, with no binaries
//! and no API keys, and tests get deterministic agents whose failures they
//! can script.
//!
//! Three behaviours, chosen by the step's **role** (the agent name only
//! supplies the default, as system prompts are chosen by role too):
//! - *plan* (default of `opencode`): a plan report that quotes the goal and
//!   the step's task; touches nothing;
//! - *implement* (default of `codex`): writes `orch-sim/<step_id>.md` in the
//!   workspace, a real change, so the step's `patch.diff` is non-empty;
//! - *review* (default of `claude`): lists the workspace (read-only) and
//!   writes a review naming the files simulated implementers changed.
//!
//! Reports contain no timestamps, so the same request yields the same
//! report. Failures are requested with markers in the goal or in the step's
//! own prompt (see the crate documentation for the list); markers in the
//! fully built prompt are deliberately ignored, since it carries earlier
//! steps' prompts through the context window.

use crate::worker::{StepOutcome, StepRequest, Worker, WorkerFuture};
use artifacts::durable;
use contracts::{ErrorInfo, Status};
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The MVP's simulated step durations, used when `SIMULATION_STEP_MS` is
/// not set.
pub const DEFAULT_STEP_MS: [(&str, u64); 3] = [("opencode", 400), ("codex", 600), ("claude", 300)];

/// Directory (in the workspace) where simulated implementers write.
pub const SIM_DIR: &str = "orch-sim";

/// How many files a simulated review lists, and how many directory entries
/// it looks at before it stops counting (a huge workspace must not make the
/// simulation slow).
const REVIEW_LIST_FILES: usize = 50;
const REVIEW_MAX_ENTRIES: usize = 10_000;

/// What a simulated agent does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimBehaviour {
    Plan,
    Implement,
    Review,
}

impl SimBehaviour {
    /// The behaviour a role asks for, or `None` when the role says nothing
    /// recognisable (then the agent's default applies).
    pub fn for_role(role: &str) -> Option<Self> {
        let role = role.to_ascii_lowercase();
        let has = |words: &[&str]| words.iter().any(|w| role.contains(w));
        if has(&["review", "audit", "critic", "qa"]) {
            Some(Self::Review)
        } else if has(&[
            "implement",
            "code",
            "coder",
            "develop",
            "fix",
            "build",
            "engineer",
        ]) {
            Some(Self::Implement)
        } else if has(&["plan", "architect", "design", "analy"]) {
            Some(Self::Plan)
        } else {
            None
        }
    }
}

/// A simulated agent.
#[derive(Debug, Clone)]
pub struct SimulatedAgent {
    name: String,
    default_behaviour: SimBehaviour,
    step_ms: u64,
}

impl SimulatedAgent {
    pub fn new(name: impl Into<String>, default_behaviour: SimBehaviour, step_ms: u64) -> Self {
        Self {
            name: name.into(),
            default_behaviour,
            step_ms,
        }
    }

    /// `opencode` (plan), `codex` (implement), `claude` (review). `step_ms`
    /// overrides every duration; `None` keeps `DEFAULT_STEP_MS`.
    pub fn builtin(step_ms: Option<u64>) -> [Self; 3] {
        let ms = |agent: &str| {
            step_ms.unwrap_or_else(|| {
                DEFAULT_STEP_MS
                    .iter()
                    .find(|(a, _)| *a == agent)
                    .map_or(0, |(_, ms)| *ms)
            })
        };
        [
            Self::new("opencode", SimBehaviour::Plan, ms("opencode")),
            Self::new("codex", SimBehaviour::Implement, ms("codex")),
            Self::new("claude", SimBehaviour::Review, ms("claude")),
        ]
    }

    pub fn behaviour_for(&self, role: &str) -> SimBehaviour {
        SimBehaviour::for_role(role).unwrap_or(self.default_behaviour)
    }

    async fn simulate(&self, req: &StepRequest, cancel: CancellationToken) -> StepOutcome {
        let started = Instant::now();
        let d = SimDirectives::for_request(req);
        let mut behaviour = self.behaviour_for(&req.step.role);
        // The role picks what the simulation looks like; what the step may
        // do is the step's `access` (contracts::access), never the role's
        // wording: a read-only step never writes, whatever its role says.
        let access = req.step.access();
        if access == contracts::Access::Read && behaviour == SimBehaviour::Implement {
            behaviour = SimBehaviour::Plan;
        }
        let mut logs = format!(
            "[sim] agent={} role={} access={access} behaviour={behaviour:?} job={} step={} attempt={}\n",
            self.name, req.step.role, req.job_id, req.step.step_id, req.attempt
        );
        for m in &d.ignored {
            let _ = writeln!(logs, "[sim] ignored unknown marker [sim:{m}]");
        }
        if d.echo_prompt {
            let _ = writeln!(
                logs,
                "[sim] prompt ({} bytes):\n{}\n[sim] end of prompt",
                req.prompt.len(),
                req.prompt.trim_end()
            );
        }

        let sleep_ms = d.sleep_ms.unwrap_or(self.step_ms);
        let interrupted = if d.hang {
            logs.push_str("[sim] hanging until cancelled ([sim:hang])\n");
            cancel.cancelled().await;
            true
        } else if sleep_ms > 0 {
            let _ = writeln!(logs, "[sim] working for {sleep_ms} ms");
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(sleep_ms)) => false,
                () = cancel.cancelled() => true,
            }
        } else {
            cancel.is_cancelled()
        };
        let mut out = if interrupted {
            StepOutcome::cancelled(format!(
                "simulated {} cancelled during step {}",
                self.name, req.step.step_id
            ))
        } else if let Some(out) = d.requested_failure(req) {
            out
        } else {
            match behaviour {
                SimBehaviour::Plan => self.plan(req),
                SimBehaviour::Implement => self.implement(req, d.no_changes).await,
                SimBehaviour::Review => self.review(req).await,
            }
        };
        if out.report_md.is_empty() {
            out.report_md = format!(
                "# {} (simulated by {})\n\nStatus: {}\n\n{}\n",
                req.step.step_id, self.name, out.status, out.summary
            );
        }
        let _ = writeln!(
            logs,
            "[sim] outcome status={} summary={}",
            out.status, out.summary
        );
        out.logs = format!("{logs}{}", out.logs);
        out.metrics = sim_metrics(started.elapsed());
        out
    }

    fn plan(&self, req: &StepRequest) -> StepOutcome {
        let report = format!(
            "# Plan (simulated by {agent})\n\n\
             Goal: {goal}\n\n\
             Task: {task}\n\n\
             ## Steps\n\n\
             1. Read the code in the workspace that the goal touches.\n\
             2. Make the smallest change that achieves the goal.\n\
             3. Add or update tests that cover the change.\n\
             4. Review the diff for risks before hand-off.\n\n\
             ## Risks\n\n\
             - Behaviour changes outside the goal's scope.\n\
             - Missing tests for edge cases.\n",
            agent = self.name,
            goal = req.goal.trim(),
            task = req.step.prompt.trim(),
        );
        let mut out = StepOutcome::new(
            Status::Success,
            format!(
                "{} (simulated) planned: {}",
                self.name,
                one_line(&req.goal, 80)
            ),
        );
        out.report_md = report;
        out
    }

    async fn implement(&self, req: &StepRequest, no_changes: bool) -> StepOutcome {
        let rel = format!("{SIM_DIR}/{}.md", req.step.step_id);
        if no_changes {
            let mut out = StepOutcome::new(
                Status::Success,
                format!("{} (simulated) found nothing to change", self.name),
            );
            out.report_md = format!(
                "# Implementation (simulated by {})\n\nGoal: {}\n\nNo changes were needed ([sim:no_changes]).\n",
                self.name,
                req.goal.trim()
            );
            return out;
        }
        let content = format!(
            "# orch simulation: {step}\n\n\
             Written by the simulated `{agent}` agent (role {role}) for job {job}, attempt {attempt}.\n\n\
             ## Goal\n\n{goal}\n\n## Task\n\n{task}\n",
            step = req.step.step_id,
            agent = self.name,
            role = req.step.role,
            job = req.job_id,
            attempt = req.attempt,
            goal = req.goal.trim(),
            task = req.step.prompt.trim(),
        );
        let workdir = req.workdir.clone();
        let step_file = PathBuf::from(&rel);
        let written =
            tokio::task::spawn_blocking(move || write_sim_file(&workdir, &step_file, &content))
                .await
                .map_err(|e| format!("simulated write task failed: {e}"))
                .and_then(|r| r);
        match written {
            Ok(()) => {
                let mut out = StepOutcome::new(
                    Status::Success,
                    format!("{} (simulated) implemented the goal in {rel}", self.name),
                );
                out.report_md = format!(
                    "# Implementation (simulated by {agent})\n\n\
                     Goal: {goal}\n\n\
                     Task: {task}\n\n\
                     ## Changes\n\n- `{rel}`: describes the goal and the task.\n",
                    agent = self.name,
                    goal = req.goal.trim(),
                    task = req.step.prompt.trim(),
                );
                out.logs = format!("[sim] wrote {rel}\n");
                out
            }
            Err(message) => {
                let mut e = ErrorInfo::new("sim_write_failed", message);
                e.details.insert("path".into(), Value::from(rel));
                StepOutcome::failure(Status::Failed, e)
            }
        }
    }

    async fn review(&self, req: &StepRequest) -> StepOutcome {
        let workdir = req.workdir.clone();
        let listing = tokio::task::spawn_blocking(move || list_workspace(&workdir))
            .await
            .map_err(|e| format!("simulated review task failed: {e}"))
            .and_then(|r| r);
        let listing = match listing {
            Ok(l) => l,
            Err(message) => {
                return StepOutcome::failure(
                    Status::Failed,
                    ErrorInfo::new("workspace_missing", message),
                );
            }
        };
        let mut report = format!(
            "# Review (simulated by {agent})\n\nGoal: {goal}\n\nTask: {task}\n\n## Workspace\n\n",
            agent = self.name,
            goal = req.goal.trim(),
            task = req.step.prompt.trim(),
        );
        let more = if listing.complete { "" } else { "at least " };
        let _ = writeln!(
            report,
            "{more}{} files in the workspace (`.git` excluded).\n",
            listing.files.len()
        );
        let sim: Vec<&String> = listing
            .files
            .iter()
            .filter(|f| f.starts_with(&format!("{SIM_DIR}/")))
            .collect();
        if sim.is_empty() {
            report.push_str("No changes by simulated implementers were found.\n\n");
        } else {
            report.push_str("Changes by simulated implementers:\n\n");
            for f in &sim {
                let _ = writeln!(report, "- `{f}`");
            }
            report.push('\n');
        }
        report.push_str("Files:\n\n");
        for f in listing.files.iter().take(REVIEW_LIST_FILES) {
            let _ = writeln!(report, "- `{f}`");
        }
        if listing.files.len() > REVIEW_LIST_FILES {
            let _ = writeln!(
                report,
                "- ... and {} more",
                listing.files.len() - REVIEW_LIST_FILES
            );
        }
        report.push_str(
            "\n## Verdict\n\nNo blocking issues found by the simulated review. \
             Risks: the change is unverified by real tests.\n",
        );
        let mut out = StepOutcome::new(
            Status::Success,
            format!(
                "{} (simulated) reviewed {} files, {} changed by implementers",
                self.name,
                listing.files.len(),
                sim.len()
            ),
        );
        out.report_md = report;
        out
    }
}

impl Worker for SimulatedAgent {
    fn name(&self) -> &str {
        &self.name
    }

    fn run<'a>(&'a self, req: &'a StepRequest, cancel: CancellationToken) -> WorkerFuture<'a> {
        Box::pin(self.simulate(req, cancel))
    }
}

/// The `[sim:...]` markers that apply to one request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SimDirectives {
    pub fail: bool,
    pub fatal: bool,
    pub needs_human: bool,
    pub hang: bool,
    pub no_changes: bool,
    /// `[sim:echo_prompt]`: copy the fully built prompt into the step's
    /// logs, so tests can see what an agent would receive.
    pub echo_prompt: bool,
    pub sleep_ms: Option<u64>,
    pub fail_attempts: Option<u32>,
    /// Markers that were not understood (reported in the step's logs).
    pub ignored: Vec<String>,
}

impl SimDirectives {
    /// Markers of the goal and of the step's own prompt that apply to this
    /// step (untargeted ones, or ones targeted `@<this step_id>`).
    pub fn for_request(req: &StepRequest) -> Self {
        let mut d = Self::default();
        d.parse(&req.goal, req.step.step_id.as_str());
        d.parse(&req.step.prompt, req.step.step_id.as_str());
        d
    }

    /// Adds the markers found in `text` that apply to step `step_id`.
    pub fn parse(&mut self, text: &str, step_id: &str) {
        let mut rest = text;
        while let Some(start) = rest.find("[sim:") {
            rest = &rest[start + 5..];
            let Some(end) = rest.find(']') else { break };
            let body = &rest[..end];
            rest = &rest[end + 1..];
            let (spec, target) = match body.split_once('@') {
                Some((s, t)) => (s, Some(t)),
                None => (body, None),
            };
            if target.is_some_and(|t| t != step_id) {
                continue;
            }
            let (name, value) = match spec.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (spec, None),
            };
            match (name, value) {
                ("fail", None) => self.fail = true,
                ("fatal", None) => self.fatal = true,
                ("needs_human", None) => self.needs_human = true,
                ("hang", None) => self.hang = true,
                ("no_changes", None) => self.no_changes = true,
                ("echo_prompt", None) => self.echo_prompt = true,
                ("sleep", Some(v)) if v.parse::<u64>().is_ok() => self.sleep_ms = v.parse().ok(),
                ("fail_attempts", Some(v)) if v.parse::<u32>().is_ok() => {
                    self.fail_attempts = v.parse().ok();
                }
                _ => self.ignored.push(body.to_owned()),
            }
        }
    }

    /// The failure these markers ask for, if any, by severity: needs_human,
    /// then fatal, then retryable.
    fn requested_failure(&self, req: &StepRequest) -> Option<StepOutcome> {
        let step = &req.step.step_id;
        let (status, code, message) = if self.needs_human {
            (
                Status::NeedsHuman,
                "needs_human",
                format!(
                    "simulated agent asks for a human decision at step {step} ([sim:needs_human])"
                ),
            )
        } else if self.fatal {
            (
                Status::Failed,
                "sim_fatal",
                format!("simulated fatal failure at step {step} ([sim:fatal])"),
            )
        } else if self.fail {
            (
                Status::Retryable,
                "sim_failure",
                format!("simulated retryable failure at step {step} ([sim:fail])"),
            )
        } else if let Some(n) = self.fail_attempts.filter(|n| req.attempt <= *n) {
            (
                Status::Retryable,
                "sim_failure",
                format!(
                    "simulated retryable failure at step {step}, attempt {} of the first {n} ([sim:fail_attempts={n}])",
                    req.attempt
                ),
            )
        } else {
            return None;
        };
        let mut e = ErrorInfo::new(code, message);
        e.details.insert("simulated".into(), Value::Bool(true));
        Some(StepOutcome::failure(status, e))
    }
}

fn sim_metrics(elapsed: Duration) -> Map<String, Value> {
    let mut m = Map::new();
    let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    m.insert("duration_ms".into(), Value::from(ms));
    m.insert("cost_usd".into(), Value::from(0.0));
    m.insert("tokens_in".into(), Value::from(0));
    m.insert("tokens_out".into(), Value::from(0));
    m.insert("simulated".into(), Value::Bool(true));
    m
}

/// Writes `workdir/<rel>` durably, refusing to write through a symlink at
/// the directory (the workspace is shared by all steps of a job and may hold
/// in-tree links).
fn write_sim_file(workdir: &Path, rel: &Path, content: &str) -> Result<(), String> {
    let path = workdir.join(rel);
    let dir = path.parent().unwrap_or(workdir);
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(format!(
                "{}: is a symlink; refusing to write through it",
                dir.display()
            ));
        }
        Ok(m) if !m.is_dir() => return Err(format!("{}: is not a directory", dir.display())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !workdir.is_dir() {
                return Err(format!("workspace {} does not exist", workdir.display()));
            }
            durable::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        Err(e) => return Err(format!("stat {}: {e}", dir.display())),
    }
    durable::write_file(&path, content.as_bytes()).map_err(|e| e.to_string())
}

struct Listing {
    /// Relative paths of regular files and symlinks, sorted.
    files: Vec<String>,
    /// False when the walk stopped at `REVIEW_MAX_ENTRIES`.
    complete: bool,
}

fn list_workspace(workdir: &Path) -> Result<Listing, String> {
    if !workdir.is_dir() {
        return Err(format!("workspace {} does not exist", workdir.display()));
    }
    let mut files = Vec::new();
    let mut complete = true;
    let walk = walkdir::WalkDir::new(workdir)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.file_name() != ".git");
    for (n, entry) in walk.enumerate() {
        if n >= REVIEW_MAX_ENTRIES {
            complete = false;
            break;
        }
        // Unreadable entries are just not listed: this is a review, not a
        // backup.
        let Ok(entry) = entry else { continue };
        if entry.file_type().is_dir() {
            continue;
        }
        if let Ok(rel) = entry.path().strip_prefix(workdir) {
            files.push(rel.to_string_lossy().into_owned());
        }
    }
    files.sort();
    Ok(Listing { files, complete })
}

/// The first line of `s`, at most `max` characters. Secrets are redacted
/// before the cut: a cut secret would no longer match its rule and leak
/// its prefix.
fn one_line(s: &str, max: usize) -> String {
    let (s, _) = artifacts::secrets::scan_and_redact(s);
    let line = s.trim().lines().next().unwrap_or("");
    let mut out: String = line.chars().take(max).collect();
    if line.chars().count() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directives(text: &str, step: &str) -> SimDirectives {
        let mut d = SimDirectives::default();
        d.parse(text, step);
        d
    }

    #[test]
    fn markers_parse() {
        let d = directives(
            "do it [sim:fail] [sim:sleep=25] [sim:fail_attempts=2] [sim:bogus]",
            "s1",
        );
        assert!(d.fail && !d.fatal && !d.needs_human);
        assert_eq!(d.sleep_ms, Some(25));
        assert_eq!(d.fail_attempts, Some(2));
        assert_eq!(d.ignored, ["bogus"]);
        let d = directives(
            "[sim:fatal@02_implement] [sim:needs_human@03_review] [sim:sleep=x]",
            "02_implement",
        );
        assert!(d.fatal && !d.needs_human);
        assert_eq!(d.ignored, ["sleep=x"]);
        let d = directives("[sim:hang] [sim:no_changes] [sim:fail", "s");
        assert!(d.hang && d.no_changes && !d.fail);
    }

    #[test]
    fn roles_choose_behaviour() {
        let a = SimulatedAgent::new("claude", SimBehaviour::Review, 0);
        assert_eq!(a.behaviour_for("implementer"), SimBehaviour::Implement);
        assert_eq!(a.behaviour_for("Planner"), SimBehaviour::Plan);
        assert_eq!(a.behaviour_for("security reviewer"), SimBehaviour::Review);
        assert_eq!(a.behaviour_for("helper"), SimBehaviour::Review);
    }

    #[test]
    fn builtin_durations() {
        let [o, c, cl] = SimulatedAgent::builtin(None);
        assert_eq!((o.step_ms, c.step_ms, cl.step_ms), (400, 600, 300));
        let [o, c, cl] = SimulatedAgent::builtin(Some(0));
        assert_eq!((o.step_ms, c.step_ms, cl.step_ms), (0, 0, 0));
    }

    #[test]
    fn one_line_truncates() {
        assert_eq!(one_line("  abc\ndef", 10), "abc");
        assert_eq!(one_line("abcdef", 3), "abc…");
        // Redact first, then cut: no prefix of the key survives.
        let key = ["AK", "IA", "ZDOCIQ7RTESTKEYX"].concat();
        let cut = one_line(&format!("deploy with {key} now"), 20);
        assert!(!cut.contains(&key[..8]), "{cut}");
        assert!(cut.starts_with("deploy with [REDACT"), "{cut}");
    }
}
