//! `orch`: the operator's command line. Submits and inspects jobs, moves
//! them between queue states, checks the installation, and runs the whole
//! stack for development (`orch dev`).
//!
//! Stdout carries data (ids, tables, `--json` documents); stderr carries
//! messages. Every command works directly on the queue and artifacts
//! directories, so it needs no running daemon.

mod budget;
mod dev;
mod doctor;
mod health;
mod ops;
mod schedules;
mod status;
mod submit;
mod text;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// orch: run coding-agent CLIs (Claude Code, Codex, OpenCode, ...) as
/// multi-step jobs through a durable file queue.
///
/// Quick start:
///   orch dev                                   # gateway + runner + scheduler on ./var
///   orch submit examples/jobs/simple_job.json --wait
///   orch status <job_id>
///
/// Paths and limits come from the environment (QUEUE_ROOT, ARTIFACTS_ROOT,
/// WORKSPACES_ROOT, ...; see docs/CONFIGURATION.md) or a .env file.
#[derive(Debug, Parser)]
#[command(name = "orch", version, verbatim_doc_comment)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
    /// More log output on stderr (-v debug, -vv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Validate a job file (or `-` for stdin) and enqueue it; prints the job id
    ///
    /// Only `goal` is required; missing fields get defaults (the plan →
    /// implement → review pipeline). A job with policy.requires_approval
    /// waits in awaiting_approval until `orch approve`.
    Submit {
        /// Job file (JSON), or `-` for stdin
        file: String,
        /// Print {"job_id", "state"} as JSON
        #[arg(long)]
        json: bool,
        /// Follow the job until it ends; exit 0 only on success
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (with --wait)
        #[arg(long, value_name = "SEC", requires = "wait")]
        timeout: Option<u64>,
    },
    /// Show a job: queue state, status, and each step
    Status {
        job_id: String,
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first
    List {
        /// Only this state: pending, awaiting_approval, running, done, failed
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
        /// At most this many jobs
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Print a job's logs (all steps, or one with --step); -f follows
    Logs {
        job_id: String,
        #[arg(long, value_name = "STEP_ID")]
        step: Option<String>,
        /// Keep printing new output until the job ends
        #[arg(short, long)]
        follow: bool,
    },
    /// Check a job file against the contract without enqueueing it
    Validate {
        file: String,
        #[arg(long)]
        json: bool,
    },
    /// Let a job waiting for approval continue (resumes where it paused)
    Approve(JobArg),
    /// Refuse a job waiting for approval (it ends as cancelled)
    Reject(JobArg),
    /// Cancel a pending, waiting or running job
    Cancel(JobArg),
    /// Re-queue a failed or cancelled job; it resumes at its first unfinished step
    Retry(JobArg),
    /// Force a running job to failed and stop its agent (stuck jobs)
    Unlock(JobArg),
    /// List the cron schedules: next fire times, last job, problems
    ///
    /// Reads every *.json in SCHEDULES_DIR as the scheduler does. Broken
    /// files are listed with every problem (the scheduler skips them);
    /// `orch schedules validate FILE` checks one file (exit 2 if invalid).
    Schedules(SchedulesArgs),
    /// Reap expired leases, quarantine corrupt queue files and clear what dead processes left, now
    Recover {
        #[arg(long)]
        json: bool,
    },
    /// Today's (UTC) agent calls and cost against the budget limits, per agent and project
    ///
    /// Reads the ledger the runners keep in STATE_DB_PATH (see
    /// docs/BUDGET.md): calls, settled cost, cost reserved by attempts still
    /// running, refused attempts, and the limits MAX_DAILY_API_CALLS,
    /// MAX_DAILY_COST_USD and BUDGET_PROJECT_LIMITS.
    Budget {
        #[arg(long)]
        json: bool,
    },
    /// Check directories, disk, leases, corrupt files, configuration, sandbox
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Check a gateway (`--url`) or a runner (`--runner`); exit 0 when healthy
    ///
    /// Built for container health checks: no curl needed. `--url` sends one
    /// GET to a gateway's /health (plain http; the path defaults to /health)
    /// and wants 200 with "status": "ok". `--runner ID` wants the runner's
    /// heartbeat under QUEUE_ROOT/runners/ younger than its lease. Prints the
    /// health or heartbeat document; exit 1 when unhealthy or unreachable.
    Health {
        /// Gateway URL, e.g. http://127.0.0.1:8080/health
        #[arg(
            long,
            value_name = "URL",
            default_value = "http://127.0.0.1:8080/health",
            conflicts_with = "runner"
        )]
        url: String,
        /// Check this runner's heartbeat instead of a gateway
        #[arg(long, value_name = "ID")]
        runner: Option<String>,
        /// Give up after this many seconds (resolving, connecting, reading)
        #[arg(long, value_name = "SEC", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
        timeout: u64,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    ///
    /// e.g. `orch completions bash > /etc/bash_completion.d/orch`
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the orch(1) man page (roff), e.g. `orch man | man -l -`
    Man,
    /// Run gateway, runner and scheduler on embedded defaults until Ctrl-C
    Dev {
        /// Address for the gateway [default: GATEWAY_BIND, else 127.0.0.1:8080]
        #[arg(long)]
        bind: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct SchedulesArgs {
    #[command(subcommand)]
    pub cmd: Option<SchedulesCmd>,
    /// Print {"dir", "dir_error", "schedules": [...]} as JSON
    #[arg(long)]
    pub json: bool,
    /// How many next fire times to compute per schedule
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub next: u16,
}

#[derive(Debug, Subcommand)]
pub enum SchedulesCmd {
    /// Check a schedule file; exit 2 listing every problem
    Validate {
        file: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct JobArg {
    /// The job id
    #[arg(value_name = "JOB_ID", required_unless_present = "job")]
    pub id: Option<String>,
    /// The job id (MVP-compatible form)
    #[arg(long = "job", value_name = "JOB_ID", conflicts_with = "id")]
    pub job: Option<String>,
}

impl JobArg {
    fn get(&self) -> &str {
        self.id
            .as_deref()
            .or(self.job.as_deref())
            .unwrap_or_default()
    }
}

/// A failed command: what to print and which exit code to use.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
    pub hint: Option<String>,
}

impl CliError {
    pub fn failed(msg: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: msg.into(),
            hint: None,
        }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: msg.into(),
            hint: None,
        }
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self {
            code: 3,
            message: msg.into(),
            hint: None,
        }
    }
    pub fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }
}

