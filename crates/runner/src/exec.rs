//! Runs one claimed job: load and validate it, prepare its workspace, run its
//! steps from the first one that has not succeeded (so a reaped, approved or
//! retried job resumes instead of starting over), publish every artifact,
//! and finally move the queue file to its terminal (or waiting) state.
//!
//! Every artifact and workspace write happens while the lease is held and
//! passes the attempt's fence (`ownership`); a job whose lease was lost
//! stops at the next check and leaves the queue alone, because the job now
//! belongs to whichever runner reaped it.

use crate::config::Config;
use crate::error::AttemptError;
use crate::ownership::{Ownership, OwnershipFence};
use crate::prompt;
use artifacts::{ArtifactStore, JobArtifacts, StepOutput};
use contracts::{
    ContextDoc, ContextMessage, ContextStrategy, ErrorInfo, Job, JobState, OnFailure, ResultDoc,
    ResultKind, Status, Step, StepState, now_rfc3339,
};
use fsqueue::{Claim, Entry, Located, Queue, QueueError, State};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use workers::{Registry, StepOutcome, StepRequest, Worker};

/// Why a job's cancellation token fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An operator cancelled the job: finish it as `cancelled`.
    Cancelled,
    /// The lease is gone: someone else owns the job now; touch nothing.
    LeaseLost,
    /// The runner is shutting down: release the job to `pending/`.
    Shutdown,
}

/// Shared between the job task and the runner's heartbeat.
#[derive(Debug, Clone)]
pub struct JobControl {
    pub cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

impl Default for JobControl {
    fn default() -> Self {
        Self::new()
    }
}

impl JobControl {
    pub fn new() -> Self {
        Self {
            cancel: CancellationToken::new(),
            reason: Arc::new(Mutex::new(None)),
        }
    }

    /// Stops the job for `why`. The first reason wins.
    pub fn stop(&self, why: StopReason) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(why);
        }
        drop(r);
        self.cancel.cancel();
    }

    pub fn reason(&self) -> Option<StopReason> {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Everything a job task needs, shared by all of them.
pub struct Ctx {
    pub cfg: Config,
    pub queue: Queue,
    pub store: ArtifactStore,
    pub registry: Registry,
    /// The durable callback outbox (see `outbox`).
    pub outbox: Arc<crate::outbox::Outbox>,
    /// The runner's main runtime: background work that must outlive a job
    /// (callbacks) is spawned here, not on the job's own runtime.
    pub runtime: tokio::runtime::Handle,
    /// Full or read-only storage: no claims until it takes writes again.
    pub storage: crate::storage::Storage,
    /// The budget gate (reservations before real attempts).
    pub budget: crate::budget::Gate,
}

impl Ctx {
    pub fn known_agents(&self) -> Vec<&str> {
        self.registry.names()
    }
}

/// How a job run ended, for the runner's bookkeeping and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEnd {
    Finished(Status),
    Parked,
    Released,
    /// Over budget: back in `pending/` until the next UTC day.
    Deferred,
    LeaseLost,
    Quarantined,
    Error,
}

/// Runs a claimed job to its end. Never panics on bad input: an invalid job
/// file is quarantined, an I/O error fails the job with a clear error.
pub async fn run(ctx: Arc<Ctx>, claim: Claim, own: Arc<Ownership>) -> JobEnd {
    let loc = claim.loc.clone();
    let job_id = loc.entry.job_id.clone();
    let control = own.control.clone();
    let job = match parse_job(&claim.doc, &ctx.known_agents()) {
        Ok(j) => j,
        Err(reason) => {
            tracing::error!(job_id, %reason, "invalid job file; quarantining");
            let _ = ctx
                .queue
                .quarantine(&loc.path, &format!("invalid job: {reason}"));
            metrics::counter!("orch_corrupt_files_total").increment(1);
            return JobEnd::Quarantined;
        }
    };
    if job.job_id.as_str() != job_id {
        let reason = format!(
            "job_id in the file ({}) does not match the queue name ({job_id})",
            job.job_id
        );
        let _ = ctx.queue.quarantine(&loc.path, &reason);
        return JobEnd::Quarantined;
    }
    // The attempt records itself in the job's fence before it writes
    // anything; from then on every durable write below its artifacts and
    // workspace passes the fence.
    let starter = own.clone();
    let runner_id = ctx.cfg.runner_id.clone();
    match tokio::task::spawn_blocking(move || starter.start(&runner_id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e @ AttemptError::Storage { kind, .. })) => {
            // A full or read-only disk cannot take the attempt record: the
            // runner's fault, not the job's. The job goes back to pending
            // as it was (a rename needs no new blocks) and this runner
            // stops claiming, instead of leaving the claim to be reaped
            // until the job counts as poison.
            let kind = kind.as_str();
            ctx.storage.trip(kind, &e.to_string());
            tracing::warn!(job_id, kind, error = %e, "storage fault before the attempt started; giving the job back to pending");
            return match ctx
                .queue
                .move_to(&loc, State::Pending, &loc.entry.unowned())
            {
                Ok(_) => JobEnd::Released,
                Err(e) => {
                    tracing::error!(job_id, error = %e, "could not give the job back; its lease will expire");
                    JobEnd::Error
                }
            };
        }
        Ok(Err(e)) => {
            tracing::warn!(job_id, error = %e, "attempt not started");
            return JobEnd::LeaseLost;
        }
        Err(e) => {
            tracing::error!(job_id, error = %e, "attempt start task failed");
            return JobEnd::Error;
        }
    }
    let arts = ctx.store.job(&job.job_id);
    let workspace = ctx.cfg.workspaces_root.join(&job_id);
    let fence = fsqueue::durable::register_fence(
        &[arts.dir(), workspace.as_path()],
        Arc::new(OwnershipFence(own.clone())),
    );
    let mut run = JobRun {
        own,
        fence: Some(fence),
        arts,
        ctx: ctx.clone(),
        job,
        loc,
        control,
        state: None,
        work_dir: PathBuf::new(),
    };
    match run.execute().await {
        Ok(end) => end,
        Err(e) => {
            tracing::error!(job_id, error = %e, "job failed with an internal error");
            run.fail_internal(&e).await
        }
    }
}

fn parse_job(doc: &[u8], known_agents: &[&str]) -> Result<Job, String> {
    let value: Value = serde_json::from_slice(doc).map_err(|e| format!("not valid JSON: {e}"))?;
    contracts::validate::validate_job(&value, known_agents).map_err(|v| v.to_string())
}

