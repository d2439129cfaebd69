//! `validate_job` against hostile and broken documents: every rule of SPEC
//! §2.1, all violations reported together with exact pointers, bounded
//! messages, and no panic whatever the input.

use crate::support::{AGENTS, refused_at, valid_job, with, without};
use contracts::{OnFailure, validate_job};
use serde_json::{Value, json};

#[test]
fn the_reference_job_is_valid_and_typed() {
    let job = validate_job(&valid_job(), AGENTS).expect("valid");
    assert_eq!(job.steps.len(), 2);
    // Defaults fill what the second step leaves out.
    let s = &job.steps[1];
    assert_eq!(
        (s.timeout_sec, s.max_retries, s.retry_backoff_sec),
        (600, 1, 2)
    );
    assert_eq!(s.on_failure.as_string(), "goto:01_plan");
    assert_eq!(job.context_window[0].extra.get("extra"), Some(&json!(1)));
}

#[test]
fn non_object_documents_are_one_violation_at_the_root() {
    for doc in [json!([]), json!("job"), json!(1), json!(null), json!(true)] {
        let err = refused_at(&doc, &[""]);
        assert!(err.0[0].message.contains("expected a job object"), "{err}");
    }
}

#[test]
fn unknown_keys_are_named_in_job_step_policy_and_source() {
    let doc = with(valid_job(), "/priority", json!(1));
    let doc = with(doc, "/steps/0/model", json!("gpt"));
    let doc = with(doc, "/policy/root", json!(true));
    let doc = with(doc, "/source/extra", json!({}));
    let doc = with(doc, "/weird~1key", json!(0));
    let err = refused_at(
        &doc,
        &[
            "/priority",
            "/steps/0/model",
            "/policy/root",
            "/source/extra",
            "/weird~1key",
        ],
    );
    for name in ["priority", "model", "root", "extra", "weird/key"] {
        let quoted = format!("unknown field \"{name}\"");
        assert!(
            err.iter().any(|v| v.message.starts_with(&quoted)),
            "{name} not named:\n{err}"
        );
    }
}

#[test]
fn missing_required_fields_point_at_the_field() {
    let mut doc = valid_job();
    for f in [
        "/schema_version",
        "/job_id",
        "/created_at",
        "/source",
        "/goal",
    ] {
        doc = without(doc, f);
    }
    let doc = with(doc, "/steps", json!([{ "step_id": "a" }]));
    refused_at(
        &doc,
        &[
            "/schema_version",
            "/job_id",
            "/created_at",
            "/source",
            "/goal",
            "/steps/0/agent",
            "/steps/0/role",
            "/steps/0/prompt",
        ],
    );
}

#[test]
fn hostile_job_ids_are_refused() {
    for bad in [
        "../../evil",
        "..",
        ".",
        "a/b",
        "abcdefgh/..",
        "abc\0defgh",
        "ünïcödé-id",
        "........",
        ".hidden-job",
        "job..1234",
        "short",
        "",
        " 0123456789abcdef",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0",
    ] {
        refused_at(&with(valid_job(), "/job_id", json!(bad)), &["/job_id"]);
    }
    refused_at(&with(valid_job(), "/job_id", json!(12345678)), &["/job_id"]);
}

#[test]
fn hostile_step_ids_are_refused() {
    for bad in [
        "../../evil",
        "..",
        "a/b",
        "a\0b",
        "ü",
        "",
        "_lead",
        "-lead",
        "a.b",
        &"a".repeat(65),
    ] {
        let doc = with(valid_job(), "/steps/0/step_id", json!(bad));
        // Step 1's goto names 01_plan, which is gone; with a step id
        // unreadable that is not reported again (no cascading noise).
        refused_at(&doc, &["/steps/0/step_id"]);
    }
}

