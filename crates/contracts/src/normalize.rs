//! Payload normalisation (SPEC §2.3): a webhook body, an `orch submit` file
//! or a schedule payload — possibly partial, only `goal` is required —
//! becomes a complete job, and is then checked by [`validate_job`], so every
//! entry point either gets a runnable job or the full list of violations
//! before anything is written.
//!
//! [`parse_payload_bytes`] is the shared first step for raw bytes: it turns
//! invalid UTF-8, truncated or malformed JSON, duplicate keys and absurd
//! nesting into clear violations instead of parser internals.

use crate::ids::JobId;
use crate::job::{ArtifactHandoff, Job, Source, SourceType};
use crate::validate::{Violations, quote, type_name, validate_job};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// Where a payload came from. Only trusted entry points may choose their own
/// `job_id` and a local `workdir`.
#[derive(Debug, Clone, PartialEq)]
pub enum EntryPoint {
    /// HTTP intake. `remote` is the client address, `delivery` the
    /// `X-GitHub-Delivery`/`Idempotency-Key` if any.
    Webhook {
        remote: String,
        delivery: Option<String>,
    },
    /// `orch submit <file>`; `file` is the path given (or `-`).
    Manual { file: String },
    /// A schedule firing.
    Cron { schedule_id: String, slot: String },
}

impl EntryPoint {
    /// Trusted entry points (operators on the host) may pick the job id and
    /// a local workdir; the webhook may not.
    pub fn is_trusted(&self) -> bool {
        !matches!(self, Self::Webhook { .. })
    }

    /// The `source` this entry point stamps on every job it accepts. It
    /// replaces whatever the client sent: the entry point is the truth.
    pub fn source(&self) -> Source {
        let (kind, meta) = match self {
            Self::Webhook { remote, delivery } => (
                SourceType::Webhook,
                json!({ "remote": remote, "delivery_id": delivery }),
            ),
            Self::Manual { file } => (SourceType::Manual, json!({ "file": file })),
            Self::Cron { schedule_id, slot } => (
                SourceType::Cron,
                json!({ "schedule_id": schedule_id, "slot": slot }),
            ),
        };
        let meta = match meta {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        Source { kind, meta }
    }
}

#[derive(Debug, Clone, Default)]
pub struct NormalizeOptions {
    /// `DEFAULT_ARTIFACT_HANDOFF`, when set.
    pub default_artifact_handoff: Option<ArtifactHandoff>,
    /// Agents the runner can execute (built-in plus configured). Empty means
    /// [`crate::BUILTIN_AGENTS`].
    pub known_agents: Vec<String>,
    /// Project aliases from `PROJECT_ALIASES`; `project_id` must name one.
    pub project_ids: Vec<String>,
    /// Extra `metadata` keys to merge; they win over the client's keys.
    pub extra_metadata: Map<String, Value>,
    /// `PROMPTS_DIR`: a file there named like an embedded pipeline template
    /// (`01_plan.md`, ...) replaces it. `None` uses the embedded templates.
    pub prompts_dir: Option<PathBuf>,
}

/// One step of the default pipeline (SPEC §2.3), used when a payload has no
/// `steps`. Retries (1), backoff (2 s) and `on_failure` (`stop`) are the step
/// defaults.
#[derive(Debug, Clone, Copy)]
pub struct PipelineStep {
    pub step_id: &'static str,
    pub agent: &'static str,
    pub role: &'static str,
    pub timeout_sec: u32,
    pub input_artifacts: &'static [&'static str],
    /// File name of the prompt template (in `contracts/prompts/pipeline/`
    /// and, to override it, in `PROMPTS_DIR`).
    pub template_file: &'static str,
    /// The template shipped in the binary. `{goal}` is replaced by the goal.
    pub embedded_template: &'static str,
}

