//! `ArtifactStore` (the `artifacts/` root) and `JobArtifacts` (one job's
//! directory): every read and write of the artifacts tree goes through here.
//!
//! Three rules shape this file:
//! - **Paths come only from validated ids and fixed names.** A `JobId` or
//!   `StepId` cannot contain `/` or `..`; caller-supplied relative paths
//!   (`read_file`) are split and checked by `layout::split_rel`.
//! - **Symlinks inside a job directory are never followed.** Reads walk the
//!   tree with `openat(O_NOFOLLOW)` (`nofollow`); writes check that every
//!   directory from the job directory down is a real directory before the
//!   durable publish, and a planted symlink at a file's own name is replaced
//!   by the rename, never written through. (The check-then-write of the
//!   directories leaves a window only to someone who can already write the
//!   artifacts tree, which only orch itself can.)
//! - **Every write is a durable atomic publish** (`fsqueue::durable`), and
//!   multi-file updates write `result.json` last, so a `result.json` with a
//!   final status implies the files beside it are complete.

use crate::error::{ArtifactError, Result};
use crate::layout::{
    CONTEXT_JSON, JOB_JSON, LOGS_TXT, PATCH_DIFF, RAW_STDERR, RAW_STDOUT, REPORT_MD, RESULT_JSON,
    STATE_JSON, STEPS_DIR, job_result_paths, split_rel, step_result_paths,
};
use crate::nofollow::{BoundedRead, is_real_dir, join, open_beneath, read_bounded};
use crate::results::{running_job_result, running_step_result};
use crate::secrets;
use contracts::{
    ContextDoc, Job, JobId, JobState, ResultDoc, ResultKind, Status, Step, StepId, now_rfc3339,
};
use fsqueue::durable;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The largest JSON document (job, state, context, result) the store loads.
/// Real documents are kilobytes; the limit only stops a corrupted or hostile
/// file from exhausting memory.
pub const MAX_JSON_BYTES: u64 = 64 * 1024 * 1024;

/// How much of each step file goes into the job-level aggregates. Beyond it
/// the aggregate carries a truncation marker; the step file stays complete.
pub const MAX_AGGREGATE_PART_BYTES: u64 = 16 * 1024 * 1024;

/// Prefix of a job directory being deleted: it is renamed out of sight first
/// (atomic, so readers never see a half-deleted job), then removed.
pub const TOMBSTONE_PREFIX: &str = ".orch-deleting-";

/// The `artifacts/` root: one directory per job, named by its id.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
    /// `SENSITIVE_ENV_VARS` (name, value) pairs, redacted from every file
    /// published, besides what the rules find.
    sensitive: Arc<[(String, String)]>,
}

