//! `orch-scheduler` entry point.

use clap::Parser;
use std::process::ExitCode;

/// Fires the cron schedules of SCHEDULES_DIR (each slot exactly once, also
/// with several schedulers on one queue), reaps expired leases and applies
/// retention. Configuration comes from the environment
/// (docs/CONFIGURATION.md); `orch schedules` shows what is scheduled.
#[derive(Debug, Parser)]
#[command(name = "orch-scheduler", version, about)]
struct Args {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

const PROGRAM: &str = "orch-scheduler";

fn main() -> ExitCode {
    let args = Args::parse();
    let env = match contracts::config::start(PROGRAM, args.verbose) {
        Ok(env) => env,
        Err(code) => return code,
    };
    fsqueue::commit::set_per_file(contracts::config::fsync_per_file(&env).unwrap_or(false));
    let cfg = match scheduler::Config::resolve(&env) {
        Ok(c) => c,
        Err(e) => return contracts::config::exit_error(PROGRAM, &e, 2),
    };
    scheduler::install_metrics();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    fsqueue::signal::run_service(PROGRAM, rt, |stop| scheduler::run(cfg, stop))
}
