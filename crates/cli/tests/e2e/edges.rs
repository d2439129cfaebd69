//! Safe at the edges (issue 10), through the real binaries: secrets never
//! reach the artifacts tree raw (nor a prefix of one), a step's access is
//! explicit, `workdir` never names a system directory, `orch submit` reads
//! only regular files, and hostile goal text is shown escaped.

use crate::support::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Synthetic tokens of several rule families, assembled at run time from
/// split prefixes so no token-shaped string is committed (the repository
/// scans clean). The characters are fixed, not random: the test must
/// reproduce.
fn tokens() -> Vec<(&'static str, String)> {
    vec![
        (
            "aws-access-token",
            ["AK", "IA"].concat() + "ZDOCIQ7RTX4KMWB2",
        ),
        (
            "github-token",
            ["gh", "p_"].concat() + "R8mZq2Lw9XkT4vYb7NcJ3hFs6DgPa1Ue5Qo0",
        ),
        (
            "slack-token",
            ["xo", "xb-"].concat() + "204719384756-918273645501-Qw7Er2Ty9Ui4Op1As6Df3Gh8",
        ),
        (
            "stripe-access-token",
            ["sk_", "live_"].concat() + "4eC39HqLyjWDarjtT1zdp7dc",
        ),
    ]
}

/// The AWS secret access key, found by its `aws_secret_access_key = ` key.
fn aws_secret() -> String {
    "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzq8Xa3Vb2m".to_owned()
}

/// Every file below `dir` (hidden temp files included), without following
/// links.
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// (file, needle) pairs where a needle occurs.
fn leaks(files: &[PathBuf], extra: &[(&str, &[u8])], needles: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let mut check = |name: &str, bytes: &[u8]| {
        for n in needles {
            if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                found.push(format!("{name}: {n}"));
            }
        }
    };
    for f in files {
        check(&f.display().to_string(), &std::fs::read(f).unwrap());
    }
    for (name, bytes) in extra {
        check(name, bytes);
    }
    found
}

