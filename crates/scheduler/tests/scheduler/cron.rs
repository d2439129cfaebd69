//! Cron schedules against the real `orch-scheduler` binary. Minutes pass in
//! seconds through `SCHEDULER_TEST_CLOCK` (every process given the same
//! value reads the same time), so the tests wait for outcomes, never for
//! real minutes: each slot's job appears exactly once with two schedulers
//! racing, a restart does not fire a slot again, `catchup` is honoured,
//! and a broken file is reported while the good one next to it fires.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Self {
        let s = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(s.schedules()).unwrap();
        s
    }
    fn root(&self) -> &Path {
        self.dir.path()
    }
    fn schedules(&self) -> PathBuf {
        self.root().join("schedules")
    }
    /// Replaces a schedule file atomically (a scheduler rescanning
    /// meanwhile must not see it half written).
    fn write(&self, name: &str, body: &str) {
        let tmp = self.schedules().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, self.schedules().join(name)).unwrap();
    }

    /// Starts a scheduler whose clock reads `fake_start` at `real_start`
    /// and runs `speed` times as fast; stderr goes to `log`.
    fn start(&self, clock: &str, log: &str) -> Child {
        #[allow(clippy::disallowed_methods)] // the binary under test
        let mut c = Command::new(env!("CARGO_BIN_EXE_orch-scheduler"));
        let log = std::fs::File::create(self.root().join(log)).unwrap();
        c.current_dir(self.root())
            .env_clear()
            .env("QUEUE_ROOT", self.root().join("q"))
            .env("ARTIFACTS_ROOT", self.root().join("a"))
            .env("WORKSPACES_ROOT", self.root().join("w"))
            .env("SCHEDULES_DIR", self.schedules())
            .env("METRICS_DIR", self.root().join("metrics"))
            .env("SCHEDULER_TEST_CLOCK", clock)
            .env("RUNNER_LEASE_SEC", "3")
            .env("RETENTION_INTERVAL_SEC", "0")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.root().join(name)).unwrap_or_default()
    }

    /// Job ids of every job file in the queue (one entry per file).
    fn jobs(&self) -> Vec<String> {
        let mut out = Vec::new();
        for st in ["pending", "awaiting_approval", "running", "done", "failed"] {
            let Ok(rd) = std::fs::read_dir(self.root().join("q").join(st)) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().into_string().unwrap();
                if let Some(entry) = fsqueue::Entry::parse(&name) {
                    out.push(entry.job_id);
                }
            }
        }
        out.sort();
        out
    }

    fn wait_for(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !ok() {
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "timed out waiting for {what}; jobs: {:?}",
                self.jobs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn clock(fake_start: &str, speed: u32) -> String {
    format!("{fake_start},{},{speed}", jiff::Timestamp::now())
}

fn stop(mut child: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert!(child.wait().unwrap().success());
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn every_minute(id: &str, catchup: &str) -> String {
    format!(
        r#"{{"id": "{id}", "schedule": "* * * * *", "catchup": "{catchup}",
            "payload": {{"goal": "tick", "tags": ["scheduled"], "metadata": {{"schedule": "mine"}}}}}}"#
    )
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn two_schedulers_on_one_queue_enqueue_each_slot_exactly_once() {
    let site = Site::new();
    site.write("tick.json", &every_minute("tick", "none"));
    // A fake minute every three real seconds, starting 10 s before one.
    let c = clock("2030-01-01T00:00:50Z", 20);
    let a = site.start(&c, "a.log");
    let b = site.start(&c, "b.log");
    let third = "cron-tick-20300101T000300Z".to_owned();
    site.wait_for("three minute boundaries", || site.jobs().contains(&third));
    stop(a);
    stop(b);
    let jobs = site.jobs();
    // No file twice, and the slots are consecutive minutes from 00:01.
    let mut unique = jobs.clone();
    unique.dedup();
    assert_eq!(unique, jobs, "a slot was enqueued twice");
    for (i, id) in jobs.iter().enumerate() {
        assert_eq!(
            *id,
            format!("cron-tick-20300101T00{:02}00Z", i + 1),
            "{jobs:?}"
        );
    }
    assert!(jobs.len() >= 3);
    // Each job was enqueued by exactly one of the two (the other's attempt
    // found the id taken), and both were armed.
    let (la, lb) = (site.log("a.log"), site.log("b.log"));
    assert!(la.contains("schedule armed") && lb.contains("schedule armed"));
    for id in &jobs {
        assert_eq!(
            count(&la, id) + count(&lb, id),
            1,
            "{id} fired {} times\n--- a\n{la}\n--- b\n{lb}",
            count(&la, id) + count(&lb, id)
        );
    }
    // The job went through normalisation with the schedule's marks.
    let pending = site.root().join("q/pending");
    let file = std::fs::read_dir(&pending)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().contains("T000100Z"))
        .unwrap()
        .path();
    let job: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    assert_eq!(job["job_id"], "cron-tick-20300101T000100Z");
    assert_eq!(job["source"]["type"], "cron");
    assert_eq!(job["source"]["meta"]["schedule_id"], "tick");
    assert_eq!(job["metadata"]["schedule_id"], "tick");
    assert_eq!(job["metadata"]["schedule_slot"], "2030-01-01T00:01:00Z");
    assert_eq!(job["metadata"]["schedule"], "mine");
    let tags: Vec<&str> = job["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(
        tags,
        ["scheduled", "schedule:tick", "slot:2030-01-01T00:01:00Z"]
    );
    assert_eq!(job["steps"].as_array().unwrap().len(), 3);
    // The last result is recorded for `orch schedules`.
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(site.root().join("q/schedules/tick.json")).unwrap())
            .unwrap();
    assert_eq!(st["last_outcome"], "enqueued");
    assert_eq!(st["last_job_id"], *jobs.last().unwrap());
}

