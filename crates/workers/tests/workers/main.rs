//! Integration tests of the workers crate against real temporary
//! directories: the simulated agents, workspace preparation (including the
//! hostile trees of SPEC §15 defect 8) and per-step diffs checked with the
//! real `git apply`.

mod diff;
mod real;
mod sandbox;
mod sim;
mod support;
mod workspace;
