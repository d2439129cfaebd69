//! Identifier newtypes. A `JobId` or `StepId` is used to build file system
//! paths, so the only way to obtain one is through a constructor that refuses
//! anything that could name a different directory (`..`, `/`, NUL, ...).

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("job_id must be 32 lowercase hex characters or 8..64 of [A-Za-z0-9._-], got {0:?}")]
    BadJobId(String),
    #[error("step_id must match ^[0-9A-Za-z][0-9A-Za-z_-]{{0,63}}$, got {0:?}")]
    BadStepId(String),
}

/// A validated job id: `^[a-f0-9]{32}$` or `^[a-zA-Z0-9._-]{8,64}$`, never
/// made only of dots and never starting with a dot (so it can never be `.`,
/// `..` or a hidden file).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if is_valid_job_id(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::BadJobId(truncate_for_error(s)))
        }
    }

    /// A fresh random id: 32 lowercase hex characters.
    pub fn generate() -> Self {
        Self(random_hex32())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub fn is_valid_job_id(s: &str) -> bool {
    let len = s.len();
    if !(8..=64).contains(&len) {
        return false;
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return false;
    }
    // Never hidden, never dot-only, never a `..` component lookalike.
    !s.starts_with('.') && !s.contains("..")
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        JobId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A validated step id: `^[0-9A-Za-z][0-9A-Za-z_-]{0,63}$`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct StepId(String);

impl StepId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if is_valid_step_id(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::BadStepId(truncate_for_error(s)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub fn is_valid_step_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StepId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for StepId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        StepId::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn truncate_for_error(s: &str) -> String {
    s.chars().take(80).collect()
}

/// 128 random bits as hex. Reads the kernel's CSPRNG; falls back to a
/// time/pid/counter mix only if `/dev/urandom` is unreadable.
pub fn random_hex32() -> String {
    use std::io::Read;
    let mut buf = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if !ok {
        use std::sync::atomic::{AtomicU64, Ordering};
        static CTR: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mix = nanos
            ^ ((std::process::id() as u128) << 64)
            ^ ((CTR.fetch_add(1, Ordering::Relaxed) as u128) << 96);
        buf = mix.to_le_bytes();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids() {
        assert!(JobId::parse("0123456789abcdef0123456789abcdef").is_ok());
        assert!(JobId::parse("my-job.2024_01").is_ok());
        for bad in [
            "",
            "short",
            "../../etc/passwd",
            "........",
            ".hidden-job",
            "a/b/c/d/e/f",
            "job..id1",
            "job id 1234",
            "ä1234567",
        ] {
            assert!(JobId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(JobId::parse(&"a".repeat(65)).is_err());
        assert_eq!(JobId::generate().as_str().len(), 32);
    }

    #[test]
    fn step_ids() {
        assert!(StepId::parse("01_plan").is_ok());
        for bad in ["", "_x", "-x", "a.b", "../x", "a/b", &"a".repeat(65)] {
            assert!(StepId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
