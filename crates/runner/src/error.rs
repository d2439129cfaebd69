//! The one error type of a job attempt, [`AttemptError`]: what stops an
//! attempt's work and what the runner does about it is decided by matching
//! its variant, never by reading an error's text.
//!
//! Errors from the layers below (`fsqueue`, `artifacts`, `workers`,
//! `std::io`) are converted at the boundary, by `From`:
//!
//! - a publish the attempt's fence refused (`fsqueue::durable::Refused`) or
//!   a queue move whose running file was gone (`QueueError::LeaseLost`) is
//!   [`AttemptError::LeaseLost`];
//! - an I/O error whose errno says the filesystem is full (`ENOSPC`), over
//!   quota (`EDQUOT`) or read-only (`EROFS`) is [`AttemptError::Storage`]
//!   (classified by `io::Error::kind()`, which the standard library derives
//!   from the errno and which survives copies that keep only the kind);
//! - any other I/O error is [`AttemptError::Io`];
//! - everything else keeps its message as [`AttemptError::Internal`].

use crate::budget::Deferred;
use crate::exec::StopReason;
use std::io;

/// A storage fault: the filesystem cannot take the runner's writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    /// `ENOSPC`: no space left on the device.
    NoSpace,
    /// `EROFS`: the filesystem is mounted read-only.
    ReadOnly,
    /// `EDQUOT`: the user's disk quota is used up.
    Quota,
}

impl StorageKind {
    /// The storage fault `e` is, if it is one.
    pub fn of(e: &io::Error) -> Option<Self> {
        match e.kind() {
            io::ErrorKind::StorageFull => Some(Self::NoSpace),
            io::ErrorKind::ReadOnlyFilesystem => Some(Self::ReadOnly),
            io::ErrorKind::QuotaExceeded => Some(Self::Quota),
            _ => None,
        }
    }

    /// The errno's name, as the heartbeat's `storage_fault.kind` and the
    /// `orch_storage_faults_total{kind}` label show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoSpace => "ENOSPC",
            Self::ReadOnly => "EROFS",
            Self::Quota => "EDQUOT",
        }
    }
}

impl std::fmt::Display for StorageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an attempt's work stopped short of an outcome. Its `Display` is the
/// message of the error it came from, so logs and recorded failures read
/// as before.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// The attempt no longer owns the job (lease or owner's deadline gone,
    /// fence refused a publish, running file moved): touch nothing more.
    #[error("lease lost: {0}")]
    LeaseLost(String),
    /// Stopped from outside (shutdown, lost lease) during a step; what to
    /// do is the job's `StopReason`.
    #[error("stopped: {0:?}")]
    Stopped(StopReason),
    /// Over budget with `BUDGET_EXCEEDED_ACTION=defer`: the attempt did not
    /// run; the job goes back to `pending/` until the next UTC day.
    #[error("{0}")]
    Deferred(Deferred),
    /// The filesystem is full, over quota or read-only: the runner's fault,
    /// not the job's.
    #[error("{message}")]
    Storage {
        kind: StorageKind,
        message: String,
        #[source]
        source: io::Error,
    },
    /// Any other I/O error.
    #[error("{message}")]
    Io {
        message: String,
        #[source]
        source: io::Error,
    },
    /// The job asks for something this runner cannot do (a workdir or
    /// project that does not exist here).
    #[error("{0}")]
    Invalid(String),
    /// Anything else (a task that panicked, a document that does not
    /// serialise, an artifact that is not what it should be).
    #[error("{0}")]
    Internal(String),
}

impl AttemptError {
    /// Classifies an I/O error that `message` describes (see the module
    /// docs).
    pub fn from_io(message: String, source: io::Error) -> Self {
        if fsqueue::durable::is_refused(&source) {
            return Self::LeaseLost(message);
        }
        match StorageKind::of(&source) {
            Some(kind) => Self::Storage {
                kind,
                message,
                source,
            },
            None => Self::Io { message, source },
        }
    }

