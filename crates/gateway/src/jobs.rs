//! The job API: `GET /jobs/{id}`, `GET /jobs` and the operator transitions
//! `POST /jobs/{id}/approve|reject|cancel|retry`.
//!
//! Ids go through `JobId::parse` before they touch the filesystem, so a
//! malformed id (`..`, `%2e%2e`, anything with a slash) is a plain 404 and
//! no path outside the queue and artifacts roots is ever built. A token
//! limited to some projects sees the jobs of those projects only: others
//! are 404, indistinguishable from unknown ids.
//!
//! Listing reads queue file *names* (the enqueue time is in the name) and,
//! for filters and the summary, each job document once: documents never
//! change after enqueue, so parsed summaries are cached by name. The
//! artifacts tree is never walked.

use crate::app::App;
use crate::auth::Principal;
use crate::http::{ApiError, Body, blocking, json_response};
use contracts::{JobId, ResultDoc};
use fsqueue::{Located, QueueError, State};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Largest job document read for a summary.
const MAX_DOC_BYTES: u64 = 8 * 1024 * 1024;
/// Summaries kept in memory.
const SUMMARY_CACHE_MAX: usize = 100_000;
/// Characters of the goal shown in listings.
const GOAL_EXCERPT_CHARS: usize = 200;

/// What listings show of a job document.
#[derive(Debug, Clone)]
pub struct Summary {
    pub project_id: Option<String>,
    pub tags: Vec<String>,
    pub created_at: Option<String>,
    pub goal: String,
}

/// Parsed summaries by `(enqueue seq, job id)`.
#[derive(Default)]
pub struct SummaryCache {
    map: Mutex<HashMap<(u64, String), Arc<Summary>>>,
}

impl SummaryCache {
    fn get(&self, loc: &Located) -> Option<Arc<Summary>> {
        let key = (loc.entry.seq, loc.entry.job_id.clone());
        if let Some(s) = self.map.lock().ok()?.get(&key) {
            return Some(s.clone());
        }
        let doc = read_doc(&loc.path)?;
        let s = Arc::new(summarize(&doc));
        let mut map = self.map.lock().ok()?;
        if map.len() >= SUMMARY_CACHE_MAX {
            map.clear();
        }
        map.insert(key, s.clone());
        Some(s)
    }
}

fn read_doc(path: &std::path::Path) -> Option<Value> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(MAX_DOC_BYTES).read_to_end(&mut buf).ok()?;
    serde_json::from_slice(&buf).ok()
}

fn summarize(doc: &Value) -> Summary {
    Summary {
        project_id: doc
            .get("project_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        tags: doc
            .get("tags")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        created_at: doc
            .get("created_at")
            .and_then(Value::as_str)
            .map(str::to_owned),
        goal: doc
            .get("goal")
            .and_then(Value::as_str)
            .unwrap_or("")
            .chars()
            .take(GOAL_EXCERPT_CHARS)
            .collect(),
    }
}

fn not_found() -> ApiError {
    ApiError::not_found("no such job")
}

fn storage_error(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "queue read failed");
    ApiError::unavailable("the queue could not be read")
}

/// `GET /jobs/{id}`.
pub async fn get(app: &Arc<App>, p: &Principal, id: &str) -> Result<Response<Body>, ApiError> {
    let id = JobId::parse(id).map_err(|_| not_found())?;
    let a = app.clone();
    let view = blocking(move || job_view(&a, &id)).await??;
    let Some(view) = view else {
        return Err(not_found());
    };
    let project = view.get("project_id").and_then(Value::as_str);
    if !p.projects.allows(project) {
        return Err(not_found());
    }
    Ok(json_response(StatusCode::OK, &view))
}

fn job_view(app: &App, id: &JobId) -> Result<Option<Value>, ApiError> {
    let loc = match app.queue.find(id.as_str()) {
        Ok(l) => l,
        Err(QueueError::BadJobId(_)) => return Err(not_found()),
        Err(e) => return Err(storage_error(e)),
    };
    let arts = app.store.job(id);
    let warn = |what: &str, e: &dyn std::fmt::Display| {
        tracing::warn!(job_id = %id, error = %e, "unreadable {what}");
    };
    let state_doc = arts.read_state().unwrap_or_else(|e| {
        warn("state.json", &e);
        None
    });
    let result: Option<ResultDoc> = arts.read_result().unwrap_or_else(|e| {
        warn("result.json", &e);
        None
    });
    let doc = match &loc {
        Some(l) => read_doc(&l.path),
        None => None,
    };
    let doc = match doc {
        Some(d) => Some(d),
        None => arts
            .read_job()
            .ok()
            .flatten()
            .and_then(|j| serde_json::to_value(j).ok()),
    };
    if loc.is_none() && doc.is_none() && state_doc.is_none() && result.is_none() {
        return Ok(None);
    }
    let summary = doc.as_ref().map(summarize);
    // The job status: the final result when there is one, else the live
    // state; null until a runner has started it (never a made-up "queued").
    let status = result
        .as_ref()
        .map(|r| r.status.as_str())
        .filter(|s| *s != "running" || state_doc.is_none())
        .or(state_doc.as_ref().map(|s| s.status.as_str()));
    Ok(Some(json!({
        "job_id": id.as_str(),
        "state": loc.as_ref().map(|l| l.state.dir_name()),
        "status": status,
        "attempt": loc.as_ref().map(|l| l.entry.attempt),
        "goal": doc.as_ref().and_then(|d| d.get("goal")).cloned(),
        "project_id": summary.as_ref().and_then(|s| s.project_id.clone()),
        "tags": summary.as_ref().map(|s| s.tags.clone()).unwrap_or_default(),
        "created_at": summary.as_ref().and_then(|s| s.created_at.clone()),
        "source": doc.as_ref().and_then(|d| d.get("source")).cloned(),
        "job_state": state_doc,
        "result": result,
        "status_url": format!("/jobs/{id}"),
    })))
}