impl ArtifactStore {
    /// A store rooted at `root`. Nothing is created until a job is
    /// initialised; the root may be a symlink (only the tree below it may
    /// not).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            sensitive: Arc::from(Vec::new()),
        }
    }

    /// Also redacts these (name, value) pairs (`SENSITIVE_ENV_VARS`) from
    /// every file the store publishes.
    pub fn with_sensitive_env(mut self, vars: Vec<(String, String)>) -> Self {
        self.sensitive = Arc::from(vars);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The artifacts of one job (whether or not they exist yet).
    pub fn job(&self, id: &JobId) -> JobArtifacts {
        JobArtifacts {
            inner: Arc::new(Inner {
                job_id: id.clone(),
                dir: self.root.join(id.as_str()),
                sensitive: Arc::clone(&self.sensitive),
            }),
        }
    }

    /// True when `artifacts/<id>` is a real directory (a symlink in its place
    /// does not count).
    pub fn exists(&self, id: &JobId) -> bool {
        matches!(is_real_dir(&self.root.join(id.as_str())), Ok(true))
    }

    /// The ids of all job directories, sorted. Entries that are not valid job
    /// ids (temp files, tombstones, strays), symlinks and non-directories are
    /// skipped. A missing root is an empty store.
    pub fn list_job_ids(&self) -> Result<Vec<JobId>> {
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ArtifactError::io("read dir", &self.root, e)),
        };
        let mut ids = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| ArtifactError::io("read dir", &self.root, e))?;
            // `DirEntry::file_type` does not follow symlinks.
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if !is_dir {
                continue;
            }
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| JobId::parse(n).ok())
            {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Removes a job's whole tree. Returns `false` when there was nothing to
    /// remove. The directory is first renamed to a tombstone (atomic: readers
    /// see the job either complete or gone), then removed without following
    /// symlinks (`remove_dir_all` unlinks links, never their targets). A
    /// symlink planted in place of the job directory is unlinked.
    pub fn delete_job(&self, id: &JobId) -> Result<bool> {
        let dir = self.root.join(id.as_str());
        match std::fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(ArtifactError::io("stat", &dir, e)),
            Ok(m) if !m.is_dir() => {
                tracing::warn!(path = %dir.display(), "removing non-directory in place of a job directory");
                durable::remove_file(&dir)?;
                return Ok(true);
            }
            Ok(_) => {}
        }
        static CTR: AtomicU64 = AtomicU64::new(0);
        let tomb = self.root.join(format!(
            "{TOMBSTONE_PREFIX}{id}-{}-{}",
            std::process::id(),
            CTR.fetch_add(1, Ordering::Relaxed)
        ));
        match durable::move_replace(&dir, &tomb) {
            Ok(()) => {}
            // Someone else deleted it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        std::fs::remove_dir_all(&tomb).map_err(|e| ArtifactError::io("remove", &tomb, e))?;
        durable::sync_dir(&self.root)?;
        Ok(true)
    }

    /// Removes tombstones left by a `delete_job` that crashed between the
    /// rename and the removal. Retention sweeps call this once per sweep.
    pub fn remove_stale_tombstones(&self) -> Result<usize> {
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(ArtifactError::io("read dir", &self.root, e)),
        };
        let mut n = 0;
        for entry in rd {
            let entry = entry.map_err(|e| ArtifactError::io("read dir", &self.root, e))?;
            let is_tomb = entry
                .file_name()
                .to_str()
                .is_some_and(|s| s.starts_with(TOMBSTONE_PREFIX));
            if is_tomb {
                let p = entry.path();
                let res = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                res.map_err(|e| ArtifactError::io("remove", &p, e))?;
                n += 1;
            }
        }
        if n > 0 {
            durable::sync_dir(&self.root)?;
        }
        Ok(n)
    }
}

/// Everything a finished step attempt publishes. `publish_step` writes the
/// files in field order and `result` last.
#[derive(Debug, Clone)]
pub struct StepOutput {
    pub report_md: String,
    pub patch_diff: String,
    pub logs_txt: String,
    /// The step's result; its `artifacts` paths are set by the store.
    pub result: ResultDoc,
    /// Full (redacted) agent streams, real-CLI mode only. `None` removes a
    /// stale file left by an earlier attempt.
    pub raw_stdout: Option<Vec<u8>>,
    pub raw_stderr: Option<Vec<u8>>,
}

/// One job's artifacts directory. Cheap to clone (an `Arc`).
#[derive(Debug, Clone)]
pub struct JobArtifacts {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    job_id: JobId,
    dir: PathBuf,
    sensitive: Arc<[(String, String)]>,
}

impl JobArtifacts {
    pub fn job_id(&self) -> &JobId {
        &self.inner.job_id
    }

    /// `artifacts/<job_id>`.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// `artifacts/<job_id>/steps/<step_id>`.
    pub fn step_dir(&self, step: &StepId) -> PathBuf {
        self.inner.dir.join(STEPS_DIR).join(step.as_str())
    }

