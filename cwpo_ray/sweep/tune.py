"""`cwpo sweep` on Ray Tune (Train V2 style): each trial is a function that runs the pipeline stages it
needs for one (grid point, seed, method) — the TorchTrainer inside `align` reports through
``TuneReportCallback`` — and ends by reporting the method's validation GRA. Passing a Trainer to
``Tuner`` is not supported in Train V2.

Run folders under ``output_dir`` (a local path or a URI: every location is a string joined with
:func:`cwpo_ray.io.join`)::

    shared/seed{S}/synthetic/             the synthetic task, built once per seed (``synthetic_{point}/`` per
                                          value of ``synthetic.*`` keys in the space) for every upstream point
    shared/seed{S}/{upstream point}/      prepare, train-annotator, annotate, sft (shared)
    trials/seed{S}/{point}/{method}/      align/{method}/, eval_validation/, eval_test/ (selected points)
    tune/                                 Ray Tune's experiment state (RunConfig.storage_path)
    results.csv  results.md  gra_sweep.png  summary.json

The selection (:func:`select_per_method`) reads validation rows only; the test evaluation runs after it.
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import os
import time
from pathlib import Path

from cwpo_ray import console, io
from cwpo_ray.config import load_config
from cwpo_ray.results import SweepResult, SweepRow, SweepSelection, write_result
from cwpo_ray.sweep.config import UPSTREAM, SweepConfig

SEED_FIELDS = ("annotator.seed", "sft.seed", "align.seed", "evaluate.sampling.seed")  # + synthetic.task.seed


# Pipeline fields each trial sets itself (run folders, the split it is scored on).
OWNED = ("run_dir", "synthetic.output_dir", "prepare.output_dir", "annotator.output_dir", "annotate.output_dir",
         "sft.output_dir", "evaluate.prompts_path", "evaluate.output_dir")


def _is_set(data: dict, dotted: str) -> bool:
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def grid(space: dict[str, list]) -> list[dict]:
    """The product of the space's values, in the order given (first key slowest)."""
    keys = list(space)
    return [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]


def slug(point: dict) -> str:
    """A folder name for a point: ``align.beta=0.5,align.lr=0.0001`` (``default`` when empty)."""
    s = ",".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(point.items()))
    return (s or "default").replace("/", "_").replace(" ", "")


def seed_overrides(seed: int, synthetic: bool) -> list[str]:
    """Every seed field of the pipeline set to ``seed`` (the task's too on the synthetic task)."""
    return [f"{k}={seed}" for k in (("synthetic.task.seed",) if synthetic else ()) + SEED_FIELDS]


def base_pipeline(cfg: SweepConfig):
    from cwpo_ray.config import build_config, deep_merge
    from cwpo_ray.pipeline import DEMO_CONFIG, PipelineConfig

    base: dict = {}
    if cfg.pipeline_config:
        path = DEMO_CONFIG if cfg.pipeline_config == "demo" else Path(cfg.pipeline_config)
        base = load_config(PipelineConfig, path).model_dump(mode="json", exclude_unset=True)
    return build_config(PipelineConfig, deep_merge(base, cfg.pipeline))


