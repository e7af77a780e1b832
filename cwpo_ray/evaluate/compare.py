"""Comparing methods over prompts and seeds: paired differences and seed aggregation. Pure numpy/pyarrow.

``evaluate`` writes every scored sample to ``responses.parquet`` (method, prompt_id, sample, gold). From
one run folder per seed this module computes, for each method, its per-prompt win share against the
baseline (the SFT model: ``mean_j [r*(x, y_m^j) > r*(x, y_sft^j) + tol]``, the quantity GRA averages),
and from those:

- ``gra_over_seeds``: per-seed GRA, their mean, and a CI over seeds x prompts;
- ``paired_difference``: GRA(A) − GRA(B) on the same prompts of the same seeds — both methods are
  compared with the same SFT samples, so the difference is paired per prompt — with the same CI.

The CI is a two-level percentile bootstrap: draw the seeds with replacement, then within each drawn
seed its prompts with replacement, and average. It therefore covers both the spread between seeds
(a new task, annotator, SFT and aligned model each) and the prompt sampling inside one; with few seeds
it is wide, which is what few seeds warrant. With one seed it is the ordinary bootstrap over prompts.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cwpo_ray import io


def win_shares(responses: pa.Table, method: str, baseline: str = "sft", tie_tolerance: float = 0.0) -> dict[str, float]:
    """prompt_id -> share of the k samples where ``method`` beats ``baseline`` (sample j against sample j)."""
    def gold(name: str) -> dict[tuple[str, int], float]:
        t = responses.filter(pc.equal(responses.column("method"), name))
        if t.num_rows == 0:
            raise ValueError(f"no responses of method {name!r} (have {sorted(set(responses.column('method').to_pylist()))})")
        return {(p, s): g for p, s, g in zip(t.column("prompt_id").to_pylist(), t.column("sample").to_pylist(),
                                             t.column("gold").to_pylist())}
    m, b = gold(method), gold(baseline)
    if m.keys() != b.keys():
        raise ValueError(f"{method!r} and {baseline!r} were not sampled on the same (prompt, sample) pairs")
    wins: dict[str, list[float]] = {}
    for key, g in m.items():
        wins.setdefault(key[0], []).append(float(g > b[key] + tie_tolerance))
    return {p: float(np.mean(v)) for p, v in wins.items()}


def two_level_bootstrap(per_seed: list[np.ndarray], num_bootstrap: int = 2000, ci: float = 0.95,
                        seed: int = 0) -> tuple[float, list[float]]:
    """Mean over seeds of each seed's mean, and its percentile CI (seeds, then prompts within a seed, resampled)."""
    per_seed = [np.asarray(v, dtype=np.float64) for v in per_seed]
    if not per_seed or any(v.ndim != 1 or v.size == 0 for v in per_seed):
        raise ValueError("need one non-empty 1-d array of per-prompt values per seed")
    rng = np.random.default_rng(seed)
    s = len(per_seed)
    boot = np.empty(num_bootstrap)
    for i in range(num_bootstrap):
        seeds = rng.integers(0, s, size=s) if s > 1 else np.zeros(1, dtype=int)
        boot[i] = np.mean([per_seed[j][rng.integers(0, per_seed[j].size, size=per_seed[j].size)].mean() for j in seeds])
    lo, hi = (1 - ci) / 2 * 100, (1 + ci) / 2 * 100
    return float(np.mean([v.mean() for v in per_seed])), [float(np.percentile(boot, lo)), float(np.percentile(boot, hi))]


def gra_over_seeds(responses: list[pa.Table], method: str, baseline: str = "sft", tie_tolerance: float = 0.0,
                   num_bootstrap: int = 2000, ci: float = 0.95, seed: int = 0) -> dict:
    """``responses``: one evaluate ``responses.parquet`` table per seed."""
    per = [np.array(list(win_shares(t, method, baseline, tie_tolerance).values())) for t in responses]
    mean, bounds = two_level_bootstrap(per, num_bootstrap, ci, seed)
    return {"method": method, "baseline": baseline, "gra": mean, "ci": bounds, "level": ci,
            "per_seed": [float(v.mean()) for v in per], "prompts": [int(v.size) for v in per]}


def paired_difference(responses: list[pa.Table], a: str, b: str, baseline: str = "sft", tie_tolerance: float = 0.0,
                      num_bootstrap: int = 2000, ci: float = 0.95, seed: int = 0) -> dict:
    """GRA(a) − GRA(b) against the same baseline samples, paired per prompt within each seed."""
    d = difference_of_shares([win_shares(t, a, baseline, tie_tolerance) for t in responses],
                             [win_shares(t, b, baseline, tie_tolerance) for t in responses], (a, b), num_bootstrap, ci, seed)
    return {**d, "baseline": baseline}


def difference_of_shares(a: list[dict[str, float]], b: list[dict[str, float]], names: tuple[str, str] = ("a", "b"),
                         num_bootstrap: int = 2000, ci: float = 0.95, seed: int = 0) -> dict:
    """GRA(a) − GRA(b) from per-seed ``prompt_id -> win share`` maps (:func:`win_shares`), paired per prompt.

    Each method's shares may come from its own evaluate run and against its own reference (the paper's
    initialisation: each method is compared with its own SFT model); the pairing is over the prompts,
    which every run of a seed shares."""
    if len(a) != len(b):
        raise ValueError(f"{names[0]!r} and {names[1]!r} have {len(a)} and {len(b)} seeds")
    per = []
    for wa, wb in zip(a, b):
        if wa.keys() != wb.keys():
            raise ValueError(f"{names[0]!r} and {names[1]!r} were evaluated on different prompts")
        per.append(np.array([wa[p] - wb[p] for p in sorted(wa)]))
    mean, bounds = two_level_bootstrap(per, num_bootstrap, ci, seed)
    return {"a": names[0], "b": names[1], "difference": mean, "ci": bounds, "level": ci,
            "per_seed": [float(v.mean()) for v in per], "prompts": [int(v.size) for v in per]}


def read_responses(paths: list[str]) -> list[pa.Table]:
    """The ``responses.parquet`` of several evaluate folders (or the files themselves; local paths or URIs),
    one table each."""
    tables = []
    for p in map(str, paths):
        fs, path = io.resolve(p if p.endswith(".parquet") else io.join(p, "responses.parquet"))
        tables.append(pq.read_table(path, filesystem=fs))
    return tables


def verdict(diff: dict) -> str:
    """A measured statement about a paired difference: which way its CI lies, or that it contains 0."""
    lo, hi = diff["ci"]
    span = f"{diff['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    if lo > 0:
        return f"{diff['a']} above {diff['b']}: {span}"
    if hi < 0:
        return f"{diff['a']} below {diff['b']}: {span}"
    return f"{diff['a']} vs {diff['b']}: no difference resolved, {span}"
