//! The one executor for every child process orch starts (SPEC §6, §7):
//! agents, their `--version` preflight, the sandbox probe, and `git`.
//! `clippy.toml` bans `std::process::Command::new` everywhere else, so
//! nothing can bypass the rules below by accident.
//!
//! The rules, and why:
//! - **argv only, never a shell**: no quoting bugs, no injection through
//!   prompts, step ids or paths.
//! - **allowlisted binaries resolved to absolute paths** ([`ExecPolicy`]):
//!   `ALLOWED_BINARIES`, narrowed by the job's `policy.allowed_binaries`; a
//!   bare name is looked up on the runner's `PATH` once, here, so what runs
//!   is exactly what was checked (and what the sandbox binds).
//! - **a cleared environment** rebuilt from `ENV_ALLOWLIST` (plus `PATH`,
//!   `HOME`, `TMPDIR` unless `SANDBOX_CLEAR_ENV=1`) and the per-job state
//!   directories, so an agent never sees the runner's secrets by default.
//! - **the prompt on stdin**, then stdin is closed (argv is visible in `ps`
//!   and size-limited; SPEC §15 defect 20).
//! - **its own process group** (`process_group(0)`, safe Rust), so a stop
//!   reaches everything the agent started: SIGTERM to the group, SIGKILL
//!   after a grace, on cancel, timeout, or when the waiting future is
//!   dropped (the runner's `tokio::time::timeout` drops it).
//! - **an optional idle-output watchdog** (`idle_timeout`, from
//!   `RUNNER_MAX_IDLE_SEC`): a child that writes nothing on either stream
//!   for that long is stopped like a timed-out one and reported as
//!   [`ExitKind::IdleTimedOut`]. Off by default, since some agents print
//!   nothing until they are done (the MVP's fixed 120 s watchdog killed
//!   them, defect 5).
//! - **bytes, not lines**: both streams are read in chunks, so a 10 MB line
//!   is just bytes (the MVP crashed on lines over 64 KiB, defect 5). Each
//!   stream keeps its first `MAX_SUBPROCESS_OUTPUT_CHARS` characters plus a
//!   truncation marker, and a bounded tail so JSONL adapters still see the
//!   final events of a huge transcript.
//!
//! - **a parent-death signal** without `unsafe`: when the runner installs an
//!   agent wrapper ([`set_agent_wrapper`], the `orch-runner` binary itself
//!   in a hidden mode), every child is started through it; the wrapper sets
//!   `PR_SET_PDEATHSIG` to SIGKILL with nix's `prctl`, checks that its
//!   parent is still the runner, and execs the real program. An agent whose
//!   runner is SIGKILLed dies with it. (In sandbox mode bubblewrap's
//!   `--die-with-parent` does the same.)
//! - **a spawn record** ([`set_spawn_observer`]): the runner records each
//!   child's process group so a later attempt on the same host can kill it.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use contracts::env::{self as ev, ConfigError, EnvSource};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How much of a failed command's stderr goes into the error message.
const STDERR_IN_ERROR: usize = 2000;

/// Default grace between SIGTERM and SIGKILL.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

/// How long the streams may stay open after the main process exited
/// (children holding the pipes) before the group is killed.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// Read buffer size: large enough that a 10 MB line is a few hundred reads.
const READ_CHUNK: usize = 64 * 1024;

/// Variables every child gets unless `SANDBOX_CLEAR_ENV=1`.
pub const BASE_ENV: &[&str] = &["PATH", "HOME", "TMPDIR"];

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The program is not installed (or not on `PATH`).
    #[error("{program}: not found")]
    NotFound { program: PathBuf },
    /// The program is not in the allowlist (ALLOWED_BINARIES ∩ the job's
    /// `policy.allowed_binaries`).
    #[error(
        "{program}: not an allowed binary (allowed: {allowed}); hint: add it to ALLOWED_BINARIES and the job's policy.allowed_binaries"
    )]
    NotAllowed { program: String, allowed: String },
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

impl ExecError {
    /// The `error.code` a step result carries for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "binary_not_found",
            Self::NotAllowed { .. } => "binary_not_allowed",
            Self::Spawn { .. } => "spawn_failed",
            Self::Failed { .. } => "command_failed",
        }
    }
}

