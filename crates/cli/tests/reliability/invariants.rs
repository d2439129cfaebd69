//! The queue's promises, checked over a quiescent installation (no process
//! running): every scenario of this target ends with [`check`].
//!
//! - U1 every enqueued job id ends in exactly one terminal directory;
//! - U2 no id sits in two state directories;
//! - U3 every queue file parses, or sits in `corrupt/` with a reason;
//! - U4 `running/`, temp files and control requests are empty when idle;
//! - U5 every acknowledged enqueue survives (a subset of U1 for the ids a
//!   caller was told were accepted);
//! - U6 a finished job's artifacts agree: queue state = `state.json` =
//!   `result.json`, and no step result still says `running`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use fsqueue::name::Entry;

use crate::support::Orch;

pub const STATES: [&str; 5] = ["pending", "awaiting_approval", "running", "done", "failed"];
const TMP_PREFIX: &str = ".orch-tmp-";

/// What a check found: every violation, named by the invariant it breaks.
#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<String>,
    /// Job ids per queue state, as found.
    pub by_state: BTreeMap<&'static str, BTreeSet<String>>,
}

impl Report {
    fn bad(&mut self, inv: &str, msg: String) {
        self.violations.push(format!("{inv}: {msg}"));
    }

    pub fn terminal(&self) -> BTreeSet<String> {
        let mut s = self.by_state.get("done").cloned().unwrap_or_default();
        s.extend(self.by_state.get("failed").cloned().unwrap_or_default());
        s
    }

    /// Panics with every violation (capped) when there are any.
    pub fn assert_ok(&self, what: &str) {
        if !self.violations.is_empty() {
            let shown: Vec<&String> = self.violations.iter().take(40).collect();
            panic!(
                "{what}: {} invariant violation(s):\n  {}",
                self.violations.len(),
                shown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n  ")
            );
        }
    }
}

/// What the scenario expects of the installation it checks.
pub struct Expect<'a> {
    /// Ids the scenario enqueued, whether or not it saw the acknowledgement
    /// (U1: each is terminal when `all_terminal`).
    pub enqueued: &'a BTreeSet<String>,
    /// Ids whose enqueue was acknowledged (U5: each exists somewhere).
    pub acknowledged: &'a BTreeSet<String>,
    /// Everything is idle and every job was allowed to finish.
    pub all_terminal: bool,
}

/// Checks U1–U6 over `queue` and `artifacts`.
pub fn check(queue: &Path, artifacts: &Path, expect: &Expect<'_>) -> Report {
    let mut r = Report::default();
    let mut seen: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for st in STATES {
        let ids = r.by_state.entry(st).or_default();
        let dir = queue.join(st);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut bad = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) {
                bad.push(("U4", format!("temp file {st}/{name}")));
                continue;
            }
            match Entry::parse(&name) {
                Some(entry) => {
                    if let Err(err) = serde_json::from_slice::<serde_json::Value>(
                        &std::fs::read(e.path()).unwrap_or_default(),
                    ) {
                        bad.push(("U3", format!("{st}/{name} does not parse: {err}")));
                    }
                    ids.insert(entry.job_id.clone());
                    seen.entry(entry.job_id).or_default().push(st);
                }
                None => bad.push(("U3", format!("unparsable queue name {st}/{name}"))),
            }
        }
        for (inv, msg) in bad {
            r.bad(inv, msg);
        }
    }
    // U2
    for (id, states) in &seen {
        if states.len() > 1 {
            r.bad("U2", format!("{id} in {states:?}"));
        }
    }
    // U3: corrupt files carry a reason.
    if let Ok(rd) = std::fs::read_dir(queue.join("corrupt")) {
        let names: BTreeSet<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for n in &names {
            if !n.ends_with(".reason") && !names.contains(&format!("{n}.reason")) {
                r.bad("U3", format!("corrupt/{n} has no .reason"));
            }
        }
    }
    if expect.all_terminal {
        // U1
        let terminal = r.terminal();
        for id in expect.enqueued {
            if !terminal.contains(id) {
                let where_ = seen
                    .get(id)
                    .map(|v| format!("{v:?}"))
                    .unwrap_or("nowhere".into());
                r.bad("U1", format!("{id} not terminal (found {where_})"));
            }
        }
        // U4
        for st in ["running"] {
            if let Some(ids) = r.by_state.get(st).filter(|s| !s.is_empty()) {
                let ids: Vec<_> = ids.iter().take(5).cloned().collect();
                r.bad("U4", format!("{st}/ not empty when idle: {ids:?}"));
            }
        }
        for f in files_under(&queue.join("control")) {
            r.bad("U4", format!("control request left: {}", f.display()));
        }
        for f in files_under(queue).into_iter().chain(files_under(artifacts)) {
            let n = f.file_name().map(|n| n.to_string_lossy().into_owned());
            if n.as_deref().is_some_and(|n| n.starts_with(TMP_PREFIX)) {
                r.bad("U4", format!("temp file left: {}", f.display()));
            }
        }
    }
    // U5
    for id in expect.acknowledged {
        if !seen.contains_key(id) {
            r.bad("U5", format!("acknowledged {id} is in no queue state"));
        }
    }
    // U6
    for st in ["done", "failed"] {
        let ids = r.by_state.get(st).cloned().unwrap_or_default();
        for id in ids {
            check_artifacts(&mut r, artifacts, st, &id);
        }
    }
    r
}

