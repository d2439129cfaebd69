//! The Rust checks of `validate_job` and `contracts/job.schema.json` must
//! agree on accept/reject for every document. A corpus — every field of a
//! reference job replaced by a spread of values, every field removed, plus
//! hand-picked edge cases of each string rule — runs through both.
//! Cross-field rules that JSON Schema cannot state (unique step ids, goto
//! targets, known agents) are exempt: their violations are filtered out of
//! the Rust verdict.

use crate::support::{AGENTS, schema_accepts, valid_job, with, without};
use crate::validate::all_pointers;
use contracts::{SchemaKind, validate_job};
use serde_json::{Value, json};

/// Violations JSON Schema cannot express.
fn is_cross_field(message: &str) -> bool {
    message.starts_with("duplicate step id")
        || message.starts_with("goto target")
        || message.starts_with("unknown agent")
}

/// `None` when both agree, else a description of the disagreement.
pub fn disagreement(doc: &Value) -> Option<String> {
    let schema_ok = schema_accepts(SchemaKind::Job, doc);
    let rust = validate_job(doc, AGENTS);
    let rust_violations: Vec<String> = match &rust {
        Ok(_) => Vec::new(),
        Err(v) => v
            .iter()
            .filter(|v| !is_cross_field(&v.message))
            .map(|v| format!("{}: {}", v.pointer, v.message))
            .collect(),
    };
    let rust_ok = rust_violations.is_empty();
    if schema_ok == rust_ok {
        return None;
    }
    let schema_errors: Vec<String> = contracts::schema::validator(SchemaKind::Job)
        .iter_errors(doc)
        .map(|e| format!("{}: {}", e.instance_path(), e.masked()))
        .collect();
    let mut shown = doc.to_string();
    if shown.len() > 600 {
        shown = format!("{}…", shown.chars().take(600).collect::<String>());
    }
    Some(format!(
        "schema {} / rust {}\n  doc: {shown}\n  schema: {schema_errors:?}\n  rust: {rust_violations:?}",
        if schema_ok { "accepts" } else { "rejects" },
        if rust_ok { "accepts" } else { "rejects" },
    ))
}

