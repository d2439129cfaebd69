//! Integration tests of the queue protocol against a real directory, real
//! renames and real inotify. Process-level races and SIGKILL are exercised
//! by the runner's tests, which start the real binaries.

mod lookup;
mod name_props;

use fsqueue::lease::{self, Liveness};
use fsqueue::recover::recover;
use fsqueue::{Claimer, Queue, ReapOutcome, Reaper, RunnerLock, State};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn queue() -> (tempfile::TempDir, Queue) {
    let d = tempfile::tempdir().unwrap();
    let q = Queue::open(d.path().join("queue")).unwrap();
    (d, q)
}

fn id(n: usize) -> String {
    format!("job-{n:08}")
}

#[tokio::test]
async fn fifo_and_exactly_once_ids() {
    let (_d, q) = queue();
    for n in 0..20 {
        q.enqueue(&id(n), b"{}", 5, State::Pending).unwrap();
    }
    // The same id can never be enqueued twice.
    let err = q.enqueue(&id(3), b"{}", 5, State::Pending).unwrap_err();
    assert!(
        matches!(err, fsqueue::QueueError::Duplicate { .. }),
        "{err}"
    );
    // A higher priority jumps the line.
    q.enqueue("urgent-1", b"{}", 0, State::Pending).unwrap();
    let c = Claimer::new(q.clone(), "r1").unwrap();
    let first = c.try_claim().unwrap().unwrap();
    assert_eq!(first.loc.entry.job_id, "urgent-1");
    for n in 0..20 {
        let cl = c.try_claim().unwrap().unwrap();
        assert_eq!(cl.loc.entry.job_id, id(n));
        assert_eq!(cl.loc.entry.attempt, 1);
        assert_eq!(cl.loc.entry.runner.as_deref(), Some("r1"));
        assert!(cl.loc.path.starts_with(q.dir(State::Running)));
    }
    assert!(c.try_claim().unwrap().is_none());
    assert_eq!(q.depth(State::Running).unwrap(), 21);
}

