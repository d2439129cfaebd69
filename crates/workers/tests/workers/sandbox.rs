//! The sandbox boundary against a hostile agent: a custom agent from
//! `AGENTS_CONFIG` (a small shell script), real mode, `SANDBOX=1`, that
//! plants every trap orch's host-side code could fall into — git filter,
//! fsmonitor and hook; symlinks at the prompt file, the xdg directories, the
//! hand-off scratch directory, the seed copy and its marker — tries to read
//! host secrets, leaves setuid files, and exceeds each resource limit.
//! Afterwards no marker exists on the host, nothing outside the job's own
//! tree changed, and the step failed with `sandbox_violation` (or
//! `resource_limit`).
//!
//! bubblewrap is installed by `.ci/run`: under `CI` a missing sandbox fails
//! these tests instead of skipping them. The suite runs as the current user
//! and, when that is root, once more re-executed as an unprivileged runner
//! (`setpriv --reuid`), so both mappings are checked.

use contracts::env::EnvSource;
use contracts::{Policy, ResourceLimits, Status};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use workers::exec::{self, ExecSpec};
use workers::{RealConfig, Registry, StepOutcome, StepRequest};

/// True when the built-in sandbox works; without it, a failure under `CI`
/// and a loud skip elsewhere.
fn require_sandbox() -> bool {
    match workers::sandbox::available() {
        Ok(()) => true,
        Err(e) => crate::support::runnable(false, &format!("bubblewrap unusable here: {e}")),
    }
}

/// A job's tree plus a host area the agent must never touch.
struct Lab {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

const VICTIM_TEXT: &str = "untouched host data\n";

impl Lab {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_path_buf();
        // Searchable by the sandbox uid (a root runner starts bwrap as it).
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for d in [
            "bin",
            "ws/job/work",
            "ws/job/state",
            "outside/dir",
            "seed/claude",
        ] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::write(root.join("outside/victim.txt"), VICTIM_TEXT).expect("victim");
        std::fs::write(
            root.join("seed/claude/settings.json"),
            "{\"seeded\":true}\n",
        )
        .expect("seed");
        Self { _tmp: tmp, root }
    }

    fn work(&self) -> PathBuf {
        self.root.join("ws/job/work")
    }

    fn state(&self) -> PathBuf {
        self.root.join("ws/job/state")
    }

    fn outside(&self) -> PathBuf {
        self.root.join("outside")
    }

    /// Installs the hostile agent's script; `body` runs in the workspace.
    fn agent(&self, body: &str) {
        let p = self.root.join("bin/hostile");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\necho done\n")).expect("script");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn config(&self, extra: &[(&str, &str)]) -> Arc<RealConfig> {
        let agents = serde_json::json!({
            "state_seed_dir": self.root.join("seed"),
            "agents": [
                {"name": "hostile", "argv": ["hostile"], "output_format": "text"},
                {"name": "hostile-file", "argv": ["hostile", "{prompt_file}"],
                 "binaries": ["hostile"], "prompt": "file", "output_format": "text"}
            ]
        });
        let file = self.root.join("agents.json");
        std::fs::write(&file, agents.to_string()).expect("agents.json");
        let mut pairs: Vec<(String, String)> = vec![
            (
                "PATH".into(),
                format!(
                    "{}:/usr/local/bin:/usr/bin:/bin",
                    self.root.join("bin").display()
                ),
            ),
            ("HOME".into(), self.root.display().to_string()),
            ("ENABLE_REAL_CLI".into(), "1".into()),
            ("SANDBOX".into(), "1".into()),
            ("ALLOWED_BINARIES".into(), "hostile".into()),
            ("AGENTS_CONFIG".into(), file.display().to_string()),
        ];
        for (k, v) in extra {
            pairs.retain(|(pk, _)| pk != k);
            pairs.push(((*k).into(), (*v).into()));
        }
        Arc::new(RealConfig::from_env(&EnvSource::from_pairs(pairs)).expect("real config"))
    }

