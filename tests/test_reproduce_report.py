"""jobs/reproduce_miniature.py: its configs validate (--plan) and its results page is computed from per-prompt
win shares alone (no runs): every part, the paired verdicts and the plots."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _job():
    spec = importlib.util.spec_from_file_location("reproduce_miniature", REPO / "jobs" / "reproduce_miniature.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _shares(p_win: float, seed: int, n: int = 60) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    return {f"p{i}": float(np.mean(rng.random(4) < p_win)) for i in range(n)}


def test_plan_validates_every_config(tmp_path, monkeypatch, capsys):
    job = _job()
    monkeypatch.setattr("sys.argv", ["x", "--plan", "--seeds", "0", "1", "--run-dir", str(tmp_path)])
    job.main()
    out = capsys.readouterr().out
    assert f"part A {2 * len(job.METHODS) * 2} validation trials" in out
    cfg = job.curve_config(tmp_path, [0], job.GRID, 0.2)
    base = cfg.pipeline
    assert base["prepare"] == {"test_fraction": job.TEST_FRACTION, "labeled_fraction": 0.2, "unlabeled_fraction": 0.5}
    assert base["sft_data"] == "method_labels" and cfg.methods == job.CURVE_METHODS


def test_report_has_every_part_and_paired_verdicts(tmp_path):
    job = _job()
    seeds = [0, 1, 2]
    strong = {"cw-dpo", "human-100"}
    shares = {m: [_shares(0.75 if m in strong else 0.6, 10 * s + i) for s in seeds] for i, m in enumerate(job.METHODS)}
    point = {"align.beta": 0.5}
    data = {
        "seeds": seeds, "grid": job.GRID, "shares": shares, "shares_vs_common": shares,
        "reference": {m: "sft-weak" for m in job.METHODS}, "length_limit_rise": {m: [0.01, 0.03, 0.02] for m in job.METHODS},
        "sweep": {"selected": {m: {"point": point, "validation_gra": 0.6, "validation_per_seed": [0.6] * 3}
                               for m in job.METHODS}},
        "labels": [{"human_gold_agreement": 0.7, "weak_human_agreement": 0.6, "weak_gold_agreement": 0.65,
                    "weak_gold_agreement_top": {"top30": 0.8}}] * 3,
        "curve": {str(f): {m: [_shares(0.75 if m == "cw-dpo" else 0.55, 100 * s + j) for s in seeds]
                           for j, m in enumerate(job.CURVE_METHODS)} for f in (0.1, 0.3)},
    }
    text = job.report(data, tmp_path)
    for part in ("1. Sanity gate", "2. Label regime", "3. Table 1", "4. Table 3", "5. Figure 2", "6. Figure 3", "7. Table 5"):
        assert part in text
    assert "preference optimization works here" in text
    res = json.loads((tmp_path / "miniature.json").read_text())
    assert res["verdicts"]["cw-dpo - ws-dpo"].startswith("cw-dpo above ws-dpo")  # 0.75 vs 0.6 on 60 prompts x 3 seeds
    assert "no difference resolved" in res["verdicts"]["cw-dpo - human-100"]  # same win rate
    assert res["verdicts"]["curve 0.1: cw-dpo - labeled-dpo"].startswith("cw-dpo above")
    g = res["gra"]["cw-dpo"]
    assert g["ci"][0] <= g["gra"] <= g["ci"][1] and len(g["per_seed"]) == 3
    assert g["gra"] == sum(np.mean(list(s.values())) for s in shares["cw-dpo"]) / 3
    for png in ("miniature_tables.png", "miniature_fraction.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
