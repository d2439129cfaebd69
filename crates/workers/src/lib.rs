//! Agent adapters and what they need around them: the `Worker` interface
//! and its `Registry`, the simulated agents (the default, SPEC §6), workspace
//! preparation (`workspace`), per-step diffs (`diff`), the one executor of
//! child processes (`exec`), the agent sandbox (`sandbox`), host-side writes
//! and git confined against what an agent planted (`confine`, `hostgit`),
//! and the real CLI adapters (`real`, `agents`, `output`; SPEC §6, §7).
//!
//! # Simulation markers
//!
//! Simulated agents read markers from the job's **goal** (applying to every
//! step) and from the **step's own prompt** (applying to that step), so
//! tests and demos can script outcomes without real agents. Any marker may
//! be narrowed to one step with `@<step_id>`, e.g. `[sim:fatal@02_implement]`.
//!
//! | marker | effect |
//! |---|---|
//! | `[sim:fail]` | `retryable` failure (error code `sim_failure`) |
//! | `[sim:fatal]` | `failed`, not retryable (`sim_fatal`) |
//! | `[sim:needs_human]` | `needs_human` (`needs_human`) |
//! | `[sim:fail_attempts=N]` | attempts 1..=N fail as `retryable`, later ones succeed |
//! | `[sim:sleep=MS]` | work for MS milliseconds instead of the configured duration |
//! | `[sim:hang]` | never finish until cancelled (for timeout and cancel tests) |
//! | `[sim:no_changes]` | an implementer changes nothing |
//! | `[sim:echo_prompt]` | the step's logs include the full prompt it received |
//!
//! Precedence: `needs_human` > `fatal` > `fail` > `fail_attempts`. Unknown
//! markers are ignored and named in the step's logs. Cancellation during the
//! work (or the hang) yields `cancelled`. Every simulated outcome carries
//! metrics `duration_ms`, `cost_usd: 0`, `tokens_in: 0`, `tokens_out: 0`,
//! `simulated: true`.

pub mod agents;
pub mod cgroup;
pub mod confine;
pub mod diff;
pub mod exec;
pub mod hostgit;
pub mod output;
pub mod real;
pub mod sandbox;
pub mod sim;
mod worker;
pub mod workspace;

pub use diff::{Snapshot, SnapshotLimits, change_status, diff};
pub use real::{RealAgent, RealConfig, RealConfigError};
pub use sim::{SimBehaviour, SimDirectives, SimulatedAgent};
pub use worker::{Registry, StepOutcome, StepRequest, Worker, WorkerFuture};
pub use workspace::{
    Limits as WorkspaceLimits, PrepareMethod, PrepareOutcome, SkipReason, Skipped, WorkspaceError,
    prepare, prepare_with_limits,
};