    fn request(&self, agent: &str, attempt: u32, policy: Policy) -> StepRequest {
        let step = serde_json::from_value(serde_json::json!({
            "step_id": "s1", "agent": agent, "role": "implementer", "prompt": "p"
        }))
        .expect("step");
        StepRequest {
            job_id: contracts::JobId::parse("job-00000001").expect("job id"),
            step,
            attempt,
            prompt: "do the task".into(),
            workdir: self.work(),
            state_dir: self.state(),
            goal: "g".into(),
            policy,
        }
    }

    /// Every file outside the job's tree (and the test's own config files)
    /// with its content: nothing here may change.
    fn outside_listing(&self) -> Vec<(PathBuf, u64)> {
        let mut out = Vec::new();
        for e in walkdir::WalkDir::new(&self.root)
            .sort_by_file_name()
            .into_iter()
            .flatten()
        {
            if e.path().starts_with(self.root.join("ws/job")) {
                continue;
            }
            let mut h = std::hash::DefaultHasher::new();
            if e.file_type().is_file() {
                std::hash::Hash::hash(&std::fs::read(e.path()).unwrap_or_default(), &mut h);
            }
            out.push((e.path().to_path_buf(), std::hash::Hasher::finish(&h)));
        }
        out
    }

    fn markers(&self) -> Vec<PathBuf> {
        walkdir::WalkDir::new(&self.root)
            .into_iter()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("MARKER"))
            .map(|e| e.path().to_path_buf())
            .collect()
    }
}

async fn run(cfg: &Arc<RealConfig>, req: &StepRequest) -> StepOutcome {
    let reg = Registry::real(cfg.clone());
    let w = reg.get(&req.step.agent).expect("agent registered");
    w.run(req, CancellationToken::new()).await
}

fn code(o: &StepOutcome) -> &str {
    o.error.as_ref().map_or("", |e| e.code.as_str())
}

fn refused(o: &StepOutcome) -> String {
    o.error
        .as_ref()
        .and_then(|e| e.details.get("refused"))
        .map(ToString::to_string)
        .unwrap_or_default()
}

/// The git traps: a filter driver with `* filter=x`, `core.fsmonitor`, a
/// hook, `core.sshCommand`, `diff.external`, `core.pager` and an include —
/// each would touch a MARKER file on the host if host-side git obeyed it.
async fn git_traps(lab: &Lab) {
    let m = lab.root.display();
    lab.agent(&format!(
        r#"git init -q . || exit 1
echo hello > a.txt
echo '* filter=x' > .gitattributes
git config filter.x.clean "sh -c 'touch {m}/MARKER-filter; cat'"
git config filter.x.smudge "sh -c 'touch {m}/MARKER-smudge; cat'"
printf '#!/bin/sh\ntouch {m}/MARKER-fsmonitor\n' > fsm.sh; chmod +x fsm.sh
git config core.fsmonitor "$PWD/fsm.sh"
git config core.sshCommand "touch {m}/MARKER-ssh"
git config core.pager "touch {m}/MARKER-pager"
git config diff.external "$PWD/fsm.sh"
git config include.path "$PWD/more.cfg"
for h in pre-applypatch post-applypatch post-checkout pre-commit; do
  printf '#!/bin/sh\ntouch {m}/MARKER-hook\n' > .git/hooks/$h; chmod +x .git/hooks/$h
done"#
    ));
    let cfg = lab.config(&[]);
    let before = lab.outside_listing();
    let o = run(&cfg, &lab.request("hostile", 1, Policy::default())).await;
    assert_eq!(o.status, Status::Failed, "{}\n{}", o.summary, o.logs);
    assert_eq!(code(&o), "sandbox_violation", "{}", o.logs);
    let r = refused(&o);
    for what in [
        "filter",
        "fsmonitor",
        "sshcommand",
        "pager",
        "diff.external",
        "include",
        "hook",
    ] {
        assert!(r.contains(what), "{what} not reported: {r}");
    }
    assert!(o.logs.contains("[real] refused:"), "{}", o.logs);

    // The next step's hand-off applies a patch with orch's git: nothing the
    // agent configured runs, the patch still applies.
    let git = workers::hostgit::HostGit::new(&lab.work()).expect("git installed");
    let patch = git
        .stage(
            "p.diff",
            b"diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-hello\n+bye\n",
        )
        .expect("stage");
    let p = patch.as_os_str();
    use std::ffi::OsStr;
    assert!(
        git.run(&[
            OsStr::new("apply"),
            OsStr::new("--check"),
            OsStr::new("-R"),
            p
        ])
        .is_err()
    );
    git.run(&[OsStr::new("apply"), p]).expect("apply");
    git.run(&[OsStr::new("status"), OsStr::new("--short")])
        .expect("status");
    git.run(&[OsStr::new("diff"), OsStr::new("--stat")])
        .expect("diff");
    assert_eq!(
        std::fs::read_to_string(lab.work().join("a.txt")).expect("a"),
        "bye\n"
    );
    assert_eq!(
        lab.markers(),
        Vec::<PathBuf>::new(),
        "host-side git ran agent config"
    );
    assert_eq!(
        before,
        lab.outside_listing(),
        "a file outside the job changed"
    );
}

