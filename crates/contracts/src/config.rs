//! Configuration shared by every orch process, resolved once at start-up
//! from an [`EnvSource`]: the data directories, project aliases, and the
//! logging set-up. Binaries add their own settings on top; this module is
//! where anything two binaries both need lives.

use crate::env::{self, ConfigError, EnvSource, EnvVar};
use crate::job::ArtifactHandoff;
use std::path::PathBuf;

/// Where orch keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub queue_root: PathBuf,
    pub artifacts_root: PathBuf,
    pub workspaces_root: PathBuf,
    pub metrics_dir: PathBuf,
    pub state_db: PathBuf,
    pub schedules_dir: PathBuf,
    /// `PROJECT_ALIASES`: project id → absolute source directory.
    pub project_aliases: Vec<(String, PathBuf)>,
}

impl Paths {
    pub fn resolve(src: &EnvSource) -> Result<Self, ConfigError> {
        Ok(Self {
            queue_root: path(src, &env::QUEUE_ROOT)?,
            artifacts_root: path(src, &env::ARTIFACTS_ROOT)?,
            workspaces_root: path(src, &env::WORKSPACES_ROOT)?,
            metrics_dir: path(src, &env::METRICS_DIR)?,
            state_db: path(src, &env::STATE_DB_PATH)?,
            schedules_dir: path(src, &env::SCHEDULES_DIR)?,
            project_aliases: project_aliases(src)?,
        })
    }
}

fn invalid(var: &EnvVar, value: &str, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        var: var.name,
        value: format!("{:?}", value.chars().take(40).collect::<String>()),
        expected: expected.to_owned(),
    }
}

/// A path variable with a default.
fn path(src: &EnvSource, var: &EnvVar) -> Result<PathBuf, ConfigError> {
    path_opt(src, var)?.ok_or_else(|| ConfigError::Missing {
        var: var.name,
        expected: "a directory path".into(),
    })
}

/// An optional path variable, made absolute against the current directory
/// at start-up: a relative path handed to another process (a sandbox's
/// bind mount, a child with another working directory) would name
/// something else. NUL bytes cannot occur (env values are C strings);
/// anything else is a path the OS will judge on use.
pub fn path_opt(src: &EnvSource, var: &EnvVar) -> Result<Option<PathBuf>, ConfigError> {
    match src.get_str(var)? {
        None => Ok(None),
        Some(p) if p.is_empty() => Ok(None),
        Some(p) => std::path::absolute(&p)
            .map(Some)
            .map_err(|e| invalid(var, &p, &format!("a path that can be made absolute ({e})"))),
    }
}

/// `PROJECT_ALIASES=id=/abs/path,id2=/abs/path2`.
pub fn project_aliases(src: &EnvSource) -> Result<Vec<(String, PathBuf)>, ConfigError> {
    const EXPECTED: &str = "comma-separated id=/absolute/path pairs with ids of [A-Za-z0-9._-]";
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for item in src.get_list(&env::PROJECT_ALIASES)? {
        let Some((id, p)) = item.split_once('=') else {
            return Err(invalid(&env::PROJECT_ALIASES, &item, EXPECTED));
        };
        let (id, p) = (id.trim(), PathBuf::from(p.trim()));
        if !crate::validate::is_valid_project_id(id) || !p.is_absolute() {
            return Err(invalid(&env::PROJECT_ALIASES, &item, EXPECTED));
        }
        if out.iter().any(|(o, _)| o == id) {
            return Err(invalid(
                &env::PROJECT_ALIASES,
                &item,
                "each project id once",
            ));
        }
        out.push((id.to_owned(), p));
    }
    Ok(out)
}

