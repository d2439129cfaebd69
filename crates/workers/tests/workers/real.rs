//! Real-CLI mode against the fake CLIs in `examples/agents/` run as real
//! child processes: the executor's rules, the three adapters' normalised
//! outcomes, preflight refusals, custom agents, and (when bubblewrap works
//! on this machine) the sandbox probes and die-with-parent.

use crate::support::{request, step};
use contracts::env::EnvSource;
use contracts::{Job, Policy, Status};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use workers::exec::{self, ExecSpec, ExitKind};
use workers::{RealConfig, Registry, StepOutcome, StepRequest};

fn agents_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/agents")
        .canonicalize()
        .expect("examples/agents exists")
}

/// A temp dir with `bin/{claude,codex,opencode}` linked to the fakes, a
/// workspace and a state dir.
struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let bin = tmp.path().join("bin");
        std::fs::create_dir_all(&bin).expect("bin");
        for name in ["claude", "codex", "opencode"] {
            std::os::unix::fs::symlink(agents_dir().join(format!("fake-{name}")), bin.join(name))
                .expect("link fake");
        }
        std::fs::create_dir_all(tmp.path().join("ws/work")).expect("work");
        std::fs::create_dir_all(tmp.path().join("ws/state")).expect("state");
        Self { tmp }
    }

    fn path_var(&self) -> String {
        format!(
            "{}:/usr/local/bin:/usr/bin:/bin",
            self.tmp.path().join("bin").display()
        )
    }

    fn work(&self) -> PathBuf {
        self.tmp.path().join("ws/work")
    }

    fn source(&self, extra: &[(&str, &str)]) -> EnvSource {
        let mut pairs: Vec<(String, String)> = vec![
            ("PATH".into(), self.path_var()),
            ("HOME".into(), self.tmp.path().display().to_string()),
            ("ENABLE_REAL_CLI".into(), "1".into()),
            ("SANDBOX".into(), "0".into()),
            (
                "ALLOWED_BINARIES".into(),
                "claude,codex,opencode,git,cat,sleep".into(),
            ),
            ("RUNNER_SECRET_TOKEN".into(), "runner-only-value-123".into()),
        ];
        for (k, v) in extra {
            pairs.retain(|(pk, _)| pk != k);
            pairs.push(((*k).into(), (*v).into()));
        }
        EnvSource::from_pairs(pairs)
    }

    /// An agents config that shows the fakes' directory inside the sandbox
    /// (their shared module lives next to them).
    fn fakes_config(&self) -> String {
        let p = self.tmp.path().join("fakes.json");
        let dir = agents_dir().display().to_string();
        let entries: Vec<serde_json::Value> = ["claude", "codex", "opencode"]
            .iter()
            .map(|n| serde_json::json!({"name": n, "ro_paths": [dir]}))
            .collect();
        std::fs::write(&p, serde_json::Value::Array(entries).to_string())
            .expect("write fakes.json");
        p.display().to_string()
    }

    fn config(&self, extra: &[(&str, &str)]) -> Arc<RealConfig> {
        Arc::new(RealConfig::from_env(&self.source(extra)).expect("real config"))
    }

    fn request(&self, agent: &str, role: &str, prompt: &str, sandbox: bool) -> StepRequest {
        let mut r = request(step("s1", agent, role, prompt), "goal", &self.work());
        r.prompt = prompt.to_owned();
        r.state_dir = self.tmp.path().join("ws/state");
        r.policy = Policy {
            sandbox,
            ..Policy::default()
        };
        r
    }
}

async fn run(cfg: &Arc<RealConfig>, req: &StepRequest) -> StepOutcome {
    let reg = Registry::real(cfg.clone());
    let w = reg.get(&req.step.agent).expect("agent registered");
    w.run(req, CancellationToken::new()).await
}

fn f64_metric(o: &StepOutcome, k: &str) -> f64 {
    o.metrics
        .get(k)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(-1.0)
}

fn u64_metric(o: &StepOutcome, k: &str) -> u64 {
    o.metrics
        .get(k)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(u64::MAX)
}

