//! `orch-gateway` entry point: parse flags, install logging and the metrics
//! recorder, resolve the configuration, serve until SIGTERM/SIGINT. Exit
//! codes: 0 after a clean shutdown, 1 when serving failed, 2 for invalid
//! configuration.

use clap::Parser;
use gateway::{Args, Config};
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
    gateway::install_metrics();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}"), 1),
    };
    match rt.block_on(gateway::run(cfg, fsqueue::signal::shutdown())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string(), 1),
    }
}

fn fail(msg: &str, code: u8) -> ExitCode {
    eprintln!("orch-gateway: error: {msg}");
    ExitCode::from(code)
}
