//! The one validation routine. Every entry point (webhook, `orch submit`,
//! scheduler, queue recovery) calls [`validate_job`] on the JSON value before
//! anything is written, and gets back every violation at once.
//!
//! The checks are written by hand rather than delegated to the JSON Schema
//! engine so that each message says what was expected in plain words, points
//! at the exact field with an RFC 6901 JSON Pointer, never echoes more than a
//! short prefix of the input and never leaks validator internals. The schema
//! in `contracts/job.schema.json` states the same rules for other tools; a
//! test runs a corpus through both and fails when they disagree. Rules that
//! JSON Schema cannot express (unique step ids, `goto` targets, known agents)
//! live only here.

use crate::ids::{is_valid_job_id, is_valid_step_id};
use crate::job::Job;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashSet;

/// Limits of the job contract (SPEC §2.1). `contracts/job.schema.json` states
/// the same numbers.
pub mod limits {
    /// `goal`: at most this many characters (Unicode scalar values).
    pub const GOAL_MAX_CHARS: usize = 5000;
    /// `workdir`: at most this many characters.
    pub const WORKDIR_MAX_CHARS: usize = 4096;
    /// `callback_url`: at most this many characters.
    pub const CALLBACK_URL_MAX_CHARS: usize = 2048;
    /// `tags`: at most this many entries ...
    pub const TAGS_MAX_ITEMS: usize = 100;
    /// ... of at most this many characters each.
    pub const TAG_MAX_CHARS: usize = 256;
    /// `steps`: at least one, at most this many. A bound keeps a hostile
    /// document from making the runner plan thousands of steps.
    pub const STEPS_MAX_ITEMS: usize = 100;
    /// `role`: at most this many characters.
    pub const ROLE_MAX_CHARS: usize = 128;
    /// `prompt`: at most this many characters.
    pub const PROMPT_MAX_CHARS: usize = 20_000;
    /// `timeout_sec` range.
    pub const TIMEOUT_SEC: (u64, u64) = (1, 3600);
    /// `max_retries` range.
    pub const MAX_RETRIES: (u64, u64) = (0, 10);
    /// `retry_backoff_sec` range.
    pub const RETRY_BACKOFF_SEC: (u64, u64) = (0, 60);
    /// `input_artifacts`, `apply_patches_from`, `allowed_tools`,
    /// `policy.allowed_binaries`: at most this many entries.
    pub const LIST_MAX_ITEMS: usize = 100;
    /// A relative artifact path: at most this many characters.
    pub const PATH_MAX_CHARS: usize = 4096;
    /// An `allowed_tools` or `allowed_binaries` entry: at most this many characters.
    pub const NAME_MAX_CHARS: usize = 256;
    /// At most this many violations are listed; the rest are counted. A
    /// document with ten thousand unknown keys gets a readable answer.
    pub const MAX_REPORTED_VIOLATIONS: usize = 100;
}

use limits::*;

/// How many characters of user input a message may quote.
pub const QUOTE_MAX_CHARS: usize = 60;

/// One rule violation: a JSON Pointer to the offending field and a message
/// that says what was expected (never echoing more than a short prefix of
/// the input).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub pointer: String,
    pub message: String,
}

/// Every violation found in one document, in document order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct Violations(pub Vec<Violation>);

impl Violations {
    /// A list holding one violation.
    pub fn single(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self(vec![Violation {
            pointer: pointer.into(),
            message: message.into(),
        }])
    }

