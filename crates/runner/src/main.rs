//! `orch-runner` entry point: parse flags, install logging and metrics,
//! resolve the configuration, run until SIGTERM/SIGINT (or drained).

use clap::Parser;
use runner::config::{Args, Config};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Args::parse();
    let env = match contracts::env::EnvSource::load() {
        Ok(e) => e,
        Err(e) => return fail(&e.to_string(), 2),
    };
    if let Err(e) = contracts::config::init_logging(&env, args.verbose) {
        return fail(&e.to_string(), 2);
    }
    let cfg = match Config::resolve(&args, &env) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string(), 2),
    };
    runner::config::install_metrics();
    // The main runtime claims, renews leases and delivers callbacks; every
    // job runs on a thread of its own (see `runner::run`).
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}"), 1),
    };
    match rt.block_on(runner::run(cfg, fsqueue::signal::shutdown())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string(), 1),
    }
}

fn fail(msg: &str, code: u8) -> ExitCode {
    eprintln!("orch-runner: error: {msg}");
    ExitCode::from(code)
}
