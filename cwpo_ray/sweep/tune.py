"""`cwpo sweep` on Ray Tune (Train V2 style): each trial is a function that runs the pipeline stages
it needs — the TorchTrainer inside `align` reports through ``TuneReportCallback`` — and ends by
reporting its GRA. Passing a Trainer to ``Tuner`` is not supported in Train V2; see shared notes.
"""
from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

from cwpo_ray.config import load_config
from cwpo_ray.results import SweepResult, SweepRow, write_result
from cwpo_ray.sweep.config import SweepConfig


def trial_name(p: dict) -> str:
    return f"lf{p['labeled_fraction']}-{p['loss']}-{p['weighting']}-b{p['beta']}"


def method_name(p: dict) -> str:
    prefix = {"confidence": "cw-", "none": "ws-", "top_fraction": "top-"}.get(p["weighting"], p["weighting"] + "-")
    return f"{prefix}{p['loss']}"


def base_pipeline(cfg: SweepConfig):
    from cwpo_ray.config import build_config, deep_merge
    from cwpo_ray.pipeline import DEMO_CONFIG, PipelineConfig

    base: dict = {}
    if cfg.pipeline_config:
        path = DEMO_CONFIG if cfg.pipeline_config == "demo" else Path(cfg.pipeline_config)
        base = load_config(PipelineConfig, path).model_dump(mode="json", exclude_unset=True)
    return build_config(PipelineConfig, deep_merge(base, cfg.pipeline))


def run_trial(params: dict, sweep: dict) -> dict:
    """One trial: shared stages for its labeled fraction (under a lock), then its own align + evaluate."""
    from filelock import FileLock
    from ray import tune

    from cwpo_ray.config import updated
    from cwpo_ray.layout import RunLayout
    from cwpo_ray.pipeline import MethodSpec, run_pipeline

    cfg = SweepConfig.model_validate(sweep)
    out = Path(cfg.output_dir).resolve()
    base = base_pipeline(cfg)
    shared_run = RunLayout.of(out / f"labeled_fraction={params['labeled_fraction']}")
    shared = updated(base, run_dir=str(shared_run.root), stages=["prepare", "train-annotator", "annotate", "sft"],
                     prepare=updated(base.prepare, "prepare", labeled_fraction=params["labeled_fraction"]))
    with FileLock(shared_run.root / ".lock"):  # one trial per labeled fraction runs (or finds) the shared stages
        run_pipeline(shared)
    name = method_name(params)
    tdir = out / "trials" / trial_name(params)
    # This trial's align + evaluate in its own folder; the upstream stages' outputs live in the shared one.
    own = updated(shared, run_dir=str(tdir), stages=["align", "evaluate"],
                  methods={name: MethodSpec(loss=params["loss"], weighting=params["weighting"],
                                            top_fraction=cfg.top_fraction, beta=params["beta"])},
                  synthetic=updated(shared.synthetic, output_dir=str(shared_run.synthetic)) if shared.synthetic else None,
                  prepare=updated(shared.prepare, output_dir=str(shared_run.data)),
                  annotator=updated(shared.annotator, output_dir=str(shared_run.annotator)),
                  annotate=updated(shared.annotate, output_dir=str(shared_run.annotated)),
                  sft=updated(shared.sft, output_dir=str(shared_run.sft)))
    from ray.tune.integration.ray_train import TuneReportCallback

    res = run_pipeline(own, train_callbacks=[TuneReportCallback()])
    m = res.evaluation.methods[name]
    final = {"gra": m.gra, "gra_ci_low": m.gra_ci[0], "gra_ci_high": m.gra_ci[1],
             "ties": m.tie_rate, "gold_gain": m.mean_gain, "trial_dir": str(tdir), "method": name, **params}
    tune.report(final)
    return final


