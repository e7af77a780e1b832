"""End to end on Ray's fake multi-node cluster (cluster/fake_autoscaling.yaml): jobs/simulate_autoscaling.py
runs `annotate` (actors asking {GPU: 1}) and `align` (use_gpu=True) while the autoscaler adds simulated GPU
nodes and removes them after the idle timeout. About 5 minutes on a 2-core machine: marked slow
(`-m "not slow"` deselects it)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fake_autoscaling_annotate_and_align(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    out = tmp_path / "fake"
    p = subprocess.run([sys.executable, str(REPO / "jobs" / "simulate_autoscaling.py"), "--out", str(out)],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=840)
    assert (out / "report.json").exists(), p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads((out / "report.json").read_text())
    print((out / "report.md").read_text())
    assert p.returncode == 0 and r["ok"], r["failed"]
    a, al = r["stages"]["annotate"], r["stages"]["align"]
    assert a["pairs"] > 0 and a["pairs"] == a["unique_pair_ids"] and a["quarantined"] == 0
    assert a["gpu_nodes_during"] >= 1 and al["gpu_nodes_during"] >= 1 and r["result"]["nodes_added"] >= 2
    assert a["time_to_scale_up_s"] is not None and al["time_to_scale_up_s"] is not None
    assert al["steps"] == 4 and os.path.exists(os.path.join(al["model_dir"], "config.json"))
    assert any("ScorerActor" in x for x in r["fallback_lines"]) and any("RayTrainWorker" in x for x in r["fallback_lines"])
    # back to the head alone after each stage, within the idle timeout plus the autoscaler's reaction time
    for st in (a, al):
        assert st["time_to_scale_down_s"] is not None and st["time_to_scale_down_s"] < r["result"]["idle_timeout_s"] + 60
    assert r["timeline"][-1]["nodes"] == 1
