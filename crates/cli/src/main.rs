//! `orch` entry point: parse, run one command, map its outcome to the exit
//! code in one place (0 ok, 1 failed, 2 usage or invalid input, 3 not found
//! or wrong state).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("orch: error: {}", e.message);
            if let Some(hint) = &e.hint {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(e.code)
        }
    }
}
