# orch developer recipes. `just --list` shows them.

# Run the whole stack (gateway, runner, scheduler) on embedded defaults.
dev:
    cargo build --release --workspace
    target/release/orch dev

# The test suite (what CI runs after lint).
test:
    cargo test --workspace

# The long forms of the reliability scenarios (hours; docs/RELIABILITY.md).
reliability-long *what:
    bench/reliability-long.sh {{what}}

# Exactly the lint CI runs.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

# Regenerate docs/CONFIGURATION.md from the environment-variable registry.
docs:
    UPDATE_DOCS=1 cargo test -p contracts configuration_doc_is_current

# Benchmarks (figures go to docs/BENCHMARKS.md).
bench:
    cargo build --release --workspace
    cargo bench -p fsqueue --bench queue
    python3 bench/e2e_bench.py
    crates/gateway/bench/gateway.sh 10s
    bench/fastapi_bench.sh 10s

# Removes the trees the benchmarks leave under target/bench-tmp.
bench-clean:
    rm -rf target/bench-tmp

# Container images (orch, orch-gateway, orch-scheduler, orch-runner): static
# binaries and a cached Debian root filesystem; nothing is pulled.
image:
    deploy/stack.sh image

# Start the compose stack (gateway, two runners, scheduler) and wait for health.
compose-up:
    deploy/stack.sh up

# The compose test: builds the images, kills a runner container mid-job, restarts the gateway, nginx in front.
compose-test:
    deploy/stack.sh test

# Stop the compose stack (the data volume stays).
compose-down:
    deploy/stack.sh down