/// The agent names jobs may use: the built-in ones plus every `name` in the
/// `AGENTS_CONFIG` file (a JSON array of agents, or `{"agents": [...]}`).
/// Only the names are read here, so every entry point can validate jobs
/// against them; the runner validates the full definitions at start-up.
pub fn known_agents(src: &EnvSource) -> Result<Vec<String>, ConfigError> {
    let mut names: Vec<String> = crate::BUILTIN_AGENTS
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let Some(path) = path_opt(src, &env::AGENTS_CONFIG)? else {
        return Ok(names);
    };
    let bad = |why: String| ConfigError::Invalid {
        var: env::AGENTS_CONFIG.name,
        value: format!("{:?}", path.display().to_string()),
        expected: why,
    };
    let bytes = std::fs::read(&path).map_err(|e| bad(format!("a readable JSON file ({e})")))?;
    let doc: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("a JSON document ({e})")))?;
    let list = match &doc {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(o) => match o.get("agents") {
            Some(serde_json::Value::Array(a)) => a,
            _ => return Err(bad("an object with an \"agents\" array".into())),
        },
        _ => return Err(bad("an array of agents".into())),
    };
    for a in list {
        match a.get("name").and_then(serde_json::Value::as_str) {
            Some(n) if crate::validate::is_valid_agent_name(n) => {
                if !names.iter().any(|x| x == n) {
                    names.push(n.to_owned());
                }
            }
            _ => return Err(bad("every agent to have a valid \"name\"".into())),
        }
    }
    Ok(names)
}

/// `DEFAULT_ARTIFACT_HANDOFF`.
pub fn artifact_handoff(src: &EnvSource) -> Result<Option<ArtifactHandoff>, ConfigError> {
    let v = src.get_enum(
        &env::DEFAULT_ARTIFACT_HANDOFF,
        &["manual", "patch_first", "workspace_first"],
    )?;
    Ok(ArtifactHandoff::parse(v))
}