    /// Creates the job directory and all seven job files.
    ///
    /// - `job.json` is (re)written with `job` (the normalised job);
    /// - `state.json` is (re)written with `state`;
    /// - `context.json` is created from the job's strategy and
    ///   `context_window` when absent, and kept otherwise (a resumed job keeps
    ///   its conversation);
    /// - `result.json` is created as a `running` job result when absent; an
    ///   existing one with a final status is flipped back to `running`
    ///   (keeping its `started_at` and `steps`), since the job runs again;
    /// - `report.md`, `patch.diff`, `logs.txt` are created empty when absent.
    ///
    /// Existing step directories are never touched: on resume, completed
    /// steps keep their artifacts.
    pub fn init(&self, job: &Job, state: &JobState) -> Result<()> {
        self.check_job_id(JOB_JSON, job.job_id.as_str(), "job_id")?;
        self.check_job_id(STATE_JSON, &state.job_id, "job_id")?;
        self.ensure_dir(&[])?;
        self.ensure_dir(&[STEPS_DIR])?;
        // Every step directory at once: one fsync of steps/ instead of one
        // per step. Existing (possibly planted) entries are checked again
        // by `begin_step` before use.
        let ids: Vec<&str> = job.steps.iter().map(|s| s.step_id.as_str()).collect();
        durable::create_subdirs(&join(self.dir(), &[STEPS_DIR]), &ids)?;
        let result = match self.read_result() {
            Ok(Some(r)) if r.kind == ResultKind::Job && r.status == Status::Running => None,
            Ok(Some(mut r)) if r.kind == ResultKind::Job => {
                r.status = Status::Running;
                r.finished_at = String::new();
                r.summary = format!("job {} running again", self.job_id());
                r.error = None;
                Some(r)
            }
            Ok(_) => Some(running_job_result(self.job_id())),
            Err(e) if e.is_invalid_path() || matches!(e, ArtifactError::Json { .. }) => {
                tracing::warn!(error = %e, "replacing unusable job result.json");
                Some(running_job_result(self.job_id()))
            }
            Err(e) => return Err(e),
        };
        // One batch, one directory fsync: the documents first, the empty
        // aggregates as placeholders (kept on resume).
        use durable::Place::{IfAbsent, Replace};
        let job_bytes = self.json_bytes(&[JOB_JSON], job)?;
        let state_bytes = self.json_bytes(&[STATE_JSON], state)?;
        let ctx_bytes = match self.read_context()? {
            Some(_) => None,
            None => Some(self.json_bytes(
                &[CONTEXT_JSON],
                &ContextDoc {
                    strategy: job.context_strategy,
                    messages: job.context_window.clone(),
                    updated_at: now_rfc3339(),
                },
            )?),
        };
        let result_bytes = match &result {
            Some(r) => {
                let mut r = r.clone();
                r.artifacts = job_result_paths();
                Some(self.json_bytes(&[RESULT_JSON], &r)?)
            }
            None => None,
        };
        let mut files: Vec<(&str, &[u8], durable::Place)> = vec![
            (JOB_JSON, &job_bytes, Replace),
            (STATE_JSON, &state_bytes, Replace),
            (REPORT_MD, b"", IfAbsent),
            (PATCH_DIFF, b"", IfAbsent),
            (LOGS_TXT, b"", IfAbsent),
        ];
        if let Some(b) = &ctx_bytes {
            files.push((CONTEXT_JSON, b, Replace));
        }
        if let Some(b) = &result_bytes {
            files.push((RESULT_JSON, b, Replace));
        }
        self.write_batch(&[], &files)
    }

    /// Rewrites `job.json`.
    pub fn write_job(&self, job: &Job) -> Result<()> {
        self.check_job_id(JOB_JSON, job.job_id.as_str(), "job_id")?;
        self.write_json(&[JOB_JSON], job)
    }

    pub fn read_job(&self) -> Result<Option<Job>> {
        self.read_json(&[JOB_JSON])
    }

    /// Rewrites `state.json` (at every transition).
    pub fn write_state(&self, state: &JobState) -> Result<()> {
        self.check_job_id(STATE_JSON, &state.job_id, "job_id")?;
        self.write_json(&[STATE_JSON], state)
    }

    pub fn read_state(&self) -> Result<Option<JobState>> {
        self.read_json(&[STATE_JSON])
    }

