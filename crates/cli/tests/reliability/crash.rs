//! Crash-point sweep: for every crash point of `fsqueue::fault::POINTS`, a
//! fresh installation is driven (by `orch submit`, the runner, an operator
//! command, the gateway or the scheduler) until a process dies there
//! (`ORCH_FAULT_CRASH_AT`, a `SIGKILL` of itself), then restarted the
//! ordinary way and checked: U1–U6, and every acknowledged enqueue (an
//! `orch submit` that exited 0, a gateway 2xx) survives.
//!
//! The bounded form crashes once at each point, at its first occurrence.
//! `ORCH_CRASH_ROUNDS=N` adds N-1 rounds where a seeded choice picks a later
//! occurrence (printed, with the seed; `ORCH_CRASH_SEED` replays one).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

use crate::invariants;
use crate::support::*;

/// How a scenario reaches its points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// `orch submit` crashes.
    Submit,
    /// `orch-runner --drain` crashes while running submitted jobs.
    Runner,
    /// The runner crashes while a job with a `callback_url` finishes.
    Callback,
    /// `orch approve` crashes moving a job out of `awaiting_approval/`.
    Approve,
    /// `orch cancel` crashes writing a cancel request for a running job.
    CancelRunning,
    /// `orch recover` crashes reaping a dead runner's claim.
    Reap,
    /// The gateway crashes during an intake with an `Idempotency-Key`.
    Gateway,
    /// The scheduler crashes in a retention sweep.
    Retention,
}

/// Every crash point and the scenario that reaches it.
pub const SWEEP: &[(&str, Driver)] = &[
    ("durable.write.temp_written", Driver::Runner),
    ("durable.write.data_synced", Driver::Runner),
    ("durable.write.renamed", Driver::Runner),
    ("durable.write.names_synced", Driver::Runner),
    ("durable.new.data_synced", Driver::Submit),
    ("durable.new.renamed_one", Driver::Submit),
    ("durable.new.names_synced", Driver::Submit),
    ("durable.txn.data_synced", Driver::Runner),
    ("durable.txn.renamed_one", Driver::Runner),
    ("durable.txn.phase_synced", Driver::Runner),
    ("durable.move.renamed", Driver::Runner),
    ("durable.move.synced", Driver::Runner),
    ("durable.remove.unlinked", Driver::Retention),
    ("queue.enqueue.reserved", Driver::Submit),
    ("queue.enqueue.published", Driver::Submit),
    ("queue.enqueue_many.published", Driver::Gateway),
    ("queue.claim.renamed", Driver::Runner),
    ("queue.claim.synced", Driver::Runner),
    ("queue.renew.touched", Driver::Runner),
    ("queue.reap.found", Driver::Reap),
    ("queue.reap.moved", Driver::Reap),
    ("queue.transition.moved", Driver::Approve),
    ("queue.control.requested", Driver::CancelRunning),
    ("queue.recover.begun", Driver::Runner),
    ("runner.heartbeat.written", Driver::Runner),
    ("runner.step.begun", Driver::Runner),
    ("runner.step.published", Driver::Runner),
    ("runner.job.final_artifacts", Driver::Runner),
    ("runner.job.moved", Driver::Runner),
    ("runner.callback.staged", Driver::Callback),
    ("runner.callback.delivered", Driver::Callback),
    ("runner.callback.settled", Driver::Callback),
    ("gateway.dedup.creating", Driver::Gateway),
    ("gateway.dedup.committing", Driver::Gateway),
    ("scheduler.retention.removing", Driver::Retention),
    ("scheduler.retention.forgetting", Driver::Retention),
];

const CRASH_VAR: &str = "ORCH_FAULT_CRASH_AT";
const TOKEN: &str = "crash-sweep-token-123";

pub fn killed(s: &ExitStatus) -> bool {
    s.signal() == Some(9)
}

