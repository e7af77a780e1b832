"""How far is the sandbox's DPO from the optimum it is solving for? Validation prompts only.

DPO on Bradley–Terry labels with temperature T solves max E[r*/T] − β·KL(π ‖ π_SFT); its optimum is
π* ∝ π_SFT · exp(r*/(T β)). On the synthetic task that optimum can be measured without training:
sample many responses per prompt from the SFT model (vLLM, the evaluation's sampling), score them with
the gold reward, and reweight (:func:`cwpo_ray.synthetic.diagnostics.kl_optimum`). This prints

1. the optimum's GRA and mean gold gain against the SFT model for several β (what DPO could reach with
   unlimited labels and exact optimisation), and
2. for each method of a finished validation evaluation (``eval_validation``, written by
   ``jobs/select_demo_recipe.py``): its measured GRA and mean gain, the β whose optimum has the same mean
   gain (β_eff), and that optimum's GRA — whether the method falls short by moving too little or by
   moving in the wrong direction.

    python jobs/sandbox_ceiling.py runs/gate/seed1 [--prompts 100 --samples 256]

The optimum is taken over the sampled set, so at small β (mass on few samples) it is rough: the effective
sample size per prompt is printed beside it. The reference is the run's common SFT model (``sft/model``);
runs with ``sft_data=method_labels`` (one SFT model per label source) or flip-noise labels (no temperature)
are refused.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a run folder of the demo pipeline (e.g. runs/gate/seed1)")
    ap.add_argument("--prompts", type=int, default=100, help="validation prompts")
    ap.add_argument("--samples", type=int, default=256, help="SFT samples per prompt")
    ap.add_argument("--betas", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0, 2.0])
    ap.add_argument("--out", default=None, help="json file (default: {run}/ceiling.json)")
    args = ap.parse_args()

    from cwpo_ray import console, io
    from cwpo_ray.config import load_config
    from cwpo_ray.generate.stage import collect, generate_table, read_prompts
    from cwpo_ray.layout import RunLayout
    from cwpo_ray.pipeline import PipelineConfig
    from cwpo_ray.results import EvaluateResult, SynthesizeResult, read_result
    from cwpo_ray.runtime import init_ray
    from cwpo_ray.synthetic.diagnostics import kl_optimum, scale_for_gain
    from cwpo_ray.synthetic.task import SyntheticGoldReward

    run = Path(args.run).resolve()
    layout = RunLayout.of(run)
    console.setup(run / "logs", verbose=False)
    cfg = load_config(PipelineConfig, layout.config)
    if cfg.sft_data != "labeled_human":
        sys.exit(f"sft_data={cfg.sft_data}: each method has its own SFT model; this script measures against sft/model only")
    T = read_result(SynthesizeResult, io.join(layout.synthetic, "manifest.json")).labels.label_temperature
    if T is None:
        sys.exit("the run's human labels are not Bradley–Terry draws (label_noise=flip): DPO's optimum has no temperature here")

    init_ray()
    prompts, _, _ = read_prompts(io.join(layout.data, "validation"), "prompt", args.prompts)
    cands = collect(generate_table(prompts, RunLayout.model(layout.sft), args.samples, cfg.evaluate.sampling,
                                   cfg.evaluate.engine)[0])
    by_prompt: dict[str, list[float]] = {}
    gold = SyntheticGoldReward().score(cands.column("prompt").to_pylist(), cands.column("response").to_pylist())
    for p, g in zip(cands.column("prompt").to_pylist(), gold):
        by_prompt.setdefault(p, []).append(g)
    m = min(len(v) for v in by_prompt.values())
    R = np.array([by_prompt[p][:m] for p in sorted(by_prompt)])

    out = {"run": str(run), "label_temperature": T, "prompts": int(R.shape[0]), "samples": int(m),
           "sft_mean_gold": float(R.mean()), "within_prompt_sd": float(R.std(axis=1).mean()), "optimum": [], "methods": []}
    print(f"T = {T:.3f}; {R.shape[0]} validation prompts x {m} SFT samples; SFT mean gold {R.mean():.3f}, "
          f"within-prompt sd {out['within_prompt_sd']:.3f}")
    print("\n| beta | optimum GRA vs SFT | optimum mean gain | effective samples/prompt |\n|---|---|---|---|")
    for beta in args.betas:
        s = 1.0 / (T * beta)
        gra, gain = kl_optimum(R, s)
        w = np.exp(s * (R - R.max(axis=1, keepdims=True)))
        ess = float(np.mean(w.sum(1) ** 2 / (w ** 2).sum(1)))
        out["optimum"].append({"beta": beta, "gra": gra, "gain": gain, "ess": ess})
        print(f"| {beta:g} | {gra:.3f} | {gain:+.3f} | {ess:.0f} |")

    ev = run / "eval_validation" / "metrics.json"  # written by jobs/select_demo_recipe.py
    if ev.exists():
        e = read_result(EvaluateResult, ev)
        print(f"\nmeasured in {ev.relative_to(run)} (its last evaluated point)\n"
              "| method | GRA | mean gain | beta_eff (optimum with this gain) | that optimum's GRA |\n|---|---|---|---|---|")
        for method, r in e.methods.items():
            s = scale_for_gain(R, r.mean_gain) if r.mean_gain > 0 else float("nan")
            opt_gra = kl_optimum(R, s)[0] if r.mean_gain > 0 else float("nan")
            out["methods"].append({"method": method, "gra": r.gra, "gain": r.mean_gain, "beta_eff": 1.0 / (T * s),
                                   "optimum_gra": opt_gra})
            print(f"| {method} | {r.gra:.3f} | {r.mean_gain:+.3f} | {1.0 / (T * s):.2f} | {opt_gra:.3f} |")
    path = Path(args.out) if args.out else run / "ceiling.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