/// Checks every registered variable that is set against the type its
/// documented default implies (whole numbers, booleans), plus the
/// structured ones. Used by `orch doctor`; each binary still validates what
/// it reads at start-up.
pub fn check_all(src: &EnvSource) -> Result<(), Vec<ConfigError>> {
    let mut errs = Vec::new();
    for var in env::ALL {
        if src.raw(var.name).is_none_or(|v| v.trim().is_empty()) {
            continue;
        }
        let r = match var.default {
            "0" | "1" if is_flag(var) => src.get_bool(var).map(drop),
            _ if is_amount(var) => src.get_f64_range(var, 0.0, f64::MAX).map(drop),
            d if !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) => {
                src.get_u64_range(var, 0, u64::MAX).map(drop)
            }
            _ => src.get_str(var).map(drop),
        };
        if let Err(e) = r {
            errs.push(e);
        }
    }
    if let Err(e) = Paths::resolve(src) {
        errs.push(e);
    }
    if let Err(e) = artifact_handoff(src) {
        errs.push(e);
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

/// Amounts in USD (fractions allowed) among the variables whose default
/// looks like a whole number.
fn is_amount(var: &EnvVar) -> bool {
    matches!(var.name, "MAX_DAILY_COST_USD" | "BUDGET_ESTIMATE_USD")
}

/// Boolean switches among the variables whose default is 0 or 1.
fn is_flag(var: &EnvVar) -> bool {
    matches!(
        var.name,
        "ENABLE_REAL_CLI" | "SANDBOX" | "SANDBOX_CLEAR_ENV" | "CALLBACK_ALLOW_PRIVATE" | "LOG_JSON"
    )
}

/// Installs the process's `tracing` subscriber on stderr: `LOG_LEVEL`,
/// raised one step per `-v`, overridden by `RUST_LOG` (full filter syntax);
/// JSON lines when `LOG_JSON=1`. Invalid values are errors naming the
/// variable, like every other setting.
pub fn init_logging(src: &EnvSource, verbose: u8) -> Result<(), ConfigError> {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
    let level = src.get_enum(&env::LOG_LEVEL, &LEVELS)?;
    let at = LEVELS.iter().position(|l| *l == level).unwrap_or(2);
    let level = LEVELS[(at + verbose as usize).min(LEVELS.len() - 1)];
    let json = src.get_bool(&env::LOG_JSON)?;
    let filter = match src.raw("RUST_LOG").filter(|v| !v.trim().is_empty()) {
        Some(f) => EnvFilter::try_new(f).map_err(|_| ConfigError::Invalid {
            var: "RUST_LOG",
            value: format!("{:?}", f.chars().take(40).collect::<String>()),
            expected: "a tracing filter such as info,runner=debug".into(),
        })?,
        None => EnvFilter::new(level),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // A second call (tests running several services in one process) keeps
    // the first subscriber.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    Ok(())
}

/// Prints `<program>: error: <msg>` on stderr and returns `code` as the
/// process exit code (2 for configuration, 1 for operation failures).
pub fn exit_error(program: &str, msg: &dyn std::fmt::Display, code: u8) -> std::process::ExitCode {
    eprintln!("{program}: error: {msg}");
    std::process::ExitCode::from(code)
}

/// `FSYNC_MODE`: `true` for one fsync per file and directory, `false` for
/// group-committed `syncfs` barriers (applied by each binary with
/// `fsqueue::commit::set_sync_mode`).
pub fn fsync_per_file(src: &EnvSource) -> Result<bool, ConfigError> {
    Ok(src.get_enum(&env::FSYNC_MODE, &["syncfs", "file"])? == "file")
}

/// The start of every orch service: the environment (merged with `.env`),
/// logging, and the check of `FSYNC_MODE`. A problem with any is printed
/// and becomes exit code 2.
pub fn start(program: &str, verbose: u8) -> Result<EnvSource, std::process::ExitCode> {
    let src = EnvSource::load().map_err(|e| exit_error(program, &e, 2))?;
    init_logging(&src, verbose).map_err(|e| exit_error(program, &e, 2))?;
    fsync_per_file(&src).map_err(|e| exit_error(program, &e, 2))?;
    Ok(src)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(pairs: &[(&str, &str)]) -> EnvSource {
        EnvSource::from_pairs(pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())))
    }

    #[test]
    fn defaults_and_aliases() {
        let p = Paths::resolve(&src(&[])).unwrap();
        // Every root is absolute, relative defaults against the current
        // directory (a relative WORKSPACES_ROOT broke every sandboxed step).
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(p.queue_root, cwd.join("var/queue"));
        assert_eq!(p.workspaces_root, cwd.join("workspaces"));
        for root in [
            &p.artifacts_root,
            &p.metrics_dir,
            &p.state_db,
            &p.schedules_dir,
        ] {
            assert!(root.is_absolute(), "{}", root.display());
        }
        assert!(p.project_aliases.is_empty());
        let p = Paths::resolve(&src(&[("PROJECT_ALIASES", "web=/srv/web, api=/srv/api")])).unwrap();
        assert_eq!(p.project_aliases.len(), 2);
        for bad in ["web", "web=relative/path", "../x=/srv", "a=/x,a=/y"] {
            let e = Paths::resolve(&src(&[("PROJECT_ALIASES", bad)])).unwrap_err();
            assert_eq!(e.subject(), "PROJECT_ALIASES", "{bad}");
        }
    }

    #[test]
    fn known_agents_come_from_agents_config_and_bad_files_are_named() {
        let d = std::env::temp_dir().join(format!("orch-agents-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let file = d.join("agents.json");
        let with = |text: &str| {
            std::fs::write(&file, text).unwrap();
            known_agents(&src(&[("AGENTS_CONFIG", file.to_str().unwrap())]))
        };
        assert_eq!(
            known_agents(&src(&[])).unwrap(),
            ["opencode", "codex", "claude"]
        );
        let names = with(r#"{"agents": [{"name": "gemini"}, {"name": "claude"}]}"#).unwrap();
        assert_eq!(names, ["opencode", "codex", "claude", "gemini"]);
        assert_eq!(
            with(r#"[{"name": "kimi"}]"#).unwrap().last().unwrap(),
            "kimi"
        );
        for bad in [
            "",
            "{",
            "42",
            r#"{"agents": 1}"#,
            r#"[{"nom": "x"}]"#,
            r#"[{"name": "../evil"}]"#,
            "\u{ff}",
        ] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.subject(), "AGENTS_CONFIG", "{bad:?}: {e}");
        }
        let missing = src(&[("AGENTS_CONFIG", "/nonexistent/agents.json")]);
        assert_eq!(
            known_agents(&missing).unwrap_err().subject(),
            "AGENTS_CONFIG"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn check_all_names_the_variable() {
        assert!(check_all(&src(&[("RUNNER_LEASE_SEC", "30")])).is_ok());
        // A fractional amount is a valid cost limit (doctor once called it
        // an invalid whole number).
        assert!(check_all(&src(&[("MAX_DAILY_COST_USD", "2.5")])).is_ok());
        let errs =
            check_all(&src(&[("RUNNER_LEASE_SEC", "soon"), ("SANDBOX", "maybe")])).unwrap_err();
        let subjects: Vec<String> = errs.iter().map(|e| e.subject()).collect();
        assert!(
            subjects.contains(&"RUNNER_LEASE_SEC".to_owned()),
            "{subjects:?}"
        );
        assert!(subjects.contains(&"SANDBOX".to_owned()), "{subjects:?}");
    }
}
