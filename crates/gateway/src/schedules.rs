//! `GET /schedules`: the cron schedules as `orch schedules --json` shows
//! them (next fire times, last job and its status, problems of broken
//! files), read-only. A token limited to some projects sees the schedules
//! whose payload names one of them; broken files only show to tokens for
//! every project.

use crate::app::App;
use crate::auth::{Principal, Projects};
use crate::http::{ApiError, Body, blocking, json_response};
use hyper::{Response, StatusCode};
use serde_json::Value;
use std::sync::Arc;

/// Next fire times listed per schedule.
const UPCOMING: usize = 3;

pub async fn list(app: &Arc<App>, p: &Principal) -> Result<Response<Body>, ApiError> {
    let (a, projects) = (app.clone(), p.projects.clone());
    let body = blocking(move || {
        let dir = &a.cfg.schedules_dir;
        let listing = artifacts::schedules::load_dir(dir, &a.normalize_opts);
        let states = artifacts::schedules::StateStore::new(a.queue.root());
        let mut doc = artifacts::schedules::report(
            dir,
            &listing,
            &states,
            Some(&a.queue),
            &a.store,
            jiff::Timestamp::now(),
            UPCOMING,
        );
        if let (Projects::Only(_), Some(Value::Array(list))) = (&projects, doc.get_mut("schedules"))
        {
            list.retain(|e| {
                e["errors"].as_array().is_some_and(Vec::is_empty)
                    && projects.allows(e["project_id"].as_str())
            });
        }
        doc
    })
    .await?;
    Ok(json_response(StatusCode::OK, &body))
}
