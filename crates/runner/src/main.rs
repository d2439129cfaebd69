//! `orch-runner` entry point: parse flags, install logging and metrics,
//! resolve the configuration, run until SIGTERM/SIGINT (or drained).

use clap::Parser;
use runner::config::{Args, Config};
use std::process::ExitCode;

const PROGRAM: &str = "orch-runner";

fn main() -> ExitCode {
    let args = Args::parse();
    let env = match contracts::config::start(PROGRAM, args.verbose) {
        Ok(env) => env,
        Err(code) => return code,
    };
    fsqueue::commit::set_per_file(contracts::config::fsync_per_file(&env).unwrap_or(false));
    let cfg = match Config::resolve(&args, &env) {
        Ok(c) => c,
        Err(e) => return contracts::config::exit_error(PROGRAM, &e, 2),
    };
    runner::config::install_metrics();
    // The main runtime claims, renews leases and delivers callbacks; every
    // job runs on a thread of its own (see `runner::run`).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    fsqueue::signal::run_service(PROGRAM, rt, |stop| runner::run(cfg, stop))
}