def trial_configs(cfg: SweepConfig, point: dict, seed: int, method: str, split: str = "validation"):
    """(shared config, trial config) of one trial: the shared one runs the upstream stages for the point's
    upstream keys and the seed; the trial one aligns ``method`` and evaluates it on ``split``."""
    from cwpo_ray.config import build_config
    from cwpo_ray.layout import RunLayout
    from cwpo_ray.pipeline import PipelineConfig

    base = base_pipeline(cfg)
    out = io.absolute(cfg.output_dir)
    data = base.model_dump(mode="json", exclude_unset=True)
    seeded = [*seed_overrides(seed, base.synthetic is not None), *(f"{k}={json.dumps(v)}" for k, v in point.items())]
    up = {k: v for k, v in point.items() if k.split(".")[0] in UPSTREAM}
    shared_run = RunLayout.of(io.join(out, "shared", f"seed{seed}", slug(up)))
    methods = cfg.methods or list(base.methods)
    upstream = [s for s in ("prepare", "train-annotator", "annotate", "sft") if s in base.stages]
    task = []
    if base.synthetic is not None:  # the task depends on the seed and synthetic.* only: one per (seed, its keys)
        syn = {k: v for k, v in point.items() if k.split(".")[0] == "synthetic"}
        task = [f"synthetic.output_dir={io.join(out, 'shared', f'seed{seed}', f'synthetic_{slug(syn)}' if syn else 'synthetic')}"]
    shared = build_config(PipelineConfig, {**data, "run_dir": str(shared_run.root), "stages": upstream,
                                           "methods": {m: base.methods[m].model_dump() for m in methods}}, [*seeded, *task])
    tdir = io.join(out, "trials", f"seed{seed}", slug(point), method)
    own = {**data, "run_dir": tdir, "stages": ["align", "evaluate"],
           "methods": {method: base.methods[method].model_dump()}}
    paths = [f"prepare.output_dir={shared_run.data}", f"annotator.output_dir={shared_run.annotator}",
             f"annotate.output_dir={shared_run.annotated}", f"sft.output_dir={shared_run.sft}",
             f"evaluate.prompts_path={shared_run.data}/{split}", f"evaluate.output_dir={io.join(tdir, f'eval_{split}')}"]
    return shared, build_config(PipelineConfig, own, [*seeded, *task, *paths])


def run_trial(params: dict, sweep: dict) -> dict:
    """One trial: the shared stages for its upstream point and seed (under a lock: :func:`cwpo_ray.io.lock_file`
    of the shared run folder; the trial drivers all run on the head node, see :func:`run_sweep`), then its
    own align + validation evaluate."""
    from filelock import FileLock
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from cwpo_ray.pipeline import run_pipeline

    cfg = SweepConfig.model_validate(sweep)
    point, seed, method = params["point"], params["seed"], params["method"]
    shared, own = trial_configs(cfg, point, seed, method)
    with FileLock(io.lock_file(shared.run_dir)):  # one trial per (upstream point, seed) runs (or finds) them
        run_pipeline(shared)
    res = run_pipeline(own, train_callbacks=[TuneReportCallback()])
    m = res.evaluation.methods[method]
    final = {"val_gra": m.gra, "val_gra_ci_low": m.gra_ci[0], "val_gra_ci_high": m.gra_ci[1],
             "val_gold_gain": m.mean_gain, "prompts_path": res.evaluation.prompts_path, "trial_dir": own.run_dir}
    tune.report(final)
    return final


def select_per_method(rows: list[SweepRow]) -> dict[str, dict]:
    """Per method, the point with the highest validation GRA averaged over its seeds (first in grid order
    on a tie), among points that finished in every seed. Reads validation results only."""
    by: dict[str, dict[str, list[SweepRow]]] = {}
    for r in rows:
        by.setdefault(r.method, {}).setdefault(json.dumps(r.point, sort_keys=True), []).append(r)
    seeds = sorted({r.seed for r in rows})
    out = {}
    for method, points in by.items():
        best = None
        for rs in points.values():
            if sorted(r.seed for r in rs if r.status == "ok") != seeds:
                continue
            mean = sum(r.val_gra for r in rs) / len(rs)
            if best is None or mean > best["validation_gra"]:
                best = {"point": rs[0].point, "validation_gra": mean,
                        "validation_per_seed": [r.val_gra for r in sorted(rs, key=lambda r: r.seed)]}
        if best is not None:
            out[method] = best
    return out


def check_sweep_storage(cfg: SweepConfig) -> None:
    """Fail fast, before Ray starts, with one line naming the field: ``output_dir``'s store (scheme,
    endpoint, credentials, bucket). The pipeline's own inputs are checked by each stage as it starts."""
    io.check_storage(cfg.output_dir, "output_dir")


# Every trial driver runs on the head node (where `cwpo sweep`'s own driver runs, locally or under `ray job
# submit`): the lock on a shared run folder (io.lock_file) then serialises all of them, on an object store
# too. A trial driver holds trial_cpus and mostly waits on its stages' Ray tasks and trainers, placed anywhere.
HEAD_NODE = {"node:__internal_head__": 0.001}