    /// The storage fault behind this error, if it is one.
    pub fn storage_kind(&self) -> Option<StorageKind> {
        match self {
            Self::Storage { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

impl From<io::Error> for AttemptError {
    fn from(e: io::Error) -> Self {
        Self::from_io(e.to_string(), e)
    }
}

impl From<fsqueue::durable::DurableError> for AttemptError {
    fn from(e: fsqueue::durable::DurableError) -> Self {
        Self::from_io(e.to_string(), e.source)
    }
}

impl From<fsqueue::QueueError> for AttemptError {
    fn from(e: fsqueue::QueueError) -> Self {
        match e {
            fsqueue::QueueError::Io(d) => d.into(),
            e @ fsqueue::QueueError::LeaseLost { .. } => Self::LeaseLost(e.to_string()),
            e => Self::Internal(e.to_string()),
        }
    }
}

impl From<artifacts::ArtifactError> for AttemptError {
    fn from(e: artifacts::ArtifactError) -> Self {
        let message = e.to_string();
        match e {
            artifacts::ArtifactError::Io { source, .. } => Self::from_io(message, source),
            _ => Self::Internal(message),
        }
    }
}

impl From<workers::WorkspaceError> for AttemptError {
    fn from(e: workers::WorkspaceError) -> Self {
        let message = e.to_string();
        match e {
            workers::WorkspaceError::Io { source, .. } => Self::from_io(message, source),
            _ => Self::Internal(message),
        }
    }
}

impl From<tokio::task::JoinError> for AttemptError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<serde_json::Error> for AttemptError {
    fn from(e: serde_json::Error) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<Deferred> for AttemptError {
    fn from(d: Deferred) -> Self {
        Self::Deferred(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fsqueue::durable::{DurableError, Refused};

    #[test]
    fn storage_faults_are_classified_by_errno() {
        for (errno, kind) in [
            (28, StorageKind::NoSpace),
            (30, StorageKind::ReadOnly),
            (122, StorageKind::Quota),
        ] {
            let d = DurableError::new("write", "/x", io::Error::from_raw_os_error(errno));
            let e = AttemptError::from(d);
            assert_eq!(e.storage_kind(), Some(kind), "errno {errno}: {e:?}");
            assert!(e.to_string().starts_with("write /x: "), "{e}");
        }
        // A copy that kept only the kind (not the errno) is still one.
        let copied = io::Error::new(io::ErrorKind::StorageFull, "no space (copied)");
        assert_eq!(
            AttemptError::from(copied).storage_kind(),
            Some(StorageKind::NoSpace)
        );
        // Through the layers that wrap an io::Error.
        let q = fsqueue::QueueError::Io(DurableError::new(
            "rename",
            "/q",
            io::Error::from_raw_os_error(30),
        ));
        assert_eq!(
            AttemptError::from(q).storage_kind(),
            Some(StorageKind::ReadOnly)
        );
        // Other errnos are plain I/O errors; text never counts.
        let eacces = AttemptError::from(io::Error::from_raw_os_error(13));
        assert!(matches!(eacces, AttemptError::Io { .. }), "{eacces:?}");
        let text = AttemptError::from(io::Error::other(
            "cannot copy: Read-only file system (os error 30)",
        ));
        assert!(matches!(text, AttemptError::Io { .. }), "{text:?}");
    }

    #[test]
    fn fence_refusals_and_vanished_running_files_are_lost_leases() {
        let d = DurableError::new("rename", "/a", Refused::io("attempt 1 is stale"));
        assert!(matches!(AttemptError::from(d), AttemptError::LeaseLost(_)));
        let q = fsqueue::QueueError::LeaseLost {
            path: "/q/running/x".into(),
        };
        assert!(matches!(AttemptError::from(q), AttemptError::LeaseLost(_)));
        let a = artifacts::ArtifactError::Io {
            op: "rename",
            path: "/a/state.json".into(),
            source: Refused::io("no attempt record"),
        };
        assert!(matches!(AttemptError::from(a), AttemptError::LeaseLost(_)));
    }
}