struct JobRun {
    own: Arc<Ownership>,
    /// The attempt's fence over its artifacts and workspace, dropped once
    /// the job left `running/` (what follows, like the callback record, is
    /// no longer the attempt's work).
    fence: Option<fsqueue::durable::FenceRegistration>,
    ctx: Arc<Ctx>,
    arts: JobArtifacts,
    job: Job,
    loc: Located,
    control: JobControl,
    state: Option<JobState>,
    work_dir: PathBuf,
}

impl JobRun {
    fn state(&mut self) -> &mut JobState {
        self.state.get_or_insert_with(|| JobState {
            job_id: String::new(),
            status: Status::Running,
            started_at: None,
            finished_at: None,
            current_step: None,
            attempt: 0,
            gotos: 0,
            steps: Default::default(),
        })
    }

    /// Publishes state.json, but only while we still hold the lease.
    fn save_state(&mut self) -> Result<(), AttemptError> {
        self.check_lease()?;
        let st = self.state().clone();
        self.arts.write_state(&st)?;
        Ok(())
    }

    /// Renews the lease now and checks the owner's deadline. Publishes
    /// check again in the fence, immediately before their renames.
    fn check_lease(&self) -> Result<(), AttemptError> {
        if self.control.reason() == Some(StopReason::LeaseLost) {
            return Err(AttemptError::LeaseLost("the attempt lost its lease".into()));
        }
        self.own.renew()
    }

    /// The attempt, phase by phase. Before the first step:
    /// [`Self::start_job`] publishes `job.json` and `state.json`;
    /// [`Self::prepare_workspace`] fills the workspace; the registry's
    /// preflight checks the agents. Then every step that has not succeeded
    /// goes through [`Self::run_step`], and [`Self::decide_next`] picks the
    /// next one from its outcome. The job ends in [`Self::finish`],
    /// [`Self::park`], [`Self::stopped`] or [`Self::defer`]; an error
    /// ([`AttemptError`]) ends it in `fail_internal`.
    async fn execute(&mut self) -> Result<JobEnd, AttemptError> {
        let job_id = self.job.job_id.to_string();
        let root = self.ctx.cfg.workspaces_root.join(&job_id);
        self.work_dir = root.join("work");
        let state_dir = root.join("state");

        self.start_job()?;
        if let Some(err) = self.prepare_workspace(&state_dir).await? {
            return self.finish(Status::Failed, Some(err), &[]).await;
        }
        // Preflight: every agent the job names can run here (binaries
        // allowed, present, new enough; sandbox usable). Fails fast, never
        // retried: nothing would change on a retry.
        if let Err(e) = self.ctx.registry.preflight(&self.job).await {
            tracing::error!(job_id, error = %e.message, "preflight failed");
            return self.finish(Status::Failed, Some(e), &[]).await;
        }

        let mut context = self.load_context();
        let mut i = 0usize;
        let mut continued: Vec<String> = Vec::new();
        let (mut end_status, mut end_error) = loop {
            let Some(step) = self.job.steps.get(i).cloned() else {
                break (Status::Success, None);
            };
            let done = self
                .state()
                .steps
                .get(step.step_id.as_str())
                .is_some_and(|s| s.status == Status::Success);
            if done {
                i += 1;
                continue;
            }
            if let Some(why) = self.control.reason() {
                return self.stopped(why).await;
            }
            let result = match self.run_step(&step, &mut context, &state_dir).await {
                Err(AttemptError::Deferred(d)) => return self.defer(d),
                r => r?,
            };
            if crate::budget::refused(&result) {
                // Over budget ends the job whatever on_failure says.
                break (Status::Failed, Some(step_failure(&step, &result)));
            }
            if let Some(why) = self.control.reason()
                && why != StopReason::Cancelled
            {
                return self.stopped(why).await;
            }
            match self.decide_next(i, &step, &result, &mut continued) {
                Next::Step(n) => i = n,
                Next::End(status, error) => break (status, error),
                Next::Park => return self.park(&step).await,
            }
        };
        if end_status == Status::Success && !continued.is_empty() {
            end_status = Status::Failed;
            end_error = Some(ErrorInfo::new(
                "steps_failed_continued",
                format!(
                    "the job ran to the end, but these steps failed and were continued past (on_failure: continue): {}",
                    continued.join(", ")
                ),
            ));
        }
        self.finish(end_status, end_error, &continued).await
    }

    /// Phase 1, the attempt's first publish. Resumes `state.json` from what
    /// earlier attempts recorded (only the job-level status and attempt
    /// change) and publishes it with `job.json`. Writes: `job.json`,
    /// `state.json`, after a lease check, each rename under the fence.
    fn start_job(&mut self) -> Result<(), AttemptError> {
        let job_id = self.job.job_id.to_string();
        let prev = self.arts.read_state().ok().flatten();
        let resumed = prev.is_some();
        let mut st = prev.unwrap_or(JobState {
            job_id: job_id.clone(),
            status: Status::Running,
            started_at: Some(now_rfc3339()),
            finished_at: None,
            current_step: None,
            attempt: self.loc.entry.attempt,
            gotos: 0,
            steps: Default::default(),
        });
        // A reclaimed or released job (its state still says running) keeps
        // its goto count; one an operator sent back (retry, approve) starts
        // a fresh budget.
        if st.status != Status::Running {
            st.gotos = 0;
        }
        st.status = Status::Running;
        st.finished_at = None;
        st.attempt = self.loc.entry.attempt;
        self.state = Some(st);

        let mut stored_job = self.job.clone();
        stored_job.workdir = self.work_dir.display().to_string();
        self.check_lease()?;
        let st = self.state().clone();
        self.arts.init(&stored_job, &st)?;
        tracing::info!(
            job_id,
            resumed,
            attempt = self.loc.entry.attempt,
            "job started"
        );
        Ok(())
    }

