"""Per-pair preference losses and the CW-PO weights (pure torch; the core of the paper).

Every loss takes the policy/reference log-ratio margin of each pair

    Δ = [log πθ(y⁺|x) − log πref(y⁺|x)] − [log πθ(y⁻|x) − log πref(y⁻|x)]

and returns one loss per pair (no reduction), TRL-style. The batch loss is
``mean_i(w_i · ℓ_i)`` (the paper's Eq.; :func:`weighted_mean`), optionally renormalised by Σw.
"""
from __future__ import annotations

from typing import get_args

import torch
import torch.nn.functional as F

from cwpo_ray.config import Loss, Weighting

LOSSES: tuple[str, ...] = get_args(Loss)
WEIGHTINGS: tuple[str, ...] = get_args(Weighting)


def dpo_loss(delta: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023): ℓ = −log σ(β·Δ)."""
    return -F.logsigmoid(beta * delta)


def ipo_loss(delta: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO (Azar et al. 2023): ℓ = (Δ − 1/(2β))².

    TRL computes Δ from length-averaged log-probs; the paper's equation reads as summed log-probs.
    Which one is used is decided by the caller (``AlignConfig.logprob_reduction``).
    """
    return (delta - 1.0 / (2.0 * beta)) ** 2


def robust_dpo_loss(delta: torch.Tensor, beta: float, eps: float = 0.1) -> torch.Tensor:
    """rDPO (Chowdhury et al. 2024), label-flip rate ε:

    ℓ = [−(1−ε)·log σ(β·Δ) + ε·log σ(−β·Δ)] / (1 − 2ε)
    """
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"rdpo eps must be in [0, 0.5), got {eps}")
    return (-(1.0 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1.0 - 2.0 * eps)


def preference_loss(kind: str, delta: torch.Tensor, beta: float, eps: float = 0.1) -> torch.Tensor:
    """Per-pair loss of ``kind`` in :data:`LOSSES`."""
    if kind == "dpo":
        return dpo_loss(delta, beta)
    if kind == "ipo":
        return ipo_loss(delta, beta)
    if kind == "rdpo":
        return robust_dpo_loss(delta, beta, eps)
    raise ValueError(f"unknown loss {kind!r}; expected one of {LOSSES}")


def top_fraction_threshold(confidence, fraction: float) -> float:
    """The confidence a pair needs to be in the top ``fraction`` of the WHOLE dataset.

    ``fraction`` in (0, 1]; the threshold is the confidence of the ⌈fraction·n⌉-th most confident
    pair (ties at the threshold are all kept).
    """
    import numpy as np

    c = np.asarray(confidence, dtype=np.float64)
    if c.size == 0:
        return float("inf")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"top fraction must be in (0, 1], got {fraction}")
    k = max(1, int(np.ceil(fraction * c.size)))
    return float(np.sort(c)[::-1][k - 1])


def pair_weights(scheme: str, confidence=None, delta=None, threshold: float | None = None) -> torch.Tensor:
    """Per-pair weights w_i.

    - ``confidence``: w = C (CW-PO), C = 2·(σ(Δ_w) − ½) from the weak annotator.
    - ``none``: w = 1 (WS-DPO / Human-DPO).
    - ``top_fraction``: w = 1 if C ≥ ``threshold`` else 0, the threshold decided over the whole
      dataset by :func:`top_fraction_threshold`.
    - ``sigmoid_delta``: w = σ(Δ_w); ``clip_delta``: w = min(Δ_w, 1); ``scaled_clip_delta``:
      w = min(0.2·Δ_w, 1); Δ_w = score_chosen − score_rejected of the weak annotator (≥ 0 when the
      annotator picked ``chosen``; the clipped schemes are floored at 0 so no weight is negative).
    """
    def t(x, name):
        if x is None:
            raise ValueError(f"weighting {scheme!r} needs {name}")
        return torch.as_tensor(x, dtype=torch.float32)

    if scheme == "none":
        ref = confidence if confidence is not None else delta
        return torch.ones_like(t(ref, "confidence or delta"))
    if scheme == "confidence":
        return t(confidence, "confidence")
    if scheme == "top_fraction":
        if threshold is None:
            raise ValueError("weighting 'top_fraction' needs a dataset-level threshold")
        return (t(confidence, "confidence") >= threshold).float()
    if scheme == "sigmoid_delta":
        return torch.sigmoid(t(delta, "delta"))
    if scheme == "clip_delta":
        return t(delta, "delta").clamp(min=0.0, max=1.0)
    if scheme == "scaled_clip_delta":
        return (0.2 * t(delta, "delta")).clamp(min=0.0, max=1.0)
    raise ValueError(f"unknown weighting {scheme!r}; expected one of {WEIGHTINGS}")


def weighted_mean(losses: torch.Tensor, weights: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """The paper's batch loss mean_i(w_i·ℓ_i); with ``normalize`` Σ_i w_i·ℓ_i / Σ_i w_i."""
    w = weights.to(losses.dtype)
    if normalize:
        return (w * losses).sum() / w.sum().clamp(min=1e-8)
    return (w * losses).mean()
