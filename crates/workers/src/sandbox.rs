//! The agent sandbox (SPEC §7): orch's built-in bubblewrap profile, or an
//! operator's `SANDBOX_WRAPPER`, wrapped around an [`ExecSpec`].
//!
//! The built-in profile gives the agent:
//! - the system read-only (`/usr`, `/etc`, `/opt` and the merged-usr links),
//!   a fresh `/proc`, a minimal `/dev` and an empty `/tmp`;
//! - **write access only** to the job's workspace and its per-job state
//!   directory, bound at their real paths (so absolute paths in prompts
//!   mean the same inside and out);
//! - every namespace unshared (`--unshare-all`): no view of other
//!   processes, and **no network** unless the job's policy allows it (then
//!   `--share-net`); `deny` is enforced by an empty network namespace, not
//!   by a promise;
//! - `--die-with-parent` (the agent dies when the runner dies, even by
//!   SIGKILL — the part of "agents never outlive their runner" that safe
//!   Rust cannot do itself) and `--new-session` (no terminal injection);
//! - the cleared environment the executor built: bwrap inherits it and
//!   passes it through, so values never appear on bwrap's argv (where `ps`
//!   would show them);
//! - resource limits through util-linux `prlimit` when it is installed:
//!   address space, processes, file size, open files ([`Limits`]).
//!
//! `SANDBOX_WRAPPER` + `SANDBOX_WRAPPER_ARGS` replace the profile: the
//! command becomes `<wrapper> <args...> <program> <program args...>`.

use crate::exec::{ExecSpec, find_on_path, run_sync};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Resource limits applied inside the built-in profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// RLIMIT_AS in bytes. Generous, because JIT runtimes (Node, Bun)
    /// reserve large address ranges they never touch.
    pub address_space: u64,
    /// RLIMIT_NPROC: processes of the user (a fork-bomb brake).
    pub processes: u64,
    /// RLIMIT_FSIZE in bytes: the largest file the agent can write.
    pub file_size: u64,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            address_space: 16 << 30,
            processes: 4096,
            file_size: 2 << 30,
            open_files: 8192,
        }
    }
}

/// Which sandbox wraps agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sandbox {
    /// The built-in bubblewrap profile.
    Bubblewrap {
        bwrap: PathBuf,
        /// `prlimit`, when installed (limits are skipped, with a warning in
        /// the step's logs, when it is not).
        prlimit: Option<PathBuf>,
        limits: Limits,
    },
    /// `SANDBOX_WRAPPER` with `SANDBOX_WRAPPER_ARGS`.
    Wrapper { program: PathBuf, args: Vec<String> },
}

/// What one sandboxed run may see and do.
#[derive(Debug, Clone, Default)]
pub struct Mounts {
    /// Writable, bound at the same path (workspace, state dir).
    pub rw: Vec<PathBuf>,
    /// Extra read-only paths (the agent binary, custom agents' `ro_paths`).
    pub ro: Vec<PathBuf>,
    /// Share the host network (job policy `allow`).
    pub network: bool,
}