    /// Phase 2: prepares the workspace (`work/`, from the job's source) and
    /// creates its `state/` directory. Writes: the workspace, through the
    /// durable layer, whose renames pass the fence. `Ok(Some(_))`: a
    /// refused or oversized source, which fails the job with its reason (a
    /// retry would meet the same source).
    async fn prepare_workspace(
        &mut self,
        state_dir: &Path,
    ) -> Result<Option<ErrorInfo>, AttemptError> {
        let cfg = &self.ctx.cfg;
        let source = self.workspace_source()?;
        let excludes = [
            abs(&cfg.queue_root),
            abs(&cfg.artifacts_root),
            abs(&cfg.workspaces_root),
        ];
        let work = self.work_dir.clone();
        let limits = cfg.workspace_limits;
        let prepared = tokio::task::spawn_blocking(move || {
            workers::prepare_with_limits(source.as_deref(), &work, &excludes, limits)
        })
        .await?;
        if let Err(e) = prepared {
            // Stopping (shutdown, lost lease) wins: the job is released.
            if self.control.reason().is_some() {
                return Err(e.into());
            }
            tracing::error!(job_id = %self.job.job_id, error = %e, "workspace preparation failed");
            return Ok(Some(ErrorInfo::new("workspace", e.to_string())));
        }
        fsqueue::durable::create_dir_all(state_dir)?;
        Ok(None)
    }

    /// The conversation so far (`context.json` of an earlier attempt, else
    /// the submitted `context_window`), normalised by the strategy before
    /// the first step sees it (a no-op on an already normalised one).
    /// Reads only.
    fn load_context(&self) -> ContextDoc {
        let mut context = match self.arts.read_context().ok().flatten() {
            Some(c) => c,
            None => ContextDoc {
                strategy: self.job.context_strategy,
                messages: self.job.context_window.clone(),
                updated_at: now_rfc3339(),
            },
        };
        apply_strategy(&mut context);
        context
    }

    /// The last phase of a step: where the job goes after step `i` ended
    /// with `result` (success, cancel, `needs_human`, or the step's
    /// `on_failure`). Writes nothing durable: a `goto` changes the
    /// in-memory state (its count, and the steps to run again), which the
    /// next step's `begin_step` publishes, so a reclaim or resume keeps it.
    fn decide_next(
        &mut self,
        i: usize,
        step: &Step,
        result: &ResultDoc,
        continued: &mut Vec<String>,
    ) -> Next {
        match result.status {
            Status::Success => Next::Step(i + 1),
            Status::Cancelled => Next::End(
                Status::Cancelled,
                Some(ErrorInfo::new(
                    "cancelled",
                    "the job was cancelled by an operator",
                )),
            ),
            Status::NeedsHuman => Next::Park,
            _ => match &step.on_failure {
                OnFailure::Stop => Next::End(Status::Failed, Some(step_failure(step, result))),
                OnFailure::Continue => {
                    tracing::warn!(job_id = %self.job.job_id, step_id = %step.step_id, "step failed; continuing as configured");
                    continued.push(step.step_id.to_string());
                    Next::Step(i + 1)
                }
                OnFailure::AskHuman => Next::Park,
                OnFailure::Goto(target) => {
                    let taken = self.state().gotos;
                    if taken >= self.ctx.cfg.max_goto {
                        return Next::End(
                            Status::Failed,
                            Some(ErrorInfo::new(
                                "goto_limit",
                                format!(
                                    "step {} failed and its goto:{target} was taken {taken} times already, the most RUNNER_MAX_GOTO={} allows",
                                    step.step_id, self.ctx.cfg.max_goto
                                ),
                            )),
                        );
                    }
                    self.state().gotos = taken + 1;
                    let t = self.job.step_index(target.as_str()).unwrap_or(i);
                    // Steps from the target on run again.
                    let ids: Vec<String> = self.job.steps[t..=i.max(t)]
                        .iter()
                        .map(|s| s.step_id.to_string())
                        .collect();
                    for id in ids {
                        if let Some(s) = self.state().steps.get_mut(&id) {
                            s.status = Status::Retryable;
                        }
                    }
                    Next::Step(t)
                }
            },
        }
    }

    /// The directory the workspace is prepared from, if any.
    fn workspace_source(&self) -> Result<Option<PathBuf>, AttemptError> {
        if let Some(pid) = &self.job.project_id {
            let path = self
                .ctx
                .cfg
                .project_aliases
                .iter()
                .find(|(id, _)| id == pid)
                .map(|(_, p)| p.clone())
                .ok_or_else(|| {
                    AttemptError::Invalid(format!(
                        "project_id {pid:?} is not configured in PROJECT_ALIASES"
                    ))
                })?;
            return Ok(Some(path));
        }
        let trusted = !matches!(self.job.source.kind, contracts::SourceType::Webhook);
        if trusted && self.job.workdir != "." {
            let p = PathBuf::from(&self.job.workdir);
            if !p.is_absolute() {
                return Err(AttemptError::Invalid(format!(
                    "workdir {:?} is relative; submit it as an absolute path",
                    self.job.workdir
                )));
            }
            if !p.is_dir() {
                return Err(AttemptError::Invalid(format!(
                    "workdir {} is not a directory",
                    p.display()
                )));
            }
            return Ok(Some(p));
        }
        Ok(None)
    }

    /// One step, from its start to its published outcome, in phases:
    /// [`Self::begin_step`] → [`Self::hand_off`] → [`Self::run_attempts`]
    /// → [`Self::collect`] → [`Self::publish_step`]. Every durable write
    /// is in `begin_step`, `hand_off`, `run_attempts` (a retry's attempt
    /// number) and `publish_step`; each checks the lease first and passes
    /// the attempt's fence. A stop from outside (shutdown, lost lease)
    /// between `run_attempts` and `collect` publishes nothing more
    /// ([`AttemptError::Stopped`]).
    async fn run_step(
        &mut self,
        step: &Step,
        context: &mut ContextDoc,
        state_dir: &Path,
    ) -> Result<ResultDoc, AttemptError> {
        let started_at = now_rfc3339();
        let base = self.begin_step(step, &started_at)?;
        let handoff = self.hand_off(step).await?;
        let mut prompt_step = step.clone();
        prompt_step.input_artifacts = handoff.input_artifacts;
        let prompt = prompt::build(
            &self.job,
            &prompt_step,
            &context.messages,
            &self.arts,
            self.ctx.cfg.input_limits,
            self.ctx.cfg.prompts_dir.as_deref(),
        );
        // The snapshot is taken after the patches are applied, so this
        // step's patch.diff holds only its own change.
        let work = self.work_dir.clone();
        let before = tokio::task::spawn_blocking(move || workers::Snapshot::take(&work)).await??;
        let t0 = Instant::now();
        let (mut outcome, attempt) = self
            .run_attempts(step, base, handoff.pre_failure, &prompt, state_dir)
            .await?;
        if let Some(why) = self.control.reason()
            && why != StopReason::Cancelled
        {
            return Err(AttemptError::Stopped(why));
        }
        outcome.logs = format!("{}{}", handoff.pre_logs, outcome.logs);
        let collected = self
            .collect(step, outcome, attempt, before, t0, started_at)
            .await?;
        self.publish_step(step, attempt, collected, context)
    }

