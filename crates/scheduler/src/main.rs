//! `orch-scheduler` entry point.

use clap::Parser;
use std::process::ExitCode;

/// Fires cron schedules, reaps expired leases and applies retention.
/// Configuration comes from the environment (docs/CONFIGURATION.md).
#[derive(Debug, Parser)]
#[command(name = "orch-scheduler", version, about)]
struct Args {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let env = match contracts::env::EnvSource::load() {
        Ok(e) => e,
        Err(e) => return fail(&e.to_string(), 2),
    };
    if let Err(e) = contracts::config::init_logging(&env, args.verbose) {
        return fail(&e.to_string(), 2);
    }
    let cfg = match scheduler::Config::resolve(&env) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string(), 2),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e.to_string(), 1),
    };
    match rt.block_on(scheduler::run(cfg, fsqueue::signal::shutdown())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e, 1),
    }
}

fn fail(msg: &str, code: u8) -> ExitCode {
    eprintln!("orch-scheduler: error: {msg}");
    ExitCode::from(code)
}