fn assert_agreement(docs: impl IntoIterator<Item = Value>) -> usize {
    let mut n = 0;
    let mut problems = Vec::new();
    for doc in docs {
        n += 1;
        if let Some(p) = disagreement(&doc) {
            problems.push(p);
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {n} documents disagree:\n{}",
        problems.len(),
        problems.join("\n")
    );
    n
}

/// A spread of values covering every type and the edges of every range.
fn spread() -> Vec<Value> {
    vec![
        json!(null),
        json!(true),
        json!(false),
        json!(0),
        json!(1),
        json!(-1),
        json!(1.0),
        json!(1.5),
        json!(2),
        json!(10),
        json!(11),
        json!(60),
        json!(61),
        json!(3600),
        json!(3601),
        json!(1e30),
        json!(u64::MAX),
        json!(""),
        json!(" "),
        json!("x"),
        json!("1.0"),
        json!("abcdefgh"),
        json!("stop"),
        json!("goto:01_plan"),
        json!("goto:nope"),
        json!("../x"),
        json!("a/b"),
        json!("steps/01_plan/report.md"),
        json!("http://a"),
        json!("2025-01-15T10:00:00Z"),
        json!("manual"),
        json!("webhook"),
        json!("deny"),
        json!("allow"),
        json!("sliding"),
        json!("patch_first"),
        json!("1.0"),
        json!("r".repeat(129)),
        json!("g".repeat(5001)),
        json!([]),
        json!(["x"]),
        json!([1]),
        json!([""]),
        json!(["../x"]),
        json!({}),
        json!({ "role": "user", "content": "c" }),
        json!({ "type": "cron" }),
        json!({ "x": 1 }),
    ]
}

#[test]
fn schema_and_rust_agree_on_field_replacements() {
    let base = valid_job();
    let values = spread();
    let docs = all_pointers(&base)
        .into_iter()
        .flat_map(|p| {
            let base = base.clone();
            values
                .iter()
                .map(move |v| with(base.clone(), &p, v.clone()))
        })
        .collect::<Vec<_>>();
    let n = assert_agreement(docs);
    assert!(n > 2000, "corpus too small: {n}");
}

#[test]
fn schema_and_rust_agree_on_field_removals() {
    let base = valid_job();
    assert_agreement(all_pointers(&base).iter().map(|p| without(base.clone(), p)));
}

#[test]
fn schema_and_rust_agree_on_string_rules() {
    let cases: &[(&str, &[&str])] = &[
        (
            "/created_at",
            &[
                "2025-01-15T10:00:00Z",
                "2025-01-15t10:00:00z",
                "2025-01-15T10:00:00.123456789123+05:30",
                "2024-02-29T23:59:59-00:00",
                "2023-02-29T00:00:00Z",
                "2025-04-31T00:00:00Z",
                "1998-12-31T23:59:60Z",
                "1998-12-31T15:59:60-08:00",
                "2025-01-15T10:00:60Z",
                "2025-01-15T24:00:00Z",
                "2025-01-15T10:60:00Z",
                "2025-01-15 10:00:00Z",
                "2025-01-15T10:00:00",
                "2025-01-15T10:00Z",
                "2025-01-15T10:00:00+0100",
                "2025-01-15T10:00:00+24:00",
                "2025-01-15T10:00:00.Z",
                "2025-1-15T10:00:00Z",
                "0000-01-01T00:00:00Z",
                "9999-12-31T23:59:59Z",
                "9998-12-31T23:59:59-23:59",
                "0000-01-01T00:00:00+23:59",
                "+2025-01-15T10:00:00Z",
                "２０２５-01-15T10:00:00Z",
                "",
            ],
        ),
        (
            "/callback_url",
            &[
                "http://a",
                "https://example.com:8443/x?y=1#z",
                "HTTP://EXAMPLE.COM",
                "https://user:pw@example.com/",
                "https://@example.com",
                "http://[::1]:8080/",
                "http://[::1",
                "http://[]/",
                "http://example.com:",
                "http://example.com:123456",
                "http://a@b@c",
                "http://",
                "http:///x",
                "http://:80",
                "https//example.com",
                "ftp://example.com",
                "http://exa mple.com",
                "http://example.com/ä",
                "http://example.com/\n",
                "http://example.com/<script>",
                "http://example.com/a%20b",
                "mailto:x@example.com",
            ],
        ),
        (
            "/steps/1/input_artifacts/0",
            &[
                "a",
                "steps/01_plan/report.md",
                ".hidden",
                "..a",
                "a..",
                "...",
                "a/.../b",
                "a/./b",
                "./a",
                "../a",
                "a/..",
                "/a",
                "a//b",
                "a/",
                "a\\b",
                "a\u{0}b",
                "a\u{1f}b",
                "a\u{7f}b",
                "a\u{85}b",
                "a\u{a0}b",
                "ü/ß.md",
                "a b/c d.md",
                "",
            ],
        ),
        (
            "/job_id",
            &[
                "0123456789abcdef0123456789abcdef",
                "abcdefgh",
                "abcdefg",
                "a.b.c.d.e",
                "abcdefg.",
                ".abcdefgh",
                "abc..defgh",
                "ABC_def-123.x",
                "abcdefg/h",
                "abcdefgh ",
                "abcdéfgh",
            ],
        ),
        (
            "/goal",
            &[
                "x",
                " x ",
                "",
                " ",
                "\t\n\r\u{b}\u{c}",
                "\u{85}",
                "\u{a0}\u{1680}\u{2000}\u{200a}\u{2028}\u{2029}\u{202f}\u{205f}\u{3000}",
                "\u{feff}",
                "\u{200b}",
                "\u{200b}\u{200c}\u{200d}\u{2060}",
                "\u{202e}\u{1b}",
                "\u{7f}\u{9f}\u{ad}",
                "\u{200b}x\u{200b}",
                "\u{1b}[2Jx",
            ],
        ),
        ("/project_id", &["p", "P.1_-x", "_p", ".p", "p/q", "", "ü"]),
        (
            "/steps/0/agent",
            &["opencode", "a.b", "_a", "a/b", "", "ü", "gemini"],
        ),
        (
            "/steps/1/on_failure",
            &[
                "stop",
                "continue",
                "ask_human",
                "goto:01_plan",
                "goto:nowhere",
                "goto:",
                "goto:a.b",
                "Stop",
                "stop ",
            ],
        ),
        (
            "/workdir",
            &[
                ".",
                "/abs/path",
                "a\u{0}b",
                "",
                "\u{1}",
                "/",
                "//",
                "/etc",
                "/etc/",
                "/etc/ssl",
                "/home",
                "/home/me/src",
                "/usr/local/bin",
                "/tmp",
                "/tmp/x",
                "/etcetera",
            ],
        ),
        ("/schema_version", &["1.0", "1", "1.0.0", ""]),
    ];
    let docs = cases
        .iter()
        .flat_map(|(p, values)| values.iter().map(move |v| with(valid_job(), p, json!(v))));
    assert_agreement(docs);
    let long_fields: &[(&str, usize, usize)] = &[
        ("/goal", 5000, 5001),
        ("/workdir", 4096, 4097),
        ("/tags/0", 256, 257),
        ("/steps/0/role", 128, 129),
        ("/steps/0/prompt", 20_000, 20_001),
    ];
    assert_agreement(
        long_fields.iter().flat_map(|&(p, ok, bad)| {
            [ok, bad].map(|n| with(valid_job(), p, json!("é".repeat(n))))
        }),
    );
}

#[test]
fn schema_and_rust_agree_on_list_bounds() {
    let docs = [99usize, 100, 101].into_iter().flat_map(|n| {
        let names: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
        [
            with(valid_job(), "/tags", json!(names)),
            with(valid_job(), "/policy/allowed_binaries", json!(names)),
            with(valid_job(), "/steps/0/allowed_tools", json!(names)),
            with(valid_job(), "/steps/0/input_artifacts", json!(names)),
            with(valid_job(), "/steps/0/apply_patches_from", json!(names)),
            with(
                valid_job(),
                "/steps",
                json!(
                    (0..n)
                        .map(|i| json!({"step_id": format!("s{i}"), "agent": "codex", "role": "r", "prompt": "p"}))
                        .collect::<Vec<_>>()
                ),
            ),
        ]
    });
    assert_agreement(docs);
}

#[test]
fn schema_and_rust_agree_on_unknown_keys_at_every_closed_level() {
    // The reference job uses every known key of the job, a step, the policy
    // and the source, so both sides know the same keys; one more is refused.
    let docs = [
        "/zzz",
        "/steps/0/zzz",
        "/steps/1/model",
        "/policy/zzz",
        "/source/zzz",
    ]
    .into_iter()
    .map(|p| with(valid_job(), p, json!(1)));
    assert_agreement(docs);
    for p in ["/zzz", "/steps/0/zzz", "/policy/zzz", "/source/zzz"] {
        assert!(
            !schema_accepts(SchemaKind::Job, &with(valid_job(), p, json!(1))),
            "{p}"
        );
    }
    // Messages and context entries are open: extra keys are kept.
    assert_agreement([with(valid_job(), "/context_window/0/name", json!("n"))]);
    assert!(schema_accepts(
        SchemaKind::Job,
        &with(valid_job(), "/metadata/any", json!({}))
    ));
}
