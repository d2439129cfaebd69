//! Lookups never miss a job that exists while it moves: one thread claims
//! jobs, sends each back to `pending/` a few times (a reaped lease, an
//! operator's retry) and claims it again, then finishes it, while others
//! look up the job being moved, again and again.

use fsqueue::{Claimer, Queue, State};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const JOBS: usize = 60;
const SENT_BACK: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_never_misses_a_job_moving_under_concurrent_claims() {
    let d = tempfile::tempdir().unwrap();
    let q = Queue::open(d.path().join("queue")).unwrap();
    let ids: Vec<String> = (0..JOBS).map(|n| format!("moving-{n:06}")).collect();
    for id in &ids {
        q.enqueue(id, b"{}", 5, State::Pending).unwrap();
    }
    let ids = Arc::new(ids);
    let stop = Arc::new(AtomicBool::new(false));
    let current = Arc::new(AtomicUsize::new(0));
    let lookups = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (q, ids, stop) = (q.clone(), ids.clone(), stop.clone());
            let (current, lookups) = (current.clone(), lookups.clone());
            std::thread::spawn(move || {
                let mut missed = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let id = &ids[current.load(Ordering::Relaxed)];
                    if q.find(id).unwrap().is_none() {
                        missed.push(id.clone());
                    }
                    lookups.fetch_add(1, Ordering::Relaxed);
                }
                missed
            })
        })
        .collect();
    // The mover: each job is sent back SENT_BACK times, then finished.
    let claimer = Claimer::new(q.clone(), "mover").unwrap();
    let (mut moves, mut finished) = (0, 0);
    let started = Instant::now();
    let mut sent = vec![0; JOBS];
    while finished < JOBS {
        // The claimer learns of a job sent back through its change
        // notifications: it may take a moment.
        let Some(claim) = claimer.try_claim().unwrap() else {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no pending job"
            );
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let loc = claim.loc.clone();
        let n: usize = loc.entry.job_id["moving-".len()..].parse().unwrap();
        current.store(n, Ordering::Relaxed);
        let to = if sent[n] < SENT_BACK {
            sent[n] += 1;
            State::Pending
        } else {
            finished += 1;
            if n.is_multiple_of(2) {
                State::Done
            } else {
                State::Failed
            }
        };
        q.move_to(&loc, to, &loc.entry.unowned()).unwrap();
        moves += 2;
    }
    stop.store(true, Ordering::Relaxed);
    let missed: Vec<String> = readers
        .into_iter()
        .flat_map(|r| r.join().unwrap())
        .collect();
    let lookups = lookups.load(Ordering::Relaxed);
    eprintln!(
        "{lookups} lookups during {moves} moves, {} missed",
        missed.len()
    );
    assert!(lookups > 0);
    assert!(
        missed.is_empty(),
        "lookups missed existing jobs: {missed:?}"
    );
    for id in ids.iter() {
        assert!(q.find(id).unwrap().unwrap().state.is_terminal());
    }
}
