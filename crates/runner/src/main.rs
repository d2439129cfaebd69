//! `orch-runner` entry point: parse flags, install logging and metrics,
//! resolve the configuration, run until SIGTERM/SIGINT (or drained).

use clap::Parser;
use runner::config::{Args, Config};
use std::process::ExitCode;

const PROGRAM: &str = "orch-runner";

fn main() -> ExitCode {
    // Agent-wrapper mode (see `runner::agent_exec`): decided before any
    // parsing, logging or configuration.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(workers::exec::AGENT_WRAPPER_ARG))
    {
        return runner::agent_exec::main(std::env::args_os().skip(2).collect());
    }
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
    // Every child starts through this binary's agent-wrapper mode, so it
    // dies with the runner. `/proc/self/exe` names the running image even
    // if the file was replaced by an upgrade meanwhile.
    workers::exec::set_agent_wrapper(std::path::PathBuf::from("/proc/self/exe"));
    // The main runtime claims, renews leases and delivers callbacks; every
    // job runs on a thread of its own (see `runner::run`).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    fsqueue::signal::run_service(PROGRAM, rt, |stop| runner::run(cfg, stop))
}