/// Symlinks at every state path the runner writes from the host.
async fn symlink_traps(lab: &Lab) {
    let out = lab.outside();
    let victim = out.join("victim.txt");
    lab.agent(&format!(
        r#"S=$(cd "$XDG_CONFIG_HOME/../.." && pwd)
rm -rf "$S/prompts" "$S/xdg" "$S/handoff" "$S/.orch-seeded" "$S/claude"
ln -s {d} "$S/prompts"
ln -s {d} "$S/xdg"
ln -s {d} "$S/handoff"
ln -s {v} "$S/.orch-seeded"
mkdir "$S/claude"; ln -s {v} "$S/claude/settings.json""#,
        d = out.join("dir").display(),
        v = victim.display()
    ));
    let cfg = lab.config(&[]);
    let before = lab.outside_listing();
    let o = run(&cfg, &lab.request("hostile", 1, Policy::default())).await;
    assert_eq!(code(&o), "sandbox_violation", "{}\n{}", o.summary, o.logs);
    let r = refused(&o);
    for what in ["prompts", "xdg", "handoff", ".orch-seeded"] {
        assert!(r.contains(what), "{what} not reported: {r}");
    }
    // The next attempts (a prompt-file agent) must not write through any of
    // the links: each fails before its agent starts, on the first link the
    // runner meets; removing that one exposes the next.
    let state = lab.state();
    for (attempt, meets, then_remove) in [
        (2, "xdg", "xdg"),
        (3, ".orch-seeded", ".orch-seeded"),
        (4, "settings.json", "claude/settings.json"),
        (5, "prompts", "prompts"),
    ] {
        let o = run(
            &cfg,
            &lab.request("hostile-file", attempt, Policy::default()),
        )
        .await;
        assert_eq!(code(&o), "sandbox_violation", "{}\n{}", o.summary, o.logs);
        assert!(refused(&o).contains(meets), "{meets}: {}", refused(&o));
        std::fs::remove_file(state.join(then_remove)).expect("remove link");
    }
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        VICTIM_TEXT
    );
    assert_eq!(
        std::fs::read_dir(out.join("dir")).expect("dir").count(),
        0,
        "something was written into the link target"
    );
    assert_eq!(
        before,
        lab.outside_listing(),
        "a file outside the job changed"
    );
    // With the links gone, a well-behaved agent runs normally.
    std::fs::remove_file(state.join("handoff")).expect("remove link");
    lab.agent("cat \"$1\" > /dev/null");
    let o = run(&cfg, &lab.request("hostile-file", 6, Policy::default())).await;
    assert_ne!(code(&o), "sandbox_violation", "{}\n{}", o.summary, o.logs);
}

