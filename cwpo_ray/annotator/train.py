"""`cwpo train-annotator`: Bradley–Terry training of the weak annotator on Ray Train, then a held-out
evaluation on the validation split.

Pure cores: :func:`cwpo_ray.annotator.losses.bt_loss` (the training step) and
:func:`cwpo_ray.annotator.metrics.evaluate_pairs` (accuracy, ECE, top-N% curve). Ray wrappers: the
labeled split read with Ray Data (the student stages' reader: bad rows quarantined with a reason),
the package's one training loop (:mod:`cwpo_ray.train`, task :class:`~cwpo_ray.train.tasks.BTTask`:
DeepSpeed ZeRO 0-3, LoRA, checkpoints and resume) and the evaluation in the driver.
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cwpo_ray import io
from cwpo_ray.annotator.config import AnnotatorTrainConfig, local_abspath
from cwpo_ray.config import ConfigError, require
from cwpo_ray.inputs import check_inputs, write_bad_files
from cwpo_ray.results import TrainAnnotatorResult, write_result
from cwpo_ray.schema import PAIR_SCHEMA, validate_pair
from cwpo_ray.tracking import tracked_stage

log = logging.getLogger(__name__)

TRAIN_SPLIT = "labeled"
EVAL_SPLIT = "validation"  # the test split is for the final evaluation only


def read_pairs(path: str | list[str]) -> pa.Table:
    """All rows of a parquet file or folder (``*.parquet``), or of a list of files (an
    :class:`~cwpo_ray.inputs.InputCheck`'s ``read_path()``), in PAIR_SCHEMA order."""
    if not isinstance(path, str):
        fs = io.resolve(path[0])[0]
        return pq.ParquetDataset([io.resolve(f)[1] for f in path], filesystem=fs).read().select(PAIR_SCHEMA.names)
    fs, p = io.resolve(path)
    info = fs.get_file_info(p)
    if info.type.name == "NotFound":
        raise ConfigError(f"config error: data_dir: {path!r} does not exist")
    table = pq.read_table(p, filesystem=fs) if info.type.name == "File" else pq.ParquetDataset(p, filesystem=fs).read()
    return table.select(PAIR_SCHEMA.names)


def load_training_pairs(cfg: AnnotatorTrainConfig, eval_bad_files: list = ()) -> tuple:
    """(prompt, chosen, rejected) of the labeled split's human-labeled pairs as a materialized Ray
    Dataset, the number of pairs it holds (``max_train_pairs`` applied) and the ``PairCounts`` (rows
    without a usable label or with bad text are quarantined; bad files of this split and
    ``eval_bad_files``, the validation split's, are quarantined and counted together)."""
    from cwpo_ray.student.stage import load_pairs

    ds, counts = load_pairs(cfg, needs_scores=False, data_dir=io.join(cfg.data_dir, TRAIN_SPLIT), data_format="pairs",
                            also_bad_files=eval_bad_files)
    n = counts.rows_used
    if cfg.max_train_pairs and cfg.max_train_pairs < n:
        ds, n = ds.limit(cfg.max_train_pairs), cfg.max_train_pairs
    # materialized so the trainer's split reads blocks directly (no CPU tasks competing with workers)
    return ds.select_columns(["pair_id", "prompt", "chosen", "rejected"]).materialize(), n, counts


def evaluate_annotator(model_dir: str, eval_path: str | list[str], out_dir: str, max_length: int = 512,
                       max_batch_tokens: int = 16384, n_bins: int = 10, trust_remote_code: bool = False) -> dict:
    """Held-out evaluation (pure core + files): accuracy, ECE, top-N% curve, reliability plot PNG.
    ``eval_path``: a folder / file, or the checked files (:func:`read_pairs`)."""
    from cwpo_ray.annotator.metrics import evaluate_pairs, reliability_plot, top_confident_plot
    from cwpo_ray.annotator.scoring import HFScorer

    table = read_pairs(eval_path)
    rows = [r for r in table.to_pylist() if r["human_label"] in ("a", "b")
            and validate_pair(r["prompt"], r["response_a"], r["response_b"], r["human_label"]) is None]
    if not rows:
        raise ConfigError(f"config error: data_dir: no human-labeled pairs to evaluate on in {eval_path}")
    scorer = HFScorer(model_dir, max_length=max_length, max_batch_tokens=max_batch_tokens, trust_remote_code=trust_remote_code)
    prompts = [r["prompt"] for r in rows]
    s_a, _ = scorer.score_texts(prompts, [r["response_a"] for r in rows])
    s_b, _ = scorer.score_texts(prompts, [r["response_b"] for r in rows])
    y_a = np.array([r["human_label"] == "a" for r in rows], dtype=np.int64)
    ev = evaluate_pairs(s_a, s_b, y_a, n_bins)
    ev["unlabeled_skipped"] = table.num_rows - len(rows)
    with io.staged_dir(out_dir) as d:  # plots are drawn locally, then uploaded to a URI
        reliability_plot(ev["reliability"], os.path.join(d, "reliability.png"))
        top_confident_plot(ev["top_confident_accuracy"], os.path.join(d, "top_confident.png"))
    ev["reliability_png"] = io.join(io.absolute(out_dir), "reliability.png")
    ev["top_confident_png"] = io.join(io.absolute(out_dir), "top_confident.png")
    return ev


@tracked_stage("train-annotator", lambda r: [r.held_out.reliability_png, r.held_out.top_confident_png, f"{r.output_dir}/metrics.jsonl"])
def run_train_annotator(cfg: AnnotatorTrainConfig, callbacks: list | None = None, worker_hooks: list | None = None) -> TrainAnnotatorResult:
    """Train on ``{data_dir}/labeled``, save ``{output_dir}/model``, evaluate on ``{data_dir}/validation``.
    ``callbacks`` / ``worker_hooks``: see :func:`cwpo_ray.train.trainer.fit`."""
    from cwpo_ray.runtime import init_ray
    from cwpo_ray.train.tasks import BTTask
    from cwpo_ray.train.trainer import check_train_storage, fit, train_metrics

    require(cfg, "model", "data_dir", "output_dir")
    check_train_storage(cfg)
    out = io.absolute(cfg.output_dir)
    cfg = cfg.model_copy(update={"model": local_abspath(cfg.model, must_exist=True), "data_dir": local_abspath(cfg.data_dir),
                                 "tokenizer": local_abspath(cfg.tokenizer, must_exist=True), "output_dir": out})
    io.makedirs(out)
    # The held-out split's files are checked now, before any compute, like the labeled split's (load_pairs):
    # a bad one is quarantined with those (or, on_bad_file=fail, stops the run here).
    eval_path = io.join(cfg.data_dir, EVAL_SPLIT)
    eval_check = check_inputs(eval_path, PAIR_SCHEMA.names, {n: "string" for n in PAIR_SCHEMA.names},
                              on_bad_file=cfg.on_bad_file, what="data_dir")
    if not eval_check.files:
        write_bad_files(out, eval_check.bad)
        raise ConfigError(f"input error: data_dir: no readable input file in {eval_path} "
                          f"({len(eval_check.bad)} quarantined, see {out}/quarantine/)")
    init_ray(cfg.ray)
    t0 = time.time()
    ds, n_train, counts = load_training_pairs(cfg, eval_check.bad)
    if n_train < cfg.batch_size * cfg.num_workers:
        raise ConfigError(f"config error: batch_size: {cfg.batch_size} pairs x {cfg.num_workers} workers > the {n_train} "
                          f"usable labeled pairs in {io.join(cfg.data_dir, TRAIN_SPLIT)}")
    res = fit(BTTask(), cfg, ds, n_train, callbacks=callbacks, worker_hooks=worker_hooks)
    hist = train_metrics(res.history)
    first, last = (hist[0], hist[-1]) if hist else ({}, {})

    t1 = time.time()
    held_out = evaluate_annotator(res.model_dir, eval_check.read_path(), out, cfg.max_length,
                                  cfg.eval_max_batch_tokens, cfg.calibration_bins, cfg.trust_remote_code)
    summary = TrainAnnotatorResult(
        model_dir=res.model_dir,
        base_model=cfg.model,
        train_pairs=n_train,
        quarantined=counts.quarantined,
        quarantine_reasons=counts.quarantine_reasons,
        files_quarantined=counts.files_quarantined,  # unreadable / wrong-schema files (on_bad_file)
        bad_files=counts.bad_files,
        epochs=cfg.epochs,
        epochs_trained=last.get("epoch", 0.0),
        steps=last.get("step", 0),
        workers=cfg.num_workers,
        zero_stage=cfg.zero_stage,
        strategy=f"deepspeed-zero{cfg.zero_stage}",
        lora=cfg.lora is not None,
        first_train_loss=first.get("loss"),
        train_loss=last.get("loss"),
        first_train_accuracy=first.get("accuracy"),
        train_accuracy=last.get("accuracy"),
        train_pairs_per_s=float(np.mean([h["throughput"] for h in hist])) if hist else None,
        train_seconds=res.fit_seconds, worker_seconds=res.worker_seconds,
        eval_seconds=round(time.time() - t1, 2),
        seconds=round(time.time() - t0, 1),
        checkpoint=res.checkpoint,
        resumed_from=max((h.get("resumed_from", -1) for h in res.history), default=-1),
        held_out={"split": EVAL_SPLIT, **held_out},
        output_dir=out,
        history=hist,
    )
    write_result(out, summary)
    return summary


def format_train_annotator(s: TrainAnnotatorResult) -> str:
    t = s.held_out
    curve = t.top_confident_accuracy
    loss = f"BT loss {s.first_train_loss:.4f} -> {s.train_loss:.4f}, train acc {s.train_accuracy:.3f}" \
        if s.train_loss is not None else "no training metrics"
    lines = [
        f"train-annotator: {s.train_pairs} labeled pairs ({s.quarantined} quarantined), {s.epochs_trained:.2f} epochs "
        f"({s.steps} steps) on {s.workers} worker(s) [DeepSpeed ZeRO-{s.zero_stage}{', LoRA' if s.lora else ''}] "
        f"in {s.train_seconds:.1f}s; {loss}",
        f"  held-out {t.split} split ({t.pairs} human-labeled pairs): accuracy {t.accuracy:.3f}, ECE {t.ece:.3f}, "
        f"top-10% {curve['top10']:.3f}, top-30% {curve['top30']:.3f}, top-50% {curve['top50']:.3f}",
        f"  model: {s.model_dir}  plots: {t.reliability_png}, {t.top_confident_png}",
    ]
    return "\n".join(lines)


__all__ = ["run_train_annotator", "format_train_annotator", "evaluate_annotator", "load_training_pairs", "read_pairs"]
