//! The artifacts tree of orch (SPEC §4): `artifacts/<job_id>/` with the job's
//! `job.json`, `state.json`, `context.json`, `result.json`, the aggregated
//! `report.md`, `patch.diff`, `logs.txt`, and one `steps/<step_id>/`
//! directory per step. This crate is the only code that builds paths into
//! that tree, and it builds them only from validated ids (`JobId`,
//! `StepId`) and the fixed names in `layout`.
//!
//! Guarantees callers rely on:
//! - every file is published durably and atomically (`fsqueue::durable`),
//!   with modes readable by the service group (files 0640, directories
//!   0750);
//! - all seven job files exist once `JobArtifacts::init` returned, all four
//!   step files once `JobArtifacts::begin_step` returned;
//! - `result.json` is written last, so a final status there implies the files
//!   beside it are complete;
//! - nothing inside a job directory is ever read or written through a
//!   symlink, and caller-supplied relative paths cannot escape the job
//!   directory.
//!
//! ```no_run
//! # fn demo(job: &contracts::Job, state: &contracts::JobState) -> Result<(), artifacts::ArtifactError> {
//! let store = artifacts::ArtifactStore::new("artifacts");
//! let arts = store.job(&job.job_id);
//! arts.init(job, state)?;
//! let plan = arts.read_file("steps/01_plan/report.md", 12_000)?;
//! # Ok(()) }
//! ```

pub mod budget;
pub mod control;
mod error;
pub mod layout;
mod nofollow;
mod results;
pub mod schedules;
pub mod secrets;
mod store;
mod terminal;

pub use error::{ArtifactError, Result};
/// The durable-publish primitive, re-exported so crates above `artifacts`
/// (workers) write through the one implementation without depending on the
/// queue crate.
pub use fsqueue::durable;
pub use layout::{job_result_paths, step_result_paths};
pub use nofollow::BoundedRead;
pub use results::{running_job_result, running_step_result};
pub use store::{
    ArtifactStore, JobArtifacts, MAX_AGGREGATE_PART_BYTES, MAX_JSON_BYTES, StepOutput,
    TOMBSTONE_PREFIX,
};