    /// Step phase 1: marks the step running and announces its first
    /// attempt. Attempts are numbered across runs of the step: a step
    /// resumed after approval, a reaped claim, a shutdown or a `goto`
    /// continues from the attempts it already made, so `attempts` counts
    /// every attempt that really happened; each run gets a fresh retry
    /// budget. Returns the attempts made before this run. Writes: the
    /// step's running `result.json` and `state.json`, after a lease check,
    /// under the fence.
    fn begin_step(&mut self, step: &Step, started_at: &str) -> Result<u32, AttemptError> {
        let sid = step.step_id.to_string();
        let base = self
            .state()
            .steps
            .get(&sid)
            .filter(|s| s.status != Status::Success)
            .map(|s| s.attempt)
            .unwrap_or(0);
        {
            let st = self.state();
            st.current_step = Some(sid.clone());
            st.steps.insert(
                sid,
                StepState {
                    status: Status::Running,
                    attempt: base + 1,
                    agent: step.agent.clone(),
                    role: step.role.clone(),
                    started_at: Some(started_at.to_owned()),
                    finished_at: None,
                    summary: String::new(),
                },
            );
        }
        self.check_lease()?;
        let st = self.state().clone();
        self.arts.begin_step_with_state(step, base + 1, Some(&st))?;
        fsqueue::fault::point("runner.step.begun");
        Ok(base)
    }

    /// Step phase 2, the hand-off (`handoff`): what this step reads, and
    /// the patches it starts from, applied to the workspace. Writes: the
    /// workspace, by git, outside the durable layer's renames, so the
    /// attempt's fence is held for the whole apply: a stale attempt
    /// applies nothing and a newer one cannot start meanwhile (a refused
    /// fence is [`AttemptError::LeaseLost`]). A patch that does not apply
    /// becomes the step's outcome (`pre_failure`), not an error.
    async fn hand_off(&mut self, step: &Step) -> Result<Handoff, AttemptError> {
        let index = self.job.step_index(step.step_id.as_str()).unwrap_or(0);
        let st = self.state().clone();
        let inputs = crate::handoff::inputs(&self.job, index, &st, &self.arts);
        let mut pre_logs = format!("[orch] {}\n", inputs.note);
        let mut pre_failure: Option<StepOutcome> = None;
        if !inputs.apply_patches_from.is_empty() {
            let arts = self.arts.clone();
            let work = self.work_dir.clone();
            let list = inputs.apply_patches_from.clone();
            let own = self.own.clone();
            let applied = tokio::task::spawn_blocking(move || {
                use fsqueue::durable::Fence as _;
                let _held = OwnershipFence(own).hold()?;
                Ok::<_, std::io::Error>(crate::handoff::apply_patches(&arts, &work, &list))
            })
            .await?
            .map_err(|e| {
                AttemptError::LeaseLost(format!("hand-off refused by the attempt's fence: {e}"))
            })?;
            match applied {
                Ok(lines) => {
                    for l in lines {
                        pre_logs.push_str(&format!("[orch] apply_patches_from: {l}\n"));
                    }
                }
                Err(e) => {
                    tracing::warn!(job_id = %self.job.job_id, step_id = %step.step_id, code = %e.code, error = %e.message, "apply_patches_from failed");
                    pre_logs.push_str(&format!("[orch] {}\n", e.message));
                    // Not retryable: the same patches meet the same workspace.
                    pre_failure = Some(StepOutcome::failure(Status::Failed, e));
                }
            }
        }
        Ok(Handoff {
            input_artifacts: inputs.input_artifacts,
            pre_logs,
            pre_failure,
        })
    }

    /// Step phase 3: the agent's attempts, with the budget gate before each
    /// and backoff between retryable ones, until one is final, the retries
    /// are used up, or the job is stopped (an operator's cancel becomes a
    /// `cancelled` outcome). Returns the last outcome and its attempt
    /// number. Writes: `state.json` with the attempt number of every retry
    /// (after a lease check, under the fence); the agent writes the
    /// workspace. Over budget with `defer`: [`AttemptError::Deferred`].
    async fn run_attempts(
        &mut self,
        step: &Step,
        base: u32,
        mut pre_failure: Option<StepOutcome>,
        prompt: &str,
        state_dir: &Path,
    ) -> Result<(StepOutcome, u32), AttemptError> {
        let job_id = self.job.job_id.to_string();
        let sid = step.step_id.to_string();
        let worker = self.ctx.registry.get(&step.agent);
        let max_attempts = step.max_retries.saturating_add(1);
        let mut outcome: StepOutcome;
        let mut attempt = 0u32;
        loop {
            if let Some(f) = pre_failure.take() {
                attempt = base + 1;
                outcome = f;
                break;
            }
            attempt = if attempt == 0 { base + 1 } else { attempt + 1 };
            // The first attempt was announced with the step itself.
            if attempt > base + 1 {
                if let Some(s) = self.state().steps.get_mut(&sid) {
                    s.attempt = attempt;
                }
                self.save_state()?;
            }
            let req = StepRequest {
                job_id: self.job.job_id.clone(),
                step: step.clone(),
                attempt,
                prompt: prompt.to_owned(),
                workdir: self.work_dir.clone(),
                state_dir: state_dir.to_path_buf(),
                goal: self.job.goal.clone(),
                policy: self.job.policy.clone(),
            };
            let reservation = match worker
                .as_ref()
                .map(|_| self.ctx.budget.admit(&self.job, step, attempt))
            {
                None | Some(crate::budget::Admit::Go(None)) => None,
                Some(crate::budget::Admit::Go(r)) => r,
                Some(crate::budget::Admit::Defer(d)) => return Err(AttemptError::Deferred(d)),
                Some(crate::budget::Admit::Refuse(o)) => {
                    outcome = *o;
                    if !outcome.is_retryable() || attempt - base >= max_attempts {
                        break;
                    }
                    self.pause(backoff(step.retry_backoff_sec, attempt - base))
                        .await;
                    if self.control.reason() == Some(StopReason::Cancelled) {
                        outcome = StepOutcome::cancelled("cancelled by an operator");
                    }
                    if self.control.cancel.is_cancelled() {
                        break;
                    }
                    continue;
                }
            };
            let a0 = Instant::now();
            outcome = self.run_agent(worker.as_ref(), &req).await;
            self.ctx.budget.settle(reservation, &outcome);
            let agent = step.agent.clone();
            metrics::counter!("orch_step_attempts_total", "agent" => agent.clone(), "status" => outcome.status.as_str())
                .increment(1);
            metrics::histogram!("orch_step_attempt_duration_seconds", "agent" => agent)
                .record(a0.elapsed().as_secs_f64());
            if self.control.cancel.is_cancelled() {
                if self.control.reason() == Some(StopReason::Cancelled) {
                    outcome = StepOutcome::cancelled("cancelled by an operator");
                }
                break;
            }
            let retryable = matches!(outcome.status, Status::Retryable | Status::Timeout);
            tracing::info!(job_id, step_id = %sid, attempt, status = %outcome.status, "attempt finished");
            if !retryable || attempt - base >= max_attempts {
                break;
            }
            self.pause(backoff(step.retry_backoff_sec, attempt - base))
                .await;
        }
        Ok((outcome, attempt))
    }

