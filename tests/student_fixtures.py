"""Test aids for the training stages: PREFERENCE_SCHEMA parquet (what `annotate` writes) built from the
synthetic task, :class:`KillWorker`, a worker hook that crashes one Ray Train worker, and :class:`ControllerEnv`,
a callback that shows the Ray Train controller's environment."""
from __future__ import annotations

import glob
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cwpo_ray.schema import PREFERENCE_SCHEMA
from cwpo_ray.synthetic.task import gold_reward, parse_prompt


def preferences_from_prepared(prepared_dir: str, out_dir: str, splits=("labeled", "unlabeled"), seed: int = 0,
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
    os.makedirs(out_dir, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(out, schema=PREFERENCE_SCHEMA), f"{out_dir}/part-00000.parquet")
    return out_dir


@dataclass(frozen=True)
class KillWorker:
    """A ``worker_hooks`` entry for :func:`cwpo_ray.train.trainer.fit`: worker ``rank`` exits hard after
    optimizer step ``step`` of a fresh (not resumed) run, so Ray Train restarts the worker group from
    the latest checkpoint (needs ``max_failures >= 1``)."""

    step: int
    rank: int = 0
    # Ray Train V2's controller registers a reported checkpoint when it next polls the workers
    # (every controller_poll_s, Ray's default 2 s): a crash sooner than that after the report restarts from the
    # checkpoint before it.
    delay_s: float = 4.0
    # in a several-run job (fit_many) the worker process reaches ``step`` once per run: exit the n-th time
    occurrence: int = 1
    _seen: dict = field(default_factory=dict, compare=False, repr=False)  # per worker process

    def __call__(self, step: int, rank: int, resumed: bool) -> None:
        if not resumed and step == self.step and rank == self.rank:
            self._seen[step] = self._seen.get(step, 0) + 1
            if self._seen[step] != self.occurrence:
                return
            print(f"KillWorker: rank {rank} exits after step {step} in {self.delay_s}s", flush=True)
            time.sleep(self.delay_s)
            os._exit(1)


try:
    from ray.train.v2.api.callback import UserCallback as _UserCallback
except ImportError:  # pragma: no cover - Train V1
    _UserCallback = object


class ControllerEnv(_UserCallback):
    """A Ray Train callback: on each report, writes what the Ray Train *controller* process has of ``names`` in
    its environment to ``path`` (JSON), e.g. the poll interval that a training config asked for."""

    def __init__(self, path: str, names: tuple[str, ...]):
        self.path, self.names = path, names

    def after_report(self, run_context, metrics, checkpoint):
        import json

        with open(self.path, "w") as f:
            json.dump({n: os.environ.get(n) for n in self.names}, f)
