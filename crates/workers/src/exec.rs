//! Running helper programs orch itself needs (today: `git` to prepare
//! workspaces). Agents are not run from here.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How much of a failed command's stderr goes into the error message.
const STDERR_IN_ERROR: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The program is not installed (or not on `PATH`).
    #[error("{program}: not found")]
    NotFound { program: PathBuf },
    #[error("{program}: cannot start: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The program ran and failed.
    #[error("{program} {args} failed ({status}): {stderr}")]
    Failed {
        program: PathBuf,
        args: String,
        status: String,
        stderr: String,
    },
}

/// The output of a successful command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `git <args>` (in `cwd` when given) and returns its output when it
/// exits 0.
///
/// This is a stop-gap: SPEC §15 item 15 says `git` must not run outside the
/// allowlist and sandbox, so this function will move into the sandboxed
/// executor together with the real-CLI agents. Until then it is the one
/// place orch starts `git`, with argv only (no shell), stdin closed, no
/// terminal prompts and a fixed locale (so error text is predictable).
pub fn run_git(args: &[&OsStr], cwd: Option<&Path>) -> Result<Output, ExecError> {
    run_program(OsStr::new("git"), args, cwd)
}

/// `run_git` with an explicit program (tests point it at a missing binary).
pub(crate) fn run_program(
    program: &OsStr,
    args: &[&OsStr],
    cwd: Option<&Path>,
) -> Result<Output, ExecError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C");
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            ExecError::NotFound {
                program: PathBuf::from(program),
            }
        } else {
            ExecError::Spawn {
                program: PathBuf::from(program),
                source,
            }
        }
    })?;
    if out.status.success() {
        return Ok(Output {
            stdout: out.stdout,
            stderr: out.stderr,
        });
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr: String = stderr.trim().chars().take(STDERR_IN_ERROR).collect();
    let args: Vec<OsString> = args.iter().map(|a| a.to_os_string()).collect();
    Err(ExecError::Failed {
        program: PathBuf::from(program),
        args: args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        status: out.status.to_string(),
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_program_is_not_found() {
        let err = run_program(OsStr::new("/nonexistent/orch-no-git"), &[], None).unwrap_err();
        assert!(matches!(err, ExecError::NotFound { .. }), "{err}");
    }

    #[test]
    fn failure_carries_stderr() {
        let Ok(_) = run_git(&[OsStr::new("--version")], None) else {
            return; // git not installed: nothing to check here
        };
        let dir = tempfile::tempdir().unwrap();
        let err = run_git(&[OsStr::new("--orch-no-such-option")], Some(dir.path())).unwrap_err();
        match err {
            ExecError::Failed { stderr, args, .. } => {
                assert!(stderr.contains("orch-no-such-option"), "{stderr}");
                assert_eq!(args, "--orch-no-such-option");
            }
            other => panic!("{other}"),
        }
    }
}
