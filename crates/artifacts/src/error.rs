//! The one error type of the artifacts crate. Every variant names the file or
//! the relative path involved, so an operator reading a log line knows which
//! artifact to look at without re-running anything.

use fsqueue::durable::DurableError;
use std::io;
use std::path::PathBuf;

/// What went wrong with an artifact, and where.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// An I/O operation failed (`op` is e.g. `"open"`, `"read"`, `"fsync"`).
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A relative path that would leave the job directory (absolute, `..`,
    /// empty, or otherwise not a plain relative path).
    #[error("artifact path {rel:?} escapes the job directory or is not a plain relative path")]
    Escape { rel: String },
    /// A symlink was found where orch expects a real file or directory. orch
    /// never follows links inside the artifacts tree.
    #[error("{path}: is a symlink; orch never follows symlinks inside the artifacts tree")]
    Symlink { path: PathBuf },
    /// The artifact does not exist.
    #[error("{path}: no such artifact")]
    NotFound { path: PathBuf },
    /// Something other than a regular file (a directory, FIFO, device...)
    /// where a file was expected, or something other than a directory where a
    /// directory was expected.
    #[error("{path}: {what}")]
    WrongType { path: PathBuf, what: &'static str },
    /// A JSON document could not be parsed or serialised.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A JSON document is larger than orch is willing to load.
    #[error("{path}: larger than the {limit}-byte limit for JSON documents")]
    TooLarge { path: PathBuf, limit: u64 },
    /// A document handed to the store belongs to a different job or step.
    #[error("{path}: {what} {found:?} does not match {expected:?}")]
    Mismatch {
        path: PathBuf,
        what: &'static str,
        expected: String,
        found: String,
    },
}

impl ArtifactError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True when the artifact simply does not exist (so a caller can render
    /// `[missing]` rather than `[invalid_path]`).
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::NotFound { .. } => true,
            Self::Io { source, .. } => source.kind() == io::ErrorKind::NotFound,
            _ => false,
        }
    }

    /// True for refusals of the path itself (escape attempts, planted
    /// symlinks, wrong file types): the request was invalid, not the disk.
    pub fn is_invalid_path(&self) -> bool {
        matches!(
            self,
            Self::Escape { .. } | Self::Symlink { .. } | Self::WrongType { .. }
        )
    }
}

impl From<DurableError> for ArtifactError {
    fn from(e: DurableError) -> Self {
        Self::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    }
}

pub type Result<T, E = ArtifactError> = std::result::Result<T, E>;