/// Query of `GET /jobs`.
#[derive(Debug, Default)]
struct ListQuery {
    states: Vec<State>,
    tag: Option<String>,
    project: Option<String>,
    since_ns: Option<u64>,
    limit: usize,
    cursor: Option<(u64, String)>,
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn parse_query(q: &str) -> Result<ListQuery, ApiError> {
    let bad = |msg: String| ApiError::bad_request("bad_query", msg);
    let mut out = ListQuery {
        limit: 50,
        ..Default::default()
    };
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode(v).ok_or_else(|| bad(format!("{k}: not valid percent-encoded UTF-8")))?;
        if v.is_empty() {
            return Err(bad(format!(
                "{}: an empty value; leave the parameter out instead",
                k.chars().take(40).collect::<String>()
            )));
        }
        match k {
            "state" => {
                for s in v.split(',') {
                    out.states.push(State::parse(s).ok_or_else(|| {
                        bad(format!(
                            "state must be pending, awaiting_approval, running, done or failed, got {:?}",
                            s.chars().take(40).collect::<String>()
                        ))
                    })?);
                }
            }
            "tag" => out.tag = Some(v),
            "project" => out.project = Some(v),
            "since" => {
                let digits = v.bytes().all(|b| b.is_ascii_digit());
                let ns = if digits {
                    // At most 10 digits: Unix seconds up to the year 2286,
                    // in nanoseconds within u64.
                    (v.len() <= 10)
                        .then(|| v.parse::<u64>().ok())
                        .flatten()
                        .and_then(|secs| secs.checked_mul(1_000_000_000))
                } else {
                    // Enqueue times are u64 nanoseconds: clamp far dates.
                    v.parse::<jiff::Timestamp>()
                        .ok()
                        .map(|t| t.as_nanosecond().clamp(0, u64::MAX as i128) as u64)
                };
                out.since_ns =
                    Some(ns.ok_or_else(|| {
                        bad("since must be an RFC 3339 time or Unix seconds".into())
                    })?);
            }
            "limit" => {
                out.limit = match v.parse::<usize>() {
                    Ok(n) if (1..=500).contains(&n) && v.bytes().all(|b| b.is_ascii_digit()) => n,
                    _ => return Err(bad("limit must be a whole number from 1 to 500".into())),
                }
            }
            "cursor" => {
                let c = v
                    .split_once('.')
                    .and_then(|(seq, id)| {
                        Some((
                            seq.bytes()
                                .all(|b| b.is_ascii_digit())
                                .then(|| seq.parse::<u64>().ok())??,
                            JobId::parse(id).ok()?.as_str().to_owned(),
                        ))
                    })
                    .ok_or_else(|| bad("cursor is not one this server issued".into()))?;
                out.cursor = Some(c);
            }
            other => {
                return Err(bad(format!(
                    "unknown parameter {:?}: use state, tag, project, since, limit, cursor",
                    other.chars().take(40).collect::<String>()
                )));
            }
        }
    }
    if out.states.is_empty() {
        out.states = State::ALL.to_vec();
    }
    Ok(out)
}

/// `GET /jobs`: newest first, `limit` per page, `next_cursor` for the next.
pub async fn list(app: &Arc<App>, p: &Principal, query: &str) -> Result<Response<Body>, ApiError> {
    let q = parse_query(query)?;
    let (a, p) = (app.clone(), p.clone());
    let body = blocking(move || list_blocking(&a, &p, &q)).await??;
    Ok(json_response(StatusCode::OK, &body))
}