/// The system directories bound read-only (when they exist).
const SYSTEM_RO: &[&str] = &["/usr", "/etc", "/opt", "/nix/store"];
/// Top-level directories that are links into `/usr` on merged-usr systems.
const USR_LINKS: &[&str] = &["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

impl Sandbox {
    /// The built-in profile, with `bwrap` and `prlimit` found on `path`.
    pub fn builtin(path: &str) -> Result<Self, String> {
        let bwrap = find_on_path("bwrap", path).ok_or_else(|| {
            "bubblewrap (bwrap) is not installed; hint: install it (apt-get install bubblewrap), \
             or set SANDBOX_WRAPPER, or SANDBOX=0 to run agents unsandboxed"
                .to_owned()
        })?;
        Ok(Self::Bubblewrap {
            bwrap,
            prlimit: find_on_path("prlimit", path),
            limits: Limits::default(),
        })
    }

    /// Wraps `spec` (whose program is already resolved and whose env is
    /// already the cleared child environment).
    pub fn wrap(&self, spec: &ExecSpec, mounts: &Mounts) -> ExecSpec {
        match self {
            Self::Wrapper { program, args } => {
                let mut out = spec.clone();
                out.program = program.clone();
                out.args = args
                    .iter()
                    .map(OsString::from)
                    .chain(std::iter::once(spec.program.clone().into_os_string()))
                    .chain(spec.args.iter().cloned())
                    .collect();
                out
            }
            Self::Bubblewrap {
                bwrap,
                prlimit,
                limits,
            } => {
                let mut out = spec.clone();
                out.program = bwrap.clone();
                out.args = bwrap_args(spec, mounts, prlimit.as_deref(), *limits);
                out
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Bubblewrap { bwrap, prlimit, .. } => format!(
                "bubblewrap ({}){}",
                bwrap.display(),
                if prlimit.is_some() {
                    " with prlimit"
                } else {
                    " without resource limits (prlimit not installed)"
                }
            ),
            Self::Wrapper { program, .. } => format!("SANDBOX_WRAPPER {}", program.display()),
        }
    }
}

fn push(args: &mut Vec<OsString>, items: &[&str]) {
    args.extend(items.iter().map(OsString::from));
}

fn push_path(args: &mut Vec<OsString>, flag: &str, p: &Path) {
    args.push(flag.into());
    args.push(p.as_os_str().to_owned());
    args.push(p.as_os_str().to_owned());
}

fn bwrap_args(
    spec: &ExecSpec,
    mounts: &Mounts,
    prlimit: Option<&Path>,
    limits: Limits,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    push(
        &mut a,
        &["--die-with-parent", "--new-session", "--unshare-all"],
    );
    if mounts.network {
        push(&mut a, &["--share-net"]);
    }
    // As real root bwrap keeps every capability inside the sandbox unless
    // told otherwise; drop them (a non-root runner has none to drop).
    if nix::unistd::geteuid().is_root() {
        push(&mut a, &["--cap-drop", "ALL"]);
    }
    for d in SYSTEM_RO {
        if Path::new(d).is_dir() {
            push_path(&mut a, "--ro-bind", Path::new(d));
        }
    }
    for l in USR_LINKS {
        let p = Path::new(l);
        match std::fs::read_link(p) {
            Ok(target) => {
                a.push("--symlink".into());
                a.push(target.into_os_string());
                a.push(p.as_os_str().to_owned());
            }
            Err(_) if p.is_dir() => push_path(&mut a, "--ro-bind", p),
            Err(_) => {}
        }
    }
    push(
        &mut a,
        &["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"],
    );
    // Read-only extras (the agent binary and its declared paths), unless
    // already visible through the system binds. A program reached through
    // a symlink keeps being a symlink inside (multi-call binaries and
    // scripts that locate their siblings depend on it), to its target.
    let covered = |p: &Path| SYSTEM_RO.iter().any(|d| p.starts_with(d));
    let mut ro: Vec<PathBuf> = Vec::new();
    match std::fs::canonicalize(&spec.program) {
        Ok(canon) if canon != spec.program => {
            if !covered(&spec.program) {
                a.push("--symlink".into());
                a.push(canon.clone().into_os_string());
                a.push(spec.program.as_os_str().to_owned());
            }
            ro.push(canon);
        }
        _ => ro.push(spec.program.clone()),
    }
    ro.extend(mounts.ro.iter().cloned());
    for p in ro {
        if !covered(&p) && p.exists() {
            push_path(&mut a, "--ro-bind", &p);
        }
    }
    for p in &mounts.rw {
        push_path(&mut a, "--bind", p);
    }
    a.push("--chdir".into());
    a.push(spec.cwd.as_os_str().to_owned());
    a.push("--".into());
    if let Some(prlimit) = prlimit {
        a.push(prlimit.as_os_str().to_owned());
        a.push(format!("--as={}", limits.address_space).into());
        a.push(format!("--nproc={}", limits.processes).into());
        a.push(format!("--fsize={}", limits.file_size).into());
        a.push(format!("--nofile={}", limits.open_files).into());
        a.push("--".into());
    }
    a.push(spec.program.as_os_str().to_owned());
    a.extend(spec.args.iter().cloned());
    a
}

/// Can the built-in sandbox run here? Finds `bwrap` on the process `PATH`
/// and starts `true` inside a minimal profile (user namespaces may be
/// disabled by the kernel or a container). The first answer is cached.
/// For `orch doctor` and runner start-up.
pub fn available() -> Result<(), String> {
    static CACHE: OnceLock<Result<(), String>> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            let path =
                std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
            probe(&path)
        })
        .clone()
}

/// [`available`] against an explicit `PATH`, uncached.
pub fn probe(path: &str) -> Result<(), String> {
    let sb = Sandbox::builtin(path)?;
    let Some(truth) = find_on_path("true", path) else {
        return Err("cannot probe the sandbox: `true` is not on PATH".into());
    };
    // `/`, which exists inside the sandbox: a TMPDIR outside /tmp is not
    // mounted there, and `--chdir` to it failed the probe.
    let cwd = PathBuf::from("/");
    let mut spec = ExecSpec::new(truth, cwd.clone());
    spec.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
    let wrapped = sb.wrap(&spec, &Mounts::default());
    let args: Vec<&OsStr> = wrapped.args.iter().map(OsString::as_os_str).collect();
    run_sync(&wrapped.program, &args, Some(&cwd), &wrapped.env)
        .map(drop)
        .map_err(|e| {
            format!(
                "bubblewrap cannot create a sandbox here ({e}); hint: enable unprivileged user \
                 namespaces (sysctl kernel.unprivileged_userns_clone=1, or \
                 user.max_user_namespaces > 0), or set SANDBOX_WRAPPER"
            )
        })
}