/// A host private key the agent must not read: `ORCH_TEST_HOST_KEY` (made
/// by the root parent of the unprivileged run), else one made here.
fn host_key(lab: &Lab) -> PathBuf {
    if let Some(k) = std::env::var_os("ORCH_TEST_HOST_KEY") {
        return PathBuf::from(k);
    }
    let keydir = lab.root.join("keys");
    std::fs::create_dir_all(&keydir).expect("keys");
    std::fs::set_permissions(&keydir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let key = keydir.join("host.key");
    std::fs::write(&key, "HOSTKEY-SECRET-CONTENT\n").expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    key
}

/// Host secrets and setuid files.
async fn privilege_traps(lab: &Lab) {
    let key = host_key(lab);
    lab.agent(&format!(
        r#"id -u > uid.txt
cat /etc/shadow > shadow.txt 2>&1
cat /etc/gshadow >> shadow.txt 2>&1
cat {key} > key.txt 2>&1
ls /etc/ssl/private > private.txt 2>&1
cp /bin/sh ./suid; chmod 4755 ./suid
cp /bin/sh ./sgid; chmod 2755 ./sgid"#,
        key = key.display()
    ));
    // The key's directory is visible read-only, as an agent runtime's
    // directory (`ro_paths`) would be.
    let agents = serde_json::json!({"agents": [
        {"name": "hostile", "argv": ["hostile"], "output_format": "text",
         "ro_paths": [key.parent().expect("key dir")]}
    ]});
    let file = lab.root.join("agents-key.json");
    std::fs::write(&file, agents.to_string()).expect("agents");
    let cfg = lab.config(&[("AGENTS_CONFIG", &file.display().to_string())]);
    let o = run(&cfg, &lab.request("hostile", 1, Policy::default())).await;
    let read = |n: &str| std::fs::read_to_string(lab.work().join(n)).unwrap_or_default();
    let uid: u32 = read("uid.txt").trim().parse().expect("uid printed");
    assert_ne!(uid, 0, "the agent ran as root inside the sandbox");
    let shadow = read("shadow.txt");
    assert!(shadow.contains("No such file"), "{shadow}");
    assert!(!shadow.contains("root:"), "{shadow}");
    use std::os::unix::fs::MetadataExt;
    let key_owner = std::fs::metadata(&key).expect("key").uid();
    if key_owner != nix::unistd::geteuid().as_raw() {
        assert!(
            !read("key.txt").contains("HOSTKEY"),
            "the agent read a host private key"
        );
    }
    assert!(
        read("private.txt").contains("No such file"),
        "{}",
        read("private.txt")
    );
    for f in ["suid", "sgid"] {
        let mode = std::fs::metadata(lab.work().join(f))
            .expect("left file")
            .mode();
        assert_eq!(mode & 0o6000, 0, "{f} kept mode {mode:o}");
    }
    assert_eq!(code(&o), "sandbox_violation", "{}\n{}", o.summary, o.logs);
    assert!(refused(&o).contains("setuid"), "{}", refused(&o));
}

/// Every resource limit stops the step with `resource_limit`.
async fn limit_traps(lab: &Lab) {
    let cases: [(&str, ResourceLimits, &str); 4] = [
        (
            "dd if=/dev/zero of=big bs=1M count=40 2>/dev/null; sleep 60",
            ResourceLimits {
                workspace_mb: Some(8),
                ..ResourceLimits::default()
            },
            "workspace_size",
        ),
        (
            "dd if=/dev/zero of=/tmp/fill bs=1M count=40 || exit 1",
            ResourceLimits {
                tmp_mb: Some(4),
                ..ResourceLimits::default()
            },
            "tmp_size",
        ),
        (
            "i=0; while [ $i -lt 300 ]; do sleep 30 & i=$((i+1)); done; wait",
            ResourceLimits {
                processes: Some(40),
                ..ResourceLimits::default()
            },
            "processes",
        ),
        (
            "awk 'BEGIN { s = \"xxxxxxxxxxxxxxxx\"; while (1) s = s s }' || exit 1",
            ResourceLimits {
                memory_mb: Some(64),
                ..ResourceLimits::default()
            },
            "memory",
        ),
    ];
    let cfg = lab.config(&[]);
    for (body, limits, want) in cases {
        lab.agent(body);
        let policy = Policy {
            limits: Some(limits),
            ..Policy::default()
        };
        let o = run(&cfg, &lab.request("hostile", 1, policy)).await;
        assert_eq!(
            o.status,
            Status::Failed,
            "{want}: {}\n{}",
            o.summary,
            o.logs
        );
        assert_eq!(
            code(&o),
            "resource_limit",
            "{want}: {}\n{}",
            o.summary,
            o.logs
        );
        let limit = o
            .error
            .as_ref()
            .and_then(|e| e.details.get("limit"))
            .cloned();
        assert_eq!(limit, Some(serde_json::json!(want)), "{}", o.logs);
        assert!(o.metrics.contains_key("limits"), "{:?}", o.metrics);
        let _ = std::fs::remove_file(lab.work().join("big"));
    }
}

/// The whole suite, as whatever user runs this process.
async fn suite() {
    git_traps(&Lab::new()).await;
    symlink_traps(&Lab::new()).await;
    privilege_traps(&Lab::new()).await;
    limit_traps(&Lab::new()).await;
}

#[tokio::test]
async fn a_hostile_agent_escapes_nothing_as_the_current_user() {
    if !require_sandbox() {
        return;
    }
    suite().await;
}

/// The re-executed half of the next test (which runs it with
/// `--ignored`, as uid 4242); ignored on its own.
#[tokio::test]
#[ignore = "run by a_hostile_agent_escapes_nothing_under_an_unprivileged_runner as uid 4242"]
async fn unprivileged_suite_helper() {
    assert!(
        std::env::var_os("ORCH_TEST_UNPRIVILEGED_SUITE").is_some(),
        "run only by its parent test"
    );
    assert!(
        !nix::unistd::geteuid().is_root(),
        "the helper must not run as root"
    );
    suite().await;
}

#[tokio::test]
async fn a_hostile_agent_escapes_nothing_under_an_unprivileged_runner() {
    if !require_sandbox() {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        // This process is the unprivileged runner already.
        suite().await;
        return;
    }
    let path = "/usr/local/bin:/usr/bin:/bin";
    let setpriv = exec::find_on_path("setpriv", path).expect("setpriv (util-linux)");
    let me = std::env::current_exe().expect("test binary");
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // A root-owned key the unprivileged run's agent must not read.
    let keydir = tempfile::tempdir().expect("keys");
    std::fs::set_permissions(keydir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let key = keydir.path().join("host.key");
    std::fs::write(&key, "HOSTKEY-SECRET-CONTENT\n").expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut spec = ExecSpec::new(&setpriv, tmp.path())
        .arg("--reuid=4242")
        .arg("--regid=4242")
        .arg("--clear-groups")
        .arg("--")
        .arg(&me)
        .arg("--exact")
        .arg("sandbox::unprivileged_suite_helper")
        .arg("--ignored")
        .arg("--nocapture");
    spec.env = vec![
        ("ORCH_TEST_UNPRIVILEGED_SUITE".into(), "1".into()),
        ("ORCH_TEST_HOST_KEY".into(), key.display().to_string()),
        ("PATH".into(), path.into()),
        ("TMPDIR".into(), tmp.path().display().to_string()),
        ("HOME".into(), tmp.path().display().to_string()),
    ];
    if let Some(strict) = std::env::var_os(crate::support::STRICT_VAR) {
        spec.env.push((
            crate::support::STRICT_VAR.into(),
            strict.to_string_lossy().into_owned(),
        ));
    }
    spec.timeout = Some(std::time::Duration::from_secs(600));
    let out = exec::run(&spec, CancellationToken::new())
        .await
        .expect("run helper");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout.bytes),
        String::from_utf8_lossy(&out.stderr.bytes)
    );
    assert!(out.exit.success(), "the unprivileged suite failed:\n{text}");
    assert!(text.contains("1 passed"), "the helper did not run:\n{text}");
}