#[test]
fn over_long_fields_are_refused() {
    let cases: &[(&str, Value)] = &[
        ("/goal", json!("g".repeat(5001))),
        ("/workdir", json!("w".repeat(4097))),
        ("/workdir", json!("")),
        (
            "/callback_url",
            json!(format!("https://e.com/{}", "p".repeat(2048))),
        ),
        ("/project_id", json!(format!("p{}", "x".repeat(128)))),
        ("/steps/0/role", json!("r".repeat(129))),
        ("/steps/0/role", json!("")),
        ("/steps/0/prompt", json!("p".repeat(20_001))),
        ("/steps/0/prompt", json!("")),
        ("/tags/0", json!("t".repeat(257))),
    ];
    for (pointer, v) in cases {
        refused_at(&with(valid_job(), pointer, v.clone()), &[pointer]);
    }
    // Exactly at the limits is fine; length counts characters, not bytes.
    let doc = with(valid_job(), "/goal", json!("é".repeat(5000)));
    let doc = with(doc, "/steps/0/prompt", json!("p".repeat(20_000)));
    let doc = with(doc, "/steps/0/role", json!("r".repeat(128)));
    validate_job(&doc, AGENTS).expect("limits are inclusive");
}

#[test]
fn blank_goals_are_refused() {
    for blank in ["", " ", "\n\t  \r\n", "\u{3000}\u{a0}"] {
        let err = refused_at(&with(valid_job(), "/goal", json!(blank)), &["/goal"]);
        assert!(err.0[0].message.contains("blank"), "{err}");
    }
}

#[test]
fn numbers_must_be_integers_in_range() {
    let huge: Value = serde_json::from_str("99999999999999999999").expect("parses as f64");
    let fields = [
        ("timeout_sec", json!(0), json!(3601)),
        ("max_retries", json!(-1), json!(11)),
        ("retry_backoff_sec", json!(-1), json!(61)),
    ];
    for (field, below, above) in fields {
        let p = format!("/steps/0/{field}");
        for bad in [
            below.clone(),
            above.clone(),
            json!(1.5),
            json!(1e30),
            json!(-1e300),
            json!("10"),
            json!(null),
            json!(true),
            json!([1]),
            huge.clone(),
            json!(u64::MAX),
            json!(i64::MIN),
        ] {
            refused_at(&with(valid_job(), &p, bad.clone()), &[&p]);
        }
    }
    // An integral float is an integer, as in JSON Schema.
    let job = validate_job(
        &with(valid_job(), "/steps/0/timeout_sec", json!(300.0)),
        AGENTS,
    )
    .expect("300.0 is an integer");
    assert_eq!(job.steps[0].timeout_sec, 300);
}

#[test]
fn strings_where_arrays_or_objects_belong_are_errors_not_split() {
    let cases: &[(&str, Value)] = &[
        ("/tags", json!("a,b")),
        ("/tags", json!({ "a": 1 })),
        ("/tags/0", json!(1)),
        ("/metadata", json!("x")),
        ("/metadata", json!([])),
        ("/steps", json!("01_plan")),
        ("/steps", json!({})),
        ("/steps/0", json!("step")),
        ("/context_window", json!("hello")),
        ("/context_window/0", json!("hello")),
        ("/context_window/0/role", json!(1)),
        ("/policy", json!("strict")),
        ("/policy/sandbox", json!("true")),
        ("/policy/requires_approval", json!(1)),
        ("/policy/allowed_binaries", json!("git")),
        ("/policy/network", json!("maybe")),
        ("/source", json!("webhook")),
        ("/source/type", json!("email")),
        ("/source/meta", json!("x")),
        ("/steps/0/input_artifacts", json!("steps/01_plan/report.md")),
        ("/steps/0/apply_patches_from", json!({})),
        ("/steps/0/allowed_tools", json!("Read")),
        ("/steps/1/allowed_tools/0", json!("")),
        ("/context_strategy", json!("all")),
        ("/artifact_handoff", json!(1)),
        ("/schema_version", json!("2.0")),
        ("/schema_version", json!(1.0)),
        ("/created_at", json!("yesterday")),
        ("/created_at", json!("2023-02-29T00:00:00Z")),
        ("/created_at", json!(1700000000)),
        ("/created_at", json!("9999-12-31T23:59:59Z")),
        ("/project_id", json!("../x")),
        ("/project_id", json!(7)),
        ("/callback_url", json!("ftp://example.com")),
        ("/callback_url", json!("example.com/hook")),
        ("/callback_url", json!("http://exa mple.com")),
        ("/callback_url", json!(["http://a"])),
        ("/workdir", json!("a\0b")),
        ("/workdir", json!(null)),
        ("/goal", json!(["x"])),
    ];
    for (pointer, v) in cases {
        let err = refused_at(&with(valid_job(), pointer, v.clone()), &[pointer]);
        // A type error says what was expected and what came.
        assert!(!err.0[0].message.is_empty());
    }
    let err = refused_at(&with(valid_job(), "/tags", json!("a,b")), &["/tags"]);
    assert!(err.0[0].message.contains("array"), "{err}");
}

