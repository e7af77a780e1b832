"""Label-regime statistics of a synthetic run: how good are the human and the weak labels, against gold?

Only the synthetic task knows its gold reward r*, so only there can the labels be checked against it.
Read after ``annotate``; never read by training. Pure pyarrow + the task's :func:`gold_reward`.
"""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from cwpo_ray import io
from cwpo_ray.results import LabelReport
from cwpo_ray.synthetic.task import gold_reward, parse_prompt

TOP_FRACTIONS = (0.3, 0.5, 0.75, 1.0)


def _read(path: str, columns: list[str]):
    if not io.exists(path):
        return None
    fs, local = io.resolve(path)
    return pq.read_table(local, filesystem=fs, columns=columns)


def _gold(prompts: list[str], responses: list[str]) -> np.ndarray:
    return np.array([gold_reward(parse_prompt(p), r) for p, r in zip(prompts, responses)])


def label_report(data_dir: str, annotated_dir: str) -> LabelReport:
    """Agreement with the gold ordering of: the human labels of the unlabeled pool, the weak labels
    (all and their top-N% most confident), and the weak labels' agreement with held-out human labels.
    Pairs whose two responses have equal gold reward are left out of the gold agreements. The pool's
    fields are None without an unlabeled pool, the weak labels' without annotated pairs."""
    out: dict = {}
    pool = _read(io.join(data_dir, "unlabeled"), ["prompt", "response_a", "response_b", "human_label"])
    if pool is not None and pool.num_rows:
        p = pool.column("prompt").to_pylist()
        d = _gold(p, pool.column("response_a").to_pylist()) - _gold(p, pool.column("response_b").to_pylist())
        lab = np.array(pool.column("human_label").to_pylist(), dtype=object)
        ok = (d != 0) & (lab != None)  # noqa: E711 - elementwise
        out["human_gold_agreement"] = float(np.mean((d[ok] > 0) == (lab[ok] == "a")))
        out["pool_pairs"] = int(pool.num_rows)
    weak = _read(annotated_dir, ["prompt", "chosen", "rejected", "confidence", "human_label_agrees"])
    if weak is not None and weak.num_rows:
        p = weak.column("prompt").to_pylist()
        d = _gold(p, weak.column("chosen").to_pylist()) - _gold(p, weak.column("rejected").to_pylist())
        conf = weak.column("confidence").to_numpy(zero_copy_only=False).astype(np.float64)
        hum = [x for x in weak.column("human_label_agrees").to_pylist() if x is not None]
        out["weak_pairs"] = int(weak.num_rows)
        out["weak_human_agreement"] = float(np.mean(hum)) if hum else None
        nz = d != 0
        out["weak_gold_agreement"] = float(np.mean(d[nz] > 0))
        order = np.argsort(-conf, kind="stable")
        top = {}
        for f in TOP_FRACTIONS:
            idx = order[: max(1, int(np.ceil(f * len(order))))]
            idx = idx[nz[idx]]
            top[f"top{int(f * 100)}"] = float(np.mean(d[idx] > 0))
        out["weak_gold_agreement_top"] = top
        # Is confidence informative? Agreement with gold in confidence quartiles (lowest first).
        q = np.quantile(conf, [0.25, 0.5, 0.75])
        bins = np.digitize(conf, q)
        out["weak_gold_agreement_by_confidence_quartile"] = [
            float(np.mean(d[(bins == b) & nz] > 0)) if ((bins == b) & nz).any() else None for b in range(4)]
    return LabelReport(**out)


def format_label_report(r: LabelReport) -> str:
    parts = []
    if r.human_gold_agreement is not None:
        parts.append(f"human labels vs gold {r.human_gold_agreement:.3f}")
    if r.weak_gold_agreement is not None:
        wh = r.weak_human_agreement
        parts.append(f"weak labels vs held-out human {wh:.3f}" if wh is not None else "weak labels vs human: n/a")
        parts.append(f"weak vs gold {r.weak_gold_agreement:.3f}, top-30% most confident vs gold "
                     f"{r.weak_gold_agreement_top['top30']:.3f}")
    return "labels: " + "; ".join(parts)


def tilted_gra(rewards: np.ndarray, log_weights: np.ndarray) -> tuple[float, float]:
    """GRA and mean gold gain of a reweighted sample set against the same set unweighted.

    ``rewards[i]`` holds gold rewards of M samples of prompt i from a reference policy; the "aligned"
    policy puts mass ∝ exp(log_weights[i]) on them (self-normalised importance weights). GRA counts
    strict wins only, as the evaluation does: mean over prompts of Σ_k w_k · #{j: r_j < r_k} / M.
    """
    gras, gains = [], []
    for r, lw in zip(np.asarray(rewards, dtype=np.float64), np.asarray(log_weights, dtype=np.float64)):
        w = np.exp(lw - lw.max())
        w /= w.sum()
        below = np.searchsorted(np.sort(r), r, side="left") / r.size
        gras.append(float(w @ below))
        gains.append(float(w @ r - r.mean()))
    return float(np.mean(gras)), float(np.mean(gains))


def kl_optimum(rewards: np.ndarray, scale: float) -> tuple[float, float]:
    """(GRA, mean gain) of π ∝ π_ref · exp(scale · r*): the optimum of the KL-regularised objective that
    DPO solves. For Bradley–Terry labels with temperature T, DPO's implied reward is r*/T and
    scale = 1 / (T β)."""
    r = np.asarray(rewards, dtype=np.float64)
    return tilted_gra(r, scale * r)


def scale_for_gain(rewards: np.ndarray, gain: float) -> float:
    """The tilt ``scale`` whose optimum has mean gold gain ``gain`` (> 0), by bisection on log scale."""
    lo, hi = np.log(1e-6), np.log(1e3)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if kl_optimum(rewards, float(np.exp(mid)))[1] < gain:
            lo = mid
        else:
            hi = mid
    return float(np.exp(0.5 * (lo + hi)))