/// The output of a successful synchronous command ([`run_git`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// The process-wide rules of the executor, resolved once at start-up from
/// the environment (`ALLOWED_BINARIES`, `ENV_ALLOWLIST`,
/// `SANDBOX_CLEAR_ENV`, `MAX_SUBPROCESS_OUTPUT_CHARS`).
#[derive(Debug, Clone)]
pub struct ExecPolicy {
    /// Bare names (looked up on `search_path`) or absolute paths.
    pub allowed_binaries: Vec<String>,
    /// Names of runner variables passed to children.
    pub env_allowlist: Vec<String>,
    /// `SANDBOX_CLEAR_ENV=1`: no `PATH`/`HOME`/`TMPDIR` by default.
    pub clear_env: bool,
    /// Characters kept per output stream.
    pub max_output_chars: usize,
    /// SIGTERM → SIGKILL grace.
    pub kill_grace: Duration,
    /// The runner's values of `BASE_ENV` and the allowlisted names (only
    /// those; nothing else of the runner's environment is kept).
    pub inherited: BTreeMap<String, String>,
    /// `PATH` used to resolve bare binary names.
    pub search_path: String,
}

impl ExecPolicy {
    /// Reads the policy from the environment.
    pub fn from_env(src: &EnvSource) -> Result<Self, ConfigError> {
        let allowed_binaries = src.get_list(&ev::ALLOWED_BINARIES)?;
        for b in &allowed_binaries {
            if !(is_bare_name(b) || Path::new(b).is_absolute()) {
                return Err(ConfigError::Invalid {
                    var: ev::ALLOWED_BINARIES.name,
                    value: format!("{b:?}"),
                    expected: "bare program names or absolute paths".into(),
                });
            }
        }
        let env_allowlist = src.get_list(&ev::ENV_ALLOWLIST)?;
        for n in &env_allowlist {
            if !is_env_name(n) {
                return Err(ConfigError::Invalid {
                    var: ev::ENV_ALLOWLIST.name,
                    value: format!("{n:?}"),
                    expected: "variable names of [A-Za-z0-9_]".into(),
                });
            }
        }
        let clear_env = src.get_bool(&ev::SANDBOX_CLEAR_ENV)?;
        let max_output_chars =
            src.get_u64_range(&ev::MAX_SUBPROCESS_OUTPUT_CHARS, 1024, 1 << 32)? as usize;
        let mut inherited = BTreeMap::new();
        for name in BASE_ENV
            .iter()
            .copied()
            .chain(env_allowlist.iter().map(String::as_str))
        {
            if let Some(v) = src.raw(name) {
                inherited.insert(name.to_owned(), v.to_owned());
            }
        }
        let search_path = src
            .raw("PATH")
            .map_or_else(|| "/usr/local/bin:/usr/bin:/bin".to_owned(), str::to_owned);
        Ok(Self {
            allowed_binaries,
            env_allowlist,
            clear_env,
            max_output_chars,
            kill_grace: DEFAULT_KILL_GRACE,
            inherited,
            search_path,
        })
    }

    /// The effective allowlist for a job: `ALLOWED_BINARIES`, narrowed to
    /// the job's `policy.allowed_binaries` when that is not empty.
    pub fn allowed_for(&self, job_allowed: &[String]) -> Vec<String> {
        if job_allowed.is_empty() {
            return self.allowed_binaries.clone();
        }
        self.allowed_binaries
            .iter()
            .filter(|b| job_allowed.contains(b))
            .cloned()
            .collect()
    }