#[tokio::test]
async fn claude_success_object_and_array_forms() {
    let env = Env::new();
    let cfg = env.config(&[]);
    for prompt in ["review it", "review it [fake:array]"] {
        let o = run(&cfg, &env.request("claude", "reviewer", prompt, false)).await;
        assert_eq!(
            o.status,
            Status::Success,
            "{prompt}: {}\n{}",
            o.summary,
            o.logs
        );
        assert!(o.report_md.contains("Review complete"), "{}", o.report_md);
        assert!((f64_metric(&o, "cost_usd") - 0.0421).abs() < 1e-9);
        assert_eq!(u64_metric(&o, "tokens_in"), 1200 + 300 + 4500);
        assert_eq!(u64_metric(&o, "tokens_out"), 640);
        assert_eq!(u64_metric(&o, "num_turns"), 3);
        assert!(o.metrics.get("session_id").is_some());
        assert!(
            o.logs.contains("--allowedTools Read,Grep,Glob"),
            "{}",
            o.logs
        );
        assert!(o.raw_stdout.as_deref().is_some_and(|b| !b.is_empty()));
    }
}

#[tokio::test]
async fn claude_failures_are_classified() {
    let env = Env::new();
    let cfg = env.config(&[]);
    let cases = [
        ("[fake:rate_limit]", Status::Retryable, "agent_error"),
        ("[fake:error]", Status::Failed, "agent_error"),
        ("[fake:max_turns]", Status::Failed, "agent_error"),
        ("[fake:crash]", Status::Retryable, "agent_crashed"),
        ("[fake:no_result]", Status::Retryable, "no_result"),
    ];
    for (marker, status, code) in cases {
        let o = run(&cfg, &env.request("claude", "reviewer", marker, false)).await;
        assert_eq!(o.status, status, "{marker}: {}\n{}", o.summary, o.logs);
        assert_eq!(
            o.error.as_ref().map(|e| e.code.as_str()),
            Some(code),
            "{marker}"
        );
    }
}

#[tokio::test]
async fn codex_and_opencode_normalise_tokens_and_cost() {
    let env = Env::new();
    let cfgfile = env.tmp.path().join("agents.json");
    std::fs::write(
        &cfgfile,
        r#"[{"name":"codex","prices":{"*":{"input_per_mtok":1.0,"cached_input_per_mtok":0.1,"output_per_mtok":10.0}}}]"#,
    )
    .expect("write config");
    let cfg = env.config(&[("AGENTS_CONFIG", &cfgfile.display().to_string())]);
    exec::run_git(
        &[std::ffi::OsStr::new("init"), std::ffi::OsStr::new("-q")],
        Some(&env.work()),
    )
    .expect("git init");
    let o = run(
        &cfg,
        &env.request("codex", "implementer", "implement", false),
    )
    .await;
    assert_eq!(o.status, Status::Success, "{}\n{}", o.summary, o.logs);
    assert_eq!(u64_metric(&o, "tokens_in"), 24763);
    assert_eq!(u64_metric(&o, "tokens_out"), 122);
    let want = (24763.0 - 24448.0) * 1.0 / 1e6 + 24448.0 * 0.1 / 1e6 + 122.0 * 10.0 / 1e6;
    assert!(
        (f64_metric(&o, "cost_usd") - want).abs() < 1e-9,
        "{:?}",
        o.metrics
    );
    assert!(env.work().join("fake_codex_change.txt").is_file());
    assert!(o.logs.contains("-s workspace-write -"), "{}", o.logs);

    let o = run(
        &cfg,
        &env.request("codex", "implementer", "[fake:rate_limit]", false),
    )
    .await;
    assert_eq!(o.status, Status::Retryable, "{}", o.summary);

    let o = run(&cfg, &env.request("opencode", "planner", "plan", false)).await;
    assert_eq!(o.status, Status::Success, "{}\n{}", o.summary, o.logs);
    assert!((f64_metric(&o, "cost_usd") - (0.0123 + 0.0045)).abs() < 1e-9);
    assert_eq!(u64_metric(&o, "tokens_in"), 1500 + 200 + 800 + 1000);
    assert_eq!(u64_metric(&o, "tokens_out"), 450);
    assert!(o.report_md.contains("## Plan"));
    let o = run(
        &cfg,
        &env.request("opencode", "planner", "[fake:rate_limit]", false),
    )
    .await;
    assert_eq!(o.status, Status::Retryable, "{}", o.summary);
    let o = run(
        &cfg,
        &env.request("opencode", "planner", "[fake:error]", false),
    )
    .await;
    assert_eq!(o.status, Status::Failed, "{}", o.summary);
}

