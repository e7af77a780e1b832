"""Gold Reward Accuracy (GRA) with ties, a bootstrap CI, and the mean gold-reward gain. Pure numpy.

For each prompt x, k responses y_a^j of the aligned model and k responses y_s^j of the SFT model
(independent samples) are scored by the gold reward r*; sample j of one is compared with sample j of
the other, and each prompt's share of wins is averaged over its k comparisons. Over the n prompts::

    GRA       = mean_x mean_j [r*(x, y_a^j) >  r*(x, y_s^j) + tol]   (the paper's metric: ties are not wins)
    tie rate  = mean_x mean_j [|r*(x, y_a^j) − r*(x, y_s^j)| <= tol]
    gain      = mean_x mean_j (r*(x, y_a^j) − r*(x, y_s^j))

With k = 1 this is the paper's GRA. A percentile bootstrap over prompts (each prompt's k comparisons
stay together) gives the CIs of GRA and of the gain.
"""
from __future__ import annotations

import numpy as np


def gra(aligned: np.ndarray, sft: np.ndarray, num_bootstrap: int = 1000, ci: float = 0.95, seed: int = 0,
        tie_tolerance: float = 0.0) -> dict:
    """``aligned``, ``sft``: gold rewards, [n] (one sample per prompt) or [n, k] (k samples per prompt)."""
    aligned, sft = np.asarray(aligned, dtype=np.float64), np.asarray(sft, dtype=np.float64)
    if aligned.shape != sft.shape or aligned.ndim not in (1, 2) or aligned.size == 0:
        raise ValueError(f"need two equal-shape non-empty [n] or [n, k] score arrays, got {aligned.shape} and {sft.shape}")
    if aligned.ndim == 1:
        aligned, sft = aligned[:, None], sft[:, None]
    dk = aligned - sft
    wins_k = dk > tie_tolerance
    ties_k = np.abs(dk) <= tie_tolerance
    d, w, t = dk.mean(1), wins_k.mean(1), ties_k.mean(1)  # per prompt
    n = d.size
    rng = np.random.default_rng(seed)
    boot_gra, boot_gain = np.empty(num_bootstrap), np.empty(num_bootstrap)
    for start in range(0, num_bootstrap, 256):  # chunks bound memory at 256 x n indices
        m = min(256, num_bootstrap - start)
        idx = rng.integers(0, n, size=(m, n))
        boot_gra[start:start + m] = w[idx].mean(axis=1)
        boot_gain[start:start + m] = d[idx].mean(axis=1)
    lo, hi = (1 - ci) / 2 * 100, (1 + ci) / 2 * 100
    return {
        "n": int(n),
        "samples_per_prompt": int(dk.shape[1]),
        "wins": int(wins_k.sum()),
        "ties": int(ties_k.sum()),
        "losses": int(dk.size - wins_k.sum() - ties_k.sum()),
        "gra": float(w.mean()),
        "tie_rate": float(t.mean()),
        "loss_rate": float(1 - w.mean() - t.mean()),
        "gra_ci": [float(np.percentile(boot_gra, lo)), float(np.percentile(boot_gra, hi))],
        "mean_gain": float(d.mean()),
        "mean_gain_ci": [float(np.percentile(boot_gain, lo)), float(np.percentile(boot_gain, hi))],
        "mean_gold_aligned": float(aligned.mean()),
        "mean_gold_sft": float(sft.mean()),
        "ci": ci,
        "num_bootstrap": int(num_bootstrap),
    }
