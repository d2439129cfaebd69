//! Payload intake (`contracts::normalize`): the input bytes go through
//! `parse_payload_bytes` (what `orch submit` and the gateway do with a
//! body), then `normalize` from a trusted and an untrusted entry point.
//! Nothing panics; every job `normalize` returns passes both the Rust
//! validator and `contracts/job.schema.json`; and on the parsed document
//! itself the Rust validator and the JSON Schema give the same verdict
//! (cross-field rules JSON Schema cannot state are exempt).

#![no_main]

use contracts::{
    EntryPoint, NormalizeOptions, SchemaKind, normalize, parse_payload_bytes, validate_job,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const AGENTS: &[&str] = contracts::BUILTIN_AGENTS;

/// Violations JSON Schema cannot express.
fn is_cross_field(message: &str) -> bool {
    message.starts_with("duplicate step id")
        || message.starts_with("goto target")
        || message.starts_with("unknown agent")
}

fn schema_accepts(doc: &Value) -> bool {
    contracts::schema::validator(SchemaKind::Job).is_valid(doc)
}

fn rust_accepts(doc: &Value) -> bool {
    match validate_job(doc, AGENTS) {
        Ok(_) => true,
        Err(v) => v.iter().all(|v| is_cross_field(&v.message)),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = parse_payload_bytes(data) else {
        return;
    };

    let schema = schema_accepts(&payload);
    let rust = rust_accepts(&payload);
    if schema != rust {
        let errors: Vec<String> = contracts::schema::validator(SchemaKind::Job)
            .iter_errors(&payload)
            .map(|e| format!("{}: {}", e.instance_path(), e.masked()))
            .collect();
        let rust_errors = validate_job(&payload, AGENTS).err().map(|v| v.to_string());
        panic!(
            "schema {} / rust {}\n  doc: {payload}\n  schema: {errors:?}\n  rust: {rust_errors:?}",
            if schema { "accepts" } else { "rejects" },
            if rust { "accepts" } else { "rejects" },
        );
    }

    let entries = [
        EntryPoint::Manual {
            file: "job.json".into(),
        },
        EntryPoint::Webhook {
            remote: "127.0.0.1".into(),
            delivery: Some("d-1".into()),
        },
    ];
    for entry in &entries {
        if let Ok(job) = normalize(payload.clone(), entry, &NormalizeOptions::default()) {
            let doc = serde_json::to_value(&job).expect("a job serialises");
            if let Err(v) = validate_job(&doc, AGENTS) {
                panic!(
                    "{entry:?}: normalize returned an invalid job: {v}\n  in: {payload}\n  out: {doc}"
                );
            }
            assert!(
                schema_accepts(&doc),
                "{entry:?}: the schema rejects a normalised job\n  in: {payload}\n  out: {doc}"
            );
        }
    }
});
