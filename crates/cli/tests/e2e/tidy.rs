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

/// Words in the docs that look like environment variables but are not
/// orch's: other programs' variables, kernel and library constants, HTTP
/// and systemd names. Anything else shaped like `NAME_WITH_UNDERSCORES`
/// must be in the registry (`crates/contracts/src/env.rs`).
const NOT_ORCH_KNOBS: &[&str] = &[
    // Read by other programs (the agent CLIs, the shell, systemd, Rust).
    "RUST_LOG",
    "RUST_BACKTRACE",
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    "CODEX_API_KEY",
    "GEMINI_API_KEY",
    "XDG_STATE_HOME",
    "CLAUDE_CONFIG_DIR",
    "CODEX_HOME",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_CACHE_HOME",
    "XDG_RUNTIME_DIR",
    "FAKE_AGENT_MODE",
    "FAKE_CALL_LOG",
    "UPDATE_DOCS",
    "CARGO_TARGET_DIR",
    "API_KEY",
    // Set by `orch dev` for the services it starts.
    "ORCH_DEV",
    // Read by the test suites and CI only (never by the binaries).
    "ORCH_TEST_STRICT",
    "ORCH_STORM_DELIVERIES",
    "ORCH_FENCE_TRIALS",
    "ORCH_FENCE_SEED",
    "ORCH_CRASH_ROUNDS",
    "ORCH_CRASH_SEED",
    "ORCH_POWER_SEEDS",
    "ORCH_POWER_SEED",
    "ORCH_STORM_RUNNERS",
    "ORCH_STORM_JOBS",
    "ORCH_STORM_KILL_MS",
    "ORCH_STORM_LIMIT_SEC",
    "ORCH_STORM_SEED",
    "ORCH_STOP_RUNNERS",
    "ORCH_STOP_JOBS",
    "ORCH_STOP_SEED",
    "ORCH_SCALE_JOBS",
    // Read by the test tools (proptest, libfaketime).
    "PROPTEST_CASES",
    "FAKE_UTIME",
    // Kernel, NFS and code identifiers named in docs/RELIABILITY.md.
    "UTIME_NOW",
    "SET_TO_SERVER_TIME",
    "STALE_TEMP_AGE",
    // Read by the deploy scripts (deploy/stack.sh, deploy/test-compose.sh,
    // deploy/docker/build-images.sh), documented in docs/DEPLOYMENT.md.
    "COMPOSE_TEST_TIMEOUT",
    "COMPOSE_TEST_SKIP_BUILD",
    "DEBIAN_MIRROR",
    "ORCH_ENV_FILE",
    "ORCH_HTTP_PORT",
    "ORCH_TAG",
    "ORCH_BIN_DIR",
    // Placeholders inside a variable's documented value format.
    "FAKE_START",
    "REAL_START",
];

/// Registry entries not read by the code on purpose, each with the work
/// that will read it (none today).
const NOT_YET_READ: &[&str] = &[];

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Maximal runs of `[A-Z0-9_]` that start with a letter, hold an
/// underscore and are at least four characters long.
fn knob_like(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let word = |c: u8| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_';
        // `<JOB_ID>` and `[JOB_ID]` are clap's value names, not knobs.
        let starts = b[i].is_ascii_uppercase()
            && (i == 0
                || !(b[i - 1].is_ascii_alphanumeric() || matches!(b[i - 1], b'_' | b'<' | b'[')));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < b.len() && word(b[j]) {
            j += 1;
        }
        // A run followed by a lowercase letter is part of a longer
        // identifier (`O_NOFOLLOWx`), not a name; one followed by `*` is a
        // family (`WEBHOOK_RATE_LIMIT_*`).
        // One followed by `.md` is a file name (`docs/ADD_AGENT.md`).
        let file_ext = b.get(j) == Some(&b'.') && b.get(j + 1).is_some_and(u8::is_ascii_lowercase);
        let clean_end = !file_ext && (j == b.len() || !(b[j].is_ascii_lowercase() || b[j] == b'*'));
        let w = &text[i..j];
        let w = w.trim_end_matches('_');
        if clean_end && w.len() >= 4 && w.contains('_') {
            out.insert(w.to_owned());
        }
        i = j.max(i + 1);
    }
    out
}

/// Kernel, libc, HTTP and systemd identifiers: prefixes that are never orch
/// knobs.
fn foreign(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "O_", "RENAME_", "IN_", "CAP_", "PR_", "CLONE_", "AT_", "S_I", "CLOCK_", "MS_", "X_",
        "FS_", "SQLITE_", "AF_", "RLIMIT_", "GIT_",
    ];
    NOT_ORCH_KNOBS.contains(&name)
        || PREFIXES
            .iter()
            .any(|p| name.starts_with(p) && contracts::env::lookup(name).is_none())
}