    /// Checks `program` against the effective allowlist and resolves it to
    /// an absolute path. A bare name must be listed as a bare name and is
    /// found on `search_path`; a path must be listed exactly.
    pub fn resolve(&self, program: &str, job_allowed: &[String]) -> Result<PathBuf, ExecError> {
        let allowed = self.allowed_for(job_allowed);
        if !allowed.iter().any(|a| a == program) {
            return Err(ExecError::NotAllowed {
                program: program.to_owned(),
                allowed: if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(",")
                },
            });
        }
        if Path::new(program).is_absolute() {
            return if is_executable(Path::new(program)) {
                Ok(PathBuf::from(program))
            } else {
                Err(ExecError::NotFound {
                    program: PathBuf::from(program),
                })
            };
        }
        find_on_path(program, &self.search_path).ok_or_else(|| ExecError::NotFound {
            program: PathBuf::from(program),
        })
    }

    /// The child environment: the inherited base and allowlisted variables,
    /// then `extra` (per-job state directories), which wins.
    pub fn child_env(&self, extra: &[(String, String)]) -> Vec<(String, String)> {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in &self.inherited {
            let base = BASE_ENV.contains(&k.as_str());
            if (base && !self.clear_env) || self.env_allowlist.contains(k) {
                env.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in extra {
            env.insert(k.clone(), v.clone());
        }
        env.into_iter().collect()
    }
}

fn is_bare_name(s: &str) -> bool {
    !s.is_empty()
        && !s.contains('/')
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The first executable `name` on a `PATH`-style list (absolute entries
/// only: a relative `PATH` entry would make resolution depend on the cwd).
pub fn find_on_path(name: &str, path: &str) -> Option<PathBuf> {
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(name))
        .find(|p| is_executable(p))
}

/// The single place a `std::process::Command` is created.
#[allow(
    clippy::disallowed_methods,
    reason = "the executor is the one sanctioned place that starts processes"
)]
fn new_command(program: &Path) -> std::process::Command {
    std::process::Command::new(program)
}

/// One child process to run, fully decided by the caller: `program` is an
/// absolute path (resolved through [`ExecPolicy::resolve`]) and `env` is the
/// complete environment (nothing else is inherited).
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    /// Written to stdin, which is then closed; `None` = stdin is /dev/null.
    pub stdin: Option<Vec<u8>>,
    /// Wall-clock limit; on expiry the group is stopped and the status is
    /// [`ExitKind::TimedOut`].
    pub timeout: Option<Duration>,
    /// Idle-output limit: when neither stream produced a byte for this
    /// long, the group is stopped and the status is
    /// [`ExitKind::IdleTimedOut`]. `None` = no watchdog.
    pub idle_timeout: Option<Duration>,
    pub max_output_chars: usize,
    pub kill_grace: Duration,
    /// `cgroup.procs` files the child joins before it execs the program
    /// (a step's cgroup, [`crate::cgroup`]); empty = none.
    pub cgroup: Vec<PathBuf>,
}

