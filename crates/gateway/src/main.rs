//! `orch-gateway` entry point: parse flags, install logging and the metrics
//! recorder, resolve the configuration, serve until SIGTERM/SIGINT. Exit
//! codes: 0 after a clean shutdown, 1 when serving failed, 2 for invalid
//! configuration.

use clap::Parser;
use gateway::{Args, Config};
use std::process::ExitCode;

const PROGRAM: &str = "orch-gateway";

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
    gateway::install_metrics();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    fsqueue::signal::run_service(PROGRAM, rt, |stop| gateway::run(cfg, stop))
}
