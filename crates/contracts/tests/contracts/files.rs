//! Every document on disk that belongs to the contracts: the schemas in
//! `contracts/`, the prompt templates, every example under `examples/`, and
//! the frozen fixtures of documents the Python MVP wrote, which must load
//! forever.

use crate::support::{AGENTS, repo_root, schema_accepts};
use contracts::normalize::{DEFAULT_PIPELINE, GOAL_PLACEHOLDER};
use contracts::schema::{SchemaKind, check};
use contracts::{
    ContextDoc, EntryPoint, JobState, NormalizeOptions, ResultDoc, ResultKind, normalize,
    parse_payload_bytes, validate_job,
};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// The `*.json` files of a directory, sorted; fails on an empty directory
/// so a moved folder cannot silently skip its test.
fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no JSON files in {}", dir.display());
    files
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_payload_bytes(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_schema_compiles_and_is_valid_draft_2020_12() {
    let dir = repo_root().join("contracts");
    let on_disk = json_files(&dir);
    assert_eq!(
        on_disk.len(),
        SchemaKind::ALL.len(),
        "a schema file is not embedded"
    );
    for kind in SchemaKind::ALL {
        let path = dir.join(kind.file_name());
        let text = std::fs::read_to_string(&path).expect("schema file");
        assert_eq!(
            text,
            kind.text(),
            "{} differs from the embedded copy",
            kind.file_name()
        );
        let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema",
            "{}",
            kind.file_name()
        );
        jsonschema::meta::validate(&schema).unwrap_or_else(|e| panic!("{}: {e}", kind.file_name()));
        let _ = contracts::schema::validator(kind);
    }
}

#[test]
fn prompt_templates_are_embedded_and_contain_the_goal() {
    let dir = repo_root().join("contracts/prompts/pipeline");
    for step in DEFAULT_PIPELINE {
        let text = std::fs::read_to_string(dir.join(step.template_file)).expect("template");
        assert_eq!(text, step.embedded_template, "{}", step.template_file);
        assert!(text.contains(GOAL_PLACEHOLDER), "{}", step.template_file);
    }
}

#[test]
fn example_jobs_normalise_as_manual_submissions() {
    let dir = repo_root().join("examples/jobs");
    let files = json_files(&dir);
    for path in &files {
        let entry = EntryPoint::Manual {
            file: path.display().to_string(),
        };
        let job = normalize(read_json(path), &entry, &NormalizeOptions::default())
            .unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        check(
            SchemaKind::Job,
            &serde_json::to_value(&job).expect("serialises"),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let names: Vec<_> = files
        .iter()
        .filter_map(|p| p.file_name()?.to_str())
        .collect();
    for expected in [
        "simple_job.json",
        "custom_pipeline.json",
        "approval_required.json",
    ] {
        assert!(names.contains(&expected), "missing example {expected}");
    }
    // The complete custom pipeline is a valid job document by itself.
    validate_job(&read_json(&dir.join("custom_pipeline.json")), AGENTS).expect("complete job");
    let approval = normalize(
        read_json(&dir.join("approval_required.json")),
        &EntryPoint::Manual { file: "a".into() },
        &NormalizeOptions::default(),
    )
    .expect("valid");
    assert!(approval.policy.requires_approval);
}

#[test]
fn example_webhook_payloads_normalise_as_webhook_deliveries() {
    let dir = repo_root().join("examples/webhook_payloads");
    for path in json_files(&dir) {
        let entry = EntryPoint::Webhook {
            remote: "127.0.0.1".into(),
            delivery: None,
        };
        normalize(read_json(&path), &entry, &NormalizeOptions::default())
            .unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
    }
}

#[test]
fn example_schedules_are_valid_schedules_whose_jobs_normalise() {
    let dir = repo_root().join("examples/schedules");
    for path in json_files(&dir) {
        let bytes = std::fs::read(&path).unwrap();
        let s = contracts::schedule::parse_schedule(&bytes)
            .unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        s.check(&NormalizeOptions::default())
            .unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        let slot: jiff::Timestamp = "2025-01-15T03:00:00Z".parse().unwrap();
        let job = s.job(slot, &NormalizeOptions::default()).unwrap();
        assert_eq!(
            job.job_id.as_str(),
            format!("cron-{}-20250115T030000Z", s.id)
        );
        assert!(job.tags.contains(&format!("schedule:{}", s.id)));
        assert_eq!(job.metadata["schedule_slot"], "2025-01-15T03:00:00Z");
    }
}

fn fail<T>(name: &str, e: impl std::fmt::Display) -> T {
    panic!("{name}: {e}")
}

fn fixtures() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mvp");
    json_files(&dir)
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            (name, read_json(&p))
        })
        .collect()
}