    /// Rewrites `state.json` and `context.json` together (one directory
    /// fsync), as at the end of every step.
    pub fn write_state_and_context(&self, state: &JobState, ctx: &ContextDoc) -> Result<()> {
        self.check_job_id(STATE_JSON, &state.job_id, "job_id")?;
        let st = self.json_bytes(&[STATE_JSON], state)?;
        let cx = self.json_bytes(&[CONTEXT_JSON], ctx)?;
        use durable::Place::Replace;
        self.write_batch(
            &[],
            &[(STATE_JSON, &st, Replace), (CONTEXT_JSON, &cx, Replace)],
        )
    }

    pub fn write_context(&self, ctx: &ContextDoc) -> Result<()> {
        self.write_json(&[CONTEXT_JSON], ctx)
    }

    pub fn read_context(&self) -> Result<Option<ContextDoc>> {
        self.read_json(&[CONTEXT_JSON])
    }

    /// Rewrites the job `result.json` (e.g. `needs_human` while awaiting
    /// approval). Use `finish_job` for the final result, which also writes
    /// the aggregates.
    pub fn write_result(&self, result: &ResultDoc) -> Result<()> {
        self.check_job_id(RESULT_JSON, &result.job_id, "job_id")?;
        if result.kind != ResultKind::Job || result.steps.is_none() {
            return Err(self.mismatch(RESULT_JSON, "kind", "job (with steps)", "step"));
        }
        let mut result = result.clone();
        result.artifacts = job_result_paths();
        self.write_json(&[RESULT_JSON], &result)
    }

    pub fn read_result(&self) -> Result<Option<ResultDoc>> {
        self.read_json(&[RESULT_JSON])
    }

    /// Starts an attempt of `step`: creates `steps/<id>/` with empty
    /// `report.md`, `patch.diff`, `logs.txt` when absent (an earlier
    /// attempt's files stay until this attempt publishes) and writes a
    /// `running` `result.json`, which it returns.
    pub fn begin_step(&self, step: &Step, attempt: u32) -> Result<ResultDoc> {
        self.begin_step_with_state(step, attempt, None)
    }

    /// `begin_step` that also rewrites `state.json` (the step's "running"
    /// transition) in the same publish.
    pub fn begin_step_with_state(
        &self,
        step: &Step,
        attempt: u32,
        state: Option<&JobState>,
    ) -> Result<ResultDoc> {
        let id = step.step_id.as_str();
        self.ensure_dir(&[])?;
        self.ensure_dir(&[STEPS_DIR])?;
        self.ensure_dir(&[STEPS_DIR, id])?;
        let result = running_step_result(self.job_id(), step, attempt);
        let bytes = self.json_bytes(&[STEPS_DIR, id, RESULT_JSON], &result)?;
        use durable::Place::{IfAbsent, Replace};
        let empty_src = self.empty_src();
        let mut txn = durable::Txn::new(Some(&empty_src));
        if let Some(st) = state {
            self.check_job_id(STATE_JSON, &st.job_id, "job_id")?;
            let st = self.json_bytes(&[STATE_JSON], st)?;
            self.stage(&mut txn, &[], &[(STATE_JSON, &st, Replace)])?;
        }
        self.stage(
            &mut txn,
            &[STEPS_DIR, id],
            &[
                (REPORT_MD, b"", IfAbsent),
                (PATCH_DIFF, b"", IfAbsent),
                (LOGS_TXT, b"", IfAbsent),
                (RESULT_JSON, &bytes, Replace),
            ],
        )?;
        txn.commit()?;
        Ok(result)
    }

    /// Publishes a step attempt's output: report, patch, logs, raw streams
    /// (or removes stale ones), then `result.json` last. The result's
    /// `artifacts` paths are set to the canonical ones.
    pub fn publish_step(&self, step_id: &StepId, out: &StepOutput) -> Result<()> {
        self.publish_step_with(step_id, out, None)
    }

