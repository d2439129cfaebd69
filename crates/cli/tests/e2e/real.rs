//! Real agent CLIs end to end (issue 5): the fake `claude`, `codex` and
//! `opencode` of `examples/agents` run as real child processes through the
//! executor; their printed costs and tokens must reach every result; the
//! allowlist and version preflight refuse jobs before anything runs.

use crate::pipeline::{no_sandbox, real_orch, step, submit};
use serde_json::{Value, json};

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// What a fake printed, parsed the way each CLI's output is documented:
/// (cost_usd, tokens_out).
fn printed(agent: &str, raw: &str) -> (f64, u64) {
    match agent {
        // One JSON object (or an array whose last element is the result).
        "claude" => {
            let v: Value = serde_json::from_str(raw.trim()).unwrap();
            let v = if v.is_array() {
                v.as_array().unwrap().last().unwrap().clone()
            } else {
                v
            };
            (
                f(&v["total_cost_usd"]),
                v["usage"]["output_tokens"].as_u64().unwrap(),
            )
        }
        // JSONL; tokens from turn.completed, no cost without a price table.
        "codex" => {
            let out = raw
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|e| e["type"] == "turn.completed")
                .map(|e| e["usage"]["output_tokens"].as_u64().unwrap())
                .sum();
            (0.0, out)
        }
        // JSONL; cost and tokens summed over step_finish parts.
        "opencode" => raw
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["type"] == "step_finish")
            .fold((0.0, 0), |(c, t), e| {
                (
                    c + f(&e["part"]["cost"]),
                    t + e["part"]["tokens"]["output"].as_u64().unwrap(),
                )
            }),
        other => panic!("unknown agent {other}"),
    }
}

#[test]
fn a_three_step_real_job_reports_what_the_clis_printed() {
    let o = real_orch().env("ALLOWED_BINARIES", "claude,codex,opencode,git");
    // Codex works on git trees: seed the workspace from a small repository.
    let src = o.root().join("src-repo");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("README.md"), "hello\n").unwrap();
    for args in [
        &["init", "-q"][..],
        &["add", "."],
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "commit",
            "-qm",
            "init",
        ],
    ] {
        let st = std::process::Command::new("git")
            .args(args)
            .current_dir(&src)
            .status()
            .unwrap();
        assert!(st.success(), "git {args:?}");
    }
    let id = submit(
        &o,
        json!({
            "goal": "real pipeline",
            "workdir": src.to_str().unwrap(),
            "policy": no_sandbox(),
            "steps": [
                step("01_plan", "opencode", "planner", "plan"),
                step("02_implement", "codex", "implementer", "implement"),
                step("03_review", "claude", "reviewer", "review")
            ]
        }),
    );
    o.drain("real");
    let st = o.status_json(&id);
    assert_eq!(st["status"], "success", "{st:#}");
    let job = o.read_json(&format!("{id}/result.json"));
    let (mut cost, mut tout, mut tin) = (0.0, 0u64, 0u64);
    for (sid, agent) in [
        ("01_plan", "opencode"),
        ("02_implement", "codex"),
        ("03_review", "claude"),
    ] {
        let r = o.read_json(&format!("{id}/steps/{sid}/result.json"));
        let raw = std::fs::read_to_string(
            o.artifacts()
                .join(&id)
                .join("steps")
                .join(sid)
                .join("raw_stdout.txt"),
        )
        .unwrap();
        let (c, t) = printed(agent, &raw);
        let m = &r["metrics"];
        assert!(
            (f(&m["cost_usd"]) - c).abs() < 1e-9,
            "{sid}: cost {} != printed {c}",
            m["cost_usd"]
        );
        assert_eq!(m["tokens_out"].as_u64(), Some(t), "{sid}: {m:#}");
        assert!(m["tokens_in"].as_u64().unwrap() > 0, "{sid}: {m:#}");
        assert_eq!(r["secrets_check"], "passed");
        cost += c;
        tout += t;
        tin += m["tokens_in"].as_u64().unwrap();
    }
    assert!(cost > 0.0);
    assert!(
        (f(&job["metrics"]["cost_usd"]) - cost).abs() < 1e-9,
        "{:#}",
        job["metrics"]
    );
    assert_eq!(job["metrics"]["tokens_out"].as_u64(), Some(tout));
    assert_eq!(job["metrics"]["tokens_in"].as_u64(), Some(tin));
}

#[test]
fn disallowed_missing_and_too_old_binaries_fail_preflight_and_run_nothing() {
    /// (what, extra environment, the name the error must mention)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "not allowed",
            vec![("ALLOWED_BINARIES", "claude,codex")],
            "opencode",
        ),
        (
            "missing",
            vec![("ALLOWED_BINARIES", "claude,codex,opencode,gemini")],
            "gemini",
        ),
        (
            "too old",
            vec![("MIN_BINARY_VERSIONS", "claude=99.0.0")],
            "claude",
        ),
    ];
    for (what, env, needle) in cases {
        let mut o = real_orch();
        for (k, v) in &env {
            o = o.env(k, v);
        }
        let agents = o.root().join("agents.json");
        // A custom agent whose binary does not exist, for the "missing" case.
        std::fs::write(
            &agents,
            json!([{"name": "gemini", "argv": ["gemini", "-p"], "output_format": "text", "binaries": ["gemini"]}]).to_string(),
        )
        .unwrap();
        let o = o.env("AGENTS_CONFIG", agents.to_str().unwrap());
        let agent = if what == "missing" { "gemini" } else { needle };
        let id = submit(
            &o,
            json!({"goal": what, "policy": no_sandbox(), "steps": [step("only", agent, "reviewer", "x")]}),
        );
        o.drain("pre");
        let st = o.status_json(&id);
        assert_eq!(st["status"], "failed", "{what}: {st:#}");
        assert_eq!(st["error"]["code"], "preflight", "{what}: {st:#}");
        let msg = st["error"]["message"].as_str().unwrap().to_owned()
            + &st["error"]["details"].to_string();
        assert!(msg.contains(needle), "{what}: {msg}");
        // Nothing ran: the step never started.
        assert!(
            !o.artifacts()
                .join(&id)
                .join("steps/only/raw_stdout.txt")
                .exists(),
            "{what}: the agent ran"
        );
        assert_eq!(st["steps"][0]["status"], Value::Null, "{what}: {st:#}");
    }
}