#[tokio::test]
async fn codex_outside_git_follows_non_git_workdir_status() {
    let env = Env::new();
    let cfg = env.config(&[]);
    let o = run(&cfg, &env.request("codex", "implementer", "x", false)).await;
    assert_eq!(o.status, Status::NeedsHuman);
    let cfg = env.config(&[("NON_GIT_WORKDIR_STATUS", "failed")]);
    let o = run(&cfg, &env.request("codex", "implementer", "x", false)).await;
    assert_eq!(o.status, Status::Failed);
    assert_eq!(o.error.map(|e| e.code), Some("non_git_workdir".to_owned()));
}

#[tokio::test]
async fn a_ten_megabyte_line_is_handled() {
    let env = Env::new();
    // Cap above the output: the huge result parses.
    let cfg = env.config(&[("MAX_SUBPROCESS_OUTPUT_CHARS", "30000000")]);
    let o = run(
        &cfg,
        &env.request("claude", "reviewer", "[fake:huge]", false),
    )
    .await;
    assert_eq!(o.status, Status::Success, "{}", o.summary);
    assert!(o.report_md.len() > 10_000_000);
    // Default cap: the stream is cut with a marker, the step fails cleanly.
    let cfg = env.config(&[]);
    let o = run(
        &cfg,
        &env.request("claude", "reviewer", "[fake:huge]", false),
    )
    .await;
    assert_eq!(o.status, Status::Failed, "{}", o.summary);
    assert_eq!(
        o.error.as_ref().map(|e| e.code.as_str()),
        Some("output_too_large")
    );
    let raw = o.raw_stdout.expect("raw stdout");
    assert!(raw.len() < 2_100_000, "{}", raw.len());
    assert!(String::from_utf8_lossy(&raw[raw.len() - 200..]).contains("output truncated"));
    // JSONL keeps working past the cap: the tail still has the final events.
    let o = run(
        &cfg,
        &env.request("opencode", "planner", "[fake:huge=5000000]", false),
    )
    .await;
    assert_eq!(o.status, Status::Failed, "{}", o.summary);
    let cfg = env.config(&[("MAX_SUBPROCESS_OUTPUT_CHARS", "1000000")]);
    let o = run(
        &cfg,
        &env.request("codex", "reviewer", "[fake:huge=3000000]", false),
    )
    .await;
    // Codex needs git; the reviewer outcome still proves the executor copes.
    assert!(
        matches!(o.status, Status::NeedsHuman | Status::Failed),
        "{}",
        o.summary
    );
}

#[tokio::test]
async fn timeout_kills_the_agent_and_reports_timeout() {
    let env = Env::new();
    let cfg = env.config(&[]);
    let mut req = env.request("claude", "reviewer", "[fake:sleep]", false);
    req.step.timeout_sec = 1;
    let t0 = Instant::now();
    let o = run(&cfg, &req).await;
    assert_eq!(o.status, Status::Timeout, "{}", o.summary);
    assert!(t0.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn cancel_stops_the_whole_group() {
    let dir = tempfile::tempdir().expect("tmp");
    let token = format!("{}.{}", 3000 + std::process::id() % 1000, 4242);
    let sleep = exec::find_on_path("sleep", "/usr/bin:/bin").expect("sleep installed");
    let mut spec = ExecSpec::new(&sleep, dir.path()).arg(&token);
    spec.kill_grace = Duration::from_millis(300);
    let cancel = CancellationToken::new();
    let running = exec::spawn(&spec).expect("spawn");
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c2.cancel();
    });
    let out = running.wait(cancel).await;
    assert_eq!(out.exit, ExitKind::Cancelled);
    assert!(wait_gone(&token, Duration::from_secs(2)), "sleep survived");
}

