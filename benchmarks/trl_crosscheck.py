"""Cross-check the sandbox with TRL: does the sandbox, not our trainer, decide the outcome?

Takes a finished pipeline run (e.g. ``runs/demo`` after ``cwpo demo``), trains TRL's ``DPOTrainer``
from the run's SFT model on the same human-labeled pairs the run's Human-DPO method used (the unlabeled
pool's own human labels), with the run's align recipe (β, lr, epochs, pairs per optimizer step,
warm-up, schedule, weight decay, max length), and evaluates it with the run's own `evaluate` settings
(same test prompts, samples per prompt, sampling, gold reward). Prints TRL's GRA beside the run's
Human-DPO GRA and their difference.

    pip install -e '.[bench]'        # TRL
    python benchmarks/trl_crosscheck.py --run runs/demo [--method human-dpo]
    python benchmarks/trl_crosscheck.py --run runs/demo --method cw-dpo    # weak labels, TRL-native weighting

A weak-label method (labels=weak: CW-DPO, WS-DPO, top-N%) is trained with
:class:`cwpo_ray.integrations.trl.WeightedDPOTrainer` on the run's weak labels
(``annotated/preferences``) with the method's weighting, from the SFT model the method started from.

Differences that remain by design: TRL trains in one process (our align runs 2 Ray Train workers with
DeepSpeed; the global batch is the same), and TRL's data order and dropout RNG are its own.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="runs/demo", help="a finished pipeline run folder")
    ap.add_argument("--method", default="human-dpo", help="the run's method with labels=human_unlabeled, loss=dpo")
    ap.add_argument("--out", default=None, help="default: {run}/trl_crosscheck")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from cwpo_ray.config import load_config
    from cwpo_ray.evaluate.stage import run_evaluate
    from cwpo_ray.pipeline import PipelineConfig
    from cwpo_ray.results import EvaluateResult, read_result
    from cwpo_ray.student.data import human_pairs_to_preferences

    run = Path(args.run)
    cfg = load_config(PipelineConfig, run / "config.yaml")
    ms = cfg.methods[args.method]
    weak = ms.labels == "weak"
    if ms.loss != "dpo" or not (weak or (ms.labels == "human_unlabeled" and ms.weighting in ("none", "confidence"))):
        raise SystemExit(f"{args.method}: expected a DPO method on the pool's human labels (weight 1) or on the weak labels")
    al = cfg.align
    out = Path(args.out or run / ("trl_crosscheck" if args.method == "human-dpo" else f"trl_crosscheck_{args.method}"))
    # the SFT model the method started from (its reference and GRA baseline)
    recorded = json.loads((run / "align" / args.method / "summary.json").read_text()).get("base_model")
    sft_model = Path(recorded) if recorded else run / "sft" / "model"  # runs older than base_model: the common SFT
    if weak:  # the weak labels with the method's weights (the same rules as our align's with_weights)
        from cwpo_ray.integrations.trl import load_preferences

        labels = run / "annotated" / "preferences"
        labels = labels if labels.exists() else run / "annotated" / "labeled"  # runs of before 2026-11-24
        data = load_preferences(str(labels), weighting=ms.weighting, top_fraction=ms.top_fraction)
        data = data.select_columns(["prompt", "chosen", "rejected", "weight"])
    else:  # the same conversion (and quarantine rules) as our align's data_format=pairs
        pairs, _ = human_pairs_to_preferences(pq.read_table(run / "data" / "unlabeled"))
        data = Dataset.from_list(pairs.select(["prompt", "chosen", "rejected"]).to_pylist())
    rows = data
    per_step = al.batch_size * al.num_workers * al.grad_accum  # our global batch: pairs per optimizer step
    beta = ms.beta or al.beta
    print(f"TRL {'WeightedDPOTrainer' if weak else 'DPOTrainer'}: {len(rows)} {'weak' if weak else 'human'}-labeled pairs "
          f"(weighting {ms.weighting if weak else 'none'}) from {sft_model}; beta {beta}, lr {al.lr}, "
          f"{al.epochs} epochs, {per_step} pairs/step, warm-up {al.warmup_steps}, {al.lr_scheduler}", flush=True)
    torch.manual_seed(al.seed)
    tok = AutoTokenizer.from_pretrained(sft_model)
    lm = AutoModelForCausalLM.from_pretrained(sft_model, dtype=torch.float32)
    trl_cfg = DPOConfig(
        output_dir=str(out / "trainer"), per_device_train_batch_size=per_step, gradient_accumulation_steps=1,
        learning_rate=al.lr, weight_decay=al.weight_decay, beta=beta, loss_type=["sigmoid"],
        max_length=al.max_length, num_train_epochs=al.epochs, lr_scheduler_type=al.lr_scheduler,
        warmup_steps=al.warmup_steps or 0, max_grad_norm=al.max_grad_norm, adam_beta1=al.adam_betas[0],
        adam_beta2=al.adam_betas[1], logging_steps=20, save_strategy="no", report_to="none", use_cpu=True,
        seed=al.seed, dataloader_num_workers=0, disable_tqdm=True)
    t0 = time.time()
    if weak:
        from cwpo_ray.integrations.trl import WeightedDPOTrainer

        trainer = WeightedDPOTrainer(model=lm, args=trl_cfg, train_dataset=data, processing_class=tok, weight_column="weight")
    else:
        trainer = DPOTrainer(model=lm, args=trl_cfg, train_dataset=data, processing_class=tok)
    trainer.train()
    model_dir = out / "model"
    trainer.model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    print(f"TRL trained in {time.time() - t0:.0f}s -> {model_dir}", flush=True)

    ours = read_result(EvaluateResult, run / "eval" / "metrics.json")
    ev = cfg.evaluate.model_copy(update={
        "ray": cfg.ray, "prompts_path": ours.prompts_path, "sft_model": str(sft_model),
        "models": {"trl-dpo": str(model_dir)}, "baselines": {}, "compare_to": {}, "output_dir": str(out / "eval")})
    m = run_evaluate(ev)
    t, o = m.methods["trl-dpo"], ours.methods[args.method]
    result = {"trl_gra": t.gra, "trl_gra_ci": list(t.gra_ci), "ours_gra": o.gra, "ours_gra_ci": list(o.gra_ci),
              "difference": t.gra - o.gra, "trl_length_limit_share": m.length_limit_share["trl-dpo"],
              "ours_length_limit_share": ours.length_limit_share[args.method], "prompts": m.num_prompts,
              "samples_per_prompt": m.samples_per_prompt, "pairs": len(rows)}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    if str(sft_model) != str(ours.sft_model):
        print("(the baseline is the method's own SFT model; our run sampled it under another name, so its samples differ)")
    print(f"\nsame SFT model, same pairs, same recipe, same {m.num_prompts} prompts x {m.samples_per_prompt} samples:")
    print(f"  TRL {'weighted ' if weak else ''}DPO  GRA {t.gra:.3f} [{t.gra_ci[0]:.3f}, {t.gra_ci[1]:.3f}]  "
          f"at length limit {result['trl_length_limit_share']:.1%}")
    print(f"  cwpo {args.method:<10} GRA {o.gra:.3f} [{o.gra_ci[0]:.3f}, {o.gra_ci[1]:.3f}]  "
          f"at length limit {result['ours_length_limit_share']:.1%}")
    print(f"  difference (TRL - ours): {result['difference']:+.3f}")


if __name__ == "__main__":
    main()
