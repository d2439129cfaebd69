//! Test support: a temporary orch installation (queue, artifacts,
//! workspaces under one temp dir) and helpers that run the real binaries.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Orch {
    pub dir: tempfile::TempDir,
    pub extra_env: Vec<(String, String)>,
}

pub fn bin(name: &str) -> PathBuf {
    let orch = PathBuf::from(env!("CARGO_BIN_EXE_orch"));
    let p = orch.parent().unwrap().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` so every binary is built",
        p.display()
    );
    p
}

impl Orch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            extra_env: vec![("SIMULATION_STEP_MS".into(), "0".into())],
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.extra_env.retain(|(a, _)| a != k);
        self.extra_env.push((k.into(), v.into()));
        self
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn queue(&self) -> PathBuf {
        self.root().join("var/queue")
    }
    pub fn artifacts(&self) -> PathBuf {
        self.root().join("artifacts")
    }
    pub fn state_dir(&self, st: &str) -> PathBuf {
        self.queue().join(st)
    }

    pub fn cmd(&self, name: &str) -> Command {
        let mut c = Command::new(bin(name));
        c.current_dir(self.root())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("QUEUE_ROOT", self.queue())
            .env("ARTIFACTS_ROOT", self.artifacts())
            .env("WORKSPACES_ROOT", self.root().join("workspaces"))
            .env("METRICS_DIR", self.root().join("var/metrics"))
            .env("STATE_DB_PATH", self.root().join("var/state.db"))
            .env("RUST_LOG", "warn");
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    /// Runs `orch ARGS` (stdin from `input` when given).
    pub fn orch(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut c = self.cmd("orch");
        c.args(args);
        run_with_input(c, input)
    }

    /// Submits a job document; returns its id.
    pub fn submit(&self, doc: &str) -> String {
        let out = self.orch(&["submit", "-"], Some(doc.as_bytes()));
        assert!(
            out.status.success(),
            "submit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    pub fn runner(&self, args: &[&str]) -> Command {
        let mut c = self.cmd("orch-runner");
        c.args(args);
        c
    }

    /// `orch-runner --drain` to completion, asserting exit 0.
    pub fn drain(&self, id: &str) {
        let out = self
            .runner(&["--drain", "--id", id, "--concurrency", "4"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "runner failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn spawn_runner(&self, args: &[&str]) -> Child {
        self.runner(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn status_json(&self, id: &str) -> serde_json::Value {
        let out = self.orch(&["status", id, "--json"], None);
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Names in a queue state directory (job files only).
    pub fn names(&self, st: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.state_dir(st))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().into_string().unwrap())
                    .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn read_json(&self, rel: &str) -> serde_json::Value {
        let p = self.artifacts().join(rel);
        let b = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        serde_json::from_slice(&b).unwrap()
    }
}

pub fn run_with_input(mut c: Command, input: Option<&[u8]>) -> Output {
    use std::io::Write;
    c.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(i) = input {
        let mut stdin = child.stdin.take().unwrap();
        // The child may refuse early and close stdin: ignore EPIPE.
        let _ = stdin.write_all(i);
    }
    child.wait_with_output().unwrap()
}

/// Polls `cond` until it holds or `limit` passes (never a fixed sleep).
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn sigkill(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
}

pub fn sigterm(child: &Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
}

/// Compiles an embedded JSON Schema.
pub fn schema(text: &str) -> jsonschema::Validator {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    jsonschema::validator_for(&v).unwrap()
}

pub fn assert_valid(schema: &jsonschema::Validator, doc: &serde_json::Value, what: &str) {
    let errs: Vec<String> = schema
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errs.is_empty(),
        "{what} does not validate: {errs:#?}\n{doc:#}"
    );
}

/// The variable that turns every skip into a failure (`.ci/run` sets it:
/// on CI, a test that cannot run is a broken CI machine, not a pass).
pub const STRICT_VAR: &str = "ORCH_TEST_STRICT";

/// Whether the test may run: `true` when `available`; otherwise it reports
/// the skip — a failure when `ORCH_TEST_STRICT=1` (CI), else a `SKIPPED`
/// line on stderr — and returns `false`, so the test returns at once.
/// (libtest cannot mark a running test as ignored.)
pub fn runnable(available: bool, missing: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var(STRICT_VAR).is_ok_and(|v| v == "1") {
        panic!("this test cannot run: {missing} (and {STRICT_VAR}=1 makes every skip a failure)");
    }
    eprintln!("SKIPPED: {missing} (set {STRICT_VAR}=1 to make this a failure)");
    false
}

/// True when bubblewrap can create its namespaces here.
pub fn bwrap_works() -> bool {
    Command::new("bwrap")
        .args(["--ro-bind", "/", "/", "--unshare-all", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Sends `sig` to `child` (a child that already exited is no error).
pub fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
}

/// Every file below `dir`: relative path → (inode, bytes). A replaced
/// file shows as a new inode even when its content is the same. Temp files
/// (never part of a job's artifacts; a stale writer's may vanish when it
/// gives up) are left out.
pub fn file_tree(dir: &Path) -> std::collections::BTreeMap<String, (u64, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_entry(|e| {
            !e.file_name()
                .to_string_lossy()
                .starts_with(fsqueue::durable::TMP_PREFIX)
        })
        .flatten()
        .filter(|e| !e.file_type().is_dir())
        .filter_map(|e| {
            let m = e.path().symlink_metadata().ok()?;
            let rel = e.path().strip_prefix(dir).ok()?.display().to_string();
            Some((rel, (m.ino(), std::fs::read(e.path()).unwrap_or_default())))
        })
        .collect()
}

/// A random seed from `var`, or from the clock when it is unset (tests
/// print it so a run can be replayed).
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}
