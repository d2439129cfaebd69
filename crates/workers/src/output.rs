//! Parsing what agent CLIs print (SPEC §6) into one [`Parsed`] shape, and
//! classifying failures as retryable or fatal.
//!
//! - `claude-json`: Claude Code's `-p --output-format json`, a final object
//!   (`type: result`) with `result`, `is_error`, `subtype`, `session_id`,
//!   `num_turns`, `total_cost_usd`, `usage`; with `--verbose` the CLI prints
//!   a JSON array of every message instead, whose last `result` element is
//!   the one that counts.
//! - `codex-jsonl`: `codex exec --json`, one event per line: the result is
//!   the last `item.completed` of type `agent_message`, tokens come from
//!   `turn.completed.usage`, failures from `turn.failed` and `error`, the
//!   session is `thread.started.thread_id`. Codex prints no cost; a price
//!   table fills it in.
//! - `opencode-jsonl`: `opencode run --format json`: the result is the last
//!   `text` part, cost is the sum of `step_finish.part.cost` and tokens the
//!   sum of `step_finish.part.tokens`; failures are `error` events.
//! - `text`: stdout is the result (custom agents that print prose).
//!
//! Lines that are not JSON are skipped (CLIs print banners and warnings),
//! and a transcript cut by `MAX_SUBPROCESS_OUTPUT_CHARS` is parsed from its
//! head and tail (see `exec::Captured::for_parsing`).

use serde::Deserialize;
use serde_json::{Map, Value, json};

/// How an agent's stdout is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OutputFormat {
    #[serde(rename = "claude-json")]
    ClaudeJson,
    #[serde(rename = "codex-jsonl")]
    CodexJsonl,
    #[serde(rename = "opencode-jsonl")]
    OpencodeJsonl,
    #[serde(rename = "text")]
    Text,
}

impl OutputFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClaudeJson => "claude-json",
            Self::CodexJsonl => "codex-jsonl",
            Self::OpencodeJsonl => "opencode-jsonl",
            Self::Text => "text",
        }
    }
}

/// Retryable or fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Rate limits, network errors, 5xx, usage windows, crashes.
    Retryable,
    /// Bad arguments, authentication, budget, max turns.
    Fatal,
}

/// What an agent reported, in one shape for every CLI.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// The agent's final message.
    pub result: Option<String>,
    /// The CLI said the run failed, with this message.
    pub error: Option<String>,
    /// A machine-readable failure kind when the CLI gives one
    /// (`error_max_turns`, an HTTP status, ...).
    pub error_kind: Option<String>,
    pub session_id: Option<String>,
    pub num_turns: Option<u64>,
    pub cost_usd: Option<f64>,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    /// Cached input tokens (part of `tokens_in`), for price tables.
    pub tokens_cached_in: Option<u64>,
    /// The CLI's own duration, when it reports one.
    pub agent_duration_ms: Option<u64>,
    /// Remarks for the step's logs (skipped lines, missing fields).
    pub notes: Vec<String>,
}

impl Parsed {
    /// Metrics keys this parse contributes (`cost_usd`, `tokens_in`, ...).
    pub fn metrics(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(c) = self.cost_usd {
            m.insert("cost_usd".into(), json!(c));
        }
        if let Some(t) = self.tokens_in {
            m.insert("tokens_in".into(), json!(t));
        }
        if let Some(t) = self.tokens_out {
            m.insert("tokens_out".into(), json!(t));
        }
        if let Some(t) = self.tokens_cached_in {
            m.insert("tokens_cached_in".into(), json!(t));
        }
        if let Some(s) = &self.session_id {
            m.insert("session_id".into(), json!(s));
        }
        if let Some(n) = self.num_turns {
            m.insert("num_turns".into(), json!(n));
        }
        if let Some(d) = self.agent_duration_ms {
            m.insert("agent_duration_ms".into(), json!(d));
        }
        m
    }
}

