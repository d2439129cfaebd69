//! `parse_payload_bytes`: the shared first step of every entry point turns
//! broken bytes into one clear violation, and never recurses deeply.

use crate::support::{AGENTS, pointers};
use contracts::{EntryPoint, NormalizeOptions, normalize, parse_payload_bytes, validate_job};
use serde_json::json;

#[track_caller]
fn refused(bytes: &[u8]) -> String {
    let err = parse_payload_bytes(bytes).expect_err("refused");
    assert_eq!(pointers(&err), [""], "{err}");
    err.0[0].message.clone()
}

#[test]
fn empty_input_is_refused() {
    for input in [&b""[..], b"   \n\t", b"\xEF\xBB\xBF"] {
        assert!(refused(input).contains("empty"));
    }
}

#[test]
fn invalid_utf8_names_the_byte_offset() {
    let m = refused(b"{\"goal\": \"\xff\"}");
    assert!(m.contains("UTF-8") && m.contains("byte offset 10"), "{m}");
    // Offsets count from the start of the input, BOM included.
    let m = refused(b"\xEF\xBB\xBF{\"goal\": \"\xc3\x28\"}");
    assert!(m.contains("byte offset 13"), "{m}");
}

#[test]
fn truncated_json_says_so_with_a_position() {
    let m = refused(b"{\"goal\": \"x\",\n \"tags\": [");
    assert!(m.contains("truncated") && m.contains("line 2"), "{m}");
    let m = refused(b"{\"goal\": \"unterminated");
    assert!(m.contains("truncated"), "{m}");
}

#[test]
fn malformed_json_gives_line_and_column() {
    for (input, line) in [
        (&b"{\"goal\": x}"[..], 1),
        (b"{\n\"goal\": 'x'\n}", 2),
        (b"{\"goal\": \"x\"} trailing", 1),
        (b"{\"goal\": \"x\",}", 1),
        (b"{goal: \"x\"}", 1),
        (b"{\"n\": 1e400}", 1),
        (b"{\"s\": \"\\ud800\"}", 1),
        (b"{\"s\": \"a\x01b\"}", 1),
    ] {
        let m = refused(input);
        assert!(m.starts_with("malformed JSON at line "), "{m}");
        assert!(m.contains(&format!("line {line}, column ")), "{m}");
    }
}

#[test]
fn duplicate_keys_are_refused_at_any_depth() {
    let m = refused(br#"{"goal": "a", "goal": "b"}"#);
    assert!(m.contains("duplicate key \"goal\""), "{m}");
    let m = refused(br#"{"goal": "a", "policy": {"sandbox": true, "sandbox": false}}"#);
    assert!(m.contains("duplicate key \"sandbox\""), "{m}");
    // Keys that differ only in escapes are the same key.
    refused(br#"{"goal": "a", "go\u0061l": "b"}"#);
}

#[test]
fn nesting_is_bounded_before_any_recursion() {
    let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
    parse_payload_bytes(ok.as_bytes()).expect("64 levels are fine");
    for depth in [65, 10_000, 1_000_000] {
        let deep = format!("{{\"a\": {}{}}}", "[".repeat(depth), "]".repeat(depth));
        let m = refused(deep.as_bytes());
        assert!(m.contains("nested deeper than 64"), "{m}");
    }
    // Unclosed brackets are refused too, without a stack overflow.
    refused("{".repeat(1_000_000).as_bytes());
}

#[test]
fn messages_never_echo_much_of_the_input() {
    let key = "k".repeat(10_000);
    let m = refused(format!("{{\"{key}\": 1, \"{key}\": 2}}").as_bytes());
    assert!(m.len() < 200, "{m}");
    let m = refused(format!("{{\"goal\": \"{}", "x".repeat(100_000)).as_bytes());
    assert!(m.len() < 200, "{m}");
}

#[test]
fn a_bom_is_ignored_and_any_json_value_parses() {
    let v = parse_payload_bytes(b"\xEF\xBB\xBF{\"goal\": \"g\"}").expect("bom");
    assert_eq!(v, json!({ "goal": "g" }));
    assert_eq!(parse_payload_bytes(b"[1]").expect("array"), json!([1]));
    // Non-objects are normalize's to refuse, with a pointer at the root.
    let err = normalize(
        parse_payload_bytes(b"[1]").expect("array"),
        &EntryPoint::Manual { file: "-".into() },
        &NormalizeOptions::default(),
    )
    .expect_err("not an object");
    assert_eq!(pointers(&err), [""]);
}

#[test]
fn huge_numbers_parse_and_are_refused_by_validation_not_by_a_panic() {
    let doc = crate::support::valid_job();
    let text = doc.to_string().replace(
        "\"timeout_sec\":120",
        "\"timeout_sec\":99999999999999999999",
    );
    assert!(text.contains("99999999999999999999"));
    let v = parse_payload_bytes(text.as_bytes()).expect("parses");
    let err = validate_job(&v, AGENTS).expect_err("out of range");
    assert_eq!(pointers(&err), ["/steps/0/timeout_sec"]);
}