#[test]
fn unsafe_artifact_paths_are_refused() {
    for bad in [
        "/etc/passwd",
        "../secrets",
        "steps/../../x",
        "steps/./x",
        "..",
        "",
        "a//b",
        "a/",
        "steps\\..\\x",
        "a\0b",
        "a\nb",
        "x/.../y",
    ] {
        for field in ["input_artifacts", "apply_patches_from"] {
            let p = format!("/steps/0/{field}/0");
            refused_at(
                &with(valid_job(), &format!("/steps/0/{field}"), json!([bad])),
                &[&p],
            );
        }
    }
    let long = format!("a/{}", "b".repeat(4095));
    refused_at(
        &with(valid_job(), "/steps/0/input_artifacts", json!([long])),
        &["/steps/0/input_artifacts/0"],
    );
    let many: Vec<String> = (0..101).map(|i| format!("f{i}.md")).collect();
    refused_at(
        &with(valid_job(), "/steps/0/input_artifacts", json!(many)),
        &["/steps/0/input_artifacts"],
    );
}

#[test]
fn step_list_rules() {
    refused_at(&with(valid_job(), "/steps", json!([])), &["/steps"]);
    let one = valid_job()["steps"][0].clone();
    let many: Vec<Value> = (0..101)
        .map(|i| with(one.clone(), "/step_id", json!(format!("s{i}"))))
        .collect();
    refused_at(&with(valid_job(), "/steps", json!(many)), &["/steps"]);
}

#[test]
fn duplicate_step_ids_are_refused() {
    let doc = with(valid_job(), "/steps/1/step_id", json!("01_plan"));
    let err = refused_at(&doc, &["/steps/1/step_id"]);
    assert!(err.0[0].message.contains("duplicate"), "{err}");
}

#[test]
fn goto_targets_must_exist_and_self_goto_is_allowed() {
    let doc = with(valid_job(), "/steps/1/on_failure", json!("goto:99_missing"));
    let err = refused_at(&doc, &["/steps/1/on_failure"]);
    assert!(err.0[0].message.contains("99_missing"), "{err}");
    // Forward and self jumps are fine: the runner bounds jumps.
    let doc = with(
        valid_job(),
        "/steps/0/on_failure",
        json!("goto:02_implement"),
    );
    let doc = with(doc, "/steps/1/on_failure", json!("goto:02_implement"));
    let job = validate_job(&doc, AGENTS).expect("valid gotos");
    assert!(matches!(&job.steps[1].on_failure, OnFailure::Goto(t) if t.as_str() == "02_implement"));
    for bad in [
        "goto:",
        "goto:../x",
        "GOTO:01_plan",
        "retry",
        "",
        "goto: 01_plan",
    ] {
        refused_at(
            &with(valid_job(), "/steps/0/on_failure", json!(bad)),
            &["/steps/0/on_failure"],
        );
    }
}

#[test]
fn agents_must_be_known() {
    let err = refused_at(
        &with(valid_job(), "/steps/0/agent", json!("gemini")),
        &["/steps/0/agent"],
    );
    assert!(err.0[0].message.contains("unknown agent"), "{err}");
    refused_at(
        &with(valid_job(), "/steps/0/agent", json!("../bin/sh")),
        &["/steps/0/agent"],
    );
    let doc = with(valid_job(), "/steps/0/agent", json!("gemini"));
    validate_job(&doc, &["gemini", "codex"]).expect("configured agent");
}

