//! `GET /health` and `GET /metrics`.
//!
//! Both read one [`Snapshot`] of the system, recomputed at most once a
//! second by whichever request finds it stale (others keep serving the
//! previous one meanwhile): queue depths (directory entry counts), the age
//! of the oldest due pending job (from the enqueue time in its name), runners
//! with their liveness and heartbeat documents, free disk, and a real
//! durable write probe of the queue. `/health` serves pre-rendered bytes of
//! the snapshot; `/metrics` adds the gateway's own recorder output and every
//! `*.prom` file under `METRICS_DIR`, merged into one valid exposition. No
//! scrape walks the artifacts tree.

use crate::app::App;
use crate::http::{ApiError, Body, bytes_response};
use crate::promtext::{Families, escape_label};
use artifacts::budget::{self, Ledger, UsageRow};
use fsqueue::State;
use fsqueue::lease::Liveness;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest a snapshot is served.
const MAX_AGE: Duration = Duration::from_secs(1);
/// Below this much free space the disk counts as nearly full.
pub const MIN_FREE_BYTES: u64 = 64 * 1024 * 1024;
/// ... or below this fraction of the filesystem.
pub const MIN_FREE_RATIO: f64 = 0.005;
/// Most `.prom` files and bytes per file served.
const MAX_PROM_FILES: usize = 256;
const MAX_PROM_BYTES: u64 = 4 * 1024 * 1024;

/// One look at the system.
pub struct Snapshot {
    /// Today's budget report and the all-time totals per agent, or why the
    /// ledger could not be read.
    pub budget: Result<(Value, Vec<UsageRow>), String>,
    pub depths: Vec<(State, Option<usize>)>,
    /// Seconds the oldest due job has waited in `pending/` (none when
    /// nothing due is pending).
    pub oldest_pending_age: Option<f64>,
    pub runners: Vec<(String, Liveness)>,
    pub disk_free: Option<u64>,
    pub healthy: bool,
    /// The rendered `/health` body.
    pub health_body: Bytes,
}

/// The cached snapshot.
#[derive(Default)]
pub struct StatusCache {
    current: Mutex<Option<(Instant, Arc<Snapshot>)>>,
    refreshing: AtomicBool,
}

impl StatusCache {
    fn cached(&self) -> Option<(Instant, Arc<Snapshot>)> {
        self.current.lock().ok()?.clone()
    }

    /// A snapshot no older than a second, unless another request is
    /// refreshing it right now (then the previous one).
    pub async fn get(&self, app: &Arc<App>) -> Result<Arc<Snapshot>, ApiError> {
        let cached = self.cached();
        if let Some((at, s)) = &cached
            && at.elapsed() < MAX_AGE
        {
            return Ok(s.clone());
        }
        if self.refreshing.swap(true, Ordering::AcqRel)
            && let Some((_, s)) = cached
        {
            return Ok(s);
        }
        let a = app.clone();
        let fresh = tokio::task::spawn_blocking(move || Arc::new(take_snapshot(&a))).await;
        self.refreshing.store(false, Ordering::Release);
        let fresh = fresh.map_err(|_| ApiError::internal("the status probe failed"))?;
        if let Ok(mut cur) = self.current.lock() {
            *cur = Some((Instant::now(), fresh.clone()));
        }
        Ok(fresh)
    }
}

