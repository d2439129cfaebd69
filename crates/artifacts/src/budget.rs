//! The budget ledger: a SQLite database (`STATE_DB_PATH`, default
//! `var/state.db`) of agent calls and cost per UTC day, per agent and per
//! project, and the gate that refuses an attempt that would exceed a limit.
//!
//! It lives here, below the binaries, because three of them use it: the
//! runner reserves and settles, `orch budget` and the gateway's `/health`
//! and `/metrics` read it.
//!
//! The protocol, for every real agent attempt:
//!
//! 1. **Reserve**, in one `BEGIN IMMEDIATE` transaction (SQLite's write lock
//!    is taken before anything is read, so two runner processes can never
//!    both read "2 of 3 calls used" and both go ahead): read today's totals,
//!    compare them with the limits, and either record one call plus the
//!    agent's cost *estimate* as reserved, or record a refusal. A refused
//!    attempt never starts.
//! 2. Run the agent.
//! 3. **Settle**, in a second transaction: release the estimate and add the
//!    real cost the agent reported (`metrics.cost_usd` of the normalised
//!    output, from the CLI itself or a price table). When the cost is
//!    unknown, the estimate is what is charged.
//!
//! The call limit is exact: a call is counted before it happens, under the
//! write lock. The cost limit is checked against spent + reserved +
//! estimate, so it can only be overshot by attempts that turn out dearer
//! than their estimate: at worst by the sum, over the attempts running at
//! once (across all runners), of `real cost − estimate`. No attempt starts
//! once spent + reserved reaches the limit. Nothing in orch can stop an
//! agent mid-call, so that bound is the honest one; a larger estimate
//! narrows it (see docs/BUDGET.md).
//!
//! A reservation belongs to the day it was made on, and is settled there
//! even when the attempt ends after midnight. A runner killed between the
//! two steps leaves its reservation in place: the estimate stays charged,
//! which errs on the side of the limit.
//!
//! Amounts are stored as whole micro-dollars (integers), so sums are exact
//! and comparisons never suffer from floating-point drift.

use contracts::env::{self as ev, ConfigError, EnvSource};
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// The schema this code writes. Each entry of `MIGRATIONS` moves the
/// database one version up; `PRAGMA user_version` records where it is.
pub const SCHEMA_VERSION: u32 = 1;

const MIGRATIONS: &[&str] = &[
    // 1: the ledger and the open reservations.
    "CREATE TABLE usage (
        day TEXT NOT NULL,
        agent TEXT NOT NULL,
        project TEXT NOT NULL,
        calls INTEGER NOT NULL DEFAULT 0,
        cost_micros INTEGER NOT NULL DEFAULT 0,
        reserved_micros INTEGER NOT NULL DEFAULT 0,
        refused INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (day, agent, project)
     ) WITHOUT ROWID;
     CREATE TABLE reservations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        day TEXT NOT NULL,
        agent TEXT NOT NULL,
        project TEXT NOT NULL,
        job_id TEXT NOT NULL,
        step_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        runner_id TEXT NOT NULL,
        estimate_micros INTEGER NOT NULL,
        created_at TEXT NOT NULL
     );",
];

/// How long a transaction waits for another process's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest accepted `MAX_DAILY_API_CALLS` (and per-project call limit).
pub const MAX_CALLS_LIMIT: u64 = 1_000_000_000_000;
/// Largest accepted cost limit or estimate, in USD.
pub const MAX_USD: f64 = 1_000_000_000.0;

/// A ledger problem, naming the database file.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("budget ledger {}: {source}", path.display())]
    Sql {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("budget ledger {}: cannot create its directory: {source}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: fsqueue::durable::DurableError,
    },
    #[error(
        "budget ledger {}: schema version {found} is newer than this orch understands ({SCHEMA_VERSION}); upgrade orch",
        path.display()
    )]
    TooNew { path: PathBuf, found: u32 },
}

/// USD as whole micro-dollars (rounded; negative and non-finite are 0).
pub fn usd_to_micros(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e6).round().min(u64::MAX as f64) as u64
    } else {
        0
    }
}

/// Micro-dollars as USD.
pub fn micros_to_usd(m: u64) -> f64 {
    m as f64 / 1e6
}

/// The UTC day (`YYYY-MM-DD`) of a Unix time.
pub fn utc_day(unix_secs: u64) -> String {
    let secs = i64::try_from(unix_secs).unwrap_or(i64::MAX);
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::MAX)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string()
}