#[tokio::test]
async fn a_deny_job_under_an_allow_runner_cannot_reach_a_host_listener() {
    if !require_sandbox() {
        return;
    }
    let lab = Lab::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // dash has no /dev/tcp; bash has.
    let body = format!(
        "bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' 2>/dev/null && echo REACHED > net.txt || echo DENIED > net.txt"
    );
    lab.agent(&body);
    let cfg = lab.config(&[("NETWORK_POLICY", "allow")]);
    let o = run(&cfg, &lab.request("hostile", 1, Policy::default())).await;
    assert_eq!(o.status, Status::Success, "{}\n{}", o.summary, o.logs);
    let net = std::fs::read_to_string(lab.work().join("net.txt")).expect("net.txt");
    assert_eq!(net.trim(), "DENIED", "a deny job reached the host");
    assert!(o.logs.contains("network denied"), "{}", o.logs);
    // Both allow: the listener is reachable (the probe itself works).
    let policy = Policy {
        network: contracts::NetworkPolicy::Allow,
        ..Policy::default()
    };
    let o = run(&cfg, &lab.request("hostile", 2, policy)).await;
    assert_eq!(o.status, Status::Success, "{}\n{}", o.summary, o.logs);
    let net = std::fs::read_to_string(lab.work().join("net.txt")).expect("net.txt");
    assert_eq!(net.trim(), "REACHED", "{}", o.logs);
    drop(listener);
}