#[test]
fn all_violations_are_reported_together() {
    // Three independent problems: three violations, right pointers, one call.
    let doc = with(valid_job(), "/goal", json!("   "));
    let doc = with(doc, "/tags", json!("a,b"));
    let doc = with(doc, "/steps/1/timeout_sec", json!(1.5));
    let err = refused_at(&doc, &["/goal", "/tags", "/steps/1/timeout_sec"]);
    assert_eq!(err.len(), 3);

    // A kitchen sink of problems across levels.
    let doc = with(valid_job(), "/job_id", json!("../../evil"));
    let doc = with(doc, "/bogus", json!(1));
    let doc = with(doc, "/steps/0/agent", json!("nope"));
    let doc = with(doc, "/steps/1/step_id", json!("01_plan"));
    let doc = with(
        doc,
        "/steps/1/input_artifacts",
        json!(["/abs", "ok.md", "../up"]),
    );
    let doc = with(doc, "/policy/network", json!("open"));
    refused_at(
        &doc,
        &[
            "/job_id",
            "/bogus",
            "/steps/0/agent",
            "/steps/1/step_id",
            "/steps/1/input_artifacts/0",
            "/steps/1/input_artifacts/2",
            "/policy/network",
        ],
    );
}

#[test]
fn messages_quote_at_most_a_short_prefix_of_the_input() {
    let long = "A".repeat(100_000);
    let doc = with(valid_job(), "/job_id", json!(long));
    let doc = with(doc, &format!("/{long}"), json!(1));
    let doc = with(doc, "/steps/0/agent", json!(long));
    let doc = with(doc, "/steps/0/on_failure", json!(long));
    let doc = with(doc, "/steps/0/input_artifacts", json!([format!("/{long}")]));
    let doc = with(doc, "/context_strategy", json!(long));
    let err = validate_job(&doc, AGENTS).expect_err("refused");
    assert_eq!(err.len(), 6, "{err}");
    for v in &err {
        assert!(
            v.message.len() < 400,
            "message too long: {} chars",
            v.message.len()
        );
        assert!(
            !v.message.contains(&"A".repeat(61)),
            "echoes input: {}",
            v.message
        );
    }
}

#[test]
fn messages_do_not_leak_validator_internals() {
    let doc = with(valid_job(), "/steps/0/timeout_sec", json!("10"));
    let err = validate_job(&doc, AGENTS).expect_err("refused");
    let text = err.to_string();
    for internal in [
        "invalid type",
        "serde",
        "jsonschema",
        "is not of type",
        "Error(",
    ] {
        assert!(!text.contains(internal), "{text}");
    }
    assert_eq!(
        text,
        "/steps/0/timeout_sec: must be a whole number from 1 to 3600, got a string"
    );
}

/// Values that break naive validators, dropped into every position of the
/// reference job: nothing may panic, and nothing hostile may pass.
#[test]
fn no_panic_on_any_field_replacement() {
    let deep = (0..200).fold(json!(0), |v, _| json!([v]));
    let hostile = [
        json!(null),
        json!(true),
        json!(-1),
        json!(0),
        json!(1.5),
        json!(1e308),
        json!(-1e308),
        json!(u64::MAX),
        json!(""),
        json!("\0"),
        json!("../../evil"),
        json!("x".repeat(70_000)),
        json!([]),
        json!({}),
        json!([null, 1, "a", {}]),
        json!({"": {"~/": []}}),
        deep,
    ];
    let pointers = all_pointers(&valid_job());
    assert!(pointers.len() > 50);
    for p in &pointers {
        for h in &hostile {
            let doc = with(valid_job(), p, h.clone());
            let _ = validate_job(&doc, AGENTS);
        }
    }
}

/// Every pointer into `v` except the root.
pub fn all_pointers(v: &Value) -> Vec<String> {
    fn walk(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    let p = contracts::validate::pointer_push(&at, k);
                    out.push(p.clone());
                    walk(c, p, out);
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter().enumerate() {
                    let p = format!("{at}/{i}");
                    out.push(p.clone());
                    walk(c, p, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, String::new(), &mut out);
    out
}
