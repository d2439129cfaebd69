//! Properties of payload intake over random JSON: `normalize` never panics
//! and only ever returns jobs that both validators accept; a valid job with
//! one value anywhere replaced by random JSON gets the same verdict from
//! the Rust validator and the JSON Schema (see `schema_agreement`).

use crate::schema_agreement::disagreement;
use crate::support::{AGENTS, schema_accepts, valid_job, with};
use crate::validate::all_pointers;
use contracts::{EntryPoint, NormalizeOptions, SchemaKind, normalize, validate_job};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        prop::sample::select(vec![0i64, 1, -1, 2, 3, 59, 60, 86_400, 100_000])
            .prop_map(Value::from),
        "[ -~]{0,24}".prop_map(Value::from),
        prop::sample::select(vec![
            "",
            ".",
            "..",
            "/etc",
            "01_plan",
            "goto:01_plan",
            "stop",
            "continue",
            "opencode",
            "codex",
            "claude",
            "manual",
            "auto",
            "sliding",
            "deny",
            "https://hooks.example.com/x",
            "http://127.0.0.1/x",
            "1.0",
            "2.0",
            "steps/01_plan/report.md",
            "2025-01-15T10:00:00Z",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// A payload shaped like a job: some real keys with random values.
fn payload() -> impl Strategy<Value = Value> {
    let keys = vec![
        "goal",
        "steps",
        "job_id",
        "schema_version",
        "policy",
        "tags",
        "metadata",
        "callback_url",
        "workdir",
        "project_id",
        "context_window",
        "context_strategy",
        "artifact_handoff",
        "created_at",
        "source",
    ];
    prop::collection::btree_map(prop::sample::select(keys), json_value(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

fn manual() -> EntryPoint {
    EntryPoint::Manual {
        file: "job.json".into(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn normalize_never_panics_and_returns_only_valid_jobs(
        p in prop_oneof![payload(), json_value()]
    ) {
        if let Ok(job) = normalize(p.clone(), &manual(), &NormalizeOptions::default()) {
            let doc = serde_json::to_value(&job).unwrap();
            prop_assert!(validate_job(&doc, AGENTS).is_ok(), "{p} -> {doc}");
            prop_assert!(schema_accepts(SchemaKind::Job, &doc), "{p} -> {doc}");
        }
    }

    #[test]
    fn the_validator_and_the_schema_agree_on_one_random_change(
        pick in any::<prop::sample::Index>(),
        v in json_value(),
    ) {
        let base = valid_job();
        let ptrs = all_pointers(&base);
        let ptr = pick.get(&ptrs);
        let doc = with(base.clone(), ptr, v);
        if let Some(d) = disagreement(&doc) {
            prop_assert!(false, "at {}: {}", ptr, d);
        }
    }
}
