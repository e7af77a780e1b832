"""Pretraining the synthetic task's tiny base LMs: next-token prediction on text of the task's domain.

Real weak annotators and students start from pretrained backbones (the paper stresses that reusing
the annotator's pretrained backbone is crucial). Here the tiny Qwen2/Llama/OPT models built from a
config are trained as causal LMs on ``prompt + response`` text written by the task's sampler
(:meth:`cwpo_ray.synthetic.task.SyntheticTask.pretraining_texts`): no gold reward, no labels. A plain
torch loop in one process (the models have ~0.1–1M parameters; this takes seconds to a minute on 2
CPU cores); the result is saved with ``save_pretrained`` like any hub checkpoint.
"""
from __future__ import annotations

import math
import random

from pydantic import Field

from cwpo_ray.config import StrictModel


class PretrainConfig(StrictModel):
    num_texts: int = Field(default=16000, gt=0)  # sampler texts (prompt + response), drawn once per model
    epochs: float = Field(default=2.0, gt=0)
    lr: float = Field(default=3e-3, gt=0)
    batch_size: int = Field(default=64, gt=0)
    warmup_steps: int = Field(default=50, ge=0)
    weight_decay: float = Field(default=0.01, ge=0)
    seed: int = 0


def pretrain_causal_lm(model, tokenizer, texts: list[str], cfg: PretrainConfig, desc: str = "pretrain") -> dict:
    """Train ``model`` in place on ``texts`` (+ EOS) with the causal-LM loss; returns loss stats."""
    import torch
    from transformers import get_scheduler

    from cwpo_ray.console import bar as progress_bar
    from cwpo_ray.student.data import pad_sequences

    torch.manual_seed(cfg.seed)
    ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
    ids = [list(x) + [tokenizer.eos_token_id] for x in ids]
    pad = tokenizer.pad_token_id
    order = list(range(len(ids)))
    rng = random.Random(cfg.seed)
    steps_per_epoch = math.ceil(len(ids) / cfg.batch_size)
    total = max(1, int(steps_per_epoch * cfg.epochs))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = get_scheduler("cosine", opt, num_warmup_steps=min(cfg.warmup_steps, total - 1), num_training_steps=total)
    model.train()
    losses: list[float] = []
    step = 0
    bar = progress_bar(total=total, desc=desc, unit="step")
    while step < total:
        rng.shuffle(order)
        for s in range(0, len(order), cfg.batch_size):
            padded = pad_sequences([(ids[i], 0) for i in order[s:s + cfg.batch_size]], pad, 1)
            inp, att = padded["input_ids"], padded["attention_mask"]
            labels = inp.masked_fill(att == 0, -100)
            loss = model(input_ids=inp, attention_mask=att, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if step >= total:
                break
    bar.close()
    model.eval()
    tail = losses[-max(1, len(losses) // 10):]
    return {"steps": step, "first_loss": losses[0], "final_loss": sum(tail) / len(tail), "texts": len(texts)}
