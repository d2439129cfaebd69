//! The budget ledger against real SQLite files: creation, schema version,
//! reservations and settlement, per-project limits, and many real processes
//! reserving at once against one limit.

use artifacts::budget::{
    BudgetConfig, Charge, Decision, Ledger, LimitHit, OverBudget, ProjectLimit, SCHEMA_VERSION,
    micros_to_usd, usd_to_micros, utc_day,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// 2026-01-01T12:00:00Z.
const NOON: u64 = 1_767_268_800;

fn cfg(db: &Path, calls: u64, usd: f64, estimate: f64) -> BudgetConfig {
    BudgetConfig {
        db_path: db.to_owned(),
        max_calls: calls,
        max_cost_micros: usd_to_micros(usd),
        projects: BTreeMap::new(),
        action: OverBudget::Fail,
        default_estimate_micros: usd_to_micros(estimate),
        agent_estimates: BTreeMap::new(),
    }
}

fn charge<'a>(agent: &'a str, project: Option<&'a str>, now: u64) -> Charge<'a> {
    Charge {
        agent,
        project,
        job_id: "job-00000001",
        step_id: "01_plan",
        attempt: 1,
        runner_id: "r1",
        now,
    }
}

#[test]
fn the_ledger_is_created_on_first_use_in_wal_mode_with_its_schema_version() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("var/deeper/state.db");
    assert!(Ledger::open_if_exists(&db).unwrap().is_none());
    assert!(!db.exists(), "a reader must not create the ledger");
    let l = Ledger::open(&db).unwrap();
    assert!(db.is_file());
    assert_eq!(l.schema_version().unwrap(), SCHEMA_VERSION);
    drop(l);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(conn);
    // Reopening migrates nothing and keeps the data.
    let l = Ledger::open(&db).unwrap();
    let c = cfg(&db, 0, 0.0, 0.5);
    assert!(matches!(
        l.reserve(&c, &charge("claude", None, NOON)).unwrap(),
        Decision::Granted(_)
    ));
    drop(l);
    let l = Ledger::open_if_exists(&db).unwrap().unwrap();
    assert_eq!(l.day(&utc_day(NOON)).unwrap()[0].calls, 1);
}

#[test]
fn a_ledger_from_a_newer_orch_is_refused_not_downgraded() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("state.db");
    drop(Ledger::open(&db).unwrap());
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    let e = Ledger::open(&db).unwrap_err().to_string();
    assert!(e.contains("newer") && e.contains("state.db"), "{e}");
}

#[test]
fn garbage_in_the_database_file_is_an_error_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("state.db");
    std::fs::write(&db, vec![0xAB; 8192]).unwrap();
    let e = Ledger::open(&db).unwrap_err().to_string();
    assert!(e.contains("state.db"), "{e}");
    // Nothing was lost or replaced.
    assert_eq!(std::fs::read(&db).unwrap(), vec![0xAB; 8192]);
}

#[test]
fn calls_are_refused_at_the_limit_and_a_new_utc_day_starts_from_zero() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("state.db");
    let l = Ledger::open(&db).unwrap();
    let c = cfg(&db, 2, 0.0, 0.0);
    for _ in 0..2 {
        assert!(matches!(
            l.reserve(&c, &charge("codex", None, NOON)).unwrap(),
            Decision::Granted(_)
        ));
    }
    match l.reserve(&c, &charge("claude", None, NOON)).unwrap() {
        Decision::Refused { day, hit } => {
            assert_eq!(day, "2026-01-01");
            assert_eq!(hit, LimitHit::Calls { used: 2, limit: 2 });
        }
        d => panic!("{d:?}"),
    }
    // Midnight UTC: a fresh day.
    let tomorrow = (NOON / 86_400 + 1) * 86_400;
    assert!(matches!(
        l.reserve(&c, &charge("claude", None, tomorrow)).unwrap(),
        Decision::Granted(_)
    ));
    let today = l.day("2026-01-01").unwrap();
    let refused: u64 = today.iter().map(|r| r.refused).sum();
    let calls: u64 = today.iter().map(|r| r.calls).sum();
    assert_eq!((calls, refused), (2, 1));
    assert_eq!(l.day("2026-01-02").unwrap()[0].calls, 1);
}