impl From<fsqueue::QueueError> for CliError {
    fn from(e: fsqueue::QueueError) -> Self {
        use fsqueue::QueueError as Q;
        match &e {
            Q::NotFound { .. } => {
                CliError::not_found(e.to_string()).hint("`orch list` shows known jobs")
            }
            Q::WrongState { .. } | Q::Duplicate { .. } | Q::LeaseLost { .. } => {
                CliError::not_found(e.to_string())
            }
            Q::BadJobId(_) => CliError::invalid(e.to_string()),
            Q::Io(_) => CliError::failed(e.to_string()),
        }
    }
}

impl From<contracts::env::ConfigError> for CliError {
    fn from(e: contracts::env::ConfigError) -> Self {
        CliError::invalid(e.to_string()).hint("see docs/CONFIGURATION.md")
    }
}

/// The directories and settings every command needs.
pub struct Ctx {
    pub env: contracts::env::EnvSource,
    pub paths: contracts::config::Paths,
}

impl Ctx {
    fn load() -> Result<Self, CliError> {
        let env = contracts::env::EnvSource::load()?;
        let paths = contracts::config::Paths::resolve(&env)?;
        fsqueue::commit::set_per_file(contracts::config::fsync_per_file(&env)?);
        Ok(Self { env, paths })
    }

    fn queue(&self) -> Result<fsqueue::Queue, CliError> {
        fsqueue::Queue::open(&self.paths.queue_root).map_err(|e| {
            CliError::failed(format!("cannot open the queue: {e}"))
                .hint("check QUEUE_ROOT and that the directory is writable")
        })
    }

    fn store(&self) -> artifacts::ArtifactStore {
        artifacts::ArtifactStore::new(&self.paths.artifacts_root)
    }

    pub fn artifacts_root(&self) -> &std::path::Path {
        &self.paths.artifacts_root
    }
}

