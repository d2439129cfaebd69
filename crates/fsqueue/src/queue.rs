//! The queue directory and its transitions. Every transition is one atomic
//! rename followed by fsyncs of both directories; moves into `done/`,
//! `failed/`, `awaiting_approval/` and claims never replace an existing file
//! (`EEXIST` means someone else already did it).

use crate::durable::{self, DurableError};
use crate::name::{Entry, is_valid_job_id, next_seq};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The five states a job file can be in. A job file lives in exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    Pending,
    AwaitingApproval,
    Running,
    Done,
    Failed,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Pending,
        State::AwaitingApproval,
        State::Running,
        State::Done,
        State::Failed,
    ];

    pub fn dir_name(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::AwaitingApproval => "awaiting_approval",
            State::Running => "running",
            State::Done => "done",
            State::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.dir_name() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, State::Done | State::Failed)
    }

    /// When the same job appears in two states (a crash between the two
    /// halves of a link+unlink fallback, or an operator's copy), the higher
    /// precedence wins: terminal > awaiting_approval > running > pending.
    pub fn precedence(self) -> u8 {
        match self {
            State::Done | State::Failed => 3,
            State::AwaitingApproval => 2,
            State::Running => 1,
            State::Pending => 0,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dir_name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Io(#[from] DurableError),
    #[error("job {job_id} already exists in the queue")]
    Duplicate { job_id: String },
    #[error("job {job_id} not found in the queue")]
    NotFound { job_id: String },
    #[error("job {job_id} is {actual}, expected {expected}")]
    WrongState {
        job_id: String,
        actual: State,
        expected: String,
    },
    #[error("invalid job id {0:?}")]
    BadJobId(String),
    #[error("lease lost on {path}: the job was reaped or moved by someone else")]
    LeaseLost { path: PathBuf },
}

pub type Result<T> = std::result::Result<T, QueueError>;

/// A job file found in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub state: State,
    pub entry: Entry,
    pub path: PathBuf,
}

/// Handle on a queue root. Cheap to clone; holds no open files.
#[derive(Debug, Clone)]
pub struct Queue {
    root: PathBuf,
}

/// One job for `Queue::enqueue_many`.
#[derive(Debug, Clone, Copy)]
pub struct NewJob<'a> {
    pub job_id: &'a str,
    pub doc: &'a [u8],
    pub prio: u8,
    pub state: State,
}

/// A per-job copy of an error that hit a whole batch.
fn copy_err(e: &DurableError) -> DurableError {
    DurableError::new(
        e.op,
        e.path.clone(),
        io::Error::new(e.kind(), e.source.to_string()),
    )
}

/// Internal directories besides the five states.
pub const TMP_DIR: &str = "tmp";
pub const CORRUPT_DIR: &str = "corrupt";
pub const RUNNERS_DIR: &str = "runners";
pub const IDS_DIR: &str = "ids";
pub const CONTROL_DIR: &str = "control";
/// Per-job attempt records and their locks (see `fence`).
pub const FENCES_DIR: &str = "fences";

/// A reservation in `ids/` older than this with no job behind it is the
/// leftover of a crash between reservation and publish, and may be taken over.
const ORPHAN_ID_AGE: Duration = Duration::from_secs(60);

/// Passes over the state directories a lookup of a reserved id makes
/// before it concludes the job is not there (see `Queue::find`).
const FIND_PASSES: usize = 4;