#[test]
fn cost_reserves_the_estimate_and_settles_with_the_real_cost() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("state.db");
    let l = Ledger::open(&db).unwrap();
    // $0.10 a day, $0.03 reserved per attempt.
    let c = cfg(&db, 0, 0.10, 0.03);
    let Decision::Granted(r1) = l.reserve(&c, &charge("claude", None, NOON)).unwrap() else {
        panic!()
    };
    let Decision::Granted(r2) = l.reserve(&c, &charge("claude", None, NOON)).unwrap() else {
        panic!()
    };
    let row = &l.day("2026-01-01").unwrap()[0];
    assert_eq!((row.calls, row.reserved_micros), (2, 60_000));
    // 0.06 reserved + 0.03 fits; a fourth would not.
    let Decision::Granted(r3) = l.reserve(&c, &charge("claude", None, NOON)).unwrap() else {
        panic!()
    };
    assert!(matches!(
        l.reserve(&c, &charge("claude", None, NOON)).unwrap(),
        Decision::Refused {
            hit: LimitHit::Cost { .. },
            ..
        }
    ));
    // Settle: two real costs and one unknown (the estimate stays charged).
    assert_eq!(l.settle(&r1, Some(usd_to_micros(0.0421))).unwrap(), 42_100);
    assert_eq!(l.settle(&r2, Some(0)).unwrap(), 0);
    assert_eq!(l.settle(&r3, None).unwrap(), 30_000);
    // Settling twice charges once.
    assert_eq!(l.settle(&r1, Some(999_999)).unwrap(), 0);
    let row = &l.day("2026-01-01").unwrap()[0];
    assert_eq!(row.reserved_micros, 0);
    assert_eq!(row.cost_micros, 72_100);
    assert!((micros_to_usd(row.cost_micros) - 0.0721).abs() < 1e-12);
    // 0.0721 + 0.03 > 0.10: still refused; a cheaper agent fits.
    assert!(matches!(
        l.reserve(&c, &charge("claude", None, NOON)).unwrap(),
        Decision::Refused { .. }
    ));
    let mut cheap = c.clone();
    cheap.agent_estimates.insert("opencode".into(), 10_000);
    assert!(matches!(
        l.reserve(&cheap, &charge("opencode", None, NOON)).unwrap(),
        Decision::Granted(_)
    ));
}

#[test]
fn project_limits_apply_to_their_project_only() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("state.db");
    let l = Ledger::open(&db).unwrap();
    let mut c = cfg(&db, 0, 0.0, 0.0);
    c.projects.insert(
        "web".into(),
        ProjectLimit {
            calls: 1,
            cost_micros: 0,
        },
    );
    assert!(matches!(
        l.reserve(&c, &charge("claude", Some("web"), NOON)).unwrap(),
        Decision::Granted(_)
    ));
    match l.reserve(&c, &charge("codex", Some("web"), NOON)).unwrap() {
        Decision::Refused {
            hit:
                LimitHit::ProjectCalls {
                    project,
                    used,
                    limit,
                },
            ..
        } => assert_eq!((project.as_str(), used, limit), ("web", 1, 1)),
        d => panic!("{d:?}"),
    }
    for p in [Some("docs"), None] {
        assert!(matches!(
            l.reserve(&c, &charge("claude", p, NOON)).unwrap(),
            Decision::Granted(_)
        ));
    }
    let report = artifacts::budget::report(&c, "2026-01-01", &l.day("2026-01-01").unwrap(), true);
    let web = report["projects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["project"] == "web")
        .unwrap();
    assert_eq!(web["calls"], 1);
    assert_eq!(web["max_calls"], 1);
    assert_eq!(web["exceeded"], true);
    assert_eq!(report["calls"], 3);
    assert_eq!(report["refused"], 1);
    assert_eq!(report["exceeded"], false);
}

