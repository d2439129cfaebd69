"""Shared behaviour of the fake agent CLIs (fake-claude, fake-codex,
fake-opencode): scenario selection and the sandbox probe. The fakes print
exactly what the real CLIs print; tests pick a scenario with a marker in the
prompt (read from stdin), e.g. `[fake:rate_limit]`, or with FAKE_AGENT_MODE.

Scenarios: success (default), error, rate_limit, array (claude), huge,
crash, no_result, max_turns (claude), sleep, probe.
FAKE_CALL_LOG=FILE appends one line per call to FILE.
`[fake:huge=N]` makes the final message N bytes long (default 10 MB) on one
line. `[probe-port:N]` and `[probe-path:/x]` parametrise the probe.
"""
import json
import os
import re
import socket
import sys
import time


def read_prompt():
    data = sys.stdin.read()
    # FAKE_CALL_LOG: one line per agent call (not per --version probe), so
    # tests can count the calls that really happened. O_APPEND keeps
    # concurrent lines whole.
    log = os.environ.get("FAKE_CALL_LOG")
    if log:
        with open(log, "a") as f:
            f.write("%s %d\n" % (os.path.basename(sys.argv[0]), os.getpid()))
    return data


def mode(prompt):
    m = re.search(r"\[fake:([a-z_]+)(?:=(\d+))?\]", prompt)
    env = os.environ.get("FAKE_AGENT_MODE")
    if env:
        return env, None
    if m:
        return m.group(1), (int(m.group(2)) if m.group(2) else None)
    return "success", None


def huge_text(n):
    return "x" * (n or 10_000_000)


def probe(prompt):
    """Tries what the sandbox must forbid; reports what happened."""
    out = {}
    m = re.search(r"\[probe-path:([^\]]+)\]", prompt)
    outside = m.group(1) if m else "/usr/orch-probe-outside"
    for name, path in [("write_outside", outside), ("write_etc", "/etc/orch-probe")]:
        try:
            with open(path, "w") as f:
                f.write("probe")
            out[name] = "ok"
        except OSError as e:
            out[name] = "denied: %s" % e.strerror
    try:
        with open("orch-probe-inside.txt", "w") as f:
            f.write("probe")
        out["write_workspace"] = "ok"
    except OSError as e:
        out["write_workspace"] = "denied: %s" % e.strerror
    out["env"] = sorted(os.environ.keys())
    try:
        with open("/proc/1/environ", "rb") as f:
            out["pid1_environ"] = f.read().decode("utf-8", "replace")
    except OSError as e:
        out["pid1_environ"] = "denied: %s" % e.strerror
    m = re.search(r"\[probe-port:(\d+)\]", prompt)
    if m:
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", int(m.group(1))))
            out["connect"] = "ok"
        except OSError as e:
            out["connect"] = "denied: %s" % (e.strerror or e)
        finally:
            s.close()
    out["cwd"] = os.getcwd()
    out["state_dirs"] = {k: os.environ.get(k) for k in (
        "CLAUDE_CONFIG_DIR", "CODEX_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME")}
    return json.dumps(out, sort_keys=True)


def sleep_forever():
    time.sleep(3600)