fn take_snapshot(app: &App) -> Snapshot {
    let cfg = &app.cfg;
    // pending/ is read once for its depth and its oldest due job.
    let pending = pending_scan(&app.queue);
    let depths: Vec<(State, Option<usize>)> = State::ALL
        .iter()
        .map(|&s| match s {
            State::Pending => (s, pending.map(|p| p.0)),
            _ => (s, app.queue.depth(s).ok()),
        })
        .collect();
    let oldest_pending_age = pending.and_then(|p| p.1);
    let runners_raw = fsqueue::lease::runners(&app.queue);
    // A write probe that goes through the real durable path (fsyncs
    // included): a read-only or broken filesystem shows here.
    let probe = app.queue.root().join(".gateway-probe");
    let writable = fsqueue::durable::write_file(&probe, b"ok\n").map_err(|e| e.to_string());
    // The field types differ between platforms (u32 on some 32-bit libcs).
    #[allow(clippy::unnecessary_cast)]
    let disk = nix::sys::statvfs::statvfs(app.queue.root()).ok().map(|s| {
        let frag = s.fragment_size() as u64;
        (
            (s.blocks_available() as u64).saturating_mul(frag),
            (s.blocks() as u64).saturating_mul(frag),
        )
    });
    let nearly_full = disk.is_some_and(|(free, total)| {
        free < MIN_FREE_BYTES || (total > 0 && (free as f64) < (total as f64) * MIN_FREE_RATIO)
    });
    let healthy = writable.is_ok() && !nearly_full;
    let mut checks = Vec::new();
    if let Err(e) = &writable {
        checks.push(json!({ "check": "queue_writable", "ok": false, "message": e }));
    }
    if nearly_full {
        checks.push(json!({ "check": "disk", "ok": false, "message": "the disk holding the queue is nearly full" }));
    }
    let budget = read_budget(app);
    let budget_json = match &budget {
        Ok((report, _)) => report.clone(),
        Err(e) => json!({
            "limited": cfg.budget.limited(),
            "ledger": cfg.budget.db_path.display().to_string(),
            "error": e,
        }),
    };
    let runners_json: Vec<Value> = runners_raw
        .iter()
        .map(|(id, live, doc)| {
            json!({
                "id": id,
                "alive": *live == Liveness::Alive,
                "liveness": match live {
                    Liveness::Alive => "alive",
                    Liveness::Dead => "dead",
                    Liveness::Unknown => "unknown",
                },
                "heartbeat": doc.as_deref().and_then(|d| serde_json::from_slice::<Value>(d).ok()),
            })
        })
        .collect();
    let queue: serde_json::Map<String, Value> = depths
        .iter()
        .map(|(s, n)| (s.dir_name().to_owned(), json!(n)))
        .collect();
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "version": env!("CARGO_PKG_VERSION"),
        "queue": queue,
        "queue_writable": writable.is_ok(),
        "runners": {
            "alive": runners_raw.iter().filter(|r| r.1 == Liveness::Alive).count(),
            "list": runners_json,
        },
        "disk": disk.map(|(free, total)| json!({
            "free_bytes": free, "total_bytes": total, "nearly_full": nearly_full,
        })),
        "budget": budget_json,
        "checks": checks,
    });
    Snapshot {
        budget,
        depths,
        oldest_pending_age,
        runners: runners_raw.into_iter().map(|(id, l, _)| (id, l)).collect(),
        disk_free: disk.map(|d| d.0),
        healthy,
        health_body: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
    }
}

/// Today's budget report plus the all-time totals per agent. The ledger is
/// opened per snapshot (at most once a second) and never created here.
fn read_budget(app: &App) -> Result<(Value, Vec<UsageRow>), String> {
    let cfg = &app.cfg.budget;
    let day = budget::utc_day(fsqueue::clock::now_unix());
    match Ledger::open_if_exists(&cfg.db_path).map_err(|e| e.to_string())? {
        Some(l) => {
            let today = l.day(&day).map_err(|e| e.to_string())?;
            let all = l.all_time().map_err(|e| e.to_string())?;
            Ok((budget::report(cfg, &day, &today, true), all))
        }
        None => Ok((budget::report(cfg, &day, &[], false), Vec::new())),
    }
}

/// The budget's metric families: all-time counters per agent, today's
/// gauges, and the limits.
fn budget_metrics(s: &Snapshot, out: &mut String) {
    let Ok((report, all)) = &s.budget else {
        out.push_str("# HELP orch_budget_ledger_up Whether the budget ledger could be read.\n# TYPE orch_budget_ledger_up gauge\norch_budget_ledger_up 0\n");
        return;
    };
    out.push_str("# HELP orch_budget_ledger_up Whether the budget ledger could be read.\n# TYPE orch_budget_ledger_up gauge\norch_budget_ledger_up 1\n");
    out.push_str("# HELP orch_budget_calls_total Real agent calls charged to the budget, all days.\n# TYPE orch_budget_calls_total counter\n");
    for r in all {
        out.push_str(&format!(
            "orch_budget_calls_total{{agent=\"{}\"}} {}\n",
            escape_label(&r.agent),
            r.calls
        ));
    }
    out.push_str("# HELP orch_budget_spend_usd_total Settled agent cost in USD, all days.\n# TYPE orch_budget_spend_usd_total counter\n");
    for r in all {
        out.push_str(&format!(
            "orch_budget_spend_usd_total{{agent=\"{}\"}} {}\n",
            escape_label(&r.agent),
            budget::micros_to_usd(r.cost_micros)
        ));
    }
    out.push_str("# HELP orch_budget_refused_total Attempts refused as over budget, all days.\n# TYPE orch_budget_refused_total counter\n");
    for r in all {
        out.push_str(&format!(
            "orch_budget_refused_total{{agent=\"{}\"}} {}\n",
            escape_label(&r.agent),
            r.refused
        ));
    }
    let gauge = |out: &mut String, name: &str, help: &str, v: &Value| {
        if let Some(x) = v.as_f64() {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {x}\n"
            ));
        }
    };
    gauge(
        out,
        "orch_budget_day_calls",
        "Real agent calls so far this UTC day.",
        &report["calls"],
    );
    gauge(
        out,
        "orch_budget_day_spend_usd",
        "Settled agent cost in USD so far this UTC day.",
        &report["cost_usd"],
    );
    gauge(
        out,
        "orch_budget_day_reserved_usd",
        "Cost estimates reserved by attempts still running.",
        &report["reserved_usd"],
    );
    gauge(
        out,
        "orch_budget_limit_calls",
        "MAX_DAILY_API_CALLS (absent when unlimited).",
        &report["max_calls"],
    );
    gauge(
        out,
        "orch_budget_limit_usd",
        "MAX_DAILY_COST_USD (absent when unlimited).",
        &report["max_cost_usd"],
    );
    gauge(
        out,
        "orch_budget_exceeded",
        "Whether a global daily limit is reached (1) or not (0).",
        &json!(u8::from(report["exceeded"] == true)),
    );
}