#[test]
fn mvp_fixtures_keep_loading() {
    let mut seen = [0usize; 4];
    for (name, doc) in fixtures() {
        if name.starts_with("job_") {
            seen[0] += 1;
            check(SchemaKind::Job, &doc).unwrap_or_else(|e| fail(&name, e));
            let job = validate_job(&doc, AGENTS).unwrap_or_else(|e| fail(&name, e));
            let back = serde_json::to_value(&job).expect("serialises");
            check(SchemaKind::Job, &back).unwrap_or_else(|e| fail(&name, e));
        } else if name.starts_with("result_") {
            seen[1] += 1;
            check(SchemaKind::Result, &doc).unwrap_or_else(|e| fail(&name, e));
            let r: ResultDoc =
                serde_json::from_value(doc.clone()).unwrap_or_else(|e| fail(&name, e));
            let back = serde_json::to_value(&r).expect("serialises");
            check(SchemaKind::Result, &back).unwrap_or_else(|e| fail(&name, e));
            if r.kind == ResultKind::Job {
                assert!(r.steps.as_ref().is_some_and(|s| !s.is_empty()), "{name}");
            }
        } else if name.starts_with("state_") {
            seen[2] += 1;
            check(SchemaKind::State, &doc).unwrap_or_else(|e| fail(&name, e));
            let s: JobState = serde_json::from_value(doc).unwrap_or_else(|e| fail(&name, e));
            check(SchemaKind::State, &serde_json::to_value(&s).expect("ser"))
                .unwrap_or_else(|e| fail(&name, e));
        } else if name.starts_with("context_") {
            seen[3] += 1;
            check(SchemaKind::Context, &doc).unwrap_or_else(|e| fail(&name, e));
            let c: ContextDoc = serde_json::from_value(doc).unwrap_or_else(|e| fail(&name, e));
            check(SchemaKind::Context, &serde_json::to_value(&c).expect("ser"))
                .unwrap_or_else(|e| fail(&name, e));
        } else {
            panic!("{name}: fixture names start with job_, result_, state_ or context_");
        }
    }
    assert!(
        seen.iter().all(|&n| n > 0),
        "a fixture kind is missing: {seen:?}"
    );
}

fn step_result() -> Value {
    json!({
        "schema_version": "1.0",
        "kind": "step",
        "job_id": "0123456789abcdef0123456789abcdef",
        "step_id": "01_plan",
        "agent": "opencode",
        "role": "planner",
        "status": "success",
        "attempts": 1,
        "started_at": "2025-01-15T10:00:00Z",
        "finished_at": "2025-01-15T10:00:01Z",
        "summary": "ok",
        "change_status": null,
        "secrets_check": "passed",
        "artifacts": {
            "report_md": "steps/01_plan/report.md",
            "patch_diff": "steps/01_plan/patch.diff",
            "logs_txt": "steps/01_plan/logs.txt",
            "result_json": "steps/01_plan/result.json"
        },
        "metrics": { "duration_ms": 1000, "cost_usd": 0.0, "tokens_in": 0, "tokens_out": 0 },
        "error": null
    })
}

fn job_result() -> Value {
    let mut j = step_result();
    let obj = j.as_object_mut().expect("object");
    for k in ["step_id", "agent", "role"] {
        obj.remove(k);
    }
    obj.insert("kind".into(), json!("job"));
    obj.insert("steps".into(), json!([step_result()]));
    j
}