#[tokio::test]
async fn bad_job_ids_are_refused() {
    let (_d, q) = queue();
    for bad in ["../../etc/x", "..", "a/b/cdefgh", "short", ".hiddenjob"] {
        assert!(q.enqueue(bad, b"{}", 5, State::Pending).is_err(), "{bad}");
        assert!(q.find(bad).is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_claimers_claim_each_job_exactly_once() {
    let (_d, q) = queue();
    let n = 400;
    for i in 0..n {
        q.enqueue(&id(i), b"{}", 5, State::Pending).unwrap();
    }
    let mut handles = Vec::new();
    for r in 0..8 {
        let q = q.clone();
        handles.push(tokio::spawn(async move {
            let c = Claimer::new(q, &format!("r{r}")).unwrap();
            let mut got = Vec::new();
            while let Some(cl) = c.try_claim().unwrap() {
                got.push(cl.loc.entry.job_id);
                tokio::task::yield_now().await;
            }
            got
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let uniq: HashSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), n, "every job claimed once");
    assert_eq!(uniq.len(), n);
    assert_eq!(q.depth(State::Running).unwrap(), n);
    assert_eq!(q.depth(State::Pending).unwrap(), 0);
}

#[tokio::test]
async fn inotify_wakes_an_idle_claimer() {
    let (_d, q) = queue();
    let c = Arc::new(Claimer::new(q.clone(), "r1").unwrap());
    let c2 = c.clone();
    let waiter = tokio::spawn(async move { c2.claim().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(50)).await; // let it park
    let t = Instant::now();
    q.enqueue(&id(1), b"{}", 5, State::Pending).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.loc.entry.job_id, id(1));
    // Well under the rescan interval: woken by the notification, not a poll.
    assert!(
        t.elapsed() < fsqueue::claim::RESCAN_INTERVAL,
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_job_that_waited_longer_than_the_lease_is_not_reaped_on_claim() {
    let (_d, q) = queue();
    let loc = q.enqueue(&id(1), b"{}", 5, State::Pending).unwrap();
    // Pretend it waited an hour in pending/.
    set_mtime_ago(&loc.path, Duration::from_secs(3600));
    let _lock = RunnerLock::acquire(&q, "r1").unwrap();
    let c = Claimer::new(q.clone(), "r1").unwrap();
    let cl = c.try_claim().unwrap().unwrap();
    let reaper = Reaper::new(q.clone(), Duration::from_secs(30), 3);
    assert!(reaper.reap().unwrap().is_empty());
    assert_eq!(q.find(&id(1)).unwrap().unwrap().state, State::Running);
    lease::renew(&cl.loc).unwrap();
}

#[tokio::test]
async fn expired_lease_is_requeued_then_poison_job_fails() {
    let (_d, q) = queue();
    q.enqueue(&id(1), b"{}", 5, State::Pending).unwrap();
    let reaper = Reaper::new(q.clone(), Duration::from_secs(30), 2);
    let mut claims = 0;
    loop {
        // A runner on "another host": no lock file, judged by lease only.
        let c = Claimer::new(q.clone(), &format!("ghost{claims}")).unwrap();
        let Some(cl) = c.try_claim().unwrap() else {
            break;
        };
        claims += 1;
        assert_eq!(cl.loc.entry.attempt, claims);
        // Fresh lease: not reaped.
        assert!(reaper.reap().unwrap().is_empty());
        // Past lease + margin (30 s + 7.5 s).
        set_mtime_ago(&cl.loc.path, Duration::from_secs(38));
        let out = reaper.reap().unwrap();
        assert_eq!(out.len(), 1);
        // The old owner's fencing token is now useless.
        assert!(lease::renew(&cl.loc).is_err());
        match &out[0] {
            ReapOutcome::Requeued { to, .. } => assert_eq!(to.state, State::Pending),
            ReapOutcome::Failed { to, reason, .. } => {
                assert_eq!(to.state, State::Failed);
                assert!(reason.contains("RUNNER_MAX_RECLAIMS"), "{reason}");
                break;
            }
        }
    }
    // First claim + 2 reclaims, then the third reap fails it.
    assert_eq!(claims, 3);
    assert_eq!(q.find(&id(1)).unwrap().unwrap().state, State::Failed);
}

#[tokio::test]
async fn dead_owner_is_detected_by_its_lock() {
    let (_d, q) = queue();
    q.enqueue(&id(1), b"{}", 5, State::Pending).unwrap();
    let lock = RunnerLock::acquire(&q, "r1").unwrap();
    // A second process (here: a second acquire) cannot take a live id.
    assert!(RunnerLock::acquire(&q, "r1").is_err());
    let c = Claimer::new(q.clone(), "r1").unwrap();
    c.try_claim().unwrap().unwrap();
    assert_eq!(lease::liveness(&q, "r1"), Liveness::Alive);
    let reaper = Reaper::new(q.clone(), Duration::from_secs(3600), 3);
    assert!(reaper.reap().unwrap().is_empty());
    drop(lock); // the kernel drops the flock when the owner dies
    assert_eq!(lease::liveness(&q, "r1"), Liveness::Dead);
    let out = reaper.reap().unwrap();
    assert_eq!(out.len(), 1, "reaped at once, without waiting an hour");
    assert_eq!(q.find(&id(1)).unwrap().unwrap().state, State::Pending);
}

#[tokio::test]
async fn terminal_moves_never_overwrite() {
    let (_d, q) = queue();
    q.enqueue(&id(1), b"{}", 5, State::Pending).unwrap();
    let c = Claimer::new(q.clone(), "r1").unwrap();
    let cl = c.try_claim().unwrap().unwrap();
    let entry = cl.loc.entry.unowned();
    // Someone already published a done file with that name.
    std::fs::write(q.dir(State::Done).join(entry.file_name()), b"first").unwrap();
    let err = q.move_to(&cl.loc, State::Done, &entry).unwrap_err();
    assert!(matches!(err, fsqueue::QueueError::Duplicate { .. }));
    assert_eq!(
        std::fs::read(q.dir(State::Done).join(entry.file_name())).unwrap(),
        b"first"
    );
}

#[tokio::test]
async fn operator_transitions_check_state() {
    let (_d, q) = queue();
    q.enqueue(&id(1), b"{}", 5, State::AwaitingApproval)
        .unwrap();
    let err = q
        .transition(&id(1), &[State::Failed], State::Pending, true)
        .unwrap_err();
    assert!(
        matches!(err, fsqueue::QueueError::WrongState { .. }),
        "{err}"
    );
    let moved = q
        .transition(&id(1), &[State::AwaitingApproval], State::Pending, false)
        .unwrap();
    assert_eq!(moved.state, State::Pending);
    let err = q
        .transition(&id(2), &[State::Pending], State::Failed, false)
        .unwrap_err();
    assert!(matches!(err, fsqueue::QueueError::NotFound { .. }));
}

#[tokio::test]
async fn recovery_quarantines_and_cleans() {
    let (_d, q) = queue();
    q.enqueue(&id(1), br#"{"ok":true}"#, 5, State::Pending)
        .unwrap();
    q.enqueue(&id(2), br#"{"ok":tr"#, 5, State::Pending)
        .unwrap(); // torn
    std::fs::write(q.dir(State::Pending).join("not-a-job.json"), b"{}").unwrap();
    std::os::unix::fs::symlink(
        "/etc/passwd",
        q.dir(State::Pending)
            .join("5-0000000000000000001-evil-link~0.0.json"),
    )
    .unwrap();
    // The same job in done/ and pending/: done wins.
    let dup = q
        .enqueue(&id(3), br#"{"ok":true}"#, 5, State::Pending)
        .unwrap();
    std::fs::copy(&dup.path, q.dir(State::Done).join(dup.entry.file_name())).unwrap();
    // A stale temp file and a fresh one.
    let stale = q.dir(State::Pending).join(".orch-tmp-1-1-x");
    std::fs::write(&stale, b"x").unwrap();
    set_mtime_ago(&stale, Duration::from_secs(3600));
    let fresh = q.dir(State::Pending).join(".orch-tmp-1-2-x");
    std::fs::write(&fresh, b"x").unwrap();

    let validate = |b: &[u8]| -> Result<(), String> { serde_json_like_check(b) };
    let rep = recover(&q, &validate).unwrap();
    assert_eq!(rep.temp_removed, 1);
    assert!(!stale.exists() && fresh.exists());
    assert_eq!(rep.quarantined.len(), 4, "{:#?}", rep.quarantined);
    assert_eq!(q.find(&id(1)).unwrap().unwrap().state, State::Pending);
    assert!(q.find(&id(2)).unwrap().is_none());
    assert_eq!(q.find(&id(3)).unwrap().unwrap().state, State::Done);
    assert_eq!(q.depth(State::Pending).unwrap(), 1);
    // Every quarantined file has its reason beside it.
    let corrupt = q.internal_dir("corrupt");
    let reasons = std::fs::read_dir(&corrupt)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".reason")
        })
        .count();
    assert_eq!(reasons, 4);
    // The symlink target was never touched.
    assert!(std::path::Path::new("/etc/passwd").exists());
}

/// Minimal JSON-ish check for the recovery test (fsqueue knows no schema).
fn serde_json_like_check(b: &[u8]) -> Result<(), String> {
    let s = std::str::from_utf8(b).map_err(|e| e.to_string())?;
    if s.trim_end().ends_with('}') {
        Ok(())
    } else {
        Err("truncated JSON".into())
    }
}

fn set_mtime_ago(path: &std::path::Path, ago: Duration) {
    let t = std::time::SystemTime::now() - ago;
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(t).unwrap();
}

#[test]
fn enqueue_many_answers_each_job_and_publishes_only_the_good_ones() {
    use fsqueue::{NewJob, QueueError};
    let (_d, q) = queue();
    q.enqueue(&id(9), b"{}", 5, State::Pending).unwrap();
    let (a1, b2, taken) = (id(1), id(2), id(9));
    fn job(job_id: &str, state: State) -> NewJob<'_> {
        NewJob {
            job_id,
            doc: b"{\"x\":1}",
            prio: 5,
            state,
        }
    }
    let res = q.enqueue_many(&[
        job(&a1, State::Pending),
        job("../evil", State::Pending),
        job(&taken, State::Pending),
        job(&b2, State::AwaitingApproval),
        // The same id twice in one batch: the first wins.
        job(&a1, State::Pending),
    ]);
    assert_eq!(res.len(), 5);
    assert_eq!(res[0].as_ref().unwrap().state, State::Pending);
    assert!(matches!(res[1], Err(QueueError::BadJobId(_))));
    assert!(matches!(res[2], Err(QueueError::Duplicate { .. })));
    assert_eq!(res[3].as_ref().unwrap().state, State::AwaitingApproval);
    assert!(matches!(res[4], Err(QueueError::Duplicate { .. })));
    // Exactly the accepted jobs are on disk, complete, with their ids.
    assert_eq!(q.list(State::Pending).unwrap().len(), 2); // taken + a-1
    assert_eq!(q.list(State::AwaitingApproval).unwrap().len(), 1);
    for ok in [&res[0], &res[3]] {
        let loc = ok.as_ref().unwrap();
        assert_eq!(std::fs::read(&loc.path).unwrap(), b"{\"x\":1}");
        assert!(q.root().join("ids").join(&loc.entry.job_id).exists());
    }
    assert!(!q.root().join("ids").join("../evil").exists());
    // No temp files anywhere.
    for st in State::ALL {
        for e in std::fs::read_dir(q.dir(st)).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(!fsqueue::durable::is_temp_name(&name), "{name}");
        }
    }
}

#[test]
fn quarantining_a_file_that_moved_meanwhile_leaves_nothing_behind() {
    let (_d, q) = queue();
    let gone = q.dir(State::Pending).join("5-1-job-00000001~0.0.json");
    let err = q.quarantine(&gone, "test").unwrap_err();
    assert!(
        matches!(&err, fsqueue::QueueError::Io(e) if e.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    let left: Vec<_> = std::fs::read_dir(q.root().join("corrupt"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn recovery_never_touches_a_live_claim_but_drops_its_stray_copy() {
    let (_d, q) = queue();
    // Torn content, but claimed by a live runner: its owner's business.
    q.enqueue(&id(1), br#"{"ok":tr"#, 5, State::Pending)
        .unwrap();
    let _alive = fsqueue::RunnerLock::acquire(&q, "alive").unwrap();
    let live = fsqueue::Claimer::new(q.clone(), "alive")
        .unwrap()
        .try_claim()
        .unwrap()
        .unwrap();
    // A torn claim of a dead runner (its lock file is free).
    q.enqueue(&id(2), br#"{"ok":tr"#, 5, State::Pending)
        .unwrap();
    drop(fsqueue::RunnerLock::acquire(&q, "dead").unwrap());
    let dead = fsqueue::Claimer::new(q.clone(), "dead")
        .unwrap()
        .try_claim()
        .unwrap()
        .unwrap();
    assert_eq!(dead.loc.entry.job_id, id(2));
    // A stray pending copy of it (an operator's copy, a crashed fallback).
    let stray = q
        .dir(State::Pending)
        .join(live.loc.entry.unowned().file_name());
    std::fs::copy(&live.loc.path, &stray).unwrap();
    let validate = |b: &[u8]| -> Result<(), String> { serde_json_like_check(b) };
    let rep = recover(&q, &validate).unwrap();
    assert!(live.loc.path.exists(), "the live claim stays");
    assert_eq!(rep.skipped_live, 1);
    let mut gone: Vec<_> = rep.quarantined.iter().map(|(p, _)| p.clone()).collect();
    gone.sort();
    let mut want = vec![stray, dead.loc.path.clone()];
    want.sort();
    assert_eq!(gone, want, "{:#?}", rep.quarantined);
}

/// Moves a pending job's file to a name with a not-before time.
fn defer(q: &Queue, job: &str, until: u64) {
    let loc = q.find(job).unwrap().unwrap();
    let e = loc.entry.deferred_until(until);
    q.move_to(&loc, State::Pending, &e).unwrap();
}

#[tokio::test]
async fn deferred_jobs_are_skipped_until_due_and_then_claimed() {
    let (_d, q) = queue();
    for n in 0..3 {
        q.enqueue(&id(n), b"{}", 5, State::Pending).unwrap();
    }
    let now = fsqueue::clock::now_unix();
    // Job 0 waits an hour, job 1 was due long ago, job 2 has no mark; job 3
    // comes due a few seconds from now.
    defer(&q, &id(0), now + 3600);
    defer(&q, &id(1), 1);
    q.enqueue(&id(3), b"{}", 5, State::Pending).unwrap();
    let soon = now + 3;
    defer(&q, &id(3), soon);
    let c = Claimer::new(q.clone(), "r1").unwrap();
    let a = c.try_claim().unwrap().unwrap();
    let b = c.try_claim().unwrap().unwrap();
    assert_eq!(
        (a.loc.entry.job_id.as_str(), b.loc.entry.job_id.as_str()),
        (id(1).as_str(), id(2).as_str())
    );
    // The claim drops the mark from the running name.
    assert_eq!(a.loc.entry.not_before, None);
    assert!(!a.loc.path.to_str().unwrap().contains('+'));
    // Job 3 arrives when due, through the claimer's own timer.
    let got = tokio::time::timeout(Duration::from_secs(60), c.claim())
        .await
        .expect("the deferred job was never claimed")
        .unwrap();
    assert_eq!(got.loc.entry.job_id, id(3));
    assert!(fsqueue::clock::now_unix() >= soon);
    // The hour-long one is still there, untouched, and still skipped.
    assert!(c.try_claim().unwrap().is_none());
    let left = q.find(&id(0)).unwrap().unwrap();
    assert_eq!(left.state, State::Pending);
    assert_eq!(left.entry.not_before, Some(now + 3600));
    assert_eq!(c.indexed(), 1);
}
