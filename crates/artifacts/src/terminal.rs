//! Terminal outcomes decided outside a runner: an operator's `reject`,
//! `cancel` or `unlock`, or a reaper failing a poison job. The queue move is
//! the decision; this makes the artifacts tell the same story, so `status`
//! and the API never show `running` for a job that has ended.

use crate::{JobArtifacts, Result, running_job_result};
use contracts::{ErrorInfo, Job, JobState, Status, now_rfc3339};

impl JobArtifacts {
    /// Records `status` with error `code`/`message` in `state.json` and
    /// `result.json` (and the aggregates). `job` is the queue file's job,
    /// used to create the tree when the job never started; without it and
    /// without a `job.json`, there is nothing to record and `Ok(false)` is
    /// returned.
    pub fn record_terminal(
        &self,
        job: Option<&Job>,
        status: Status,
        code: &str,
        message: &str,
    ) -> Result<bool> {
        let stored = self.read_job().ok().flatten();
        let Some(job) = stored.as_ref().or(job) else {
            return Ok(false);
        };
        let now = now_rfc3339();
        let mut state = match self.read_state().ok().flatten() {
            Some(s) => s,
            None => JobState {
                job_id: job.job_id.to_string(),
                status,
                started_at: None,
                finished_at: None,
                current_step: None,
                attempt: 0,
                gotos: 0,
                steps: Default::default(),
            },
        };
        if !self.dir().join(crate::layout::JOB_JSON).exists() {
            self.init(job, &state)?;
        }
        state.status = status;
        state.finished_at = Some(now.clone());
        state.current_step = None;
        for s in state.steps.values_mut() {
            if s.status == Status::Running {
                s.status = status;
                s.finished_at = Some(now.clone());
                s.summary = message.to_owned();
            }
        }
        let steps: Vec<_> = job
            .steps
            .iter()
            .filter_map(|s| self.read_step_result(&s.step_id).ok().flatten())
            .filter(|r| r.status != Status::Running)
            .collect();
        let mut result = self
            .read_result()
            .ok()
            .flatten()
            .unwrap_or_else(|| running_job_result(&job.job_id));
        result.status = status;
        result.finished_at = now;
        result.summary = format!("{}: {message}", status.as_str());
        result.error = Some(ErrorInfo::new(code, message));
        result.steps = Some(steps);
        self.finish_job(job, &result)?;
        self.write_state(&state)?;
        Ok(true)
    }
}