/// A simple seeded generator (xorshift64*), enough to pick occurrences.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Every temp file under the installation.
fn temps(o: &Orch) -> Vec<std::path::PathBuf> {
    invariants::files_under(o.root())
        .into_iter()
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .starts_with(fsqueue::durable::TMP_PREFIX)
            })
        })
        .collect()
}

/// Sets the mtime of `p` to `secs` seconds ago.
pub fn backdate(p: &std::path::Path, secs: i64) {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let t = TimeSpec::new(now - secs, 0);
    let _ = utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    );
}

/// The ordinary restart after a crash: time passes (temp files a crash left
/// become older than `STALE_TEMP_AGE`), `orch recover`, a runner drains
/// the queue, and the scheduler's housekeeping clears what is left.
pub fn restart(o: &Orch, tag: &str) {
    for t in temps(o) {
        backdate(&t, 3600);
    }
    let out = o.orch(&["recover"], None);
    assert!(
        out.status.success(),
        "{tag}: orch recover after the crash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    o.drain("restarted");
    if !temps(o).is_empty() {
        let mut s = o
            .cmd("orch-scheduler")
            .env("RETENTION_INTERVAL_SEC", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(
            &format!("{tag}: housekeeping to remove stale temp files"),
            Duration::from_secs(60),
            || temps(o).is_empty(),
        );
        sigterm(&s);
        let _ = s.wait();
    }
}

fn crash_env(o: Orch, point: &str, nth: u64) -> Orch {
    o.env(CRASH_VAR, &format!("{point}:{nth}"))
}

/// Runs one scenario: the process named by `driver` dies at `point` (its
/// `nth` occurrence). Returns whether the crash happened (it must, for
/// `nth == 1`).
pub fn scenario(point: &str, driver: Driver, nth: u64) -> bool {
    let tag = format!("crash at {point}:{nth} ({driver:?})");
    let base = Orch::new().env("CALLBACK_ALLOW_PRIVATE", "1");
    let mut acked = BTreeSet::new();
    match driver {
        Driver::Submit => {
            acked.insert(base.submit(r#"{"goal":"before the crash"}"#));
            let o = crash_env(base, point, nth);
            let out = o.orch(&["submit", "-"], Some(br#"{"goal":"crashes"}"#));
            if out.status.success() {
                acked.insert(String::from_utf8_lossy(&out.stdout).trim().to_owned());
            }
            let c = killed(&out.status);
            let o = o.env(CRASH_VAR, "");
            restart(&o, &tag);
            // The queue takes new work after the crash.
            acked.insert(o.submit(r#"{"goal":"after the crash"}"#));
            o.drain("final");
            invariants::check_finished(&o, &acked, &tag);
            c
        }
        Driver::Runner | Driver::Callback => {
            let rx = (driver == Driver::Callback).then(Receiver::start);
            let mut o = base;
            if point == "queue.renew.touched" {
                // Renewals every quarter second, steps long enough to see one.
                o = o
                    .env("RUNNER_LEASE_SEC", "1")
                    .env("SIMULATION_STEP_MS", "600");
            }
            for i in 0..3 {
                let doc = match &rx {
                    Some(rx) => format!(
                        r#"{{"goal":"job {i}","callback_url":"http://{}/hook"}}"#,
                        rx.addr
                    ),
                    None => format!(r#"{{"goal":"job {i}"}}"#),
                };
                acked.insert(o.submit(&doc));
            }
            let o = crash_env(o, point, nth);
            let out = o
                .runner(&["--drain", "--id", "doomed", "--concurrency", "2"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .unwrap();
            let c = killed(&out.status);
            assert!(
                c || out.status.success(),
                "{tag}: runner failed without crashing: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let o = o.env(CRASH_VAR, "").env("SIMULATION_STEP_MS", "0");
            restart(&o, &tag);
            invariants::check_finished(&o, &acked, &tag);
            for id in &acked {
                let st = o.status_json(id);
                assert_eq!(st["status"], "success", "{tag}: {id}: {st:#}");
            }
            if let Some(rx) = rx {
                // Every job's outcome reached the receiver (at least once).
                let got = rx.job_ids();
                for id in &acked {
                    assert!(got.contains(id), "{tag}: no callback for {id}: {got:?}");
                }
            }
            c
        }
        Driver::Approve => {
            let id = base.submit(r#"{"goal":"needs a yes","policy":{"requires_approval":true}}"#);
            acked.insert(id.clone());
            let o = crash_env(base, point, nth);
            let out = o.orch(&["approve", &id], None);
            let c = killed(&out.status);
            let o = o.env(CRASH_VAR, "");
            restart(&o, &tag);
            if o.names("awaiting_approval").len() == 1 {
                let out = o.orch(&["approve", &id], None);
                assert!(out.status.success(), "{tag}: approve again");
                o.drain("approved");
            }
            invariants::check_finished(&o, &acked, &tag);
            c
        }
        Driver::CancelRunning | Driver::Reap => {
            // A runner that died mid-step leaves a claim in running/.
            let id = base.submit(r#"{"goal":"left running"}"#);
            acked.insert(id.clone());
            let dead = base.env(CRASH_VAR, "runner.step.begun:1");
            let out = dead.runner(&["--drain", "--id", "dead"]).output().unwrap();
            assert!(killed(&out.status), "{tag}: set-up crash");
            assert_eq!(dead.names("running").len(), 1, "{tag}: set-up claim");
            let o = crash_env(dead.env(CRASH_VAR, ""), point, nth);
            let out = if driver == Driver::Reap {
                o.orch(&["recover"], None)
            } else {
                o.orch(&["cancel", &id], None)
            };
            let c = killed(&out.status);
            let o = o.env(CRASH_VAR, "");
            restart(&o, &tag);
            invariants::check_finished(&o, &acked, &tag);
            c
        }
        Driver::Gateway => {
            let gw = Gateway::start(crash_env(base, point, nth));
            let mut gw = gw;
            let key = "delivery-1";
            let first = gw.post(r#"{"goal":"via the gateway"}"#, Some(key));
            let mut gw_crashed = false;
            let mut gw = match first {
                Some((code, body)) if (200..300).contains(&code) => {
                    acked.insert(job_id_of(&body));
                    gw
                }
                Some((code, body)) => panic!("{tag}: HTTP {code}: {body}"),
                None => {
                    gw_crashed = gw.died(true);
                    gw.restart_without_crash()
                }
            };
            // The same delivery again: the same job, never a second one.
            let (code, body) = gw
                .post(r#"{"goal":"via the gateway"}"#, Some(key))
                .unwrap_or_else(|| panic!("{tag}: no answer after restart"));
            assert!((200..300).contains(&code), "{tag}: HTTP {code}: {body}");
            let id = job_id_of(&body);
            acked.insert(id.clone());
            assert_eq!(acked.len(), 1, "{tag}: one delivery, one job: {acked:?}");
            if !gw_crashed {
                // A later occurrence (long form): a second delivery.
                if let Some((code, body)) = gw.post(r#"{"goal":"second"}"#, Some("delivery-2"))
                    && (200..300).contains(&code)
                {
                    acked.insert(job_id_of(&body));
                }
                gw_crashed = gw.died(false);
            }
            let o = gw.stop();
            restart(&o, &tag);
            invariants::check_finished(&o, &acked, &tag);
            gw_crashed
        }
        Driver::Retention => {
            for i in 0..3 {
                base.submit(&format!(r#"{{"goal":"old {i}"}}"#));
            }
            base.drain("old");
            // The jobs finished a month ago.
            for st in ["done", "failed"] {
                for n in base.names(st) {
                    backdate(&base.state_dir(st).join(n), 30 * 86_400);
                }
            }
            let o = crash_env(base, point, nth);
            let mut s = o
                .cmd("orch-scheduler")
                .env("RETENTION_INTERVAL_SEC", "1")
                .env("ARTIFACTS_TTL_SEC", "1")
                .env("WORKSPACES_TTL_SEC", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut status = None;
            wait_for(
                &format!("{tag}: the scheduler to crash or finish"),
                Duration::from_secs(60),
                || {
                    status = s.try_wait().unwrap();
                    status.is_some() || o.names("done").is_empty()
                },
            );
            if status.is_none() {
                sigterm(&s);
                status = s.wait().ok();
            }
            let c = status.as_ref().is_some_and(killed);
            // Restarted: the sweep finishes what the crash interrupted.
            let o = o
                .env(CRASH_VAR, "")
                .env("RETENTION_INTERVAL_SEC", "1")
                .env("ARTIFACTS_TTL_SEC", "1")
                .env("WORKSPACES_TTL_SEC", "1");
            let mut s = o
                .cmd("orch-scheduler")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            wait_for(
                &format!("{tag}: retention to finish after the restart"),
                Duration::from_secs(60),
                || {
                    o.names("done").is_empty()
                        && std::fs::read_dir(o.artifacts())
                            .map(|rd| rd.flatten().all(|e| !e.path().join("state.json").exists()))
                            .unwrap_or(true)
                },
            );
            sigterm(&s);
            let _ = s.wait();
            restart(&o, &tag);
            invariants::check_finished(&o, &acked, &tag);
            c
        }
    }
}

fn job_id_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["job_id"].as_str().unwrap().to_owned()
}

/// A callback receiver answering 204 to everything; records job ids.
pub struct Receiver {
    pub addr: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Receiver {
    pub fn start() -> Self {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                let Some(body) = read_http(&mut c) else {
                    continue;
                };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body.1)
                    && let Some(id) = v["job_id"].as_str()
                {
                    s2.lock().unwrap().push(id.to_owned());
                }
                let _ = c.write_all(
                    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Self { addr, seen }
    }

    pub fn job_ids(&self) -> BTreeSet<String> {
        self.seen.lock().unwrap().iter().cloned().collect()
    }
}

/// Reads one HTTP message: (head, body) by Content-Length.
pub fn read_http(c: &mut impl Read) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < pos + 4 + len {
                let n = c.read(&mut tmp).ok()?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            let body = String::from_utf8_lossy(&buf[pos + 4..]).into_owned();
            return Some((head, body));
        }
        let n = c.read(&mut tmp).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// A gateway process of an installation.
pub struct Gateway {
    pub o: Orch,
    child: Child,
    pub addr: String,
}

impl Gateway {
    /// Starts the gateway of `o` on an ephemeral loopback port.
    pub fn start(o: Orch) -> Self {
        Self::try_start(o).unwrap_or_else(|_| panic!("gateway exited before listening"))
    }

    /// `start`, handing the installation back when the gateway exits
    /// before it listens (a fault during start-up).
    pub fn try_start(o: Orch) -> Result<Self, Orch> {
        let mut child = o
            .cmd("orch-gateway")
            .args(["--bind", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env("WEBHOOK_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.wait();
                return Err(o);
            };
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect::<String>();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Self { o, child, addr })
    }

    /// POST /webhook; `None` when the connection closed without an answer.
    pub fn post(&self, body: &str, key: Option<&str>) -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
        let key = key
            .map(|k| format!("Idempotency-Key: {k}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "POST /webhook HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n{key}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        s.write_all(req.as_bytes()).ok()?;
        let (head, body) = read_http(&mut s)?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body))
    }

    /// Whether the gateway died of the crash point (waits for its exit a
    /// while when it is going down).
    pub fn died(&mut self, wait: bool) -> bool {
        let mut st = None;
        for _ in 0..if wait { 500 } else { 1 } {
            st = self.child.try_wait().unwrap();
            if st.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        st.as_ref().is_some_and(killed)
    }

    /// Starts it again without the crash point (start-up recovery runs).
    pub fn restart_without_crash(mut self) -> Self {
        sigkill(&mut self.child);
        Self::start(self.o.env(CRASH_VAR, ""))
    }

    /// Stops it (SIGTERM, or it is already gone); returns the installation.
    pub fn stop(mut self) -> Orch {
        if self.child.try_wait().unwrap().is_none() {
            sigterm(&self.child);
            let _ = self.child.wait();
        }
        self.o.env(CRASH_VAR, "")
    }
}

/// Every point of `fsqueue::fault::POINTS` has a scenario here, and every
/// scenario's point exists.
#[test]
fn every_crash_point_has_a_scenario() {
    let swept: BTreeSet<&str> = SWEEP.iter().map(|(p, _)| *p).collect();
    let listed: BTreeSet<&str> = fsqueue::fault::POINTS.iter().copied().collect();
    assert_eq!(swept, listed);
}

fn sweep(drivers: &[Driver]) {
    let rounds: u64 = std::env::var("ORCH_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let seed = seed_from_env("ORCH_CRASH_SEED");
    if rounds > 1 {
        eprintln!("crash sweep {drivers:?}: {rounds} rounds, ORCH_CRASH_SEED={seed}");
    }
    let mut rng = Rng(seed);
    let mut covered = 0;
    let (mut later, mut later_reached) = (0, 0);
    for round in 0..rounds {
        for (point, driver) in SWEEP.iter().filter(|(_, d)| drivers.contains(d)) {
            let nth = if round == 0 { 1 } else { 1 + rng.below(6) };
            if round > 0 {
                eprintln!("round {round}: {point}:{nth}");
            }
            let crashed = scenario(point, *driver, nth);
            if nth == 1 {
                assert!(crashed, "{point}: the scenario never reached the point");
                covered += usize::from(round == 0);
            } else {
                later += 1;
                later_reached += usize::from(crashed);
            }
        }
    }
    eprintln!("crash sweep {drivers:?}: {covered} crash points covered");
    if later > 0 {
        eprintln!(
            "crash sweep {drivers:?}: {later_reached} of {later} later occurrences reached (the others ran to the end)"
        );
    }
}

#[test]
fn crash_sweep_submit_and_operator() {
    sweep(&[
        Driver::Submit,
        Driver::Approve,
        Driver::CancelRunning,
        Driver::Reap,
    ]);
}

#[test]
fn crash_sweep_runner() {
    sweep(&[Driver::Runner, Driver::Callback]);
}

#[test]
fn crash_sweep_gateway_and_retention() {
    sweep(&[Driver::Gateway, Driver::Retention]);
}

/// The other operator moves (`orch reject`, `orch cancel` of a pending job,
/// `orch retry`) crash at each step of their move: after the rename,
/// after its barrier, after the transition. The job ends in exactly one
/// terminal state, whichever side of the move the crash left it on.
#[test]
fn operator_moves_survive_a_crash_at_each_step() {
    for cmd in ["reject", "cancel", "retry"] {
        for point in [
            "durable.move.renamed",
            "durable.move.synced",
            "queue.transition.moved",
        ] {
            let tag = format!("orch {cmd} crashing at {point}");
            let o = Orch::new();
            let doc = if cmd == "reject" {
                r#"{"goal":"to refuse","policy":{"requires_approval":true}}"#
            } else {
                r#"{"goal":"to move"}"#
            };
            let id = o.submit(doc);
            if cmd == "retry" {
                let out = o.orch(&["cancel", &id], None);
                assert!(out.status.success(), "{tag}: set-up cancel");
            }
            let o = crash_env(o, point, 1);
            let out = o.orch(&[cmd, &id], None);
            assert!(killed(&out.status), "{tag}: did not crash: {out:?}");
            let o = o.env(CRASH_VAR, "");
            restart(&o, &tag);
            if o.names("awaiting_approval").len() == 1 {
                let out = o.orch(&[cmd, &id], None);
                assert!(out.status.success(), "{tag}: {cmd} again");
            }
            o.drain("after-move");
            let acked: BTreeSet<String> = [id.clone()].into();
            invariants::check_finished(&o, &acked, &tag);
        }
    }
}