    /// `publish_step` that also rewrites `state.json` and `context.json`
    /// (the step's final transition), published with `result.json`.
    pub fn publish_step_with(
        &self,
        step_id: &StepId,
        out: &StepOutput,
        after: Option<(&JobState, &ContextDoc)>,
    ) -> Result<()> {
        let id = step_id.as_str();
        let rel_result = format!("{STEPS_DIR}/{id}/{RESULT_JSON}");
        self.check_job_id(&rel_result, &out.result.job_id, "job_id")?;
        if out.result.kind != ResultKind::Step {
            return Err(self.mismatch(&rel_result, "kind", "step", "job"));
        }
        if out.result.step_id.as_deref() != Some(id) {
            let found = out.result.step_id.clone().unwrap_or_default();
            return Err(self.mismatch(&rel_result, "step_id", id, &found));
        }
        self.ensure_dir(&[])?;
        self.ensure_dir(&[STEPS_DIR])?;
        self.ensure_dir(&[STEPS_DIR, id])?;
        // The content files in one batch, then result.json on its own: a
        // final result on disk implies the files it describes are complete.
        use durable::Place::Replace;
        let mut files: Vec<(&str, &[u8], durable::Place)> = vec![
            (REPORT_MD, out.report_md.as_bytes(), Replace),
            (PATCH_DIFF, out.patch_diff.as_bytes(), Replace),
            (LOGS_TXT, out.logs_txt.as_bytes(), Replace),
        ];
        for (name, raw) in [(RAW_STDOUT, &out.raw_stdout), (RAW_STDERR, &out.raw_stderr)] {
            match raw {
                Some(bytes) => files.push((name, bytes, Replace)),
                None => durable::remove_file(&join(self.dir(), &[STEPS_DIR, id, name]))?,
            }
        }
        let empty_src = self.empty_src();
        let mut txn = durable::Txn::new(Some(&empty_src));
        self.stage(&mut txn, &[STEPS_DIR, id], &files)?;
        // A final result on disk implies the files it describes are
        // complete: it is published in a later phase.
        txn.then();
        let mut result = out.result.clone();
        result.artifacts = step_result_paths(step_id);
        let result = self.json_bytes(&[STEPS_DIR, id, RESULT_JSON], &result)?;
        self.stage(
            &mut txn,
            &[STEPS_DIR, id],
            &[(RESULT_JSON, &result, Replace)],
        )?;
        if let Some((st, cx)) = after {
            self.check_job_id(STATE_JSON, &st.job_id, "job_id")?;
            let st = self.json_bytes(&[STATE_JSON], st)?;
            let cx = self.json_bytes(&[CONTEXT_JSON], cx)?;
            // A state that says the step finished implies its result is on
            // disk: a later phase again (a resumed job skips the steps its
            // state calls finished, so the state must never get there
            // first, whatever order the file system keeps renames in).
            txn.then();
            self.stage(
                &mut txn,
                &[],
                &[(STATE_JSON, &st, Replace), (CONTEXT_JSON, &cx, Replace)],
            )?;
        }
        txn.commit()?;
        Ok(())
    }

    pub fn read_step_result(&self, step_id: &StepId) -> Result<Option<ResultDoc>> {
        self.read_json(&[STEPS_DIR, step_id.as_str(), RESULT_JSON])
    }

    /// Writes the job-level aggregates over the steps listed in
    /// `result.steps` (in order; a step listed twice, e.g. after a `goto`,
    /// appears once with its latest files), then the job `result.json`.
    ///
    /// `report.md`: `# Job <id>`, the goal, then per step
    /// `## Step <id> (<agent>:<role>)`, a status line and the step's report.
    /// `patch.diff` and `logs.txt`: per step a header line
    /// `# step <id> (<agent>:<role>) status=<status>` then the step's file.
    /// (`git apply` ignores text between patches, so the aggregate patch
    /// still applies.)
    pub fn finish_job(&self, job: &Job, result: &ResultDoc) -> Result<()> {
        self.finish_job_with_state(job, result, None)
    }

