//! Schedules on disk, shared by `orch-scheduler` (which fires them),
//! `orch schedules` and the gateway's `GET /schedules` (which show them):
//! reading `SCHEDULES_DIR`, the per-schedule state under
//! `QUEUE_ROOT/schedules/`, and the report both viewers print.
//!
//! A schedule file is read defensively: never through a symlink (a link in
//! the directory could expose any file the service can read), only regular
//! files, at most [`MAX_FILE_BYTES`]. Every problem with a file becomes a
//! list of `{pointer, message}` for that file alone; the other files are
//! unaffected. Two files with the same `id`: the first by file name keeps
//! it, the others are refused.

use contracts::schedule::{Schedule, ScheduleState, is_valid_schedule_id, parse_schedule};
use contracts::{JobId, NormalizeOptions, Violations};
use fsqueue::Queue;
use jiff::Timestamp;
use serde_json::{Value, json};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest schedule file read.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Most schedule files looked at in one directory.
pub const MAX_FILES: usize = 1000;
/// The state directory's name under the queue root.
pub const STATE_DIR: &str = "schedules";
/// Largest state file read.
const MAX_STATE_BYTES: u64 = 64 * 1024;

/// One `*.json` file of the schedules directory.
#[derive(Debug, Clone)]
pub struct ScheduleFile {
    /// The file name (lossy UTF-8).
    pub file: String,
    /// A hash of what was read (or of why it could not be), to tell when
    /// the file changed.
    pub fingerprint: u64,
    pub result: Result<Schedule, Violations>,
}

/// The schedules directory as read at one moment.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub files: Vec<ScheduleFile>,
    /// A problem with the directory itself (missing, unreadable, too many
    /// files); the files that could be read are still listed.
    pub dir_error: Option<String>,
}

fn fingerprint(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Reads a schedule file: not through a symlink, a regular file, at most
/// [`MAX_FILE_BYTES`]. The error is a sentence for the operator.
pub fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) {
                "is a symbolic link: schedule files must be regular files (copy the file instead of linking it)".to_owned()
            } else {
                format!("cannot open: {e}")
            }
        })?;
    let meta = f.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".to_owned());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "is {} bytes, larger than the {MAX_FILE_BYTES} bytes a schedule file may have",
            meta.len()
        ));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read: {e}"))?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "is larger than the {MAX_FILE_BYTES} bytes a schedule file may have"
        ));
    }
    Ok(buf)
}

/// Parses a schedule file's bytes and checks its payload as a job.
pub fn parse_checked(bytes: &[u8], opts: &NormalizeOptions) -> Result<Schedule, Violations> {
    let s = parse_schedule(bytes)?;
    s.check(opts)?;
    Ok(s)
}

/// Reads and checks one schedule file (`orch schedules validate FILE`).
pub fn load_file(path: &Path, opts: &NormalizeOptions) -> Result<Schedule, Violations> {
    let bytes = read_file(path).map_err(|m| Violations::single("", m))?;
    parse_checked(&bytes, opts)
}

/// The names of the schedule files in `dir` (`*.json`, not hidden, not a
/// temp file), sorted, with the directory problem if any.
pub fn file_names(dir: &Path) -> (Vec<String>, Option<String>) {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (
                Vec::new(),
                Some(format!(
                    "the schedules directory {} does not exist",
                    dir.display()
                )),
            );
        }
        Err(e) => {
            return (
                Vec::new(),
                Some(format!("cannot read {}: {e}", dir.display())),
            );
        }
    };
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.ends_with(".json") && !n.starts_with('.') && !fsqueue::durable::is_temp_name(n)
        })
        .collect();
    names.sort();
    let mut problem = None;
    if names.len() > MAX_FILES {
        problem = Some(format!(
            "{} schedule files, more than the {MAX_FILES} read; the rest are ignored",
            names.len()
        ));
        names.truncate(MAX_FILES);
    }
    (names, problem)
}

/// Refuses the second and later files that use an id already taken by an
/// earlier file (by name).
pub fn mark_duplicates(files: &mut [ScheduleFile]) {
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    for f in files.iter_mut() {
        let Ok(s) = &f.result else { continue };
        if let Some(first) = seen.get(&s.id) {
            f.result = Err(Violations::single(
                "/id",
                format!(
                    "id {:?} is already used by {first}; each schedule needs its own id",
                    s.id
                ),
            ));
        } else {
            seen.insert(s.id.clone(), f.file.clone());
        }
    }
}

/// Reads, parses and checks every schedule file of `dir`.
pub fn load_dir(dir: &Path, opts: &NormalizeOptions) -> Listing {
    let (names, dir_error) = file_names(dir);
    let mut files: Vec<ScheduleFile> = names
        .into_iter()
        .map(|file| {
            let (fingerprint, result) = match read_file(&dir.join(&file)) {
                Ok(bytes) => (fingerprint(&bytes), parse_checked(&bytes, opts)),
                Err(m) => (fingerprint(m.as_bytes()), Err(Violations::single("", m))),
            };
            ScheduleFile {
                file,
                fingerprint,
                result,
            }
        })
        .collect();
    mark_duplicates(&mut files);
    Listing { files, dir_error }
}

