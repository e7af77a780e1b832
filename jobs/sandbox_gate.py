"""Does preference optimization work in the sandbox? The default demo, over several seeds, on TEST prompts.

For each seed, runs ``cwpo demo`` with every seed field set to it (task, pretraining texts, annotator,
SFT, align, sampling) and nothing else changed, then writes ``docs/results/sandbox_gate.md`` (+ .json):
per seed the label-regime statistics, every method's GRA with its CI, gain and length-limit share, and
the gate computed from them:

- Human-DPO GRA >= 0.65 with the 95% CI's lower bound > 0.55 against its SFT model;
- no method's length-limit share more than 15 points above the SFT model's.

    python jobs/sandbox_gate.py [--seeds 0 1 2] [--run-dir runs/gate] [--out docs/results]

Resumable: a seed whose run finished is skipped by the pipeline's manifest.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

MIN_GRA, MIN_LO, MAX_LIMIT_RISE = 0.65, 0.55, 0.15


def seed_overrides(seed: int, run_dir: Path) -> list[str]:
    from cwpo_ray.sweep.tune import seed_overrides as seed_fields  # the one list of the pipeline's seed fields

    return [f"run_dir={run_dir / f'seed{seed}'}", *seed_fields(seed, synthetic=True)]


def length_rise(metrics) -> dict[str, float]:
    """Each method's length-limit share minus its reference's: the SFT model it was aligned from and is
    compared with (``compare_to``; the common SFT model unless ``sft_data=method_labels``)."""
    lim = metrics.length_limit_share
    return {m: lim[m] - lim[metrics.compare_to.get(m, "sft")] for m in metrics.methods}


def check(metrics, gate_method: str) -> dict:
    """The gate's criteria on one seed's :class:`~cwpo_ray.results.EvaluateResult`."""
    g = metrics.methods[gate_method]
    worst = max(length_rise(metrics).values())
    return {"gra_ok": g.gra >= MIN_GRA, "lo_ok": g.gra_ci[0] > MIN_LO, "length_ok": worst <= MAX_LIMIT_RISE,
            "worst_length_rise": worst}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--run-dir", default="runs/gate")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--gate-method", default="human-dpo")
    ap.add_argument("--verbose", action="store_true", help="library logs on the console (default: {run-dir}/logs)")
    args = ap.parse_args()

    from cwpo_ray import console
    from cwpo_ray.config import load_config
    from cwpo_ray.pipeline import DEMO_CONFIG, PipelineConfig, run_pipeline

    run_dir = Path(args.run_dir).resolve()
    console.setup(run_dir / "logs", verbose=args.verbose)  # like `cwpo`: stage summaries here, library logs in files
    per_seed = {}
    for seed in args.seeds:
        t0 = time.time()
        cfg = load_config(PipelineConfig, DEMO_CONFIG, seed_overrides(seed, run_dir))
        res = run_pipeline(cfg)
        m = res.evaluation  # = {run_dir}/seed{seed}/eval/metrics.json
        per_seed[seed] = {"metrics": m, "labels": res.labels, "seconds": round(time.time() - t0, 1),
                          "check": check(m, args.gate_method)}
        g = m.methods[args.gate_method]
        print(f"[gate] seed {seed}: {args.gate_method} GRA {g.gra:.3f} {list(g.gra_ci)} {per_seed[seed]['check']}", flush=True)

    methods = list(next(iter(per_seed.values()))["metrics"].methods)
    lines = ["# The sandbox gate: does preference optimization work here?", "",
             "Regenerate: `python jobs/sandbox_gate.py --seeds " + " ".join(map(str, args.seeds)) + "`. "
             "Default demo config (`cwpo_ray/configs/demo.yaml`), every seed field set to the seed; GRA on the "
             "test split's prompts against each run's SFT model.", "",
             f"Gate: {args.gate_method} GRA >= {MIN_GRA} with the 95% CI's lower bound > {MIN_LO}, and no method's "
             f"share of answers at the length limit more than {int(MAX_LIMIT_RISE * 100)} points above SFT's.", ""]
    hdr = "| seed | prompts x samples | " + " | ".join(f"{m} GRA [95% CI]" for m in methods) + " | gate |"
    lines += [hdr, "|" + "---|" * (len(methods) + 3)]
    for seed, r in per_seed.items():
        m, c = r["metrics"], r["check"]
        cells = [f"{m.methods[n].gra:.3f} [{m.methods[n].gra_ci[0]:.3f}, {m.methods[n].gra_ci[1]:.3f}]" for n in methods]
        verdict = "pass" if all((c["gra_ok"], c["lo_ok"], c["length_ok"])) else \
            "FAIL (" + ", ".join(k for k in ("gra_ok", "lo_ok", "length_ok") if not c[k]) + ")"
        lines.append(f"| {seed} | {m.num_prompts} x {m.samples_per_prompt} | " + " | ".join(cells) + f" | {verdict} |")
    lines += ["", "Share of answers at the length limit (points above the method's own SFT model) and mean gold gain over it:", "",
              "| seed | SFT | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 2)]
    for seed, r in per_seed.items():
        m = r["metrics"]
        lim, rise = m.length_limit_share, length_rise(m)
        lines.append(f"| {seed} | {lim['sft']:.1%} | " + " | ".join(
            f"{lim[n]:.1%} ({rise[n] * 100:+.1f} over its SFT; gain {m.methods[n].mean_gain:+.2f})" for n in methods) + " |")
    lines += ["", "Label regime (measured against the gold reward; not tuned to any GRA):", "",
              "| seed | human vs gold | weak vs held-out human | weak vs gold | weak top-30% vs gold | run time |",
              "|---|---|---|---|---|---|"]
    for seed, r in per_seed.items():
        lab = r["labels"]
        if lab:
            lines.append(f"| {seed} | {lab.human_gold_agreement:.3f} | {lab.weak_human_agreement:.3f} | "
                         f"{lab.weak_gold_agreement:.3f} | {lab.weak_gold_agreement_top['top30']:.3f} | {r['seconds']:.0f}s |")
    # Over seeds: each method's GRA and the paired differences between methods (same prompts, same SFT
    # samples), with a two-level bootstrap CI over seeds x prompts (cwpo_ray/evaluate/compare.py).
    from cwpo_ray.evaluate.compare import gra_over_seeds, paired_difference, read_responses, verdict

    tables = read_responses([str(run_dir / f"seed{s}" / "eval") for s in per_seed])
    pooled = {n: gra_over_seeds(tables, n) for n in methods}
    pairs = [(a, b) for i, a in enumerate(methods) for b in methods[i + 1:]]
    diffs = [paired_difference(tables, a, b) for a, b in pairs]
    lines += ["", f"Over seeds {', '.join(map(str, per_seed))} (two-level bootstrap over seeds x prompts, 95%):", "",
              "| method | GRA [95% CI] | per seed |", "|---|---|---|"]
    for n, g in pooled.items():
        lines.append(f"| {n} | {g['gra']:.3f} [{g['ci'][0]:.3f}, {g['ci'][1]:.3f}] | "
                     + ", ".join(f"{v:.3f}" for v in g["per_seed"]) + " |")
    lines += ["", "| paired difference | GRA difference [95% CI] | per seed | measured |", "|---|---|---|---|"]
    for d in diffs:
        lines.append(f"| {d['a']} − {d['b']} | {d['difference']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] | "
                     + ", ".join(f"{v:+.3f}" for v in d["per_seed"]) + f" | {verdict(d)} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sandbox_gate.md").write_text("\n".join(lines) + "\n")
    (out / "sandbox_gate.json").write_text(json.dumps(
        {str(s): {"check": r["check"], "labels": r["labels"].model_dump(mode="json") if r["labels"] else {},
                  "methods": {n: x.model_dump(mode="json") for n, x in r["metrics"].methods.items()},
                  "length_limit_share": r["metrics"].length_limit_share, "num_prompts": r["metrics"].num_prompts}
         for s, r in per_seed.items()} | {"over_seeds": {"gra": pooled, "paired_differences": diffs}}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