    /// `finish_job` that also rewrites `state.json` (the job's final
    /// transition), published with the job `result.json`.
    pub fn finish_job_with_state(
        &self,
        job: &Job,
        result: &ResultDoc,
        state: Option<&JobState>,
    ) -> Result<()> {
        self.check_job_id(JOB_JSON, job.job_id.as_str(), "job_id")?;
        let mut report = format!("# Job {}\n\n{}\n", self.job_id(), job.goal.trim_end());
        let mut patch = String::new();
        let mut logs = String::new();
        let mut seen = std::collections::BTreeSet::new();
        for step in result.steps.as_deref().unwrap_or_default() {
            let Some(raw_id) = step.step_id.as_deref() else {
                continue;
            };
            // Never build a path from an unvalidated string.
            let Ok(id) = StepId::parse(raw_id) else {
                tracing::warn!(
                    step_id = raw_id,
                    "skipping step result with invalid step_id"
                );
                continue;
            };
            if !seen.insert(id.clone()) {
                continue;
            }
            let declared = job.step(id.as_str());
            let agent = step
                .agent
                .as_deref()
                .or(declared.map(|s| s.agent.as_str()))
                .unwrap_or("?");
            let role = step
                .role
                .as_deref()
                .or(declared.map(|s| s.role.as_str()))
                .unwrap_or("?");
            let _ = write!(
                report,
                "\n## Step {id} ({agent}:{role})\n\nStatus: {} — {}\n\n",
                step.status,
                step.summary.trim()
            );
            push_section(&mut report, &self.aggregate_part(&id, REPORT_MD));
            let header = format!("# step {id} ({agent}:{role}) status={}\n", step.status);
            patch.push_str(&header);
            push_section(&mut patch, &self.aggregate_part(&id, PATCH_DIFF));
            logs.push_str(&header);
            push_section(&mut logs, &self.aggregate_part(&id, LOGS_TXT));
        }
        self.ensure_dir(&[])?;
        self.check_job_id(RESULT_JSON, &result.job_id, "job_id")?;
        if result.kind != ResultKind::Job || result.steps.is_none() {
            return Err(self.mismatch(RESULT_JSON, "kind", "job (with steps)", "step"));
        }
        let mut result = result.clone();
        result.artifacts = job_result_paths();
        let result = self.json_bytes(&[RESULT_JSON], &result)?;
        use durable::Place::Replace;
        let empty_src = self.empty_src();
        let mut txn = durable::Txn::new(Some(&empty_src));
        self.stage(
            &mut txn,
            &[],
            &[
                (REPORT_MD, report.as_bytes(), Replace),
                (PATCH_DIFF, patch.as_bytes(), Replace),
                (LOGS_TXT, logs.as_bytes(), Replace),
            ],
        )?;
        // The final result (and state) only once the aggregates are on disk.
        txn.then();
        let mut last: Vec<(&str, &[u8], durable::Place)> = vec![(RESULT_JSON, &result, Replace)];
        let st;
        if let Some(state) = state {
            self.check_job_id(STATE_JSON, &state.job_id, "job_id")?;
            st = self.json_bytes(&[STATE_JSON], state)?;
            last.push((STATE_JSON, &st, Replace));
        }
        self.stage(&mut txn, &[], &last)?;
        txn.commit()?;
        Ok(())
    }

    /// Reads an artifact by a path relative to the job directory (e.g. an
    /// input artifact `steps/01_plan/report.md`), at most `max_bytes` of it.
    /// Refuses absolute paths and `..` (`Escape`), symlinks at any level
    /// (`Symlink`) and non-regular files (`WrongType`); a missing file is
    /// `NotFound`.
    pub fn read_file(&self, rel: &str, max_bytes: u64) -> Result<BoundedRead> {
        let parts = split_rel(rel)?;
        let file = open_beneath(self.dir(), &parts)?;
        read_bounded(file, max_bytes, &join(self.dir(), &parts))
    }

    // ----- internals -------------------------------------------------------

