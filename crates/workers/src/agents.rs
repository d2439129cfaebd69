//! Agent definitions: the three built-in CLIs (Claude Code, Codex,
//! OpenCode) and custom agents declared in the `AGENTS_CONFIG` file, so a
//! new CLI (Gemini, Kimi, aider, an in-house tool) plugs in without
//! recompiling. `docs/ADD_AGENT.md` documents the file.
//!
//! An agent is an **argv template**: literal strings, placeholders such as
//! `{model}`, and optional groups (a JSON array inside `argv`) that are
//! kept only when every placeholder in them has a value — so
//! `["--model", "{model}"]` disappears when no model is configured. The
//! prompt never goes on argv (SPEC §15 defect 20): it is fed on stdin, or
//! written to a private file named by `{prompt_file}`. A template that uses
//! `{prompt}` is refused.

use crate::output::OutputFormat;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Placeholders an argv template may use.
pub const PLACEHOLDERS: &[&str] = &[
    "model",
    "allowed_tools",
    "sandbox_mode",
    "workdir",
    "state_dir",
    "prompt_file",
    "role",
    "step_id",
    "job_id",
];

/// Claude Code tool names orch passes through `--allowedTools`; anything
/// else in a step's `allowed_tools` is dropped with a warning.
pub const CLAUDE_TOOLS: &[&str] = &[
    "Bash",
    "Edit",
    "Glob",
    "Grep",
    "LS",
    "MultiEdit",
    "NotebookEdit",
    "NotebookRead",
    "Read",
    "Task",
    "TodoWrite",
    "WebFetch",
    "WebSearch",
    "Write",
];

/// The tools of read-only roles (reviewers, planners).
pub const READ_ONLY_TOOLS: &[&str] = &["Read", "Grep", "Glob"];

/// One element of an argv template.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ArgItem {
    /// A literal, possibly with placeholders.
    One(String),
    /// Kept only when all its placeholders have values.
    Group(Vec<String>),
}

/// How the prompt reaches the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptMode {
    #[default]
    Stdin,
    /// Written to `<state_dir>/prompts/<step>-<attempt>.md` (mode 0600),
    /// whose path is `{prompt_file}`.
    File,
}

/// USD per million tokens, for CLIs that report tokens but no cost.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// Cached input tokens; defaults to the input price.
    #[serde(default)]
    pub cached_input_per_mtok: Option<f64>,
}

impl Price {
    pub fn cost(&self, tokens_in: u64, cached_in: u64, tokens_out: u64) -> f64 {
        let cached = cached_in.min(tokens_in);
        let fresh = tokens_in - cached;
        let per = 1_000_000.0;
        fresh as f64 * self.input_per_mtok / per
            + cached as f64 * self.cached_input_per_mtok.unwrap_or(self.input_per_mtok) / per
            + tokens_out as f64 * self.output_per_mtok / per
    }
}

/// A fully validated agent definition.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpec {
    pub name: String,
    pub argv: Vec<ArgItem>,
    pub format: OutputFormat,
    /// Every binary the agent needs; `argv[0]` is one of them. Preflight
    /// checks exactly these.
    pub binaries: Vec<String>,
    pub prompt: PromptMode,
    pub model: Option<String>,
    /// The agent refuses to work outside a git work tree (Codex), so a
    /// non-git workdir ends the step with `NON_GIT_WORKDIR_STATUS`.
    pub needs_git: bool,
    /// Extra read-only paths the sandbox must show (a runtime installed
    /// outside `/usr`, e.g. `~/.nvm`).
    pub ro_paths: Vec<PathBuf>,
    /// Price table by model (`*` = any model), for token-only CLIs.
    pub prices: BTreeMap<String, Price>,
    /// Resource limits for this agent's steps (within the operator's
    /// `SANDBOX_*` maxima; a job can lower them further).
    pub limits: contracts::ResourceLimits,
}

impl AgentSpec {
    /// The price for `model`, or the `*` entry.
    pub fn price(&self) -> Option<&Price> {
        self.model
            .as_ref()
            .and_then(|m| self.prices.get(m))
            .or_else(|| self.prices.get("*"))
    }

    /// The program of `argv[0]`.
    pub fn program(&self) -> &str {
        match self.argv.first() {
            Some(ArgItem::One(s)) => s,
            _ => "",
        }
    }
}

fn one(s: &str) -> ArgItem {
    ArgItem::One(s.to_owned())
}

fn group(items: &[&str]) -> ArgItem {
    ArgItem::Group(items.iter().map(|s| (*s).to_owned()).collect())
}

