//! Cron schedules: reading `SCHEDULES_DIR`, deciding which slot is due,
//! and enqueueing its job exactly once.
//!
//! **Exactly once.** A slot's job id is derived from the schedule id and
//! the slot's instant (`cron-<id>-<YYYYMMDDTHHMMSSZ>`), and the queue
//! reserves every job id with a no-replace create in `ids/`. Whoever
//! enqueues a slot second (another scheduler on the same queue, or this
//! one after a restart) gets `Duplicate` and does nothing. The state file
//! (`QUEUE_ROOT/schedules/<id>.json`) records the last slot fired, for
//! catch-up and for `orch schedules`; it is not what prevents duplicates.
//!
//! **Reloading.** Every rescan (on an inotify event in the directory, and
//! periodically, since inotify can miss changes, e.g. on network
//! filesystems) reads each `*.json` file; a file whose bytes did not change
//! keeps its parsed schedule and its next slot. A bad file is skipped and
//! reported once per change of its content or problems (a log line naming
//! the file and every problem, `orch_schedule_file_errors_total`); the
//! other schedules keep firing.
//!
//! **Missed slots.** On start, a schedule whose most recent slot lies after
//! both its last fired slot and the time it was first seen missed that
//! slot: `catchup: last` fires it once, `none` skips it. While running, a
//! scheduler that was held up past several slots (a suspended machine)
//! fires only the latest of them.
//!
//! **Failed enqueues.** A slot whose job the queue refused (a full or
//! read-only disk, say) is tried again with backoff (1 s doubling to 60 s,
//! on the scheduler's clock) until it is enqueued or the schedule's next
//! slot comes, which then supersedes it (as when held up past slots). The
//! job id stays the slot's, so a retry that meets a job written by a peer
//! meanwhile is a no-op.

use artifacts::schedules::{self as files, StateStore, mark_duplicates, parse_checked};
use contracts::schedule::{Catchup, Schedule, ScheduleState, job_id, slot_text};
use contracts::{NormalizeOptions, Violations};
use fsqueue::{Queue, QueueError, State};
use jiff::Timestamp;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// Why a slot fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OnTime,
    Catchup,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::OnTime => "on_time",
            Kind::Catchup => "catchup",
        }
    }
}

struct Active {
    schedule: Schedule,
    fingerprint: u64,
    next: Option<Timestamp>,
    /// A slot whose enqueue failed, to try again.
    retry: Option<Retry>,
}

/// A slot to enqueue again after a failure.
#[derive(Debug, Clone, Copy)]
struct Retry {
    slot: Timestamp,
    kind: Kind,
    at: Timestamp,
    delay_secs: i64,
}

const RETRY_FIRST_SECS: i64 = 1;
const RETRY_MAX_SECS: i64 = 60;

impl Retry {
    fn first(slot: Timestamp, kind: Kind, now: Timestamp) -> Self {
        Self {
            slot,
            kind,
            at: now + jiff::SignedDuration::from_secs(RETRY_FIRST_SECS),
            delay_secs: RETRY_FIRST_SECS,
        }
    }

    fn again(self, now: Timestamp) -> Self {
        let delay_secs = (self.delay_secs * 2).min(RETRY_MAX_SECS);
        Self {
            at: now + jiff::SignedDuration::from_secs(delay_secs),
            delay_secs,
            ..self
        }
    }
}

/// The schedules of one scheduler process.
pub struct Engine {
    dir: PathBuf,
    queue: Queue,
    states: StateStore,
    opts: NormalizeOptions,
    /// File name → (fingerprint, parse result before duplicate marking).
    parsed: HashMap<String, (u64, Result<Schedule, Violations>)>,
    /// File name → the problems last reported for it.
    reported: HashMap<String, String>,
    dir_reported: Option<String>,
    /// Schedule id → what is armed.
    active: BTreeMap<String, Active>,
    started: bool,
}