/// Limits of one project (0 = no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProjectLimit {
    pub calls: u64,
    pub cost_micros: u64,
}

/// What an over-budget attempt does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverBudget {
    /// The job fails with `budget_exceeded`.
    Fail,
    /// The job goes back to `pending/` until the UTC day rolls over.
    Defer,
}

impl OverBudget {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Defer => "defer",
        }
    }
}

/// The budget settings, resolved once at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetConfig {
    pub db_path: PathBuf,
    /// `MAX_DAILY_API_CALLS` (0 = no limit).
    pub max_calls: u64,
    /// `MAX_DAILY_COST_USD` in micro-dollars (0 = no limit).
    pub max_cost_micros: u64,
    /// `BUDGET_PROJECT_LIMITS`.
    pub projects: BTreeMap<String, ProjectLimit>,
    pub action: OverBudget,
    /// `BUDGET_ESTIMATE_USD`: reserved per attempt of an agent without
    /// its own estimate.
    pub default_estimate_micros: u64,
    /// `BUDGET_AGENT_ESTIMATES`.
    pub agent_estimates: BTreeMap<String, u64>,
}

impl BudgetConfig {
    /// Reads every budget variable; a bad value is an error naming it.
    pub fn resolve(env: &EnvSource) -> Result<Self, ConfigError> {
        let paths_db = contracts::config::Paths::resolve(env)?.state_db;
        let cost = env.get_f64_range(&ev::MAX_DAILY_COST_USD, 0.0, MAX_USD)?;
        Ok(Self {
            db_path: paths_db,
            max_calls: env.get_u64_range(&ev::MAX_DAILY_API_CALLS, 0, MAX_CALLS_LIMIT)?,
            max_cost_micros: usd_to_micros(cost),
            projects: project_limits(env)?,
            action: match env.get_enum(&ev::BUDGET_EXCEEDED_ACTION, &["fail", "defer"])? {
                "defer" => OverBudget::Defer,
                _ => OverBudget::Fail,
            },
            default_estimate_micros: usd_to_micros(env.get_f64_range(
                &ev::BUDGET_ESTIMATE_USD,
                0.0,
                MAX_USD,
            )?),
            agent_estimates: agent_estimates(env)?,
        })
    }

    /// Whether any limit is set.
    pub fn limited(&self) -> bool {
        self.max_calls > 0
            || self.max_cost_micros > 0
            || self
                .projects
                .values()
                .any(|p| p.calls > 0 || p.cost_micros > 0)
    }

    /// The cost reserved for one attempt of `agent`.
    pub fn estimate_micros(&self, agent: &str) -> u64 {
        self.agent_estimates
            .get(agent)
            .copied()
            .unwrap_or(self.default_estimate_micros)
    }
}

fn bad(var: &ev::EnvVar, item: &str, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        var: var.name,
        value: format!("{:?}", item.chars().take(40).collect::<String>()),
        expected: expected.to_owned(),
    }
}

fn parse_usd(s: &str) -> Option<u64> {
    let v: f64 = s.trim().parse().ok()?;
    (v.is_finite() && (0.0..=MAX_USD).contains(&v)).then(|| usd_to_micros(v))
}

/// `BUDGET_PROJECT_LIMITS=web=100/5.00,docs=0/2.5`: per project, calls per
/// UTC day and USD per UTC day (0 = no limit for that part).
fn project_limits(env: &EnvSource) -> Result<BTreeMap<String, ProjectLimit>, ConfigError> {
    const V: &ev::EnvVar = &ev::BUDGET_PROJECT_LIMITS;
    const EXPECTED: &str = "comma-separated project=CALLS/USD entries, e.g. web=100/5.00 (0 = no limit), each project once";
    let mut out = BTreeMap::new();
    for item in env.get_list(V)? {
        let parsed = item.split_once('=').and_then(|(id, spec)| {
            let (calls, usd) = spec.split_once('/')?;
            let calls: u64 = calls.trim().parse().ok()?;
            (calls <= MAX_CALLS_LIMIT).then_some(())?;
            let id = id.trim();
            contracts::validate::is_valid_project_id(id).then_some(())?;
            Some((
                id.to_owned(),
                ProjectLimit {
                    calls,
                    cost_micros: parse_usd(usd)?,
                },
            ))
        });
        let Some((id, limit)) = parsed else {
            return Err(bad(V, &item, EXPECTED));
        };
        if out.insert(id, limit).is_some() {
            return Err(bad(V, &item, EXPECTED));
        }
    }
    Ok(out)
}

