"""Why do weak-label methods run to the length limit in the sandbox? Two checks on finished runs.

Reads only the training pool (``data/unlabeled``), the weak labels (``annotated/preferences``) and the
align logs (``align/*/metrics.jsonl``) of each run folder; never a validation or test split.

1. Length bias of the labels: the share of pairs whose chosen response is the longer one, for the weak
   labels (unweighted and confidence-weighted), the human labels and the gold ordering; weak labels'
   gold agreement by confidence quartile.
2. How far each method fitted its labels: the last logged preference accuracy, reward margin and
   chosen / rejected rewards of every align run.

    python jobs/weak_label_diagnostics.py runs/gate2/seed0 runs/gate3/seed0
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cwpo_ray.synthetic.task import gold_reward, parse_prompt  # noqa: E402


def words(texts: list[str]) -> np.ndarray:
    return np.array([len(t.split()) for t in texts])


def gold_diff(prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
    return np.array([gold_reward(parse_prompt(p), x) - gold_reward(parse_prompt(p), y) for p, x, y in zip(prompts, a, b)])


def label_lengths(run: Path) -> dict:
    w = pq.read_table(run / "annotated" / "preferences", columns=["prompt", "chosen", "rejected", "confidence"]).to_pydict()
    lc, lr, conf = words(w["chosen"]), words(w["rejected"]), np.array(w["confidence"])
    g = gold_diff(w["prompt"], w["chosen"], w["rejected"])
    longer, diff = (lc > lr).astype(float), (lc - lr).astype(float)
    quart = np.digitize(conf, np.quantile(conf, [0.25, 0.5, 0.75]))
    pool = pq.read_table(run / "data" / "unlabeled", columns=["prompt", "response_a", "response_b", "human_label"]).to_pydict()
    la, lb = words(pool["response_a"]), words(pool["response_b"])
    a_chosen = np.array([h == "a" for h in pool["human_label"]])
    gp = gold_diff(pool["prompt"], pool["response_a"], pool["response_b"])
    return {
        "weak_pairs": len(conf),
        "weak_chosen_longer": float(longer.mean()),
        "weak_chosen_longer_confidence_weighted": float((conf * longer).sum() / conf.sum()),
        "weak_word_diff": float(diff.mean()),
        "weak_word_diff_confidence_weighted": float((conf * diff).sum() / conf.sum()),
        "weak_gold_agreement_by_confidence_quartile": [float(np.mean(g[(quart == q) & (g != 0)] > 0)) for q in range(4)],
        "human_chosen_longer": float(np.where(a_chosen, la > lb, lb > la).mean()),
        "gold_preferred_longer": float(np.where(gp > 0, la > lb, lb > la)[gp != 0].mean()),
    }


def fit_stats(run: Path) -> dict:
    out = {}
    for f in sorted((run / "align").glob("*/metrics.jsonl")):
        rows = [json.loads(x) for x in f.read_text().splitlines() if '"loss"' in x]
        if rows:
            r = rows[-1]
            out[f.parent.name] = {k: round(r[k], 3) for k in ("step", "pref_acc", "reward_margin", "reward_chosen", "reward_rejected")}
    return out


def main() -> None:
    for run in map(Path, sys.argv[1:]):
        print(json.dumps({"run": str(run), "labels": label_lengths(run), "align_last_step": fit_stats(run)}, indent=1))


if __name__ == "__main__":
    main()
