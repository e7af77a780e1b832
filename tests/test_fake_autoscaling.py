"""End to end on Ray's fake multi-node cluster (cluster/fake_autoscaling.yaml): jobs/simulate_autoscaling.py
runs `annotate` (actors asking {GPU: 1}) and `align` (use_gpu=True) while the autoscaler adds simulated GPU
nodes and removes them after the idle timeout. About 3-4 minutes on a 2-core machine, most of it waiting for
simulated nodes and idle timeouts, so it runs in the background from the start of the test session
(tests/fake_autoscaling_run.py, started by conftest) and this test checks its report at its turn. Marked slow
(`-m "not slow"` deselects it, and then it does not start)."""
from __future__ import annotations

import json
import os

import pytest


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fake_autoscaling_annotate_and_align(request):
    """The rehearsal started with the test session (tests/fake_autoscaling_run.py); this waits for its exit
    status and checks its report."""
    from tests import fake_autoscaling_run as bg

    folder = bg.folder(request.config)
    rc = bg.wait(folder, bg.TIMEOUT_S + 30)
    log = (folder / "log.txt").read_text()
    assert rc is not None, f"no exit status within {bg.TIMEOUT_S + 30} s\n" + log[-3000:]
    out = folder / "run"
    assert (out / "report.json").exists(), log[-6000:]
    r = json.loads((out / "report.json").read_text())
    print((out / "report.md").read_text())
    assert rc == "0" and r["ok"], r["failed"]
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