/// `BUDGET_AGENT_ESTIMATES=claude=0.50,codex=0.20`.
fn agent_estimates(env: &EnvSource) -> Result<BTreeMap<String, u64>, ConfigError> {
    const V: &ev::EnvVar = &ev::BUDGET_AGENT_ESTIMATES;
    const EXPECTED: &str =
        "comma-separated agent=USD entries, e.g. claude=0.50,codex=0.20, each agent once";
    let mut out = BTreeMap::new();
    for item in env.get_list(V)? {
        let parsed = item.split_once('=').and_then(|(agent, usd)| {
            let agent = agent.trim();
            contracts::validate::is_valid_agent_name(agent).then_some(())?;
            Some((agent.to_owned(), parse_usd(usd)?))
        });
        let Some((agent, m)) = parsed else {
            return Err(bad(V, &item, EXPECTED));
        };
        if out.insert(agent, m).is_some() {
            return Err(bad(V, &item, EXPECTED));
        }
    }
    Ok(out)
}

/// Installs `ORCH_TEST_CLOCK_FILE` as the process's clock when it is set
/// (tests only; see `fsqueue::clock`). Every binary that decides calendar
/// questions calls it at start-up.
pub fn install_test_clock(env: &EnvSource) -> Result<(), ConfigError> {
    let Some(path) = contracts::config::path_opt(env, &ev::ORCH_TEST_CLOCK_FILE)? else {
        return Ok(());
    };
    match fsqueue::clock::set_test_clock_file(&path) {
        Ok(()) => {
            tracing::warn!(file = %path.display(), "ORCH_TEST_CLOCK_FILE is set: calendar time comes from a test file");
            Ok(())
        }
        // Installed already (several services in one test process).
        Err(_) if fsqueue::clock::test_clock_installed() => Ok(()),
        Err(e) => Err(ConfigError::Invalid {
            var: ev::ORCH_TEST_CLOCK_FILE.name,
            value: format!("{:?}", path.display().to_string()),
            expected: format!("a file holding Unix seconds ({e})"),
        }),
    }
}

/// One attempt asking for budget.
#[derive(Debug, Clone)]
pub struct Charge<'a> {
    pub agent: &'a str,
    /// The job's `project_id` (none = "").
    pub project: Option<&'a str>,
    pub job_id: &'a str,
    pub step_id: &'a str,
    pub attempt: u32,
    pub runner_id: &'a str,
    /// Unix seconds of the attempt (decides the UTC day).
    pub now: u64,
}

/// A granted attempt: settle it with [`Ledger::settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: i64,
    pub day: String,
    pub estimate_micros: u64,
}

/// Which limit refused an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitHit {
    Calls {
        used: u64,
        limit: u64,
    },
    Cost {
        committed_micros: u64,
        estimate_micros: u64,
        limit_micros: u64,
    },
    ProjectCalls {
        project: String,
        used: u64,
        limit: u64,
    },
    ProjectCost {
        project: String,
        committed_micros: u64,
        estimate_micros: u64,
        limit_micros: u64,
    },
}

impl LimitHit {
    /// A sentence naming the limit, its variable and the numbers.
    pub fn message(&self, day: &str) -> String {
        let usd = |m: &u64| format!("${:.6}", micros_to_usd(*m));
        match self {
            Self::Calls { used, limit } => format!(
                "daily agent call limit reached: {used} of {limit} calls used on {day} (UTC; MAX_DAILY_API_CALLS)"
            ),
            Self::Cost {
                committed_micros,
                estimate_micros,
                limit_micros,
            } => format!(
                "daily cost limit: {} spent or reserved on {day} (UTC) plus this attempt's estimate {} would exceed {} (MAX_DAILY_COST_USD)",
                usd(committed_micros),
                usd(estimate_micros),
                usd(limit_micros)
            ),
            Self::ProjectCalls {
                project,
                used,
                limit,
            } => format!(
                "daily agent call limit of project {project} reached: {used} of {limit} calls used on {day} (UTC; BUDGET_PROJECT_LIMITS)"
            ),
            Self::ProjectCost {
                project,
                committed_micros,
                estimate_micros,
                limit_micros,
            } => format!(
                "daily cost limit of project {project}: {} spent or reserved on {day} (UTC) plus this attempt's estimate {} would exceed {} (BUDGET_PROJECT_LIMITS)",
                usd(committed_micros),
                usd(estimate_micros),
                usd(limit_micros)
            ),
        }
    }
}

