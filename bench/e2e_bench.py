#!/usr/bin/env python3
"""End-to-end runner benchmarks on the real release binaries.

1. Throughput: N goal-only jobs (default plan -> implement -> review pipeline,
   SIMULATION_STEP_MS=0) are enqueued with `orch submit`, then one
   `orch-runner --drain --concurrency C` process runs them all; jobs/s is
   N / wall time of the runner process (start-up and final idle check
   included). Every write is durable (fsync).
2. Idle cost: an `orch-runner` with an empty queue; CPU time over 10 s from
   /proc/<pid>/stat and resident memory (VmRSS) from /proc/<pid>/status.

Usage: cargo build --release --workspace && python3 bench/e2e_bench.py [--jobs N] [--runs R]
"""
import argparse, os, shutil, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")


def env_for(d):
    e = dict(os.environ)
    e.update({
        "QUEUE_ROOT": os.path.join(d, "var/queue"),
        "ARTIFACTS_ROOT": os.path.join(d, "artifacts"),
        "WORKSPACES_ROOT": os.path.join(d, "workspaces"),
        "METRICS_DIR": os.path.join(d, "var/metrics"),
        "SIMULATION_STEP_MS": "0",
        "LOG_LEVEL": "warn",
    })
    return e


def submit_many(d, n):
    env = env_for(d)
    procs = []
    for i in range(n):
        procs.append(subprocess.Popen([os.path.join(BIN, "orch"), "submit", "-"], stdin=subprocess.PIPE,
                                      env=env, stdout=subprocess.DEVNULL))
        procs[-1].stdin.write(b'{"goal": "benchmark job %d"}' % i)
        procs[-1].stdin.close()
        if len(procs) >= 16:
            assert procs.pop(0).wait() == 0
    for p in procs:
        assert p.wait() == 0


def prepare(n, base):
    """A fresh tree with n jobs in pending/."""
    d = tempfile.mkdtemp(dir=base)
    submit_many(d, n)
    return d


def throughput(n, conc, d):
    t = time.monotonic()
    subprocess.run([os.path.join(BIN, "orch-runner"), "--drain", "--concurrency", str(conc), "--id", "bench"],
                   env=env_for(d), check=True)
    dt = time.monotonic() - t
    done = len(os.listdir(os.path.join(d, "var/queue/done")))
    assert done == n, f"only {done}/{n} jobs done"
    return n / dt


def idle(base, seconds=10):
    d = tempfile.mkdtemp(dir=base)
    try:
        p = subprocess.Popen([os.path.join(BIN, "orch-runner"), "--id", "idle"], env=env_for(d))
        time.sleep(2)
        tick = os.sysconf("SC_CLK_TCK")

        def cpu():
            f = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / tick

        c0, t0 = cpu(), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu(), time.monotonic()
        rss = [l for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS")][0].split()[1]
        p.terminate()
        p.wait()
        return 100 * (c1 - c0) / (t1 - t0), int(rss) / 1024
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--concurrency", default="2,8,32")
    a = ap.parse_args()
    for b in ("orch", "orch-runner"):
        if not os.path.exists(os.path.join(BIN, b)):
            sys.exit(f"{BIN}/{b} missing: cargo build --release --workspace first")
    base = os.path.join(ROOT, "target", "bench-tmp")
    os.makedirs(base, exist_ok=True)
    levels = [int(x) for x in a.concurrency.split(",")]
    # Every tree is prepared before the first measurement and kept after
    # the last (under target/bench-tmp; `just bench-clean` removes them):
    # deleting thousands of files right before a run would make that run
    # pay for the filesystem's clean-up of them (ext4 without a journal
    # skips recently freed inodes when allocating new ones).
    trees = {c: [prepare(a.jobs, base) for _ in range(a.runs)] for c in levels}
    for c in levels:
        r = [throughput(a.jobs, c, d) for d in trees[c]]
        print(f"throughput, concurrency {c:>2}: median {statistics.median(r):7.1f} jobs/s  (runs: {', '.join(f'{x:.1f}' for x in r)})")
    cpu, rss = idle(base)
    print(f"idle runner: {cpu:.2f} % CPU over 10 s, RSS {rss:.1f} MiB")


if __name__ == "__main__":
    main()
