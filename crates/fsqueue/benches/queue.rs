//! Queue benchmarks (run with `cargo bench -p fsqueue`; figures and method
//! are recorded in docs/BENCHMARKS.md).
//!
//! 1. Enqueue → claim latency with an idle claimer parked on inotify: one
//!    thread enqueues a job every few milliseconds, a tokio task blocked in
//!    `Claimer::claim` takes it; latency = claim return − enqueue start.
//! 2. Claim cost against depth: time to claim 100 jobs from the front of a
//!    queue holding 100, 10 000 and 100 000 pending jobs.
//!
//! Every operation is the real durable one (fsync of file and directories).

use fsqueue::{Claimer, Queue, State};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn bench_dir() -> tempfile::TempDir {
    // Under target/ so the benchmark uses the same filesystem as a checkout.
    let base = std::env::var_os("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-tmp")
        });
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn latency(rt: &tokio::runtime::Runtime, samples: usize) {
    let d = bench_dir();
    let q = Queue::open(d.path().join("q")).unwrap();
    let claimer = rt.block_on(async { Arc::new(Claimer::new(q.clone(), "bench").unwrap()) });
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    let c2 = claimer.clone();
    let waiter = rt.spawn(async move {
        let mut lat = Vec::new();
        for _ in 0..samples {
            let _claim = c2.claim().await.unwrap();
            let done = Instant::now();
            let started: Instant = rx.recv().unwrap();
            lat.push(done.duration_since(started).as_secs_f64() * 1000.0);
        }
        lat
    });
    for i in 0..samples {
        // Let the claimer park on inotify (an idle runner) before each job.
        std::thread::sleep(Duration::from_millis(5));
        let t = Instant::now();
        tx.send(t).unwrap();
        q.enqueue(&format!("lat-{i:08}"), b"{}", 5, State::Pending)
            .unwrap();
    }
    let mut lat = rt.block_on(waiter).unwrap();
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "enqueue->claim latency (ms, n={samples}): p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );
}

fn depth(rt: &tokio::runtime::Runtime, depth: usize, claims: usize) -> f64 {
    let d = bench_dir();
    let q = Queue::open(d.path().join("q")).unwrap();
    // Fill quickly: the files are the real queue files, but written without
    // the per-file fsync (only the measured claims matter here).
    let pending = q.dir(State::Pending);
    for i in 0..depth {
        let e = fsqueue::Entry::new(5, fsqueue::name::next_seq(), &format!("depth-{i:09}"));
        std::fs::write(pending.join(e.file_name()), b"{}").unwrap();
    }
    // Flush the fill before timing: otherwise the first claim's barrier (a
    // `syncfs` in the default mode) would pay for writing out the whole
    // fill, which says nothing about the cost of a claim at this depth.
    fsqueue::durable::sync_dir(&pending).unwrap();
    let claimer = rt.block_on(async { Claimer::new(q.clone(), "bench").unwrap() });
    let t = Instant::now();
    for _ in 0..claims {
        claimer.try_claim().unwrap().unwrap();
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / claims as f64;
    println!("claim from depth {depth:>7}: {per:8.1} µs/claim (median of runs below)");
    per
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let quick = std::env::args().any(|a| a == "--quick");
    latency(&rt, if quick { 100 } else { 1000 });
    let runs = if quick { 1 } else { 5 };
    let mut results = Vec::new();
    for d in [100usize, 10_000, 100_000] {
        let mut v: Vec<f64> = (0..runs).map(|_| depth(&rt, d, 100)).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let med = v[v.len() / 2];
        println!("  => depth {d}: median {med:.1} µs/claim");
        results.push((d, med));
    }
    println!(
        "ratio claim cost depth 100000 / depth 100: {:.2}",
        results[2].1 / results[0].1
    );
}