fn read_json(p: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

fn check_artifacts(r: &mut Report, artifacts: &Path, st: &str, id: &str) {
    let dir = artifacts.join(id);
    let result = read_json(&dir.join("result.json"));
    let state = read_json(&dir.join("state.json"));
    let (Some(result), Some(state)) = (result, state) else {
        // A job rejected or cancelled before it ever ran has no tree; one
        // that ran has both files.
        if dir.join("state.json").exists() || dir.join("result.json").exists() {
            r.bad("U6", format!("{id}: result.json or state.json unreadable"));
        }
        return;
    };
    let rs = result["status"].as_str().unwrap_or("?");
    let ss = state["status"].as_str().unwrap_or("?");
    if rs != ss {
        r.bad("U6", format!("{id} ({st}): result {rs} != state {ss}"));
    }
    if rs == "running" {
        r.bad("U6", format!("{id} is {st} but its result says running"));
    }
    if (st == "done") != (rs == "success") {
        r.bad("U6", format!("{id} is {st} but its result says {rs}"));
    }
    let steps = state["steps"].as_object().cloned().unwrap_or_default();
    for (sid, s) in steps {
        let p = dir.join("steps").join(&sid).join("result.json");
        if let Some(sr) = read_json(&p) {
            let srs = sr["status"].as_str().unwrap_or("?");
            if srs == "running" {
                r.bad("U6", format!("{id}/steps/{sid} result still running"));
            }
            let sss = s["status"].as_str().unwrap_or("?");
            if sss != srs {
                r.bad(
                    "U6",
                    format!("{id}/steps/{sid}: result {srs} != state {sss}"),
                );
            }
        }
    }
}

/// Every file and directory under `root` (none when it does not exist),
/// links not followed.
pub fn entries_under(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .flatten()
        .map(walkdir::DirEntry::into_path)
        .collect()
}

/// Every file (not directory) under `root`.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter(|e| !e.file_type().is_dir())
        .map(walkdir::DirEntry::into_path)
        .collect()
}

/// Every job id found in any queue state of `o`.
pub fn all_ids(o: &Orch) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for st in STATES {
        for n in o.names(st) {
            if let Some(e) = Entry::parse(&n) {
                ids.insert(e.job_id);
            }
        }
    }
    ids
}

/// U1–U6 over an idle installation whose jobs all finished: every id in a
/// queue state, and every acknowledged one, is terminal once.
pub fn check_finished(o: &Orch, acked: &BTreeSet<String>, what: &str) {
    let mut enqueued = all_ids(o);
    enqueued.extend(acked.iter().cloned());
    let expect = Expect {
        enqueued: &enqueued,
        acknowledged: acked,
        all_terminal: true,
    };
    check(&o.queue(), &o.artifacts(), &expect).assert_ok(what);
}
/// The writer's pid in a temp file's name (`.orch-tmp-{pid}-{n}-{stem}`).
pub fn temp_writer_pid(name: &str) -> Option<u32> {
    name.strip_prefix(TMP_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// [`check`] after a scenario that SIGKILLed processes: a temp file whose
/// writer is one of `killed` is the debris of a write cut short (never part
/// of a job's state; housekeeping removes it after
/// `fsqueue::recover::STALE_TEMP_AGE`), so it is counted in `debris`, not a
/// U4 violation. A temp file of any other process still is one.
pub fn check_after_kills(
    queue: &Path,
    artifacts: &Path,
    expect: &Expect<'_>,
    killed: &BTreeSet<u32>,
) -> (Report, usize) {
    let mut r = check(queue, artifacts, expect);
    let before = r.violations.len();
    // A temp file is reported under U4 (in a state or artifact directory)
    // or U3 (in `corrupt/`, where it has no `.reason`: it is an unfinished
    // quarantine write, not a quarantined file).
    r.violations.retain(|v| {
        let name = if let Some(rest) = v.strip_prefix("U4: temp file") {
            rest.rsplit('/').next().unwrap_or_default()
        } else if let Some(rest) = v.strip_prefix("U3: corrupt/") {
            rest.strip_suffix(" has no .reason").unwrap_or_default()
        } else {
            return true;
        };
        !temp_writer_pid(name).is_some_and(|p| killed.contains(&p))
    });
    let debris = before - r.violations.len();
    (r, debris)
}
