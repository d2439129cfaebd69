//! The agent sandbox (SPEC §7): orch's built-in bubblewrap profile, or an
//! operator's `SANDBOX_WRAPPER`, wrapped around an [`ExecSpec`].
//!
//! The built-in profile gives the agent:
//! - the system read-only (`/usr`, `/opt` and the merged-usr links), a
//!   **curated `/etc`** (name resolution, CA certificates, the linker cache,
//!   alternatives, time zone; stub `passwd`/`group`; never `shadow`, keys or
//!   other host secrets), a fresh `/proc`, a minimal `/dev` and a private
//!   `/tmp` of bounded size;
//! - **write access only** to the job's workspace and its per-job state
//!   directory, bound at their real paths (so absolute paths in prompts
//!   mean the same inside and out);
//! - **never root**: an unprivileged uid (`SANDBOX_UID`) in its own user
//!   namespace with every capability dropped; a root runner starts bwrap
//!   through `setpriv` as that uid, so it is the agent's host uid too;
//! - every namespace unshared (`--unshare-all`): no view of other
//!   processes, and **no network** unless both the job and the runner
//!   allow it (then `--share-net`: the host's network namespace); `deny` is
//!   enforced by an empty network namespace, not by a promise;
//! - `--die-with-parent` (the agent dies when the runner dies, even by
//!   SIGKILL — the part of "agents never outlive their runner" that safe
//!   Rust cannot do itself) and `--new-session` (no terminal injection);
//! - the cleared environment the executor built: bwrap inherits it and
//!   passes it through, so values never appear on bwrap's argv (where `ps`
//!   would show them);
//! - resource limits ([`Limits`]) through util-linux `prlimit` when it is
//!   installed (address space, processes, file size, open files, CPU
//!   time) and the tmpfs size of `/tmp`; the runner adds a workspace-size
//!   watchdog and, where it can, a per-step cgroup ([`crate::cgroup`]) that
//!   holds memory and processes for the whole step (the address-space and
//!   process rlimits then stay at the operator's values, as a backstop).
//!
//! `SANDBOX_WRAPPER` + `SANDBOX_WRAPPER_ARGS` replace the profile: the
//! command becomes `<wrapper> <args...> <program> <program args...>`.

use crate::exec::{ExecSpec, find_on_path, run_sync};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Resource limits of one step, applied by the built-in profile (rlimits
/// through `prlimit`, the size of the private `/tmp`) and by the runner (the
/// workspace-size watchdog). The operator's values (`SANDBOX_*` variables)
/// are the maxima; an agent or a job can only ask for less
/// ([`Limits::narrowed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// RLIMIT_AS in bytes, per process (`SANDBOX_MEMORY_MB`). Generous by
    /// default, because JIT runtimes (Node, Bun) reserve large address
    /// ranges they never touch.
    pub address_space: u64,
    /// RLIMIT_NPROC: processes of the sandbox uid (`SANDBOX_MAX_PROCESSES`).
    pub processes: u64,
    /// RLIMIT_FSIZE in bytes: the largest file the agent can write.
    pub file_size: u64,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// RLIMIT_CPU in seconds of CPU time per process; 0 = none
    /// (`SANDBOX_CPU_SEC`).
    pub cpu_seconds: u64,
    /// Size of the sandbox's private `/tmp` tmpfs in bytes (`SANDBOX_TMP_MB`).
    pub tmp_size: u64,
    /// Bytes the workspace may hold, watched while the agent runs
    /// (`SANDBOX_WORKSPACE_MB`); beyond it the step is stopped with
    /// `resource_limit`.
    pub workspace_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            address_space: 16 << 30,
            processes: 4096,
            file_size: 2 << 30,
            open_files: 8192,
            cpu_seconds: 0,
            tmp_size: 1 << 30,
            workspace_size: 10 << 30,
        }
    }
}

impl Limits {
    /// `self` (the operator's maxima) narrowed by `req`: each requested
    /// value is used when it is smaller, never when it is larger.
    pub fn narrowed(self, req: &contracts::ResourceLimits) -> Self {
        let mb = |v: Option<u64>, max: u64| v.map_or(max, |v| v.saturating_mul(1 << 20).min(max));
        let n = |v: Option<u64>, max: u64| v.map_or(max, |v| v.min(max));
        Self {
            address_space: mb(req.memory_mb, self.address_space),
            processes: n(req.processes, self.processes).max(1),
            file_size: self.file_size,
            open_files: self.open_files,
            cpu_seconds: match (req.cpu_sec, self.cpu_seconds) {
                (Some(r), 0) => r,
                (Some(r), m) => r.min(m),
                (None, m) => m,
            },
            tmp_size: mb(req.tmp_mb, self.tmp_size),
            workspace_size: mb(req.workspace_mb, self.workspace_size),
        }
    }

