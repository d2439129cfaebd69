//! Invariants of the workspace itself, checked under `cargo test`: the crate
//! dependency graph is the documented DAG (the four binary crates never
//! depend on each other; `contracts` and `fsqueue` depend on nothing of ours).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const OURS: [&str; 8] = [
    "contracts",
    "fsqueue",
    "artifacts",
    "workers",
    "runner",
    "gateway",
    "scheduler",
    "cli",
];

/// Names under `[dependencies]` of a Cargo.toml (dev-dependencies excluded:
/// tests may use anything).
fn deps(manifest: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_deps = false;
    for line in manifest.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_deps = l == "[dependencies]";
            continue;
        }
        if in_deps && !l.is_empty() && !l.starts_with('#') {
            let name = l.split(['.', '=', ' ']).next().unwrap_or("").trim();
            out.insert(name.to_owned());
        }
    }
    out
}

#[test]
fn crate_dependency_graph_is_the_documented_dag() {
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("contracts", &[][..]),
        ("fsqueue", &[][..]),
        ("artifacts", &["contracts", "fsqueue"][..]),
        ("workers", &["contracts", "artifacts"][..]),
        (
            "runner",
            &["contracts", "fsqueue", "artifacts", "workers"][..],
        ),
        ("gateway", &["contracts", "fsqueue", "artifacts"][..]),
        ("scheduler", &["contracts", "fsqueue", "artifacts"][..]),
        ("cli", &["contracts", "fsqueue", "artifacts"][..]),
    ]);
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(crates).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(manifest) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let ok = allowed.get(name.as_str()).unwrap_or_else(|| {
            panic!("crate {name} is not in the documented map (docs/ARCHITECTURE.md)")
        });
        for d in deps(&manifest) {
            if OURS.contains(&d.as_str()) {
                assert!(ok.contains(&d.as_str()), "{name} must not depend on {d}");
            }
        }
        seen.insert(name);
    }
    assert!(seen.len() >= 7, "crates found: {seen:?}");
}
