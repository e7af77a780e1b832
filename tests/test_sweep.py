"""`cwpo sweep`: grid, selection on validation (pure), and a real Ray Tune sweep on a tiny synthetic task."""
import csv
import json
from pathlib import Path

import pytest

from cwpo_ray.config import ConfigError, build_config
from cwpo_ray.results import SweepResult, SweepRow, SweepSelection, read_result
from cwpo_ray.sweep.config import SweepConfig
from cwpo_ray.sweep.tune import (
    base_pipeline,
    grid,
    run_sweep,
    seed_overrides,
    select_per_method,
    slug,
    trial_configs,
    write_results,
)


def test_grid_slug_and_seed_fields():
    space = {"align.lr": [1e-4, 5e-5], "align.beta": [0.25, 0.5]}
    assert grid(space) == [{"align.lr": 1e-4, "align.beta": 0.25}, {"align.lr": 1e-4, "align.beta": 0.5},
                           {"align.lr": 5e-5, "align.beta": 0.25}, {"align.lr": 5e-5, "align.beta": 0.5}]
    assert slug({"align.lr": 1e-4, "prepare.labeled_fraction": 0.3}) == "align.lr=0.0001,prepare.labeled_fraction=0.3"
    assert slug({}) == "default"
    assert seed_overrides(3, synthetic=True) == ["synthetic.task.seed=3", "annotator.seed=3", "sft.seed=3",
                                                 "align.seed=3", "evaluate.sampling.seed=3"]
    assert "synthetic.task.seed=3" not in seed_overrides(3, synthetic=False)


def test_bad_sweep_config_fails_fast(tmp_path):
    for space, match in (({"beta": [0.5]}, "dotted pipeline key"), ({"evaluate.num_samples": [2]}, "dotted pipeline key"),
                         ({"align.seed": [1, 2]}, "seeds are swept with `seeds`"), ({"align.beta": []}, "at least one")):
        with pytest.raises(ConfigError, match=match):
            build_config(SweepConfig, {"space": space})
    with pytest.raises(ConfigError, match="align.nope"):
        base_pipeline(build_config(SweepConfig, {"pipeline": {"align": {"nope": 1}}}))
    with pytest.raises(ConfigError, match="methods"):  # before Ray or any trial starts
        run_sweep(build_config(SweepConfig, {"methods": ["kto"], "output_dir": str(tmp_path)}))
    with pytest.raises(ConfigError, match=r"^config error: pipeline\.evaluate\.prompts_path: set by the sweep"):
        run_sweep(build_config(SweepConfig, {"pipeline": {"evaluate": {"prompts_path": "x"}}, "output_dir": str(tmp_path)}))
    with pytest.raises(ConfigError, match="align.beta"):  # a value of the space is validated like user input
        run_sweep(build_config(SweepConfig, {"space": {"align.beta": [0.5, -1]}, "output_dir": str(tmp_path)}))


def test_upstream_points_of_a_seed_share_one_synthetic_task(tmp_path):
    """The task depends on the seed and synthetic.* only: a sweep over prepare.labeled_fraction builds it once
    per seed (the pipeline records a task outside its run folder beside the task, see test_pipeline)."""
    cfg = build_config(SweepConfig, {"output_dir": str(tmp_path), "pipeline_config": "demo", "methods": ["cw-dpo"],
                                     "seeds": [0, 1], "space": {"prepare.labeled_fraction": [0.1, 0.3],
                                                                                        "synthetic.task.num_pairs": [800, 1600]}})
    shared = {(f, n, s): trial_configs(cfg, {"prepare.labeled_fraction": f, "synthetic.task.num_pairs": n}, s, "cw-dpo")[0]
              for f in (0.1, 0.3) for n in (800, 1600) for s in (0, 1)}
    syn = {k: c.synthetic.output_dir for k, c in shared.items()}
    assert syn[(0.1, 800, 0)] == syn[(0.3, 800, 0)] == str(tmp_path / "shared" / "seed0" / "synthetic_synthetic.task.num_pairs=800")
    assert len(set(syn.values())) == 4  # (num_pairs, seed)
    assert len({c.run_dir for c in shared.values()}) == 8  # prepare, annotator, sft: one per (point, seed)
    assert shared[(0.3, 1600, 1)].synthetic.task.num_pairs == 1600 and shared[(0.3, 1600, 1)].synthetic.task.seed == 1
    plain = build_config(SweepConfig, {"output_dir": str(tmp_path), "pipeline_config": "demo", "space": {"prepare.labeled_fraction": [0.1, 0.3]}})
    assert trial_configs(plain, {"prepare.labeled_fraction": 0.1}, 0, "cw-dpo")[0].synthetic.output_dir == \
        str(tmp_path / "shared" / "seed0" / "synthetic")


