"""Choose the demo's align recipe on VALIDATION prompts only (the test split is never read).

Runs the demo pipeline once up to SFT, then for every point of a grid over align fields re-runs
Human-DPO (DPO on the unlabeled pool's own human labels) and evaluates it against the SFT model on
the validation split's prompts. Finished stages are reused through the run manifest, so each grid
point costs one align and one evaluate. Prints and writes a table (markdown + json) and the point
with the highest validation GRA; copy it into ``cwpo_ray/configs/demo.yaml`` by hand.

    python jobs/select_demo_recipe.py --run-dir runs/select \\
        --grid align.lr=1e-4,2e-4,4e-4 align.beta=0.5,1.0 align.epochs=2,3 [key=value ...]

Extra ``key=value`` arguments override the demo config for every point (e.g. ``synthetic.task.seed=1``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", default="runs/select")
    ap.add_argument("--grid", nargs="+", required=True, help="dotted.key=v1,v2,... (align fields)")
    ap.add_argument("--method", default="human-dpo")
    ap.add_argument("--out", default=None, help="results folder (default: {run-dir}/selection)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from cwpo_ray.config import load_config
    from cwpo_ray.pipeline import DEMO_CONFIG, PipelineConfig, run_pipeline

    axes = []
    for g in args.grid:
        key, values = g.split("=", 1)
        axes.append([(key, v) for v in values.split(",")])
    run = Path(args.run_dir).resolve()
    out = Path(args.out or run / "selection")
    out.mkdir(parents=True, exist_ok=True)
    base = [f"run_dir={run}", f"methods={{{args.method}: {{labels: human_unlabeled, loss: dpo, weighting: none}}}}",
            f"evaluate.prompts_path={run / 'data' / 'validation'}", f"evaluate.output_dir={run / 'eval_validation'}",
            "stages=[prepare, train-annotator, annotate, sft, align, evaluate]", *args.overrides]
    rows = []
    for point in itertools.product(*axes):
        sets = [f"{k}={v}" for k, v in point]
        cfg = load_config(PipelineConfig, DEMO_CONFIG, base + sets)
        t0 = time.time()
        res = run_pipeline(cfg)
        m = json.loads((run / "eval_validation" / "metrics.json").read_text())
        r = m["methods"][args.method]
        rows.append({"point": dict(point), "gra": r["gra"], "gra_ci": r["gra_ci"], "mean_gain": r["mean_gain"],
                     "length_limit": m["length_limit_share"][args.method], "sft_length_limit": m["length_limit_share"]["sft"],
                     "prompts": m["num_prompts"], "samples_per_prompt": m["samples_per_prompt"],
                     "seconds": round(time.time() - t0, 1), "gate": res.get("gate")})
        print(f"[select] {' '.join(sets)}: validation GRA {r['gra']:.3f} [{r['gra_ci'][0]:.3f}, {r['gra_ci'][1]:.3f}] "
              f"gain {r['mean_gain']:+.2f} at length limit {rows[-1]['length_limit']:.1%}", flush=True)
        write_table(rows, axes, run, args, out)  # after every point: a selection cut short keeps what it measured
    print(write_table(rows, axes, run, args, out))


def write_table(rows: list[dict], axes: list, run: Path, args, out: Path) -> str:
    best = max(rows, key=lambda x: x["gra"])
    lines = [f"# Demo recipe selection on validation prompts ({args.method} vs SFT)", "",
             f"- run: `{run}`; overrides: `{' '.join(args.overrides) or '-'}`",
             f"- {rows[0]['prompts']} validation prompts x {rows[0]['samples_per_prompt']} samples; the test split is not read.",
             "", "| " + " | ".join(a[0][0] for a in axes) + " | GRA | 95% CI | gain | at length limit (SFT) |",
             "|" + "---|" * (len(axes) + 4)]
    for r in rows:
        lines.append("| " + " | ".join(str(v) for v in r["point"].values()) +
                     f" | {r['gra']:.3f} | [{r['gra_ci'][0]:.3f}, {r['gra_ci'][1]:.3f}] | {r['mean_gain']:+.2f} | "
                     f"{r['length_limit']:.1%} ({r['sft_length_limit']:.1%}) |")
    lines += ["", f"selected (highest validation GRA): `{' '.join(f'{k}={v}' for k, v in best['point'].items())}`", ""]
    (out / "selection.md").write_text("\n".join(lines))
    (out / "selection.json").write_text(json.dumps({"rows": rows, "selected": best["point"]}, indent=2))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
