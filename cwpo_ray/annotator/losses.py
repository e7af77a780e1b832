"""The two formulas CW-PO rests on, a few lines each (torch; numpy inputs also work via torch.as_tensor),
and the annotator's per-batch training step :func:`bt_loss` (used by the shared loop in :mod:`cwpo_ray.train`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(score_chosen: torch.Tensor, score_rejected: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry reward-model loss, mean over pairs::

        L = −log σ(s(x, y⁺) − s(x, y⁻))

    ``logsigmoid`` keeps it finite for large margins (−log σ(Δ) = softplus(−Δ)).
    """
    return -F.logsigmoid(score_chosen - score_rejected).mean()


def confidence(score_chosen, score_rejected) -> torch.Tensor:
    """CW-PO annotator confidence (paper Eq.): C = 2·(σ(Δ) − ½), Δ = s(x, y_chosen) − s(x, y_rejected).

    With chosen = the higher-scored response, Δ ≥ 0 and C ∈ [0, 1): 0 = a coin flip, → 1 = certain.
    (Equal to tanh(Δ/2); computed as written.)
    """
    delta = torch.as_tensor(score_chosen, dtype=torch.float64) - torch.as_tensor(score_rejected, dtype=torch.float64)
    return 2.0 * (torch.sigmoid(delta) - 0.5)


def orient(score_a, score_b) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a_is_chosen, score_chosen, score_rejected): chosen = the higher-scored response (ties → a)."""
    a = torch.as_tensor(score_a, dtype=torch.float64)
    b = torch.as_tensor(score_b, dtype=torch.float64)
    a_wins = a >= b
    return a_wins, torch.where(a_wins, a, b), torch.where(a_wins, b, a)


def bt_loss(model, batch: dict) -> tuple[torch.Tensor, dict]:
    """The annotator's training step core: Bradley–Terry loss of one batch of B pairs.

    ``batch["input_ids"]`` / ``["attention_mask"]`` are [2B, L]: the B chosen texts then the B
    rejected ones; ``model`` is a num_labels=1 sequence classifier (or a wrapper that forwards to it,
    e.g. a DeepSpeed engine). Returns (loss, {loss, accuracy, margin}).
    """
    scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].float()
    s_c, s_r = scores.chunk(2)
    loss = bradley_terry_loss(s_c, s_r)
    with torch.no_grad():
        metrics = {"loss": loss.detach(), "accuracy": (s_c > s_r).float().mean(), "margin": (s_c - s_r).mean()}
    return loss, metrics
