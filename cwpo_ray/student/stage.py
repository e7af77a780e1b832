"""Driver-side plumbing shared by `cwpo sft` and `cwpo align`: the Ray Data input pass (validate,
quarantine, weights). The ``TorchTrainer`` run (:func:`fit`), the metrics callback and copying out the
final model are the shared training driver's (:mod:`cwpo_ray.train.trainer`); the summaries are
:class:`~cwpo_ray.results.SFTResult` / :class:`~cwpo_ray.results.AlignResult`."""
from __future__ import annotations

import logging
import time
from collections import Counter

import numpy as np
import pyarrow as pa

from cwpo_ray import io
from cwpo_ray.config import ConfigError, require
from cwpo_ray.results import PairCounts
from cwpo_ray.runtime import init_ray
from cwpo_ray.student.data import add_weights, human_pairs_to_preferences, validate_preferences
from cwpo_ray.student.losses import top_fraction_threshold
from cwpo_ray.train.trainer import check_train_storage

log = logging.getLogger(__name__)


def load_pairs(cfg, needs_scores: bool, data_dir: str | None = None, data_format: str | None = None,
               also_bad_files: list = ()) -> tuple:
    """Read ``cfg.data_dir`` with Ray Data, quarantine bad rows, return (materialized good ds, PairCounts).
    ``data_dir`` / ``data_format`` replace the config's (the annotator reads the human pairs of
    ``{data_dir}/labeled``); quarantine goes to ``cfg.output_dir``, ``cfg.on_bad_file`` applies.

    Its parquet files are checked first, from their footers (:mod:`cwpo_ray.inputs`): a truncated file or
    one without the columns of ``cfg.data_format`` (pairs: PAIR_SCHEMA, preferences: PREFERENCE_SCHEMA) is
    quarantined whole (``quarantine/files.parquet``, ``files_quarantined``) and only the good files are
    read; with ``on_bad_file=fail`` the first bad file raises ConfigError naming it. ``also_bad_files``:
    bad files of another input of the same run (the annotator's validation split), recorded and counted
    with these."""
    import ray

    from cwpo_ray.inputs import InputCheck, check_inputs, write_bad_files
    from cwpo_ray.schema import PAIR_SCHEMA, PREFERENCE_SCHEMA

    data_dir = data_dir or cfg.data_dir
    data_format = data_format or cfg.data_format
    schema = PAIR_SCHEMA if data_format == "pairs" else PREFERENCE_SCHEMA
    kinds = {"string": pa.types.is_string, "number": pa.types.is_floating, "bool": pa.types.is_boolean}
    types = {f.name: next(k for k, is_kind in kinds.items() if is_kind(f.type)) for f in schema}
    check = check_inputs(data_dir, schema.names, types, on_bad_file=cfg.on_bad_file,
                         what="data_dir")
    bad_files = [*check.bad, *also_bad_files]
    if not check.files:
        write_bad_files(cfg.output_dir, bad_files)
        raise ConfigError(f"input error: data_dir: no readable input file in {data_dir} "
                          f"({len(check.bad)} quarantined, see {cfg.output_dir}/quarantine/)")
    # Deterministic row order (same config and seed -> same batches -> same numbers), at a small cost in
    # streaming overlap that these small reads do not feel.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    raw = ray.data.read_parquet(check.read_path()).materialize()
    if data_format == "pairs":
        def good_fn(t: pa.Table) -> pa.Table:
            return human_pairs_to_preferences(t)[0]

        def bad_fn(t: pa.Table) -> pa.Table:
            return human_pairs_to_preferences(t)[1]
    else:
        def good_fn(t: pa.Table) -> pa.Table:
            return validate_preferences(t, needs_scores)[0]

        def bad_fn(t: pa.Table) -> pa.Table:
            return validate_preferences(t, needs_scores)[1]
    good = raw.map_batches(good_fn, batch_format="pyarrow", batch_size=4096).materialize()
    bad = raw.map_batches(bad_fn, batch_format="pyarrow", batch_size=4096).materialize()
    n_good, n_bad = good.count(), bad.count()
    qdir = io.join(cfg.output_dir, "quarantine")
    io.rmtree(qdir)
    reasons: Counter = Counter()
    if n_bad:
        bad.write_parquet(qdir)
        for b in bad.select_columns(["reason"]).iter_batches(batch_format="pyarrow"):
            reasons.update(b.column("reason").to_pylist())
    write_bad_files(cfg.output_dir, bad_files)  # quarantine/files.parquet, next to the quarantined rows
    reasons.update(b.reason for b in bad_files)
    if n_good == 0:
        raise ConfigError(f"config error: data_dir: no usable rows in {data_dir} ({n_bad} quarantined)")
    # rows_in = rows_used + quarantined (rows); quarantine_reasons counts rows and whole files
    return good, PairCounts(rows_in=n_good + n_bad, rows_used=n_good, quarantined=n_bad, quarantine_reasons=dict(reasons),
                            files_quarantined=len(bad_files), bad_files=InputCheck(data_dir, bad=bad_files).records())


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


class PreparedRun:
    """A student training run's driver side up to the trainer: its config checked (required fields, storage),
    Ray started, its rows read, validated and quarantined (:func:`load_pairs`: ``pairs``, ``counts``). Each
    stage adds ``ds`` and ``rows`` (what the workers train on), ``task()`` and ``summary(fit_result, job_runs)``
    (:func:`cwpo_ray.train.trainer.train_many`)."""

    def __init__(self, cfg, needs_scores: bool):
        require(cfg, "model", "data_dir", "output_dir")
        check_train_storage(cfg)
        init_ray(cfg.ray)
        self.cfg, self.t0 = cfg, time.time()
        self.pairs, self.counts = load_pairs(cfg, needs_scores=needs_scores)