/// `GET /health`: 200 when the queue is writable and the disk is not
/// nearly full, else 503 with the failed checks.
pub async fn health(app: &Arc<App>) -> Result<Response<Body>, ApiError> {
    let s = app.status.get(app).await?;
    let code = if s.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(bytes_response(
        code,
        "application/json",
        s.health_body.clone(),
    ))
}

/// `GET /metrics`.
pub async fn metrics(app: &Arc<App>) -> Result<Response<Body>, ApiError> {
    let s = app.status.get(app).await?;
    let a = app.clone();
    let text = tokio::task::spawn_blocking(move || render_metrics(&a, &s))
        .await
        .map_err(|_| ApiError::internal("rendering metrics failed"))?;
    Ok(bytes_response(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        Bytes::from(text),
    ))
}

/// `pending/` in one pass over its names (no file is opened): how many
/// jobs, and how long the oldest *due* one has waited, from the enqueue
/// time in its name. Jobs deferred to a later time are not waiting for a
/// runner and do not count for the age; a job given back after a reap
/// counts from its first enqueue.
fn pending_scan(queue: &fsqueue::Queue) -> Option<(usize, Option<f64>)> {
    let rd = std::fs::read_dir(queue.dir(State::Pending)).ok()?;
    let now_unix = fsqueue::clock::now_unix();
    let (mut n, mut oldest) = (0usize, None::<u64>);
    for e in rd.flatten() {
        let Some(entry) = e.file_name().to_str().and_then(fsqueue::Entry::parse) else {
            continue;
        };
        n += 1;
        if entry.is_due(now_unix) {
            oldest = Some(oldest.map_or(entry.seq, |o| o.min(entry.seq)));
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    let age = oldest.map(|seq| {
        now.saturating_sub(std::time::Duration::from_nanos(seq))
            .as_secs_f64()
    });
    Some((n, age))
}

fn render_metrics(app: &App, s: &Snapshot) -> String {
    let mut fam = Families::new();
    let mut own = String::from(
        "# HELP orch_queue_depth Job files per queue state.\n# TYPE orch_queue_depth gauge\n",
    );
    for (st, n) in &s.depths {
        if let Some(n) = n {
            own.push_str(&format!(
                "orch_queue_depth{{state=\"{}\"}} {n}\n",
                st.dir_name()
            ));
        }
    }
    own.push_str("# HELP orch_queue_oldest_pending_age_seconds How long the oldest due job has waited in pending.\n# TYPE orch_queue_oldest_pending_age_seconds gauge\n");
    own.push_str(&format!(
        "orch_queue_oldest_pending_age_seconds {}\n",
        s.oldest_pending_age.unwrap_or(0.0)
    ));
    own.push_str("# HELP orch_runner_up Whether a runner holds its lock (1) or not (0).\n# TYPE orch_runner_up gauge\n");
    for (id, live) in &s.runners {
        own.push_str(&format!(
            "orch_runner_up{{runner=\"{}\"}} {}\n",
            escape_label(id),
            u8::from(*live == Liveness::Alive)
        ));
    }
    own.push_str("# HELP orch_gateway_healthy Whether /health reports ok.\n# TYPE orch_gateway_healthy gauge\n");
    own.push_str(&format!("orch_gateway_healthy {}\n", u8::from(s.healthy)));
    if let Some(free) = s.disk_free {
        own.push_str("# HELP orch_disk_free_bytes Free bytes on the queue's filesystem.\n# TYPE orch_disk_free_bytes gauge\n");
        own.push_str(&format!("orch_disk_free_bytes {free}\n"));
    }
    budget_metrics(s, &mut own);
    fam.add(&own, None);
    if let Some(h) = &app.prometheus {
        fam.add(&h.render(), None);
    }
    for (stem, text) in prom_files(&app.cfg.metrics_dir) {
        fam.add(&text, Some(&stem));
    }
    fam.render()
}

/// `(file stem, content)` of every `*.prom` file, sorted by name.
fn prom_files(dir: &std::path::Path) -> Vec<(String, String)> {
    use std::io::Read;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".prom") && !n.starts_with('.'))
        .collect();
    names.sort();
    names.truncate(MAX_PROM_FILES);
    names
        .into_iter()
        .filter_map(|n| {
            let f = std::fs::File::open(dir.join(&n)).ok()?;
            let mut text = String::new();
            f.take(MAX_PROM_BYTES).read_to_string(&mut text).ok()?;
            let stem = n.strip_suffix(".prom").unwrap_or(&n).to_owned();
            Some((stem, text))
        })
        .collect()
}