def run_sweep(cfg: SweepConfig) -> SweepResult:
    from ray import tune

    from cwpo_ray.runtime import init_ray

    ray_cfg = cfg.ray
    if not (cfg.ray.address or os.environ.get("RAY_ADDRESS")):
        # Local Ray: trial drivers hold trial_cpus each and mostly wait on their TorchTrainer, whose
        # workers want whole CPUs; one extra logical CPU keeps the two from deadlocking on a small box.
        ray_cfg = cfg.ray.model_copy(update={"num_cpus": (cfg.ray.num_cpus or os.cpu_count() or 1)
                                             + math.ceil(cfg.max_concurrent_trials * cfg.trial_cpus)})
    init_ray(ray_cfg)
    base_pipeline(cfg)  # fail fast on a bad base config, before any trial starts
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    space = {k: tune.grid_search(getattr(cfg, k)) for k in ("labeled_fraction", "loss", "weighting", "beta")}
    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=cfg.model_dump(mode="json")),
                                    {"CPU": cfg.trial_cpus})
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
        run_config=tune.RunConfig(name="sweep", storage_path=str(out / "tune")),
    )
    grid_results = tuner.fit()
    rows = []
    for r in grid_results:
        m = r.metrics or {}  # what the trial reported to Tune (run_trial's `final`)
        rows.append(SweepRow(**{k: r.config[k] for k in ("labeled_fraction", "loss", "weighting", "beta")},
                             method=method_name(r.config), gra=m.get("gra"), gra_ci_low=m.get("gra_ci_low"),
                             gra_ci_high=m.get("gra_ci_high"), gold_gain=m.get("gold_gain"),
                             status="error" if r.error else ("stopped_early" if m.get("gra") is None else "ok")))
    rows.sort(key=lambda r: (r.labeled_fraction, r.method, r.beta))
    write_results(rows, out)
    summary = SweepResult(trials=len(rows), ok=sum(r.status == "ok" for r in rows), seconds=round(time.time() - t, 1),
                          results_csv=str(out / "results.csv"), results_md=str(out / "results.md"), rows=rows)
    write_result(out, summary)
    return summary


def write_results(rows: list[SweepRow], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["labeled_fraction", "method", "loss", "weighting", "beta", "gra", "gra_ci_low", "gra_ci_high", "gold_gain", "status"]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(r.model_dump() for r in rows)

    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(fmt(getattr(r, c)) for c in cols) + " |" for r in rows]
    (out / "results.md").write_text("\n".join(md) + "\n")

    ok = [r for r in rows if r.gra is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, xkey, other in ((axes[0], "labeled_fraction", "beta"), (axes[1], "beta", "labeled_fraction")):
        groups: dict = {}
        for r in ok:
            groups.setdefault((r.method, getattr(r, other)), []).append(r)
        for (method, o), rs in sorted(groups.items()):
            rs = sorted(rs, key=lambda r: getattr(r, xkey))
            x = [getattr(r, xkey) for r in rs]
            y = [r.gra for r in rs]
            err = [[r.gra - r.gra_ci_low for r in rs], [r.gra_ci_high - r.gra for r in rs]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{method} ({other}={o})")
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(xkey.replace("_", " "))
        ax.set_ylabel("GRA vs SFT")
        ax.set_title(f"GRA vs {xkey.replace('_', ' ')}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "gra_sweep.png", dpi=120)
    plt.close(fig)


def format_sweep(s: SweepResult) -> str:
    lines = [f"sweep: {s.ok}/{s.trials} trials finished in {s.seconds:.0f}s"]
    for r in s.rows:
        g = "—" if r.gra is None else f"{r.gra:.3f} [{r.gra_ci_low:.3f}, {r.gra_ci_high:.3f}]"
        lines.append(f"  lf={r.labeled_fraction:<5} {r.method:<12} beta={r.beta:<5} GRA {g}  ({r.status})")
    lines.append(f"  table: {s.results_md}  plot: {Path(s.results_md).parent / 'gra_sweep.png'}")
    return "\n".join(lines)
