"""The two formulas CW-PO rests on, a few lines each (torch; numpy inputs also work via torch.as_tensor)."""
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