/// Parses stdout in `format`.
pub fn parse(format: OutputFormat, stdout: &[u8]) -> Parsed {
    let text = String::from_utf8_lossy(stdout);
    match format {
        OutputFormat::ClaudeJson => parse_claude(&text),
        OutputFormat::CodexJsonl => parse_codex(&text),
        OutputFormat::OpencodeJsonl => parse_opencode(&text),
        OutputFormat::Text => {
            let t = text.trim();
            Parsed {
                result: (!t.is_empty()).then(|| t.to_owned()),
                ..Parsed::default()
            }
        }
    }
}

fn u64_of(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

fn str_of(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// JSON values in `text`: the whole text when it parses, else each line
/// that does.
fn json_values(text: &str, notes: &mut Vec<String>) -> Vec<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(text.trim()) {
        return vec![v];
    }
    let mut out = Vec::new();
    let mut skipped = 0usize;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(v) => out.push(v),
            Err(_) => skipped += 1,
        }
    }
    if skipped > 0 {
        notes.push(format!(
            "{skipped} stdout line(s) were not JSON and were skipped"
        ));
    }
    out
}

fn parse_claude(text: &str) -> Parsed {
    let mut p = Parsed::default();
    let values = json_values(text, &mut p.notes);
    // The final object, the last `result` element of the array form, or the
    // last result line of a stream.
    let mut result_obj: Option<Value> = None;
    for v in values {
        match v {
            Value::Array(items) => {
                for item in items {
                    if item.get("type").and_then(Value::as_str) == Some("result") {
                        result_obj = Some(item);
                    } else if p.session_id.is_none() {
                        p.session_id = str_of(&item, "session_id");
                    }
                }
            }
            v if v.get("type").and_then(Value::as_str) == Some("result") => result_obj = Some(v),
            v if v.get("result").is_some() || v.get("is_error").is_some() => result_obj = Some(v),
            _ => {}
        }
    }
    let Some(r) = result_obj else {
        p.notes.push("no Claude result object found".into());
        return p;
    };
    p.session_id = str_of(&r, "session_id").or(p.session_id);
    p.num_turns = u64_of(&r, "num_turns");
    p.cost_usd = r.get("total_cost_usd").and_then(Value::as_f64);
    p.agent_duration_ms = u64_of(&r, "duration_ms");
    if let Some(u) = r.get("usage") {
        let input = u64_of(u, "input_tokens").unwrap_or(0);
        let cache_create = u64_of(u, "cache_creation_input_tokens").unwrap_or(0);
        let cache_read = u64_of(u, "cache_read_input_tokens").unwrap_or(0);
        p.tokens_in = Some(input + cache_create + cache_read);
        p.tokens_cached_in = Some(cache_read);
        p.tokens_out = u64_of(u, "output_tokens");
    }
    let subtype = str_of(&r, "subtype").unwrap_or_default();
    let is_error = r.get("is_error").and_then(Value::as_bool).unwrap_or(false);
    let result = str_of(&r, "result");
    if is_error || subtype.starts_with("error") {
        p.error_kind = Some(if subtype.is_empty() {
            "error".into()
        } else {
            subtype.clone()
        });
        p.error = Some(
            result
                .clone()
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| format!("Claude Code reported {subtype}")),
        );
    } else {
        p.result = result.filter(|s| !s.trim().is_empty());
    }
    p
}