/// The built-in agents, with the command lines of the current CLIs.
pub fn builtin() -> Vec<AgentSpec> {
    let base = |name: &str, argv: Vec<ArgItem>, format, needs_git| AgentSpec {
        name: name.to_owned(),
        argv,
        format,
        binaries: vec![name.to_owned()],
        prompt: PromptMode::Stdin,
        model: None,
        needs_git,
        ro_paths: Vec::new(),
        prices: BTreeMap::new(),
        limits: contracts::ResourceLimits::default(),
    };
    vec![
        base(
            "claude",
            vec![
                one("claude"),
                one("-p"),
                one("--output-format"),
                one("json"),
                group(&["--allowedTools", "{allowed_tools}"]),
                group(&["--model", "{model}"]),
            ],
            OutputFormat::ClaudeJson,
            false,
        ),
        base(
            "codex",
            vec![
                one("codex"),
                one("exec"),
                one("--json"),
                group(&["-m", "{model}"]),
                group(&["-s", "{sandbox_mode}"]),
                one("-"),
            ],
            OutputFormat::CodexJsonl,
            true,
        ),
        base(
            "opencode",
            vec![
                one("opencode"),
                one("run"),
                one("--format"),
                one("json"),
                group(&["-m", "{model}"]),
            ],
            OutputFormat::OpencodeJsonl,
            false,
        ),
    ]
}

/// One agent as written in the config file. Fields left out of an entry
/// named like a built-in agent keep the built-in's values, so
/// `{"name": "codex", "model": "gpt-5-codex", "prices": {...}}` is enough to
/// configure Codex.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: String,
    #[serde(default)]
    argv: Option<Vec<ArgItem>>,
    #[serde(default)]
    output_format: Option<OutputFormat>,
    #[serde(default)]
    binaries: Option<Vec<String>>,
    #[serde(default)]
    prompt: Option<PromptMode>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    needs_git: Option<bool>,
    #[serde(default)]
    ro_paths: Vec<PathBuf>,
    #[serde(default)]
    prices: BTreeMap<String, Price>,
    #[serde(default)]
    limits: Option<contracts::ResourceLimits>,
}

/// The agents config file, resolved.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentsFile {
    /// Built-in agents (possibly overridden) and custom ones.
    pub agents: Vec<AgentSpec>,
    /// A directory copied into every job's state directory before its
    /// first agent runs (operator-provided credentials and settings).
    pub state_seed_dir: Option<PathBuf>,
}

/// A bad agents config: the file, the agent (by index and name) and what
/// is wrong.
#[derive(Debug, thiserror::Error)]
pub enum AgentsConfigError {
    #[error("cannot read agents config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "agents config {path}: {message}; hint: the file is a JSON list of agents (or {{\"agents\": [...]}}), see docs/ADD_AGENT.md"
    )]
    Parse { path: PathBuf, message: String },
    #[error("agents config {path}: agent #{index} ({name:?}): {message}")]
    Invalid {
        path: PathBuf,
        index: usize,
        name: String,
        message: String,
    },
}

/// The built-in agents plus those of the config file at `path` (entries
/// named like a built-in override it).
pub fn load(path: Option<&Path>) -> Result<Vec<AgentSpec>, AgentsConfigError> {
    Ok(load_file(path)?.agents)
}