    pub fn push(&mut self, pointer: impl Into<String>, message: impl Into<String>) {
        self.0.push(Violation {
            pointer: pointer.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Violation> {
        self.0.iter()
    }

    /// Whether some violation points exactly at `pointer`.
    pub fn has_pointer(&self, pointer: &str) -> bool {
        self.0.iter().any(|v| v.pointer == pointer)
    }

    /// Adds `other`'s violations after ours.
    pub fn extend(&mut self, other: Violations) {
        self.0.extend(other.0);
    }

    /// Caps the list at [`limits::MAX_REPORTED_VIOLATIONS`], replacing the
    /// rest with one summary entry.
    fn capped(mut self) -> Self {
        if self.0.len() > MAX_REPORTED_VIOLATIONS {
            let more = self.0.len() - MAX_REPORTED_VIOLATIONS;
            self.0.truncate(MAX_REPORTED_VIOLATIONS);
            self.push("", format!("{more} more violations were not listed"));
        }
        self
    }
}

impl std::fmt::Display for Violations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let p = if v.pointer.is_empty() {
                "/"
            } else {
                &v.pointer
            };
            write!(f, "{p}: {}", v.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

impl IntoIterator for Violations {
    type Item = Violation;
    type IntoIter = std::vec::IntoIter<Violation>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl FromIterator<Violation> for Violations {
    fn from_iter<I: IntoIterator<Item = Violation>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Violations {
    type Item = &'a Violation;
    type IntoIter = std::slice::Iter<'a, Violation>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Appends one reference token to a JSON Pointer, escaping `~` and `/` as
/// RFC 6901 requires.
pub fn pointer_push(base: &str, token: &str) -> String {
    let mut out = String::with_capacity(base.len() + token.len() + 1);
    out.push_str(base);
    out.push('/');
    for c in token.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
    out
}

/// A short, escaped quotation of user input for a message: at most
/// [`QUOTE_MAX_CHARS`] characters, control characters escaped, an ellipsis
/// when cut.
pub fn quote(s: &str) -> String {
    let mut cut: String = s.chars().take(QUOTE_MAX_CHARS).collect();
    let truncated = cut.len() < s.len();
    if truncated {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// "a string", "an array", ... for messages about wrong types.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Validates a complete job document (as stored in the queue and in
/// `job.json`). `known_agents` is the list of agent names the runner can
/// execute. Returns the typed job when there is no violation, otherwise
/// every violation (up to [`limits::MAX_REPORTED_VIOLATIONS`]).
///
/// Never panics, whatever the input. Integral floats such as `1.0` are
/// accepted where an integer is expected (JSON Schema's definition of
/// `integer`); `1.5`, negative, out-of-range and non-number values are not.
pub fn validate_job(value: &Value, known_agents: &[&str]) -> Result<Job, Violations> {
    check_job(value, Checker::default(), known_agents)
}

/// Validates a job document's structure only: every check of
/// [`validate_job`] except that its agents are known here. For queue
/// recovery, which must not judge other runners' jobs by this host's agent
/// registry (a runner without a custom agent is not a reason to quarantine
/// the job of a runner that has it).
pub fn validate_job_structure(value: &Value) -> Result<Job, Violations> {
    let c = Checker {
        any_agent: true,
        ..Checker::default()
    };
    check_job(value, c, &[])
}

fn check_job(value: &Value, mut c: Checker, known_agents: &[&str]) -> Result<Job, Violations> {
    c.job(value, known_agents);
    if !c.out.is_empty() {
        return Err(c.out.capped());
    }
    let mut clean = value.clone();
    coerce_integral_floats(&mut clean);
    serde_json::from_value::<Job>(clean).map_err(|_| {
        // Unreachable when the checks above mirror the serde types; if they
        // ever drift, say so without leaking serde's text.
        Violations::single(
            "",
            "the document passed validation but could not be loaded (contract mismatch; please report)",
        )
    })
}

/// Replaces integral floats (`300.0`) by integers in the step fields that
/// deserialise into integers, which serde would otherwise refuse.
fn coerce_integral_floats(job: &mut Value) {
    let Some(steps) = job.get_mut("steps").and_then(Value::as_array_mut) else {
        return;
    };
    for step in steps.iter_mut().filter_map(Value::as_object_mut) {
        for key in ["timeout_sec", "max_retries", "retry_backoff_sec"] {
            if let Some(v) = step.get_mut(key)
                && let Some(n) = v.as_number().filter(|n| n.is_f64())
                && let Some(f) = n.as_f64()
            {
                // The checks bounded f to a small non-negative whole number.
                *v = Value::from(f as u64);
            }
        }
    }
}

/// Every top-level key a job may have.
pub(crate) const JOB_KEYS: &[&str] = &[
    "schema_version",
    "job_id",
    "created_at",
    "source",
    "goal",
    "project_id",
    "workdir",
    "callback_url",
    "tags",
    "metadata",
    "steps",
    "context_window",
    "context_strategy",
    "artifact_handoff",
    "policy",
];
const JOB_REQUIRED: &[&str] = &[
    "schema_version",
    "job_id",
    "created_at",
    "source",
    "goal",
    "steps",
];
const STEP_KEYS: &[&str] = &[
    "step_id",
    "agent",
    "role",
    "prompt",
    "timeout_sec",
    "max_retries",
    "retry_backoff_sec",
    "input_artifacts",
    "apply_patches_from",
    "allowed_tools",
    "on_failure",
    "access",
];
const STEP_REQUIRED: &[&str] = &["step_id", "agent", "role", "prompt"];
const SOURCE_KEYS: &[&str] = &["type", "meta"];
const POLICY_KEYS: &[&str] = &[
    "sandbox",
    "network",
    "allowed_binaries",
    "requires_approval",
    "limits",
];

#[derive(Default)]
struct Checker {
    out: Violations,
    /// Any well-formed agent name passes (structure-only validation).
    any_agent: bool,
}

impl Checker {
    fn err(&mut self, pointer: &str, message: impl Into<String>) {
        self.out.push(pointer, message);
    }

    fn wrong_type(&mut self, pointer: &str, expected: &str, got: &Value) {
        self.err(
            pointer,
            format!("expected {expected}, got {}", type_name(got)),
        );
    }

    /// Reports keys outside `allowed` (by name) and missing `required` keys.
    fn keys(&mut self, base: &str, obj: &Map<String, Value>, allowed: &[&str], required: &[&str]) {
        for key in obj.keys() {
            if !allowed.contains(&key.as_str()) {
                self.err(
                    &pointer_push(base, key),
                    format!(
                        "unknown field {}; allowed fields: {}",
                        quote(key),
                        allowed.join(", ")
                    ),
                );
            }
        }
        for key in required {
            if !obj.contains_key(*key) {
                self.err(&pointer_push(base, key), "required field is missing");
            }
        }
    }

    /// A string of `min..=max` characters; returns it when it is one.
    fn string_len<'v>(&mut self, p: &str, v: &'v Value, min: usize, max: usize) -> Option<&'v str> {
        let Some(s) = v.as_str() else {
            self.wrong_type(p, "a string", v);
            return None;
        };
        let n = s.chars().count();
        if n < min || n > max {
            self.err(p, format!("must be {min}..{max} characters long, got {n}"));
            return None;
        }
        Some(s)
    }

    fn one_of(&mut self, p: &str, v: &Value, allowed: &[&str]) {
        match v.as_str() {
            Some(s) if allowed.contains(&s) => {}
            Some(s) => self.err(
                p,
                format!("must be one of {}, got {}", allowed.join(", "), quote(s)),
            ),
            None => self.wrong_type(p, &format!("one of {}", allowed.join(", ")), v),
        }
    }

    fn boolean(&mut self, p: &str, v: &Value) {
        if !v.is_boolean() {
            self.wrong_type(p, "true or false", v);
        }
    }

    fn object<'v>(&mut self, p: &str, v: &'v Value) -> Option<&'v Map<String, Value>> {
        let o = v.as_object();
        if o.is_none() {
            self.wrong_type(p, "an object", v);
        }
        o
    }

    /// An array of at most `max` items; returns it when it is one.
    fn array<'v>(&mut self, p: &str, v: &'v Value, what: &str, max: usize) -> Option<&'v [Value]> {
        let Some(a) = v.as_array() else {
            self.wrong_type(p, what, v);
            return None;
        };
        if a.len() > max {
            self.err(
                p,
                format!("at most {max} entries are allowed, got {}", a.len()),
            );
        }
        Some(a)
    }

    fn integer(&mut self, p: &str, v: &Value, (min, max): (u64, u64)) {
        if let Err(m) = integer_in_range(v, min, max) {
            self.err(p, m);
        }
    }

    fn job(&mut self, v: &Value, agents: &[&str]) {
        let Some(obj) = v.as_object() else {
            self.wrong_type("", "a job object", v);
            return;
        };
        self.keys("", obj, JOB_KEYS, JOB_REQUIRED);

        if let Some(v) = obj.get("schema_version") {
            match v.as_str() {
                Some(crate::SCHEMA_VERSION) => {}
                Some(s) => self.err(
                    "/schema_version",
                    format!("unsupported schema_version {}; expected \"1.0\"", quote(s)),
                ),
                None => self.wrong_type("/schema_version", "the string \"1.0\"", v),
            }
        }
        if let Some(v) = obj.get("job_id") {
            match v.as_str() {
                Some(s) if is_valid_job_id(s) => {}
                Some(s) => self.err(
                    "/job_id",
                    format!(
                        "invalid job id {}: expected 32 lowercase hex characters, or 8..64 of \
                         [A-Za-z0-9._-] not starting with '.' and without '..'",
                        quote(s)
                    ),
                ),
                None => self.wrong_type("/job_id", "a string", v),
            }
        }
        if let Some(v) = obj.get("created_at") {
            match v.as_str() {
                Some(s) if is_rfc3339(s) => {}
                Some(s) => self.err(
                    "/created_at",
                    format!(
                        "invalid date-time {}: expected RFC 3339 such as 2024-05-01T12:00:00Z",
                        quote(s)
                    ),
                ),
                None => self.wrong_type("/created_at", "an RFC 3339 date-time string", v),
            }
        }
        if let Some(v) = obj.get("source") {
            self.source(v);
        }
        if let Some(v) = obj.get("goal") {
            match v.as_str() {
                Some(s) if s.trim().is_empty() => self.err("/goal", "must not be blank"),
                Some(s) if !has_visible_text(s) => self.err(
                    "/goal",
                    "must contain visible text (it has only invisible characters such as zero-width spaces or controls)",
                ),
                Some(s) => {
                    let n = s.chars().count();
                    if n > GOAL_MAX_CHARS {
                        self.err(
                            "/goal",
                            format!("must be at most {GOAL_MAX_CHARS} characters long, got {n}"),
                        );
                    }
                }
                None => self.wrong_type("/goal", "a string", v),
            }
        }
        if let Some(v) = obj.get("project_id") {
            match v {
                Value::Null => {}
                Value::String(s) if is_valid_project_id(s) => {}
                Value::String(s) => self.err(
                    "/project_id",
                    format!(
                        "invalid project id {}: expected 1..128 of [A-Za-z0-9._-] starting with a letter or digit",
                        quote(s)
                    ),
                ),
                other => self.wrong_type("/project_id", "a string or null", other),
            }
        }
        if let Some(v) = obj.get("workdir")
            && let Some(s) = self.string_len("/workdir", v, 1, WORKDIR_MAX_CHARS)
            && s.contains('\0')
        {
            self.err("/workdir", "must not contain NUL characters");
        }
        if let Some(Value::String(s)) = obj.get("workdir")
            && let Err(why) = check_workdir(s)
        {
            self.err("/workdir", why);
        }
        if let Some(v) = obj.get("callback_url") {
            match v {
                Value::Null => {}
                Value::String(s) => {
                    if let Err(why) = check_callback_url(s) {
                        self.err("/callback_url", why);
                    }
                }
                other => self.wrong_type("/callback_url", "a URL string or null", other),
            }
        }
        if let Some(v) = obj.get("tags")
            && let Some(tags) = self.array("/tags", v, "an array of strings", TAGS_MAX_ITEMS)
        {
            for (i, t) in tags.iter().enumerate() {
                self.string_len(&format!("/tags/{i}"), t, 0, TAG_MAX_CHARS);
            }
        }
        if let Some(v) = obj.get("metadata") {
            self.object("/metadata", v);
        }
        if let Some(v) = obj.get("steps") {
            self.steps(v, agents);
        }
        if let Some(v) = obj.get("context_window")
            && let Some(msgs) = self.array("/context_window", v, "an array of messages", usize::MAX)
        {
            for (i, m) in msgs.iter().enumerate() {
                self.context_message(&format!("/context_window/{i}"), m);
            }
        }
        if let Some(v) = obj.get("context_strategy") {
            self.one_of("/context_strategy", v, &["full", "summarize", "sliding"]);
        }
        if let Some(v) = obj.get("artifact_handoff") {
            self.one_of(
                "/artifact_handoff",
                v,
                &["manual", "patch_first", "workspace_first"],
            );
        }
        if let Some(v) = obj.get("policy") {
            self.policy(v);
        }
    }

    fn source(&mut self, v: &Value) {
        let Some(obj) = self.object("/source", v) else {
            return;
        };
        self.keys("/source", obj, SOURCE_KEYS, &["type"]);
        if let Some(t) = obj.get("type") {
            self.one_of("/source/type", t, &["webhook", "manual", "cron"]);
        }
        if let Some(m) = obj.get("meta") {
            self.object("/source/meta", m);
        }
    }

    fn context_message(&mut self, p: &str, v: &Value) {
        let Some(obj) = self.object(p, v) else {
            return;
        };
        for key in ["role", "content"] {
            let kp = pointer_push(p, key);
            match obj.get(key) {
                None => self.err(&kp, "required field is missing"),
                Some(Value::String(_)) => {}
                Some(other) => self.wrong_type(&kp, "a string", other),
            }
        }
    }

    fn policy(&mut self, v: &Value) {
        let Some(obj) = self.object("/policy", v) else {
            return;
        };
        self.keys("/policy", obj, POLICY_KEYS, &[]);
        if let Some(v) = obj.get("sandbox") {
            self.boolean("/policy/sandbox", v);
        }
        if let Some(v) = obj.get("network") {
            self.one_of("/policy/network", v, &["deny", "allow"]);
        }
        if let Some(v) = obj.get("allowed_binaries") {
            self.names("/policy/allowed_binaries", v);
        }
        if let Some(v) = obj.get("requires_approval") {
            self.boolean("/policy/requires_approval", v);
        }
        if let Some(v) = obj.get("limits")
            && let Some(lim) = self.object("/policy/limits", v)
        {
            let keys: Vec<&str> = crate::job::RESOURCE_LIMIT_KEYS
                .iter()
                .map(|(k, _, _)| *k)
                .collect();
            self.keys("/policy/limits", lim, &keys, &[]);
            for (k, min, max) in crate::job::RESOURCE_LIMIT_KEYS {
                if let Some(v) = lim.get(*k) {
                    self.integer(&format!("/policy/limits/{k}"), v, (*min, *max));
                }
            }
        }
    }

    /// An array of short non-empty names (binaries, tools).
    fn names(&mut self, p: &str, v: &Value) {
        if let Some(items) = self.array(p, v, "an array of strings", LIST_MAX_ITEMS) {
            for (i, item) in items.iter().enumerate() {
                self.string_len(&format!("{p}/{i}"), item, 1, NAME_MAX_CHARS);
            }
        }
    }

    fn paths(&mut self, p: &str, v: &Value) {
        let Some(items) = self.array(p, v, "an array of relative paths", LIST_MAX_ITEMS) else {
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{p}/{i}");
            if let Some(s) = self.string_len(&ip, item, 1, PATH_MAX_CHARS)
                && let Err(why) = check_relative_path(s)
            {
                self.err(&ip, format!("unsafe path {}: {why}", quote(s)));
            }
        }
    }

    fn steps(&mut self, v: &Value, agents: &[&str]) {
        let Some(steps) = v.as_array() else {
            self.wrong_type("/steps", "an array of steps", v);
            return;
        };
        if steps.is_empty() {
            self.err("/steps", "at least one step is required");
        }
        if steps.len() > STEPS_MAX_ITEMS {
            self.err(
                "/steps",
                format!(
                    "at most {STEPS_MAX_ITEMS} steps are allowed, got {}",
                    steps.len()
                ),
            );
        }
        // Ids of well-formed steps, to check uniqueness and goto targets
        // once every step has been seen (a goto may jump forward). When
        // some step's id is unreadable, goto targets are not checked: the
        // broken step is already reported and may be the target.
        let mut ids: HashSet<&str> = HashSet::new();
        let mut all_ids_known = true;
        let mut gotos: Vec<(String, &str)> = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let base = format!("/steps/{i}");
            let Some(obj) = self.object(&base, step) else {
                all_ids_known = false;
                continue;
            };
            self.keys(&base, obj, STEP_KEYS, STEP_REQUIRED);
            if !obj
                .get("step_id")
                .and_then(Value::as_str)
                .is_some_and(is_valid_step_id)
            {
                all_ids_known = false;
            }
            if let Some(v) = obj.get("step_id") {
                let p = format!("{base}/step_id");
                match v.as_str() {
                    Some(s) if is_valid_step_id(s) => {
                        if !ids.insert(s) {
                            self.err(&p, format!("duplicate step id {}", quote(s)));
                        }
                    }
                    Some(s) => self.err(
                        &p,
                        format!(
                            "invalid step id {}: expected 1..64 of [0-9A-Za-z_-] starting with a letter or digit",
                            quote(s)
                        ),
                    ),
                    None => self.wrong_type(&p, "a string", v),
                }
            }
            if let Some(v) = obj.get("agent") {
                let p = format!("{base}/agent");
                match v.as_str() {
                    Some(s) if !is_valid_agent_name(s) => self.err(
                        &p,
                        format!(
                            "invalid agent name {}: expected 1..64 of [A-Za-z0-9_-] starting with a letter or digit",
                            quote(s)
                        ),
                    ),
                    Some(s) if !self.any_agent && !agents.contains(&s) => self.err(
                        &p,
                        format!("unknown agent {}; known agents: {}", quote(s), agents.join(", ")),
                    ),
                    Some(_) => {}
                    None => self.wrong_type(&p, "a string", v),
                }
            }
            if let Some(v) = obj.get("role") {
                self.string_len(&format!("{base}/role"), v, 1, ROLE_MAX_CHARS);
            }
            if let Some(v) = obj.get("prompt") {
                self.string_len(&format!("{base}/prompt"), v, 1, PROMPT_MAX_CHARS);
            }
            if let Some(v) = obj.get("timeout_sec") {
                self.integer(&format!("{base}/timeout_sec"), v, TIMEOUT_SEC);
            }
            if let Some(v) = obj.get("max_retries") {
                self.integer(&format!("{base}/max_retries"), v, MAX_RETRIES);
            }
            if let Some(v) = obj.get("retry_backoff_sec") {
                self.integer(&format!("{base}/retry_backoff_sec"), v, RETRY_BACKOFF_SEC);
            }
            if let Some(v) = obj.get("input_artifacts") {
                self.paths(&format!("{base}/input_artifacts"), v);
            }
            if let Some(v) = obj.get("apply_patches_from") {
                self.paths(&format!("{base}/apply_patches_from"), v);
            }
            if let Some(v) = obj.get("allowed_tools")
                && !v.is_null()
            {
                self.names(&format!("{base}/allowed_tools"), v);
            }
            if let Some(v) = obj.get("access") {
                let p = format!("{base}/access");
                match v.as_str() {
                    Some(s) if crate::Access::parse(s).is_some() => {}
                    Some(s) => self.err(
                        &p,
                        format!("invalid access {}: expected read or write", quote(s)),
                    ),
                    None => self.wrong_type(&p, "\"read\" or \"write\"", v),
                }
            }
            if let Some(v) = obj.get("on_failure") {
                let p = format!("{base}/on_failure");
                match v.as_str() {
                    Some("stop" | "continue" | "ask_human") => {}
                    Some(s) => match s.strip_prefix("goto:") {
                        Some(target) if is_valid_step_id(target) => gotos.push((p, target)),
                        _ => self.err(
                            &p,
                            format!(
                                "invalid on_failure {}: expected stop, continue, ask_human or goto:<step_id>",
                                quote(s)
                            ),
                        ),
                    },
                    None => self.wrong_type(&p, "a string", v),
                }
            }
        }
        // A goto to its own step is allowed: it means "retry this step
        // again", and the runner bounds all jumps with RUNNER_MAX_GOTO.
        for (p, target) in gotos {
            if all_ids_known && !ids.contains(target) {
                self.err(
                    &p,
                    format!("goto target {} is not a step of this job", quote(target)),
                );
            }
        }
    }
}

/// Checks that `v` is a whole number in `min..=max`. Integral floats (`3.0`)
/// count as integers, as in JSON Schema; anything else is refused with a
/// message saying what was expected.
pub fn integer_in_range(v: &Value, min: u64, max: u64) -> Result<u64, String> {
    let expected = || format!("must be a whole number from {min} to {max}");
    let Value::Number(n) = v else {
        return Err(format!("{}, got {}", expected(), type_name(v)));
    };
    let got = n.to_string();
    let value = if let Some(u) = n.as_u64() {
        Some(u)
    } else if n.as_i64().is_some() {
        None // negative
    } else {
        match n.as_f64() {
            Some(f) if f.is_finite() && f.fract() == 0.0 => {
                if f < 0.0 || f > max as f64 {
                    None
                } else {
                    Some(f as u64)
                }
            }
            _ => return Err(format!("{}, got {}", expected(), quote(&got))),
        }
    };
    match value {
        Some(u) if (min..=max).contains(&u) => Ok(u),
        _ => Err(format!("{}, got {}", expected(), quote(&got))),
    }
}

/// `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`
pub fn is_valid_project_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`: agent names may end up in file names
/// (per-agent state directories), so they are as tame as step ids.
pub fn is_valid_agent_name(s: &str) -> bool {
    is_valid_step_id(s)
}

/// True when `s` has at least one character that shows on a screen: not
/// whitespace, not a control, not a zero-width or invisible formatting
/// character (zero-width spaces and joiners, bidirectional controls, the
/// byte order mark, fillers).
pub fn has_visible_text(s: &str) -> bool {
    s.chars().any(|c| {
        !c.is_whitespace()
            && !c.is_control()
            && !matches!(c,
                '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}'
                | '\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}')
    })
}

/// Directories a job's `workdir` may never be: copying them into a
/// workspace would hand an agent the machine's configuration, credentials
/// or whole filesystems. The root and each of these is refused exactly.
pub const SYSTEM_DIRS: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media",
    "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var",
];

/// Directories whose whole subtree is refused as a `workdir` (system
/// configuration, kernel interfaces, devices, installed software).
pub const SYSTEM_TREES: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run",
    "/sbin", "/sys", "/usr",
];

/// Checks an absolute `workdir` (after `.`/`..` are resolved lexically):
/// not `/`, not one of [`SYSTEM_DIRS`], not inside one of
/// [`SYSTEM_TREES`]. Relative paths pass (they are resolved by the entry
/// point, which checks the result again, as does the runner on the real
/// path it copies).
pub fn check_workdir(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Ok(());
    }
    let mut parts: Vec<&str> = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let norm = format!("/{}", parts.join("/"));
    if norm == "/" {
        return Err("the root directory \"/\" cannot be a workdir: it would copy the whole filesystem into the workspace".into());
    }
    if SYSTEM_DIRS.contains(&norm.as_str()) {
        return Err(format!(
            "{} is a system directory and cannot be a workdir",
            quote(&norm)
        ));
    }
    if let Some(tree) = SYSTEM_TREES.iter().find(|t| {
        norm.strip_prefix(**t)
            .is_some_and(|rest| rest.starts_with('/'))
    }) {
        return Err(format!(
            "{} is inside the system directory {tree} and cannot be a workdir",
            quote(&norm)
        ));
    }
    Ok(())
}

/// Characters forbidden anywhere in a relative path: C0 and C1 controls
/// (NUL included) and DEL.
fn is_path_control(c: char) -> bool {
    c <= '\u{1f}' || ('\u{7f}'..='\u{9f}').contains(&c)
}

/// Checks a path that must stay inside the job's artifacts directory:
/// relative, `/`-separated, no empty or dot-only component (`.`, `..`,
/// `...`), no backslash (a Windows separator on some consumers), no control
/// character. Length is checked by the caller.
pub fn check_relative_path(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("the path is empty");
    }
    if s.starts_with('/') {
        return Err("absolute paths are not allowed");
    }
    if s.contains('\\') {
        return Err("backslashes are not allowed");
    }
    if s.chars().any(is_path_control) {
        return Err("control characters (such as NUL) are not allowed");
    }
    for comp in s.split('/') {
        if comp.is_empty() {
            return Err("empty path components ('//' or a trailing '/') are not allowed");
        }
        if comp.bytes().all(|b| b == b'.') {
            return Err("'.' and '..' components are not allowed");
        }
    }
    Ok(())
}

/// RFC 3986 reg-name characters (unreserved, sub-delims, `%`).
fn is_host_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._~%!$&'()*+,;=-".contains(&b)
}

/// Characters allowed after the authority (path, query, fragment).
fn is_tail_char(b: u8) -> bool {
    is_host_char(b) || b":@/?#[]".contains(&b)
}

/// Checks a callback URL: `http` or `https`, `://`, a non-empty host (name
/// or `[IPv6]`), optional `:port`, then an optional path/query/fragment, all
/// in ASCII (non-ASCII must be percent-encoded), at most 2048 characters.
/// Whether the address may be contacted (private ranges) is decided when the
/// callback is sent, not here.
pub fn check_callback_url(s: &str) -> Result<(), String> {
    let n = s.chars().count();
    if n > CALLBACK_URL_MAX_CHARS {
        return Err(format!(
            "must be at most {CALLBACK_URL_MAX_CHARS} characters long, got {n}"
        ));
    }
    let bad = || {
        format!(
            "invalid URL {}: expected an absolute http:// or https:// URL with a host, \
             in ASCII with no spaces",
            quote(s)
        )
    };
    let b = s.as_bytes();
    let rest = if b.len() >= 7 && b[..7].eq_ignore_ascii_case(b"http://") {
        &b[7..]
    } else if b.len() >= 8 && b[..8].eq_ignore_ascii_case(b"https://") {
        &b[8..]
    } else {
        return Err(bad());
    };
    let end = rest
        .iter()
        .position(|c| matches!(c, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if !tail.iter().all(|&c| is_tail_char(c)) {
        return Err(bad());
    }
    if authority.contains(&b'@') {
        return Err(format!(
            "invalid URL {}: credentials (user:password@) are not allowed in a callback URL; \
             sign callbacks with CALLBACK_SECRET instead",
            quote(&redact_userinfo(s))
        ));
    }
    let hostport = authority;
    let port = if hostport.first() == Some(&b'[') {
        let Some(close) = hostport.iter().position(|&c| c == b']') else {
            return Err(bad());
        };
        let inner = &hostport[1..close];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|c| c.is_ascii_hexdigit() || matches!(c, b':' | b'.'))
        {
            return Err(bad());
        }
        &hostport[close + 1..]
    } else {
        let colon = hostport
            .iter()
            .position(|&c| c == b':')
            .unwrap_or(hostport.len());
        let host = &hostport[..colon];
        if host.is_empty() || !host.iter().all(|&c| is_host_char(c)) {
            return Err(bad());
        }
        &hostport[colon..]
    };
    let port_ok = port.is_empty()
        || (port[0] == b':' && port.len() <= 6 && port[1..].iter().all(u8::is_ascii_digit));
    if !port_ok {
        return Err(bad());
    }
    parse_callback_url(s).map(drop)
}

/// The one parser of callback URLs, at intake and at delivery: the `url`
/// crate (WHATWG URL), so both ends agree on scheme case, hosts (IPv4
/// spellings such as `0x7f.1` included), ports and paths. Refuses anything
/// but `http`/`https` with a host, credentials (`user:pass@`), and ports
/// over 65535. `check_callback_url` adds the character rules stated in
/// `contracts/job.schema.json`.
pub fn parse_callback_url(s: &str) -> Result<url::Url, String> {
    let bad = |why: &str| format!("invalid URL {}: {why}", quote(&redact_userinfo(s)));
    let u = url::Url::parse(s).map_err(|e| bad(&e.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(bad("expected an http:// or https:// URL"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad(
            "credentials (user:password@) are not allowed in a callback URL",
        ));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(bad("the URL has no host"));
    }
    Ok(u)
}

/// `s` with anything between `://` and an `@` of the authority replaced,
/// so an error message never quotes a password.
fn redact_userinfo(s: &str) -> String {
    let Some(start) = s.find("://").map(|i| i + 3) else {
        return s.to_owned();
    };
    let end = s[start..]
        .find(['/', '?', '#'])
        .map_or(s.len(), |i| start + i);
    match s[start..end].rfind('@') {
        Some(at) => format!("{}***@{}", &s[..start], &s[start + at + 1..]),
        None => s.to_owned(),
    }
}

fn two_digits(b: &[u8]) -> Option<u8> {
    match b {
        [a @ b'0'..=b'9', c @ b'0'..=b'9'] => Some((a - b'0') * 10 + (c - b'0')),
        _ => None,
    }
}

/// Whether `s` is an RFC 3339 date-time naming a real instant:
/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|+hh:mm|-hh:mm)` (`T`/`Z` in either case),
/// a day that exists in that month, a year from 0000 to 9998, and a leap
/// second (`:60`) only at 23:59 UTC. The same rule as JSON Schema's
/// `date-time` format plus the schema's year pattern; `jiff` then confirms
/// the instant is representable.
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return false;
    }
    if b[13] != b':' || b[16] != b':' {
        return false;
    }
    let (Some(y1), Some(y2), Some(mo), Some(d)) = (
        two_digits(&b[0..2]),
        two_digits(&b[2..4]),
        two_digits(&b[5..7]),
        two_digits(&b[8..10]),
    ) else {
        return false;
    };
    let (Some(h), Some(mi), Some(sec)) = (
        two_digits(&b[11..13]),
        two_digits(&b[14..16]),
        two_digits(&b[17..19]),
    ) else {
        return false;
    };
    let year = i16::from(y1) * 100 + i16::from(y2);
    // Year 9999 is refused: with an offset it can leave jiff's range, and
    // every consumer must be able to represent the instant.
    if year > 9998
        || jiff::civil::Date::new(year, mo as i8, d as i8).is_err()
        || h > 23
        || mi > 59
        || sec > 60
    {
        return false;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return false;
        }
        i += digits;
    }
    // Offset in minutes east of UTC.
    let offset: i32 = match &b[i..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), oh1, oh2, b':', om1, om2] => {
            let (Some(oh), Some(om)) = (two_digits(&[*oh1, *oh2]), two_digits(&[*om1, *om2]))
            else {
                return false;
            };
            if oh > 23 || om > 59 {
                return false;
            }
            let m = i32::from(oh) * 60 + i32::from(om);
            if *sign == b'+' { m } else { -m }
        }
        _ => return false,
    };
    if sec == 60 {
        let utc = (i32::from(h) * 60 + i32::from(mi) - offset).rem_euclid(24 * 60);
        if utc != 23 * 60 + 59 {
            return false;
        }
    }
    // jiff has the last word on whether this is an instant it can represent.
    // It gets the same instant without the fraction (it keeps at most nine
    // digits, RFC 3339 allows any number) and with a leap second folded into
    // :59, which it would do itself.
    let seconds = if sec == 60 { "59" } else { &s[17..19] };
    let normalised = format!("{}{seconds}{}", &s[..17], &s[i..]).to_ascii_uppercase();
    normalised.parse::<jiff::Timestamp>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointer_escaping_follows_rfc6901() {
        assert_eq!(pointer_push("", "a/b~c"), "/a~1b~0c");
        assert_eq!(pointer_push("/steps/0", ""), "/steps/0/");
    }

    #[test]
    fn quote_truncates_and_escapes() {
        let long = "x".repeat(500);
        let q = quote(&long);
        assert!(q.chars().count() < 70, "{q}");
        assert!(q.contains('…'));
        assert_eq!(quote("a\0b"), "\"a\\0b\"");
    }

    #[test]
    fn rfc3339_dates() {
        for ok in [
            "2024-05-01T12:00:00Z",
            "2024-05-01t12:00:00z",
            "2024-02-29T00:00:00.123456+05:30",
            "1998-12-31T23:59:60Z",
            "1998-12-31T15:59:60-08:00",
            "0000-01-01T00:00:00Z",
            "0000-01-01T00:00:00+23:59",
            "9998-12-31T23:59:59-23:59",
        ] {
            assert!(is_rfc3339(ok), "{ok} refused");
        }
        for bad in [
            "",
            "2024-05-01",
            "2024-05-01 12:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00+2400",
            "2024-05-01T12:00:00+24:00",
            "2024-05-01T12:00:60Z",
            "2024-05-01T12:00Z",
            "２０２４-05-01T12:00:00Z",
            "9999-01-01T00:00:00Z",
        ] {
            assert!(!is_rfc3339(bad), "{bad} accepted");
        }
    }

    #[test]
    fn workdirs_never_name_system_directories() {
        for bad in [
            "/",
            "//",
            "/.",
            "/etc",
            "/etc/",
            "/etc/ssl",
            "/usr/lib/x",
            "/home",
            "/tmp",
            "/proc/self/root",
            "/srv/../etc",
            "/a/../..",
            "/tmp/../usr",
        ] {
            assert!(check_workdir(bad).is_err(), "{bad}");
        }
        for ok in [
            ".",
            "rel/dir",
            "/home/me/project",
            "/tmp/job-src",
            "/srv/web",
            "/etcetera",
            "/opt/app/src",
            "/var/lib/orch/src",
            "/usr/../home/me",
        ] {
            assert!(check_workdir(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn visible_text_needs_a_visible_character() {
        for invisible in [
            "",
            " \t\n",
            "\u{200b}\u{200c}\u{200d}",
            "\u{feff}\u{2060}",
            "\u{202e}\u{1b}",
            "\u{ad}\u{3164}",
        ] {
            assert!(!has_visible_text(invisible), "{invisible:?}");
        }
        for visible in ["x", "\u{200b}x", "\u{1b}[2Jfix", "日本"] {
            assert!(has_visible_text(visible), "{visible:?}");
        }
    }

    #[test]
    fn relative_paths() {
        for ok in [
            "steps/01_plan/report.md",
            "a",
            "..a/b..",
            ".hidden/x",
            "a b/ü.md",
        ] {
            assert!(check_relative_path(ok).is_ok(), "{ok} refused");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/./b",
            "a//b",
            "a/",
            "a\\b",
            "a\0b",
            "..",
            ".",
            "x/.../y",
            "a\u{85}b",
        ] {
            assert!(check_relative_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn callback_urls() {
        for ok in [
            "http://example.com",
            "HTTPS://example.com:8443/hook?x=1#f",
            "http://[::1]:80/x",
            "http://10.0.0.1",
        ] {
            assert!(check_callback_url(ok).is_ok(), "{ok} refused");
        }
        for bad in [
            "",
            "example.com",
            "ftp://example.com",
            "http://",
            "http:///path",
            "http://exa mple.com",
            "http://example.com/a b",
            "http://example.com:99999999",
            "http://a@b@c",
            "http://[zz]/",
            "javascript:alert(1)",
            "http://ex\u{e4}mple.com",
            "https://user:pw@example.com/",
            "https://user@example.com/",
            "https://@example.com/",
            "http://example.com:65536/",
        ] {
            assert!(check_callback_url(bad).is_err(), "{bad} accepted");
        }
        // Credentials are refused without quoting them.
        let why = check_callback_url("https://alice:s3cr3t@example.com/").unwrap_err();
        assert!(!why.contains("s3cr3t") && !why.contains("alice"), "{why}");
        // Scheme case does not matter to either end; hosts are normalised.
        let u = parse_callback_url("HTTPS://Example.COM:8443/hook?x=1").unwrap();
        assert_eq!(
            (u.scheme(), u.host_str(), u.port()),
            ("https", Some("example.com"), Some(8443))
        );
        let u = parse_callback_url("http://0x7f.1/").unwrap();
        assert_eq!(u.host_str(), Some("127.0.0.1"));
    }

    #[test]
    fn integers() {
        assert_eq!(integer_in_range(&json!(5), 1, 10), Ok(5));
        assert_eq!(integer_in_range(&json!(5.0), 1, 10), Ok(5));
        for bad in [
            json!(1.5),
            json!(-1),
            json!(0),
            json!(11),
            json!(1e30),
            json!("5"),
            json!(null),
            json!(u64::MAX),
            json!(-1e300),
        ] {
            assert!(integer_in_range(&bad, 1, 10).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn violations_are_capped() {
        let mut obj = Map::new();
        for i in 0..500 {
            obj.insert(format!("k{i}"), json!(1));
        }
        let err = validate_job(&Value::Object(obj), &["codex"]).unwrap_err();
        assert_eq!(err.len(), MAX_REPORTED_VIOLATIONS + 1);
        assert!(
            err.0
                .last()
                .is_some_and(|v| v.message.contains("more violations"))
        );
    }
}
