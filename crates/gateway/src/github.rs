//! GitHub events → job payloads. Only signed deliveries reach this module
//! (the signature is checked on the raw body first, in `intake`).
//!
//! Which events become jobs is configurable (`--github-config FILE`, a JSON
//! object; every field optional):
//!
//! ```json
//! { "command": "/orch",
//!   "labels": ["orch"],
//!   "allowed_associations": ["OWNER", "MEMBER", "COLLABORATOR"],
//!   "repositories": { "octo/app": "app" },
//!   "only_mapped_repositories": false,
//!   "tags": ["github"],
//!   "requires_approval": false }
//! ```
//!
//! - `issue_comment` / `pull_request_review_comment` (`created`) whose body
//!   starts with the command word: the rest of the comment is the goal (the
//!   issue or PR title when empty). Only authors whose
//!   `author_association` is allowed can trigger jobs: on a public
//!   repository anyone can comment.
//! - `issues` / `pull_request` (`labeled`) with one of the labels: the
//!   title and body are the goal.
//! - everything else is ignored (204).
//!
//! The event's context (repository, number, URL, sender, delivery id, ...)
//! goes into `metadata.github`; the repository's mapped project into
//! `project_id`.

use contracts::env::ConfigError;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::Path;

/// The event mapping.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GithubMapping {
    pub command: String,
    pub labels: Vec<String>,
    pub allowed_associations: Vec<String>,
    pub repositories: BTreeMap<String, String>,
    pub only_mapped_repositories: bool,
    pub tags: Vec<String>,
    pub requires_approval: bool,
}

impl Default for GithubMapping {
    fn default() -> Self {
        Self {
            command: "/orch".into(),
            labels: vec!["orch".into()],
            allowed_associations: vec!["OWNER".into(), "MEMBER".into(), "COLLABORATOR".into()],
            repositories: BTreeMap::new(),
            only_mapped_repositories: false,
            tags: vec!["github".into()],
            requires_approval: false,
        }
    }
}

impl GithubMapping {
    /// Reads and checks a mapping file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::Invalid {
            var: "--github-config",
            value: format!("{:?}", path.display().to_string()),
            expected: why,
        };
        let bytes = std::fs::read(path).map_err(|e| bad(format!("a readable file ({e})")))?;
        let m: Self = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("a GitHub mapping object as in docs/API.md ({e})")))?;
        if m.command.trim().is_empty() || m.command.chars().any(char::is_whitespace) {
            return Err(bad("\"command\" to be one word such as /orch".into()));
        }
        for p in m.repositories.values() {
            if !contracts::validate::is_valid_project_id(p) {
                return Err(bad(format!("{p:?} to be a valid project id")));
            }
        }
        Ok(m)
    }
}

/// What a delivery means.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Turn it into a job with this payload (before normalisation).
    Job(Value),
    /// Nothing to do, for this reason.
    Ignore(String),
}

/// Most characters of an issue body carried into a goal.
const GOAL_MAX_CHARS: usize = contracts::validate::limits::GOAL_MAX_CHARS;