/// [`load`], with the file's other settings.
pub fn load_file(path: Option<&Path>) -> Result<AgentsFile, AgentsConfigError> {
    let mut agents = builtin();
    let Some(path) = path else {
        return Ok(AgentsFile {
            agents,
            state_seed_dir: None,
        });
    };
    let text = std::fs::read_to_string(path).map_err(|source| AgentsConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let (list, state_seed_dir) = parse_file(&text, path)?;
    for spec in list {
        match agents.iter_mut().find(|a| a.name == spec.name) {
            Some(slot) => *slot = spec,
            None => agents.push(spec),
        }
    }
    if let Some(seed) = &state_seed_dir
        && !seed.is_absolute()
    {
        return Err(AgentsConfigError::Parse {
            path: path.to_owned(),
            message: format!("state_seed_dir {} must be an absolute path", seed.display()),
        });
    }
    Ok(AgentsFile {
        agents,
        state_seed_dir,
    })
}

/// Parses and validates config text (named `path` in errors).
pub fn parse_config(text: &str, path: &Path) -> Result<Vec<AgentSpec>, AgentsConfigError> {
    Ok(parse_file(text, path)?.0)
}

fn parse_file(
    text: &str,
    path: &Path,
) -> Result<(Vec<AgentSpec>, Option<PathBuf>), AgentsConfigError> {
    // Parse as a value first so a bad agent entry is reported with serde's
    // own message (the untagged enum would only say "did not match").
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| AgentsConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    let (items, seed) = match value {
        serde_json::Value::Array(items) => (items, None),
        serde_json::Value::Object(_) => {
            let obj: RawObjectShell =
                serde_json::from_value(value).map_err(|e| AgentsConfigError::Parse {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
            (obj.agents, obj.state_seed_dir)
        }
        _ => {
            return Err(AgentsConfigError::Parse {
                path: path.to_owned(),
                message: "expected a JSON list or object".into(),
            });
        }
    };
    let mut list = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let name = item
            .get("name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_owned();
        let raw: RawAgent =
            serde_json::from_value(item).map_err(|e| AgentsConfigError::Invalid {
                path: path.to_owned(),
                index,
                name,
                message: e.to_string(),
            })?;
        list.push(raw);
    }
    Ok((validate_all(list, path)?, seed))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObjectShell {
    agents: Vec<serde_json::Value>,
    #[serde(default)]
    state_seed_dir: Option<PathBuf>,
}

fn validate_all(list: Vec<RawAgent>, path: &Path) -> Result<Vec<AgentSpec>, AgentsConfigError> {
    let builtins = builtin();
    let mut out: Vec<AgentSpec> = Vec::new();
    for (index, r) in list.into_iter().enumerate() {
        let err = |message: String| AgentsConfigError::Invalid {
            path: path.to_owned(),
            index,
            name: r.name.clone(),
            message,
        };
        if !valid_name(&r.name) {
            return Err(err(
                "name must be 1..32 characters of [a-z0-9_-], starting with a letter".into(),
            ));
        }
        if out.iter().any(|a| a.name == r.name) {
            return Err(err("declared twice".into()));
        }
        let base = builtins.iter().find(|b| b.name == r.name);
        let spec = AgentSpec {
            name: r.name.clone(),
            argv: match (&r.argv, base) {
                (Some(a), _) => a.clone(),
                (None, Some(b)) => b.argv.clone(),
                (None, None) => return Err(err("argv is required".into())),
            },
            format: match (r.output_format, base) {
                (Some(f), _) => f,
                (None, Some(b)) => b.format,
                (None, None) => {
                    return Err(err(
                        "output_format is required: claude-json, codex-jsonl, opencode-jsonl or text"
                            .into(),
                    ));
                }
            },
            binaries: match (&r.binaries, base) {
                (Some(b), _) => b.clone(),
                (None, Some(b)) if r.argv.is_none() => b.binaries.clone(),
                // A new argv without binaries: its program is the binary.
                (None, _) => Vec::new(),
            },
            prompt: r.prompt.or(base.map(|b| b.prompt)).unwrap_or_default(),
            model: r.model.clone().or(base.and_then(|b| b.model.clone())),
            needs_git: r.needs_git.or(base.map(|b| b.needs_git)).unwrap_or(false),
            ro_paths: r.ro_paths.clone(),
            prices: r.prices.clone(),
            limits: r.limits.or(base.map(|b| b.limits)).unwrap_or_default(),
        };
        let mut spec = spec;
        if spec.binaries.is_empty() {
            spec.binaries = vec![spec.program().to_owned()];
        }
        validate(&spec).map_err(err)?;
        out.push(spec);
    }
    Ok(out)
}

fn valid_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Checks an agent definition; the message says what to change.
pub fn validate(spec: &AgentSpec) -> Result<(), String> {
    let Some(ArgItem::One(program)) = spec.argv.first() else {
        return Err("argv must start with the program name (a plain string)".into());
    };
    if program.contains('{') {
        return Err(format!("argv[0] {program:?} must not use placeholders"));
    }
    let relative_path = program.contains('/') && !Path::new(program).is_absolute();
    if program.is_empty() || relative_path {
        return Err(format!(
            "argv[0] {program:?} must be a bare program name or an absolute path"
        ));
    }
    if !spec.binaries.iter().any(|b| b == program) {
        return Err(format!(
            "binaries {:?} must include argv[0] {program:?}",
            spec.binaries
        ));
    }
    let mut uses_prompt_file = false;
    for item in &spec.argv {
        let parts: Vec<&String> = match item {
            ArgItem::One(s) => vec![s],
            ArgItem::Group(g) => {
                if g.is_empty() {
                    return Err("an optional argv group is empty".into());
                }
                g.iter().collect()
            }
        };
        for s in parts {
            for ph in placeholders(s)? {
                if ph == "prompt" {
                    return Err(
                        "{prompt} is not allowed: prompts never go on argv (visible in ps, size-limited); use \"prompt\": \"stdin\" or \"file\" with {prompt_file}"
                            .into(),
                    );
                }
                if !PLACEHOLDERS.contains(&ph.as_str()) {
                    return Err(format!(
                        "unknown placeholder {{{ph}}}; known: {}",
                        PLACEHOLDERS.join(", ")
                    ));
                }
                if ph == "prompt_file" {
                    uses_prompt_file = true;
                }
            }
        }
    }
    match (spec.prompt, uses_prompt_file) {
        (PromptMode::File, false) => {
            return Err("prompt is \"file\" but argv never uses {prompt_file}".into());
        }
        (PromptMode::Stdin, true) => {
            return Err("argv uses {prompt_file}; set \"prompt\": \"file\"".into());
        }
        _ => {}
    }
    for p in &spec.ro_paths {
        if !p.is_absolute() {
            return Err(format!("ro_paths entry {} must be absolute", p.display()));
        }
    }
    for (model, price) in &spec.prices {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if !ok(price.input_per_mtok)
            || !ok(price.output_per_mtok)
            || !price.cached_input_per_mtok.is_none_or(ok)
        {
            return Err(format!("price of {model:?} must be non-negative numbers"));
        }
    }
    Ok(())
}

/// The placeholder names in `s`; `{{`/`}}` are literal braces.
fn placeholders(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find(['{', '}']) {
        let c = rest.as_bytes()[i];
        if rest[i + 1..].starts_with(c as char) {
            rest = &rest[i + 2..];
            continue;
        }
        if c == b'}' {
            return Err(format!("unbalanced '}}' in argv item {s:?}"));
        }
        let Some(j) = rest[i + 1..].find('}') else {
            return Err(format!("unclosed '{{' in argv item {s:?}"));
        };
        out.push(rest[i + 1..i + 1 + j].to_owned());
        rest = &rest[i + 2 + j..];
    }
    Ok(out)
}

/// Expands a template with `values` (missing or empty = no value): groups
/// with a missing value vanish; a plain item with a missing value becomes
/// an empty argument only if it is nothing but that placeholder (then it
/// is dropped too).
pub fn expand(argv: &[ArgItem], values: &BTreeMap<&str, String>) -> Vec<String> {
    let subst = |s: &str| -> Option<String> {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find(['{', '}']) {
            out.push_str(&rest[..i]);
            let c = rest.as_bytes()[i] as char;
            if rest[i + 1..].starts_with(c) {
                out.push(c);
                rest = &rest[i + 2..];
                continue;
            }
            let j = rest[i + 1..].find('}')?;
            let v = values
                .get(&rest[i + 1..i + 1 + j])
                .filter(|v| !v.is_empty())?;
            out.push_str(v);
            rest = &rest[i + 2 + j..];
        }
        out.push_str(rest);
        Some(out)
    };
    let mut out = Vec::new();
    for item in argv {
        match item {
            ArgItem::One(s) => {
                if let Some(v) = subst(s) {
                    out.push(v);
                }
            }
            ArgItem::Group(g) => {
                let vals: Option<Vec<String>> = g.iter().map(|s| subst(s)).collect();
                if let Some(vals) = vals {
                    out.extend(vals);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_valid() {
        for a in builtin() {
            validate(&a).unwrap_or_else(|e| panic!("{}: {e}", a.name));
        }
    }

    #[test]
    fn groups_vanish_without_values() {
        let claude = &builtin()[0];
        let mut v = BTreeMap::new();
        assert_eq!(
            expand(&claude.argv, &v),
            ["claude", "-p", "--output-format", "json"]
        );
        v.insert("model", "opus".to_owned());
        v.insert("allowed_tools", "Read,Grep".to_owned());
        assert_eq!(
            expand(&claude.argv, &v),
            [
                "claude",
                "-p",
                "--output-format",
                "json",
                "--allowedTools",
                "Read,Grep",
                "--model",
                "opus"
            ]
        );
    }

    #[test]
    fn config_errors_are_precise() {
        let p = Path::new("agents.json");
        let cases = [
            (
                r#"[{"name":"g","argv":["gemini","{prompt}"],"output_format":"text"}]"#,
                "never go on argv",
            ),
            (
                r#"[{"name":"g","argv":["gemini","{nope}"],"output_format":"text"}]"#,
                "unknown placeholder",
            ),
            (
                r#"[{"name":"g","argv":["gemini"]}]"#,
                "output_format is required",
            ),
            (
                r#"[{"name":"G!","argv":["x"],"output_format":"text"}]"#,
                "name must be",
            ),
            (
                r#"[{"name":"g","argv":["gemini"],"output_format":"xml"}]"#,
                "agents config",
            ),
            (
                r#"[{"name":"g","argv":["gemini"],"output_format":"text","binaries":["other"]}]"#,
                "must include argv[0]",
            ),
            (
                r#"[{"name":"g","argv":["sh -c"],"output_format":"text","extra":1}]"#,
                "unknown field",
            ),
        ];
        for (text, want) in cases {
            let e = parse_config(text, p).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        let ok = parse_config(
            r#"{"agents":[{"name":"codex","model":"gpt-5-codex","prices":{"*":{"input_per_mtok":1.25,"output_per_mtok":10}}}]}"#,
            p,
        )
        .unwrap();
        assert_eq!(ok[0].binaries, ["codex"]);
        assert!(ok[0].price().is_some());
    }
}