def run_sweep(cfg: SweepConfig) -> SweepResult:
    from ray import tune

    from cwpo_ray.runtime import init_ray

    check_sweep_storage(cfg)
    ray_cfg = cfg.ray
    if not (cfg.ray.address or os.environ.get("RAY_ADDRESS")):
        # Local Ray: trial drivers hold trial_cpus each and mostly wait on their TorchTrainer, whose
        # workers want whole CPUs; one extra logical CPU keeps the two from deadlocking on a small box.
        ray_cfg = cfg.ray.model_copy(update={"num_cpus": (cfg.ray.num_cpus or os.cpu_count() or 1)
                                             + math.ceil(cfg.max_concurrent_trials * cfg.trial_cpus)})
    base = base_pipeline(cfg)  # fail fast on a bad base config, before any trial starts
    owned = [f for f in OWNED if _is_set(cfg.pipeline, f)]
    if owned:
        from cwpo_ray.config import ConfigError

        raise ConfigError(f"config error: pipeline.{owned[0]}: set by the sweep per trial (its run folders and "
                          "the validation / test split), not here")
    methods = cfg.methods or list(base.methods)
    unknown = [m for m in methods if m not in base.methods]
    if unknown:
        from cwpo_ray.config import ConfigError

        raise ConfigError(f"config error: methods: {unknown} not in the pipeline's methods {sorted(base.methods)}")
    points = grid(cfg.space)
    for p in points:  # every key and value of the space must make a valid pipeline config
        trial_configs(cfg, p, cfg.seeds[0], methods[0])
    init_ray(ray_cfg)
    out = io.absolute(cfg.output_dir)
    io.makedirs(out)
    space = {"point": tune.grid_search(points), "seed": tune.grid_search(cfg.seeds), "method": tune.grid_search(methods)}
    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=cfg.model_dump(mode="json")),
                                    {"CPU": cfg.trial_cpus, **HEAD_NODE})
    scheduler = None
    if cfg.asha:
        from ray.tune.schedulers import ASHAScheduler

        a = cfg.asha
        scheduler = ASHAScheduler(metric=a.metric, mode=a.mode, grace_period=a.grace_period,
                                  reduction_factor=a.reduction_factor, max_t=a.max_t)
    t = time.time()
    tuner = tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.max_concurrent_trials, scheduler=scheduler),
        run_config=tune.RunConfig(name="sweep", storage_path=io.join(out, "tune"),
                                  # quiet console: no status tables; one bar of finished trials instead
                                  verbose=0 if console.quiet() else None,
                                  callbacks=[trial_bar(len(points) * len(cfg.seeds) * len(methods))]),
    )
    rows = []
    for r in tuner.fit():
        m = r.metrics or {}  # what the trial reported to Tune (run_trial's `final`)
        rows.append(SweepRow(point=r.config["point"], seed=r.config["seed"], method=r.config["method"],
                             val_gra=m.get("val_gra"), val_gra_ci_low=m.get("val_gra_ci_low"),
                             val_gra_ci_high=m.get("val_gra_ci_high"), val_gold_gain=m.get("val_gold_gain"),
                             status="error" if r.error else ("stopped_early" if m.get("val_gra") is None else "ok")))
    rows.sort(key=lambda r: (r.method, points.index(r.point), r.seed))
    selected = {m: SweepSelection(**s) for m, s in select_per_method(rows).items()}
    if cfg.final_test:
        for method, s in selected.items():
            selected[method] = final_test(cfg, method, s)
    write_results(rows, selected, out)
    summary = SweepResult(trials=len(rows), ok=sum(r.status == "ok" for r in rows), seconds=round(time.time() - t, 1),
                          results_csv=io.join(out, "results.csv"), results_md=io.join(out, "results.md"), rows=rows,
                          selected=selected)
    write_result(out, summary)
    return summary


def trial_bar(total: int):
    """A Tune callback: a console bar of finished trials (hidden off a terminal, see
    :func:`cwpo_ray.console.bar`)."""
    from ray import tune

    class TrialBar(tune.Callback):
        def setup(self, **info):
            self.bar = console.bar(total=total, desc="sweep", unit="trial")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.bar.update(1)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.bar.update(1)

        def on_experiment_end(self, trials, **info):
            self.bar.close()

    return TrialBar()


