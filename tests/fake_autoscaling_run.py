"""jobs/simulate_autoscaling.py as a background process of the test session.

The rehearsal takes 3-4 minutes on 2 cores, most of it waiting (simulated nodes starting, two 30 s idle
timeouts, the cluster's shutdown). tests/conftest.py starts it when the session's collection selects its test
(in xdist worker gw0 only); it runs beside the other tests and writes its exit status to ``rc`` last. The test,
on whichever worker, waits for that file and checks the report (tests/test_fake_autoscaling.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 840
_started: list[subprocess.Popen] = []


def folder(config) -> Path:
    """One folder per test session, the same for every xdist worker."""
    base = config._tmp_path_factory.getbasetemp()  # under xdist: <session folder>/popen-gwN
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "fake_autoscaling"


def start(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    code = textwrap.dedent(f"""
        import os, subprocess, sys
        try:
            r = subprocess.run(sys.argv[1:], timeout={TIMEOUT_S}).returncode
        except subprocess.TimeoutExpired:
            r = 124
        with open({str(out / "rc.tmp")!r}, "w") as f:
            f.write(str(r))
        os.replace({str(out / "rc.tmp")!r}, {str(out / "rc")!r})
    """)
    with open(out / "log.txt", "w") as log:
        _started.append(subprocess.Popen(
            [sys.executable, "-c", code, sys.executable, str(REPO / "jobs" / "simulate_autoscaling.py"), "--out", str(out / "run")],
            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))


def wait(out: Path, timeout: float) -> str | None:
    """The rehearsal's exit status ("0" when every check passed), or None if it has not exited in time."""
    deadline = time.time() + timeout
    while not (out / "rc").exists() and time.time() < deadline:
        time.sleep(2)
    return (out / "rc").read_text() if (out / "rc").exists() else None


def finish(aborted: bool) -> None:
    """At the end of the session of the process that started it: let it end (another worker's test may still be
    waiting for it), or stop its process group at once when the session was aborted."""
    for p in _started:
        try:
            p.wait(timeout=1 if aborted else TIMEOUT_S + 60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGTERM)
