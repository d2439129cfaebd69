//! `git` run by orch on the host against a workspace an agent wrote.
//!
//! A workspace is agent data. If git ran there as usual it would read the
//! repository's `.git/config` and `.gitattributes` and could run what they
//! name: a filter driver (`filter.<x>.clean`), `core.fsmonitor`, hooks,
//! `core.sshCommand`, `diff.external`, `core.pager`, an `include.path` that
//! pulls in any of those — on the host, with the runner's privileges. So
//! host-side git here never reads configuration an agent could have written:
//!
//! 1. `GIT_DIR` is a fresh, orch-owned repository skeleton in a private
//!    temporary directory outside the workspace (mode 0700, removed after
//!    use); `GIT_WORK_TREE` is the workspace. The workspace's own `.git` is
//!    never opened by git.
//! 2. `GIT_CONFIG_NOSYSTEM=1`, `GIT_CONFIG_GLOBAL=/dev/null`, `HOME` = the
//!    private directory: no system, global or XDG config; the private
//!    repository's config sets `core.fsmonitor=false`,
//!    `core.hooksPath=/dev/null` and `core.attributesFile=/dev/null`.
//! 3. Its `info/attributes` (which takes precedence over every
//!    `.gitattributes` in the tree) unsets `filter`, `text`, `eol`, `ident`,
//!    `diff`, `merge` and `working-tree-encoding` for every path, so no
//!    attribute an agent wrote converts content or names a driver (and no
//!    driver is configured anyway).
//! 4. The patch is a private copy in the same directory, never a file in an
//!    agent-writable tree.
//!
//! [`check_workspace`] additionally reports (for the step's result and
//! logs) git configuration an agent planted that would have run a command,
//! so an attempted escape is visible even though it is inert.