    /// Sleeps `delay` between attempts; a stop of the job ends it early.
    async fn pause(&self, delay: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.control.cancel.cancelled() => {}
        }
    }

    /// One attempt of the agent, `None` when this runner does not have it.
    /// Real agents enforce `timeout_sec` themselves (TERM, then KILL of the
    /// process group) and report `timeout`; the outer limit here is the
    /// backstop. Writes nothing itself (the agent writes the workspace).
    async fn run_agent(&self, worker: Option<&Arc<dyn Worker>>, req: &StepRequest) -> StepOutcome {
        let step = &req.step;
        let Some(w) = worker else {
            return StepOutcome::failure(
                Status::Failed,
                ErrorInfo::new(
                    "unknown_agent",
                    format!("agent {:?} is not available on this runner", step.agent),
                ),
            );
        };
        let child = self.control.cancel.child_token();
        let margin = if self.ctx.registry.is_real() { 10 } else { 0 };
        let limit = Duration::from_secs(u64::from(step.timeout_sec) + margin);
        match tokio::time::timeout(limit, w.run(req, child.clone())).await {
            Ok(o) => o,
            Err(_) => {
                child.cancel();
                StepOutcome::failure(
                    Status::Timeout,
                    ErrorInfo::new(
                        "timeout",
                        format!(
                            "the attempt ran longer than timeout_sec={}",
                            step.timeout_sec
                        ),
                    ),
                )
            }
        }
    }

    /// Step phase 4: turns the last outcome into the step's result: the
    /// workspace's change since `before` (its `patch.diff`), every output
    /// scanned for secrets and redacted (`SECRETS_POLICY=fail` fails the
    /// step), metrics and summary. Reads the workspace; writes nothing.
    async fn collect(
        &self,
        step: &Step,
        outcome: StepOutcome,
        attempt: u32,
        before: workers::Snapshot,
        t0: Instant,
        started_at: String,
    ) -> Result<Collected, AttemptError> {
        let job_id = self.job.job_id.to_string();
        let sid = step.step_id.to_string();
        // An exhausted retryable failure is a failure; a timeout stays a timeout.
        let mut status = match outcome.status {
            Status::Retryable => Status::Failed,
            s => s,
        };
        let work = self.work_dir.clone();
        let patch = tokio::task::spawn_blocking(move || {
            workers::Snapshot::take(&work).map(|after| workers::diff(&before, &after))
        })
        .await??;
        let change_status = if patch.is_empty() {
            "no_changes"
        } else {
            "changed"
        };
        let finished_at = now_rfc3339();
        let mut out = scrub(outcome, patch, &self.ctx.cfg.sensitive_env);
        let secrets_check = if out.found.is_empty() {
            "passed"
        } else {
            "failed"
        };
        if !out.found.is_empty() {
            let rules: std::collections::BTreeSet<&str> =
                out.found.iter().map(|f| f.rule_id.as_str()).collect();
            let rules = rules.into_iter().collect::<Vec<_>>().join(", ");
            let list = serde_json::to_value(&out.found).unwrap_or(Value::Null);
            tracing::warn!(job_id, step_id = %sid, %rules, "secrets in step output were redacted");
            if self.ctx.cfg.secrets_fail {
                let mut e = out.error.take().unwrap_or_else(|| {
                    ErrorInfo::new(
                        "secrets_detected",
                        format!(
                            "the step's output contained secrets ({rules}); they were redacted, and SECRETS_POLICY=fail fails the step"
                        ),
                    )
                });
                e.details.insert("secrets".into(), list);
                out.error = Some(e);
                if status == Status::Success {
                    status = Status::Failed;
                }
            } else {
                out.metrics.insert("secrets".into(), list);
            }
        }
        let mut metrics_map = std::mem::take(&mut out.metrics);
        metrics_map.insert("duration_ms".into(), json!(t0.elapsed().as_millis() as u64));
        metrics_map.entry("cost_usd").or_insert(json!(0.0));
        metrics_map.entry("tokens_in").or_insert(json!(0));
        metrics_map.entry("tokens_out").or_insert(json!(0));
        let mut summary = std::mem::take(&mut out.summary);
        if status != Status::Success && matches!(step.on_failure, OnFailure::Continue) {
            summary = format!(
                "{summary} (failed; the job continued past this step because on_failure is continue)"
            );
        }
        let result = ResultDoc {
            schema_version: contracts::SCHEMA_VERSION.into(),
            kind: ResultKind::Step,
            job_id,
            step_id: Some(sid),
            agent: Some(step.agent.clone()),
            role: Some(step.role.clone()),
            status,
            attempts: attempt.clamp(1, 50),
            started_at,
            finished_at,
            summary,
            change_status: Some(change_status.into()),
            secrets_check: Some(secrets_check.into()),
            artifacts: artifacts::step_result_paths(&step.step_id),
            metrics: metrics_map,
            error: out.error.take(),
            steps: None,
        };
        Ok(Collected { result, out })
    }

    /// Step phase 5, the step's last publish: its final state, the context
    /// (what was asked, and how it went) and its artifacts (`report.md`,
    /// `patch.diff`, `logs.txt`, raw output, `result.json`) together, after
    /// a lease check, every rename under the fence.
    fn publish_step(
        &mut self,
        step: &Step,
        attempt: u32,
        collected: Collected,
        context: &mut ContextDoc,
    ) -> Result<ResultDoc, AttemptError> {
        let Collected { result, out } = collected;
        let sid = step.step_id.to_string();
        let status = result.status;
        let summary = result.summary.clone();
        // What the step looked like before: put back when the publish
        // fails, so a job given back is not saved with a finished step
        // whose result never reached the disk (the next attempt would skip
        // it).
        let before = (self.state().steps.get(&sid).cloned(), context.clone());
        self.state().steps.insert(
            sid.clone(),
            StepState {
                status,
                attempt,
                agent: step.agent.clone(),
                role: step.role.clone(),
                started_at: Some(result.started_at.clone()),
                finished_at: Some(result.finished_at.clone()),
                summary: summary.clone(),
            },
        );
        context.messages.push(ContextMessage {
            role: "user".into(),
            content: format!("[{sid}] {}", step.prompt),
            extra: Map::new(),
        });
        context.messages.push(ContextMessage {
            role: "assistant".into(),
            content: format!("[{sid} {}:{}] {status}: {summary}", step.agent, step.role),
            extra: Map::new(),
        });
        apply_strategy(context);
        context.updated_at = now_rfc3339();
        let published = self.check_lease().and_then(|()| {
            let st = self.state().clone();
            self.arts
                .publish_step_with(
                    &step.step_id,
                    &StepOutput {
                        report_md: out.report_md,
                        patch_diff: out.patch,
                        logs_txt: out.logs,
                        result: result.clone(),
                        raw_stdout: out.raw_stdout,
                        raw_stderr: out.raw_stderr,
                    },
                    Some((&st, context)),
                )
                .map_err(AttemptError::from)
        });
        if let Err(e) = published {
            let (step_before, context_before) = before;
            match step_before {
                Some(b) => self.state().steps.insert(sid, b),
                None => self.state().steps.remove(&sid),
            };
            *context = context_before;
            return Err(e);
        }
        fsqueue::fault::point("runner.step.published");
        Ok(result)
    }

    /// Collects the step results of this job in step order.
    fn step_results(&self) -> Vec<ResultDoc> {
        self.job
            .steps
            .iter()
            .filter_map(|s| self.arts.read_step_result(&s.step_id).ok().flatten())
            .filter(|r| r.status != Status::Running)
            .collect()
    }

    fn job_result(
        &mut self,
        status: Status,
        error: Option<ErrorInfo>,
        continued: &[String],
    ) -> ResultDoc {
        let steps = self.step_results();
        let mut cost = 0.0f64;
        let (mut tin, mut tout) = (0u64, 0u64);
        for r in &steps {
            cost += r
                .metrics
                .get("cost_usd")
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            tin += r
                .metrics
                .get("tokens_in")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            tout += r
                .metrics
                .get("tokens_out")
                .and_then(Value::as_u64)
                .unwrap_or(0);
        }
        let ok = steps.iter().filter(|r| r.status == Status::Success).count();
        let mut summary = match status {
            Status::Success => format!("all {} steps succeeded", self.job.steps.len()),
            Status::NeedsHuman => "waiting for a human decision".to_owned(),
            Status::Cancelled => "cancelled".to_owned(),
            _ => format!("{ok} of {} steps succeeded", self.job.steps.len()),
        };
        if !continued.is_empty() {
            summary.push_str(&format!(
                "; failed steps continued past: {}",
                continued.join(", ")
            ));
        }
        if let Some(e) = &error
            && status != Status::Success
        {
            summary.push_str(&format!("; {}", e.message));
        }
        let st = self.state().clone();
        let started = st.started_at.clone().unwrap_or_else(now_rfc3339);
        let duration_ms = jiff::Timestamp::now()
            .since(
                started
                    .parse::<jiff::Timestamp>()
                    .unwrap_or_else(|_| jiff::Timestamp::now()),
            )
            .ok()
            .and_then(|s| s.total(jiff::Unit::Millisecond).ok())
            .unwrap_or(0.0)
            .max(0.0) as u64;
        let change = if steps
            .iter()
            .any(|r| r.change_status.as_deref() == Some("changed"))
        {
            "changed"
        } else {
            "no_changes"
        };
        let attempts = steps
            .iter()
            .map(|r| r.attempts)
            .max()
            .unwrap_or(1)
            .clamp(1, 50);
        let mut metrics_map = Map::new();
        metrics_map.insert("duration_ms".into(), json!(duration_ms));
        metrics_map.insert("cost_usd".into(), json!(cost));
        metrics_map.insert("tokens_in".into(), json!(tin));
        metrics_map.insert("tokens_out".into(), json!(tout));
        metrics_map.insert("queue_attempt".into(), json!(self.loc.entry.attempt));
        ResultDoc {
            schema_version: contracts::SCHEMA_VERSION.into(),
            kind: ResultKind::Job,
            job_id: self.job.job_id.to_string(),
            step_id: None,
            agent: None,
            role: None,
            status,
            attempts,
            started_at: started,
            finished_at: now_rfc3339(),
            summary,
            change_status: Some(change.into()),
            secrets_check: None,
            artifacts: artifacts::job_result_paths(),
            metrics: metrics_map,
            error,
            steps: Some(steps),
        }
    }

    /// Ends the job with `status`. Writes: the job's `result.json` with its
    /// final `state.json` (after a lease check, under the fence), then the
    /// queue move to `done/` or `failed/`, which names the running file
    /// (see [`Self::move_with_callback`]).
    async fn finish(
        &mut self,
        status: Status,
        error: Option<ErrorInfo>,
        continued: &[String],
    ) -> Result<JobEnd, AttemptError> {
        let result = self.job_result(status, error, continued);
        {
            let st = self.state();
            st.status = status;
            st.current_step = None;
            st.finished_at = Some(result.finished_at.clone());
        }
        self.check_lease()?;
        let st = self.state().clone();
        self.arts
            .finish_job_with_state(&self.job, &result, Some(&st))?;
        fsqueue::fault::point("runner.job.final_artifacts");
        let to = if status == Status::Success {
            State::Done
        } else {
            State::Failed
        };
        self.move_with_callback(to, &result)?;
        fsqueue::fault::point("runner.job.moved");
        record_job_metrics(status, &result);
        tracing::info!(job_id = %self.job.job_id, status = %status, summary = %result.summary, "job finished");
        Ok(JobEnd::Finished(status))
    }

    /// The job's last queue move, from its running file (the move's fencing
    /// token: a reaped attempt no longer has it, and its move fails with
    /// [`AttemptError::LeaseLost`]). Drops the attempt's fence registration
    /// once the job left `running/`.
    fn move_queue(&mut self, to: State) -> Result<Located, AttemptError> {
        let entry: Entry = self.loc.entry.unowned();
        match self.ctx.queue.move_to(&self.loc, to, &entry) {
            Ok(l) => {
                self.fence = None;
                Ok(l)
            }
            Err(e @ QueueError::LeaseLost { .. }) => {
                self.own
                    .lose("the running file is gone before the final move");
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Moves the job to `to`, with the `callback_url` delivery of `result`
    /// staged in the durable outbox first and released to the senders
    /// after the move: the receiver never hears of an outcome the queue
    /// does not show, and a crash between the two loses nothing (see
    /// `outbox`).
    fn move_with_callback(
        &mut self,
        to: State,
        result: &ResultDoc,
    ) -> Result<Located, AttemptError> {
        let Some(url) = self.job.callback_url.as_deref() else {
            return self.move_queue(to);
        };
        let staged = self.ctx.outbox.stage(&self.loc, to, url, result)?;
        match self.move_queue(to) {
            Ok(l) => {
                self.ctx.outbox.kick();
                Ok(l)
            }
            Err(e) => {
                self.ctx.outbox.discard(&staged);
                Err(e)
            }
        }
    }

    /// Parks the job in `awaiting_approval/` (needs_human / ask_human).
    /// Writes as [`Self::finish`] does, with the step to resume at.
    async fn park(&mut self, step: &Step) -> Result<JobEnd, AttemptError> {
        let err = ErrorInfo::new(
            "needs_human",
            format!(
                "step {} needs a human decision; approve the job to resume at this step",
                step.step_id
            ),
        );
        let result = self.job_result(Status::NeedsHuman, Some(err), &[]);
        {
            let st = self.state();
            st.status = Status::NeedsHuman;
            st.current_step = Some(step.step_id.to_string());
        }
        self.check_lease()?;
        let st = self.state().clone();
        self.arts
            .finish_job_with_state(&self.job, &result, Some(&st))?;
        self.move_with_callback(State::AwaitingApproval, &result)?;
        tracing::info!(job_id = %self.job.job_id, step_id = %step.step_id, "job parked for approval");
        Ok(JobEnd::Parked)
    }

    /// The job was stopped from outside, between or during steps.
    async fn stopped(&mut self, why: StopReason) -> Result<JobEnd, AttemptError> {
        match why {
            StopReason::LeaseLost => {
                tracing::warn!(job_id = %self.job.job_id, "lease lost; abandoning the job to its new owner");
                Ok(JobEnd::LeaseLost)
            }
            StopReason::Shutdown => {
                self.release()?;
                Ok(JobEnd::Released)
            }
            StopReason::Cancelled => {
                let err = ErrorInfo::new("cancelled", "the job was cancelled by an operator");
                self.finish(Status::Cancelled, Some(err), &[]).await
            }
        }
    }

    /// Over budget with `BUDGET_EXCEEDED_ACTION=defer`: the refused attempt
    /// is taken back (it never ran) and the job returns to `pending/` with a
    /// not-before time, so no runner claims it before the UTC day rolls.
    fn defer(&mut self, d: crate::budget::Deferred) -> Result<JobEnd, AttemptError> {
        let cur = self.state().current_step.clone();
        if let Some(cur) = cur
            && let Some(s) = self.state().steps.get_mut(&cur)
        {
            s.status = Status::Retryable;
            s.attempt = d.attempt.saturating_sub(1);
            s.summary = format!("deferred: {}", d.message);
        }
        self.save_state()?;
        let entry = self.loc.entry.deferred_until(d.until);
        match self.ctx.queue.move_to(&self.loc, State::Pending, &entry) {
            Ok(_) => {}
            Err(QueueError::LeaseLost { .. }) => {
                self.control.stop(StopReason::LeaseLost);
                return Ok(JobEnd::LeaseLost);
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(job_id = %self.job.job_id, not_before = d.until, reason = %d.message, "over budget; job deferred to the next UTC day");
        Ok(JobEnd::Deferred)
    }

    /// Gives the job back to `pending/` so another runner resumes it.
    fn release(&mut self) -> Result<(), AttemptError> {
        self.release_because("interrupted by runner shutdown; will resume")
    }

    /// Gives the job back to `pending/`, its running step marked retryable
    /// with `why`. Writes: `state.json` only if a renewal still succeeds
    /// (best effort, under the fence), then the queue move.
    fn release_because(&mut self, why: &str) -> Result<(), AttemptError> {
        // Interrupted steps show as retryable so observers do not see a
        // "running" step that nobody runs.
        let cur = self.state().current_step.clone();
        if let Some(cur) = cur
            && let Some(s) = self.state().steps.get_mut(&cur)
            && s.status == Status::Running
        {
            s.status = Status::Retryable;
            s.summary = why.into();
        }
        if self.own.renew().is_ok() {
            let st = self.state().clone();
            let _ = self.arts.write_state(&st);
        }
        self.move_queue(State::Pending)?;
        tracing::info!(job_id = %self.job.job_id, "job released to pending for another runner");
        Ok(())
    }

    /// The attempt ended with `e`. By its variant: `LeaseLost` touches
    /// nothing (the job is its new owner's); when the job was stopped
    /// (shutdown, lost lease) the stop decides; `Storage` gives the job
    /// back and stops claiming ([`Self::give_back`]); anything else fails
    /// the job with the error recorded, and if even that cannot be
    /// recorded the job is given back.
    async fn fail_internal(&mut self, e: &AttemptError) -> JobEnd {
        if let AttemptError::LeaseLost(_) = e {
            self.own.lose(&e.to_string());
            return JobEnd::LeaseLost;
        }
        match self.control.reason() {
            Some(StopReason::LeaseLost) => return JobEnd::LeaseLost,
            Some(StopReason::Shutdown) => {
                return match self.release() {
                    Ok(()) => JobEnd::Released,
                    Err(_) => JobEnd::Error,
                };
            }
            _ => {}
        }
        // A full or read-only disk is the runner's fault, not the job's.
        if let Some(kind) = e.storage_kind() {
            return self.give_back(kind.as_str(), &e.to_string());
        }
        let err = ErrorInfo::new("internal", e.to_string());
        match self.finish(Status::Failed, Some(err), &[]).await {
            Ok(end) => end,
            Err(e2) => {
                tracing::error!(job_id = %self.job.job_id, error = %e2, "could not record the failure");
                // A job is never failed without a result that says why:
                // if its outcome cannot be recorded, this runner cannot
                // record anything; it holds back and the job waits.
                if self.control.reason() == Some(StopReason::LeaseLost) {
                    return JobEnd::LeaseLost;
                }
                let kind = e2.storage_kind().map_or("io", |k| k.as_str());
                self.give_back(kind, &e2.to_string())
            }
        }
    }

    /// A storage fault: the runner stops claiming, the job goes back to
    /// `pending/` as it was.
    fn give_back(&mut self, kind: &str, error: &str) -> JobEnd {
        self.ctx.storage.trip(kind, error);
        tracing::warn!(job_id = %self.job.job_id, kind, error, "storage fault; giving the job back to pending");
        match self.release_because(&format!(
            "interrupted by a storage fault ({kind}); will resume"
        )) {
            Ok(()) => JobEnd::Released,
            Err(e) => {
                tracing::error!(job_id = %self.job.job_id, error = %e, "could not give the job back; its lease will expire");
                JobEnd::Error
            }
        }
    }
}

/// Where the job goes after a step (see `JobRun::decide_next`).
enum Next {
    /// Run the step at this index (past the last one: the job succeeded).
    Step(usize),
    /// End the job with this status and error.
    End(Status, Option<ErrorInfo>),
    /// Park the job in `awaiting_approval/` at this step.
    Park,
}

/// What the hand-off gives a step (see `JobRun::hand_off`).
struct Handoff {
    /// The input artifacts its prompt renders.
    input_artifacts: Vec<String>,
    /// Log lines of the hand-off, put before the agent's logs.
    pre_logs: String,
    /// A patch that did not apply: the step's outcome, without running.
    pre_failure: Option<StepOutcome>,
}

/// A step's result and its scrubbed outputs, ready to publish.
struct Collected {
    result: ResultDoc,
    out: Scrubbed,
}

/// A step's outputs after secrets scanning and redaction.
struct Scrubbed {
    report_md: String,
    patch: String,
    logs: String,
    summary: String,
    raw_stdout: Option<Vec<u8>>,
    raw_stderr: Option<Vec<u8>>,
    error: Option<ErrorInfo>,
    metrics: Map<String, Value>,
    found: Vec<artifacts::secrets::Located>,
}

/// Scans everything a step will publish and redacts secrets (and values of
/// `SENSITIVE_ENV_VARS`) in place, before anything is written: no raw secret
/// ever lands in the artifacts tree.
fn scrub(outcome: StepOutcome, patch: String, sensitive: &[(String, String)]) -> Scrubbed {
    use artifacts::secrets::{redact_artifact, redact_artifact_bytes};
    let mut s = Scrubbed {
        report_md: outcome.report_md,
        patch,
        logs: outcome.logs,
        summary: outcome.summary,
        raw_stdout: outcome.raw_stdout,
        raw_stderr: outcome.raw_stderr,
        error: outcome.error,
        metrics: outcome.metrics,
        found: Vec::new(),
    };
    let f = &mut s.found;
    redact_artifact("report.md", &mut s.report_md, sensitive, f);
    redact_artifact("patch.diff", &mut s.patch, sensitive, f);
    redact_artifact("logs.txt", &mut s.logs, sensitive, f);
    redact_artifact("summary", &mut s.summary, sensitive, f);
    if let Some(b) = s.raw_stdout.as_mut() {
        redact_artifact_bytes("raw_stdout.txt", b, sensitive, f);
    }
    if let Some(b) = s.raw_stderr.as_mut() {
        redact_artifact_bytes("raw_stderr.txt", b, sensitive, f);
    }
    if let Some(e) = s.error.as_mut() {
        redact_artifact("error", &mut e.message, sensitive, f);
    }
    s
}

fn step_failure(step: &Step, r: &ResultDoc) -> ErrorInfo {
    let mut e = r.error.clone().unwrap_or_else(|| {
        ErrorInfo::new(
            r.status.as_str(),
            format!("step {} ended {}", step.step_id, r.status),
        )
    });
    e.details
        .insert("step_id".into(), json!(step.step_id.as_str()));
    e
}

/// Exponential backoff from `base_sec`, capped at 60 s, with ±20 % jitter so
/// runners retrying the same flaky API do not stampede in lockstep.
pub fn backoff(base_sec: u32, attempt: u32) -> Duration {
    let base = f64::from(base_sec) * 2f64.powi(attempt.saturating_sub(1).min(16) as i32);
    let capped = base.min(60.0);
    let jitter = 0.8 + 0.4 * (random_u32() as f64 / u32::MAX as f64);
    Duration::from_secs_f64(capped * jitter)
}

fn random_u32() -> u32 {
    let h = contracts::ids::random_hex32();
    u32::from_str_radix(&h[..8], 16).unwrap_or(0)
}

/// Applies the context strategy: `full` keeps everything; `sliding` keeps
/// the last 12 messages; `summarize` folds older messages into one system
/// message of at most 4000 chars and keeps the last 11.
pub fn apply_strategy(ctx: &mut ContextDoc) {
    let msgs = &mut ctx.messages;
    match ctx.strategy {
        ContextStrategy::Full => {}
        ContextStrategy::Sliding => {
            if msgs.len() > 12 {
                let cut = msgs.len() - 12;
                msgs.drain(..cut);
            }
        }
        ContextStrategy::Summarize => {
            if msgs.len() > 12 {
                let cut = msgs.len() - 11;
                let old: Vec<ContextMessage> = msgs.drain(..cut).collect();
                let mut text = String::from("Summary of earlier context:\n");
                for m in &old {
                    text.push_str(&format!(
                        "- [{}] {}\n",
                        m.role,
                        m.content.replace('\n', " ")
                    ));
                }
                let text: String = text.chars().take(4000).collect();
                msgs.insert(
                    0,
                    ContextMessage {
                        role: "system".into(),
                        content: text,
                        extra: Map::new(),
                    },
                );
            }
        }
    }
}

fn record_job_metrics(status: Status, result: &ResultDoc) {
    metrics::counter!("orch_jobs_finished_total", "status" => status.as_str()).increment(1);
    if let Some(ms) = result.metrics.get("duration_ms").and_then(Value::as_u64) {
        metrics::histogram!("orch_job_duration_seconds", "status" => status.as_str())
            .record(ms as f64 / 1000.0);
    }
}

fn abs(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