@pytest.mark.timeout(600)
def test_a_task_outside_the_run_folder_is_built_once_for_every_run_naming_it(tmp_path, ray_session):
    from cwpo_ray.config import load_config
    from cwpo_ray.pipeline import DEMO_CONFIG, PipelineConfig, run_pipeline

    task = tmp_path / "shared" / "synthetic"
    common = ["synthetic.task.num_pairs=400", "synthetic.pretrain.num_texts=256", "synthetic.pretrain.epochs=1",
              f"synthetic.output_dir={task}", "stages=[prepare]"]
    runs = [run_pipeline(load_config(PipelineConfig, DEMO_CONFIG, [f"run_dir={tmp_path / r}", f"prepare.labeled_fraction={f}",
                                                                   *common])) for r, f in (("a", 0.2), ("b", 0.4))]
    assert [r.stages["synthesize"].skipped for r in runs] == [False, True]
    assert "synthesize" in json.loads((tmp_path / "shared" / "synthetic.manifest.json").read_text())
    a, b = (json.loads((tmp_path / r / "manifest.json").read_text()) for r in "ab")
    assert "synthesize" not in a and a["prepare"]["inputs"] == b["prepare"]["inputs"]  # the same task's files
    assert a["prepare"]["fingerprint"] != b["prepare"]["fingerprint"]  # split at 0.2 and 0.4
    task_files = {p: p.stat().st_mtime_ns for p in task.rglob("*") if p.is_file()}
    again = run_pipeline(load_config(PipelineConfig, DEMO_CONFIG, [f"run_dir={tmp_path / 'a'}", "prepare.labeled_fraction=0.2", *common]))
    assert again.stages["synthesize"].skipped and again.stages["prepare"].skipped
    assert {p: p.stat().st_mtime_ns for p in task.rglob("*") if p.is_file()} == task_files


def row(point, seed, method, gra, status="ok"):
    return SweepRow(point=point, seed=seed, method=method, val_gra=gra, val_gra_ci_low=gra, val_gra_ci_high=gra,
                    val_gold_gain=0.0, status=status)


def test_selection_is_per_method_on_mean_validation_gra_over_seeds():
    a, b, c = {"align.beta": 0.1}, {"align.beta": 0.5}, {"align.beta": 1.0}
    rows = [row(a, 0, "cw", 0.70), row(a, 1, "cw", 0.50),  # mean 0.60
            row(b, 0, "cw", 0.62), row(b, 1, "cw", 0.62),  # mean 0.62: selected
            row(c, 0, "cw", 0.90), row(c, 1, "cw", None, "error"),  # not finished in every seed
            row(a, 0, "ws", 0.55), row(a, 1, "ws", 0.55), row(b, 0, "ws", 0.55), row(b, 1, "ws", 0.55)]  # tie: first
    sel = select_per_method(rows)
    assert sel["cw"] == {"point": b, "validation_gra": pytest.approx(0.62), "validation_per_seed": [0.62, 0.62]}
    assert sel["ws"]["point"] == a


def test_selection_never_reads_test_numbers():
    """The selection is a function of the validation rows alone: any test result attached afterwards
    (here: the worst point scored best on test) changes nothing."""
    rows = [row({"align.beta": v}, 0, "cw", g) for v, g in ((0.1, 0.6), (0.5, 0.7))]
    before = select_per_method(rows)
    selected = {m: SweepSelection(**s, test_gra=0.99 if s["point"]["align.beta"] == 0.1 else 0.01) for m, s in before.items()}
    assert select_per_method(rows) == before and selected["cw"].point == {"align.beta": 0.5}


