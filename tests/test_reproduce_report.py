"""jobs/reproduce_miniature.py: its configs validate (--plan); its ledger records finished trials, resumes from
them and selects on validation records alone; its results page is computed from per-prompt win shares alone
(no runs): every part, the paired verdicts and the plots."""
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
    monkeypatch.setattr("sys.argv", ["x", "--plan", "--seeds", "0", "1", "--run-dir", str(tmp_path),
                                     "--ledger", str(tmp_path / "ledger")])
    job.main()
    out = capsys.readouterr().out
    assert f"part A {2 * len(job.METHODS) * 2} trials (each evaluated on validation and test)" in out
    assert "Part A 0/" in out  # nothing recorded in this ledger yet
    from cwpo_ray.sweep.tune import trial_configs

    cfg = job.curve_config(tmp_path, [0], job.GRID)
    base = cfg.pipeline
    assert base["prepare"] == {"test_fraction": job.TEST_FRACTION, "unlabeled_fraction": 0.5}
    assert base["sft_data"] == "method_labels" and cfg.methods == job.CURVE_METHODS
    shared = {f: trial_configs(cfg, job.curve_point({"align.beta": 0.5}, f), 3, "cw-dpo", split="test")[0] for f in job.FRACTIONS}
    assert [c.prepare.labeled_fraction for c in shared.values()] == job.FRACTIONS
    assert {c.prepare.unlabeled_fraction for c in shared.values()} == {0.5}
    assert {c.synthetic.output_dir for c in shared.values()} == {str(tmp_path / "curve" / "shared" / "seed3" / "synthetic")}


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


def _metrics(method: str, gra: float, ref: str, out: str) -> dict:
    """A valid evaluate metrics.json with ``method``'s GRA against its own reference ``ref``."""
    mm = {"n": 20, "samples_per_prompt": 4, "wins": 0, "ties": 0, "losses": 0, "gra": gra, "tie_rate": 0.0,
          "loss_rate": 1 - gra, "gra_ci": [gra - 0.1, gra + 0.1], "mean_gain": 0.0, "mean_gain_ci": [0.0, 0.0],
          "mean_gold_aligned": 0.0, "mean_gold_sft": 0.0, "ci": 0.95, "num_bootstrap": 10}
    return {"num_prompts": 20, "samples_per_prompt": 4, "seeding": "independent", "prompts_path": "x", "sft_model": "x",
            "prompts": {"rows_in": 20, "unique_prompts": 20, "duplicate_prompts": 0, "bad_prompts": 0,
                        "not_used_max_prompts": 0, "prompts_used": 20},
            "models": {method: "x"}, "compare_to": {method: ref}, "gold": "r*", "gold_seconds": 0.0,
            "methods": {method: mm}, "mean_gold": {}, "length_limit_share": {method: 0.1, ref: 0.05, "sft": 0.05},
            "generation": {}, "sampling": {}, "ci": 0.95, "num_bootstrap": 10, "tie_tolerance": 0.0, "output_dir": out,
            "seconds_total": 1.0}


def _fake_trial(shared, own, method: str, gra: float, ref_gold: float = 0.0) -> None:
    """What a trial's evaluate leaves in its run folder: metrics.json and responses.parquet (the method, its own
    SFT reference and the common SFT model; the method wins every comparison)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = Path(own.evaluate.output_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.json").write_text(json.dumps(_metrics(method, gra, "sft-weak", str(d))))
    rows = [{"method": m, "model": "x", "prompt_id": f"p{i}", "prompt": "q", "sample": k, "response": "r", "seed": k,
             "num_tokens": 3, "finish_reason": "stop", "gold": 1.0 if m == method else ref_gold}
            for m in (method, "sft-weak", "sft") for i in range(20) for k in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), d / "responses.parquet")
    Path(shared.run_dir).mkdir(parents=True, exist_ok=True)


def test_ledger_records_resumes_and_selects_on_validation_only(tmp_path, monkeypatch):
    import pyarrow.parquet as pq
    import pytest

    from cwpo_ray.sweep.tune import grid, trial_configs

    job = _job()
    methods = {m: job.METHODS[m] for m in ("cw-dpo", "ws-dpo")}
    monkeypatch.setattr(job, "METHODS", methods)
    monkeypatch.setattr(job, "CURVE_METHODS", list(methods))
    run, seeds = tmp_path / "run", [0, 1]
    ledger = job.Ledger(run, tmp_path / "ledger")
    cfg = job.sweep_config(run / "table", seeds, job.GRID)
    # validation prefers beta 0.5 for cw-dpo and 0.35 for ws-dpo; test would prefer the opposite
    best_val = {"cw-dpo": 0.5, "ws-dpo": 0.35}
    for p in grid(job.GRID):
        for seed in seeds:
            for m in methods:
                for split in job.SPLITS:
                    shared, own = trial_configs(cfg, p, seed, m, split=split)
                    good = (p["align.beta"] == best_val[m]) == (split == "validation")
                    _fake_trial(shared, own, m, 0.7 if good else 0.6)
                    ledger.record(shared, own, m, split, seconds=1.0)
                    assert ledger.has(own)
    # the test record keeps the method's own rows (text dropped); its SFT models' rows go to the shared run's file
    _, own = trial_configs(cfg, {"align.beta": 0.5}, 0, "cw-dpo", split="test")
    mine = pq.read_table(ledger.eval_dir(own) / "responses.parquet")
    assert set(mine.column("method").to_pylist()) == {"cw-dpo"} and mine.num_rows == 80
    assert "response" not in mine.column_names
    refs = pq.read_table(ledger.path(trial_configs(cfg, {"align.beta": 0.5}, 0, "cw-dpo")[0].run_dir) / "references_test.parquet")
    assert refs.num_rows == 2 * 80  # sft-weak and sft, once each although four trials sampled them

    sel = job.selection(ledger, cfg, job.GRID, seeds, list(methods))
    assert {m: s["point"]["align.beta"] for m, s in sel.items()} == best_val
    # the selection reads validation records only: test results changing or vanishing change nothing
    for f in (ledger.root / "table").rglob("eval_test/metrics.json"):
        f.write_text(json.dumps(_metrics(f.parts[-3], 0.99, "sft-weak", "x")))
    assert job.selection(ledger, cfg, job.GRID, seeds, list(methods)) == sel
    # resume: every trial is recorded, so none runs again (no pipeline is started)
    monkeypatch.setattr("cwpo_ray.pipeline.run_pipeline", lambda *a, **k: pytest.fail("a recorded trial ran again"))
    assert not any(job.run_trial(ledger, cfg, p, s, m) for p in grid(job.GRID) for s in seeds for m in methods)
    # a reference sampled twice with different results is a reproducibility failure, not a silent overwrite
    shared, own = trial_configs(cfg, {"align.beta": 0.5}, 1, "cw-dpo", split="test")
    _fake_trial(shared, own, "cw-dpo", 0.7, ref_gold=0.5)
    with pytest.raises(RuntimeError, match="differs between two runs"):
        ledger.record(shared, own, "cw-dpo", "test", seconds=1.0)

    # the page from the ledger: both seeds complete, the selected points' test results (the method won every
    # comparison), the progress line
    data = job.collect(ledger, run, seeds, job.GRID)
    assert data["seeds"] == seeds and data["shares"]["cw-dpo"][0] == {f"p{i}": 1.0 for i in range(20)}
    text = job.report(data, tmp_path / "out", job.progress(ledger, run, seeds, job.GRID))
    assert "| ws-dpo | 1.000" in text and "| human-dpo | not run" in text
    assert "Part A 16/16 evaluations" in text