use crate::confine::Violation;
use crate::exec::{ExecError, Output, find_on_path, run_sync};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A private, orch-owned temporary directory (mode 0700), removed on drop.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    pub fn new(prefix: &str) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        static N: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        for _ in 0..100 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let path = base.join(format!(
                "{prefix}-{}-{}-{nanos}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            // `create`, not `recursive`: an existing name (someone else's
            // directory or link) is an error, never reused.
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other(
            "cannot create a private temporary directory",
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

const PRIVATE_CONFIG: &str = "[core]\n\trepositoryformatversion = 0\n\tbare = false\n\
    \tfsmonitor = false\n\thooksPath = /dev/null\n\tattributesFile = /dev/null\n";
const PRIVATE_ATTRIBUTES: &str =
    "* -filter -text -eol -ident -diff -merge -working-tree-encoding -export-subst\n";

/// A hardened git for one workspace: see the module docs.
#[derive(Debug)]
pub struct HostGit {
    dir: PrivateDir,
    work: PathBuf,
    git: PathBuf,
    env: Vec<(String, String)>,
}

impl HostGit {
    /// Prepares the private repository for `work`. `Err(NotFound)` when git
    /// is not installed.
    pub fn new(work: &Path) -> Result<Self, ExecError> {
        let path_var =
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
        let git = find_on_path("git", &path_var).ok_or_else(|| ExecError::NotFound {
            program: PathBuf::from("git"),
        })?;
        let spawn_err = |source: std::io::Error| ExecError::Spawn {
            program: git.clone(),
            source,
        };
        let dir = PrivateDir::new("orch-git").map_err(spawn_err)?;
        let repo = dir.path().join("repo");
        for d in ["objects", "refs", "info"] {
            std::fs::create_dir_all(repo.join(d)).map_err(spawn_err)?;
        }
        std::fs::write(repo.join("HEAD"), "ref: refs/heads/main\n").map_err(spawn_err)?;
        std::fs::write(repo.join("config"), PRIVATE_CONFIG).map_err(spawn_err)?;
        std::fs::write(repo.join("info/attributes"), PRIVATE_ATTRIBUTES).map_err(spawn_err)?;
        let ceiling = work.parent().unwrap_or(work).display().to_string();
        let env = vec![
            ("PATH".to_owned(), path_var),
            ("HOME".to_owned(), dir.path().display().to_string()),
            ("LC_ALL".to_owned(), "C".to_owned()),
            ("GIT_DIR".to_owned(), repo.display().to_string()),
            ("GIT_WORK_TREE".to_owned(), work.display().to_string()),
            ("GIT_CEILING_DIRECTORIES".to_owned(), ceiling),
            ("GIT_CONFIG_NOSYSTEM".to_owned(), "1".to_owned()),
            ("GIT_CONFIG_GLOBAL".to_owned(), "/dev/null".to_owned()),
            ("GIT_ATTR_NOSYSTEM".to_owned(), "1".to_owned()),
            ("GIT_TERMINAL_PROMPT".to_owned(), "0".to_owned()),
            ("GIT_NO_REPLACE_OBJECTS".to_owned(), "1".to_owned()),
            ("GIT_OPTIONAL_LOCKS".to_owned(), "0".to_owned()),
        ];
        Ok(Self {
            dir,
            work: work.to_path_buf(),
            git,
            env,
        })
    }

    /// Stages `data` as a private file and returns its path.
    pub fn stage(&self, name: &str, data: &[u8]) -> std::io::Result<PathBuf> {
        let p = self.dir.path().join(name);
        std::fs::write(&p, data)?;
        Ok(p)
    }

    /// Runs `git <hardening -c flags> <args>` in the workspace.
    pub fn run(&self, args: &[&OsStr]) -> Result<Output, ExecError> {
        let mut all: Vec<&OsStr> = [
            "-c",
            "core.fsmonitor=false",
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.attributesFile=/dev/null",
        ]
        .iter()
        .map(OsStr::new)
        .collect();
        all.extend_from_slice(args);
        run_sync(&self.git, &all, Some(&self.work), &self.env)
    }
}

/// Config sections whose keys name commands (or pull in other config).
const COMMAND_SECTIONS: &[&str] = &[
    "filter",
    "include",
    "includeif",
    "pager",
    "alias",
    "credential",
    "uploadpack",
    "gpg",
    "sequence",
];
/// `section.key` names that run a command or move git's config or hooks.
const COMMAND_KEYS: &[&str] = &[
    "core.fsmonitor",
    "core.hookspath",
    "core.sshcommand",
    "core.pager",
    "core.editor",
    "core.askpass",
    "core.gitproxy",
    "core.attributesfile",
    "core.worktree",
    "diff.external",
    "diff.tool",
    "merge.tool",
];
/// Per-driver keys (`diff.<x>.textconv`, `merge.<x>.driver`, ...).
const DRIVER_KEYS: &[&str] = &["textconv", "command", "driver", "cmd", "path"];

/// Lines of a git config file that would make git run something.
fn config_findings(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut sub = false;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut rest = line;
        if let Some(body) = line.strip_prefix('[') {
            let Some(end) = body.find(']') else {
                out.push(format!("unparsable line {line:?}"));
                continue;
            };
            let head = body[..end].trim();
            let (name, has_sub) = match head.split_once([' ', '\t', '.']) {
                Some((n, _)) => (n, true),
                None => (head, false),
            };
            section = name.to_ascii_lowercase();
            sub = has_sub;
            rest = body[end + 1..].trim();
            if rest.is_empty() {
                continue;
            }
        }
        let key = rest
            .split(['=', ' ', '\t'])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let full = format!("{section}.{key}");
        let driver = sub
            && match section.as_str() {
                "remote" => matches!(key.as_str(), "uploadpack" | "receivepack" | "vcs"),
                "submodule" => key == "update",
                "branch" => false,
                _ => DRIVER_KEYS.contains(&key.as_str()),
            };
        let bad = COMMAND_SECTIONS.contains(&section.as_str())
            || COMMAND_KEYS.contains(&full.as_str())
            || driver;
        if bad {
            out.push(format!(
                "sets {section}{}.{key}",
                if sub { ".<name>" } else { "" }
            ));
        }
    }
    out
}

/// Git configuration an agent planted in `work` that would make a host-side
/// git run a command: a symlinked or redirected `.git`, command-running keys
/// in `.git/config` (filters, fsmonitor, hooksPath, sshCommand, pager,
/// diff/merge drivers, includes), hooks other than git's `*.sample` files,
/// and `.gitmodules` entries that run commands. Inert for orch's own git
/// ([`HostGit`]), reported so an operator sees the attempt.
pub fn check_workspace(work: &Path) -> Vec<Violation> {
    let mut out = Vec::new();
    let dot_git = work.join(".git");
    match std::fs::symlink_metadata(&dot_git) {
        Err(_) => {}
        Ok(m) if m.file_type().is_symlink() => out.push(Violation {
            path: dot_git.clone(),
            what: "is a symlink (planted git directory)".into(),
        }),
        Ok(m) if m.is_file() => out.push(Violation {
            path: dot_git.clone(),
            what: "is a gitfile pointing git elsewhere".into(),
        }),
        Ok(_) => {
            let config = dot_git.join("config");
            if let Ok(m) = std::fs::symlink_metadata(&config) {
                if m.file_type().is_symlink() {
                    out.push(Violation {
                        path: config.clone(),
                        what: "is a symlink".into(),
                    });
                } else if let Ok(text) = std::fs::read_to_string(&config) {
                    for f in config_findings(&text) {
                        out.push(Violation {
                            path: config.clone(),
                            what: format!("planted git config: {f}"),
                        });
                    }
                }
            }
            if let Ok(rd) = std::fs::read_dir(dot_git.join("hooks")) {
                for e in rd.flatten() {
                    let name = e.file_name();
                    if !name.to_string_lossy().ends_with(".sample") {
                        out.push(Violation {
                            path: e.path(),
                            what: "planted git hook".into(),
                        });
                    }
                }
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string(work.join(".gitmodules")) {
        for line in text.lines() {
            let l = line.trim().to_ascii_lowercase();
            if l.starts_with("update")
                && l.split_once('=')
                    .is_some_and(|(_, v)| v.trim().starts_with('!'))
            {
                out.push(Violation {
                    path: work.join(".gitmodules"),
                    what: "planted submodule update command".into(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_running_config_is_found_and_ordinary_config_is_not() {
        let ordinary = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\
            [remote \"origin\"]\n\turl = /src\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n\
            [branch \"main\"]\n\tremote = origin\n\tmerge = refs/heads/main\n";
        assert_eq!(config_findings(ordinary), Vec::<String>::new());
        for bad in [
            "[filter \"x\"]\n\tclean = touch /tmp/m\n",
            "[core]\n\tfsmonitor = /tmp/m.sh\n",
            "[core]\n\thooksPath = /tmp/h\n",
            "[core]\n\tsshCommand = x\n",
            "[diff]\n\texternal = x\n",
            "[include]\n\tpath = /tmp/c\n",
            "[includeIf \"gitdir:/\"]\n\tpath = /tmp/c\n",
            "[diff \"x\"]\n\ttextconv = x\n",
            "[core]\n\tpager = x\n",
            "[remote \"o\"]\n\tuploadpack = x\n",
        ] {
            assert!(!config_findings(bad).is_empty(), "{bad}");
        }
    }
}