/// The default plan → implement → review pipeline.
pub const DEFAULT_PIPELINE: &[PipelineStep] = &[
    PipelineStep {
        step_id: "01_plan",
        agent: "opencode",
        role: "planner",
        timeout_sec: 120,
        input_artifacts: &[],
        template_file: "01_plan.md",
        embedded_template: include_str!("../../../contracts/prompts/pipeline/01_plan.md"),
    },
    PipelineStep {
        step_id: "02_implement",
        agent: "codex",
        role: "implementer",
        timeout_sec: 300,
        input_artifacts: &["steps/01_plan/report.md"],
        template_file: "02_implement.md",
        embedded_template: include_str!("../../../contracts/prompts/pipeline/02_implement.md"),
    },
    PipelineStep {
        step_id: "03_review",
        agent: "claude",
        role: "reviewer",
        timeout_sec: 180,
        input_artifacts: &[
            "steps/01_plan/report.md",
            "steps/02_implement/report.md",
            "steps/02_implement/patch.diff",
        ],
        template_file: "03_review.md",
        embedded_template: include_str!("../../../contracts/prompts/pipeline/03_review.md"),
    },
];

/// The placeholder replaced by the goal in prompt templates.
pub const GOAL_PLACEHOLDER: &str = "{goal}";

impl PipelineStep {
    /// The template text: `prompts_dir/<template_file>` when that file
    /// exists, else the embedded one. A file that exists but cannot be read
    /// is an error, never a silent fallback.
    pub fn template(&self, prompts_dir: Option<&Path>) -> std::io::Result<Cow<'static, str>> {
        if let Some(dir) = prompts_dir {
            match std::fs::read_to_string(dir.join(self.template_file)) {
                Ok(text) => return Ok(Cow::Owned(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Cow::Borrowed(self.embedded_template))
    }

    /// The step's prompt for `goal`. A template without `{goal}` gets the
    /// goal appended, so a prompt always contains the goal.
    pub fn render(template: &str, goal: &str) -> String {
        if template.contains(GOAL_PLACEHOLDER) {
            template.replace(GOAL_PLACEHOLDER, goal)
        } else {
            format!("{}\n\nGoal:\n{goal}\n", template.trim_end())
        }
    }
}

/// Top-level fields whose explicit `null` is their real "none" value; for
/// every other known field an explicit `null` means "not given", so the
/// default applies. (`goal` is required: a null goal stays and is refused.)
const NULL_IS_A_VALUE: &[&str] = &["goal", "project_id", "callback_url"];

/// Normalises and validates a payload from `entry`. The result is a complete
/// job that passed `validate_job`; on failure every violation is listed.
///
/// What is filled or overridden:
/// - `job_id`: kept from trusted entry points (and then must be valid);
///   from the webhook always fresh, the client's kept in
///   `metadata.client_job_id`;
/// - `workdir`: from the webhook always `"."`, the client's kept in
///   `metadata.ignored_workdir`;
/// - `source`: always the entry point's ([`EntryPoint::source`]);
/// - `schema_version`, `created_at`, `artifact_handoff`
///   (`opts.default_artifact_handoff`), `steps` (the [`DEFAULT_PIPELINE`])
///   when absent or null;
/// - `goal`: surrounding whitespace trimmed;
/// - `metadata`: `opts.extra_metadata` merged in.
///
/// A complete job (with `schema_version`, `job_id` and `steps`) goes through
/// the same code and so keeps everything it says, except what the entry
/// point overrides above.
pub fn normalize(
    payload: Value,
    entry: &EntryPoint,
    opts: &NormalizeOptions,
) -> Result<Job, Violations> {
    let Value::Object(mut obj) = payload else {
        return Err(Violations::single(
            "",
            format!(
                "the payload must be a JSON object, got {}",
                type_name(&payload)
            ),
        ));
    };
    let mut problems = Violations::default();
    for key in crate::validate::JOB_KEYS
        .iter()
        .filter(|k| !NULL_IS_A_VALUE.contains(k))
    {
        if obj.get(*key).is_some_and(Value::is_null) {
            obj.remove(*key);
        }
    }

    let mut recorded = Map::new();
    if entry.is_trusted() {
        if !obj.contains_key("job_id") {
            obj.insert("job_id".into(), JobId::generate().as_str().into());
        }
    } else {
        if let Some(client_id) = obj.insert("job_id".into(), JobId::generate().as_str().into()) {
            recorded.insert("client_job_id".into(), client_id);
        }
        if let Some(workdir) = obj.insert("workdir".into(), ".".into())
            && workdir != "."
        {
            recorded.insert("ignored_workdir".into(), workdir);
        }
    }
    recorded.extend(opts.extra_metadata.clone());
    match obj.get_mut("metadata") {
        None => {
            obj.insert("metadata".into(), Value::Object(recorded));
        }
        Some(Value::Object(meta)) => meta.extend(recorded),
        // Left as is: validation reports the wrong type.
        Some(_) => {}
    }

    obj.entry("schema_version")
        .or_insert_with(|| crate::SCHEMA_VERSION.into());
    obj.entry("created_at")
        .or_insert_with(|| crate::now_rfc3339().into());
    match serde_json::to_value(entry.source()) {
        Ok(source) => {
            obj.insert("source".into(), source);
        }
        Err(_) => problems.push("/source", "could not record the entry point"),
    }
    if let Some(Value::String(goal)) = obj.get_mut("goal") {
        let trimmed = goal.trim();
        if trimmed.len() != goal.len() {
            *goal = trimmed.to_owned();
        }
    }
    if !obj.contains_key("steps") {
        // An over-long goal is reported at /goal; it is kept out of the
        // prompts so it is not reported again as three over-long prompts.
        let goal = obj
            .get("goal")
            .and_then(Value::as_str)
            .filter(|g| g.chars().count() <= crate::validate::limits::GOAL_MAX_CHARS)
            .unwrap_or_default();
        match default_steps(goal, opts.prompts_dir.as_deref()) {
            Ok(steps) => {
                obj.insert("steps".into(), steps);
            }
            Err(file) => problems.push(
                "/steps",
                format!(
                    "no steps were given and the default pipeline's prompt template {file} \
                     could not be read (a server configuration problem)"
                ),
            ),
        }
    }
    // Every step says what it may do: an absent `access` becomes the role
    // table's (read-only for unknown roles), written into the job.
    if let Some(Value::Array(steps)) = obj.get_mut("steps") {
        for step in steps.iter_mut().filter_map(Value::as_object_mut) {
            if step.get("access").is_none_or(Value::is_null) {
                step.remove("access");
                if let Some(Value::String(role)) = step.get("role") {
                    let access = crate::access::default_access(role);
                    step.insert("access".into(), access.as_str().into());
                }
            }
        }
    }
    if !obj.contains_key("artifact_handoff") {
        let handoff = opts.default_artifact_handoff.unwrap_or_default();
        if let Ok(v) = serde_json::to_value(handoff) {
            obj.insert("artifact_handoff".into(), v);
        }
    }
    if let Some(Value::String(project)) = obj.get("project_id")
        && crate::validate::is_valid_project_id(project)
        && !opts.project_ids.iter().any(|p| p == project)
    {
        problems.push(
            "/project_id",
            format!(
                "unknown project {}: not a configured project alias",
                quote(project)
            ),
        );
    }

    let agents: Vec<&str> = if opts.known_agents.is_empty() {
        crate::BUILTIN_AGENTS.to_vec()
    } else {
        opts.known_agents.iter().map(String::as_str).collect()
    };
    let result = validate_job(&Value::Object(obj), &agents);
    match (result, problems.is_empty()) {
        (Ok(job), true) => Ok(job),
        (Ok(_), false) => Err(problems),
        (Err(v), _) => {
            // A field normalize already reported (a default pipeline that
            // could not be built) is not reported again as missing.
            let mut all: Violations = v
                .into_iter()
                .filter(|v| !problems.has_pointer(&v.pointer))
                .collect();
            all.extend(problems);
            Err(all)
        }
    }
}

/// The default pipeline as a JSON array for `goal`. On a template read
/// error, returns the template's file name (not its path: messages may
/// reach a webhook client).
fn default_steps(goal: &str, prompts_dir: Option<&Path>) -> Result<Value, &'static str> {
    let mut steps = Vec::with_capacity(DEFAULT_PIPELINE.len());
    for s in DEFAULT_PIPELINE {
        let template = s.template(prompts_dir).map_err(|_| s.template_file)?;
        steps.push(json!({
            "step_id": s.step_id,
            "agent": s.agent,
            "role": s.role,
            "prompt": PipelineStep::render(&template, goal),
            "timeout_sec": s.timeout_sec,
            "max_retries": crate::job::DEFAULT_MAX_RETRIES,
            "retry_backoff_sec": crate::job::DEFAULT_RETRY_BACKOFF_SEC,
            "input_artifacts": s.input_artifacts,
            "on_failure": "stop",
        }));
    }
    Ok(Value::Array(steps))
}

/// Deepest nesting of arrays and objects a payload may have. Real jobs need
/// a handful of levels; the bound keeps recursion in every later consumer
/// (serde, the validator, loggers) far from any stack limit.
pub const MAX_NESTING_DEPTH: usize = 64;

/// Parses raw bytes (a request body, a submitted file, a schedule payload)
/// into JSON, with one clear violation (pointer `""`) for: empty input,
/// invalid UTF-8 (with the byte offset), nesting deeper than
/// [`MAX_NESTING_DEPTH`], truncated or malformed JSON (with line and column)
/// and duplicate object keys (which different parsers resolve differently).
/// A leading UTF-8 byte order mark is ignored. Any JSON value is returned;
/// [`normalize`] refuses non-objects.
pub fn parse_payload_bytes(bytes: &[u8]) -> Result<Value, Violations> {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let (bytes, skipped) = match bytes.strip_prefix(BOM) {
        Some(rest) => (rest, BOM.len()),
        None => (bytes, 0),
    };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Violations::single(
            "",
            format!(
                "the input is not valid UTF-8: invalid byte sequence at byte offset {}",
                e.valid_up_to() + skipped
            ),
        )
    })?;
    if text.trim_matches([' ', '\t', '\n', '\r']).is_empty() {
        return Err(Violations::single(
            "",
            "the input is empty: expected a JSON object",
        ));
    }
    if let Some(offset) = too_deep(text.as_bytes()) {
        let (line, column) = line_column(text, offset);
        return Err(Violations::single(
            "",
            format!(
                "the JSON is nested deeper than {MAX_NESTING_DEPTH} levels \
                 (at line {line}, column {column})"
            ),
        ));
    }
    match serde_json::from_str::<StrictValue>(text) {
        Ok(StrictValue(v)) => Ok(v),
        Err(e) => {
            let (line, column) = (e.line(), e.column());
            let text = e.to_string();
            // serde_json appends " at line L column C"; we say it our way.
            let reason = text
                .rsplit_once(" at line ")
                .map_or(text.as_str(), |(r, _)| r);
            let message = match e.classify() {
                serde_json::error::Category::Eof => format!(
                    "the JSON is truncated: unexpected end of input at line {line}, column {column}"
                ),
                _ => format!("malformed JSON at line {line}, column {column}: {reason}"),
            };
            Err(Violations::single("", message))
        }
    }
}

