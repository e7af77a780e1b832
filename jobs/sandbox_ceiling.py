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
runs with ``sft_data=method_labels`` (one SFT model per label source) are refused.
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

    import pandas as pd
    import yaml

    from cwpo_ray import console
    from cwpo_ray.generate.config import EngineConfig, SamplingConfig
    from cwpo_ray.generate.stage import collect, generate_table, read_prompts
    from cwpo_ray.runtime import init_ray
    from cwpo_ray.synthetic.diagnostics import kl_optimum, scale_for_gain
    from cwpo_ray.synthetic.task import SyntheticGoldReward, SyntheticTask, SyntheticTaskConfig

    run = Path(args.run).resolve()
    console.setup(run / "logs", verbose=False)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    if cfg.get("sft_data", "labeled_human") != "labeled_human":
        sys.exit(f"sft_data={cfg['sft_data']}: each method has its own SFT model; this script measures against sft/model only")
    task = SyntheticTask(SyntheticTaskConfig(**cfg["synthetic"]["task"]))
    task.rows()  # solves the label temperature T exactly as synthesize did
    T = task.temperature
    sampling = SamplingConfig(**cfg["evaluate"]["sampling"])
    engine = EngineConfig(**cfg["evaluate"].get("engine", {}))

    init_ray()
    prompts, _, _ = read_prompts(str(run / "data" / "validation"), "prompt", args.prompts)
    cands = collect(generate_table(prompts, str(run / "sft" / "model"), args.samples, sampling, engine)[0])
    df = cands.select(["prompt", "response"]).to_pandas()
    df["gold"] = SyntheticGoldReward().score(df["prompt"].tolist(), df["response"].tolist())
    groups = [g["gold"].to_numpy() for _, g in df.groupby("prompt", sort=True)]
    m = min(len(g) for g in groups)
    R = np.stack([g[:m] for g in groups])

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

    ev = run / "eval_validation" / "responses.parquet"
    if ev.exists():
        e = pd.read_parquet(ev)
        summ = json.loads((run / "eval_validation" / "summary.json").read_text()) if (run / "eval_validation" / "summary.json").exists() else {}
        sft_mean = e[e["method"] == "sft"]["gold"].mean()
        print(f"\nmeasured on {ev.relative_to(run)} (its last evaluated point)\n"
              "| method | GRA | mean gain | beta_eff (optimum with this gain) | that optimum's GRA |\n|---|---|---|---|---|")
        for method, g in e[e["method"] != "sft"].groupby("method", sort=False):
            gain = float(g["gold"].mean() - sft_mean)
            gra = summ.get("methods", {}).get(method, {}).get("gra")
            s = scale_for_gain(R, gain) if gain > 0 else float("nan")
            opt_gra = kl_optimum(R, s)[0] if gain > 0 else float("nan")
            out["methods"].append({"method": method, "gra": gra, "gain": gain, "beta_eff": 1.0 / (T * s), "optimum_gra": opt_gra})
            print(f"| {method} | {gra if gra is None else f'{gra:.3f}'} | {gain:+.3f} | {1.0 / (T * s):.2f} | {opt_gra:.3f} |")
    path = Path(args.out) if args.out else run / "ceiling.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
