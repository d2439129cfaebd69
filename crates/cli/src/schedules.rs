//! `orch schedules` (what is scheduled, when it fires next, how the last
//! firing went, which files are broken) and `orch schedules validate FILE`.
//! Both read `SCHEDULES_DIR` and the schedulers' state directly, with the
//! same reader and checks the scheduler uses, so what they say is what the
//! scheduler does.

use crate::{CliError, Ctx, print_json};
use serde_json::{Value, json};
use std::path::Path;

/// `orch schedules [--json] [--next N]`.
pub fn list(ctx: &Ctx, as_json: bool, next: usize) -> Result<u8, CliError> {
    let opts = crate::submit::normalize_options(ctx)?;
    let dir = &ctx.paths.schedules_dir;
    let listing = artifacts::schedules::load_dir(dir, &opts);
    // The queue is only read: a missing one means nothing fired yet.
    let queue = ctx
        .paths
        .queue_root
        .is_dir()
        .then(|| ctx.queue().ok())
        .flatten();
    let states = artifacts::schedules::StateStore::new(&ctx.paths.queue_root);
    let doc = artifacts::schedules::report(
        dir,
        &listing,
        &states,
        queue.as_ref(),
        &ctx.store(),
        jiff::Timestamp::now(),
        next,
    );
    if as_json {
        print_json(&doc);
        return Ok(0);
    }
    print_table(&doc);
    Ok(0)
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_table(doc: &Value) {
    let empty = Vec::new();
    let entries = doc["schedules"].as_array().unwrap_or(&empty);
    if let Some(e) = doc["dir_error"].as_str() {
        eprintln!("note: {e}");
    }
    if entries.is_empty() {
        eprintln!(
            "no schedules in {} (one *.json file per schedule, see examples/schedules/)",
            text(&doc["dir"])
        );
        return;
    }
    let mut rows = vec![[
        "ID".to_owned(),
        "ENABLED".to_owned(),
        "SCHEDULE".to_owned(),
        "ZONE".to_owned(),
        "NEXT".to_owned(),
        "LAST JOB".to_owned(),
        "LAST STATUS".to_owned(),
    ]];
    let mut problems = Vec::new();
    for e in entries {
        let bad = e["errors"].as_array().is_some_and(|a| !a.is_empty());
        let id = if e["id"].is_null() {
            format!("({})", text(&e["file"]))
        } else {
            text(&e["id"])
        };
        let enabled = if bad {
            "invalid"
        } else if e["enabled"] == true {
            "yes"
        } else {
            "no"
        };
        let last = &e["last"];
        let status = if last.is_null() {
            "-".to_owned()
        } else {
            match (last["state"].as_str(), last["status"].as_str()) {
                (Some(st), Some(s)) => format!("{st}/{s}"),
                (Some(st), None) => st.to_owned(),
                _ => text(&last["outcome"]),
            }
        };
        rows.push([
            id,
            enabled.to_owned(),
            text(&e["schedule"]),
            text(&e["timezone"]),
            e["next"].get(0).map(text).unwrap_or_else(|| "-".to_owned()),
            text(&last["job_id"]),
            status,
        ]);
        if bad {
            for p in e["errors"].as_array().unwrap_or(&empty) {
                let ptr = p["pointer"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("/");
                problems.push(format!(
                    "{}: {ptr}: {}",
                    text(&e["file"]),
                    text(&p["message"])
                ));
            }
        }
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    if !problems.is_empty() {
        println!();
        println!("problems (these files are skipped):");
        for p in problems {
            println!("  {p}");
        }
    }
}

/// `orch schedules validate FILE [--json]`: exit 0 when the scheduler
/// would accept the file, 2 with every problem otherwise.
pub fn validate(ctx: &Ctx, file: &str, as_json: bool) -> Result<u8, CliError> {
    let opts = crate::submit::normalize_options(ctx)?;
    match artifacts::schedules::load_file(Path::new(file), &opts) {
        Ok(s) => {
            let next: Vec<String> = s
                .cron
                .upcoming(jiff::Timestamp::now(), &s.tz, 3)
                .into_iter()
                .map(|t| {
                    t.to_zoned(s.tz.clone())
                        .strftime("%Y-%m-%dT%H:%M:%S%:z")
                        .to_string()
                })
                .collect();
            if as_json {
                print_json(&json!({
                    "valid": true,
                    "id": s.id,
                    "enabled": s.enabled,
                    "schedule": s.cron.as_str(),
                    "timezone": s.timezone,
                    "catchup": s.catchup.as_str(),
                    "next": next,
                }));
            } else {
                eprintln!(
                    "ok: {file} is a valid schedule {:?} ({}, {}); next: {}",
                    s.id,
                    s.cron,
                    s.timezone,
                    next.first().map_or("never", String::as_str)
                );
            }
            Ok(0)
        }
        Err(v) => {
            if as_json {
                print_json(&json!({"valid": false, "errors": v}));
                return Ok(2);
            }
            let mut msg = format!(
                "{file}: invalid schedule ({} problem{}):",
                v.len(),
                if v.len() == 1 { "" } else { "s" }
            );
            for x in &v {
                let p = if x.pointer.is_empty() {
                    "/"
                } else {
                    &x.pointer
                };
                msg.push_str(&format!("\n  {p}: {}", x.message));
            }
            Err(CliError::invalid(msg).hint(
                "a schedule has id, schedule (cron), payload (a job) and optionally enabled, timezone, catchup; see examples/schedules/",
            ))
        }
    }
}
