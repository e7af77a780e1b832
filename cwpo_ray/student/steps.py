"""The pure per-batch cores of `sft` and `align` (plain torch, no Ray, no DeepSpeed)."""
from __future__ import annotations

import torch

from cwpo_ray.student.logprobs import reduce_logprobs
from cwpo_ray.student.losses import preference_loss, weighted_mean


def sft_loss(policy, batch: dict) -> tuple[torch.Tensor, dict]:
    """Mean NLL over the batch's response tokens (prompt and padding carry no loss)."""
    logp, ntok = policy(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    n = ntok.sum().clamp(min=1)
    loss = -logp.sum() / n
    return loss, {"loss": loss.detach(), "tokens": n.detach().float()}


def align_loss(policy, batch: dict, *, loss_type: str, beta: float, reduction: str, rdpo_eps: float = 0.1,
               normalize_weights: bool = False, reference=None) -> tuple[torch.Tensor, dict]:
    """Confidence-weighted preference loss of one batch of B pairs.

    ``batch`` holds [2B, T] tensors (chosen rows then rejected rows), ``weight`` [B], and either the
    precomputed reference columns (``ref_chosen_logp`` … summed log-probs and token counts) or a
    ``reference`` module with the policy's call signature, run under ``no_grad``.
    """
    B = batch["weight"].shape[0]
    logp, ntok = policy(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    if "ref_chosen_logp" in batch:
        ref = torch.cat([batch["ref_chosen_logp"], batch["ref_rejected_logp"]]).to(logp.device)
    else:
        if reference is None:
            raise ValueError("align_loss needs a reference model or precomputed reference log-probs")
        with torch.no_grad():
            ref, _ = reference(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    pi = reduce_logprobs(logp, ntok, reduction)
    rf = reduce_logprobs(ref.to(logp.dtype), ntok, reduction)
    ratio_c, ratio_r = pi[:B] - rf[:B], pi[B:] - rf[B:]
    delta = ratio_c - ratio_r
    losses = preference_loss(loss_type, delta, beta, rdpo_eps)
    w = batch["weight"].to(device=losses.device, dtype=losses.dtype)
    loss = weighted_mean(losses, w, normalize_weights)
    with torch.no_grad():
        correct = (delta > 0).float()
        metrics = {
            "loss": loss.detach(),
            "unweighted_loss": losses.mean(),
            "reward_chosen": (beta * ratio_c).mean(),
            "reward_rejected": (beta * ratio_r).mean(),
            "reward_margin": (beta * delta).mean(),
            "pref_acc": correct.mean(),
            "weighted_pref_acc": (w * correct).sum() / w.sum().clamp(min=1e-8),
            "mean_weight": w.mean(),
        }
    return loss, metrics