impl ExecSpec {
    pub fn new(program: impl Into<PathBuf>, cwd: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            cwd: cwd.into(),
            env: Vec::new(),
            stdin: None,
            timeout: None,
            idle_timeout: None,
            max_output_chars: 2_000_000,
            kill_grace: DEFAULT_KILL_GRACE,
            cgroup: Vec::new(),
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// The command line for logs: program and arguments, never the stdin.
    pub fn display(&self) -> String {
        std::iter::once(self.program.as_os_str())
            .chain(self.args.iter().map(OsString::as_os_str))
            .map(|a| {
                let s = a.to_string_lossy();
                if s.is_empty() || s.contains([' ', '"', '\'']) {
                    format!("{s:?}")
                } else {
                    s.into_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal (not by orch).
    Signaled(i32),
    /// Stopped by orch because the spec's timeout expired.
    TimedOut,
    /// Stopped by orch because the child printed nothing for the spec's
    /// `idle_timeout`.
    IdleTimedOut,
    /// Stopped by orch because the cancellation token fired.
    Cancelled,
}

impl ExitKind {
    pub fn success(self) -> bool {
        self == Self::Exited(0)
    }
}

impl std::fmt::Display for ExitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(c) => write!(f, "exit code {c}"),
            Self::Signaled(s) => write!(f, "killed by signal {s}"),
            Self::TimedOut => f.write_str("timed out"),
            Self::IdleTimedOut => f.write_str("stopped after printing nothing for too long"),
            Self::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// One captured stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// The first `max_output_chars` characters, plus a marker line when
    /// truncated. This is what `raw_stdout.txt`/`raw_stderr.txt` get.
    pub bytes: Vec<u8>,
    /// True when the stream was longer than the cap.
    pub truncated: bool,
    /// Bytes the process wrote in total.
    pub total_bytes: u64,
    /// When truncated: the last bytes of the stream (at most the cap), so
    /// parsers can read a transcript's final events. Empty otherwise.
    pub tail: Vec<u8>,
}

impl Captured {
    /// The stream as parsers should see it: everything when complete; when
    /// truncated, the head (without marker) and the tail joined by a
    /// newline, so both halves' complete lines parse.
    pub fn for_parsing(&self) -> Vec<u8> {
        if !self.truncated {
            return self.bytes.clone();
        }
        let head_len = self
            .bytes
            .windows(TRUNCATION_MARKER_PREFIX.len())
            .rposition(|w| w == TRUNCATION_MARKER_PREFIX.as_bytes())
            .unwrap_or(self.bytes.len());
        let mut out = self.bytes[..head_len].to_vec();
        out.push(b'\n');
        // The tail's first line is usually cut; drop it.
        let start = self
            .tail
            .iter()
            .position(|&b| b == b'\n')
            .map_or(self.tail.len(), |p| p + 1);
        out.extend_from_slice(&self.tail[start..]);
        out
    }
}

impl Captured {
    /// The complete lines of the tail alone (empty when not truncated):
    /// what a parser may trust to hold a transcript's final events.
    pub fn tail_lines(&self) -> &[u8] {
        if !self.truncated {
            return &[];
        }
        let start = self
            .tail
            .iter()
            .position(|&b| b == b'\n')
            .map_or(self.tail.len(), |p| p + 1);
        &self.tail[start..]
    }
}

/// The marker line that ends a truncated stream.
pub const TRUNCATION_MARKER_PREFIX: &str = "\n[orch: output truncated";

struct Capture {
    cap_chars: usize,
    chars: usize,
    head: Vec<u8>,
    tail: Vec<u8>,
    total: u64,
    truncated: bool,
}

impl Capture {
    fn new(cap_chars: usize) -> Self {
        Self {
            cap_chars,
            chars: 0,
            head: Vec::new(),
            tail: Vec::new(),
            total: 0,
            truncated: false,
        }
    }

    fn push(&mut self, buf: &[u8]) {
        self.total += buf.len() as u64;
        let mut rest = buf;
        if !self.truncated {
            // Characters are counted as UTF-8 lead bytes, so the cut never
            // splits a character and non-UTF-8 bytes count one each.
            let mut cut = None;
            for (i, &b) in buf.iter().enumerate() {
                if b & 0xC0 != 0x80 {
                    if self.chars == self.cap_chars {
                        cut = Some(i);
                        break;
                    }
                    self.chars += 1;
                }
            }
            match cut {
                None => {
                    self.head.extend_from_slice(buf);
                    return;
                }
                Some(i) => {
                    self.head.extend_from_slice(&buf[..i]);
                    self.truncated = true;
                    rest = &buf[i..];
                }
            }
        }
        self.tail.extend_from_slice(rest);
        let keep = self.cap_chars.max(1);
        if self.tail.len() > keep.saturating_mul(2) {
            let drop = self.tail.len() - keep;
            self.tail.drain(..drop);
        }
    }

    fn finish(mut self) -> Captured {
        if self.truncated {
            let keep = self.cap_chars.max(1);
            if self.tail.len() > keep {
                let drop = self.tail.len() - keep;
                self.tail.drain(..drop);
            }
            let omitted = self.total - self.head.len() as u64;
            self.head.extend_from_slice(
                format!(
                    "{TRUNCATION_MARKER_PREFIX} after {} characters (MAX_SUBPROCESS_OUTPUT_CHARS); {omitted} more bytes not kept]\n",
                    self.cap_chars
                )
                .as_bytes(),
            );
        } else {
            self.tail.clear();
        }
        Captured {
            bytes: self.head,
            truncated: self.truncated,
            total_bytes: self.total,
            tail: self.tail,
        }
    }
}

/// Milliseconds since the child started at which it last wrote a byte on
/// either stream (the idle watchdog's clock; shared by both readers).
type LastOutput = std::sync::Arc<std::sync::atomic::AtomicU64>;

async fn read_stream<R: AsyncRead + Unpin>(
    mut r: R,
    cap_chars: usize,
    started: Instant,
    last: LastOutput,
) -> Captured {
    let mut cap = Capture::new(cap_chars);
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                last.store(ms, std::sync::atomic::Ordering::Relaxed);
                cap.push(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    cap.finish()
}

/// What a finished child produced.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit: ExitKind,
    pub stdout: Captured,
    pub stderr: Captured,
    pub duration: Duration,
}

/// Stops a process group when dropped while armed: SIGTERM now, SIGKILL
/// after the grace from a short-lived thread (a destructor cannot await).
/// This is what makes dropping a running agent's future safe.
struct GroupGuard {
    pgid: Option<Pid>,
    grace: Duration,
}

impl GroupGuard {
    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let Some(pgid) = self.pgid.take() else {
            return;
        };
        if killpg(pgid, Signal::SIGTERM).is_err() {
            return; // the group is already gone
        }
        let grace = self.grace;
        let _ = std::thread::Builder::new()
            .name("orch-kill-group".into())
            .spawn(move || {
                std::thread::sleep(grace);
                let _ = killpg(pgid, Signal::SIGKILL);
            });
    }
}

/// A started child. Dropping it stops the whole process group.
pub struct Running {
    child: tokio::process::Child,
    guard: GroupGuard,
    stdout: tokio::task::JoinHandle<Captured>,
    stderr: tokio::task::JoinHandle<Captured>,
    timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    last_output: LastOutput,
    grace: Duration,
    started: Instant,
}

/// The argument that puts `orch-runner` in agent-wrapper mode.
pub const AGENT_WRAPPER_ARG: &str = "__orch-agent-exec";

/// The wrapper's option (before the runner pid, repeatable) naming a
/// `cgroup.procs` file it writes its own pid to before it execs.
pub const AGENT_WRAPPER_CGROUP: &str = "--cgroup-procs=";

/// Called with (working directory, pid) of every child started.
pub type SpawnObserver = Box<dyn Fn(&Path, u32) + Send + Sync>;

static AGENT_WRAPPER: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
static SPAWN_OBSERVER: std::sync::OnceLock<SpawnObserver> = std::sync::OnceLock::new();

/// Starts every later child through `wrapper AGENT_WRAPPER_ARG <ppid>
/// <program> <args>...` (see the module docs). Set once per process.
pub fn set_agent_wrapper(wrapper: PathBuf) {
    let _ = AGENT_WRAPPER.set(wrapper);
}

/// Installs the process-wide spawn observer (once).
pub fn set_spawn_observer(f: SpawnObserver) {
    let _ = SPAWN_OBSERVER.set(f);
}

/// Starts `spec` in its own process group with exactly `spec.env`. Must be
/// called inside a tokio runtime.
pub fn spawn(spec: &ExecSpec) -> Result<Running, ExecError> {
    let mut cmd = match AGENT_WRAPPER.get() {
        Some(wrapper) => {
            // The wrapper always exists: report a missing program as such.
            if !spec.program.is_file() {
                return Err(ExecError::NotFound {
                    program: spec.program.clone(),
                });
            }
            let mut c = new_command(wrapper);
            c.arg(AGENT_WRAPPER_ARG);
            for procs in &spec.cgroup {
                c.arg(format!("{AGENT_WRAPPER_CGROUP}{}", procs.display()));
            }
            c.arg(std::process::id().to_string()).arg(&spec.program);
            c
        }
        None => new_command(&spec.program),
    };
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            ExecError::NotFound {
                program: spec.program.clone(),
            }
        } else {
            ExecError::Spawn {
                program: spec.program.clone(),
                source,
            }
        }
    })?;
    if !spec.cgroup.is_empty() && AGENT_WRAPPER.get().is_none() {
        // No wrapper joined the cgroup before exec: move the child and
        // whatever it started already (see `cgroup::adopt`).
        let placed = match child.id() {
            Some(pid) => crate::cgroup::adopt(&spec.cgroup, pid),
            None => Err(io::Error::other("the child exited at once")),
        };
        if let Err(source) = placed {
            let _ = child.start_kill();
            return Err(ExecError::Spawn {
                program: spec.program.clone(),
                source,
            });
        }
    }
    if let (Some(obs), Some(pid)) = (SPAWN_OBSERVER.get(), child.id()) {
        obs(&spec.cwd, pid);
    }
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let guard = GroupGuard {
        pgid,
        grace: spec.kill_grace,
    };
    if let (Some(input), Some(mut stdin)) = (spec.stdin.clone(), child.stdin.take()) {
        tokio::spawn(async move {
            // A child that exits without reading its stdin closes the pipe;
            // that is its business, not an error of ours.
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
            drop(stdin);
        });
    }
    let cap = spec.max_output_chars;
    let started = Instant::now();
    let last_output = LastOutput::default();
    let stdout = match child.stdout.take() {
        Some(s) => tokio::spawn(read_stream(s, cap, started, last_output.clone())),
        None => tokio::spawn(async { Captured::default() }),
    };
    let stderr = match child.stderr.take() {
        Some(s) => tokio::spawn(read_stream(s, cap, started, last_output.clone())),
        None => tokio::spawn(async { Captured::default() }),
    };
    Ok(Running {
        child,
        guard,
        stdout,
        stderr,
        timeout: spec.timeout,
        idle_timeout: spec.idle_timeout,
        last_output,
        grace: spec.kill_grace,
        started,
    })
}