#[tokio::test]
async fn environment_is_cleared_and_prompt_goes_to_stdin() {
    let env = Env::new();
    let cfg = env.config(&[("ENV_ALLOWLIST", "ALLOWED_ONE"), ("ALLOWED_ONE", "v")]);
    let o = run(
        &cfg,
        &env.request("claude", "reviewer", "[fake:probe]", false),
    )
    .await;
    assert_eq!(o.status, Status::Success, "{}\n{}", o.summary, o.logs);
    let probe = probe_of(&o);
    let names: Vec<String> = serde_json::from_value(probe["env"].clone()).expect("env list");
    assert!(names.contains(&"ALLOWED_ONE".to_owned()), "{names:?}");
    assert!(
        !names.contains(&"RUNNER_SECRET_TOKEN".to_owned()),
        "{names:?}"
    );
    assert!(names.contains(&"CLAUDE_CONFIG_DIR".to_owned()));
    // The prompt is not on argv: the logged command line has no prompt.
    assert!(!o.logs.contains("[fake:probe]"), "{}", o.logs);
}

fn probe_of(o: &StepOutcome) -> serde_json::Value {
    let body = o.report_md.lines().skip(2).collect::<Vec<_>>().join("\n");
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {}", o.report_md))
}

#[tokio::test]
async fn custom_text_agent_from_config() {
    let env = Env::new();
    let cfgfile = agents_dir().join("agents.json");
    let cfg = env.config(&[("AGENTS_CONFIG", &cfgfile.display().to_string())]);
    let o = run(
        &cfg,
        &env.request("echo-agent", "planner", "hello from stdin", false),
    )
    .await;
    assert_eq!(o.status, Status::Success, "{}\n{}", o.summary, o.logs);
    assert!(o.report_md.contains("hello from stdin"));
}

fn job(agents: &[&str], allowed: &[&str], sandbox: bool) -> Job {
    let steps: Vec<serde_json::Value> = agents
        .iter()
        .enumerate()
        .map(|(i, a)| serde_json::json!({"step_id": format!("s{i}"), "agent": a, "role": "reviewer", "prompt": "p"}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "schema_version": "1.0", "job_id": "job-00000001", "created_at": "2024-05-01T10:00:00Z",
        "source": {"type": "manual", "meta": {}}, "goal": "g", "steps": steps,
        "policy": {"sandbox": sandbox, "allowed_binaries": allowed}
    }))
    .expect("job")
}