/// Environment of a child process of the race test.
const CHILD_DB: &str = "ORCH_BUDGET_RACE_DB";

/// Not a test of its own: the body of each process the race test starts
/// (it re-runs this test binary with `--ignored --exact` on this name).
#[test]
#[ignore = "child process of many_processes_reserving_at_once_never_overshoot"]
fn budget_race_child() {
    let Some(db) = std::env::var_os(CHILD_DB).map(PathBuf::from) else {
        return;
    };
    let n: usize = std::env::var("ORCH_BUDGET_RACE_N")
        .unwrap()
        .parse()
        .unwrap();
    let l = Ledger::open(&db).unwrap();
    // 40 calls a day (no cost limit, so the count cannot depend on how
    // the processes interleave), settled at $0.025 each.
    let c = cfg(&db, 40, 0.0, 0.03);
    let mut granted = 0;
    for i in 0..n {
        let agent = ["claude", "codex", "opencode"][i % 3];
        match l.reserve(&c, &charge(agent, None, NOON)).unwrap() {
            Decision::Granted(r) => {
                granted += 1;
                l.settle(&r, Some(25_000)).unwrap();
            }
            Decision::Refused { .. } => {}
        }
    }
    // On a line of its own: the harness prints the test name before it.
    println!("\nGRANTED {granted}");
}

#[test]
#[allow(clippy::disallowed_methods)] // real processes race on one SQLite file
fn many_processes_reserving_at_once_never_overshoot() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("state.db");
    // Created up front, so the race is about reservations, not creation.
    drop(Ledger::open(&db).unwrap());
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..8)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "budget::budget_race_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_DB, &db)
                .env("ORCH_BUDGET_RACE_N", "25")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut granted = 0u64;
    for c in children {
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let g: u64 = text
            .lines()
            .find_map(|l| l.split("GRANTED ").nth(1))
            .unwrap_or_else(|| panic!("no count from child: {text}"))
            .trim()
            .parse()
            .unwrap();
        granted += g;
    }
    // 200 attempts for 40 calls: exactly 40 granted, 160 refused, and the
    // ledger agrees with what the processes saw.
    assert_eq!(granted, 40);
    let l = Ledger::open(&db).unwrap();
    let rows = l.day("2026-01-01").unwrap();
    let calls: u64 = rows.iter().map(|r| r.calls).sum();
    let refused: u64 = rows.iter().map(|r| r.refused).sum();
    let cost: u64 = rows.iter().map(|r| r.cost_micros).sum();
    let reserved: u64 = rows.iter().map(|r| r.reserved_micros).sum();
    assert_eq!((calls, refused, reserved), (40, 160, 0));
    assert_eq!(cost, 40 * 25_000);
}

#[test]
#[allow(clippy::disallowed_methods)] // real processes race on one SQLite file
fn many_processes_never_reserve_past_the_cost_limit() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("state.db");
    drop(Ledger::open(&db).unwrap());
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..6)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "budget::budget_cost_race_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_DB, &db)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let l = Ledger::open(&db).unwrap();
    let rows = l.day("2026-01-01").unwrap();
    let calls: u64 = rows.iter().map(|r| r.calls).sum();
    let reserved: u64 = rows.iter().map(|r| r.reserved_micros).sum();
    // $1.00 at $0.03 reserved each and never settled (as if every attempt
    // were still running): 33 fit, the 34th would pass $1.00.
    assert_eq!(calls, 33);
    assert_eq!(reserved, 33 * 30_000);
    assert!(reserved <= 1_000_000);
}

#[test]
#[ignore = "child process of many_processes_never_reserve_past_the_cost_limit"]
fn budget_cost_race_child() {
    let Some(db) = std::env::var_os(CHILD_DB).map(PathBuf::from) else {
        return;
    };
    let l = Ledger::open(&db).unwrap();
    let c = cfg(&db, 0, 1.00, 0.03);
    for _ in 0..20 {
        let _ = l.reserve(&c, &charge("claude", None, NOON)).unwrap();
    }
}
