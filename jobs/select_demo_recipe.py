"""Choose the demo's align recipe on VALIDATION prompts only (the test split is never read).

For every seed, runs the demo pipeline (every seed field set to the seed, exactly as
``jobs/sandbox_gate.py`` does) up to SFT once, then for every point of a grid over align fields
re-runs every demo method (Human-DPO, CW-DPO, WS-DPO) and evaluates them against the SFT model on
the validation split's prompts. Finished stages are reused through the run manifest, so each grid
point costs one align per method and one evaluate.

The rule, applied to validation numbers only:
- a point is *admissible* when, in every seed, no method's share of answers at the length limit is
  more than 15 points above the SFT model's (the gate's length criterion);
- among admissible points, the one with the highest Human-DPO validation GRA averaged over seeds.
A point that is already inadmissible in one seed is not run in the later ones.

Prints and writes a table (markdown + json) after every point; copy the selection into
``cwpo_ray/configs/demo.yaml`` by hand.

    python jobs/select_demo_recipe.py --seeds 0 1 2 --run-dir runs/gate \\
        --grid align.lr=2e-4,5e-5,1e-4 align.beta=0.25 [key=value ...]

Using the gate's run folder lets ``jobs/sandbox_gate.py`` reuse the last point's models. Extra
``key=value`` arguments, given before the options, override the demo config for every point
(``python jobs/select_demo_recipe.py synthetic.task.label_noise=flip --seeds 0 --points ...``).
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sandbox_gate import MAX_LIMIT_RISE, length_rise, seed_overrides  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", default="runs/gate")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--grid", nargs="+", default=[], help="dotted.key=v1,v2,... (align fields; their product)")
    ap.add_argument("--points", nargs="+", default=[], help="single points besides the grid: key=v,key=v")
    ap.add_argument("--gate-method", default="human-dpo")
    ap.add_argument("--out", default=None, help="results folder (default: {run-dir}/selection)")
    ap.add_argument("--verbose", action="store_true", help="library logs on the console (default: {run-dir}/logs)")
    ap.add_argument("overrides", nargs="*", help="key=value for every point (before the options: --points and "
                    "--grid take every word after them)")
    args = ap.parse_args()

    from cwpo_ray import console
    from cwpo_ray.config import load_config
    from cwpo_ray.pipeline import DEMO_CONFIG, PipelineConfig, run_pipeline

    axes = []
    for g in args.grid:
        key, values = g.split("=", 1)
        axes.append([(key, v) for v in values.split(",")])
    points = [dict(p) for p in itertools.product(*axes)] if axes else []
    points += [dict(kv.split("=", 1) for kv in p.split(",")) for p in args.points]
    if not points:
        ap.error("give --grid and/or --points")
    for k in {k for p in points for k in p}:  # e.g. an override written after --points would become a point
        if not k.startswith("align."):
            ap.error(f"--grid/--points: {k} is not an align field (the grid is over the align recipe; put "
                     "overrides of other fields before the options)")
    keys = list(dict.fromkeys(k for p in points for k in p))
    run = Path(args.run_dir).resolve()
    console.setup(run / "logs", verbose=args.verbose)  # like `cwpo`: stage summaries here, library logs in files
    out = Path(args.out or run / "selection")
    out.mkdir(parents=True, exist_ok=True)
    # Cumulative: rows measured by an earlier invocation (same run folder) are kept and not re-run.
    rows = json.loads((out / "selection.json").read_text())["rows"] if (out / "selection.json").exists() else []
    for seed in args.seeds:
        sdir = run / f"seed{seed}"
        base = [*seed_overrides(seed, run), f"evaluate.prompts_path={sdir / 'data' / 'validation'}",
                f"evaluate.output_dir={sdir / 'eval_validation'}",
                "stages=[prepare, train-annotator, annotate, sft, align, evaluate]", *args.overrides]
        for point in points:
            if any(r["seed"] == seed and r["point"] == point for r in rows):
                continue
            if any(r["point"] == point and worst_rise(r) > MAX_LIMIT_RISE for r in rows):
                print(f"[select] seed {seed} {point}: skipped, already inadmissible in an earlier seed", flush=True)
                continue
            sets = [f"{k}={v}" for k, v in point.items()]
            cfg = load_config(PipelineConfig, DEMO_CONFIG, base + sets)
            t0 = time.time()
            m = run_pipeline(cfg).evaluation  # = {sdir}/eval_validation/metrics.json
            lim, rise = m.length_limit_share, length_rise(m)
            rows.append({"seed": seed, "point": point, "prompts": m.num_prompts,
                         "samples_per_prompt": m.samples_per_prompt, "sft_length_limit": lim["sft"],
                         "methods": {n: {"gra": r.gra, "gra_ci": list(r.gra_ci), "mean_gain": r.mean_gain,
                                         "length_limit": lim[n], "length_rise": rise[n]} for n, r in m.methods.items()},
                         "seconds": round(time.time() - t0, 1)})
            print(f"[select] seed {seed} {' '.join(sets)}: " + ", ".join(
                f"{n} GRA {r['gra']:.3f} at limit {r['length_limit']:.1%}" for n, r in rows[-1]["methods"].items())
                + f" (SFT {lim['sft']:.1%})", flush=True)
            print(write_table(rows, keys, run, args, out), flush=True)  # after every point: a cut-short run keeps what it measured


def worst_rise(row: dict) -> float:
    # rows written before length_rise was recorded: every method was compared with the common SFT model
    return max(r.get("length_rise", r["length_limit"] - row["sft_length_limit"]) for r in row["methods"].values())


def select(rows: list[dict], seeds: list[int], gate_method: str) -> tuple[dict | None, list[dict]]:
    """Per point: mean gate-method GRA over seeds, worst length rise, admissible (complete and within limit)."""
    points: dict[str, dict] = {}
    for r in rows:
        p = points.setdefault(json.dumps(r["point"], sort_keys=True), {"point": r["point"], "rows": []})
        p["rows"].append(r)
    summary = []
    for p in points.values():
        done = sorted(r["seed"] for r in p["rows"])
        worst = max(worst_rise(r) for r in p["rows"])
        summary.append({"point": p["point"], "seeds": done, "worst_length_rise": worst,
                        "mean_gate_gra": sum(r["methods"][gate_method]["gra"] for r in p["rows"]) / len(p["rows"]),
                        "admissible": done == sorted(seeds) and worst <= MAX_LIMIT_RISE})
    ok = [s for s in summary if s["admissible"]]
    return (max(ok, key=lambda s: s["mean_gate_gra"]) if ok else None), summary


def write_table(rows: list[dict], keys: list[str], run: Path, args, out: Path) -> str:
    keys = list(dict.fromkeys([*keys, *(k for r in rows for k in r["point"])]))
    methods = list(rows[0]["methods"])
    best, summary = select(rows, args.seeds, args.gate_method)
    lines = ["# Demo recipe selection on validation prompts (every demo method vs its SFT model)", "",
             f"- `python jobs/select_demo_recipe.py --seeds {' '.join(map(str, args.seeds))} --run-dir {args.run_dir} "
             f"{'--grid ' + ' '.join(args.grid) if args.grid else ''} {'--points ' + ' '.join(args.points) if args.points else ''}"
             f"{' ' + ' '.join(args.overrides) if args.overrides else ''}` (cumulative over invocations)",
             f"- {rows[0]['prompts']} validation prompts (seed {rows[0]['seed']}) x {rows[0]['samples_per_prompt']} samples;"
             " the test split is not read.",
             f"- Rule: admissible = in every seed, no method's length-limit share more than {int(MAX_LIMIT_RISE * 100)} points"
             f" above SFT's; selected = the admissible point with the highest {args.gate_method} GRA averaged over seeds.",
             "", "| seed | " + " | ".join(keys) + " | " + " | ".join(f"{m} GRA (at limit)" for m in methods) + " | SFT at limit |",
             "|" + "---|" * (len(keys) + len(methods) + 2)]
    for r in rows:
        lines.append(f"| {r['seed']} | " + " | ".join(str(r["point"].get(k, "-")) for k in keys) + " | " + " | ".join(
            f"{r['methods'][m]['gra']:.3f} ({r['methods'][m]['length_limit']:.1%}"
            + (f", {r['methods'][m]['length_rise'] * 100:+.1f} over its SFT)" if "length_rise" in r["methods"][m] else ")")
            for m in methods)
            + f" | {r['sft_length_limit']:.1%} |")
    lines += ["", "| " + " | ".join(keys) + f" | seeds | mean {args.gate_method} GRA | worst length rise | admissible |",
              "|" + "---|" * (len(keys) + 4)]
    for s in summary:
        lines.append("| " + " | ".join(str(s["point"].get(k, "-")) for k in keys) + f" | {','.join(map(str, s['seeds']))} | "
                     f"{s['mean_gate_gra']:.3f} | {s['worst_length_rise'] * 100:+.1f} pts | {'yes' if s['admissible'] else 'no'} |")
    sel = ("`" + " ".join(f"{k}={v}" for k, v in best["point"].items()) + "`") if best else "none (no admissible point)"
    lines += ["", f"selected: {sel}", ""]
    (out / "selection.md").write_text("\n".join(lines))
    (out / "selection.json").write_text(json.dumps({"rows": rows, "summary": summary,
                                                    "selected": best["point"] if best else None}, indent=2))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
