//! Reliability scenarios: the real binaries under crashes, faults, storms
//! and scale, each ending with the queue's invariants (`invariants.rs`).
//!
//! `cargo test -p cli --test reliability` runs the bounded form (CI). Long
//! forms are behind environment variables documented in
//! `docs/RELIABILITY.md`; each prints the seed it ran with.
// Tests start the real orch binaries as processes; the executor ban is for
// production code.
#![allow(clippy::disallowed_methods)]

mod crash;
mod invariants;
mod iofault;
mod power;
mod scale;
mod skew;
mod storm;
#[path = "../e2e/support.rs"]
#[allow(dead_code)]
mod support;

use std::collections::BTreeSet;

use support::*;

/// The checker itself: a clean run passes, and a planted violation of each
/// kind is reported under its name (so a scenario's "ok" means something).
#[test]
fn invariant_checker_sees_each_kind_of_violation() {
    let o = Orch::new();
    let mut ids = BTreeSet::new();
    for i in 0..3 {
        ids.insert(o.submit(&format!(r#"{{"goal":"checker {i}"}}"#)));
    }
    o.drain("rel-1");
    let expect = invariants::Expect {
        enqueued: &ids,
        acknowledged: &ids,
        all_terminal: true,
    };
    invariants::check(&o.queue(), &o.artifacts(), &expect).assert_ok("clean run");

    // U2 + U4: a copy of a done job back in running/.
    let done = o.names("done");
    std::fs::copy(
        o.state_dir("done").join(&done[0]),
        o.state_dir("running").join(&done[0]),
    )
    .unwrap();
    // U3: an unparsable name.
    std::fs::write(o.state_dir("pending").join("garbage"), b"{}").unwrap();
    // U5: an acknowledged id that exists nowhere.
    let mut acked = ids.clone();
    acked.insert("job-never-written".into());
    // U6: a done job whose result disagrees with its state.
    let id1 = ids.iter().nth(1).unwrap();
    let p = o.artifacts().join(id1).join("state.json");
    let mut st: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    st["status"] = "running".into();
    std::fs::write(&p, serde_json::to_vec(&st).unwrap()).unwrap();

    let expect = invariants::Expect {
        enqueued: &ids,
        acknowledged: &acked,
        all_terminal: true,
    };
    let r = invariants::check(&o.queue(), &o.artifacts(), &expect);
    for inv in ["U2", "U3", "U4", "U5", "U6"] {
        assert!(
            r.violations.iter().any(|v| v.starts_with(inv)),
            "{inv} not reported: {:?}",
            r.violations
        );
    }
}
