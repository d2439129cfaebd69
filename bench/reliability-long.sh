#!/usr/bin/env bash
# The long forms of the reliability scenarios (docs/RELIABILITY.md), one
# after another, each printing the seed it ran with. Several hours on two
# cores; CI runs the bounded forms (`cargo test --workspace`).
#
#   bench/reliability-long.sh            # everything
#   bench/reliability-long.sh crash      # one scenario: crash power storm
#                                        # stop scale gateway fence
set -euo pipefail
cd "$(dirname "$0")/.."
export ORCH_TEST_STRICT=1
only=${1:-all}
run() { [ "$only" = all ] || [ "$only" = "$1" ]; }

cargo build --workspace --tests --locked
rel() { cargo test -p cli --test reliability --locked -- --nocapture "$@"; }
if run crash; then ORCH_CRASH_ROUNDS=5 rel crash::; fi
if run power; then ORCH_POWER_SEEDS=1000 rel power::; fi
if run storm; then
  ORCH_STORM_RUNNERS=8 ORCH_STORM_JOBS=10000 ORCH_STORM_LIMIT_SEC=3600 rel storm::sigkill
fi
if run stop; then ORCH_STOP_RUNNERS=4 ORCH_STOP_JOBS=600 rel storm::sigstop; fi
if run scale; then ORCH_SCALE_JOBS=100000 rel scale::; fi
if run gateway; then
  ORCH_STORM_DELIVERIES=10000 cargo test -p gateway --test gateway --locked -- --nocapture storm
fi
if run fence; then
  ORCH_FENCE_TRIALS=50 cargo test -p cli --test e2e --locked -- --nocapture fence::a_paused_owner
fi
echo "reliability long forms: all passed"
