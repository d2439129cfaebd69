//! Builds the prompt an agent receives for one step: the system prompt chosen
//! by the step's **role** (not its agent), the task, the goal, the context
//! window, and the input artifacts under the MVP's limits and markers.
//! The prompt reaches agents on stdin or in a file, never on argv.

use artifacts::JobArtifacts;
use contracts::{ContextMessage, Job, Step};
use std::path::Path;

/// Limits on input artifacts (`MAX_INPUT_ARTIFACTS_FILES`,
/// `MAX_INPUT_ARTIFACT_CHARS`, `MAX_INPUT_ARTIFACTS_CHARS`).
#[derive(Debug, Clone, Copy)]
pub struct InputLimits {
    pub max_files: usize,
    pub max_file_chars: usize,
    pub max_total_chars: usize,
}

impl Default for InputLimits {
    fn default() -> Self {
        Self {
            max_files: 10,
            max_file_chars: 12_000,
            max_total_chars: 40_000,
        }
    }
}

pub const MARK_FILE_LIMIT: &str = "[truncated:file_limit]";
pub const MARK_TOTAL_LIMIT: &str = "[truncated:total_limit]";
pub const MARK_INVALID_PATH: &str = "[invalid_path]";
pub const MARK_MISSING: &str = "[missing]";
pub const MARK_LIMITED: &str = "[artifacts_truncated_or_limited]";

const ROLE_PROMPTS: &[(&str, &str)] = &[
    (
        "planner",
        include_str!("../../../contracts/prompts/roles/planner.md"),
    ),
    (
        "implementer",
        include_str!("../../../contracts/prompts/roles/implementer.md"),
    ),
    (
        "reviewer",
        include_str!("../../../contracts/prompts/roles/reviewer.md"),
    ),
];
const DEFAULT_ROLE_PROMPT: &str = include_str!("../../../contracts/prompts/roles/default.md");

/// The system prompt for a role: `<prompts_dir>/roles/<role>.md` when an
/// operator provides one, else the built-in prompt for the role, else the
/// generic one. Role names are free text, so only safe file names are looked
/// up on disk.
pub fn system_prompt(role: &str, prompts_dir: Option<&Path>) -> String {
    let safe = !role.is_empty()
        && role.len() <= 64
        && role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if let (Some(dir), true) = (prompts_dir, safe)
        && let Ok(s) = std::fs::read_to_string(dir.join("roles").join(format!("{role}.md")))
    {
        return s;
    }
    ROLE_PROMPTS
        .iter()
        .find(|(r, _)| *r == role)
        .map(|(_, p)| (*p).to_owned())
        .unwrap_or_else(|| DEFAULT_ROLE_PROMPT.to_owned())
}

/// Renders the full prompt of a step.
pub fn build(
    job: &Job,
    step: &Step,
    context: &[ContextMessage],
    arts: &JobArtifacts,
    limits: InputLimits,
    prompts_dir: Option<&Path>,
) -> String {
    let mut out = String::new();
    out.push_str("# System\n\n");
    out.push_str(system_prompt(&step.role, prompts_dir).trim_end());
    out.push_str("\n\n# Task\n\n");
    out.push_str(step.prompt.trim_end());
    out.push_str("\n\n# Goal\n\n");
    out.push_str(job.goal.trim());
    out.push('\n');
    if !context.is_empty() {
        out.push_str("\n# Context\n\n");
        for m in context {
            out.push_str(&format!("[{}] {}\n", m.role, m.content));
        }
    }
    if !step.input_artifacts.is_empty() {
        out.push_str("\n# Input artifacts\n");
        out.push_str(&input_artifacts(&step.input_artifacts, arts, limits));
    }
    out
}

/// Renders input artifacts with the MVP's limits and markers.
pub fn input_artifacts(paths: &[String], arts: &JobArtifacts, limits: InputLimits) -> String {
    let mut out = String::new();
    let mut total = 0usize;
    let mut limited = false;
    for (i, rel) in paths.iter().enumerate() {
        if i >= limits.max_files {
            limited = true;
            break;
        }
        out.push_str(&format!("\n--- {rel} ---\n"));
        // Read at most 4 bytes per allowed char: enough for any UTF-8.
        let cap = limits.max_file_chars.saturating_mul(4) as u64 + 4;
        let text = match arts.read_file(rel, cap) {
            Ok(read) => String::from_utf8_lossy(&read.data).into_owned(),
            Err(e) if e.is_invalid_path() => {
                out.push_str(MARK_INVALID_PATH);
                out.push('\n');
                continue;
            }
            Err(_) => {
                out.push_str(MARK_MISSING);
                out.push('\n');
                continue;
            }
        };
        let mut chars: Vec<char> = text.chars().collect();
        let mut marks = Vec::new();
        if chars.len() > limits.max_file_chars {
            chars.truncate(limits.max_file_chars);
            marks.push(MARK_FILE_LIMIT);
            limited = true;
        }
        let room = limits.max_total_chars.saturating_sub(total);
        if chars.len() > room {
            chars.truncate(room);
            marks.push(MARK_TOTAL_LIMIT);
            limited = true;
        }
        total += chars.len();
        out.extend(chars);
        if !out.ends_with('\n') {
            out.push('\n');
        }
        for m in marks {
            out.push_str(m);
            out.push('\n');
        }
        if total >= limits.max_total_chars && i + 1 < paths.len() {
            limited = true;
            break;
        }
    }
    if limited {
        out.push_str(MARK_LIMITED);
        out.push('\n');
    }
    out
}