impl Queue {
    /// Opens (creating if needed) the queue under `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let q = Self { root: root.into() };
        for st in State::ALL {
            durable::create_dir_all(&q.dir(st))?;
        }
        for d in [
            TMP_DIR,
            CORRUPT_DIR,
            RUNNERS_DIR,
            IDS_DIR,
            CONTROL_DIR,
            FENCES_DIR,
        ] {
            durable::create_dir_all(&q.root.join(d))?;
        }
        Ok(q)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self, st: State) -> PathBuf {
        self.root.join(st.dir_name())
    }

    pub fn internal_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Durably enqueues a job document under `job_id` into `state`
    /// (`Pending` or `AwaitingApproval`). Refuses a job id that was ever
    /// enqueued before (until retention prunes it) with `Duplicate`.
    /// Returns only after the file and its directory entry are on disk.
    pub fn enqueue(&self, job_id: &str, doc: &[u8], prio: u8, state: State) -> Result<Located> {
        let job = NewJob {
            job_id,
            doc,
            prio,
            state,
        };
        let res = self
            .enqueue_many_with(&[job], false)
            .pop()
            .unwrap_or_else(|| Err(QueueError::BadJobId(job_id.chars().take(80).collect())));
        crate::fault::point("queue.enqueue.published");
        res
    }

    /// `enqueue` for several jobs at the cost of one data barrier and one
    /// name barrier for all of them (group commit of concurrent webhooks).
    /// One result per job, in order; each job is durable exactly when its
    /// result is `Ok`.
    pub fn enqueue_many(&self, jobs: &[NewJob<'_>]) -> Vec<Result<Located>> {
        let res = self.enqueue_many_with(jobs, false);
        crate::fault::point("queue.enqueue_many.published");
        res
    }

    /// `enqueue` of a job whose id the caller has proven its own (a
    /// delivery record whose writer is dead, say): a reservation in `ids/`
    /// with no job file behind it (a crash between reservation and publish)
    /// is taken over at any age. `Duplicate` means the job exists.
    pub fn enqueue_recovered(
        &self,
        job_id: &str,
        doc: &[u8],
        prio: u8,
        state: State,
    ) -> Result<Located> {
        let job = NewJob {
            job_id,
            doc,
            prio,
            state,
        };
        self.enqueue_many_with(&[job], true)
            .pop()
            .unwrap_or_else(|| Err(QueueError::BadJobId(job_id.chars().take(80).collect())))
    }

    fn enqueue_many_with(&self, jobs: &[NewJob<'_>], owned_ids: bool) -> Vec<Result<Located>> {
        let mut out: Vec<Option<Result<Located>>> = jobs.iter().map(|_| None).collect();
        let mut staged: Vec<(usize, Located)> = Vec::with_capacity(jobs.len());
        for (i, j) in jobs.iter().enumerate() {
            if !is_valid_job_id(j.job_id) {
                out[i] = Some(Err(QueueError::BadJobId(
                    j.job_id.chars().take(80).collect(),
                )));
                continue;
            }
            debug_assert!(matches!(j.state, State::Pending | State::AwaitingApproval));
            if let Err(e) = self.reserve_id(j.job_id, owned_ids) {
                out[i] = Some(Err(e));
                continue;
            }
            crate::fault::point("queue.enqueue.reserved");
            // Written as a temp file inside the state directory and renamed
            // into place (no-replace): watchers ignore temp names, so they
            // only ever see a complete file appear.
            let entry = Entry::new(j.prio, next_seq(), j.job_id);
            let path = self.dir(j.state).join(entry.file_name());
            staged.push((
                i,
                Located {
                    state: j.state,
                    entry,
                    path,
                },
            ));
        }
        let files: Vec<(&Path, &[u8])> = staged
            .iter()
            .map(|(i, loc)| (loc.path.as_path(), jobs[*i].doc))
            .collect();
        // The id reservations (made above without a barrier of their own)
        // reach the disk with the job files' data barrier.
        let ids = self.root.join(IDS_DIR);
        let placed = durable::write_files_new_after(&files, &[&ids]);
        for (k, (i, loc)) in staged.into_iter().enumerate() {
            let path = loc.path.clone();
            let res = match &placed {
                Ok(results) => match &results[k] {
                    Ok(true) => Ok(loc),
                    Ok(false) => Err(QueueError::Duplicate {
                        job_id: loc.entry.job_id.clone(),
                    }),
                    Err(e) => Err(QueueError::Io(copy_err(e))),
                },
                Err(e) => Err(QueueError::Io(copy_err(e))),
            };
            // Free the id only when nothing was published, so a retry can
            // succeed. A failed name barrier comes after the renames: a job
            // file already in place keeps its id (its job may well survive).
            if res.is_err() && std::fs::symlink_metadata(&path).is_err() {
                let _ = durable::remove_file(&self.id_path(jobs[i].job_id));
            }
            out[i] = Some(res);
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(QueueError::BadJobId(String::new()))))
            .collect()
    }

    fn id_path(&self, job_id: &str) -> PathBuf {
        self.root.join(IDS_DIR).join(job_id)
    }

    /// Exactly-once reservation of a job id: a no-replace create in `ids/`.
    /// With `owned`, the caller has proven the id its own, and a
    /// reservation without a job is taken over whatever its age.
    fn reserve_id(&self, job_id: &str, owned: bool) -> Result<()> {
        let p = self.id_path(job_id);
        if durable::create_empty_unsynced(&p)? {
            return Ok(());
        }
        // Taken. Either the job exists, or a crash left the reservation
        // without a job: take over an old orphan, refuse otherwise.
        let old = std::fs::symlink_metadata(&p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > ORPHAN_ID_AGE);
        if (owned || old) && self.find(job_id)?.is_none() {
            tracing::warn!(job_id, "taking over an orphaned id reservation");
            return Ok(());
        }
        Err(QueueError::Duplicate {
            job_id: job_id.to_owned(),
        })
    }

    /// Releases a job id for reuse (retention pruning of a terminal job).
    pub fn forget_id(&self, job_id: &str) -> Result<()> {
        if !is_valid_job_id(job_id) {
            return Err(QueueError::BadJobId(job_id.chars().take(80).collect()));
        }
        // The job's attempt record goes with its id.
        crate::fence::JobFence::new(self, job_id).remove();
        Ok(durable::remove_file(&self.id_path(job_id))?)
    }

    /// Lists the parseable entries of one state directory, in FIFO order.
    pub fn list(&self, st: State) -> Result<Vec<Located>> {
        let dir = self.dir(st);
        let mut out = Vec::new();
        for name in read_names(&dir)? {
            if let Some(entry) = Entry::parse(&name) {
                out.push(Located {
                    state: st,
                    path: dir.join(&name),
                    entry,
                });
            }
        }
        out.sort_by(|a, b| a.entry.cmp(&b.entry));
        Ok(out)
    }

    /// Number of job files in a state (for gauges; counts names only).
    pub fn depth(&self, st: State) -> Result<usize> {
        Ok(read_names(&self.dir(st))?
            .iter()
            .filter(|n| Entry::parse(n).is_some())
            .count())
    }

    /// Finds a job by id. When it appears in several states (a crash in
    /// the middle of a move, manual meddling, or a move seen half-way by
    /// this very lookup), the highest precedence wins.
    ///
    /// A job moves while it is looked up, and one pass over the state
    /// directories can miss it (it leaves a directory not yet read for one
    /// already read). The pass reads the states in the order jobs move
    /// forward (awaiting approval, pending, running, done, failed), so a
    /// job that only moves forward is always met again further on. The
    /// moves back (a reaped lease, an operator's retry) can still slip
    /// past, so a job whose id is reserved in `ids/` but was not seen is
    /// looked for again, a few passes at most: a reservation without any
    /// job (an enqueue in flight, a crash's leftover) costs those passes.
    pub fn find(&self, job_id: &str) -> Result<Option<Located>> {
        if !is_valid_job_id(job_id) {
            return Err(QueueError::BadJobId(job_id.chars().take(80).collect()));
        }
        for _ in 0..FIND_PASSES {
            if let Some(found) = self.find_once(job_id)? {
                return Ok(Some(found));
            }
            if std::fs::symlink_metadata(self.id_path(job_id)).is_err() {
                break;
            }
        }
        Ok(None)
    }

    fn find_once(&self, job_id: &str) -> Result<Option<Located>> {
        let mut best: Option<Located> = None;
        for st in [
            State::AwaitingApproval,
            State::Pending,
            State::Running,
            State::Done,
            State::Failed,
        ] {
            let dir = self.dir(st);
            for name in read_names(&dir)? {
                let Some(entry) = Entry::parse(&name) else {
                    continue;
                };
                if entry.job_id != job_id {
                    continue;
                }
                let cand = Located {
                    state: st,
                    path: dir.join(&name),
                    entry,
                };
                if best
                    .as_ref()
                    .is_none_or(|b| cand.state.precedence() > b.state.precedence())
                {
                    best = Some(cand);
                }
            }
        }
        Ok(best)
    }

    /// Reads a located job file's bytes.
    pub fn read(&self, loc: &Located) -> Result<Vec<u8>> {
        std::fs::read(&loc.path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                QueueError::NotFound {
                    job_id: loc.entry.job_id.clone(),
                }
            } else {
                QueueError::Io(DurableError::new("read", &loc.path, e))
            }
        })
    }

    /// Moves a located job to `to` with the given entry name, never replacing.
    /// `NotFound` from the source means someone else moved it first.
    pub fn move_to(&self, loc: &Located, to: State, entry: &Entry) -> Result<Located> {
        let dest = self.dir(to).join(entry.file_name());
        match durable::move_noreplace(&loc.path, &dest) {
            Ok(()) => Ok(Located {
                state: to,
                entry: entry.clone(),
                path: dest,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if loc.state == State::Running {
                    Err(QueueError::LeaseLost {
                        path: loc.path.clone(),
                    })
                } else {
                    Err(QueueError::NotFound {
                        job_id: loc.entry.job_id.clone(),
                    })
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                tracing::warn!(
                    job_id = %loc.entry.job_id,
                    dest = %dest.display(),
                    "transition target already exists; someone else completed it, leaving it untouched"
                );
                Err(QueueError::Duplicate {
                    job_id: loc.entry.job_id.clone(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Operator transition: finds `job_id`, checks it is in one of `from`,
    /// and moves it to `to` (dropping the runner from the name; `reset_reaps`
    /// zeroes the poison counter, for `retry`).
    pub fn transition(
        &self,
        job_id: &str,
        from: &[State],
        to: State,
        reset_reaps: bool,
    ) -> Result<Located> {
        let loc = self.find(job_id)?.ok_or_else(|| QueueError::NotFound {
            job_id: job_id.to_owned(),
        })?;
        if !from.contains(&loc.state) {
            return Err(QueueError::WrongState {
                job_id: job_id.to_owned(),
                actual: loc.state,
                expected: from
                    .iter()
                    .map(|s| s.dir_name())
                    .collect::<Vec<_>>()
                    .join(" or "),
            });
        }
        let mut entry = loc.entry.unowned();
        if reset_reaps {
            entry.reaps = 0;
        }
        // Retention judges a terminal job by its file's mtime, which a
        // rename keeps: an operator's cancel or reject ends the job *now*,
        // however long it waited before.
        if to.is_terminal()
            && let Err(e) = crate::claim::touch(&loc.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(job_id, error = %e, "could not refresh the job file's time");
        }
        let moved = self.move_to(&loc, to, &entry)?;
        crate::fault::point("queue.transition.moved");
        Ok(moved)
    }

    /// Moves an unreadable or invalid job file to `corrupt/` with a reason
    /// file beside it. Returns the new path.
    pub fn quarantine(&self, path: &Path, reason: &str) -> Result<PathBuf> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unnamed".into());
        // A unique prefix so two corrupt files with the same name never collide.
        let dest_name = format!("{}-{}", next_seq(), sanitize_file_name(&name));
        let dest = self.root.join(CORRUPT_DIR).join(&dest_name);
        let reason_file = self
            .root
            .join(CORRUPT_DIR)
            .join(format!("{dest_name}.reason"));
        durable::write_file(&reason_file, format!("{reason}\n").as_bytes())?;
        if let Err(e) = durable::move_noreplace(path, &dest) {
            // Nothing was quarantined (typically: a live process moved the
            // file meanwhile): no reason without its file.
            let _ = durable::remove_file(&reason_file);
            return Err(e.into());
        }
        tracing::warn!(file = %path.display(), to = %dest.display(), reason, "quarantined corrupt queue file");
        Ok(dest)
    }
}

/// Names in a directory, skipping temp files and anything non-UTF-8.
pub(crate) fn read_names(dir: &Path) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).map_err(|e| DurableError::new("read dir", dir, e))?;
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| DurableError::new("read dir", dir, e))?;
        if let Ok(name) = ent.file_name().into_string()
            && !durable::is_temp_name(&name)
        {
            out.push(name);
        }
    }
    Ok(out)
}

fn sanitize_file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-~@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect()
}
