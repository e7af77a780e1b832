"""The paper's protocol in miniature on the embedded synthetic task (regenerates docs/results/miniature.md).

    python jobs/reproduce_miniature.py [--seeds 0 1 2 3 4] [--run-dir runs/miniature] [--out docs/results]
                                       [--grid align.beta=0.35,0.5] [--plan] [--report-only]

Hours on a 2-core CPU machine (not run in CI). Re-running resumes: every stage of every run is skipped
when its manifest says it is finished with the same config, and the evaluate stage reuses cached responses.

Protocol (Afzali, Brbic, Jeon, ICLR 2026; their Appendix G where it applies to tiny models):
- Base: the demo config (``cwpo_ray/configs/demo.yaml``: task, tiny pretrained backbones, annotator, SFT and
  align recipe) with the paper's student initialisation (``sft_data: method_labels``: SFT on (x, y+) of
  D_unlabeled by the labels the method uses; each method is regularised towards and compared with its own
  SFT model) and a test split of >= 400 prompts (``prepare.test_fraction`` below).
- Part A (labeled fraction 0.3, D_labeled / D_unlabeled = 30 / 70 of the training prompts): ``cwpo sweep``
  over GRID x METHODS x seeds, every trial scored on the validation prompts; each method's point is the
  one with the highest mean validation GRA; that point is then evaluated once on the test prompts.
- Part B, the labeled-fraction curve (Figure 3 left): D_unlabeled fixed (``prepare.unlabeled_fraction``
  0.5: the same half of the training prompts at every fraction), labeled fraction 0.1 ... 0.5; CW-DPO,
  WS-DPO and DPO on D_labeled at the points Part A selected for them (not re-selected per fraction), on
  test. Human-100 (all training prompts, human labels) is the same data at every fraction: Part A's row.
- Statistics: GRA per method = mean over seeds of the share of (prompt, sample) comparisons its response
  wins against its reference's (4 samples per prompt); CIs are two-level bootstraps over seeds x prompts;
  a difference between two methods is paired per prompt (:mod:`cwpo_ray.evaluate.compare`) and its
  verdict says which way its CI lies or that it contains 0.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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
        "output_dir": str(run), "pipeline_config": "demo", "pipeline": deep_merge(pipeline_overrides(), pipeline or {}),
        "space": space or grid, "methods": methods or list(METHODS), "seeds": seeds, "final_test": True})


def curve_config(run: Path, seeds: list[int], grid: dict, fraction: float):
    return sweep_config(run / "curve" / f"labeled_{fraction}", seeds, grid,
                        {"prepare": {"labeled_fraction": fraction, "unlabeled_fraction": UNLABELED_FIXED}},
                        methods=CURVE_METHODS)


# ---------------------------------------------------------------------------------------------- running
def run_part_a(run: Path, seeds: list[int], grid: dict):
    from cwpo_ray.sweep.tune import format_sweep, run_sweep

    res = run_sweep(sweep_config(run / "table", seeds, grid))
    print(format_sweep(res), flush=True)
    return res


def run_curve(run: Path, seeds: list[int], grid: dict, selected: dict[str, dict]) -> None:
    """Part B without Tune: per fraction, seed and method, the shared upstream run and the method's own
    align + test evaluate at the point Part A selected for it (the sweep's folder layout)."""
    from cwpo_ray.pipeline import run_pipeline
    from cwpo_ray.sweep.tune import trial_configs

    for f in FRACTIONS:
        cfg = curve_config(run, seeds, grid, f)
        for seed in seeds:
            for method in CURVE_METHODS:
                shared, own = trial_configs(cfg, selected[method], seed, method, split="test")
                t = time.time()
                run_pipeline(shared)
                run_pipeline(own)
                print(f"[reproduce] curve: labeled {f} seed {seed} {method} done in {time.time() - t:.0f}s", flush=True)


# ---------------------------------------------------------------------------------------------- reading
def method_tables(cfg, method: str, point: dict, seeds: list[int]):
    """Per seed: (responses table, this method's reference name) of its test evaluation at ``point``."""
    from cwpo_ray.evaluate.compare import read_responses
    from cwpo_ray.results import EvaluateResult, read_result
    from cwpo_ray.sweep.tune import trial_configs

    out = []
    for seed in seeds:
        _, own = trial_configs(cfg, point, seed, method, split="test")
        d = own.evaluate.output_dir
        m = read_result(EvaluateResult, f"{d}/metrics.json")
        out.append((read_responses([d])[0], m.compare_to.get(method, "sft"), m))
    return out


def collect(run: Path, seeds: list[int], grid: dict) -> dict:
    """Everything the report needs, from the finished runs (per-prompt win shares, label statistics)."""
    from cwpo_ray.evaluate.compare import win_shares
    from cwpo_ray.results import LabelReport, SweepResult, read_result
    from cwpo_ray.sweep.config import UPSTREAM
    from cwpo_ray.sweep.tune import slug

    table_cfg = sweep_config(run / "table", seeds, grid)
    sweep = read_result(SweepResult, run / "table" / "summary.json")
    shares, common, limit, own_ref = {}, {}, {}, {}
    for method, sel in sweep.selected.items():
        rows = method_tables(table_cfg, method, sel.point, seeds)
        shares[method] = [win_shares(t, method, ref) for t, ref, _ in rows]
        common[method] = [win_shares(t, method, "sft") for t, _, _ in rows]
        own_ref[method] = rows[0][1]
        limit[method] = [m.length_limit_share[method] - m.length_limit_share[ref] for _, ref, m in rows]
    labels = []
    for seed in seeds:
        up = {k: v for k, v in next(iter(sweep.selected.values())).point.items() if k.split(".")[0] in UPSTREAM}
        p = run / "table" / "shared" / f"seed{seed}" / slug(up) / "label_stats.json"
        labels.append(read_result(LabelReport, p).model_dump() if p.exists() else None)
    curve: dict = {}
    for f in FRACTIONS:
        cfg = curve_config(run, seeds, grid, f)
        for method in CURVE_METHODS:
            try:
                rows = method_tables(cfg, method, sweep.selected[method].point, seeds)
            except (FileNotFoundError, OSError):
                continue  # not run (yet)
            curve.setdefault(str(f), {})[method] = [win_shares(t, method, ref) for t, ref, _ in rows]
    return {"seeds": seeds, "grid": grid, "sweep": sweep.model_dump(mode="json"), "shares": shares,
            "shares_vs_common": common, "reference": own_ref, "length_limit_rise": limit, "labels": labels,
            "curve": curve}


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


def report(data: dict, out: Path, wall: str | None = None) -> str:
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
         f"`python jobs/reproduce_miniature.py --seeds {' '.join(map(str, seeds))}`"
         + (f"; wall time {wall}." if wall else "."), "",
         "GRA: share of (prompt, sample) comparisons where the method's response has the higher gold reward r* than "
         "its reference's (its own SFT model, the paper's initialisation; 'vs common SFT' uses the SFT model of "
         "D_labeled's human labels for every method). CIs: two-level bootstrap over seeds x prompts; differences are "
         "paired per prompt. Every hyperparameter was selected on validation prompts; test was read once, after.", ""]

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
        L.append(f"| {f} | " + " | ".join(cells) + f" | {d1} | {d2} |")
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
        "verdicts": verdicts, "wall_time": wall}, indent=2))
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
    ap.add_argument("--run-dir", default="runs/miniature")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--grid", nargs="+", default=None, help=f"dotted.key=v1,v2 (default: {json.dumps(GRID)})")
    ap.add_argument("--plan", action="store_true", help="validate every config and print the plan; run nothing")
    ap.add_argument("--report-only", action="store_true", help="rebuild the page from finished runs")
    args = ap.parse_args()
    grid = parse_grid(args.grid) if args.grid else GRID
    run, out = Path(args.run_dir).resolve(), Path(args.out)
    if args.plan:
        from cwpo_ray.sweep.tune import base_pipeline, trial_configs
        from cwpo_ray.sweep.tune import grid as points

        a = sweep_config(run / "table", args.seeds, grid)
        base_pipeline(a)
        for p in points(grid):
            for m in METHODS:
                trial_configs(a, p, args.seeds[0], m)
        for f in FRACTIONS:
            c = curve_config(run, args.seeds, grid, f)
            for m in CURVE_METHODS:
                trial_configs(c, points(grid)[0], args.seeds[0], m, split="test")
        n_a = len(points(grid)) * len(METHODS) * len(args.seeds)
        print(f"plan: part A {n_a} validation trials + {len(METHODS) * len(args.seeds)} test evaluations; part B "
              f"{len(FRACTIONS) * len(CURVE_METHODS) * len(args.seeds)} aligned students on test; grid {json.dumps(grid)}")
        return
    t = time.time()
    if not args.report_only:
        res = run_part_a(run, args.seeds, grid)
        run_curve(run, args.seeds, grid, {m: s.point for m, s in res.selected.items()})
    wall = None if args.report_only else f"{(time.time() - t) / 3600:.1f} h this invocation"
    print(report(collect(run, args.seeds, grid), out, wall))


if __name__ == "__main__":
    main()