    /// One step file for an aggregate, with markers instead of failures: a
    /// missing or refused step file must not stop the job from finishing.
    fn aggregate_part(&self, id: &StepId, name: &str) -> String {
        let rel = [STEPS_DIR, id.as_str(), name];
        match open_beneath(self.dir(), &rel)
            .and_then(|f| read_bounded(f, MAX_AGGREGATE_PART_BYTES, &join(self.dir(), &rel)))
        {
            Ok(r) => {
                let mut s = String::from_utf8_lossy(&r.data).into_owned();
                if r.truncated {
                    if !s.ends_with('\n') {
                        s.push('\n');
                    }
                    let _ = writeln!(s, "[truncated: {} of {} bytes]", r.data.len(), r.size);
                }
                s
            }
            Err(e) if e.is_not_found() => String::from("[missing]\n"),
            Err(e) => {
                tracing::warn!(error = %e, "step artifact refused while aggregating");
                String::from("[invalid_path]\n")
            }
        }
    }

    fn check_job_id(&self, file: &str, found: &str, what: &'static str) -> Result<()> {
        if found == self.job_id().as_str() {
            Ok(())
        } else {
            Err(self.mismatch(file, what, self.job_id().as_str(), found))
        }
    }

    fn mismatch(
        &self,
        file: &str,
        what: &'static str,
        expected: &str,
        found: &str,
    ) -> ArtifactError {
        ArtifactError::Mismatch {
            path: self.dir().join(file),
            what,
            expected: expected.to_owned(),
            found: found.to_owned(),
        }
    }

    /// Creates `dir/<parts...>` (the job directory itself for `[]`) when
    /// missing and insists that it, and every directory between it and the
    /// job directory, is a real directory.
    fn ensure_dir(&self, parts: &[&str]) -> Result<()> {
        for depth in 0..=parts.len() {
            let p = join(self.dir(), &parts[..depth]);
            if !is_real_dir(&p)? {
                durable::create_dir_all(&p)?;
                // Re-check: `create_dir_all` accepts an existing symlink to a
                // directory, which we do not.
                if !is_real_dir(&p)? {
                    return Err(ArtifactError::NotFound { path: p });
                }
            }
        }
        Ok(())
    }

    /// Checks that the directories holding `dir/<parts...>` exist and are
    /// real, and returns the file's path.
    fn checked_path(&self, parts: &[&str]) -> Result<PathBuf> {
        let (_, dirs) = parts
            .split_last()
            .ok_or_else(|| ArtifactError::Escape { rel: String::new() })?;
        for depth in 0..=dirs.len() {
            let p = join(self.dir(), &dirs[..depth]);
            if !is_real_dir(&p)? {
                return Err(ArtifactError::NotFound { path: p });
            }
        }
        Ok(join(self.dir(), parts))
    }

    fn write_bytes(&self, parts: &[&str], data: &[u8]) -> Result<()> {
        let path = self.checked_path(parts)?;
        refuse_directory(&path)?;
        durable::write_file(&path, data)?;
        Ok(())
    }

    /// Publishes several files into the directory `dir` (parts relative to
    /// the job dir) with one directory fsync. `IfAbsent` entries are
    /// placeholders: kept when a regular file exists, but a symlink planted
    /// at the name is replaced, never followed or kept.
    fn write_batch(&self, dir: &[&str], files: &[(&str, &[u8], durable::Place)]) -> Result<()> {
        let empty_src = self.empty_src();
        let mut txn = durable::Txn::new(Some(&empty_src));
        self.stage(&mut txn, dir, files)?;
        txn.commit()?;
        Ok(())
    }

    /// Empty files (placeholders, empty patches) are hard links to the
    /// job's `report.md` while it is still the empty placeholder made by
    /// `init` (see `durable::write_batch_linked`).
    fn empty_src(&self) -> PathBuf {
        self.dir().join(REPORT_MD)
    }