def final_test(cfg: SweepConfig, method: str, s: SweepSelection) -> SweepSelection:
    """The selected point of ``method`` evaluated once on the test prompts in every seed (its align is
    reused from the trial), with GRA over seeds x prompts."""
    from cwpo_ray.evaluate.compare import gra_over_seeds, read_responses
    from cwpo_ray.pipeline import run_pipeline

    dirs = []
    for seed in cfg.seeds:
        _, own = trial_configs(cfg, s.point, seed, method, split="test")
        res = run_pipeline(own)
        dirs.append(res.evaluation.output_dir)
    g = gra_over_seeds(read_responses(dirs), method)
    # validated (model_copy(update=...) would keep the list where the model holds a tuple)
    return SweepSelection.model_validate({**s.model_dump(), "test_gra": g["gra"], "test_gra_ci": g["ci"],
                                          "test_per_seed": g["per_seed"]})


def write_results(rows: list[SweepRow], selected: dict[str, SweepSelection], out: str | Path) -> None:
    """``results.csv``, ``results.md`` and ``gra_sweep.png`` in ``out`` (a local folder or a URI: written in a
    local staging folder, then uploaded, :func:`cwpo_ray.io.staged_dir`)."""
    with io.staged_dir(str(out)) as work:
        _write_results(rows, selected, Path(work))


def _write_results(rows: list[SweepRow], selected: dict[str, SweepSelection], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["method", "point", "seed", "val_gra", "val_gra_ci_low", "val_gra_ci_high", "val_gold_gain", "status"]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows({**r.model_dump(), "point": slug(r.point)} for r in rows)

    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    md = ["# Sweep", "", "Trials (validation split):", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(fmt(slug(r.point) if c == "point" else getattr(r, c)) for c in cols) + " |" for r in rows]
    md += ["", "Selected per method on validation GRA (mean over seeds); the test split is read only after:", "",
           "| method | selected | validation GRA (per seed) | test GRA [95% CI over seeds x prompts] (per seed) |",
           "|---|---|---|---|"]
    for m, s in selected.items():
        test = "not run" if s.test_gra is None else (
            f"{s.test_gra:.3f} [{s.test_gra_ci[0]:.3f}, {s.test_gra_ci[1]:.3f}] ({', '.join(f'{v:.3f}' for v in s.test_per_seed)})")
        md.append(f"| {m} | `{slug(s.point)}` | {s.validation_gra:.3f} ({', '.join(f'{v:.3f}' for v in s.validation_per_seed)}) "
                  f"| {test} |")
    (out / "results.md").write_text("\n".join(md) + "\n")

    ok = [r for r in rows if r.val_gra is not None]
    labels = list(dict.fromkeys(slug(r.point) for r in ok))
    methods = list(dict.fromkeys(r.method for r in ok))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(labels) * max(1, len(methods)) / 2 + 2), 4))
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        ys = []
        for lab in labels:
            v = [r.val_gra for r in ok if r.method == m and slug(r.point) == lab]
            ys.append(sum(v) / len(v) if v else float("nan"))
        ax.bar([j + i * width for j in range(len(labels))], ys, width, label=m)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(labels))], labels, rotation=20, fontsize=7)
    ax.set_ylabel("validation GRA vs SFT (mean over seeds)")
    ax.set_title("Sweep: validation GRA per point and method")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "gra_sweep.png", dpi=120)
    plt.close(fig)


def format_sweep(s: SweepResult) -> str:
    lines = [f"sweep: {s.ok}/{s.trials} trials finished in {s.seconds:.0f}s (validation split)"]
    for r in s.rows:
        g = "—" if r.val_gra is None else f"{r.val_gra:.3f} [{r.val_gra_ci_low:.3f}, {r.val_gra_ci_high:.3f}]"
        lines.append(f"  {r.method:<12} seed {r.seed} {slug(r.point)}: validation GRA {g}  ({r.status})")
    for m, sel in s.selected.items():
        t = "" if sel.test_gra is None else f"; test GRA {sel.test_gra:.3f} [{sel.test_gra_ci[0]:.3f}, {sel.test_gra_ci[1]:.3f}]"
        lines.append(f"  selected for {m}: {slug(sel.point)} (validation GRA {sel.validation_gra:.3f}{t})")
    lines.append(f"  table: {s.results_md}  plot: {io.join(io.parent(s.results_md), 'gra_sweep.png')}")
    return "\n".join(lines)