impl Running {
    /// The process id (= process group id) of the child.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the child, stopping its group on cancel or timeout.
    pub async fn wait(mut self, cancel: CancellationToken) -> ExecOutput {
        let deadline = async {
            match self.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let idle = idle_watch(self.idle_timeout, self.started, self.last_output.clone());
        let exit = tokio::select! {
            st = self.child.wait() => status_kind(st),
            () = cancel.cancelled() => {
                self.terminate().await;
                ExitKind::Cancelled
            }
            () = deadline => {
                self.terminate().await;
                ExitKind::TimedOut
            }
            () = idle => {
                self.terminate().await;
                ExitKind::IdleTimedOut
            }
        };
        // The main process is gone; give stragglers holding the pipes a
        // moment to finish writing, then kill whatever is left of the
        // group: nothing an agent started may outlive its step.
        let drained = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
            while !self.stdout.is_finished() || !self.stderr.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if let Some(pgid) = self.guard.pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        let _ = drained;
        self.guard.disarm();
        let stdout = (&mut self.stdout).await.unwrap_or_default();
        let stderr = (&mut self.stderr).await.unwrap_or_default();
        ExecOutput {
            exit,
            stdout,
            stderr,
            duration: self.started.elapsed(),
        }
    }

    /// SIGTERM to the group, SIGKILL after the grace.
    async fn terminate(&mut self) {
        let Some(pgid) = self.guard.pgid else {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
            return;
        };
        let _ = killpg(pgid, Signal::SIGTERM);
        if tokio::time::timeout(self.grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = self.child.wait().await;
        }
    }
}

/// Resolves once no output arrived for `limit` (never when `limit` is
/// `None`). It sleeps until the earliest moment the limit could expire and
/// re-checks, so an agent that keeps printing costs a wake-up per `limit`,
/// not a poll loop.
async fn idle_watch(limit: Option<Duration>, started: Instant, last: LastOutput) {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    loop {
        let last_ms = last.load(std::sync::atomic::Ordering::Relaxed);
        let quiet_since = started + Duration::from_millis(last_ms);
        let expires = quiet_since + limit;
        let now = Instant::now();
        if now >= expires {
            return;
        }
        tokio::time::sleep(expires - now).await;
    }
}

fn status_kind(st: io::Result<std::process::ExitStatus>) -> ExitKind {
    use std::os::unix::process::ExitStatusExt;
    match st {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => ExitKind::Exited(c),
            (None, Some(sig)) => ExitKind::Signaled(sig),
            (None, None) => ExitKind::Exited(-1),
        },
        Err(_) => ExitKind::Exited(-1),
    }
}