impl Engine {
    pub fn new(dir: PathBuf, queue: Queue, opts: NormalizeOptions) -> Self {
        let states = StateStore::new(queue.root());
        Self {
            dir,
            queue,
            states,
            opts,
            parsed: HashMap::new(),
            reported: HashMap::new(),
            dir_reported: None,
            active: BTreeMap::new(),
            started: false,
        }
    }

    /// The earliest armed slot.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.active
            .values()
            .flat_map(|a| [a.next, a.retry.map(|r| r.at)])
            .flatten()
            .min()
    }

    /// Rereads the directory and re-arms what changed. The first rescan of
    /// a process also applies catch-up.
    pub fn rescan(&mut self, now: Timestamp) {
        let (names, dir_problem) = files::file_names(&self.dir);
        if dir_problem != self.dir_reported {
            if let Some(p) = &dir_problem {
                tracing::warn!(dir = %self.dir.display(), problem = %p, "schedules directory");
            }
            self.dir_reported = dir_problem;
        }
        let mut listing = Vec::with_capacity(names.len());
        let mut parsed = HashMap::with_capacity(names.len());
        for name in names {
            let (fp, bytes) = files::read_with_fingerprint(&self.dir.join(&name));
            let result = match self.parsed.remove(&name) {
                Some((old_fp, r)) if old_fp == fp => r,
                _ => match bytes {
                    Ok(b) => parse_checked(&b, &self.opts),
                    Err(m) => Err(Violations::single("", m)),
                },
            };
            parsed.insert(name.clone(), (fp, result.clone()));
            listing.push(files::ScheduleFile {
                file: name,
                fingerprint: fp,
                result,
            });
        }
        self.parsed = parsed;
        mark_duplicates(&mut listing);

        // Report each bad file once per change of its problems.
        let mut reported = HashMap::new();
        let (mut enabled, mut disabled, mut invalid) = (0u32, 0u32, 0u32);
        for f in &listing {
            match &f.result {
                Ok(s) if s.enabled => enabled += 1,
                Ok(_) => disabled += 1,
                Err(v) => {
                    invalid += 1;
                    let text = v.to_string();
                    if self.reported.get(&f.file) != Some(&text) {
                        let problems: Vec<String> = v
                            .iter()
                            .map(|x| {
                                let p = if x.pointer.is_empty() {
                                    "/"
                                } else {
                                    &x.pointer
                                };
                                format!("{p}: {}", x.message)
                            })
                            .collect();
                        tracing::warn!(
                            file = %self.dir.join(&f.file).display(),
                            problems = %problems.join("; "),
                            "bad schedule file skipped"
                        );
                        metrics::counter!("orch_schedule_file_errors_total").increment(1);
                    }
                    reported.insert(f.file.clone(), text);
                }
            }
        }
        self.reported = reported;
        metrics::gauge!("orch_schedules", "state" => "enabled").set(enabled as f64);
        metrics::gauge!("orch_schedules", "state" => "disabled").set(disabled as f64);
        metrics::gauge!("orch_schedules", "state" => "invalid").set(invalid as f64);

        // Re-arm: unchanged schedules keep their next slot.
        let mut active = BTreeMap::new();
        for f in listing {
            let Ok(s) = f.result else { continue };
            if !s.enabled {
                continue;
            }
            if let Some(a) = self.active.remove(&s.id)
                && a.fingerprint == f.fingerprint
            {
                active.insert(s.id.clone(), a);
                continue;
            }
            let id = s.id.clone();
            let (next, retry) = self.arm(&s, now);
            tracing::info!(
                schedule_id = %id,
                schedule = %s.cron,
                timezone = %s.timezone,
                next = next.map(slot_text).unwrap_or_default(),
                "schedule armed"
            );
            active.insert(
                id,
                Active {
                    schedule: s,
                    fingerprint: f.fingerprint,
                    next,
                    retry,
                },
            );
        }
        for id in self.active.keys() {
            tracing::info!(schedule_id = %id, "schedule removed or disabled");
        }
        self.active = active;
        self.started = true;
    }

    /// Records that the schedule is watched and, on the first rescan,
    /// handles the slot missed while no scheduler ran. Returns its next
    /// slot, and the missed slot to try again when its enqueue failed.
    fn arm(&mut self, s: &Schedule, now: Timestamp) -> (Option<Timestamp>, Option<Retry>) {
        let mut retry = None;
        match self.states.read(&s.id) {
            None => self.save(&ScheduleState::new(&s.id, now)),
            Some(st) if !self.started => {
                let since = st.last_slot.map_or(st.first_seen, |l| l.max(st.first_seen));
                if let Some(missed) = s.cron.prev_at_or_before(now, &s.tz)
                    && missed > since
                {
                    match s.catchup {
                        Catchup::Last => {
                            if !self.fire(s, missed, Kind::Catchup, now) {
                                retry = Some(Retry::first(missed, Kind::Catchup, now));
                            }
                        }
                        Catchup::None => {
                            metrics::counter!("orch_schedule_slots_skipped_total").increment(1);
                            tracing::info!(
                                schedule_id = %s.id,
                                slot = %slot_text(missed),
                                "missed slot skipped (catchup: none)"
                            );
                        }
                    }
                }
            }
            Some(_) => {}
        }
        (s.cron.next_after(now, &s.tz), retry)
    }

    /// Fires every armed schedule whose slot has come, and tries again
    /// the slots whose enqueue failed.
    pub fn fire_due(&mut self, now: Timestamp) {
        let due: Vec<String> = self
            .active
            .iter()
            .filter(|(_, a)| {
                a.next.is_some_and(|n| n <= now) || a.retry.is_some_and(|r| r.at <= now)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let Some(a) = self.active.get(&id) else {
                continue;
            };
            let s = a.schedule.clone();
            let next = a.next;
            let retry = a.retry;
            let mut failed = None;
            if next.is_some_and(|n| n <= now) {
                // Held up past several slots: the latest one fires.
                let slot = s.cron.prev_at_or_before(now, &s.tz).or(next);
                if let (Some(slot), Some(next)) = (slot, next)
                    && slot > next
                {
                    metrics::counter!("orch_schedule_slots_skipped_total").increment(1);
                    tracing::warn!(
                        schedule_id = %id,
                        from = %slot_text(next),
                        firing = %slot_text(slot),
                        "the scheduler was held up past slots; firing only the latest"
                    );
                }
                if let Some(r) = retry {
                    // A newer slot supersedes the one still being retried.
                    metrics::counter!("orch_schedule_slots_skipped_total").increment(1);
                    tracing::warn!(
                        schedule_id = %id,
                        slot = %slot_text(r.slot),
                        "slot never enqueued; superseded by the next slot"
                    );
                }
                if let Some(slot) = slot
                    && !self.fire(&s, slot, Kind::OnTime, now)
                {
                    failed = Some(Retry::first(slot, Kind::OnTime, now));
                }
            } else if let Some(r) = retry {
                tracing::info!(schedule_id = %id, slot = %slot_text(r.slot), "trying the slot's enqueue again");
                if !self.fire(&s, r.slot, r.kind, now) {
                    failed = Some(r.again(now));
                }
            }
            if let Some(a) = self.active.get_mut(&id) {
                a.next = s.cron.next_after(now, &s.tz);
                a.retry = failed;
            }
        }
    }

    /// Enqueues the job of one slot (a no-op when it is already enqueued)
    /// and records the outcome in the schedule's state. False when the
    /// queue refused the job (worth trying again; an invalid payload is
    /// not).
    fn fire(&mut self, s: &Schedule, slot: Timestamp, kind: Kind, now: Timestamp) -> bool {
        let jid = job_id(&s.id, slot);
        let (outcome, error) = match s.job(slot, &self.opts) {
            Err(v) => {
                tracing::warn!(schedule_id = %s.id, slot = %slot_text(slot), problems = %v, "schedule payload is not a valid job; slot skipped");
                ("invalid", Some(v.to_string()))
            }
            Ok(job) => {
                let state = if job.policy.requires_approval {
                    State::AwaitingApproval
                } else {
                    State::Pending
                };
                let doc = serde_json::to_vec_pretty(&job).unwrap_or_default();
                match self
                    .queue
                    .enqueue(&jid, &doc, fsqueue::name::DEFAULT_PRIO, state)
                {
                    Ok(_) => {
                        tracing::info!(
                            job_id = %jid,
                            schedule_id = %s.id,
                            slot = %slot_text(slot),
                            kind = kind.as_str(),
                            "schedule fired"
                        );
                        ("enqueued", None)
                    }
                    Err(QueueError::Duplicate { .. }) => {
                        tracing::debug!(job_id = %jid, schedule_id = %s.id, "slot already enqueued");
                        ("already_enqueued", None)
                    }
                    Err(e) => {
                        tracing::warn!(job_id = %jid, schedule_id = %s.id, error = %e, "could not enqueue the slot's job");
                        ("error", Some(e.to_string()))
                    }
                }
            }
        };
        metrics::counter!("orch_schedule_fires_total", "outcome" => outcome, "kind" => kind.as_str())
            .increment(1);
        let mut st = self
            .states
            .read(&s.id)
            .unwrap_or_else(|| ScheduleState::new(&s.id, now));
        // Whoever enqueued it, the slot's job is in the queue: the record
        // says so the same way (two schedulers write the same thing). A
        // lagging peer never moves the record backwards.
        let recorded = if outcome == "already_enqueued" {
            "enqueued"
        } else {
            outcome
        };
        if outcome == "error" {
            // The slot does not count as fired: a restarted scheduler's
            // catch-up (`catchup: last`) still sees it missed.
            if st.last_slot.is_none_or(|l| slot >= l) {
                st.last_fired_at = Some(now);
                st.last_outcome = Some(recorded.to_owned());
                st.last_error = error;
                self.save(&st);
            }
            return false;
        }
        if st.last_slot.is_none_or(|l| slot >= l) {
            st.last_slot = Some(slot);
            st.last_job_id = Some(jid);
            st.last_fired_at = Some(now);
            st.last_outcome = Some(recorded.to_owned());
            st.last_error = error;
            self.save(&st);
        }
        true
    }

    fn save(&self, st: &ScheduleState) {
        if let Err(e) = self.states.write(st) {
            tracing::warn!(schedule_id = %st.schedule_id, error = %e, "could not write the schedule state");
        }
    }
}

