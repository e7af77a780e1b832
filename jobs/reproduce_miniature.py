"""The paper's protocol in miniature on the embedded synthetic task (regenerates docs/results/miniature.md).

    python jobs/reproduce_miniature.py [--seeds 0 1 2 3 4] [--run-dir runs/miniature] [--hours H]
                                       [--ledger docs/results/miniature_runs] [--out docs/results]
                                       [--grid align.beta=0.35,0.5] [--plan] [--report-only]

9.1 hours of recorded trials on a 2-core CPU machine (measured: Part A 6.6 h over its 5 seeds, 1.7 h for seed 0 and
1.1–1.3 h for each of the others, median trial ~2 min; Part B 2.5 h for its 75 students; not run in CI), so it runs in pieces and resumes:
every finished trial is recorded in the **ledger** (``docs/results/miniature_runs``, committed to git:
the evaluation records the page needs, ~40 KB per trial, no models), and a trial whose record is there
never runs again. ``--hours`` stops starting new trials after that long; commit the ledger and run the
same command again, here or on another machine, to go on. The page is rebuilt from the ledger alone
(``--report-only``) and says how far the runs got. Within one invocation, the shared upstream runs of a
seed (annotator, weak labels, SFT models) are reused through the pipeline's manifest; a new invocation
rebuilds those of the seed it resumes in (the same config and seed give the same numbers on the same
kind of machine, and the ledger checks it: an SFT model's test responses must equal those recorded by an
earlier trial, so the trials of one seed must come from one kind of machine; each record names it).
Several processes may share one ledger (its writes hold a file lock), each with its own ``--seeds`` and
``--run-dir``, on a machine with cores to spare. Not on 2 cores: measured there (2026-12-04), a second
process's synthesize slowed from about 2 to over 12 minutes beside the first one's trials (both size their
torch threads to the whole machine), so one process at a time is faster.

Protocol (Afzali, Brbic, Jeon, ICLR 2026; their Appendix G where it applies to tiny models):
- Base: the demo config (task, tiny pretrained backbones, annotator, SFT and align recipe) as it was when the
  first trials were recorded, frozen in ``jobs/configs/pipeline.miniature_base.yaml`` so that the demo can change
  while the reproduction still resumes; with the paper's student initialisation (``sft_data:
  method_labels``: SFT on (x, y+) of D_unlabeled by the labels the method uses; each method is regularised
  towards and compared with its own SFT model) and a test split of >= 400 prompts (``prepare.test_fraction``).
- Part A (labeled fraction 0.3, D_labeled / D_unlabeled = 30 / 70 of the training prompts): the trials of
  ``cwpo sweep`` (its :func:`~cwpo_ray.sweep.tune.trial_configs`: run folders, seeds, splits) over GRID x
  METHODS x seeds, run one after another by this job rather than by Ray Tune so that the ledger can carry
  them across sessions. Each trial aligns its method and evaluates it on the validation prompts and, so
  that no model has to be kept until the selection, on the test prompts. The selection is the sweep's
  (:func:`~cwpo_ray.sweep.tune.select_per_method`) over the validation records alone: per method, the
  point with the highest mean validation GRA. The page reads the test records of the selected points only.
- Part B, the labeled-fraction curve (Figure 3 left): D_unlabeled fixed (``prepare.unlabeled_fraction``
  0.5: the same half of the training prompts at every fraction), labeled fraction 0.1 ... 0.5; CW-DPO,
  WS-DPO and DPO on D_labeled at the points Part A selected for them (not re-selected per fraction), on
  test. Human-100 (all training prompts, human labels) is the same data at every fraction: Part A's row.
  Run as one sweep over ``prepare.labeled_fraction`` (``{run-dir}/curve``): per seed, the synthetic task is
  built once and shared by the five fractions (:func:`~cwpo_ray.sweep.tune.trial_configs`).
- Statistics: GRA per method = mean over seeds of the share of (prompt, sample) comparisons its response
  wins against its reference's (4 samples per prompt); CIs are two-level bootstraps over seeds x prompts;
  a difference between two methods is paired per prompt (:mod:`cwpo_ray.evaluate.compare`) and its
  verdict says which way its CI lies or that it contains 0.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The demo config frozen when the ledger's first trials ran (every trial of the reproduction must share it).
BASE_CONFIG = Path(__file__).resolve().parent / "configs" / "pipeline.miniature_base.yaml"
GRID = {"align.beta": [0.35, 0.5]}  # shared by every method; lr / epochs: the demo's (chosen on validation)
FRACTIONS = [0.1, 0.2, 0.3, 0.4, 0.5]
UNLABELED_FIXED = 0.5
TEST_FRACTION = 0.18  # ~430 test prompts from the demo's 4,000 pairs (0.1 gives ~240)


def _m(labels: str, loss: str = "dpo", weighting: str = "none", **kw) -> dict:
    return {"labels": labels, "loss": loss, "weighting": weighting, **kw}


# name -> MethodSpec fields. The paper's names: Table 1 (Human / WS / CW x DPO, IPO, rDPO), Table 3 (Human-100),
# Figure 3 right (DPO on D_labeled), Figure 2 (top-N% most confident weak labels; top-100% = WS-DPO),
# Table 5 (weightings C1 = 2(σ(Δ) − ½) = CW-DPO, C2 = σ(Δ), C3 = min(Δ, 1), C4 = min(0.2Δ, 1)).
METHODS = {
    "human-dpo": _m("human_unlabeled"),
    "ws-dpo": _m("weak"), "cw-dpo": _m("weak", weighting="confidence"),
    "ws-ipo": _m("weak", "ipo"), "cw-ipo": _m("weak", "ipo", "confidence"),
    "ws-rdpo": _m("weak", "rdpo"), "cw-rdpo": _m("weak", "rdpo", "confidence"),
    "human-100": _m("human_all"),
    "labeled-dpo": _m("human_labeled"),
    "top30-dpo": _m("weak", weighting="top_fraction", top_fraction=0.3),
    "top50-dpo": _m("weak", weighting="top_fraction", top_fraction=0.5),
    "top75-dpo": _m("weak", weighting="top_fraction", top_fraction=0.75),
    "c2-dpo": _m("weak", weighting="sigmoid_delta"),
    "c3-dpo": _m("weak", weighting="clip_delta"),
    "c4-dpo": _m("weak", weighting="scaled_clip_delta"),
}
CURVE_METHODS = ["cw-dpo", "ws-dpo", "labeled-dpo"]


def pipeline_overrides() -> dict:
    """Deep-merged over the demo config by the sweep (its `pipeline` field)."""
    return {"sft_data": "method_labels", "prepare": {"test_fraction": TEST_FRACTION},
            "evaluate": {"max_prompts": None}, "methods": METHODS,
            "stages": ["prepare", "train-annotator", "annotate", "sft", "align", "evaluate"]}


def sweep_config(run: Path, seeds: list[int], grid: dict, pipeline: dict | None = None, methods=None, space=None):
    from cwpo_ray.config import deep_merge
    from cwpo_ray.sweep.config import SweepConfig

    return SweepConfig.model_validate({
        "output_dir": str(run), "pipeline_config": str(BASE_CONFIG), "pipeline": deep_merge(pipeline_overrides(), pipeline or {}),
        "space": space or grid, "methods": methods or list(METHODS), "seeds": seeds, "final_test": True})


def curve_config(run: Path, seeds: list[int], grid: dict):
    """Part B as one sweep over the labeled fraction (an upstream key: one prepare, annotator, annotate and SFT
    per fraction and seed; the synthetic task once per seed, shared by the fractions)."""
    return sweep_config(run / "curve", seeds, grid, {"prepare": {"unlabeled_fraction": UNLABELED_FIXED}},
                        methods=CURVE_METHODS, space={"prepare.labeled_fraction": FRACTIONS, **grid})


def curve_point(point: dict, fraction: float) -> dict:
    """A Part A point (the one selected for a method) at one labeled fraction."""
    return {**point, "prepare.labeled_fraction": fraction}


# ---------------------------------------------------------------------------------------------- ledger
# The run folders (models, checkpoints, Ray logs: ~4 MB per trial) live in --run-dir and are not kept; what
# the page needs is copied, as each trial finishes, into the ledger: a compact mirror of the run folder's
# layout that is committed to git, so the job resumes across machines and sessions (a finished trial is
# one whose record is in the ledger). Per trial: eval_validation/metrics.json (the validation GRA the
# selection reads) and eval_test/{metrics.json, responses.parquet} (the method's own test responses, text
# dropped); per shared upstream run: label_stats.json and references_test.parquet (its SFT models' test
# responses, merged over the trials that sampled them, and checked equal where two trials did).
LEDGER = Path(__file__).resolve().parents[1] / "docs" / "results" / "miniature_runs"
RESPONSE_COLUMNS = ["method", "prompt_id", "sample", "num_tokens", "finish_reason", "gold"]
SPLITS = ("validation", "test")
MACHINE = {"cpus": os.cpu_count(), "platform": platform.machine()}  # in each record: where it was measured


class Ledger:
    def __init__(self, run: Path, root: Path):
        self.run, self.root = run.resolve(), root

    def path(self, run_path: str | Path) -> Path:
        """Where the ledger mirrors a path of the run folder."""
        return self.root / Path(run_path).resolve().relative_to(self.run)

    def has(self, own) -> bool:
        return (self.path(own.evaluate.output_dir) / "metrics.json").exists()

    def record(self, shared, own, method: str, split: str, seconds: float) -> None:
        """Copy a finished evaluation into the ledger, under the ledger's file lock (several job processes,
        one per seed, may share a ledger: see the module docstring)."""
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / ".lock")):
            self._record(shared, own, method, split, seconds)

    def _record(self, shared, own, method: str, split: str, seconds: float) -> None:
        import shutil

        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        src, dst = Path(own.evaluate.output_dir), self.path(own.evaluate.output_dir)
        dst.mkdir(parents=True, exist_ok=True)
        up = self.path(shared.run_dir)
        up.mkdir(parents=True, exist_ok=True)
        stats = Path(shared.run_dir) / "label_stats.json"
        if stats.exists():
            shutil.copyfile(stats, up / "label_stats.json")
        if split == "test":
            t = pq.read_table(src / "responses.parquet").select(RESPONSE_COLUMNS)
            mine = pc.equal(t.column("method"), method)
            pq.write_table(t.filter(mine), dst / "responses.parquet", compression="zstd")
            refs, ref_file = t.filter(pc.invert(mine)), up / "references_test.parquet"
            if ref_file.exists():
                refs = merge_references(pq.read_table(ref_file), refs)
            pq.write_table(refs.sort_by([("method", "ascending"), ("prompt_id", "ascending"), ("sample", "ascending")]),
                           ref_file, compression="zstd")
        shutil.copyfile(src / "metrics.json", dst / "metrics.json")  # last: its presence marks the trial done
        with open(self.root / "units.jsonl", "a") as f:
            f.write(json.dumps({"eval": str(dst.relative_to(self.root)), "seconds": round(seconds, 1),
                                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **MACHINE}) + "\n")

    def eval_dir(self, own) -> Path:
        return self.path(own.evaluate.output_dir)


def merge_references(old, new):
    """Union of two tables of reference responses; a (model, prompt, sample) in both must have the same gold
    reward (the same SFT model sampled with the same seeds: a difference means the runs are not reproducible)."""
    import pyarrow as pa

    have = {(m, p, s): g for m, p, s, g in zip(*(old.column(c).to_pylist() for c in ("method", "prompt_id", "sample", "gold")))}
    keep = []
    for i, key in enumerate(zip(*(new.column(c).to_pylist() for c in ("method", "prompt_id", "sample")))):
        if key in have:
            if have[key] != new.column("gold")[i].as_py():
                raise RuntimeError(
                    f"reference response {key} differs between two runs: gold {have[key]} recorded, "
                    f"{new.column('gold')[i].as_py()} now. This run does not reproduce the recorded one (another "
                    "kind of machine, thread count or library version?): the trials of one seed must come from one "
                    "kind of machine; delete that seed's records from the ledger to redo them here")
        else:
            keep.append(i)
    return pa.concat_tables([old, new.take(pa.array(keep, pa.int64()))])


# ---------------------------------------------------------------------------------------------- running
def run_trial(ledger: Ledger, cfg, point: dict, seed: int, method: str, splits=SPLITS) -> bool:
    """One trial (align ``method`` at ``point`` in ``seed``, evaluate it on each split) unless the ledger has
    it; the shared upstream run first (the pipeline skips its finished stages). Returns whether it ran."""
    from cwpo_ray.pipeline import run_pipeline
    from cwpo_ray.sweep.tune import slug, trial_configs

    todo = [(s, *trial_configs(cfg, point, seed, method, split=s)) for s in splits]
    todo = [x for x in todo if not ledger.has(x[2])]
    if not todo:
        return False
    t = time.time()
    run_pipeline(todo[0][1])
    for split, shared, own in todo:
        run_pipeline(own)  # align once (the second split's run finds it finished), then evaluate on the split
        ledger.record(shared, own, method, split, time.time() - t)
    print(f"[reproduce] {ledger.path(todo[0][2].run_dir).relative_to(ledger.root)} ({slug(point)}): "
          f"{', '.join(s for s, *_ in todo)} in {time.time() - t:.0f}s", flush=True)
    return True


def selection(ledger: Ledger, cfg, grid: dict, seeds: list[int], methods) -> dict[str, dict]:
    """The sweep's own selection (:func:`cwpo_ray.sweep.tune.select_per_method`) over the validation
    records of the ledger: per method, the point with the highest validation GRA averaged over ``seeds``.
    Reads eval_validation only. Methods not finished at every point in every seed are left out."""
    from cwpo_ray.results import EvaluateResult, SweepRow, read_result
    from cwpo_ray.sweep.tune import grid as points
    from cwpo_ray.sweep.tune import select_per_method, trial_configs

    out = {}
    for method in methods:
        rows = []
        for p in points(grid):
            for seed in seeds:
                _, own = trial_configs(cfg, p, seed, method, split="validation")
                f = ledger.eval_dir(own) / "metrics.json"
                if f.exists():
                    m = read_result(EvaluateResult, f).methods[method]
                    rows.append(SweepRow(point=p, seed=seed, method=method, val_gra=m.gra, val_gra_ci_low=m.gra_ci[0],
                                         val_gra_ci_high=m.gra_ci[1], val_gold_gain=m.mean_gain, status="ok"))
        if len(rows) == len(points(grid)) * len(seeds):
            out.update(select_per_method(rows))
    return out


def run_all(ledger: Ledger, run: Path, seeds: list[int], grid: dict, deadline: float) -> bool:
    """Part A (every grid point, method and seed, on validation and test), then Part B at the points Part A
    selected. Seed by seed, so that a stop loses at most the shared runs of one seed. Returns whether
    everything is done (False: stopped at ``deadline``)."""
    from cwpo_ray.sweep.tune import grid as points

    a = sweep_config(run / "table", seeds, grid)
    for seed in seeds:
        for p in points(grid):
            for method in METHODS:
                if time.time() > deadline:
                    return False
                run_trial(ledger, a, p, seed, method)
    selected = selection(ledger, a, grid, seeds, METHODS)
    (ledger.root / "table").mkdir(parents=True, exist_ok=True)
    (ledger.root / "table" / "selected.json").write_text(json.dumps(selected, indent=2))
    c = curve_config(run, seeds, grid)
    for seed in seeds:
        for f in FRACTIONS:
            for method in CURVE_METHODS:
                if time.time() > deadline:
                    return False
                run_trial(ledger, c, curve_point(selected[method]["point"], f), seed, method, splits=("test",))
    return True


# ---------------------------------------------------------------------------------------------- reading
def method_tables(ledger: Ledger, cfg, method: str, point: dict, seeds: list[int]):
    """Per seed: (test responses of the method and its SFT models, its reference's name, its metrics)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cwpo_ray.results import EvaluateResult, read_result
    from cwpo_ray.sweep.tune import trial_configs

    out = []
    for seed in seeds:
        shared, own = trial_configs(cfg, point, seed, method, split="test")
        d = ledger.eval_dir(own)
        m = read_result(EvaluateResult, d / "metrics.json")
        t = pa.concat_tables([pq.read_table(d / "responses.parquet"),
                              pq.read_table(ledger.path(shared.run_dir) / "references_test.parquet")])
        out.append((t, m.compare_to.get(method, "sft"), m))
    return out


def complete_seeds(ledger: Ledger, cfg, grid: dict, seeds: list[int], methods, splits=SPLITS) -> list[int]:
    """The seeds whose every (point, method) trial is in the ledger."""
    from cwpo_ray.sweep.tune import grid as points
    from cwpo_ray.sweep.tune import trial_configs

    return [s for s in seeds if all(ledger.has(trial_configs(cfg, p, s, m, split=sp)[1])
                                    for p in points(grid) for m in methods for sp in splits)]


def collect(ledger: Ledger, run: Path, seeds: list[int], grid: dict) -> dict:
    """Everything the report needs, from the ledger (per-prompt win shares, label statistics), over the
    seeds of ``seeds`` that Part A finished; the curve over the seeds that finished each fraction."""
    from cwpo_ray.evaluate.compare import win_shares
    from cwpo_ray.results import LabelReport, read_result
    from cwpo_ray.sweep.config import UPSTREAM
    from cwpo_ray.sweep.tune import slug, trial_configs

    table_cfg = sweep_config(run / "table", seeds, grid)
    done = complete_seeds(ledger, table_cfg, grid, seeds, METHODS)
    selected = selection(ledger, table_cfg, grid, done, METHODS) if done else {}
    shares, common, limit, own_ref = {}, {}, {}, {}
    for method, sel in selected.items():
        rows = method_tables(ledger, table_cfg, method, sel["point"], done)
        shares[method] = [win_shares(t, method, ref) for t, ref, _ in rows]
        common[method] = [win_shares(t, method, "sft") for t, _, _ in rows]
        own_ref[method] = rows[0][1]
        limit[method] = [m.length_limit_share[method] - m.length_limit_share[ref] for _, ref, m in rows]
    labels = []
    for seed in done:
        up = {k: v for k, v in next(iter(selected.values()))["point"].items() if k.split(".")[0] in UPSTREAM}
        p = ledger.root / "table" / "shared" / f"seed{seed}" / slug(up) / "label_stats.json"
        labels.append(read_result(LabelReport, p).model_dump() if p.exists() else None)
    curve: dict = {}
    cfg = curve_config(run, seeds, grid)
    for f in FRACTIONS:
        pts = {m: curve_point(selected[m]["point"], f) for m in CURVE_METHODS if m in selected}
        # the seeds in which every method of the curve finished this fraction (paired differences need the same seeds)
        ok = [s for s in done if all(ledger.has(trial_configs(cfg, p, s, m, split="test")[1]) for m, p in pts.items())]
        for method, point in pts.items():
            if ok:
                rows = method_tables(ledger, cfg, method, point, ok)
                curve.setdefault(str(f), {})[method] = [win_shares(t, method, ref) for t, ref, _ in rows]
    return {"seeds": done, "grid": grid, "sweep": {"selected": selected}, "shares": shares,
            "shares_vs_common": common, "reference": own_ref, "length_limit_rise": limit, "labels": labels,
            "curve": curve}


def progress(ledger: Ledger, run: Path, seeds: list[int], grid: dict) -> str:
    """One line: trials recorded / planned, and the machine time they took."""
    from cwpo_ray.sweep.tune import grid as points

    n_a = len(points(grid)) * len(METHODS) * len(seeds) * len(SPLITS)
    n_b = len(FRACTIONS) * len(CURVE_METHODS) * len(seeds)
    units = [json.loads(x) for x in (ledger.root / "units.jsonl").read_text().splitlines()] \
        if (ledger.root / "units.jsonl").exists() else []
    got_a = sum(u["eval"].startswith("table/") for u in units)
    got_b = sum(u["eval"].startswith("curve/") for u in units)
    hours = sum(u["seconds"] for u in units if u["eval"].endswith("eval_test")) / 3600  # a trial's time, upstream included
    text = (f"Part A {got_a}/{n_a} evaluations, Part B {got_b}/{n_b}; recorded trials took {hours:.1f} h on the "
            "2-core CPU machine.")
    done = complete_seeds(ledger, sweep_config(run / "table", seeds, grid), grid, seeds, METHODS)
    if done != seeds:
        text += (f" **Provisional**: the tables below cover the seeds Part A has finished ({done or 'none yet'} of "
                 f"{seeds}), and the selection on validation is over those seeds only; both change as the others "
                 "finish.")
    return text


# ---------------------------------------------------------------------------------------------- report
def gra(shares: list[dict]) -> dict:
    import numpy as np

    from cwpo_ray.evaluate.compare import two_level_bootstrap

    mean, ci = two_level_bootstrap([np.array(list(s.values())) for s in shares])
    return {"gra": mean, "ci": ci, "per_seed": [float(np.mean(list(s.values()))) for s in shares]}


def diff(data: dict, a: str, b: str, source: dict | None = None) -> dict:
    from cwpo_ray.evaluate.compare import difference_of_shares

    src = source or data["shares"]
    return difference_of_shares(src[a], src[b], (a, b))


def fmt_gra(g: dict) -> str:
    return f"{g['gra']:.3f} [{g['ci'][0]:.3f}, {g['ci'][1]:.3f}]"


def report(data: dict, out: Path, status: str | None = None) -> str:
    """The results page (markdown + json + one plot per part) from :func:`collect`'s data. Pure: no runs."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cwpo_ray.evaluate.compare import verdict
    from cwpo_ray.sweep.tune import slug

    out.mkdir(parents=True, exist_ok=True)
    seeds, sel = data["seeds"], data["sweep"]["selected"]
    have = {m for m in data["shares"]}
    g = {m: gra(data["shares"][m]) for m in data["shares"]}
    gc = {m: gra(data["shares_vs_common"][m]) for m in data["shares_vs_common"]}
    n_prompts = sorted({len(s) for v in data["shares"].values() for s in v})
    verdicts: dict[str, str] = {}

    def v(a: str, b: str, source=None) -> str:
        if a not in have or b not in have:
            return f"{a} vs {b}: not run"
        text = verdict(diff(data, a, b, source))
        verdicts[f"{a} - {b}"] = text
        return text

    def row(m: str) -> str:
        if m not in have:
            return f"| {m} | not run | | | |"
        per = ", ".join(f"{x:.3f}" for x in g[m]["per_seed"])
        rise = max(data["length_limit_rise"][m]) * 100
        return (f"| {m} | {fmt_gra(g[m])} | {per} | {gc[m]['gra']:.3f} | `{slug(sel[m]['point'])}` "
                f"(val {sel[m]['validation_gra']:.3f}) | {rise:+.1f} |")

    head = ["| method | test GRA vs own SFT [95% CI] | per seed | vs common SFT | selected on validation | "
            "worst length-limit rise (pts) |", "|---|---|---|---|---|---|"]
    L = ["# CW-PO in miniature: the paper's protocol on the synthetic task", "",
         f"Seeds {seeds}; {'/'.join(map(str, n_prompts))} test prompts per seed x 4 samples; grid shared by every "
         f"method: `{json.dumps(data['grid'])}` (other align settings: the demo's). Regenerate: "
         "`python jobs/reproduce_miniature.py`.", "", *([f"**Progress.** {status}", ""] if status else []),
         "GRA: share of (prompt, sample) comparisons where the method's response has the higher gold reward r* than "
         "its reference's (its own SFT model, the paper's initialisation; 'vs common SFT' uses the SFT model of "
         "D_labeled's human labels for every method). CIs: two-level bootstrap over seeds x prompts; differences are "
         "paired per prompt. Every hyperparameter was selected on validation prompts alone (the sweep's selection over "
         "the validation records); each trial is also evaluated on test when it finishes, so that no model has to be "
         "kept, and this page reads the test results of the selected points only.", ""]

    # 1. sanity gate
    L += ["## 1. Sanity gate: does preference optimization work here?", ""]
    if "human-dpo" in have:
        h = g["human-dpo"]
        ok = "works here" if h["ci"][0] > 0.5 else "is NOT shown to work here"
        L += [f"Human-DPO vs its SFT model: GRA {fmt_gra(h)} (per seed {', '.join(f'{x:.3f}' for x in h['per_seed'])}): "
              f"preference optimization {ok}.", ""]
    # 2. label regime
    L += ["## 2. Label regime (D_unlabeled, labeled fraction 0.3)", "",
          "| seed | human vs gold | weak vs held-out human | weak vs gold | weak top-30% vs gold |", "|---|---|---|---|---|"]
    for s, lab in zip(seeds, data["labels"]):
        if lab:
            top = (lab.get("weak_gold_agreement_top") or {}).get("top30")
            L.append(f"| {s} | {lab['human_gold_agreement']:.3f} | {lab['weak_human_agreement']:.3f} | "
                     f"{lab['weak_gold_agreement']:.3f} | {top:.3f} |" if top is not None else f"| {s} | … | | | |")
    L += [""]
    # 3. Table 1
    L += ["## 3. Table 1: Human / WS / CW x DPO, IPO, rDPO", "", *head]
    L += [row(m) for m in ("human-dpo", "ws-dpo", "cw-dpo", "ws-ipo", "cw-ipo", "ws-rdpo", "cw-rdpo")]
    L += ["", *(f"- {v(a, b)}" for a, b in [("cw-dpo", "ws-dpo"), ("cw-ipo", "ws-ipo"), ("cw-rdpo", "ws-rdpo"),
                                            ("cw-dpo", "human-dpo"), ("cw-ipo", "human-dpo"), ("cw-rdpo", "human-dpo")]), ""]
    # 4. Table 3
    L += ["## 4. Table 3: CW-DPO (30% labels) vs DPO on 100% human labels", "", *head, row("cw-dpo"), row("human-100"),
          "", f"- {v('cw-dpo', 'human-100')}", ""]
    # 5. Figure 2
    L += ["## 5. Figure 2: top-N% most confident weak labels (top-100% = WS-DPO) vs Human", "", *head,
          *(row(m) for m in ("top30-dpo", "top50-dpo", "top75-dpo", "ws-dpo", "human-dpo")), "",
          *(f"- {v(a, 'human-dpo')}" for a in ("top30-dpo", "top50-dpo", "top75-dpo")), f"- {v('top30-dpo', 'cw-dpo')}", ""]
    # 6. curve
    L += [f"## 6. Figure 3: labeled fraction (D_unlabeled fixed at {UNLABELED_FIXED:.0%} of the training prompts)", "",
          "Each method at its Part A point. Human-100 (the same data at every fraction): "
          + (fmt_gra(g["human-100"]) if "human-100" in have else "not run") + ".", "",
          "| labeled fraction | " + " | ".join(CURVE_METHODS) + " | CW-DPO − WS-DPO | CW-DPO − DPO on D_labeled |",
          "|" + "---|" * (len(CURVE_METHODS) + 3)]
    curve_g = {}
    for f, by in data["curve"].items():
        cg = {m: gra(s) for m, s in by.items()}
        curve_g[f] = cg
        cells = [fmt_gra(cg[m]) if m in cg else "not run" for m in CURVE_METHODS]
        d1 = verdict(diff(data, "cw-dpo", "ws-dpo", by)) if {"cw-dpo", "ws-dpo"} <= by.keys() else "not run"
        d2 = verdict(diff(data, "cw-dpo", "labeled-dpo", by)) if {"cw-dpo", "labeled-dpo"} <= by.keys() else "not run"
        verdicts[f"curve {f}: cw-dpo - ws-dpo"], verdicts[f"curve {f}: cw-dpo - labeled-dpo"] = d1, d2
        n = len(next(iter(by.values())))
        L.append(f"| {f} ({n} seed{'s' if n > 1 else ''}) | " + " | ".join(cells) + f" | {d1} | {d2} |")
    L += [""]
    # 7. Table 5
    L += ["## 7. Table 5: weightings (C1 = 2(σ(Δ) − ½) = CW-DPO, C2 = σ(Δ), C3 = min(Δ, 1), C4 = min(0.2Δ, 1))", "",
          *head, *(row(m) for m in ("cw-dpo", "c2-dpo", "c3-dpo", "c4-dpo")), "",
          *(f"- {v('cw-dpo', b)}" for b in ("c2-dpo", "c3-dpo", "c4-dpo")), ""]
    L += ["## Reading", "",
          "Tiny pretrained Qwen2-shaped models on a synthetic task whose gold reward is known; the paper's claims concern "
          "125M–14B models on real preference data. A verdict here is about this sandbox, phrased as measured: "
          "'no difference resolved' means the paired CI contains 0.", ""]

    # plots: one per part
    def bars(ax, names, title):
        names = [m for m in names if m in g]
        ys = [g[m]["gra"] for m in names]
        err = np.array([[g[m]["gra"] - g[m]["ci"][0] for m in names], [g[m]["ci"][1] - g[m]["gra"] for m in names]])
        ax.bar(range(len(names)), ys, yerr=err, capsize=3, color="#4C72B0")
        for i, m in enumerate(names):
            ax.scatter([i] * len(g[m]["per_seed"]), g[m]["per_seed"], color="k", s=8, zorder=3)
        ax.axhline(0.5, color="grey", ls="--", lw=0.8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("test GRA vs own SFT")

    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    bars(axes[0], ["human-dpo", "ws-dpo", "cw-dpo", "ws-ipo", "cw-ipo", "ws-rdpo", "cw-rdpo"], "Table 1")
    bars(axes[1], ["cw-dpo", "human-100"], "Table 3")
    bars(axes[2], ["top30-dpo", "top50-dpo", "top75-dpo", "ws-dpo", "human-dpo"], "Figure 2 (top-N%)")
    bars(axes[3], ["cw-dpo", "c2-dpo", "c3-dpo", "c4-dpo"], "Table 5 (weightings)")
    fig.tight_layout()
    fig.savefig(out / "miniature_tables.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = sorted(curve_g, key=float)
    for m in CURVE_METHODS:
        pts = [(float(f), curve_g[f][m]) for f in xs if m in curve_g[f]]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1]["gra"] for p in pts], capsize=3, marker="o", label=m,
                        yerr=np.array([[p[1]["gra"] - p[1]["ci"][0] for p in pts], [p[1]["ci"][1] - p[1]["gra"] for p in pts]]))
    if "human-100" in g:
        ax.axhline(g["human-100"]["gra"], color="k", ls=":", label="human-100")
    ax.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("labeled fraction (D_unlabeled fixed)")
    ax.set_ylabel("test GRA vs own SFT")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "miniature_fraction.png", dpi=110)
    plt.close(fig)
    L += ["![tables](miniature_tables.png)", "", "![labeled fraction](miniature_fraction.png)", ""]
    text = "\n".join(L)
    (out / "miniature.md").write_text(text)
    (out / "miniature.json").write_text(json.dumps({
        "seeds": seeds, "grid": data["grid"], "selected": sel, "gra": g, "gra_vs_common_sft": gc,
        "length_limit_rise": data["length_limit_rise"], "labels": data["labels"], "curve": curve_g,
        "verdicts": verdicts, "status": status}, indent=2))
    return text


def parse_grid(items: list[str]) -> dict:
    grid = {}
    for it in items:
        k, vals = it.split("=", 1)
        grid[k] = [json.loads(x) for x in vals.split(",")]
    return grid


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--run-dir", default="runs/miniature", help="run folders (models, checkpoints; not kept)")
    ap.add_argument("--ledger", default=str(LEDGER), help="the finished trials' records (committed; resumes from here)")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--grid", nargs="+", default=None, help=f"dotted.key=v1,v2 (default: {json.dumps(GRID)})")
    ap.add_argument("--hours", type=float, default=None, help="start no new trial after this many hours")
    ap.add_argument("--plan", action="store_true", help="validate every config and print the plan; run nothing")
    ap.add_argument("--report-only", action="store_true", help="rebuild the page from the ledger")
    args = ap.parse_args()
    grid = parse_grid(args.grid) if args.grid else GRID
    run, out = Path(args.run_dir).resolve(), Path(args.out)
    ledger = Ledger(run, Path(args.ledger))
    if args.plan:
        from cwpo_ray.sweep.tune import base_pipeline, trial_configs
        from cwpo_ray.sweep.tune import grid as points

        a = sweep_config(run / "table", args.seeds, grid)
        base_pipeline(a)
        for p in points(grid):
            for m in METHODS:
                trial_configs(a, p, args.seeds[0], m)
        c = curve_config(run, args.seeds, grid)
        for f in FRACTIONS:
            for m in CURVE_METHODS:
                trial_configs(c, curve_point(points(grid)[0], f), args.seeds[0], m, split="test")
        n_a = len(points(grid)) * len(METHODS) * len(args.seeds)
        print(f"plan: part A {n_a} trials (each evaluated on validation and test); part B "
              f"{len(FRACTIONS) * len(CURVE_METHODS) * len(args.seeds)} aligned students on test; grid {json.dumps(grid)}")
        print(progress(ledger, run, args.seeds, grid))
        return
    if not args.report_only:
        from cwpo_ray import console

        console.setup(run / "logs", verbose=False)  # like `cwpo`: stage summaries here, library logs in files
        deadline = time.time() + 3600 * args.hours if args.hours else math.inf
        run_all(ledger, run, args.seeds, grid, deadline)
    print(report(collect(ledger, run, args.seeds, grid), out, progress(ledger, run, args.seeds, grid)))


if __name__ == "__main__":
    main()
