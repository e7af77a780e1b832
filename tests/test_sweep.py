"""`cwpo sweep`: grid expansion and results (pure), and a real 2×2 Ray Tune sweep on a tiny synthetic task."""
import csv
import json
from pathlib import Path

import pytest

from cwpo_ray.config import ConfigError, build_config
from cwpo_ray.results import SweepResult, SweepRow, read_result
from cwpo_ray.sweep.config import SweepConfig
from cwpo_ray.sweep.tune import base_pipeline, method_name, trial_name, write_results


def test_method_and_trial_names():
    assert method_name({"loss": "dpo", "weighting": "confidence"}) == "cw-dpo"
    assert method_name({"loss": "ipo", "weighting": "none"}) == "ws-ipo"
    assert trial_name({"labeled_fraction": 0.3, "loss": "dpo", "weighting": "none", "beta": 0.1}) == "lf0.3-dpo-none-b0.1"


def test_bad_sweep_config_fails_fast():
    with pytest.raises(ConfigError, match="loss.0"):
        build_config(SweepConfig, {"loss": ["kto"]})
    with pytest.raises(ConfigError, match="align.nope"):
        base_pipeline(build_config(SweepConfig, {"pipeline": {"align": {"nope": 1}}}))


def test_write_results(tmp_path):
    rows = [SweepRow(labeled_fraction=lf, method=m, loss="dpo", weighting=w, beta=b, gra=0.5 + 0.1 * b, gra_ci_low=0.4,
                     gra_ci_high=0.7, gold_gain=0.1, status="ok")
            for lf in (0.1, 0.3) for m, w in (("cw-dpo", "confidence"), ("dpo", "none")) for b in (0.1, 0.5)]
    write_results(rows, tmp_path)
    with open(tmp_path / "results.csv") as f:
        back = list(csv.DictReader(f))
    assert [(float(r["labeled_fraction"]), r["method"], float(r["beta"]), float(r["gra"])) for r in back] == \
        [(r.labeled_fraction, r.method, r.beta, r.gra) for r in rows]
    assert "| 0.300 | cw-dpo | dpo | confidence | 0.500 | 0.550 |" in (tmp_path / "results.md").read_text()
    import matplotlib.image

    img = matplotlib.image.imread(tmp_path / "gra_sweep.png")
    assert img.shape[:2] == (480, 1320)  # 11 x 4 in at 120 dpi: both panels were drawn
    assert img[..., :3].std() > 0.05  # not a blank canvas


@pytest.mark.timeout(1500)
def test_sweep_2x2_on_synthetic_task(tmp_path, ray_session):
    from cwpo_ray.sweep.tune import run_sweep

    cfg = build_config(SweepConfig, {
        "output_dir": str(tmp_path / "sweep"), "beta": [0.1, 0.5], "weighting": ["confidence", "none"],
        # the session's Ray has 2 CPUs and the trial driver holds 0.01: workers take half a CPU each here
        "pipeline": {"synthetic": {"task": {"num_pairs": 600}, "pretrain": {"num_texts": 512, "epochs": 1}},
                     "annotator": {"epochs": 1, "cpus_per_worker": 0.5},
                     "sft": {"epochs": 1, "cpus_per_worker": 0.5}, "align": {"epochs": 1, "cpus_per_worker": 0.5},
                     "evaluate": {"max_prompts": 12, "num_bootstrap": 200}},
    })
    s = run_sweep(cfg)
    assert s.trials == 4 and s.ok == 4, s.rows
    for r in s.rows:
        assert 0.0 <= r.gra <= 1.0 and r.gra_ci_low <= r.gra <= r.gra_ci_high
    out = Path(cfg.output_dir)
    assert read_result(SweepResult, out / "summary.json") == s
    assert (out / "results.md").exists() and (out / "gra_sweep.png").exists()
    # the annotator was trained once for the shared labeled fraction, not once per trial
    manifest = json.loads((out / "labeled_fraction=0.3" / "manifest.json").read_text())
    assert "train-annotator" in manifest
    assert len(list((out / "trials").iterdir())) == 4
