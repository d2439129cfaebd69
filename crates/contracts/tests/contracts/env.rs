//! The environment-variable registry: completeness against SPEC §12, the
//! typed readers and their errors, `.env` parsing and precedence, and the
//! generated `docs/CONFIGURATION.md`.

use crate::support::repo_root;
use contracts::env::{self, ConfigError, EnvSource, parse_dotenv};
use std::path::Path;

fn src(pairs: &[(&str, &str)]) -> EnvSource {
    EnvSource::from_pairs(pairs.iter().copied())
}

/// The generated table must match the committed file. With `UPDATE_DOCS=1`
/// the file is rewritten instead (the one file this crate writes outside
/// itself).
#[test]
fn configuration_doc_is_current() {
    let path = repo_root().join("docs/CONFIGURATION.md");
    let expected = env::markdown_table();
    if std::env::var("UPDATE_DOCS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().expect("docs dir")).expect("create docs/");
        std::fs::write(&path, &expected).expect("write docs/CONFIGURATION.md");
        return;
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "docs/CONFIGURATION.md is out of date; regenerate it with\n  \
         UPDATE_DOCS=1 cargo test -p contracts configuration_doc_is_current"
    );
}

#[test]
fn every_spec_variable_is_registered_and_documented() {
    let spec = [
        // MVP names.
        "WEBHOOK_TOKEN",
        "WEBHOOK_TOKENS",
        "WEBHOOK_RATE_LIMIT_WINDOW_SEC",
        "WEBHOOK_RATE_LIMIT_MAX_REQUESTS",
        "DEFAULT_ARTIFACT_HANDOFF",
        "MAX_WEBHOOK_BODY_BYTES",
        "QUEUE_ROOT",
        "ARTIFACTS_ROOT",
        "WORKSPACES_ROOT",
        "STATE_DB_PATH",
        "PROJECT_ALIASES",
        "RUNNER_MAX_IDLE_SEC",
        "ENABLE_REAL_CLI",
        "SANDBOX",
        "SANDBOX_WRAPPER",
        "SANDBOX_WRAPPER_ARGS",
        "SANDBOX_CLEAR_ENV",
        "ALLOWED_BINARIES",
        "MIN_BINARY_VERSIONS",
        "NETWORK_POLICY",
        "ENV_ALLOWLIST",
        "SENSITIVE_ENV_VARS",
        "MAX_INPUT_ARTIFACTS_FILES",
        "MAX_INPUT_ARTIFACT_CHARS",
        "MAX_INPUT_ARTIFACTS_CHARS",
        "MAX_SUBPROCESS_OUTPUT_CHARS",
        "MAX_DAILY_API_CALLS",
        "MAX_DAILY_COST_USD",
        "NON_GIT_WORKDIR_STATUS",
        "RETENTION_INTERVAL_SEC",
        "ARTIFACTS_TTL_SEC",
        "WORKSPACES_TTL_SEC",
        "LOG_LEVEL",
        "LOG_JSON",
        "RUNNER_POLL_INTERVAL_SEC",
        "RUNNER_RECLAIM_AFTER_SEC",
        // New names.
        "GATEWAY_BIND",
        "RUNNER_CONCURRENCY",
        "RUNNER_LEASE_SEC",
        "RUNNER_MAX_RECLAIMS",
        "RUNNER_MAX_GOTO",
        "RUNNER_SHUTDOWN_GRACE_SEC",
        "SIMULATION_STEP_MS",
        "SCHEDULES_DIR",
        "GITHUB_WEBHOOK_SECRET",
        "CALLBACK_SECRET",
        "CALLBACK_ALLOW_PRIVATE",
        "TRUSTED_PROXIES",
        "SECRETS_POLICY",
        "BUDGET_EXCEEDED_ACTION",
        "PROMPTS_DIR",
        "METRICS_DIR",
    ];
    for name in spec {
        let v = env::lookup(name).unwrap_or_else(|| panic!("{name} is not registered"));
        assert!(v.doc.len() > 20, "{name}: doc too short");
        assert!(!v.used_by.is_empty(), "{name}: used_by empty");
    }
    let defaults = [
        ("QUEUE_ROOT", "var/queue"),
        ("STATE_DB_PATH", "var/state.db"),
        ("RUNNER_CONCURRENCY", "2"),
        ("RUNNER_LEASE_SEC", "30"),
        ("RUNNER_MAX_RECLAIMS", "3"),
        ("RUNNER_MAX_GOTO", "5"),
        ("RUNNER_SHUTDOWN_GRACE_SEC", "30"),
        ("RUNNER_MAX_IDLE_SEC", "0"),
        ("GATEWAY_BIND", "127.0.0.1:8080"),
        ("WEBHOOK_RATE_LIMIT_WINDOW_SEC", "60"),
        ("WEBHOOK_RATE_LIMIT_MAX_REQUESTS", "30"),
        ("MAX_WEBHOOK_BODY_BYTES", "262144"),
        ("SANDBOX", "1"),
        ("ENABLE_REAL_CLI", "0"),
        ("NETWORK_POLICY", "deny"),
        ("MAX_INPUT_ARTIFACTS_FILES", "10"),
        ("MAX_INPUT_ARTIFACT_CHARS", "12000"),
        ("MAX_INPUT_ARTIFACTS_CHARS", "40000"),
        ("NON_GIT_WORKDIR_STATUS", "needs_human"),
        ("ARTIFACTS_TTL_SEC", "604800"),
        ("WORKSPACES_TTL_SEC", "172800"),
        ("RETENTION_INTERVAL_SEC", "300"),
        ("SECRETS_POLICY", "fail"),
        ("BUDGET_EXCEEDED_ACTION", "fail"),
        ("DEFAULT_ARTIFACT_HANDOFF", "manual"),
        ("PROMPTS_DIR", ""),
    ];
    for (name, default) in defaults {
        assert_eq!(
            env::lookup(name).map(|v| v.default),
            Some(default),
            "{name}"
        );
    }
    for secret in [
        "WEBHOOK_TOKEN",
        "WEBHOOK_TOKENS",
        "GITHUB_WEBHOOK_SECRET",
        "CALLBACK_SECRET",
    ] {
        assert!(
            env::lookup(secret).is_some_and(|v| v.secret),
            "{secret} not marked secret"
        );
    }
    for superseded in ["RUNNER_POLL_INTERVAL_SEC", "RUNNER_RECLAIM_AFTER_SEC"] {
        assert!(env::lookup(superseded).is_some_and(|v| v.doc.contains("superseded")));
    }
}

