"""`cwpo sft`: supervised fine-tuning of the student on (prompt, chosen), loss on response tokens only.

Pure core: :func:`cwpo_ray.student.steps.sft_loss`. Ray wrapper: the package's one TorchTrainer +
DeepSpeed loop (:mod:`cwpo_ray.train`, task :class:`~cwpo_ray.train.tasks.SFTTask`). The saved model is
the reference for `align` and the baseline for GRA.
"""
from __future__ import annotations

import time

from cwpo_ray.results import SFTResult, write_result
from cwpo_ray.student.config import SFTConfig
from cwpo_ray.student.stage import PreparedRun
from cwpo_ray.tracking import tracked_stage
from cwpo_ray.train.tasks import SFTTask
from cwpo_ray.train.trainer import fit, train_many, train_metrics


class _Prepared(PreparedRun):
    """One SFT run's driver-side input pass: its validated (prompt, chosen) rows."""

    def __init__(self, cfg: SFTConfig):
        super().__init__(cfg, needs_scores=False)
        # materialized so the trainer's split reads blocks directly (no CPU tasks competing with workers)
        self.ds, self.rows = self.pairs.select_columns(["pair_id", "prompt", "chosen"]).materialize(), self.counts.rows_used

    def task(self) -> SFTTask:
        return SFTTask()

    def summary(self, res, job_runs: int = 1) -> SFTResult:
        cfg, hist = self.cfg, train_metrics(res.history)
        summary = SFTResult(
            **self.counts.model_dump(), model_dir=res.model_dir, checkpoint=res.checkpoint, output_dir=cfg.output_dir,
            steps=hist[-1]["step"] if hist else 0, fit_seconds=res.fit_seconds, worker_seconds=res.worker_seconds,
            job_runs=job_runs, seconds=round(time.time() - self.t0, 1),
            first_loss=hist[0]["loss"] if hist else None, last_loss=hist[-1]["loss"] if hist else None,
            zero_stage=cfg.zero_stage, num_workers=cfg.num_workers, lora=cfg.lora is not None,
            history=hist,
        )
        write_result(cfg.output_dir, summary)
        return summary


@tracked_stage("sft", lambda r: [f"{r.output_dir}/metrics.jsonl"])
def run_sft(cfg: SFTConfig, callbacks: list | None = None, worker_hooks: list | None = None) -> SFTResult:
    """Train; returns (and writes to ``{output_dir}/summary.json``) the summary, incl. ``model_dir``.
    ``callbacks`` / ``worker_hooks``: see :func:`cwpo_ray.train.trainer.fit`."""
    prep = _Prepared(cfg)
    return prep.summary(fit(prep.task(), cfg, prep.ds, prep.rows, callbacks=callbacks, worker_hooks=worker_hooks))


def run_sft_many(cfgs: dict[str, SFTConfig], callbacks: list | None = None) -> dict[str, SFTResult]:
    """Several SFT runs (e.g. the pipeline's SFT model per label source) in ONE Ray Train job when they can
    share it (:func:`~cwpo_ray.train.trainer.train_many`), else one :func:`run_sft` each."""
    return train_many(cfgs, _Prepared, run_sft, callbacks)


def format_sft(s: SFTResult) -> str:
    lines = [f"sft: {s.rows_used} sequences ({s.quarantined} quarantined), {s.steps} steps on "
             f"{s.num_workers} workers (ZeRO-{s.zero_stage}{', LoRA' if s.lora else ''}) in {s.fit_seconds}s"
             + (f" (one training job for {s.job_runs} runs)" if s.job_runs > 1 else "")]
    if s.first_loss is not None:
        lines.append(f"  response NLL {s.first_loss:.3f} -> {s.last_loss:.3f}")
    lines.append(f"  model: {s.model_dir}  (metrics: {s.output_dir}/metrics.jsonl, tensorboard/)")
    return "\n".join(lines)
