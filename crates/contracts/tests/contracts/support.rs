//! Shared helpers: a known-good job document, JSON Pointer edits on it, and
//! assertions over violation lists.

use contracts::{SchemaKind, Violations};
use serde_json::{Value, json};
use std::path::PathBuf;

/// The agents every test treats as known.
pub const AGENTS: &[&str] = contracts::BUILTIN_AGENTS;

/// The repository root (where `contracts/`, `examples/` and `docs/` live).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A complete job that passes every rule, using every field.
pub fn valid_job() -> Value {
    json!({
        "schema_version": "1.0",
        "job_id": "0123456789abcdef0123456789abcdef",
        "created_at": "2025-01-15T10:00:00Z",
        "source": { "type": "manual", "meta": { "file": "job.json" } },
        "goal": "Make the build green",
        "project_id": null,
        "workdir": ".",
        "callback_url": "https://hooks.example.com/orch",
        "tags": ["a", "b"],
        "metadata": { "k": "v" },
        "steps": [
            {
                "step_id": "01_plan",
                "agent": "opencode",
                "role": "planner",
                "prompt": "Plan it",
                "timeout_sec": 120,
                "max_retries": 1,
                "retry_backoff_sec": 2,
                "input_artifacts": [],
                "apply_patches_from": [],
                "allowed_tools": null,
                "on_failure": "stop"
            },
            {
                "step_id": "02_implement",
                "agent": "codex",
                "role": "implementer",
                "prompt": "Do it",
                "input_artifacts": ["steps/01_plan/report.md"],
                "apply_patches_from": ["steps/01_plan/patch.diff"],
                "allowed_tools": ["Read"],
                "on_failure": "goto:01_plan"
            }
        ],
        "context_window": [{ "role": "user", "content": "hi", "extra": 1 }],
        "context_strategy": "sliding",
        "artifact_handoff": "manual",
        "policy": {
            "sandbox": true,
            "network": "deny",
            "allowed_binaries": [],
            "requires_approval": false
        }
    })
}

/// `doc` with the value at `pointer` replaced (or inserted into its parent
/// object). Panics on a pointer whose parent does not exist: a test bug.
pub fn with(mut doc: Value, pointer: &str, v: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    let key = key.replace("~1", "/").replace("~0", "~");
    match doc.pointer_mut(parent).expect("parent exists") {
        Value::Object(m) => {
            m.insert(key, v);
        }
        Value::Array(a) => {
            let i: usize = key.parse().expect("array index");
            a[i] = v;
        }
        _ => panic!("parent of {pointer} is not a container"),
    }
    doc
}

/// `doc` without the field at `pointer`.
pub fn without(mut doc: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    if let Some(Value::Object(m)) = doc.pointer_mut(parent) {
        m.remove(key);
    }
    doc
}

/// The pointers of a violation list, in order.
pub fn pointers(v: &Violations) -> Vec<&str> {
    v.iter().map(|v| v.pointer.as_str()).collect()
}

/// Asserts `doc` is refused with violations at exactly `expected` (as a
/// set; order is document order and not asserted).
#[track_caller]
pub fn refused_at(doc: &Value, expected: &[&str]) -> Violations {
    let err = match contracts::validate_job(doc, AGENTS) {
        Ok(_) => panic!("accepted, expected violations at {expected:?}:\n{doc:#}"),
        Err(e) => e,
    };
    let mut got = pointers(&err);
    got.sort_unstable();
    let mut want = expected.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "violations:\n{err}");
    err
}

/// Whether the embedded JSON Schema of `kind` accepts `doc`.
pub fn schema_accepts(kind: SchemaKind, doc: &Value) -> bool {
    contracts::schema::validator(kind).is_valid(doc)
}
