"""Held-out diagnostics of an annotator (numpy; plots with matplotlib's Agg backend).

All take ``p_a`` = P(a ≻ b) = σ(s_a − s_b) and ``y_a`` = 1 if the human preferred a.
"""
from __future__ import annotations

import numpy as np

TOP_FRACTIONS = tuple(round(0.1 * k, 1) for k in range(1, 11))  # top-10% … top-100%


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def accuracy(p_a, y_a) -> float:
    """Fraction of pairs where the higher-scored response is the human-preferred one (ties count as a)."""
    return float(np.mean((np.asarray(p_a) >= 0.5) == (np.asarray(y_a) == 1)))


def expected_calibration_error(p_a, y_a, n_bins: int = 10) -> float:
    """ECE of the predicted winner's probability max(p, 1−p) against being right, equal-width bins on
    [0.5, 1]: Σ_b (n_b / n) · |acc_b − conf_b|."""
    p_a, y_a = np.asarray(p_a, dtype=np.float64), np.asarray(y_a)
    conf = np.maximum(p_a, 1 - p_a)
    correct = ((p_a >= 0.5) == (y_a == 1)).astype(np.float64)
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def reliability_bins(p_a, y_a, n_bins: int = 10) -> list[dict]:
    p_a, y_a = np.asarray(p_a, dtype=np.float64), np.asarray(y_a)
    conf = np.maximum(p_a, 1 - p_a)
    correct = ((p_a >= 0.5) == (y_a == 1)).astype(np.float64)
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    return [{"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int((which == b).sum()),
             "confidence": float(conf[which == b].mean()) if (which == b).any() else None,
             "accuracy": float(correct[which == b].mean()) if (which == b).any() else None} for b in range(n_bins)]


def top_confident_accuracy(confidence, correct, fractions=TOP_FRACTIONS) -> dict[str, float]:
    """Accuracy of the top-N% most confident pairs, N = 10 … 100 (the paper's key curve):
    {"top10": acc, …, "top100": acc}. Ties in confidence are broken by input order (stable sort)."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    order = np.argsort(-confidence, kind="stable")
    out = {}
    for f in fractions:
        k = max(1, int(round(f * len(order))))
        out[f"top{int(round(f * 100))}"] = float(correct[order[:k]].mean()) if len(order) else float("nan")
    return out


def evaluate_pairs(score_a, score_b, y_a, n_bins: int = 10) -> dict:
    """Everything the train-annotator summary reports on held-out human-labeled pairs."""
    from cwpo_ray.annotator.losses import confidence

    score_a, score_b = np.asarray(score_a, dtype=np.float64), np.asarray(score_b, dtype=np.float64)
    y_a = np.asarray(y_a)
    p_a = sigmoid(score_a - score_b)
    correct = ((p_a >= 0.5) == (y_a == 1))
    conf = confidence(np.maximum(score_a, score_b), np.minimum(score_a, score_b)).numpy()
    return {
        "pairs": int(len(y_a)),
        "accuracy": accuracy(p_a, y_a),
        "ece": expected_calibration_error(p_a, y_a, n_bins),
        "top_confident_accuracy": top_confident_accuracy(conf, correct),
        "mean_confidence": float(conf.mean()) if len(conf) else float("nan"),
        "reliability": reliability_bins(p_a, y_a, n_bins),
    }


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def reliability_plot(bins: list[dict], path: str, title: str = "annotator reliability") -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    xs = [b["confidence"] for b in bins if b["n"]]
    ys = [b["accuracy"] for b in bins if b["n"]]
    ax.plot([0.5, 1], [0.5, 1], "--", color="gray", label="perfect calibration")
    ax.plot(xs, ys, "o-", label="annotator")
    ax.set_xlabel("predicted P(winner) = max(σ(Δ), 1−σ(Δ))")
    ax.set_ylabel("accuracy vs human label")
    ax.set_xlim(0.5, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def top_confident_plot(curve: dict[str, float], path: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [int(k[3:]) for k in curve]
    ax.plot(xs, list(curve.values()), "o-")
    ax.set_xlabel("top-N% most confident pairs")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy of the most confident pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confidence_histogram(counts: list[int], edges: list[float], path: str, title: str = "annotator confidence") -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.stairs(counts, edges, fill=True)
    ax.set_xlabel("confidence C = 2·(σ(Δ) − ½)")
    ax.set_ylabel("pairs")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
