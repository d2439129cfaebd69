//! The JSON Schemas of the repository's `contracts/` directory, embedded at
//! build time so a binary always validates against the schema it shipped with.
//!
//! User input is checked by [`crate::validate::validate_job`], whose messages
//! are written for people. [`check`] is for the documents orch writes itself
//! (`result.json`, `state.json`, `context.json`): tests of every crate that
//! writes one assert it conforms, and tools such as `orch doctor` may use it
//! on files found on disk. Its messages never quote document values.

use crate::validate::Violations;
use serde_json::Value;
use std::sync::OnceLock;

pub const JOB_SCHEMA: &str = include_str!("../../../contracts/job.schema.json");
pub const RESULT_SCHEMA: &str = include_str!("../../../contracts/result.schema.json");
pub const STATE_SCHEMA: &str = include_str!("../../../contracts/state.schema.json");
pub const CONTEXT_SCHEMA: &str = include_str!("../../../contracts/context.schema.json");

/// Which document a schema describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaKind {
    /// `job.json` and queue files.
    Job,
    /// `result.json` of a step or a job.
    Result,
    /// `state.json`.
    State,
    /// `context.json`.
    Context,
}

impl SchemaKind {
    pub const ALL: [SchemaKind; 4] = [Self::Job, Self::Result, Self::State, Self::Context];

    /// The schema text as shipped.
    pub fn text(self) -> &'static str {
        match self {
            Self::Job => JOB_SCHEMA,
            Self::Result => RESULT_SCHEMA,
            Self::State => STATE_SCHEMA,
            Self::Context => CONTEXT_SCHEMA,
        }
    }

    /// The file name under `contracts/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Job => "job.schema.json",
            Self::Result => "result.schema.json",
            Self::State => "state.schema.json",
            Self::Context => "context.schema.json",
        }
    }

    fn slot(self) -> &'static OnceLock<jsonschema::Validator> {
        static JOB: OnceLock<jsonschema::Validator> = OnceLock::new();
        static RESULT: OnceLock<jsonschema::Validator> = OnceLock::new();
        static STATE: OnceLock<jsonschema::Validator> = OnceLock::new();
        static CONTEXT: OnceLock<jsonschema::Validator> = OnceLock::new();
        match self {
            Self::Job => &JOB,
            Self::Result => &RESULT,
            Self::State => &STATE,
            Self::Context => &CONTEXT,
        }
    }
}

/// The compiled validator for `kind` (draft 2020-12, `format` asserted),
/// built once per process.
///
/// # Panics
/// Only if an embedded schema is broken, which the crate's tests rule out
/// before anything ships (`every_schema_compiles`).
pub fn validator(kind: SchemaKind) -> &'static jsonschema::Validator {
    kind.slot().get_or_init(|| {
        let schema: Value = serde_json::from_str(kind.text())
            .unwrap_or_else(|e| panic!("embedded {} is not JSON: {e}", kind.file_name()));
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&schema)
            .unwrap_or_else(|e| panic!("embedded {} does not compile: {e}", kind.file_name()))
    })
}

/// Validates `doc` against the schema of `kind`, listing every violation
/// with its JSON Pointer. Messages describe the rule, never the value.
pub fn check(kind: SchemaKind, doc: &Value) -> Result<(), Violations> {
    let mut out = Violations::default();
    for e in validator(kind).iter_errors(doc) {
        out.push(e.instance_path().as_str(), e.masked().to_string());
    }
    if out.is_empty() { Ok(()) } else { Err(out) }
}