def test_write_results(tmp_path):
    rows = [row({"align.beta": b}, s, m, 0.5 + 0.1 * b) for m in ("cw-dpo", "ws-dpo") for b in (0.1, 0.5) for s in (0, 1)]
    sel = {m: SweepSelection(**s) for m, s in select_per_method(rows).items()}
    write_results(rows, sel, tmp_path)
    with open(tmp_path / "results.csv") as f:
        back = list(csv.DictReader(f))
    assert [(r["method"], r["point"], int(r["seed"]), float(r["val_gra"])) for r in back] == \
        [(r.method, slug(r.point), r.seed, r.val_gra) for r in rows]
    md = (tmp_path / "results.md").read_text()
    assert "| cw-dpo | `align.beta=0.5` | 0.550 (0.550, 0.550) | not run |" in md
    import matplotlib.image

    img = matplotlib.image.imread(tmp_path / "gra_sweep.png")
    assert img[..., :3].std() > 0.05  # not a blank canvas


@pytest.mark.timeout(1800)
def test_sweep_on_synthetic_task_selects_on_validation_then_tests(tmp_path, ray_session):
    cfg = build_config(SweepConfig, {
        "output_dir": str(tmp_path / "sweep"), "space": {"align.beta": [0.1, 0.5]}, "methods": ["cw-dpo"],  # per method: unit tests above
        # the session's Ray has 2 CPUs and the trial driver holds 0.01: workers take half a CPU each here
        "pipeline": {"synthetic": {"task": {"num_pairs": 600}, "pretrain": {"num_texts": 512, "epochs": 1}},
                     "annotator": {"epochs": 1, "cpus_per_worker": 0.5},
                     "sft": {"epochs": 1, "cpus_per_worker": 0.5}, "align": {"epochs": 1, "cpus_per_worker": 0.5},
                     # HF generation: no vLLM engine start per evaluation (vLLM's path: test_evaluate, test_pipeline)
                     "evaluate": {"max_prompts": 12, "num_samples": 2, "num_bootstrap": 200, "engine": {"backend": "hf"}},
                     "stages": ["prepare", "train-annotator", "annotate", "sft", "align", "evaluate"]},
    })
    s = run_sweep(cfg)
    assert s.trials == 2 and s.ok == 2, s.rows
    out = Path(cfg.output_dir)
    val = {}
    for r in s.rows:  # every trial was scored on the validation split
        m = json.loads((out / "trials" / "seed0" / slug(r.point) / r.method / "eval_validation" / "metrics.json").read_text())
        assert m["prompts_path"].endswith("/validation") and m["methods"][r.method]["gra"] == r.val_gra
        val[(r.method, slug(r.point))] = r.val_gra
    for method, sel in s.selected.items():
        vals = [(p, g) for (m, p), g in val.items() if m == method]  # in grid order
        best = next(p for p, g in vals if g == max(g for _, g in vals))  # a tie goes to the first point
        assert slug(sel.point) == best
        t = json.loads((out / "trials" / "seed0" / slug(sel.point) / method / "eval_test" / "metrics.json").read_text())
        assert t["prompts_path"].endswith("/test") and sel.test_gra == pytest.approx(t["methods"][method]["gra"])
        assert sel.test_gra_ci[0] <= sel.test_gra <= sel.test_gra_ci[1]
    assert set(s.selected) == {"cw-dpo"}
    assert read_result(SweepResult, out / "summary.json") == s
    assert (out / "results.md").exists() and (out / "gra_sweep.png").exists()
    # the annotator was trained once for the shared (upstream point, seed), not once per trial
    manifest = json.loads((out / "shared" / "seed0" / "default" / "manifest.json").read_text())
    assert "train-annotator" in manifest and not (out / "trials" / "seed0" / "align.beta=0.1" / "cw-dpo" / "annotator").exists()
