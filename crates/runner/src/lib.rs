//! `orch-runner`: claims jobs from the file queue and runs their steps.
//!
//! One process runs up to `RUNNER_CONCURRENCY` jobs at once; any number of
//! runner processes (on any number of hosts) may share one queue. The loop:
//! wait for a free slot, claim the first pending job (woken by inotify, not
//! a sleep loop), run it in its own task. Beside it, a thread of its own
//! renews the leases of running jobs (see `ownership`), and a heartbeat
//! notices operator cancel requests, publishes the runner's heartbeat and
//! reaps claims abandoned by dead runners.

pub mod admit;
pub mod agent_exec;
pub mod budget;
pub mod callback;
pub mod config;
pub mod error;
pub mod exec;
pub mod handoff;
pub mod outbox;
pub mod ownership;
pub mod prompt;
pub mod storage;

use config::Config;
use exec::{Ctx, StopReason};
use fsqueue::{Claimer, Queue, Reaper, RunnerLock, State};
use ownership::{Owned, Ownership, lock_owned};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("queue: {0}")]
    Queue(#[from] fsqueue::QueueError),
    #[error("runner id: {0}")]
    Lock(#[from] fsqueue::lease::LockError),
    #[error("{0}")]
    Other(String),
}

/// Runs the runner until `shutdown` resolves (or, with `--drain`, until the
/// queue is empty and idle). Returns after every job it held is finished or
/// released back to `pending/`.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunnerError> {
    let queue = Queue::open(&cfg.queue_root)?;
    fsqueue::durable::create_dir_all(&cfg.artifacts_root)
        .map_err(|e| RunnerError::Other(e.to_string()))?;
    fsqueue::durable::create_dir_all(&cfg.workspaces_root)
        .map_err(|e| RunnerError::Other(e.to_string()))?;
    let lock = RunnerLock::acquire(&queue, &cfg.runner_id)?;
    let registry = workers::Registry::from_env(&cfg.env, Some(cfg.sim_step_ms))
        .map_err(|e| RunnerError::Other(format!("agents: {e}")))?;
    if registry.is_real() {
        tracing::info!("real agent CLIs enabled (ENABLE_REAL_CLI=1)");
    }
    let outbox = Arc::new(
        outbox::Outbox::open(
            queue.clone(),
            artifacts::ArtifactStore::new(&cfg.artifacts_root),
            callback::Settings {
                secret: cfg.callback_secret.clone(),
                allow_private: cfg.callback_allow_private,
            },
        )
        .map_err(|e| RunnerError::Other(e.to_string()))?,
    );
    let budget = budget::Gate::new(cfg.budget.clone(), &cfg.runner_id, registry.is_real());
    let ctx = Arc::new(Ctx {
        store: artifacts::ArtifactStore::new(&cfg.artifacts_root)
            .with_sensitive_env(cfg.sensitive_env.clone()),
        queue: queue.clone(),
        budget,
        registry,
        cfg,
        outbox: outbox.clone(),
        runtime: tokio::runtime::Handle::current(),
        storage: storage::Storage::default(),
    });
    let cfg = &ctx.cfg;

    // Start-up recovery: quarantine torn files, clear stale temps, and take
    // back claims a previous process with our id left behind. Structure
    // only: other runners may know agents we do not.
    let report = fsqueue::recover::recover(&queue, &admit::validate_structure)?;
    for (path, reason) in &report.quarantined {
        metrics::counter!("orch_corrupt_files_total").increment(1);
        tracing::warn!(file = %path.display(), reason, "quarantined at start-up");
    }
    requeue_own_leftovers(&queue, &cfg.runner_id);

    let claimer = Claimer::new(queue.clone(), &cfg.runner_id)?;
    let reaper = Reaper::new(queue.clone(), cfg.lease, cfg.max_reclaims);
    let active: Owned = Owned::default();
    // Renewals run on a thread of their own: nothing else (barriers,
    // claims, heartbeat documents) can make them wait.
    let renewer_stop = Arc::new(AtomicBool::new(false));
    let renewer = ownership::spawn_renewer(active.clone(), cfg.lease, renewer_stop.clone())
        .map_err(|e| RunnerError::Other(format!("cannot start the lease renewer: {e}")))?;
    {
        // Every agent started in a job's workspace is recorded, so a later
        // attempt on this host can kill it before it starts.
        let (q, ws) = (queue.clone(), cfg.workspaces_root.clone());
        workers::exec::set_spawn_observer(Box::new(move |cwd, pid| {
            ownership::record_agent(&q, &ws, cwd, pid)
        }));
    }
    let slots = Arc::new(Semaphore::new(cfg.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    // Fired when a job task ends, so a draining runner notices at once.
    let job_ended = Arc::new(tokio::sync::Notify::new());

    let hb_stop = tokio_util::sync::CancellationToken::new();
    // Callbacks: this runner's and any left by dead runners.
    let outbox_worker = tokio::spawn(outbox.clone().run(hb_stop.clone()));
    let heartbeat = tokio::spawn(heartbeat_loop(
        ctx.clone(),
        active.clone(),
        reaper.clone(),
        Arc::new(lock),
        hb_stop.clone(),
    ));

    tracing::info!(
        runner_id = %cfg.runner_id,
        concurrency = cfg.concurrency,
        lease_sec = cfg.lease.as_secs(),
        drain = cfg.drain,
        "runner started"
    );
    fsqueue::notify::ready();
    tokio::pin!(shutdown);
    let mut stopping = false;
    let storage_roots = [
        queue.internal_dir(fsqueue::queue::TMP_DIR),
        cfg.artifacts_root.clone(),
        cfg.workspaces_root.clone(),
    ];
    loop {
        // Reap finished tasks so the JoinSet does not grow.
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.map_err(|e| RunnerError::Other(e.to_string()))?,
            _ = &mut shutdown => { stopping = true; break; }
        };
        // Full or read-only storage: no claims until a probe write works.
        if let Some(wait) = ctx.storage.hold_claims(&storage_roots) {
            drop(permit);
            tokio::select! {
                _ = tokio::time::sleep(wait) => continue,
                _ = &mut shutdown => { stopping = true; break; }
            }
        }
        let claim = match claimer.try_claim() {
            Ok(c) => c,
            Err(e) => {
                if let fsqueue::QueueError::Io(d) = &e
                    && let Some(kind) = error::StorageKind::of(&d.source)
                {
                    ctx.storage.trip(kind.as_str(), &e.to_string());
                }
                tracing::error!(error = %e, "claim failed; retrying in 1s");
                drop(permit);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = &mut shutdown => { stopping = true; break; }
                }
            }
        };
        // A job naming agents we do not know goes back for a runner that
        // knows them (and we pass over it for a while); a stale operator
        // request of an earlier claim goes.
        if let Some(c) = &claim
            && !admit::admit(&ctx, &claimer, c)
        {
            drop(permit);
            continue;
        }
        match claim {
            Some(claim) => {
                let job_id = claim.loc.entry.job_id.clone();
                let own = Ownership::new(&queue, &claim, cfg.lease);
                lock_owned(&active).insert(job_id.clone(), own.clone());
                metrics::counter!("orch_jobs_claimed_total").increment(1);
                record_claim_latency(&claim);
                let ctx2 = ctx.clone();
                let active2 = active.clone();
                let ended = job_ended.clone();
                let span =
                    tracing::info_span!("job", job_id = %job_id, attempt = claim.loc.entry.attempt);
                // Each job runs on its own thread with its own small
                // runtime. A job's work is mostly blocking file I/O (durable
                // writes: fsync); on the shared multi-threaded runtime such
                // tasks piled up on one or two workers (a woken task runs
                // where it was woken), so jobs did not overlap their fsyncs.
                tasks.spawn_blocking(move || {
                    let fut = async move {
                        let end = exec::run(ctx2, claim, own).await;
                        lock_owned(&active2).remove(&job_id);
                        drop(permit);
                        ended.notify_one();
                        end
                    }
                    .instrument(span);
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(fut),
                        Err(e) => {
                            // The claim stays in running/ and is reaped.
                            tracing::error!(error = %e, "cannot start a job runtime");
                            exec::JobEnd::Error
                        }
                    }
                });
            }
            None => {
                drop(permit);
                if cfg.drain
                    && lock_owned(&active).is_empty()
                    && queue_idle(&queue, claimer.passed_over())
                {
                    tracing::info!("queue drained; exiting");
                    break;
                }
                tokio::select! {
                    _ = claimer.wait() => {}
                    _ = job_ended.notified() => {}
                    // Drain mode and reaped jobs: look again now and then.
                    _ = tokio::time::sleep(reap_interval(cfg.lease)) => {}
                    _ = &mut shutdown => { stopping = true; break; }
                }
            }
        }
    }

    if stopping {
        tracing::info!(
            in_flight = lock_owned(&active).len(),
            grace_sec = cfg.shutdown_grace.as_secs(),
            "shutdown requested; no new claims, waiting for running steps"
        );
        let deadline = tokio::time::sleep(cfg.shutdown_grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                r = tasks.join_next() => if r.is_none() { break },
                _ = &mut deadline => {
                    for own in lock_owned(&active).values() {
                        own.control.stop(StopReason::Shutdown);
                    }
                    while tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
    } else {
        while tasks.join_next().await.is_some() {}
    }
    // Callbacks of jobs that just ended: a stopping runner gives attempts
    // in flight its grace (the rest stay in the outbox for any runner); a
    // draining one lets its own deliveries finish all their attempts.
    let callback_wait = if stopping {
        cfg.shutdown_grace.max(Duration::from_secs(1))
    } else {
        callback::ATTEMPT_TIMEOUT * (callback::ATTEMPTS + 2) + Duration::from_secs(20)
    };
    ctx.outbox.drain(callback_wait, !stopping).await;
    hb_stop.cancel();
    let _ = heartbeat.await;
    let _ = outbox_worker.await;
    renewer_stop.store(true, Ordering::Release);
    let _ = renewer.join();
    tracing::info!("runner stopped");
    Ok(())
}

/// Nothing left for this runner: no pending job but those it passes over
/// (agents it does not know), nothing running.
/// Whether a draining runner is done: nothing running, and nothing due in
/// pending beyond the jobs it passes over. Jobs deferred to a later time (a
/// budget's `defer`) do not keep it alive; they are counted in the log.
fn queue_idle(queue: &Queue, passed_over: usize) -> bool {
    if queue.depth(State::Running).unwrap_or(1) != 0 {
        return false;
    }
    let Ok(pending) = queue.list(State::Pending) else {
        return false;
    };
    let now = fsqueue::clock::now_unix();
    let deferred = pending.iter().filter(|l| !l.entry.is_due(now)).count();
    if pending.len() - deferred > passed_over {
        return false;
    }
    if deferred > 0 {
        let until = pending.iter().filter_map(|l| l.entry.not_before).min();
        tracing::info!(
            deferred,
            earliest_due_unix = until,
            "jobs deferred to a later time stay in pending"
        );
    }
    true
}

fn reap_interval(lease: Duration) -> Duration {
    (lease / 3).clamp(Duration::from_millis(200), Duration::from_secs(10))
}

fn record_claim_latency(claim: &fsqueue::Claim) {
    // The enqueue time is the sequence in the name (nanoseconds).
    let enq = std::time::UNIX_EPOCH + Duration::from_nanos(claim.loc.entry.seq);
    if claim.loc.entry.attempt == 1
        && let Ok(d) = claim.claimed_at.duration_since(enq)
    {
        metrics::histogram!("orch_claim_latency_seconds").record(d.as_secs_f64());
    }
}

/// Claims in `running/` under our own id belong to a previous process with
/// the same id (we hold the id's lock now, so no live process does): send
/// them back to `pending/` at once instead of waiting for their leases.
fn requeue_own_leftovers(queue: &Queue, runner_id: &str) {
    let Ok(list) = queue.list(State::Running) else {
        return;
    };
    for loc in list {
        if loc.entry.runner.as_deref() == Some(runner_id) {
            let mut e = loc.entry.unowned();
            e.reaps = e.reaps.saturating_add(1);
            match queue.move_to(&loc, State::Pending, &e) {
                Ok(_) => {
                    tracing::warn!(job_id = %loc.entry.job_id, "requeued a claim left by a previous process with this runner id")
                }
                Err(err) => {
                    tracing::warn!(job_id = %loc.entry.job_id, error = %err, "could not requeue leftover claim")
                }
            }
        }
    }
}

/// Checks cancel requests every 250 ms, reaps abandoned claims, and
/// publishes the runner's heartbeat (advisory files, no barrier). Leases
/// are renewed elsewhere (`ownership::spawn_renewer`).
async fn heartbeat_loop(
    ctx: Arc<Ctx>,
    active: Owned,
    reaper: Reaper,
    lock: Arc<RunnerLock>,
    stop: tokio_util::sync::CancellationToken,
) {
    let cfg = &ctx.cfg;
    let renew_every = fsqueue::lease::renew_interval(cfg.lease);
    let reap_every = reap_interval(cfg.lease);
    // Publish the heartbeat at once, so /health sees a new runner immediately.
    let mut last_renew = Instant::now()
        .checked_sub(renew_every)
        .unwrap_or_else(Instant::now);
    let mut last_reap = Instant::now()
        .checked_sub(reap_every)
        .unwrap_or_else(Instant::now);
    let started = contracts::now_rfc3339();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        // The heartbeat is the runner's working loop: if it stalls, leases
        // are not renewed either, and systemd's watchdog restarts us.
        fsqueue::notify::watchdog();
        let snapshot: Vec<Arc<Ownership>> = lock_owned(&active).values().cloned().collect();
        for own in &snapshot {
            if ctx.queue.has_request(&own.loc, "cancel", true) {
                tracing::info!(job_id = %own.job_id, "cancel requested");
                own.control.stop(StopReason::Cancelled);
            }
        }
        if last_renew.elapsed() >= renew_every {
            last_renew = Instant::now();
            let doc = serde_json::json!({
                "runner_id": cfg.runner_id,
                "pid": std::process::id(),
                "started_at": started,
                "heartbeat_at": contracts::now_rfc3339(),
                "lease_sec": cfg.lease.as_secs(),
                "concurrency": cfg.concurrency,
                "active_jobs": snapshot.iter().map(|o| o.job_id.clone()).collect::<Vec<_>>(),
                "claiming": !ctx.storage.faulted(),
                "storage_fault": ctx.storage.doc(),
            });
            if let Err(e) = lock.write_heartbeat(doc.to_string().as_bytes()) {
                // Full disk: rewrite in place, so /health still says why.
                let path = ctx
                    .queue
                    .internal_dir(fsqueue::queue::RUNNERS_DIR)
                    .join(format!("{}.json", cfg.runner_id));
                if let Err(e2) = storage::write_advisory(&path, doc.to_string().as_bytes()) {
                    tracing::warn!(error = %e, fallback = %e2, "could not write heartbeat");
                }
            }
            crate::config::write_metrics_file(cfg);
        }
        if last_reap.elapsed() >= reap_every {
            last_reap = Instant::now();
            let r = reaper.clone();
            let out = tokio::task::spawn_blocking(move || r.reap()).await;
            if let Ok(Ok(outcomes)) = out {
                for o in outcomes {
                    metrics::counter!("orch_leases_reaped_total").increment(1);
                    artifacts::control::record_reaped(&ctx.queue, &ctx.store, &o);
                }
            }
        }
    }
    lock.clear_heartbeat();
}