/// The answer to a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Granted(Reservation),
    Refused { day: String, hit: LimitHit },
}

/// One row of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsageRow {
    pub agent: String,
    /// "" for jobs without a project.
    pub project: String,
    pub calls: u64,
    pub cost_micros: u64,
    pub reserved_micros: u64,
    pub refused: u64,
}

/// The budget database. One connection per process, used under a mutex
/// (every operation is one short transaction).
pub struct Ledger {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("path", &self.path).finish()
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Ledger {
    /// Opens the database, creating it (and its directory) on first use,
    /// in WAL mode with a busy timeout, and migrates its schema.
    pub fn open(path: &Path) -> Result<Self, BudgetError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fsqueue::durable::create_dir_all(dir).map_err(|source| BudgetError::Dir {
                path: path.to_owned(),
                source,
            })?;
        }
        let sql = |source| BudgetError::Sql {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
        // WAL: readers (orch budget, /health) never block the runners'
        // reservations. synchronous=FULL: a committed charge survives a
        // power cut (NORMAL could lose the last ones and under-count).
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        let ledger = Self {
            path: path.to_owned(),
            conn: Mutex::new(conn),
        };
        ledger.migrate()?;
        Ok(ledger)
    }

    /// Opens the database only when the file exists (readers: a missing
    /// ledger means nothing was ever charged).
    pub fn open_if_exists(path: &Path) -> Result<Option<Self>, BudgetError> {
        if path.exists() {
            Self::open(path).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self, source: rusqlite::Error) -> BudgetError {
        BudgetError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic inside a transaction rolls it back when the guard's
        // Transaction drops; the connection itself stays usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the schema to [`SCHEMA_VERSION`] in one transaction, so two
    /// processes starting at once migrate it once.
    fn migrate(&self) -> Result<(), BudgetError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sql(e))?;
        let found: u32 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.sql(e))?;
        if found > SCHEMA_VERSION {
            return Err(BudgetError::TooNew {
                path: self.path.clone(),
                found,
            });
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            tx.execute_batch(m).map_err(|e| self.sql(e))?;
            tx.pragma_update(None, "user_version", (i + 1) as u32)
                .map_err(|e| self.sql(e))?;
        }
        tx.commit().map_err(|e| self.sql(e))
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32, BudgetError> {
        self.conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.sql(e))
    }

    /// Step 1 of the protocol: checks the limits and records the call and
    /// its estimate, or the refusal, in one immediate transaction.
    pub fn reserve(&self, cfg: &BudgetConfig, c: &Charge<'_>) -> Result<Decision, BudgetError> {
        let day = utc_day(c.now);
        let project = c.project.unwrap_or("");
        let estimate = cfg.estimate_micros(c.agent);
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sql(e))?;
        let totals = |project: Option<&str>| -> Result<(u64, u64), rusqlite::Error> {
            let (calls, committed): (i64, i64) = tx.query_row(
                "SELECT COALESCE(SUM(calls), 0), COALESCE(SUM(cost_micros + reserved_micros), 0)
                 FROM usage WHERE day = ?1 AND (?2 IS NULL OR project = ?2)",
                params![day, project],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok((to_u64(calls), to_u64(committed)))
        };
        let over_cost = |committed: u64, limit: u64| {
            limit > 0 && (committed >= limit || committed.saturating_add(estimate) > limit)
        };
        let mut hit = None;
        let (calls, committed) = totals(None).map_err(|e| self.sql(e))?;
        if cfg.max_calls > 0 && calls >= cfg.max_calls {
            hit = Some(LimitHit::Calls {
                used: calls,
                limit: cfg.max_calls,
            });
        } else if over_cost(committed, cfg.max_cost_micros) {
            hit = Some(LimitHit::Cost {
                committed_micros: committed,
                estimate_micros: estimate,
                limit_micros: cfg.max_cost_micros,
            });
        } else if let Some(pl) = c.project.and_then(|p| cfg.projects.get(p)) {
            let (pcalls, pcommitted) = totals(Some(project)).map_err(|e| self.sql(e))?;
            if pl.calls > 0 && pcalls >= pl.calls {
                hit = Some(LimitHit::ProjectCalls {
                    project: project.to_owned(),
                    used: pcalls,
                    limit: pl.calls,
                });
            } else if over_cost(pcommitted, pl.cost_micros) {
                hit = Some(LimitHit::ProjectCost {
                    project: project.to_owned(),
                    committed_micros: pcommitted,
                    estimate_micros: estimate,
                    limit_micros: pl.cost_micros,
                });
            }
        }
        let decision = match hit {
            Some(hit) => {
                tx.execute(
                    "INSERT INTO usage (day, agent, project, refused) VALUES (?1, ?2, ?3, 1)
                     ON CONFLICT (day, agent, project) DO UPDATE SET refused = refused + 1",
                    params![day, c.agent, project],
                )
                .map_err(|e| self.sql(e))?;
                Decision::Refused {
                    day: day.clone(),
                    hit,
                }
            }
            None => {
                tx.execute(
                    "INSERT INTO usage (day, agent, project, calls, reserved_micros) VALUES (?1, ?2, ?3, 1, ?4)
                     ON CONFLICT (day, agent, project) DO UPDATE SET
                        calls = calls + 1, reserved_micros = reserved_micros + excluded.reserved_micros",
                    params![day, c.agent, project, to_i64(estimate)],
                )
                .map_err(|e| self.sql(e))?;
                tx.execute(
                    "INSERT INTO reservations
                        (day, agent, project, job_id, step_id, attempt, runner_id, estimate_micros, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        day,
                        c.agent,
                        project,
                        c.job_id,
                        c.step_id,
                        c.attempt,
                        c.runner_id,
                        to_i64(estimate),
                        contracts::now_rfc3339()
                    ],
                )
                .map_err(|e| self.sql(e))?;
                Decision::Granted(Reservation {
                    id: tx.last_insert_rowid(),
                    day,
                    estimate_micros: estimate,
                })
            }
        };
        tx.commit().map_err(|e| self.sql(e))?;
        Ok(decision)
    }

    /// Step 3: releases the reservation's estimate and charges `actual`
    /// (the estimate when the real cost is unknown). Returns what was
    /// charged; settling twice charges once.
    pub fn settle(&self, r: &Reservation, actual_micros: Option<u64>) -> Result<u64, BudgetError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sql(e))?;
        let row: Option<(String, String, String, i64)> = match tx.query_row(
            "SELECT day, agent, project, estimate_micros FROM reservations WHERE id = ?1",
            params![r.id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        ) {
            Ok(v) => Some(v),
            Err(rusqlite::Error::QueryReturnedNoRows) => None,
            Err(e) => return Err(self.sql(e)),
        };
        let Some((day, agent, project, estimate)) = row else {
            return Ok(0);
        };
        let charged = actual_micros.unwrap_or(to_u64(estimate));
        tx.execute(
            "UPDATE usage SET reserved_micros = MAX(reserved_micros - ?4, 0), cost_micros = cost_micros + ?5
             WHERE day = ?1 AND agent = ?2 AND project = ?3",
            params![day, agent, project, estimate, to_i64(charged)],
        )
        .map_err(|e| self.sql(e))?;
        tx.execute("DELETE FROM reservations WHERE id = ?1", params![r.id])
            .map_err(|e| self.sql(e))?;
        tx.commit().map_err(|e| self.sql(e))?;
        Ok(charged)
    }

    /// The ledger rows of one UTC day, by agent then project.
    pub fn day(&self, day: &str) -> Result<Vec<UsageRow>, BudgetError> {
        self.rows(
            "SELECT agent, project, calls, cost_micros, reserved_micros, refused FROM usage
             WHERE day = ?1 ORDER BY agent, project",
            Some(day),
        )
    }

    /// Totals over every day ever recorded, per agent (the counters of
    /// `/metrics`: they only grow).
    pub fn all_time(&self) -> Result<Vec<UsageRow>, BudgetError> {
        self.rows(
            "SELECT agent, '', SUM(calls), SUM(cost_micros), SUM(reserved_micros), SUM(refused)
             FROM usage WHERE ?1 IS NULL GROUP BY agent ORDER BY agent",
            None,
        )
    }

    fn rows(&self, sql: &str, day: Option<&str>) -> Result<Vec<UsageRow>, BudgetError> {
        let conn = self.conn();
        let mut st = conn.prepare(sql).map_err(|e| self.sql(e))?;
        let rows = st
            .query_map(params![day], |r| {
                Ok(UsageRow {
                    agent: r.get(0)?,
                    project: r.get(1)?,
                    calls: to_u64(r.get(2)?),
                    cost_micros: to_u64(r.get(3)?),
                    reserved_micros: to_u64(r.get(4)?),
                    refused: to_u64(r.get(5)?),
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.sql(e))
    }
}

/// Today's usage against the limits, as `orch budget --json` prints it and
/// `/health` embeds it. `rows` are the day's ledger rows (empty when there
/// is no ledger yet).
pub fn report(cfg: &BudgetConfig, day: &str, rows: &[UsageRow], present: bool) -> Value {
    let sum = |f: &dyn Fn(&UsageRow) -> u64| rows.iter().map(f).fold(0u64, u64::saturating_add);
    let calls = sum(&|r| r.calls);
    let spent = sum(&|r| r.cost_micros);
    let reserved = sum(&|r| r.reserved_micros);
    let refused = sum(&|r| r.refused);
    let limit_or_null = |v: u64| if v > 0 { json!(v) } else { Value::Null };
    let usd_or_null = |v: u64| {
        if v > 0 {
            json!(micros_to_usd(v))
        } else {
            Value::Null
        }
    };
    let calls_over = cfg.max_calls > 0 && calls >= cfg.max_calls;
    let cost_over = cfg.max_cost_micros > 0 && spent + reserved >= cfg.max_cost_micros;
    let mut agents: BTreeMap<&str, UsageRow> = BTreeMap::new();
    let mut projects: BTreeMap<&str, UsageRow> = BTreeMap::new();
    for r in rows {
        for (map, key) in [
            (&mut agents, r.agent.as_str()),
            (&mut projects, r.project.as_str()),
        ] {
            let e = map.entry(key).or_default();
            e.calls += r.calls;
            e.cost_micros += r.cost_micros;
            e.reserved_micros += r.reserved_micros;
            e.refused += r.refused;
        }
    }
    for p in cfg.projects.keys() {
        projects.entry(p.as_str()).or_default();
    }
    let row_json = |r: &UsageRow| {
        json!({
            "calls": r.calls,
            "cost_usd": micros_to_usd(r.cost_micros),
            "reserved_usd": micros_to_usd(r.reserved_micros),
            "refused": r.refused,
        })
    };
    let agents_json: Vec<Value> = agents
        .iter()
        .map(|(a, r)| {
            let mut v = row_json(r);
            v["agent"] = json!(a);
            v["estimate_usd"] = json!(micros_to_usd(cfg.estimate_micros(a)));
            v
        })
        .collect();
    let projects_json: Vec<Value> = projects
        .iter()
        .map(|(p, r)| {
            let mut v = row_json(r);
            v["project"] = if p.is_empty() { Value::Null } else { json!(p) };
            let pl = cfg.projects.get(*p).copied().unwrap_or_default();
            v["max_calls"] = limit_or_null(pl.calls);
            v["max_cost_usd"] = usd_or_null(pl.cost_micros);
            v["exceeded"] = json!(
                (pl.calls > 0 && r.calls >= pl.calls)
                    || (pl.cost_micros > 0 && r.cost_micros + r.reserved_micros >= pl.cost_micros)
            );
            v
        })
        .collect();
    json!({
        "day": day,
        "limited": cfg.limited(),
        "action": cfg.action.as_str(),
        "calls": calls,
        "max_calls": limit_or_null(cfg.max_calls),
        "cost_usd": micros_to_usd(spent),
        "reserved_usd": micros_to_usd(reserved),
        "max_cost_usd": usd_or_null(cfg.max_cost_micros),
        "refused": refused,
        "exceeded": calls_over || cost_over,
        "agents": agents_json,
        "projects": projects_json,
        "ledger": cfg.db_path.display().to_string(),
        "ledger_present": present,
    })
}

/// Reads today's report from the ledger at `cfg.db_path` without creating
/// it; `now` is Unix seconds.
pub fn read_report(cfg: &BudgetConfig, now: u64) -> Result<Value, BudgetError> {
    let day = utc_day(now);
    match Ledger::open_if_exists(&cfg.db_path)? {
        Some(l) => Ok(report(cfg, &day, &l.day(&day)?, true)),
        None => Ok(report(cfg, &day, &[], false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvSource {
        EnvSource::from_pairs(pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())))
    }

    #[test]
    fn days_are_utc() {
        assert_eq!(utc_day(1_767_225_599), "2025-12-31");
        assert_eq!(utc_day(1_767_225_600), "2026-01-01");
        assert_eq!(utc_day(u64::MAX).len(), 10);
    }

    #[test]
    fn micros_round_and_refuse_nonsense() {
        assert_eq!(usd_to_micros(0.0589), 58_900);
        assert_eq!(usd_to_micros(-1.0), 0);
        assert_eq!(usd_to_micros(f64::NAN), 0);
        assert_eq!(usd_to_micros(f64::INFINITY), 0);
    }

    #[test]
    fn config_reads_every_variable() {
        let c = BudgetConfig::resolve(&env(&[
            ("MAX_DAILY_API_CALLS", "3"),
            ("MAX_DAILY_COST_USD", "1.5"),
            ("BUDGET_PROJECT_LIMITS", "web=10/2.5, docs=0/0.75"),
            ("BUDGET_EXCEEDED_ACTION", "DEFER"),
            ("BUDGET_ESTIMATE_USD", "0.2"),
            ("BUDGET_AGENT_ESTIMATES", "claude=0.5"),
            ("STATE_DB_PATH", "/x/state.db"),
        ]))
        .unwrap();
        assert_eq!(c.max_calls, 3);
        assert_eq!(c.max_cost_micros, 1_500_000);
        assert_eq!(
            c.projects["web"],
            ProjectLimit {
                calls: 10,
                cost_micros: 2_500_000
            }
        );
        assert_eq!(c.projects["docs"].cost_micros, 750_000);
        assert_eq!(c.action, OverBudget::Defer);
        assert_eq!(c.estimate_micros("claude"), 500_000);
        assert_eq!(c.estimate_micros("codex"), 200_000);
        assert_eq!(c.db_path, PathBuf::from("/x/state.db"));
        assert!(c.limited());
        let d = BudgetConfig::resolve(&env(&[])).unwrap();
        assert!(!d.limited());
        assert_eq!(d.action, OverBudget::Fail);
        assert_eq!(d.estimate_micros("claude"), 100_000);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases: &[(&str, &[&str])] = &[
            (
                "MAX_DAILY_API_CALLS",
                &[
                    "x",
                    "-1",
                    "1.5",
                    "99999999999999999999999",
                    "1000000000001",
                    "NaN",
                ],
            ),
            (
                "MAX_DAILY_COST_USD",
                &["x", "-0.01", "NaN", "inf", "-inf", "1e308", "1e10"],
            ),
            (
                "BUDGET_ESTIMATE_USD",
                &["cheap", "-1", "NaN", "inf", "1e300"],
            ),
            ("BUDGET_EXCEEDED_ACTION", &["retry", "0", "failx"]),
            (
                "BUDGET_PROJECT_LIMITS",
                &[
                    "web",
                    "web=10",
                    "web=x/1",
                    "web=1/x",
                    "web=-1/1",
                    "web=1/-1",
                    "web=1/NaN",
                    "web=1/inf",
                    "web=99999999999999999999/1",
                    "../etc=1/1",
                    "web=1/1,web=2/2",
                    "=1/1",
                ],
            ),
            (
                "BUDGET_AGENT_ESTIMATES",
                &[
                    "claude",
                    "claude=x",
                    "claude=-1",
                    "claude=NaN",
                    "../x=1",
                    "a=1,a=2",
                    "claude=1e99",
                ],
            ),
        ];
        for (var, values) in cases {
            for v in *values {
                let e = BudgetConfig::resolve(&env(&[(var, v)])).unwrap_err();
                assert_eq!(e.subject(), *var, "{var}={v:?}: {e}");
            }
        }
    }

    #[test]
    fn hit_messages_name_the_variable() {
        let m = LimitHit::Calls { used: 3, limit: 3 }.message("2026-01-01");
        assert!(
            m.contains("MAX_DAILY_API_CALLS") && m.contains("3 of 3"),
            "{m}"
        );
        let m = LimitHit::ProjectCost {
            project: "web".into(),
            committed_micros: 1,
            estimate_micros: 2,
            limit_micros: 2,
        }
        .message("2026-01-01");
        assert!(
            m.contains("BUDGET_PROJECT_LIMITS") && m.contains("web"),
            "{m}"
        );
    }
}