#[test]
fn a_restart_just_after_a_slot_does_not_fire_it_again() {
    let site = Site::new();
    site.write("tick.json", &every_minute("tick", "last"));
    let c = clock("2030-01-01T00:00:57Z", 10);
    let first = site.start(&c, "1.log");
    site.wait_for("the 00:01 slot", || {
        site.jobs() == ["cron-tick-20300101T000100Z"]
    });
    // Killed without a chance to clean up, restarted at once on the same
    // clock: the slot just fired is the most recent one, and catchup:last
    // must not fire it again.
    kill(first);
    let second = site.start(&c, "2.log");
    site.wait_for("the 00:02 slot", || site.jobs().len() == 2);
    stop(second);
    assert_eq!(
        site.jobs(),
        ["cron-tick-20300101T000100Z", "cron-tick-20300101T000200Z"]
    );
    let (l1, l2) = (site.log("1.log"), site.log("2.log"));
    assert_eq!(
        count(&l1, "schedule fired") + count(&l2, "schedule fired"),
        2
    );
    assert!(!l2.contains("cron-tick-20300101T000100Z"), "{l2}");
}

#[test]
fn catchup_last_fires_the_latest_missed_slot_once_and_none_skips() {
    let site = Site::new();
    for (id, catchup) in [("late", "last"), ("skip", "none")] {
        site.write(
            &format!("{id}.json"),
            &format!(
                r#"{{"id": "{id}", "schedule": "*/5 * * * *", "catchup": "{catchup}", "payload": {{"goal": "g"}}}}"#
            ),
        );
    }
    // Seen at 00:01, then down until 00:17:30: 00:05, 00:10 and 00:15 were
    // missed.
    let first = site.start(&clock("2030-01-01T00:01:00Z", 1), "1.log");
    site.wait_for("both schedules armed", || {
        count(&site.log("1.log"), "schedule armed") == 2
    });
    stop(first);
    assert!(site.jobs().is_empty());
    let second = site.start(&clock("2030-01-01T00:17:30Z", 1), "2.log");
    site.wait_for("catch-up", || {
        count(&site.log("2.log"), "schedule armed") == 2
    });
    stop(second);
    assert_eq!(site.jobs(), ["cron-late-20300101T001500Z"]);
    let l2 = site.log("2.log");
    assert!(l2.contains("catchup"), "{l2}");
    assert!(l2.contains("missed slot skipped"), "{l2}");
    // Started again later: 00:15 was fired already, nothing new is due.
    let third = site.start(&clock("2030-01-01T00:18:10Z", 1), "3.log");
    site.wait_for("re-armed", || {
        count(&site.log("3.log"), "schedule armed") == 2
    });
    stop(third);
    assert_eq!(site.jobs(), ["cron-late-20300101T001500Z"]);
}

