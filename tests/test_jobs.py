"""Ray jobs: ``python -m cwpo_ray <stage>`` is the entrypoint of every stage, and a real job submitted
to a real Ray head (127.0.0.1) runs the uploaded copy of the package and writes its outputs.

The head is started with the venv's ``ray start --head --block`` in its own process group and
stopped by terminating that group (never ``ray stop``: that would kill every Ray on the machine).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
JOBS = REPO / "jobs"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    env.update(HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               TOKENIZERS_PARALLELISM="false", **extra)
    return env


@pytest.mark.timeout(120)
def test_module_entrypoint_lists_runs_and_rejects_stages(tmp_path):
    """``python -m cwpo_ray``: every registered stage is offered, a stage's config errors exit 2 with one
    line, and an unknown stage exits 2 without a traceback."""
    from cwpo_ray.cli import STAGES

    def run(*args):
        return subprocess.run([sys.executable, "-m", "cwpo_ray", *args], cwd=tmp_path, env=_env(),
                              capture_output=True, text=True, timeout=100)

    r = run("--help")
    assert r.returncode == 0, r.stderr
    for stage in STAGES:
        assert re.search(rf"^ +{re.escape(stage)}\b", r.stdout, re.M), stage
    r = run("prepare", "test_fraction=2")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "config error: test_fraction: Input should be less than 1 (got 2)"], r.stderr
    r = run("no-such-stage")
    assert r.returncode == 2 and "invalid choice: 'no-such-stage'" in r.stderr and "Traceback" not in r.stderr


def test_runtime_env_files_are_valid():
    from ray.runtime_env import RuntimeEnv

    for f in sorted(JOBS.glob("runtime_env*.yaml")):
        spec = yaml.safe_load(f.read_text())
        RuntimeEnv(**spec)  # Ray's own validation of every field
        for pattern in (".venv/", ".git/", "runs/", "*.whl"):
            assert pattern in spec["excludes"], (f.name, pattern)
    assert (JOBS / "runtime_env.yaml").exists() and (JOBS / "runtime_env.pip.yaml").exists()


# --- a real Ray head and a real job -------------------------------------------------------------------

def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _session_members(sid: int) -> list[int]:
    """Pids of live processes whose session id is ``sid`` (the head and everything it started)."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] != "Z" and int(fields[3]) == sid:
                pids.append(int(p.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


@pytest.fixture()
def ray_head():
    """A real Ray head on 127.0.0.1 (own ports, own temp dir, own process session); yields the dashboard URL."""
    from ray.job_submission import JobSubmissionClient

    try:
        import ray.dashboard.optional_deps  # noqa: F401  (aiohttp_cors, opencensus, ...)
    except ImportError as e:
        pytest.fail(f"the Ray job server needs ray[default] (pyproject: 'ray[default,data,train,tune]'): {e}")
    (gcs, dash, client, agent_http, agent_grpc, rt_agent, metrics, node_mgr, obj_mgr) = _free_ports(9)
    temp_dir = tempfile.mkdtemp(prefix="cwpo-head-")  # short: Ray's unix socket paths have a length limit
    ray_bin = str(Path(sys.executable).parent / "ray")
    cmd = [ray_bin, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent_http),
           "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(rt_agent),
           "--metrics-export-port", str(metrics), "--node-manager-port", str(node_mgr),
           "--object-manager-port", str(obj_mgr), "--num-cpus", "2", "--num-gpus", "0",
           "--object-store-memory", str(200 * 2**20), "--temp-dir", temp_dir, "--disable-usage-stats"]
    log = open(os.path.join(temp_dir, "head.log"), "w")
    proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ray head exited with {proc.returncode}: {Path(log.name).read_text()[-3000:]}")
            try:
                JobSubmissionClient(url)
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(1.0)
        yield url
    finally:
        sid = proc.pid  # start_new_session: the head's pid is its session and process-group id
        # `ray start --block` stops what it started on SIGTERM, but its graceful path takes ~35 s here;
        # give it 10 s, then SIGKILL the head's own process group (nothing outside it is touched).
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(sid, signal.SIGKILL)
            proc.wait(timeout=30)
        # Ray's own processes (raylet, gcs, dashboard, workers) stay in the head's session: wait for them,
        # then kill any straggler by pid. Nothing outside this session is touched.
        deadline = time.time() + 5
        while _session_members(sid) and time.time() < deadline:
            time.sleep(0.5)
        left = _session_members(sid)
        if left:
            print("killing Ray head stragglers:", {pid: _cmdline(pid) for pid in left})
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not _session_members(sid), "Ray head processes survived SIGKILL"


@pytest.mark.timeout(300)
def test_submit_synthesize_and_prepare_job(ray_head, tmp_path):
    """``ray job submit`` equivalent through JobSubmissionClient: the repo as working_dir (with the
    documented excludes), the venv's python, outputs to a file:// URI; wait for SUCCEEDED."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    syn_dir = tmp_path / "synthetic"
    out_uri = f"file://{tmp_path / 'prepared'}"
    cfg = tmp_path / "prepare.yaml"
    cfg.write_text(yaml.safe_dump({
        "sources": [{"format": "canonical", "path": str(syn_dir / "pairs.jsonl"), "name": "synthetic"}],
        "output_dir": out_uri, "labeled_fraction": 0.3, "test_fraction": 0.1,
        "tokenizer": str(syn_dir / "tokenizer"), "max_length": 128, "batch_size": 256,
    }))
    runtime_env = yaml.safe_load((JOBS / "runtime_env.yaml").read_text())
    runtime_env["working_dir"] = str(REPO)
    runtime_env.setdefault("env_vars", {}).update(HF_HUB_OFFLINE="1", RAY_DATA_DISABLE_PROGRESS_BARS="1")
    py = sys.executable
    entrypoint = (f"{py} -c 'import cwpo_ray; print(\"package:\", cwpo_ray.__file__)' && "
                  f"{py} -m cwpo_ray synthesize output_dir={syn_dir} task.num_pairs=300 "
                  f"pretrain.num_texts=256 pretrain.epochs=1 && "
                  f"{py} -m cwpo_ray prepare --config {cfg}")

    client = JobSubmissionClient(ray_head)
    t0 = time.time()
    while True:  # the head's job agent registers a little after its dashboard answers (longer on a busy machine)
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            break
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.time() - t0 > 90:
                raise
            time.sleep(2.0)
    t0 = time.time()
    status = None
    while time.time() - t0 < 240:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        time.sleep(1.0)
    logs = client.get_job_logs(job_id)
    if status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        client.stop_job(job_id)
    assert status == JobStatus.SUCCEEDED, f"job {job_id}: {status}\n{logs[-4000:]}"
    print(f"job {job_id} SUCCEEDED in {time.time() - t0:.1f}s")

    # The job ran in Ray's copy of the repo, not in /work/main, and joined this head (RAY_ADDRESS).
    info = client.get_job_info(job_id)
    assert info.runtime_env["working_dir"].startswith("gcs://")
    package = next(line.split(" ", 1)[1] for line in logs.splitlines() if line.startswith("package: "))
    assert not package.startswith(str(REPO)), package  # the uploaded copy ran, not the checkout
    assert "prepare: 300 rows in" in logs

    out = tmp_path / "prepared"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_in"] == 300 and summary["kept"] + summary["quarantined"] == 300
    assert summary["output_dir"] == out_uri
    counts = {s: sum(pq.read_metadata(f).num_rows for f in (out / s).glob("*.parquet")) for s in ("labeled", "unlabeled", "validation", "test")}
    assert counts == summary["splits"] and sum(counts.values()) == summary["kept"] > 0
    assert (syn_dir / "tokenizer").is_dir() and (syn_dir / "weak_base" / "config.json").exists()
