"""Gold Reward Accuracy (GRA) with ties, a bootstrap CI, and the mean gold-reward gain. Pure numpy.

For each prompt x, the aligned model's response y_a and the SFT model's response y_s are scored by
the gold reward r*. Then, over the n prompts::

    GRA       = #{r*(x, y_a) >  r*(x, y_s) + tol} / n      (the paper's metric: ties are not wins)
    tie rate  = #{|r*(x, y_a) − r*(x, y_s)| <= tol} / n
    gain      = mean(r*(x, y_a) − r*(x, y_s))

and a percentile bootstrap over prompts gives the CIs of GRA and of the gain.
"""
from __future__ import annotations

import numpy as np


def gra(aligned: np.ndarray, sft: np.ndarray, num_bootstrap: int = 1000, ci: float = 0.95, seed: int = 0,
        tie_tolerance: float = 0.0) -> dict:
    aligned, sft = np.asarray(aligned, dtype=np.float64), np.asarray(sft, dtype=np.float64)
    if aligned.shape != sft.shape or aligned.ndim != 1 or aligned.size == 0:
        raise ValueError(f"need two equal-length non-empty score vectors, got {aligned.shape} and {sft.shape}")
    d = aligned - sft
    wins = d > tie_tolerance
    ties = np.abs(d) <= tie_tolerance
    n = d.size
    rng = np.random.default_rng(seed)
    boot_gra, boot_gain = np.empty(num_bootstrap), np.empty(num_bootstrap)
    w = wins.astype(np.float64)
    for start in range(0, num_bootstrap, 256):  # chunks bound memory at 256 x n indices
        m = min(256, num_bootstrap - start)
        idx = rng.integers(0, n, size=(m, n))
        boot_gra[start:start + m] = w[idx].mean(axis=1)
        boot_gain[start:start + m] = d[idx].mean(axis=1)
    lo, hi = (1 - ci) / 2 * 100, (1 + ci) / 2 * 100
    return {
        "n": int(n),
        "wins": int(wins.sum()),
        "ties": int(ties.sum()),
        "losses": int(n - wins.sum() - ties.sum()),
        "gra": float(wins.mean()),
        "tie_rate": float(ties.mean()),
        "loss_rate": float(1 - wins.mean() - ties.mean()),
        "gra_ci": [float(np.percentile(boot_gra, lo)), float(np.percentile(boot_gra, hi))],
        "mean_gain": float(d.mean()),
        "mean_gain_ci": [float(np.percentile(boot_gain, lo)), float(np.percentile(boot_gain, hi))],
        "mean_gold_aligned": float(aligned.mean()),
        "mean_gold_sft": float(sft.mean()),
        "ci": ci,
        "num_bootstrap": int(num_bootstrap),
    }