/// True when this runner can create step cgroups (root on cgroup v1, or a
/// delegated v2 subtree); a failure under `ORCH_TEST_STRICT=1`.
fn require_cgroups() -> bool {
    let found = workers::cgroup::Cgroups::detect(None);
    let why = found.as_ref().err().cloned().unwrap_or_default();
    crate::support::runnable(found.is_ok(), &format!("no step cgroups: {why}"))
}

/// The step cgroup named in a step's logs (`[real] cgroup: <dir> (...)`).
fn cgroup_dir(o: &StepOutcome) -> PathBuf {
    let line = o
        .logs
        .lines()
        .find_map(|l| l.strip_prefix("[real] cgroup: /"))
        .unwrap_or_else(|| panic!("no cgroup in the logs:\n{}", o.logs));
    PathBuf::from(format!("/{}", line.split(" (").next().unwrap_or_default()))
}

/// The same limits for both jobs: 40 processes each.
fn forty_processes() -> Policy {
    Policy {
        limits: Some(ResourceLimits {
            processes: Some(40),
            ..ResourceLimits::default()
        }),
        ..Policy::default()
    }
}

#[tokio::test]
async fn a_fork_bomb_is_stopped_by_its_step_cgroup_while_a_concurrent_job_of_the_same_uid_runs() {
    if !require_sandbox() || !require_cgroups() {
        return;
    }
    // Job A forks until it is refused (dash gives up in the subshell, its
    // sleeps stay), says so (a redirection, no fork),
    // then holds its processes until the test lets it go, and fails.
    let a = Lab::new();
    a.agent(
        "mkfifo wait.fifo
(i=0; while [ $i -lt 300 ]; do sleep 600 & i=$((i+1)); done)
: > full
exec bash -c 'exec 3<>wait.fifo; while [ ! -e go ]; do read -t 0.2 -u 3 x; done; exit 1'",
    );
    let cfg_a = a.config(&[]);
    let req_a = a.request("hostile", 1, forty_processes());
    let job_a = tokio::spawn(async move { run(&cfg_a, &req_a).await });
    let full = a.work().join("full");
    let started = std::time::Instant::now();
    for _ in 0..1200 {
        if full.exists() || job_a.is_finished() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if !full.exists() {
        let o = job_a.await.expect("job A");
        panic!(
            "the fork bomb never reached its limit: {}\n{}",
            o.summary, o.logs
        );
    }
    let refused_after = started.elapsed();
    // Job B, same sandbox uid and the same limit, needs a few processes.
    let b = Lab::new();
    b.agent("/bin/echo started > b.txt && /bin/cat b.txt > c.txt || exit 1");
    let o_b = run(&b.config(&[]), &b.request("hostile", 1, forty_processes())).await;
    std::fs::write(a.work().join("go"), "").expect("go");
    let o_a = job_a.await.expect("job A");
    assert_eq!(
        (o_b.status, code(&o_b)),
        (Status::Success, ""),
        "job B could not run beside the fork bomb: {}\n{}",
        o_b.summary,
        o_b.logs
    );
    assert_eq!(
        std::fs::read_to_string(b.work().join("c.txt")).expect("c.txt"),
        "started\n"
    );
    assert_eq!(
        code(&o_a),
        "resource_limit",
        "{}\n{}",
        o_a.summary,
        o_a.logs
    );
    let details = &o_a.error.as_ref().expect("error").details;
    eprintln!(
        "fork bomb: limit reached {} ms after the step started; cgroup {}",
        refused_after.as_millis(),
        details["cgroup"]
    );
    assert_eq!(details.get("limit"), Some(&serde_json::json!("processes")));
    assert!(
        details["limits"]["enforced_by"]["processes"]
            .as_str()
            .is_some_and(|s| s.starts_with("cgroup")),
        "{details:?}"
    );
    // Nothing of job A survives it: its cgroup (and its 600 s sleeps) are gone.
    let dir = cgroup_dir(&o_a);
    assert!(!dir.exists(), "{} was left behind", dir.display());
    assert!(!cgroup_dir(&o_b).exists());
}

#[tokio::test]
async fn a_memory_hog_spread_over_small_processes_is_stopped_by_its_step_cgroup() {
    if !require_sandbox() || !require_cgroups() {
        return;
    }
    // Eight processes of 16 MiB each: every one stays far below the 64 MiB
    // address-space limit, together they are twice the step's memory.
    let lab = Lab::new();
    lab.agent(
        "i=0; while [ $i -lt 8 ]; do /usr/bin/python3 -c \"import time; b = b'x' * (16 << 20); time.sleep(4)\" & pids=\"$pids $!\"; i=$((i+1)); done
ok=0; for p in $pids; do wait $p || ok=1; done; exit $ok",
    );
    let policy = Policy {
        limits: Some(ResourceLimits {
            memory_mb: Some(64),
            ..ResourceLimits::default()
        }),
        ..Policy::default()
    };
    let o = run(&lab.config(&[]), &lab.request("hostile", 1, policy)).await;
    assert_eq!(code(&o), "resource_limit", "{}\n{}", o.summary, o.logs);
    let details = &o.error.as_ref().expect("error").details;
    assert_eq!(details.get("limit"), Some(&serde_json::json!("memory")));
    assert!(
        details["cgroup"]["oom_kills"].as_u64().unwrap_or(0) > 0,
        "{details:?}"
    );
    eprintln!(
        "memory hog: stopped after {:?} ms; cgroup {}",
        o.metrics.get("duration_ms"),
        details["cgroup"]
    );
    let dir = cgroup_dir(&o);
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

#[test]
fn step_cgroups_of_a_runner_that_is_gone_are_swept_at_start() {
    if !require_cgroups() {
        return;
    }
    let cgroups = workers::cgroup::Cgroups::detect(None).expect("cgroups");
    // A pid that does not exist stands for a runner killed mid-step.
    let dead = (4_000_000u32..4_194_304)
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .expect("a free pid");
    let parent = cgroups
        .create(workers::cgroup::CgroupLimits {
            memory_bytes: 64 << 20,
            processes: 8,
            cpu_percent: 0,
        })
        .expect("create");
    // Its siblings: the same parents, a dead runner's name.
    let stale: Vec<PathBuf> = parent
        .procs_files()
        .iter()
        .map(|f| {
            f.parent()
                .and_then(std::path::Path::parent)
                .expect("parent")
                .join(format!("orch-{dead}-0"))
        })
        .collect();
    for d in &stale {
        std::fs::create_dir(d).expect("stale cgroup");
    }
    let live = parent.path().to_path_buf();
    assert!(cgroups.sweep_stale() >= stale.len());
    for d in &stale {
        assert!(!d.exists(), "{} was not swept", d.display());
    }
    assert!(live.exists(), "a live runner's step cgroup was swept");
    parent.kill_and_remove().expect("remove");
    assert!(!live.exists());
}