#[test]
fn markdown_table_lists_every_variable_once() {
    let md = env::markdown_table();
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| `")).collect();
    assert_eq!(rows.len(), env::ALL.len());
    for v in env::ALL {
        assert_eq!(
            rows.iter()
                .filter(|r| r.starts_with(&format!("| `{}` |", v.name)))
                .count(),
            1
        );
    }
    // Every row has exactly four cells (no unescaped '|' in a description).
    for r in rows {
        assert_eq!(r.matches(" | ").count(), 3, "{r}");
    }
}

#[test]
fn booleans() {
    for (raw, want) in [
        ("1", true),
        ("true", true),
        ("TRUE", true),
        ("Yes", true),
        ("on", true),
        (" on ", true),
        ("0", false),
        ("false", false),
        ("No", false),
        ("OFF", false),
    ] {
        assert_eq!(
            src(&[("SANDBOX", raw)]).get_bool(&env::SANDBOX).ok(),
            Some(want),
            "{raw}"
        );
    }
    for bad in ["2", "y", "enabled", "truee", "-1"] {
        let e = src(&[("SANDBOX", bad)])
            .get_bool(&env::SANDBOX)
            .expect_err(bad)
            .to_string();
        assert!(
            e.contains("SANDBOX") && e.contains(bad) && e.contains("1/0"),
            "{e}"
        );
    }
    // Unset and empty mean the documented default.
    assert!(src(&[]).get_bool(&env::SANDBOX).expect("default"));
    assert!(
        src(&[("SANDBOX", "")])
            .get_bool(&env::SANDBOX)
            .expect("empty = default")
    );
}

#[test]
fn numbers_are_checked_against_their_range() {
    let v = &env::RUNNER_CONCURRENCY;
    assert_eq!(
        src(&[("RUNNER_CONCURRENCY", "8")])
            .get_u64_range(v, 1, 64)
            .ok(),
        Some(8)
    );
    assert_eq!(src(&[]).get_u64_range(v, 1, 64).ok(), Some(2));
    for bad in [
        "0",
        "65",
        "-1",
        "1.5",
        "abc",
        "99999999999999999999999",
        "8 jobs",
        "0x10",
    ] {
        let e = src(&[("RUNNER_CONCURRENCY", bad)])
            .get_u64_range(v, 1, 64)
            .expect_err(bad)
            .to_string();
        assert!(
            e.contains("RUNNER_CONCURRENCY") && e.contains("from 1 to 64"),
            "{e}"
        );
    }
    let cost = &env::MAX_DAILY_COST_USD;
    assert_eq!(
        src(&[("MAX_DAILY_COST_USD", "2.5")])
            .get_f64_range(cost, 0.0, 1e6)
            .ok(),
        Some(2.5)
    );
    for bad in ["NaN", "inf", "-0.5", "1e7", "cheap"] {
        src(&[("MAX_DAILY_COST_USD", bad)])
            .get_f64_range(cost, 0.0, 1e6)
            .expect_err(bad);
    }
}

#[test]
fn enums_are_case_insensitive_and_canonical() {
    let v = &env::BUDGET_EXCEEDED_ACTION;
    assert_eq!(
        src(&[("BUDGET_EXCEEDED_ACTION", "DEFER")])
            .get_enum(v, &["fail", "defer"])
            .ok(),
        Some("defer")
    );
    assert_eq!(src(&[]).get_enum(v, &["fail", "defer"]).ok(), Some("fail"));
    let e = src(&[("BUDGET_EXCEEDED_ACTION", "explode")])
        .get_enum(v, &["fail", "defer"])
        .expect_err("bad")
        .to_string();
    assert_eq!(
        e,
        "BUDGET_EXCEEDED_ACTION=\"explode\" is invalid: expected one of fail, defer"
    );
}

#[test]
fn errors_truncate_values_and_hide_secrets() {
    let long = "9".repeat(5000);
    let e = src(&[("RUNNER_LEASE_SEC", &long)])
        .get_u64_range(&env::RUNNER_LEASE_SEC, 1, 3600)
        .expect_err("bad")
        .to_string();
    assert!(e.len() < 200, "{e}");
    let token = "super-secret-token-value";
    let e = src(&[("WEBHOOK_TOKEN", token)])
        .get_bool(&env::WEBHOOK_TOKEN)
        .expect_err("not a bool")
        .to_string();
    assert!(e.contains("WEBHOOK_TOKEN") && !e.contains(token), "{e}");
    // A variable without default and without value is missing, by name.
    let e = src(&[])
        .get_u64_range(&env::RUNNER_POLL_INTERVAL_SEC, 0, 10)
        .expect_err("missing");
    assert!(
        matches!(
            e,
            ConfigError::Missing {
                var: "RUNNER_POLL_INTERVAL_SEC",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(src(&[]).get_str(&env::PROMPTS_DIR).ok(), Some(None));
}

#[test]
fn lists_split_on_commas() {
    let s = src(&[("ENV_ALLOWLIST", " OPENAI_API_KEY , ,ANTHROPIC_API_KEY,")]);
    assert_eq!(
        s.get_list(&env::ENV_ALLOWLIST).expect("list"),
        ["OPENAI_API_KEY", "ANTHROPIC_API_KEY"]
    );
    assert!(
        src(&[])
            .get_list(&env::ENV_ALLOWLIST)
            .expect("empty")
            .is_empty()
    );
    assert_eq!(
        src(&[])
            .get_list(&env::ALLOWED_BINARIES)
            .expect("default")
            .len(),
        4
    );
}

#[test]
fn dotenv_syntax() {
    let text = r#"
# a comment
QUEUE_ROOT=/srv/queue
export LOG_LEVEL = debug
SANDBOX_WRAPPER_ARGS='--a "b" #not-a-comment'
WEBHOOK_TOKEN="quoted \"value\"\n" # trailing comment
PROMPTS_DIR=/etc/orch/prompts # comment
EMPTY=
HASH=a#b
"#;
    let pairs = parse_dotenv(text, Path::new(".env")).expect("parses");
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("QUEUE_ROOT"), Some("/srv/queue"));
    assert_eq!(get("LOG_LEVEL"), Some("debug"));
    assert_eq!(
        get("SANDBOX_WRAPPER_ARGS"),
        Some("--a \"b\" #not-a-comment")
    );
    assert_eq!(get("WEBHOOK_TOKEN"), Some("quoted \"value\"\n"));
    assert_eq!(get("PROMPTS_DIR"), Some("/etc/orch/prompts"));
    assert_eq!(get("EMPTY"), Some(""));
    assert_eq!(get("HASH"), Some("a#b"));
}

#[test]
fn malformed_dotenv_lines_name_file_and_line() {
    for (text, line) in [
        ("A=1\nJUST_A_WORD\n", 2),
        ("A=1\n\n1BAD=x\n", 3),
        ("BAD-NAME=x", 1),
        ("A='unterminated\nB=2", 1),
        ("A=\"x\" junk", 1),
        ("=value", 1),
    ] {
        let e = parse_dotenv(text, Path::new("/etc/orch/.env")).expect_err(text);
        assert!(
            matches!(e, ConfigError::DotEnvSyntax { line: l, .. } if l == line),
            "{text:?}: {e}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("/etc/orch/.env:{line}: ")),
            "{e}"
        );
    }
}

#[test]
fn dotenv_never_overrides_the_real_environment() {
    let real = src(&[("QUEUE_ROOT", "/real")]);
    let merged = real
        .with_dotenv_str(
            "QUEUE_ROOT=/from-file\nARTIFACTS_ROOT=/arts\n",
            Path::new(".env"),
        )
        .expect("parses");
    assert_eq!(merged.raw("QUEUE_ROOT"), Some("/real"));
    assert_eq!(merged.raw("ARTIFACTS_ROOT"), Some("/arts"));
}

#[test]
fn dotenv_files_missing_present_and_broken() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = src(&[])
        .with_dotenv_file(&dir.path().join(".env"))
        .expect("missing is fine");
    assert_eq!(missing.raw("QUEUE_ROOT"), None);

    let file = dir.path().join(".env");
    std::fs::write(&file, "RUNNER_CONCURRENCY=4\n").expect("write");
    let s = src(&[]).with_dotenv_file(&file).expect("reads");
    assert_eq!(
        s.get_u64_range(&env::RUNNER_CONCURRENCY, 1, 64).ok(),
        Some(4)
    );

    std::fs::write(&file, b"A=1\nB=\xff\n").expect("write");
    let e = src(&[]).with_dotenv_file(&file).expect_err("not UTF-8");
    assert!(
        matches!(e, ConfigError::DotEnvSyntax { line: 2, .. }),
        "{e}"
    );

    let e = src(&[])
        .with_dotenv_file(dir.path())
        .expect_err("a directory");
    assert!(matches!(e, ConfigError::DotEnvRead { .. }), "{e}");
    assert!(e.to_string().contains(&dir.path().display().to_string()));
}