fn parse_codex(text: &str) -> Parsed {
    let mut p = Parsed::default();
    let mut tokens_in = 0u64;
    let mut tokens_out = 0u64;
    let mut cached = 0u64;
    let mut saw_usage = false;
    let mut turns = 0u64;
    for v in json_values(text, &mut p.notes) {
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "thread.started" => p.session_id = str_of(&v, "thread_id").or(p.session_id),
            "turn.completed" => {
                turns += 1;
                if let Some(u) = v.get("usage") {
                    saw_usage = true;
                    tokens_in += u64_of(u, "input_tokens").unwrap_or(0);
                    cached += u64_of(u, "cached_input_tokens").unwrap_or(0);
                    tokens_out += u64_of(u, "output_tokens").unwrap_or(0);
                }
            }
            "turn.failed" => {
                turns += 1;
                let msg = v
                    .get("error")
                    .and_then(|e| str_of(e, "message"))
                    .unwrap_or_else(|| "turn failed".into());
                p.error = Some(msg);
                p.error_kind = Some("turn.failed".into());
            }
            "error" => {
                let msg = str_of(&v, "message").unwrap_or_else(|| "error".into());
                if p.error.is_none() {
                    p.error_kind = Some("error".into());
                }
                p.error = Some(msg);
            }
            "item.completed" => {
                if let Some(item) = v.get("item") {
                    let kind = str_of(item, "type").or_else(|| str_of(item, "item_type"));
                    if matches!(kind.as_deref(), Some("agent_message" | "assistant_message")) {
                        p.result = str_of(item, "text").filter(|s| !s.trim().is_empty());
                    }
                }
            }
            _ => {}
        }
    }
    if saw_usage {
        p.tokens_in = Some(tokens_in);
        p.tokens_out = Some(tokens_out);
        p.tokens_cached_in = Some(cached);
    }
    if turns > 0 {
        p.num_turns = Some(turns);
    }
    p
}

fn parse_opencode(text: &str) -> Parsed {
    let mut p = Parsed::default();
    let mut cost = 0.0f64;
    let mut saw_finish = false;
    let (mut tin, mut tout, mut tcached) = (0u64, 0u64, 0u64);
    let mut steps = 0u64;
    for v in json_values(text, &mut p.notes) {
        if p.session_id.is_none() {
            p.session_id = str_of(&v, "sessionID");
        }
        let part = v.get("part").cloned().unwrap_or(Value::Null);
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "text" => {
                if let Some(t) = str_of(&part, "text").filter(|s| !s.trim().is_empty()) {
                    p.result = Some(t);
                }
            }
            "step_finish" => {
                saw_finish = true;
                steps += 1;
                cost += part.get("cost").and_then(Value::as_f64).unwrap_or(0.0);
                if let Some(t) = part.get("tokens") {
                    let cache = t.get("cache").cloned().unwrap_or(Value::Null);
                    let read = u64_of(&cache, "read").unwrap_or(0);
                    let write = u64_of(&cache, "write").unwrap_or(0);
                    tin += u64_of(t, "input").unwrap_or(0) + read + write;
                    tcached += read;
                    tout += u64_of(t, "output").unwrap_or(0) + u64_of(t, "reasoning").unwrap_or(0);
                }
            }
            "error" => {
                let e = v.get("error").cloned().unwrap_or(Value::Null);
                let data = e.get("data").cloned().unwrap_or(Value::Null);
                let msg = str_of(&data, "message")
                    .or_else(|| str_of(&e, "message"))
                    .or_else(|| str_of(&e, "name"))
                    .unwrap_or_else(|| "error".into());
                let status = u64_of(&data, "statusCode");
                p.error = Some(match status {
                    Some(s) => format!("{msg} (status {s})"),
                    None => msg,
                });
                p.error_kind = Some(match data.get("isRetryable").and_then(Value::as_bool) {
                    Some(true) => "retryable".into(),
                    _ => str_of(&e, "name").unwrap_or_else(|| "error".into()),
                });
            }
            _ => {}
        }
    }
    if saw_finish {
        p.cost_usd = Some(cost);
        p.tokens_in = Some(tin);
        p.tokens_out = Some(tout);
        p.tokens_cached_in = Some(tcached);
        p.num_turns = Some(steps);
    }
    p
}