    /// Stages files for the directory `dir` (parts relative to the job
    /// dir) in `txn`. `IfAbsent` entries are placeholders: kept when a
    /// regular file exists, but a symlink planted at the name is replaced,
    /// never followed or kept.
    fn stage(
        &self,
        txn: &mut durable::Txn<'_>,
        dir: &[&str],
        files: &[(&str, &[u8], durable::Place)],
    ) -> Result<()> {
        let mut probe: Vec<&str> = dir.to_vec();
        probe.push("_");
        self.checked_path(&probe)?;
        let dir_path = join(self.dir(), dir);
        for (name, data, place) in files {
            let path = dir_path.join(name);
            // JSON documents were redacted value by value (`json_bytes`);
            // every other file is redacted as bytes, here, so nothing the
            // store publishes escapes the scan.
            let redacted;
            let data: &[u8] = if name.ends_with(".json") || data.is_empty() {
                data
            } else {
                redacted = self.redact_bytes(name, data);
                &redacted
            };
            let place = match (place, std::fs::symlink_metadata(&path)) {
                (_, Ok(m)) if m.is_dir() => {
                    return Err(ArtifactError::WrongType {
                        path,
                        what: "is a directory, not a file",
                    });
                }
                (durable::Place::IfAbsent, Ok(m)) if m.file_type().is_symlink() => {
                    tracing::warn!(path = %path.display(), "replacing symlink planted in the artifacts tree");
                    durable::Place::Replace
                }
                (durable::Place::IfAbsent, Ok(m)) if !m.is_file() => {
                    return Err(ArtifactError::WrongType {
                        path,
                        what: "is not a regular file",
                    });
                }
                (p, _) => *p,
            };
            txn.file(&path, data, place)?;
        }
        Ok(())
    }

    /// A document as published: every string (and key) redacted, then
    /// pretty-printed.
    fn json_bytes<T: Serialize>(&self, parts: &[&str], value: &T) -> Result<Vec<u8>> {
        let path = join(self.dir(), parts);
        let mut doc = serde_json::to_value(value).map_err(|source| ArtifactError::Json {
            path: path.clone(),
            source,
        })?;
        let found = secrets::redact_json_value(&mut doc, &self.inner.sensitive);
        self.note_redacted(parts.last().copied().unwrap_or(""), &found);
        let mut data = serde_json::to_vec_pretty(&doc)
            .map_err(|source| ArtifactError::Json { path, source })?;
        data.push(b'\n');
        Ok(data)
    }

    fn write_json<T: Serialize>(&self, parts: &[&str], value: &T) -> Result<()> {
        let data = self.json_bytes(parts, value)?;
        self.write_bytes(parts, &data)
    }

    /// A text file as published (report, patch, logs, raw streams).
    fn redact_bytes(&self, name: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = data.to_vec();
        let mut found = Vec::new();
        secrets::redact_artifact_bytes(name, &mut bytes, &self.inner.sensitive, &mut found);
        let ids: Vec<String> = found.into_iter().map(|l| l.rule_id).collect();
        self.note_redacted(name, &ids);
        bytes
    }

    /// Logs which rules fired (never the values).
    fn note_redacted(&self, file: &str, rule_ids: &[String]) {
        if !rule_ids.is_empty() {
            let rules: std::collections::BTreeSet<&str> =
                rule_ids.iter().map(String::as_str).collect();
            tracing::warn!(
                job_id = %self.job_id(),
                file,
                rules = ?rules,
                "secrets redacted before publishing"
            );
        }
    }

    fn read_json<T: DeserializeOwned>(&self, parts: &[&str]) -> Result<Option<T>> {
        let path = join(self.dir(), parts);
        let file = match open_beneath(self.dir(), parts) {
            Ok(f) => f,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let read = read_bounded(file, MAX_JSON_BYTES, &path)?;
        if read.truncated {
            return Err(ArtifactError::TooLarge {
                path,
                limit: MAX_JSON_BYTES,
            });
        }
        serde_json::from_slice(&read.data)
            .map(Some)
            .map_err(|source| ArtifactError::Json { path, source })
    }
}

/// A rename onto a directory would fail with a confusing error (or, for an
/// empty directory, silently succeed); say what is wrong instead.
fn refuse_directory(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(ArtifactError::WrongType {
            path: path.to_path_buf(),
            what: "is a directory, not a file",
        }),
        _ => Ok(()),
    }
}

fn push_section(out: &mut String, content: &str) {
    out.push_str(content);
    if !content.is_empty() && !content.ends_with('\n') {
        out.push('\n');
    }
}