#[test]
fn result_schema_separates_step_and_job_results() {
    assert!(schema_accepts(SchemaKind::Result, &step_result()));
    assert!(schema_accepts(SchemaKind::Result, &job_result()));
    let set = |mut v: Value, k: &str, x: Value| {
        v[k] = x;
        v
    };
    let drop = |mut v: Value, k: &str| {
        v.as_object_mut().expect("object").remove(k);
        v
    };
    let bad = [
        (
            "job result with step_id",
            set(job_result(), "step_id", json!("01_plan")),
        ),
        (
            "job result with agent",
            set(job_result(), "agent", json!("codex")),
        ),
        (
            "job result with role",
            set(job_result(), "role", json!("r")),
        ),
        ("job result without steps", drop(job_result(), "steps")),
        (
            "job result with a job result inside",
            set(job_result(), "steps", json!([job_result()])),
        ),
        ("step result without agent", drop(step_result(), "agent")),
        (
            "step result without step_id",
            drop(step_result(), "step_id"),
        ),
        ("step result without role", drop(step_result(), "role")),
        (
            "step result with steps",
            set(step_result(), "steps", json!([])),
        ),
        ("attempts 0", set(step_result(), "attempts", json!(0))),
        ("attempts 51", set(step_result(), "attempts", json!(51))),
        ("unknown status", set(step_result(), "status", json!("ok"))),
        ("unknown kind", set(step_result(), "kind", json!("both"))),
        (
            "bad change_status",
            set(step_result(), "change_status", json!("maybe")),
        ),
        (
            "bad secrets_check",
            set(step_result(), "secrets_check", json!(true)),
        ),
        (
            "missing artifact path",
            set(step_result(), "artifacts", json!({ "report_md": "r" })),
        ),
        (
            "error without code",
            set(step_result(), "error", json!({ "message": "m" })),
        ),
        (
            "negative duration",
            set(step_result(), "metrics", json!({ "duration_ms": -1 })),
        ),
        (
            "schema 2.0",
            set(step_result(), "schema_version", json!("2.0")),
        ),
        (
            "traversal job id",
            set(step_result(), "job_id", json!("../../evil")),
        ),
    ];
    for (what, doc) in bad {
        assert!(
            !schema_accepts(SchemaKind::Result, &doc),
            "accepted: {what}"
        );
        let err = check(SchemaKind::Result, &doc).expect_err(what);
        assert!(!err.is_empty());
    }
    // Optional and extra fields of newer writers still validate.
    let doc = set(
        step_result(),
        "metrics",
        json!({ "duration_ms": 5, "cost_usd": null, "session_id": "s" }),
    );
    assert!(schema_accepts(SchemaKind::Result, &doc));
    let doc = drop(
        drop(drop(step_result(), "error"), "change_status"),
        "secrets_check",
    );
    assert!(schema_accepts(SchemaKind::Result, &doc));
    let r: ResultDoc = serde_json::from_value(doc).expect("optional fields default");
    assert!(r.error.is_none());
}

#[test]
fn typed_results_serialise_into_schema_valid_documents() {
    for doc in [step_result(), job_result()] {
        let r: ResultDoc = serde_json::from_value(doc.clone()).expect("loads");
        let back = serde_json::to_value(&r).expect("serialises");
        check(SchemaKind::Result, &back).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, doc, "round trip");
    }
}

#[test]
fn schema_check_messages_do_not_quote_values() {
    let secret = "sk-THIS-IS-A-SECRET-VALUE-0123456789";
    let doc = json!({ "strategy": secret, "messages": secret, "updated_at": 1 });
    let err = check(SchemaKind::Context, &doc).expect_err("invalid");
    assert!(err.len() >= 3, "{err}");
    assert!(!err.to_string().contains(secret), "{err}");
    assert!(
        err.has_pointer("/strategy") && err.has_pointer("/messages"),
        "{err}"
    );
}