/// Runs a parsed command line; returns the exit code on success paths that
/// are not 0 (e.g. `submit --wait` of a job that failed).
pub fn run(cli: Cli) -> Result<u8, CliError> {
    init_logging(cli.verbose);
    match cli.cmd {
        Cmd::Submit {
            file,
            json,
            wait,
            timeout,
        } => submit::submit(&Ctx::load()?, &file, json, wait, timeout),
        Cmd::Validate { file, json } => submit::validate(&Ctx::load()?, &file, json),
        Cmd::Status { job_id, json } => status::status(&Ctx::load()?, &job_id, json),
        Cmd::List { state, limit, json } => {
            status::list(&Ctx::load()?, state.as_deref(), limit, json)
        }
        Cmd::Logs {
            job_id,
            step,
            follow,
        } => status::logs(&Ctx::load()?, &job_id, step.as_deref(), follow),
        Cmd::Approve(j) => ops::act(&Ctx::load()?, j.get(), artifacts::control::Action::Approve),
        Cmd::Reject(j) => ops::act(&Ctx::load()?, j.get(), artifacts::control::Action::Reject),
        Cmd::Cancel(j) => ops::act(&Ctx::load()?, j.get(), artifacts::control::Action::Cancel),
        Cmd::Retry(j) => ops::act(&Ctx::load()?, j.get(), artifacts::control::Action::Retry),
        Cmd::Unlock(j) => ops::act(&Ctx::load()?, j.get(), artifacts::control::Action::Unlock),
        Cmd::Schedules(a) => match a.cmd {
            None => schedules::list(&Ctx::load()?, a.json, a.next as usize),
            Some(SchedulesCmd::Validate { file, json }) => {
                schedules::validate(&Ctx::load()?, &file, json || a.json)
            }
        },
        Cmd::Recover { json } => ops::recover(&Ctx::load()?, json),
        Cmd::Budget { json } => budget::budget(&Ctx::load()?, json),
        Cmd::Doctor { json } => doctor::doctor(&json),
        Cmd::Dev { bind } => dev::dev(bind.as_deref()),
        Cmd::Health {
            url,
            runner: None,
            timeout,
        } => health::check_url(&url, std::time::Duration::from_secs(timeout)),
        Cmd::Health {
            runner: Some(id), ..
        } => health::check_runner(&Ctx::load()?.paths.queue_root, &id),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "orch", &mut std::io::stdout());
            Ok(0)
        }
        Cmd::Man => {
            use clap::CommandFactory;
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                // `orch man | head` closing the pipe early is not an error.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(CliError::failed(format!("cannot write the man page: {e}")))
                }
                _ => Ok(0),
            }
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Reads a job file or stdin (`-`), refusing anything over 8 MiB.
pub(crate) fn read_input(file: &str) -> Result<Vec<u8>, CliError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    const MAX: u64 = 8 * 1024 * 1024;
    let too_large = || {
        CliError::invalid(format!(
            "{file}: larger than 8 MiB; a job file is a small JSON document"
        ))
    };
    let mut buf = Vec::new();
    let res = if file == "-" {
        std::io::stdin().take(MAX + 1).read_to_end(&mut buf)
    } else {
        // Only a regular file is read, and its size is checked before a
        // byte is: a FIFO or device would block or never end.
        let p = PathBuf::from(file);
        let meta = std::fs::metadata(&p).map_err(|e| CliError::invalid(format!("{file}: {e}")))?;
        check_regular(file, &meta)?;
        if meta.len() > MAX {
            return Err(too_large());
        }
        // O_NONBLOCK: a FIFO swapped in after the check cannot block the
        // open; the handle is checked again below.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(&p)
            .map_err(|e| CliError::invalid(format!("{file}: cannot read: {e}")))?;
        let meta = f
            .metadata()
            .map_err(|e| CliError::invalid(format!("{file}: cannot read: {e}")))?;
        check_regular(file, &meta)?;
        if meta.len() > MAX {
            return Err(too_large());
        }
        f.take(MAX + 1).read_to_end(&mut buf)
    };
    res.map_err(|e| CliError::invalid(format!("{file}: cannot read: {e}")))?;
    if buf.len() as u64 > MAX {
        return Err(too_large());
    }
    Ok(buf)
}

fn check_regular(file: &str, meta: &std::fs::Metadata) -> Result<(), CliError> {
    if meta.is_file() {
        return Ok(());
    }
    let what = if meta.is_dir() {
        "is a directory"
    } else {
        "is not a regular file (a FIFO, socket or device)"
    };
    Err(
        CliError::invalid(format!("{file}: {what}, expected a JSON job file"))
            .hint("give a job file, or `-` to read the job from stdin"),
    )
}

/// Prints a JSON value on stdout.
pub(crate) fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into())
    );
}