fn list_blocking(app: &App, p: &Principal, q: &ListQuery) -> Result<Value, ApiError> {
    let mut all: Vec<Located> = Vec::new();
    for st in &q.states {
        all.extend(app.queue.list(*st).map_err(storage_error)?);
    }
    all.sort_by(|a, b| (b.entry.seq, &b.entry.job_id).cmp(&(a.entry.seq, &a.entry.job_id)));
    let mut jobs = Vec::new();
    let mut next = None;
    for loc in &all {
        let key = (loc.entry.seq, loc.entry.job_id.clone());
        if let Some(c) = &q.cursor
            && key >= *c
        {
            continue;
        }
        if let Some(since) = q.since_ns
            && loc.entry.seq < since
        {
            break;
        }
        let Some(s) = app.summaries.get(loc) else {
            continue;
        };
        if !p.projects.allows(s.project_id.as_deref())
            || q.project
                .as_ref()
                .is_some_and(|pr| s.project_id.as_ref() != Some(pr))
            || q.tag.as_ref().is_some_and(|t| !s.tags.contains(t))
        {
            continue;
        }
        if jobs.len() == q.limit {
            next = jobs
                .last()
                .and_then(|j: &Value| j.get("cursor").and_then(Value::as_str).map(str::to_owned));
            break;
        }
        jobs.push(json!({
            "job_id": loc.entry.job_id,
            "state": loc.state.dir_name(),
            "attempt": loc.entry.attempt,
            "enqueued_at": enqueued_at(loc.entry.seq),
            "created_at": s.created_at,
            "project_id": s.project_id,
            "tags": s.tags,
            "goal": s.goal,
            "status_url": format!("/jobs/{}", loc.entry.job_id),
            "cursor": format!("{}.{}", loc.entry.seq, loc.entry.job_id),
        }));
    }
    for j in &mut jobs {
        if let Some(o) = j.as_object_mut() {
            o.remove("cursor");
        }
    }
    Ok(json!({ "jobs": jobs, "next_cursor": next }))
}

fn enqueued_at(seq: u64) -> Option<String> {
    jiff::Timestamp::from_nanosecond(seq as i128)
        .ok()
        .map(|t| format!("{t:.6}"))
}

/// `POST /jobs/{id}/{action}`.
pub async fn action(
    app: &Arc<App>,
    p: &Principal,
    id: &str,
    action: &'static str,
) -> Result<Response<Body>, ApiError> {
    let id = JobId::parse(id).map_err(|_| not_found())?;
    let (a, p) = (app.clone(), p.clone());
    let (status, body) = blocking(move || act(&a, &p, &id, action)).await??;
    tracing::info!(target: "audit", action, job_id = %body["job_id"], state = %body["state"], "operator action");
    Ok(json_response(status, &body))
}

fn act(
    app: &App,
    p: &Principal,
    id: &JobId,
    action: &'static str,
) -> Result<(StatusCode, Value), ApiError> {
    let loc = match app.queue.find(id.as_str()) {
        Ok(Some(l)) => l,
        Ok(None) | Err(QueueError::BadJobId(_)) => return Err(not_found()),
        Err(e) => return Err(storage_error(e)),
    };
    let project = read_doc(&loc.path).map(|d| summarize(&d).project_id);
    if !p.projects.allows(project.flatten().as_deref()) {
        return Err(not_found());
    }
    let Some(act) = artifacts::control::Action::parse(action) else {
        return Err(not_found());
    };
    // One shared implementation with `orch`: the queue move, plus the
    // artifacts record for moves that end the job.
    match artifacts::control::apply(&app.queue, &app.store, id, act) {
        Ok(artifacts::control::Outcome::Moved(new)) => Ok((
            StatusCode::OK,
            json!({ "job_id": id.as_str(), "action": action, "state": new.state.dir_name() }),
        )),
        // A running job is cancelled by its runner, which stops the agent
        // and finishes the job as cancelled.
        Ok(artifacts::control::Outcome::CancelRequested) => Ok((
            StatusCode::ACCEPTED,
            json!({
                "job_id": id.as_str(), "action": action, "state": "running",
                "cancel_requested": true,
            }),
        )),
        Err(QueueError::WrongState {
            actual, expected, ..
        }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_state",
            format!("cannot {action} a job that is {actual}; it must be {expected}"),
        )
        .details(json!({ "state": actual.dir_name(), "expected": expected }))),
        Err(QueueError::NotFound { .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_state",
            "the job moved while the request was handled; look again",
        )),
        Err(QueueError::Duplicate { .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_state",
            "the job was already moved by someone else",
        )),
        Err(e) => Err(storage_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q =
            parse_query("state=pending,done&tag=a%20b&limit=5&since=2024-01-01T00:00:00Z").unwrap();
        assert_eq!(q.states, vec![State::Pending, State::Done]);
        assert_eq!(q.tag.as_deref(), Some("a b"));
        assert_eq!(q.limit, 5);
        assert_eq!(q.since_ns, Some(1_704_067_200_000_000_000));
        for bad in [
            "state=nope",
            "limit=0",
            "limit=501",
            "since=yesterday",
            "cursor=x",
            "foo=1",
            "tag=%zz",
            "since=",
            "state=",
            "state=pending,,done",
            "tag=",
        ] {
            assert!(parse_query(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_query("").unwrap().states.len(), 5);
    }
}