/// Spawns and waits: the common case.
pub async fn run(spec: &ExecSpec, cancel: CancellationToken) -> Result<ExecOutput, ExecError> {
    Ok(spawn(spec)?.wait(cancel).await)
}

/// Runs a short synchronous command (probes, `git`) with argv only, stdin
/// closed, its own process group and exactly `env`. Returns its output when
/// it exits 0. Blocking: call from `spawn_blocking` in async code.
pub fn run_sync(
    program: &Path,
    args: &[&OsStr],
    cwd: Option<&Path>,
    env: &[(String, String)],
) -> Result<Output, ExecError> {
    let mut cmd = new_command(program);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            ExecError::NotFound {
                program: program.to_path_buf(),
            }
        } else {
            ExecError::Spawn {
                program: program.to_path_buf(),
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
    Err(ExecError::Failed {
        program: program.to_path_buf(),
        args: args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        status: out.status.to_string(),
        stderr,
    })
}

/// Runs `git <args>` (in `cwd` when given) and returns its output when it
/// exits 0.
///
/// `git` here is orch's own trusted step (cloning an operator-configured
/// source into the workspaces root), so it runs outside the agent sandbox,
/// which could not see the source. It still goes through the executor's
/// rules: resolved to an absolute path on `PATH`, argv only, stdin closed,
/// a cleared environment (`PATH`, `HOME`, `TMPDIR` only), no terminal
/// prompts, no system config, and a fixed locale so errors are predictable.
pub fn run_git(args: &[&OsStr], cwd: Option<&Path>) -> Result<Output, ExecError> {
    run_program(OsStr::new("git"), args, cwd)
}

/// `run_git` confined to `dir`: git's repository discovery stops at `dir`
/// (`GIT_CEILING_DIRECTORIES` = its parent), so a command run in a plain,
/// non-git workspace that happens to live inside some other repository
/// (`orch dev` in a checkout) acts on the workspace alone, never on the
/// enclosing repository. Used to apply patches to a job's workspace.
pub fn run_git_confined(args: &[&OsStr], dir: &Path) -> Result<Output, ExecError> {
    let ceiling = dir.parent().unwrap_or(dir).display().to_string();
    run_program_env(
        OsStr::new("git"),
        args,
        Some(dir),
        &[("GIT_CEILING_DIRECTORIES", ceiling.as_str())],
    )
}

/// `run_git` with an explicit program (tests point it at a missing binary).
pub(crate) fn run_program(
    program: &OsStr,
    args: &[&OsStr],
    cwd: Option<&Path>,
) -> Result<Output, ExecError> {
    run_program_env(program, args, cwd, &[])
}

fn run_program_env(
    program: &OsStr,
    args: &[&OsStr],
    cwd: Option<&Path>,
    extra_env: &[(&str, &str)],
) -> Result<Output, ExecError> {
    let path_var = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let program_path = Path::new(program);
    let resolved = if program_path.is_absolute() {
        program_path.to_path_buf()
    } else {
        find_on_path(&program.to_string_lossy(), &path_var).ok_or_else(|| ExecError::NotFound {
            program: program_path.to_path_buf(),
        })?
    };
    let mut env: Vec<(String, String)> = BASE_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect();
    env.extend(
        [
            ("GIT_TERMINAL_PROMPT", "0"),
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("LC_ALL", "C"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    run_sync(&resolved, args, cwd, &env)
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

    #[test]
    fn capture_cuts_on_characters_and_keeps_a_tail() {
        let mut c = Capture::new(3);
        c.push("aé".as_bytes());
        c.push("bcdef\nlast\n".as_bytes());
        let out = c.finish();
        assert!(out.truncated);
        assert!(out.bytes.starts_with("aéb".as_bytes()));
        assert!(String::from_utf8_lossy(&out.bytes).contains("output truncated after 3"));
        assert!(out.tail.ends_with(b"st\n"));
    }

    #[test]
    fn allowlist_narrowing_and_resolution() {
        let src = EnvSource::from_pairs([
            ("ALLOWED_BINARIES", "sh,git,/bin/true"),
            ("PATH", "/usr/bin:/bin"),
            ("ENV_ALLOWLIST", "API_KEY"),
            ("API_KEY", "k"),
            ("OTHER", "x"),
        ]);
        let p = ExecPolicy::from_env(&src).unwrap();
        assert!(p.resolve("sh", &[]).unwrap().is_absolute());
        assert!(matches!(
            p.resolve("sh", &["git".into()]),
            Err(ExecError::NotAllowed { .. })
        ));
        assert!(matches!(
            p.resolve("curl", &[]),
            Err(ExecError::NotAllowed { .. })
        ));
        let env = p.child_env(&[]);
        assert!(env.iter().any(|(k, _)| k == "API_KEY"));
        assert!(env.iter().any(|(k, _)| k == "PATH"));
        assert!(!env.iter().any(|(k, _)| k == "OTHER"));
    }
}
