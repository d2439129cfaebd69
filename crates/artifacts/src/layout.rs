//! The fixed names of the artifacts tree (SPEC §4) and the relative paths
//! recorded in `result.json`. This is an API boundary: operators, the gateway
//! and the Python MVP's users read these exact names.
//!
//! ```text
//! artifacts/<job_id>/
//!   job.json state.json context.json result.json report.md patch.diff logs.txt
//!   steps/<step_id>/
//!     result.json report.md patch.diff logs.txt [raw_stdout.txt raw_stderr.txt]
//! ```

use crate::error::{ArtifactError, Result};
use contracts::{ResultArtifacts, StepId};

pub const JOB_JSON: &str = "job.json";
pub const STATE_JSON: &str = "state.json";
pub const CONTEXT_JSON: &str = "context.json";
pub const RESULT_JSON: &str = "result.json";
pub const REPORT_MD: &str = "report.md";
pub const PATCH_DIFF: &str = "patch.diff";
pub const LOGS_TXT: &str = "logs.txt";
pub const RAW_STDOUT: &str = "raw_stdout.txt";
pub const RAW_STDERR: &str = "raw_stderr.txt";
/// The directory holding one sub-directory per step.
pub const STEPS_DIR: &str = "steps";

/// The seven files every started job has.
pub const JOB_FILES: [&str; 7] = [
    JOB_JSON,
    STATE_JSON,
    CONTEXT_JSON,
    RESULT_JSON,
    REPORT_MD,
    PATCH_DIFF,
    LOGS_TXT,
];

/// The four files every started step has (the raw streams exist only in
/// real-CLI mode).
pub const STEP_FILES: [&str; 4] = [RESULT_JSON, REPORT_MD, PATCH_DIFF, LOGS_TXT];

/// `artifacts` of a job `result.json`: paths relative to the job directory.
pub fn job_result_paths() -> ResultArtifacts {
    ResultArtifacts {
        report_md: REPORT_MD.to_owned(),
        patch_diff: PATCH_DIFF.to_owned(),
        logs_txt: LOGS_TXT.to_owned(),
        result_json: RESULT_JSON.to_owned(),
    }
}

/// `artifacts` of a step `result.json`, e.g. `steps/01_plan/report.md`.
pub fn step_result_paths(step_id: &StepId) -> ResultArtifacts {
    ResultArtifacts {
        report_md: step_rel(step_id, REPORT_MD),
        patch_diff: step_rel(step_id, PATCH_DIFF),
        logs_txt: step_rel(step_id, LOGS_TXT),
        result_json: step_rel(step_id, RESULT_JSON),
    }
}

/// `steps/<step_id>/<file>`, relative to the job directory.
pub fn step_rel(step_id: &StepId, file: &str) -> String {
    format!("{STEPS_DIR}/{step_id}/{file}")
}

/// Splits a caller-supplied path relative to the job directory into plain
/// components, refusing anything that could name a file outside it.
///
/// Accepted: `a/b`, `./a`, `a//b` (empty and `.` components are dropped).
/// Refused: empty paths, absolute paths, any `..` component, NUL bytes.
/// Symlinks are not judged here (that needs the file system); see
/// `nofollow::open_beneath`.
pub fn split_rel(rel: &str) -> Result<Vec<&str>> {
    let escape = || ArtifactError::Escape {
        rel: rel.chars().take(200).collect(),
    };
    if rel.is_empty() || rel.starts_with('/') || rel.contains('\0') {
        return Err(escape());
    }
    let mut parts = Vec::new();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(escape()),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(escape());
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rel_accepts_plain_paths() {
        assert_eq!(split_rel("report.md").unwrap(), ["report.md"]);
        assert_eq!(
            split_rel("./steps//01_plan/report.md").unwrap(),
            ["steps", "01_plan", "report.md"]
        );
    }

    #[test]
    fn split_rel_refuses_escapes() {
        for bad in [
            "",
            ".",
            "./",
            "/etc/passwd",
            "..",
            "../x",
            "steps/../../x",
            "steps/01/..",
            "a\0b",
        ] {
            let err = split_rel(bad).unwrap_err();
            assert!(
                matches!(err, ArtifactError::Escape { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn result_paths() {
        let id = StepId::parse("01_plan").unwrap();
        let p = step_result_paths(&id);
        assert_eq!(p.report_md, "steps/01_plan/report.md");
        assert_eq!(p.result_json, "steps/01_plan/result.json");
        assert_eq!(job_result_paths().patch_diff, "patch.diff");
    }
}
