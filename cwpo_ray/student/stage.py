"""Driver-side plumbing shared by `cwpo sft` and `cwpo align`: Ray Data input pass (validate,
quarantine, weights), the ``TorchTrainer`` run, metrics callback, and copying out the final model."""
from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import pyarrow as pa

from cwpo_ray import io
from cwpo_ray.config import ConfigError
from cwpo_ray.student.data import add_weights, human_pairs_to_labeled, validate_labeled
from cwpo_ray.student.losses import top_fraction_threshold

log = logging.getLogger(__name__)

try:
    from ray.train.v2.api.callback import UserCallback
except ImportError:  # pragma: no cover - Train V1
    UserCallback = object


class MetricsLogger(UserCallback):
    """Runs on the Ray Train controller: rank-0 metrics → ``metrics.jsonl`` and TensorBoard events."""

    def __init__(self, output_dir: str, tensorboard: bool = True):
        self.output_dir = output_dir
        self.tensorboard = tensorboard
        self.rows: list[dict] = []
        self._tb = None

    def after_report(self, run_context, metrics, checkpoint):
        m = dict(metrics[0]) if metrics else {}
        if not m:
            return
        m["time"] = time.time()
        self.rows.append(m)
        io.write_text(io.join(self.output_dir, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in self.rows))
        if self.tensorboard and "://" not in self.output_dir:
            try:
                if self._tb is None:
                    from tensorboardX import SummaryWriter

                    self._tb = SummaryWriter(os.path.join(self.output_dir, "tensorboard"))
                for k, v in m.items():
                    if isinstance(v, (int, float)) and k not in ("step", "time"):
                        self._tb.add_scalar(k, v, int(m.get("step", 0)))
                self._tb.flush()
            except ImportError:
                self.tensorboard = False


def load_pairs(cfg, needs_scores: bool) -> tuple:
    """Read ``cfg.data_dir`` with Ray Data, quarantine bad rows, return (materialized good ds, counts)."""
    import ray

    # Deterministic row order (same config and seed -> same batches -> same numbers), at a small cost in
    # streaming overlap that these small reads do not feel.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    raw = ray.data.read_parquet(cfg.data_dir).materialize()
    if cfg.data_format == "pairs":
        def good_fn(t: pa.Table) -> pa.Table:
            return human_pairs_to_labeled(t)[0]

        def bad_fn(t: pa.Table) -> pa.Table:
            return human_pairs_to_labeled(t)[1]
    else:
        def good_fn(t: pa.Table) -> pa.Table:
            return validate_labeled(t, needs_scores)[0]

        def bad_fn(t: pa.Table) -> pa.Table:
            return validate_labeled(t, needs_scores)[1]
    good = raw.map_batches(good_fn, batch_format="pyarrow", batch_size=4096).materialize()
    bad = raw.map_batches(bad_fn, batch_format="pyarrow", batch_size=4096).materialize()
    n_good, n_bad = good.count(), bad.count()
    qdir = io.join(cfg.output_dir, "quarantine")
    io.rmtree(qdir)
    reasons: dict[str, int] = {}
    if n_bad:
        bad.write_parquet(qdir)
        for b in bad.select_columns(["reason"]).iter_batches(batch_format="pyarrow"):
            for r in b.column("reason").to_pylist():
                reasons[r] = reasons.get(r, 0) + 1
    if n_good == 0:
        raise ConfigError(f"config error: data_dir: no usable rows in {cfg.data_dir} ({n_bad} quarantined)")
    return good, {"rows_in": n_good + n_bad, "rows_used": n_good, "quarantined": n_bad, "quarantine_reasons": reasons}


def with_weights(ds, cfg) -> tuple:
    """Add the per-pair ``weight`` column; ``top_fraction`` is decided over the whole dataset."""
    threshold = None
    if cfg.weighting == "top_fraction":
        conf = np.concatenate([b["confidence"] for b in ds.select_columns(["confidence"]).iter_batches(batch_format="numpy")])
        threshold = top_fraction_threshold(conf, cfg.top_fraction)
    scheme = cfg.weighting
    out = ds.map_batches(lambda t: add_weights(t, scheme, threshold), batch_format="pyarrow", batch_size=4096).materialize()
    w = np.concatenate([b["weight"] for b in out.select_columns(["weight"]).iter_batches(batch_format="numpy")])
    return out, {"threshold": threshold, "mean_weight": float(w.mean()), "nonzero_weight_fraction": float((w > 0).mean())}


def fit(mode: str, cfg, ds, rows: int, has_ref_columns: bool = False, callbacks: list | None = None) -> dict:
    """Run the shared worker loop on a ``TorchTrainer``; copy the final model to ``{output_dir}/model``.
    ``callbacks`` are extra Ray Train callbacks (e.g. Tune's ``TuneReportCallback`` in a sweep trial)."""
    import pyarrow.fs as pafs
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from cwpo_ray.student.train_loop import train_loop_per_worker

    out = cfg.output_dir
    storage = out if "://" in out else os.path.abspath(out)
    if not cfg.resume:  # Ray Train would otherwise pick up an earlier run of the same name
        io.rmtree(io.join(storage, "ray_train", mode))
    logger = MetricsLogger(out)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"mode": mode, "cfg": cfg.model_dump(mode="json"), "rows": rows, "has_ref_columns": has_ref_columns},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}),
        run_config=RunConfig(name=mode, storage_path=io.join(storage, "ray_train"),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                             callbacks=[logger, *(callbacks or [])]),
        datasets={"train": ds},
        # Same rows to the same worker in the same order on every run (same config and seed -> same numbers);
        # locality-based block assignment would depend on where blocks happen to live.
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True), enable_shard_locality=False),
    )
    t0 = time.time()
    result = trainer.fit()
    wall = time.time() - t0
    if result.error:
        raise result.error
    model_dir = io.join(out, "model")
    io.rmtree(model_dir)
    dst_fs, dst = io.resolve(model_dir)
    dst_fs.create_dir(dst, recursive=True)
    src_fs = result.checkpoint.filesystem
    for info in src_fs.get_file_info(pafs.FileSelector(result.checkpoint.path)):
        if info.type == pafs.FileType.File and info.base_name != "train_state.json":  # HF files only, not ds/
            pafs.copy_files(info.path, f"{dst}/{info.base_name}", source_filesystem=src_fs, destination_filesystem=dst_fs)
    history = [json.loads(line) for line in io.read_text(io.join(out, "metrics.jsonl")).splitlines()] \
        if io.exists(io.join(out, "metrics.jsonl")) else []
    return {"model_dir": model_dir, "checkpoint": result.checkpoint.path, "fit_seconds": round(wall, 1), "history": history,
            "final_metrics": {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}}


def write_summary(cfg, summary: dict) -> dict:
    io.write_text(io.join(cfg.output_dir, "summary.json"), json.dumps(summary, indent=2, default=float))
    return summary


def train_metrics(history: list[dict]) -> list[dict]:
    return [h for h in history if "loss" in h]