fn cut(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

/// Maps one event (`X-GitHub-Event`) with its parsed body.
pub fn map_event(m: &GithubMapping, event: &str, delivery: Option<&str>, body: &Value) -> Outcome {
    let action = str_at(body, &["action"]).unwrap_or("");
    let repo = str_at(body, &["repository", "full_name"]).unwrap_or("");
    let project = m.repositories.get(repo).cloned();
    if m.only_mapped_repositories && project.is_none() {
        return Outcome::Ignore(format!("repository {repo:?} is not mapped"));
    }
    // The issue or pull request the event is about.
    let (item, is_pr) = match event {
        "issue_comment" | "issues" => {
            let issue = body.get("issue").unwrap_or(&Value::Null);
            (issue, issue.get("pull_request").is_some())
        }
        "pull_request" | "pull_request_review_comment" => {
            (body.get("pull_request").unwrap_or(&Value::Null), true)
        }
        _ => return Outcome::Ignore(format!("event {event:?} is not mapped")),
    };
    let title = str_at(item, &["title"]).unwrap_or("");
    let mut ctx = Map::new();
    ctx.insert("event".into(), event.into());
    ctx.insert("action".into(), action.into());
    ctx.insert("delivery".into(), delivery.map_or(Value::Null, Value::from));
    ctx.insert("repository".into(), repo.into());
    ctx.insert(
        "number".into(),
        item.get("number").cloned().unwrap_or(Value::Null),
    );
    ctx.insert("is_pull_request".into(), is_pr.into());
    ctx.insert(
        "url".into(),
        str_at(item, &["html_url"]).map_or(Value::Null, Value::from),
    );
    ctx.insert(
        "sender".into(),
        str_at(body, &["sender", "login"]).map_or(Value::Null, Value::from),
    );
    ctx.insert("title".into(), cut(title, 300).into());

    let goal = match (event, action) {
        ("issue_comment" | "pull_request_review_comment", "created") => {
            let text = str_at(body, &["comment", "body"]).unwrap_or("");
            let Some(rest) = command_rest(text, &m.command) else {
                return Outcome::Ignore("comment does not start with the command".into());
            };
            let assoc = str_at(body, &["comment", "author_association"]).unwrap_or("NONE");
            if !m
                .allowed_associations
                .iter()
                .any(|a| a.eq_ignore_ascii_case(assoc))
            {
                return Outcome::Ignore(format!(
                    "comment author association {assoc:?} may not trigger jobs"
                ));
            }
            ctx.insert(
                "comment_id".into(),
                body.pointer("/comment/id").cloned().unwrap_or(Value::Null),
            );
            ctx.insert(
                "comment_url".into(),
                str_at(body, &["comment", "html_url"]).map_or(Value::Null, Value::from),
            );
            if rest.is_empty() {
                title.to_owned()
            } else {
                rest
            }
        }
        ("issues" | "pull_request", "labeled") => {
            let label = str_at(body, &["label", "name"]).unwrap_or("");
            if !m.labels.iter().any(|l| l == label) {
                return Outcome::Ignore(format!("label {label:?} is not mapped"));
            }
            ctx.insert("label".into(), label.into());
            let text = str_at(item, &["body"]).unwrap_or("");
            if text.trim().is_empty() {
                title.to_owned()
            } else {
                format!("{title}\n\n{text}")
            }
        }
        _ => return Outcome::Ignore(format!("action {action:?} of {event:?} is not mapped")),
    };
    let mut payload = json!({
        "goal": cut(goal.trim(), GOAL_MAX_CHARS),
        "tags": m.tags,
        "metadata": { "github": Value::Object(ctx) },
    });
    if let Some(p) = project {
        payload["project_id"] = p.into();
    }
    if m.requires_approval {
        payload["policy"] = json!({ "requires_approval": true });
    }
    Outcome::Job(payload)
}

/// The text after a leading command word, or `None` if the text does not
/// start with it (as a whole word).
fn command_rest(text: &str, command: &str) -> Option<String> {
    let t = text.trim_start();
    let rest = t.strip_prefix(command)?;
    if !(rest.is_empty() || rest.starts_with(char::is_whitespace)) {
        return None;
    }
    Some(rest.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comment(body: &str, assoc: &str) -> Value {
        json!({
            "action": "created",
            "repository": {"full_name": "octo/app"},
            "issue": {"number": 7, "title": "Crash on start", "html_url": "https://github.com/octo/app/issues/7"},
            "comment": {"id": 99, "body": body, "author_association": assoc},
            "sender": {"login": "octocat"}
        })
    }

    #[test]
    fn comment_command() {
        let m = GithubMapping {
            repositories: [("octo/app".to_owned(), "app".to_owned())].into(),
            ..Default::default()
        };
        let Outcome::Job(p) = map_event(
            &m,
            "issue_comment",
            Some("d1"),
            &comment("/orch fix it", "MEMBER"),
        ) else {
            panic!()
        };
        assert_eq!(p["goal"], "fix it");
        assert_eq!(p["project_id"], "app");
        assert_eq!(p["metadata"]["github"]["number"], 7);
        assert_eq!(p["metadata"]["github"]["delivery"], "d1");
        let Outcome::Job(p) = map_event(&m, "issue_comment", None, &comment("  /orch", "OWNER"))
        else {
            panic!()
        };
        assert_eq!(p["goal"], "Crash on start");
        for (body, assoc) in [
            ("/orchestrate x", "MEMBER"),
            ("hello", "MEMBER"),
            ("/orch x", "NONE"),
        ] {
            assert!(matches!(
                map_event(&m, "issue_comment", None, &comment(body, assoc)),
                Outcome::Ignore(_)
            ));
        }
    }

    #[test]
    fn labels_and_other_events() {
        let m = GithubMapping::default();
        let ev = json!({
            "action": "labeled", "label": {"name": "orch"},
            "repository": {"full_name": "a/b"},
            "pull_request": {"number": 3, "title": "T", "body": "B"}
        });
        let Outcome::Job(p) = map_event(&m, "pull_request", None, &ev) else {
            panic!()
        };
        assert_eq!(p["goal"], "T\n\nB");
        assert_eq!(p["metadata"]["github"]["is_pull_request"], true);
        assert!(matches!(
            map_event(&m, "push", None, &ev),
            Outcome::Ignore(_)
        ));
        let other = json!({"action": "labeled", "label": {"name": "bug"}, "issue": {}});
        assert!(matches!(
            map_event(&m, "issues", None, &other),
            Outcome::Ignore(_)
        ));
    }
}
