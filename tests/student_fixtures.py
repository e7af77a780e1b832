"""Builds LABELED_SCHEMA parquet (what `annotate` writes) from the synthetic task for student tests."""
from __future__ import annotations

import glob
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cwpo_ray.schema import LABELED_SCHEMA
from cwpo_ray.synthetic.task import gold_reward, parse_prompt


def labeled_from_prepared(prepared_dir: str, out_dir: str, splits=("labeled", "unlabeled"), seed: int = 0,
                          noise: float = 1.0, max_rows: int | None = None) -> str:
    """A simulated weak annotator: score = gold reward + N(0, noise²); chosen = higher score;
    confidence = 2·(σ(Δ_w) − ½)."""
    rng = np.random.default_rng(seed)
    rows = []
    for split in splits:
        for f in sorted(glob.glob(f"{prepared_dir}/{split}/*.parquet")):
            rows += pq.read_table(f).to_pylist()
    rows = rows[:max_rows] if max_rows else rows
    out = []
    for r in rows:
        p = parse_prompt(r["prompt"])
        sa = gold_reward(p, r["response_a"]) + noise * rng.standard_normal()
        sb = gold_reward(p, r["response_b"]) + noise * rng.standard_normal()
        a_wins = sa >= sb
        d = abs(sa - sb)
        out.append({"pair_id": r["pair_id"], "prompt": r["prompt"],
                    "chosen": r["response_a"] if a_wins else r["response_b"],
                    "rejected": r["response_b"] if a_wins else r["response_a"],
                    "score_chosen": max(sa, sb), "score_rejected": min(sa, sb),
                    "confidence": 2 * (1 / (1 + math.exp(-d)) - 0.5),
                    "human_label_agrees": None if r["human_label"] is None else (r["human_label"] == "a") == a_wins})
    import os

    os.makedirs(out_dir, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(out, schema=LABELED_SCHEMA), f"{out_dir}/part-00000.parquet")
    return out_dir
