//! The hidden agent-wrapper mode of `orch-runner`:
//! `orch-runner __orch-agent-exec [--cgroup-procs=FILE]... <runner-pid> <program> [args...]`.
//!
//! With `--cgroup-procs`, the wrapper first writes its own pid to each
//! FILE: it joins the step's cgroup (`workers::cgroup`) before the exec,
//! so the agent and everything it starts are inside from the start.
//!
//! The executor (`workers::exec`) starts every child through it. The
//! wrapper asks the kernel to SIGKILL it when its parent dies
//! (`PR_SET_PDEATHSIG`, through nix's safe `prctl`), checks that its parent
//! is still the runner that started it (the runner may have died before the
//! signal was armed), then execs the program: the signal survives `exec`,
//! so the agent dies with its runner, however the runner dies.

use nix::sys::signal::Signal;
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

/// Runs the wrapper with the arguments after the mode argument. Returns
/// only on failure (exit 127, like a shell that cannot run a command).
pub fn main(args: Vec<OsString>) -> ExitCode {
    match exec(&args) {
        Ok(never) => match never {},
        Err(msg) => {
            eprintln!("orch-runner agent wrapper: {msg}");
            ExitCode::from(127)
        }
    }
}

fn exec(args: &[OsString]) -> Result<std::convert::Infallible, String> {
    // Join the step's cgroup first: everything exec'd from here on (setpriv,
    // bubblewrap, the agent and what it starts) is born inside it.
    let mut args = args;
    while let Some((first, rest)) = args.split_first() {
        let Some(procs) = first
            .to_str()
            .and_then(|s| s.strip_prefix(workers::exec::AGENT_WRAPPER_CGROUP))
        else {
            break;
        };
        workers::cgroup::enter(&[procs.into()], std::process::id())
            .map_err(|e| format!("cannot join the step's cgroup: {e}"))?;
        args = rest;
    }
    let [ppid, program, rest @ ..] = args else {
        return Err(
            "usage: __orch-agent-exec [--cgroup-procs=FILE]... <runner-pid> <program> [args...]"
                .into(),
        );
    };
    let ppid: i32 = ppid
        .to_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad runner pid {ppid:?}"))?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| format!("prctl(PR_SET_PDEATHSIG): {e}"))?;
    if nix::unistd::getppid().as_raw() != ppid {
        return Err("the runner that started this agent is gone".into());
    }
    let cstr = |s: &OsString| {
        CString::new(s.as_bytes()).map_err(|_| format!("argument {s:?} contains a NUL byte"))
    };
    let prog = cstr(program)?;
    let argv = std::iter::once(program)
        .chain(rest)
        .map(cstr)
        .collect::<Result<Vec<_>, _>>()?;
    nix::unistd::execv(&prog, &argv).map_err(|e| format!("exec {}: {e}", program.to_string_lossy()))
}