/// Byte offset of the first bracket that opens level `MAX_NESTING_DEPTH + 1`,
/// found by a scan that skips string contents (brackets inside strings do
/// not nest). Runs before the parser so no recursion happens at all.
fn too_deep(b: &[u8]) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &c) in b.iter().enumerate() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING_DEPTH {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// A `serde_json::Value` that refuses duplicate object keys: `{"goal": "a",
/// "goal": "b"}` means different things to different parsers, so orch
/// accepts neither meaning.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {}", quote(&key))));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_scan_ignores_brackets_in_strings() {
        let deep_in_string = format!("{{\"a\": \"{}\"}}", "[".repeat(1000));
        assert_eq!(too_deep(deep_in_string.as_bytes()), None);
        let escaped_quote = format!("{{\"a\": \"\\\"{}\"}}", "{".repeat(100));
        assert_eq!(too_deep(escaped_quote.as_bytes()), None);
        let deep = "[".repeat(MAX_NESTING_DEPTH + 1);
        assert_eq!(too_deep(deep.as_bytes()), Some(MAX_NESTING_DEPTH));
        assert_eq!(too_deep("[".repeat(MAX_NESTING_DEPTH).as_bytes()), None);
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("ab\ncä d", 6), (2, 3));
        assert_eq!(line_column("x", 0), (1, 1));
    }

    #[test]
    fn render_always_contains_the_goal() {
        assert_eq!(PipelineStep::render("do {goal} now", "X"), "do X now");
        assert!(PipelineStep::render("no placeholder", "the goal").contains("the goal"));
    }

    #[test]
    fn default_pipeline_matches_spec_table() {
        let ids: Vec<_> = DEFAULT_PIPELINE.iter().map(|s| s.step_id).collect();
        assert_eq!(ids, ["01_plan", "02_implement", "03_review"]);
        for s in DEFAULT_PIPELINE {
            assert!(
                s.embedded_template.contains(GOAL_PLACEHOLDER),
                "{}",
                s.template_file
            );
        }
    }
}