#[tokio::test]
async fn preflight_refuses_precisely() {
    let env = Env::new();
    let reg = Registry::real(env.config(&[("MIN_BINARY_VERSIONS", "claude=2.0.0,codex=0.40")]));
    reg.preflight(&job(&["claude", "codex", "opencode"], &[], false))
        .await
        .expect("the fakes pass their own preflight");

    let e = reg
        .preflight(&job(&["claude"], &["codex"], false))
        .await
        .unwrap_err();
    assert_eq!(e.code, "preflight");
    assert!(
        e.message.contains("claude: not an allowed binary"),
        "{}",
        e.message
    );

    let reg = Registry::real(env.config(&[("ALLOWED_BINARIES", "claude,opencode")]));
    let e = reg
        .preflight(&job(&["codex"], &[], false))
        .await
        .unwrap_err();
    assert!(
        e.message.contains("codex: not an allowed binary"),
        "{}",
        e.message
    );

    std::fs::remove_file(env.tmp.path().join("bin/opencode")).expect("unlink");
    let reg = Registry::real(env.config(&[]));
    let e = reg
        .preflight(&job(&["opencode"], &[], false))
        .await
        .unwrap_err();
    assert!(e.message.contains("opencode: not found"), "{}", e.message);

    let reg = Registry::real(env.config(&[("MIN_BINARY_VERSIONS", "claude=99.1")]));
    let e = reg
        .preflight(&job(&["claude"], &[], false))
        .await
        .unwrap_err();
    assert!(
        e.message
            .contains("version 2.0.14, older than MIN_BINARY_VERSIONS claude=99.1"),
        "{}",
        e.message
    );

    let e = reg
        .preflight(&job(&["nope"], &[], false))
        .await
        .unwrap_err();
    assert!(
        e.message.contains("agent \"nope\" is not configured"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn two_jobs_have_separate_state_dirs() {
    let a = Env::new();
    let b = Env::new();
    let cfg = a.config(&[]);
    let ra = a.request("claude", "reviewer", "[fake:probe]", false);
    let rb = b.request("claude", "reviewer", "[fake:probe]", false);
    let (oa, ob) = tokio::join!(run(&cfg, &ra), run(&cfg, &rb));
    let (pa, pb) = (probe_of(&oa), probe_of(&ob));
    for k in [
        "CLAUDE_CONFIG_DIR",
        "CODEX_HOME",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "XDG_CACHE_HOME",
    ] {
        let (va, vb) = (pa["state_dirs"][k].as_str(), pb["state_dirs"][k].as_str());
        assert!(
            va.is_some_and(|v| v.starts_with(&ra.state_dir.display().to_string())),
            "{k}: {va:?}"
        );
        assert!(
            vb.is_some_and(|v| v.starts_with(&rb.state_dir.display().to_string())),
            "{k}: {vb:?}"
        );
        assert_ne!(va, vb);
    }
}

// ---- sandbox --------------------------------------------------------------

/// Whether bubblewrap works here; if not, the test skips or (with
/// `ORCH_TEST_STRICT=1`) fails (`support::runnable`).
fn sandbox_works() -> bool {
    let why = workers::sandbox::available().err().map(|e| e.to_string());
    crate::support::runnable(
        why.is_none(),
        &format!("bubblewrap is unusable here: {}", why.unwrap_or_default()),
    )
}

#[tokio::test]
async fn sandbox_probes_fail_and_network_follows_policy() {
    if !sandbox_works() {
        return;
    }
    let env = Env::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // A real host directory outside the workspace (visible read-only
    // because the fakes live there), and /tmp (a private tmpfs inside).
    let outside = agents_dir().join("orch-probe-outside.txt");
    let outside_tmp = env.tmp.path().join("outside.txt");
    let prompt = format!(
        "[fake:probe] [probe-port:{port}] [probe-path:{}]",
        outside.display()
    );
    let fakes = env.fakes_config();
    let cfg = env.config(&[
        ("SANDBOX", "1"),
        ("ENV_ALLOWLIST", "ALLOWED_ONE"),
        ("ALLOWED_ONE", "v"),
        ("AGENTS_CONFIG", &fakes),
    ]);
    let o = run(&cfg, &env.request("claude", "reviewer", &prompt, true)).await;
    assert_eq!(o.status, Status::Success, "{}\n{}", o.summary, o.logs);
    assert!(o.logs.contains("sandbox: bubblewrap"), "{}", o.logs);
    let p = probe_of(&o);
    assert!(
        p["write_outside"]
            .as_str()
            .is_some_and(|s| s.starts_with("denied")),
        "{p}"
    );
    assert!(
        p["write_etc"]
            .as_str()
            .is_some_and(|s| s.starts_with("denied")),
        "{p}"
    );
    assert_eq!(p["write_workspace"], "ok", "{p}");
    assert!(!outside.exists());
    let prompt_tmp = format!("[fake:probe] [probe-path:{}]", outside_tmp.display());
    let o = run(&cfg, &env.request("claude", "reviewer", &prompt_tmp, true)).await;
    assert_eq!(o.status, Status::Success, "{}", o.summary);
    assert!(
        !outside_tmp.exists(),
        "a write to /tmp inside reached the host"
    );
    assert!(
        p["connect"]
            .as_str()
            .is_some_and(|s| s.starts_with("denied")),
        "{p}"
    );
    let names: Vec<String> = serde_json::from_value(p["env"].clone()).expect("env");
    assert!(
        !names.contains(&"RUNNER_SECRET_TOKEN".to_owned()),
        "{names:?}"
    );
    assert!(names.contains(&"ALLOWED_ONE".to_owned()), "{names:?}");
    // The sandbox has its own pid namespace: pid 1 is not the runner's init,
    // and no runner environment is readable through /proc.
    assert!(
        !p["pid1_environ"]
            .as_str()
            .unwrap_or("")
            .contains("runner-only-value-123"),
        "{p}"
    );

    // Network only when both the runner and the job allow it.
    let cfg = env.config(&[
        ("SANDBOX", "1"),
        ("NETWORK_POLICY", "allow"),
        ("AGENTS_CONFIG", &fakes),
    ]);
    let mut req = env.request("claude", "reviewer", &prompt, true);
    req.policy.network = contracts::NetworkPolicy::Allow;
    let o = run(&cfg, &req).await;
    assert_eq!(probe_of(&o)["connect"], "ok", "{}", o.logs);
    drop(listener);
}

/// The parent side of `sandboxed_agent_dies_with_its_runner`: when
/// `ORCH_TEST_SANDBOX_PARENT` is set (only in the re-executed test binary),
/// start a sandboxed `sleep <token>` and wait forever.
#[tokio::test]
#[ignore = "helper: run in a child process by sandboxed_agent_dies_with_its_runner"]
async fn sandbox_parent_helper() {
    let token = std::env::var("ORCH_TEST_SANDBOX_PARENT").expect(
        "run only by sandboxed_agent_dies_with_its_runner, which sets ORCH_TEST_SANDBOX_PARENT",
    );
    let path = "/usr/local/bin:/usr/bin:/bin";
    let sb = workers::sandbox::Sandbox::builtin(path).expect("bwrap");
    let sleep = exec::find_on_path("sleep", path).expect("sleep");
    let dir = std::env::temp_dir();
    let mut spec = ExecSpec::new(sleep, &dir).arg(&token);
    spec.env = vec![("PATH".into(), path.into())];
    let spec = sb.wrap(&spec, &workers::sandbox::Mounts::default());
    let running = exec::spawn(&spec).expect("spawn sandboxed sleep");
    let _ = running.wait(CancellationToken::new()).await;
}

/// A sandbox bubblewrap cannot set up fails the step at once with bwrap's
/// reason, instead of being retried as a crash. The trigger is the one a
/// relative WORKSPACES_ROOT once caused: a relative workdir exists from
/// the runner's directory, but bwrap, started in the workdir, resolves its
/// bind source from there and finds nothing.
#[tokio::test]
async fn a_sandbox_set_up_failure_is_fatal_with_its_reason() {
    if !sandbox_works() {
        return;
    }
    let env = Env::new();
    let cfg = env.config(&[("SANDBOX", "1"), ("AGENTS_CONFIG", &env.fakes_config())]);
    let cwd = std::env::current_dir().expect("cwd");
    let here = tempfile::TempDir::new_in(&cwd).expect("temp dir in the test's cwd");
    std::fs::create_dir_all(here.path().join("work")).expect("work");
    let rel = here
        .path()
        .strip_prefix(&cwd)
        .expect("inside cwd")
        .join("work");
    let mut req = env.request("claude", "reviewer", "review", true);
    req.workdir = rel.clone();
    let o = run(&cfg, &req).await;
    assert_eq!(o.status, Status::Failed, "{}", o.logs);
    let e = o.error.expect("error");
    assert_eq!(e.code, "sandbox_setup", "{}", e.message);
    assert!(e.message.contains("bwrap: "), "{}", e.message);
    assert!(
        e.message.contains(&rel.display().to_string()),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn sandboxed_agent_dies_with_its_runner() {
    if !sandbox_works() {
        return;
    }
    let token = format!("{}.{}", 3000 + std::process::id() % 1000, 777);
    let me = std::env::current_exe().expect("test binary");
    let mut spec = ExecSpec::new(&me, std::env::temp_dir())
        .arg("--exact")
        .arg("--ignored")
        .arg("real::sandbox_parent_helper")
        .arg("--nocapture");
    spec.env = vec![
        ("ORCH_TEST_SANDBOX_PARENT".into(), token.clone()),
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
    ];
    let parent = exec::spawn(&spec).expect("spawn parent");
    let pid = parent.pid().expect("pid");
    let deadline = Instant::now() + Duration::from_secs(20);
    // Wait for the agent itself (`sleep <token>`), not only for a launcher
    // (setpriv, bwrap) carrying the token in its argv: killing the runner
    // while the launcher is still starting is a different race.
    while !agent_with(&token) {
        assert!(
            Instant::now() < deadline,
            "the sandboxed agent never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL the parent");
    assert!(
        wait_gone(&token, Duration::from_secs(1)),
        "the agent outlived its runner by 1 s"
    );
    drop(parent);
}

/// True when a live `sleep` process has `token` as its argument.
fn agent_with(token: &str) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten().any(|e| {
        std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
            let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"sleep"))
                && args.get(1).is_some_and(|a| *a == token.as_bytes())
        })
    })
}

/// True when a live process has `token` as an argument.
fn process_with(token: &str) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten().any(|e| {
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // A zombie is dead already (waiting to be reaped by its parent).
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'));
        !zombie
            && std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == token.as_bytes()))
    })
}

fn wait_gone(token: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if !process_with(token) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