/// Classifies a failure from the CLI's error kind and text (error message
/// and stderr). Fatal signs are checked first: a budget or max-turns stop
/// mentions "limit" too, and retrying it would only repeat it.
pub fn classify(kind: Option<&str>, text: &str) -> FailureClass {
    let kind = kind.unwrap_or("").to_ascii_lowercase();
    if kind == "retryable" {
        return FailureClass::Retryable;
    }
    if kind.contains("max_turns") || kind.contains("budget") {
        return FailureClass::Fatal;
    }
    let t = text.to_ascii_lowercase();
    const FATAL: &[&str] = FATAL_WORDS;
    // HTTP statuses count only as whole numbers ("215000 tokens" is not a
    // 500).
    const FATAL_CODES: &[&str] = &["400", "401", "403", "404"];
    const RETRYABLE_CODES: &[&str] = &["408", "429", "500", "502", "503", "504", "529"];
    const RETRYABLE: &[&str] = &[
        "rate limit",
        "rate_limit",
        "ratelimit",
        "too many requests",
        "overloaded",
        "internal server error",
        "bad gateway",
        "service unavailable",
        "gateway timeout",
        "usage limit",
        "try again",
        "timed out",
        "timeout",
        "econnreset",
        "econnrefused",
        "etimedout",
        "enotfound",
        "eai_again",
        "network",
        "connection",
        "socket hang up",
        "stream error",
        "stream disconnected",
    ];
    // Retryable words first among codes: "429 ... invalid value" is still a
    // rate limit. Among words, fatal ones win (a budget stop says "limit").
    if RETRYABLE_CODES.iter().any(|c| has_number(&t, c)) && !FATAL.iter().any(|w| t.contains(w)) {
        return FailureClass::Retryable;
    }
    if FATAL.iter().any(|w| t.contains(w)) || FATAL_CODES.iter().any(|c| has_number(&t, c)) {
        FailureClass::Fatal
    } else if RETRYABLE.iter().any(|w| t.contains(w)) {
        FailureClass::Retryable
    } else {
        FailureClass::Fatal
    }
}

/// Classifies a process that failed without saying why in its output (a
/// crash, a usage error): fatal only when stderr shows a fatal sign (bad
/// arguments, authentication), otherwise retryable, since crashes are
/// usually transient.
pub fn classify_crash(stderr: &str) -> FailureClass {
    let t = stderr.to_ascii_lowercase();
    if FATAL_WORDS.iter().any(|w| t.contains(w)) {
        FailureClass::Fatal
    } else {
        FailureClass::Retryable
    }
}

/// Signs of a failure that retrying cannot fix.
const FATAL_WORDS: &[&str] = &[
    "max turns",
    "max_turns",
    "maximum number of turns",
    "budget",
    "unknown option",
    "unknown argument",
    "unexpected argument",
    "unrecognized subcommand",
    "invalid value",
    "invalid api key",
    "invalid x-api-key",
    "authentication",
    "unauthorized",
    "not logged in",
    "please run /login",
    "permission denied",
    "usage: ",
];

/// True when `num` occurs in `t` not surrounded by other digits.
fn has_number(t: &str, num: &str) -> bool {
    let b = t.as_bytes();
    t.match_indices(num).any(|(i, _)| {
        let before = i.checked_sub(1).map(|j| b[j]);
        let after = b.get(i + num.len()).copied();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claude_object_and_array_forms() {
        let obj = r#"{"type":"result","subtype":"success","is_error":false,"num_turns":2,"result":"ok","session_id":"s1","total_cost_usd":0.5,"usage":{"input_tokens":10,"cache_creation_input_tokens":5,"cache_read_input_tokens":20,"output_tokens":7}}"#;
        let p = parse(OutputFormat::ClaudeJson, obj.as_bytes());
        assert_eq!(p.result.as_deref(), Some("ok"));
        assert_eq!(
            (p.cost_usd, p.tokens_in, p.tokens_out),
            (Some(0.5), Some(35), Some(7))
        );
        let arr = format!(r#"[{{"type":"system","subtype":"init","session_id":"s1"}},{obj}]"#);
        assert_eq!(parse(OutputFormat::ClaudeJson, arr.as_bytes()), p);
    }

    #[test]
    fn classification() {
        assert_eq!(
            classify(None, "API Error: 429 rate_limit_error"),
            FailureClass::Retryable
        );
        assert_eq!(classify(Some("error_max_turns"), "x"), FailureClass::Fatal);
        assert_eq!(
            classify(None, "error: unknown option '--bogus'"),
            FailureClass::Fatal
        );
        assert_eq!(classify(None, "ECONNRESET"), FailureClass::Retryable);
        assert_eq!(
            classify(None, "API Error: 400 prompt is too long: 215000 tokens"),
            FailureClass::Fatal
        );
    }
}
