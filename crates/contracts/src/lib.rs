//! The on-disk and HTTP formats of orch: job and result documents, the
//! job-level `state.json` and `context.json`, their JSON Schemas (embedded from
//! the repository's `contracts/` directory), id newtypes that refuse unsafe
//! names, payload normalisation, the one validation routine every entry point
//! uses, and the registry of environment variables.
//!
//! Everything here is an API boundary: a change to a serialised field is a
//! format change and must stay loadable by older documents.

pub mod access;
pub mod config;
pub mod cron;
pub mod env;
pub mod ids;
pub mod job;
pub mod normalize;
pub mod result;
pub mod schedule;
pub mod schema;
pub mod state;
pub mod validate;

pub use access::Access;
pub use ids::{IdError, JobId, StepId};
pub use job::{
    ArtifactHandoff, ContextMessage, ContextStrategy, Job, NetworkPolicy, OnFailure, Policy,
    ResourceLimits, Source, SourceType, Step,
};
pub use normalize::{EntryPoint, NormalizeOptions, normalize, parse_payload_bytes};
pub use result::{ErrorInfo, ResultArtifacts, ResultDoc, ResultKind, Status};
pub use schema::SchemaKind;
pub use state::{ContextDoc, JobState, StepState};
pub use validate::{Violation, Violations, validate_job};

/// The schema version orch writes and the only one it accepts.
pub const SCHEMA_VERSION: &str = "1.0";

/// The agents built into orch. Custom agents from configuration extend this
/// list at the call sites that know the configuration.
pub const BUILTIN_AGENTS: &[&str] = &["opencode", "codex", "claude"];

/// Current UTC time as an RFC 3339 string with microsecond precision, the
/// format of every timestamp orch writes.
pub fn now_rfc3339() -> String {
    let ts = jiff::Timestamp::now();
    format!("{ts:.6}")
}