#[allow(clippy::disallowed_methods)] // runs the real binaries' --help
fn help_texts() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let help = |bin: &str, args: &[&str]| -> String {
        let o = std::process::Command::new(crate::support::bin(bin))
            .args(args)
            .env_clear()
            .output()
            .unwrap();
        assert!(o.status.success(), "{bin} {args:?}");
        String::from_utf8(o.stdout).unwrap()
    };
    for bin in ["orch-gateway", "orch-runner", "orch-scheduler"] {
        out.push((format!("{bin} --help"), help(bin, &["--help"])));
    }
    let top = help("orch", &["--help"]);
    let subs: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A wrapped description continues deeper indented.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|s| s != "help")
        .collect();
    assert!(subs.len() > 10, "{top}");
    for s in subs {
        out.push((format!("orch {s} --help"), help("orch", &[&s, "--help"])));
    }
    out.push(("orch --help".into(), top));
    out
}

#[test]
fn every_documented_knob_is_registered_and_every_registered_one_is_read() {
    let root = root();
    let mut texts: Vec<(String, String)> = Vec::new();
    let mut files = vec![root.join("README.md"), root.join("deploy/README.md")];
    for dir in ["docs", "deploy/systemd"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            files.push(e.unwrap().path());
        }
    }
    for f in files {
        if f.is_file() {
            let rel = f.strip_prefix(&root).unwrap().display().to_string();
            texts.push((rel, std::fs::read_to_string(&f).unwrap()));
        }
    }
    texts.extend(help_texts());
    let mut unknown = Vec::new();
    for (what, text) in &texts {
        for name in knob_like(text) {
            if contracts::env::lookup(&name).is_none() && !foreign(&name) {
                unknown.push(format!("{what}: {name}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "documented but not in the registry (crates/contracts/src/env.rs), so no code reads them:\n{}",
        unknown.join("\n")
    );

    // Every registered variable is read by some code: its name appears in a
    // source file besides the registry itself; a `Paths` field must then
    // be used outside the module that fills it.
    let mut sources: Vec<(std::path::PathBuf, String)> = Vec::new();
    for c in std::fs::read_dir(root.join("crates")).unwrap() {
        let src = c.unwrap().path().join("src");
        if src.is_dir() {
            for e in walk(&src) {
                if e.extension().is_some_and(|x| x == "rs") {
                    sources.push((e.clone(), std::fs::read_to_string(&e).unwrap()));
                }
            }
        }
    }
    let registry = root.join("crates/contracts/src/env.rs");
    let config = root.join("crates/contracts/src/config.rs");
    let mut unread = Vec::new();
    for var in contracts::env::ALL {
        if NOT_YET_READ.contains(&var.name) {
            continue;
        }
        let readers: Vec<&std::path::PathBuf> = sources
            .iter()
            .filter(|(p, t)| *p != registry && has_word(t, var.name))
            .map(|(p, _)| p)
            .collect();
        let read = match readers.as_slice() {
            [] => false,
            [only] if **only == config => {
                // `field: path(src, &env::NAME)?` → is `.field` used?
                let text = &sources.iter().find(|(p, _)| *p == config).unwrap().1;
                let field = text
                    .lines()
                    .find(|l| l.contains(&format!("&env::{}", var.name)) && l.contains(':'))
                    .and_then(|l| l.trim().split(':').next())
                    .map(|f| format!(".{}", f.trim()));
                match field {
                    Some(f) if !f.contains(' ') && !f.contains('(') => {
                        sources.iter().any(|(p, t)| *p != config && t.contains(&f))
                    }
                    // Read by a function of config.rs itself.
                    _ => true,
                }
            }
            _ => true,
        };
        if !read {
            unread.push(var.name);
        }
    }
    assert!(
        unread.is_empty(),
        "registered (and so documented in docs/CONFIGURATION.md) but never read: {unread:?}"
    );
}

/// Whether `name` occurs in `text` as a whole word.
fn has_word(text: &str, name: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(name).any(|(i, _)| {
        !text[..i].chars().next_back().is_some_and(ident)
            && !text[i + name.len()..].chars().next().is_some_and(ident)
    })
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn knob_like_words_are_found_whole() {
    let t = "Set `MAX_DAILY_API_CALLS=3` and O_NOFOLLOW; not Foo_BAR, README, RATE_*, ADD_AGENT.md, <JOB_ID> or X_Yz.";
    let got: Vec<String> = knob_like(t).into_iter().collect();
    assert_eq!(got, ["MAX_DAILY_API_CALLS", "O_NOFOLLOW"]);
    assert!(has_word("env.get_bool(&ev::SANDBOX)?", "SANDBOX"));
    assert!(!has_word("SANDBOX_WRAPPER", "SANDBOX"));
}