    /// For `result.json` (`metrics.limits`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "memory_bytes": self.address_space,
            "processes": self.processes,
            "file_size_bytes": self.file_size,
            "open_files": self.open_files,
            "cpu_seconds": self.cpu_seconds,
            "tmp_bytes": self.tmp_size,
            "workspace_bytes": self.workspace_size,
        })
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
        /// `setpriv`: a root runner starts bubblewrap through it as
        /// `uid` (below), so nothing in the sandbox maps to host root.
        setpriv: Option<PathBuf>,
        /// The unprivileged uid (and gid) agents run as (`SANDBOX_UID`).
        uid: u32,
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
    /// This step's limits; `None` = the profile's own.
    pub limits: Option<Limits>,
    /// A cgroup holds the step's memory and processes: the per-process
    /// address-space and per-uid process rlimits stay at the operator's
    /// values (a backstop), the step's own values are the cgroup's.
    pub cgroup: bool,
}

/// The system directories bound read-only (when they exist). `/etc` is not
/// one of them: the sandbox gets a curated one ([`ETC_RO`] and stubs).
const SYSTEM_RO: &[&str] = &["/usr", "/opt", "/nix/store"];
/// What of the host's `/etc` the sandbox sees: name resolution, CA
/// certificates, the dynamic linker's cache, alternatives links, time zone.
/// Never `shadow`, `gshadow`, `ssl/private`, `ssh`, `docker` or anything
/// else with host secrets; `passwd` and `group` are stubs.
const ETC_RO: &[&str] = &[
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/pki/tls/certs",
    "/etc/pki/ca-trust",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/mime.types",
    "/etc/os-release",
    "/etc/terminfo",
    "/etc/inputrc",
];
/// Top-level directories that are links into `/usr` on merged-usr systems.
const USR_LINKS: &[&str] = &["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

impl Sandbox {
    /// The built-in profile, with `bwrap`, `prlimit` and `setpriv` found on
    /// `path`, default limits and uid 65534.
    pub fn builtin(path: &str) -> Result<Self, String> {
        Self::builtin_with(path, DEFAULT_UID, Limits::default())
    }

    /// [`Sandbox::builtin`] with the operator's uid and limits.
    pub fn builtin_with(path: &str, uid: u32, limits: Limits) -> Result<Self, String> {
        let bwrap = find_on_path("bwrap", path).ok_or_else(|| {
            "bubblewrap (bwrap) is not installed; hint: install it (apt-get install bubblewrap), \
             or set SANDBOX_WRAPPER, or SANDBOX=0 to run agents unsandboxed"
                .to_owned()
        })?;
        let setpriv = find_on_path("setpriv", path);
        if nix::unistd::geteuid().is_root() && setpriv.is_none() {
            return Err(
                "the runner runs as root and setpriv (util-linux) is not installed, so agents \
                 cannot be started as an unprivileged uid; hint: install util-linux, or run the \
                 runner as an unprivileged user"
                    .into(),
            );
        }
        if uid == 0 {
            return Err("SANDBOX_UID must not be 0".into());
        }
        Ok(Self::Bubblewrap {
            bwrap,
            prlimit: find_on_path("prlimit", path),
            setpriv,
            uid,
            limits,
        })
    }

    /// The uid agents run as on the host, when orch starts them through the
    /// built-in profile as root (then workspaces must be writable by it).
    pub fn host_uid(&self) -> Option<u32> {
        match self {
            Self::Bubblewrap { uid, .. } if nix::unistd::geteuid().is_root() => Some(*uid),
            _ => None,
        }
    }

    /// The profile's limits (`None` for a wrapper).
    pub fn limits(&self) -> Option<Limits> {
        match self {
            Self::Bubblewrap { limits, .. } => Some(*limits),
            Self::Wrapper { .. } => None,
        }
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
                setpriv,
                uid,
                limits,
            } => {
                let mut out = spec.clone();
                let mut step = mounts.limits.unwrap_or(*limits);
                if mounts.cgroup {
                    step.address_space = limits.address_space;
                    step.processes = limits.processes;
                }
                let args = bwrap_args(spec, mounts, prlimit.as_deref(), step, *uid);
                match setpriv {
                    // As root, bwrap would map the agent's uid to host root
                    // (it could read /etc/shadow through any bind, and leave
                    // setuid-root files): start bwrap as the unprivileged
                    // uid instead, without supplementary groups.
                    Some(setpriv) if nix::unistd::geteuid().is_root() => {
                        out.program = setpriv.clone();
                        out.args = vec![
                            format!("--reuid={uid}").into(),
                            format!("--regid={uid}").into(),
                            "--clear-groups".into(),
                            "--inh-caps=-all".into(),
                            "--".into(),
                            bwrap.clone().into_os_string(),
                        ];
                        out.args.extend(args);
                    }
                    _ => {
                        out.program = bwrap.clone();
                        out.args = args;
                    }
                }
                out
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Bubblewrap {
                bwrap,
                prlimit,
                uid,
                ..
            } => format!(
                "bubblewrap ({}) as uid {uid}{}",
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

/// The default `SANDBOX_UID` (`nobody`).
pub const DEFAULT_UID: u32 = 65534;

fn bwrap_args(
    spec: &ExecSpec,
    mounts: &Mounts,
    prlimit: Option<&Path>,
    limits: Limits,
    uid: u32,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    push(
        &mut a,
        &[
            "--die-with-parent",
            "--new-session",
            "--unshare-all",
            "--unshare-user",
        ],
    );
    // Never root inside: the agent is an unprivileged uid in its own user
    // namespace (mapped to the runner's uid, or to `uid` itself when a root
    // runner started bwrap through setpriv), with no capabilities.
    a.push("--uid".into());
    a.push(uid.to_string().into());
    a.push("--gid".into());
    a.push(uid.to_string().into());
    push(&mut a, &["--cap-drop", "ALL"]);
    if mounts.network {
        push(&mut a, &["--share-net"]);
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
    // A curated /etc: the entries of ETC_RO that exist, and passwd/group
    // stubs naming only root, nobody and the agent's uid.
    push(&mut a, &["--tmpfs", "/etc"]);
    for e in ETC_RO {
        if std::fs::metadata(e).is_ok() {
            push_path(&mut a, "--ro-bind", Path::new(e));
        }
    }
    if let Some(stubs) = etc_stubs(uid) {
        for name in ["passwd", "group"] {
            a.push("--ro-bind".into());
            a.push(stubs.join(name).into_os_string());
            a.push(format!("/etc/{name}").into());
        }
    }
    push(
        &mut a,
        &["--remount-ro", "/etc", "--proc", "/proc", "--dev", "/dev"],
    );
    a.push("--size".into());
    a.push(limits.tmp_size.max(1 << 20).to_string().into());
    push(&mut a, &["--tmpfs", "/tmp"]);
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
        if limits.cpu_seconds > 0 {
            a.push(format!("--cpu={}", limits.cpu_seconds).into());
        }
        a.push("--".into());
    }
    a.push(spec.program.as_os_str().to_owned());
    a.extend(spec.args.iter().cloned());
    a
}

/// The directory holding the `/etc/passwd` and `/etc/group` stubs for
/// `uid` (orch-owned, world-readable, never agent-writable), recreated when
/// missing.
fn etc_stubs(uid: u32) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!(
        "orch-etc-{}-{uid}",
        nix::unistd::geteuid().as_raw()
    ));
    let passwd = format!(
        "root:x:0:0:root:/root:/usr/sbin/nologin\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n{}",
        if uid == DEFAULT_UID {
            String::new()
        } else {
            format!("agent:x:{uid}:{uid}:orch agent:/nonexistent:/bin/sh\n")
        }
    );
    let group = format!(
        "root:x:0:\nnogroup:x:65534:\n{}",
        if uid == DEFAULT_UID {
            String::new()
        } else {
            format!("agent:x:{uid}:\n")
        }
    );
    let ok = |p: &Path, want: &str| std::fs::read_to_string(p).is_ok_and(|s| s == want);
    let meta = std::fs::symlink_metadata(&dir);
    let mine = meta.as_ref().is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.is_dir() && m.uid() == nix::unistd::geteuid().as_raw() && m.mode() & 0o022 == 0
    });
    if mine && ok(&dir.join("passwd"), &passwd) && ok(&dir.join("group"), &group) {
        return Some(dir);
    }
    if meta.is_ok() && !mine {
        // Someone else's name in a shared /tmp: do not use it.
        tracing::warn!(path = %dir.display(), "not using a foreign /etc stub directory");
        return None;
    }
    std::fs::create_dir_all(&dir).ok()?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).ok()?;
    for (name, text) in [("passwd", &passwd), ("group", &group)] {
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::write(&tmp, text).ok()?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).ok()?;
        std::fs::rename(&tmp, dir.join(name)).ok()?;
    }
    Some(dir)
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