/// Wakes `changed` whenever something happens in `dir` (and once when the
/// watch starts). When the directory is missing or the watch breaks, tries
/// again every few seconds; the periodic rescan covers the gap.
pub fn spawn_watch(
    dir: PathBuf,
    changed: std::sync::Arc<tokio::sync::Notify>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = watch_once(&dir, &changed).await {
                tracing::debug!(dir = %dir.display(), error = %e, "schedules directory not watched; relying on rescans");
            }
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
    })
}

async fn watch_once(dir: &std::path::Path, changed: &tokio::sync::Notify) -> std::io::Result<()> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    ino.add_watch(
        dir,
        AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF,
    )?;
    // Whatever changed before the watch existed.
    changed.notify_one();
    // `InotifyFd` owns the descriptor for as long as it is registered.
    #[allow(deprecated)]
    let fd = tokio::io::unix::AsyncFd::new(InotifyFd(ino))?;
    loop {
        let mut guard = fd.readable().await?;
        match fd.get_ref().0.read_events() {
            Ok(events) => {
                changed.notify_one();
                if events.iter().any(|e| {
                    e.mask.intersects(
                        AddWatchFlags::IN_IGNORED
                            | AddWatchFlags::IN_DELETE_SELF
                            | AddWatchFlags::IN_MOVE_SELF
                            | AddWatchFlags::IN_Q_OVERFLOW,
                    )
                }) {
                    return Ok(());
                }
            }
            Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
            Err(e) => return Err(e.into()),
        }
    }
}

struct InotifyFd(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}