#[test]
fn broken_files_are_reported_once_per_change_and_the_good_one_fires() {
    let site = Site::new();
    site.write("good.json", &every_minute("good", "none"));
    site.write(
        "broken.json",
        &every_minute("broken", "none").replace("* * * * *", "61 * * * *"),
    );
    site.write(
        "bignum.json",
        &every_minute("big", "none").replace("* * * * *", "99999999999999999999 * * * *"),
    );
    site.write("zz-dup.json", &every_minute("good", "none"));
    std::fs::write(
        site.schedules().join("binary.json"),
        b"{\"id\": \"\xff\xfe\"}",
    )
    .unwrap();
    std::fs::write(
        site.schedules().join("huge.json"),
        vec![b' '; 2 * 1024 * 1024],
    )
    .unwrap();
    std::os::unix::fs::symlink(
        site.schedules().join("good.json"),
        site.schedules().join("link.json"),
    )
    .unwrap();
    site.write("notes.txt", "not a schedule");

    let sched = site.start(&clock("2030-01-01T00:00:50Z", 20), "s.log");
    site.wait_for("two slots of the good schedule", || site.jobs().len() >= 2);
    assert_eq!(
        site.jobs()[..2],
        ["cron-good-20300101T000100Z", "cron-good-20300101T000200Z"]
    );
    // Several rescans happened by now (one a second); each bad file was
    // reported once, naming the file and the problem.
    let log = site.log("s.log");
    let bad_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("bad schedule file skipped"))
        .collect();
    for (file, problem) in [
        ("broken.json", "out of range 0-59"),
        ("bignum.json", "out of range 0-59"),
        ("zz-dup.json", "already used by good.json"),
        ("binary.json", "not valid UTF-8"),
        ("huge.json", "larger than"),
        ("link.json", "symbolic link"),
    ] {
        let lines: Vec<&&str> = bad_lines.iter().filter(|l| l.contains(file)).collect();
        assert_eq!(lines.len(), 1, "{file}: {lines:?}\n{log}");
        assert!(lines[0].contains(problem), "{file}: {}", lines[0]);
    }
    assert_eq!(bad_lines.len(), 6, "{log}");
    assert!(!log.contains("notes.txt"));
    // The metric counts each report; the gauge the files skipped now.
    let metrics = || {
        std::fs::read_dir(site.root().join("metrics"))
            .ok()
            .and_then(|rd| rd.flatten().next())
            .and_then(|e| std::fs::read_to_string(e.path()).ok())
            .unwrap_or_default()
    };
    site.wait_for("metrics", || {
        metrics().contains("orch_schedule_file_errors_total 6")
    });
    assert!(
        metrics().contains("orch_schedules{state=\"invalid\"} 6"),
        "{}",
        metrics()
    );

    // A change to a broken file is reported again (once), a fix is picked
    // up without a restart.
    site.write("broken.json", &every_minute("broken", "sometimes"));
    site.wait_for("the new problem", || {
        site.log("s.log").contains("\\\"sometimes\\\"")
            || site.log("s.log").contains("got \"sometimes\"")
    });
    site.write("broken.json", &every_minute("broken", "none"));
    site.wait_for("the fixed schedule to fire", || {
        site.jobs().iter().any(|j| j.starts_with("cron-broken-"))
    });
    stop(sched);
    let log = site.log("s.log");
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("bad schedule file skipped") && l.contains("broken.json"))
            .count(),
        2,
        "{log}"
    );
}

#[test]
fn a_slot_the_queue_refused_is_enqueued_once_the_queue_recovers() {
    let site = Site::new();
    site.write("tick.json", &every_minute("tick", "none"));
    // Each fake minute lasts a real minute: the 00:01 slot's retries all
    // happen before 00:02 could supersede it.
    let c = clock("2030-01-01T00:00:58Z", 1);
    let sched = site.start(&c, "1.log");
    site.wait_for("the schedule armed", || {
        site.log("1.log").contains("schedule armed")
    });
    // The queue's pending directory becomes unusable (a file where the
    // directory was): the slot's enqueue fails.
    let pending = site.root().join("q/pending");
    let aside = site.root().join("q/pending.aside");
    std::fs::rename(&pending, &aside).unwrap();
    std::fs::write(&pending, b"not a directory").unwrap();
    site.wait_for("a refused enqueue", || {
        site.log("1.log")
            .contains("could not enqueue the slot's job")
    });
    assert!(site.jobs().is_empty());
    // The disk recovers; the retry enqueues the 00:01 slot, once.
    std::fs::remove_file(&pending).unwrap();
    std::fs::rename(&aside, &pending).unwrap();
    site.wait_for("the retried slot", || {
        site.jobs() == ["cron-tick-20300101T000100Z"]
    });
    stop(sched);
    assert_eq!(site.jobs(), ["cron-tick-20300101T000100Z"]);
    let log = site.log("1.log");
    assert!(log.contains("trying the slot's enqueue again"), "{log}");
    assert_eq!(count(&log, "schedule fired"), 1, "{log}");
}