/// A job whose goal and metadata carry tokens of every family above runs
/// under `SECRETS_POLICY=fail`; afterwards no file anywhere under the
/// installation — the artifacts tree with its temp files, the workspaces,
/// the runner's own temp directory — nor the runner's log holds a token or
/// even a 10-character prefix of one. Only the queue file, which keeps the
/// job as submitted (docs/SECURITY.md), is exempt.
#[test]
fn secrets_in_goal_and_metadata_never_reach_artifacts_or_logs() {
    let o = Orch::new()
        .env("SECRETS_POLICY", "fail")
        .env("RUST_LOG", "debug");
    let tmp = o.root().join("runner-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let o = o.env("TMPDIR", tmp.to_str().unwrap());
    let toks = tokens();
    // The AWS key id sits across the simulated summary's 80-character cut:
    // truncating before redacting would publish its prefix.
    let head = "Rotate the deploy credentials for the staging cluster now, key id ";
    assert!(head.len() < 80 && head.len() + toks[0].1.len() > 80);
    let goal = format!(
        "{head}{} please.\nAlso revoke {} and {} and {}.\naws_secret_access_key = {}\n",
        toks[0].1,
        toks[1].1,
        toks[2].1,
        toks[3].1,
        aws_secret()
    );
    let mut meta = serde_json::Map::new();
    for (rule, t) in &toks {
        meta.insert((*rule).to_owned(), json!(t));
    }
    meta.insert(format!("key-{}", toks[1].1), json!("a token as a key"));
    meta.insert(
        "nested".into(),
        json!({"list": [toks[0].1, format!("aws_secret_access_key = {}", aws_secret())]}),
    );
    let id = o.submit(&json!({"goal": goal, "metadata": meta}).to_string());
    let out = o
        .runner(&["--drain", "--id", "r1"])
        .output()
        .expect("runner");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The job ran and ended (the secrets in its goal reach the plan's
    // report, so SECRETS_POLICY=fail fails that step).
    let result = o.read_json(&format!("{id}/result.json"));
    assert_eq!(result["status"], "failed", "{result}");
    let job = o.read_json(&format!("{id}/job.json"));
    assert!(
        job["goal"].as_str().unwrap().contains("[REDACTED:"),
        "{job}"
    );

    let mut needles: Vec<String> = toks.iter().map(|(_, t)| t.clone()).collect();
    needles.push(aws_secret());
    // A prefix: the fixed part of the format plus the first random chars.
    let prefixes: Vec<String> = needles.iter().map(|n| n[..10].to_owned()).collect();
    needles.extend(prefixes);
    let mut files = all_files(&o.artifacts());
    files.extend(all_files(&o.root().join("workspaces")));
    files.extend(all_files(&tmp));
    assert!(files.len() >= 10, "{files:?}");
    let found = leaks(
        &files,
        &[
            ("runner stderr", &out.stderr),
            ("runner stdout", &out.stdout),
        ],
        &needles,
    );
    assert!(found.is_empty(), "raw secrets found:\n{}", found.join("\n"));
    // The queue file is the job as submitted (the input a runner needs).
    let done = o.names("failed");
    assert_eq!(done.len(), 1, "{done:?}");
    let queued = std::fs::read_to_string(o.state_dir("failed").join(&done[0])).unwrap();
    assert!(queued.contains(&toks[1].1));
}

fn run_job(o: &Orch, doc: Value) -> (String, Value) {
    let id = o.submit(&doc.to_string());
    o.drain("r1");
    let r = o.read_json(&format!("{id}/result.json"));
    (id, r)
}

/// A misspelt role gets no write access: `codex` (whose simulation writes
/// files) with role `reviwer` changes nothing, and the stored job says
/// `access: read`. The role table gives `implementer` write access, and an
/// explicit `access` wins over the table.
#[test]
fn a_misspelt_role_runs_read_only() {
    let o = Orch::new();
    let step = |id: &str, role: &str| json!({"step_id": id, "agent": "codex", "role": role, "prompt": "change the code"});
    let mut explicit = step("03_explicit", "reviwer");
    explicit["access"] = json!("write");
    let (id, r) = run_job(
        &o,
        json!({"goal": "roles", "steps": [step("01_typo", "reviwer"), step("02_impl", "implementer"), explicit]}),
    );
    assert_eq!(r["status"], "success", "{r}");
    let job = o.read_json(&format!("{id}/job.json"));
    let access: Vec<&str> = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["access"].as_str().unwrap_or("(none)"))
        .collect();
    assert_eq!(access, ["read", "write", "write"]);
    let typo = o.read_json(&format!("{id}/steps/01_typo/result.json"));
    assert_eq!(typo["change_status"], "no_changes", "{typo}");
    let patch =
        std::fs::read_to_string(o.artifacts().join(format!("{id}/steps/01_typo/patch.diff")))
            .unwrap();
    assert!(patch.is_empty(), "{patch}");
    for sid in ["02_impl", "03_explicit"] {
        let res = o.read_json(&format!("{id}/steps/{sid}/result.json"));
        assert_eq!(res["change_status"], "changed", "{sid}: {res}");
    }
    // Anything but read or write is refused at submit.
    let mut bad = step("01", "implementer");
    bad["access"] = json!("admin");
    let out = o.orch(
        &["submit", "-"],
        Some(json!({"goal": "x", "steps": [bad]}).to_string().as_bytes()),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/steps/0/access"), "{err}");
}

/// `workdir` is never `/` nor a system directory, however it is spelt
/// (`..`, a symlink); nothing is enqueued.
#[test]
fn workdir_root_and_system_directories_are_refused() {
    let o = Orch::new();
    let link = o.root().join("looks-harmless");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    let up = "../".repeat(o.root().components().count() + 2);
    for wd in [
        "/".to_owned(),
        "/etc".to_owned(),
        "/usr/lib".to_owned(),
        "//proc/self".to_owned(),
        up,
        link.display().to_string(),
    ] {
        let out = o.orch(
            &["submit", "-"],
            Some(
                json!({"goal": "copy it", "workdir": wd})
                    .to_string()
                    .as_bytes(),
            ),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{wd}: accepted");
        assert!(err.contains("/workdir"), "{wd}: {err}");
        assert!(err.contains("workdir"), "{wd}: {err}");
    }
    assert!(o.names("pending").is_empty());
}

/// `orch submit FIFO` is refused at once instead of blocking forever; so
/// are directories and devices.
#[test]
fn submit_reads_only_regular_files() {
    let o = Orch::new();
    let fifo = o.root().join("job.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut child = o
        .cmd("orch")
        .args(["submit", fifo.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A deadlock guard, not a timing assertion: the refusal needs no
    // reader or writer, so anything that waits this long is blocked.
    let limit = Duration::from_secs(30);
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("orch submit blocked on a FIFO");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success());
    assert!(err.contains("not a regular file"), "{err}");
    for path in ["/dev/zero", "/dev/null"] {
        let out = o.orch(&["submit", path], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{path}");
        assert!(err.contains("not a regular file"), "{path}: {err}");
    }
    assert!(o.names("pending").is_empty());
}

/// A goal with terminal escapes (clear screen, window title, bell, colour)
/// and an RTL override is shown escaped by `orch list` and `orch status`:
/// not one raw control byte or bidi override reaches the terminal.
#[test]
fn hostile_goal_text_is_escaped_in_list_and_status() {
    let o = Orch::new();
    let goal = "fix \u{1b}]0;owned\u{7}\u{1b}[2J\u{1b}[31mred\u{1b}[0m \u{202e}gnp.exe\u{9b}1m";
    let (id, _) = run_job(&o, json!({"goal": goal}));
    let outputs = [o.orch(&["list"], None), o.orch(&["status", &id], None)];
    for out in outputs {
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("fix"), "{text}");
        let bad: Vec<char> = text
            .chars()
            .filter(|c| (c.is_control() && *c != '\n') || *c == '\u{202e}')
            .collect();
        assert!(bad.is_empty(), "raw {bad:?} in:\n{text}");
        assert!(text.contains("\\u{1b}"), "{text}");
    }
}

/// A goal needs visible text: zero-width spaces, joiners, a byte order
/// mark or bidi controls alone are refused.
#[test]
fn a_goal_of_invisible_characters_is_refused() {
    let o = Orch::new();
    for goal in [
        "\u{200b}\u{200b}\u{200b}",
        "\u{feff}\u{200d}",
        "\u{202e}\u{2066}",
    ] {
        let out = o.orch(
            &["submit", "-"],
            Some(json!({ "goal": goal }).to_string().as_bytes()),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{goal:?} accepted");
        assert!(err.contains("/goal") && err.contains("visible"), "{err}");
    }
    assert!(o.names("pending").is_empty());
}

/// A workdir larger than `WORKSPACE_MAX_FILES` fails the job with an error
/// naming the cap, instead of copying it.
#[test]
fn an_oversized_workdir_fails_the_job_naming_the_cap() {
    let o = Orch::new().env("WORKSPACE_MAX_FILES", "5");
    let src = o.root().join("big-src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..20 {
        std::fs::write(src.join(format!("f{i}.txt")), "x").unwrap();
    }
    let (id, r) = run_job(
        &o,
        json!({"goal": "too big", "workdir": src.display().to_string()}),
    );
    assert_eq!(r["status"], "failed", "{r}");
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("WORKSPACE_MAX_FILES=5"), "{r}");
    assert_eq!(r["error"]["code"], "workspace", "{r}");
    let work = o.root().join(format!("workspaces/{id}/work"));
    let copied = std::fs::read_dir(&work).map(|rd| rd.count()).unwrap_or(0);
    assert_eq!(copied, 0, "nothing is left of the copy");
}

/// In real mode, `orch doctor` fails (exit 1) when a runner could not run
/// jobs: an absolute `SANDBOX_WRAPPER` that does not exist, an agent
/// `ro_paths` entry that does not exist. Roots are shown absolute.
#[test]
fn doctor_fails_when_real_mode_would_fail() {
    let o = Orch::new();
    let agents = o.root().join("agents.json");
    std::fs::write(
        &agents,
        json!([{"name": "claude", "ro_paths": ["/nonexistent/orch-agent-dir"]}]).to_string(),
    )
    .unwrap();
    let cases: [(&str, Vec<(&str, String)>); 2] = [
        (
            "SANDBOX_WRAPPER",
            vec![("SANDBOX_WRAPPER", "/nonexistent/orch-wrapper".to_owned())],
        ),
        (
            "/nonexistent/orch-agent-dir",
            vec![
                ("AGENTS_CONFIG", agents.display().to_string()),
                ("SANDBOX", "0".to_owned()),
                ("SANDBOX_WRAPPER", "/bin/true".to_owned()),
            ],
        ),
    ];
    for (named, env) in cases {
        let mut c = o.cmd("orch");
        c.arg("doctor").env("ENABLE_REAL_CLI", "1");
        for (k, v) in &env {
            c.env(k, v);
        }
        let out = run_with_input(c, None);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{named}:\n{text}");
        let fail = text
            .lines()
            .find(|l| l.starts_with("fail") && l.contains(named))
            .unwrap_or_else(|| panic!("no failure naming {named}:\n{text}"));
        assert!(!fail.is_empty());
        assert!(text.contains("doctor: problems found"), "{text}");
    }
    // Relative roots are shown (and used) absolute.
    let mut c = o.cmd("orch");
    c.arg("doctor").env("QUEUE_ROOT", "rel/queue");
    let out = run_with_input(c, None);
    let text = String::from_utf8_lossy(&out.stdout);
    let expected = format!(
        "queue dir {} is writable",
        o.root().join("rel/queue").display()
    );
    assert!(text.contains(&expected), "{text}");
}

/// `orch dev` listens on `GATEWAY_BIND`, shows the resolved paths and the
/// mode, and never prints the webhook token.
#[test]
fn orch_dev_honours_gateway_bind_and_never_prints_the_token() {
    use std::io::{BufRead, Read, Write};
    let o = Orch::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = format!("127.0.0.1:{port}");
    let value = "s3cret-dev-token-7f3a9c";
    let mut child = o
        .cmd("orch")
        .arg("dev")
        .env("WEBHOOK_TOKEN", value)
        .env("GATEWAY_BIND", &bind)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut banner = String::new();
    while !banner.contains("Ctrl-C") {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            break;
        }
        banner.push_str(&line);
    }
    // The gateway answers on GATEWAY_BIND.
    let mut health = String::new();
    wait_for("the dev gateway", Duration::from_secs(60), || {
        let Ok(mut s) = std::net::TcpStream::connect(&bind) else {
            return false;
        };
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        health.clear();
        s.read_to_string(&mut health).is_ok() && health.starts_with("HTTP/1.1 200")
    });
    sigterm(&child);
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    let st = child.wait().unwrap();
    let mut stdout = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut stdout);
    let all = format!("{banner}{rest}{stdout}");
    assert!(st.success(), "{all}");
    assert!(!all.contains(value), "the token was printed:\n{all}");
    assert!(banner.contains(&format!("http://{bind}")), "{banner}");
    assert!(banner.contains("simulation"), "{banner}");
    let queue = o.root().join("var/queue").display().to_string();
    assert!(banner.contains(&queue), "{banner}");
}