/// Reads one file for the scheduler's rescans: its fingerprint and bytes
/// (or the problem).
pub fn read_with_fingerprint(path: &Path) -> (u64, Result<Vec<u8>, String>) {
    match read_file(path) {
        Ok(b) => (fingerprint(&b), Ok(b)),
        Err(m) => (fingerprint(m.as_bytes()), Err(m)),
    }
}

/// The per-schedule state files, `QUEUE_ROOT/schedules/<id>.json`: shared
/// by every scheduler on the queue.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    pub fn new(queue_root: &Path) -> Self {
        Self {
            dir: queue_root.join(STATE_DIR),
        }
    }

    fn path(&self, id: &str) -> Option<PathBuf> {
        is_valid_schedule_id(id).then(|| self.dir.join(format!("{id}.json")))
    }

    /// The state of a schedule; `None` when there is none (or it cannot be
    /// read: a scheduler then starts afresh, which only loses catch-up).
    pub fn read(&self, id: &str) -> Option<ScheduleState> {
        let bytes = read_file(&self.path(id)?).ok()?;
        if bytes.len() as u64 > MAX_STATE_BYTES {
            return None;
        }
        serde_json::from_slice::<ScheduleState>(&bytes)
            .ok()
            .filter(|s| s.schedule_id == id)
    }

    /// Durably replaces a schedule's state.
    pub fn write(&self, st: &ScheduleState) -> Result<(), fsqueue::durable::DurableError> {
        let Some(path) = self.path(&st.schedule_id) else {
            return Ok(());
        };
        fsqueue::durable::create_dir_all(&self.dir)?;
        let bytes = serde_json::to_vec_pretty(st).unwrap_or_default();
        fsqueue::durable::write_file(&path, &bytes)
    }
}

/// An instant as RFC 3339 with the zone's offset (`2026-03-29T03:00:00+02:00`).
fn in_zone(t: Timestamp, tz: &jiff::tz::TimeZone) -> String {
    t.to_zoned(tz.clone())
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

/// The report `orch schedules --json` prints and `GET /schedules` serves:
/// `{"dir", "dir_error", "schedules": [...]}`, one entry per file with its
/// id, whether it is enabled, expression, zone, catch-up policy, the next
/// `upcoming` fire times, the last slot fired with its job's queue state
/// and status, and the file's problems.
pub fn report(
    dir: &Path,
    listing: &Listing,
    states: &StateStore,
    queue: Option<&Queue>,
    store: &crate::ArtifactStore,
    now: Timestamp,
    upcoming: usize,
) -> Value {
    let entries: Vec<Value> = listing
        .files
        .iter()
        .map(|f| match &f.result {
            Ok(s) => {
                let next: Vec<String> = if s.enabled {
                    s.cron
                        .upcoming(now, &s.tz, upcoming)
                        .into_iter()
                        .map(|t| in_zone(t, &s.tz))
                        .collect()
                } else {
                    Vec::new()
                };
                json!({
                    "file": f.file,
                    "id": s.id,
                    "enabled": s.enabled,
                    "schedule": s.cron.as_str(),
                    "timezone": s.timezone,
                    "catchup": s.catchup.as_str(),
                    "project_id": s.payload.get("project_id").and_then(Value::as_str),
                    "next": next,
                    "last": last(states.read(&s.id), queue, store),
                    "errors": [],
                })
            }
            Err(v) => {
                // What can still be said of a bad file: its id, when it
                // has a readable one, and its last firing.
                let id = read_file(&dir.join(&f.file))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .and_then(|d| d.get("id").and_then(Value::as_str).map(str::to_owned))
                    .filter(|id| is_valid_schedule_id(id));
                let last_v = id
                    .as_deref()
                    .map_or(Value::Null, |id| last(states.read(id), queue, store));
                json!({
                    "file": f.file,
                    "id": id,
                    "enabled": false,
                    "schedule": null,
                    "timezone": null,
                    "catchup": null,
                    "project_id": null,
                    "next": [],
                    "last": last_v,
                    "errors": v.iter().map(|x| json!({"pointer": x.pointer, "message": x.message})).collect::<Vec<_>>(),
                })
            }
        })
        .collect();
    json!({
        "dir": dir.display().to_string(),
        "dir_error": listing.dir_error,
        "schedules": entries,
    })
}

/// The last firing of a schedule, with the job's current queue state and
/// status when it was enqueued.
fn last(st: Option<ScheduleState>, queue: Option<&Queue>, store: &crate::ArtifactStore) -> Value {
    let Some(st) = st else { return Value::Null };
    let Some(slot) = st.last_slot else {
        return Value::Null;
    };
    let job = st.last_job_id.as_deref().and_then(|j| JobId::parse(j).ok());
    let state = job.as_ref().and_then(|j| {
        queue
            .and_then(|q| q.find(j.as_str()).ok().flatten())
            .map(|l| l.state.dir_name())
    });
    let status = job.as_ref().and_then(|j| {
        store
            .job(j)
            .read_state()
            .ok()
            .flatten()
            .map(|s| s.status.as_str().to_owned())
    });
    json!({
        "slot": contracts::schedule::slot_text(slot),
        "job_id": st.last_job_id,
        "fired_at": st.last_fired_at.map(contracts::schedule::slot_text),
        "outcome": st.last_outcome,
        "error": st.last_error,
        "state": state,
        "status": status,
    })
}
