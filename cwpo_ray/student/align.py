"""`cwpo align`: confidence-weighted DPO / IPO / rDPO of the student against its SFT reference.

Pure core: :func:`cwpo_ray.student.steps.align_loss` (losses and weights in
:mod:`cwpo_ray.student.losses`). Ray wrappers: an optional Ray Data pass that precomputes the
reference log-probs once (:class:`RefLogprobScorer`), and the package's one TorchTrainer + DeepSpeed
loop (:mod:`cwpo_ray.train`, task :class:`~cwpo_ray.train.tasks.AlignTask`).
"""
from __future__ import annotations

import time

import pyarrow as pa

from cwpo_ray import io
from cwpo_ray.results import AlignResult, write_result
from cwpo_ray.runtime import local_device
from cwpo_ray.student.config import AlignConfig
from cwpo_ray.student.data import REF_COLUMNS, PairEncoder, collate_pairs, encode_rows
from cwpo_ray.student.stage import PreparedRun, with_weights
from cwpo_ray.tracking import tracked_stage
from cwpo_ray.train.tasks import AlignTask
from cwpo_ray.train.trainer import fit, train_many, train_metrics


def score_reference(model, rows: list[dict], pad: int, batch_size: int, device) -> dict[str, list]:
    """The REF_COLUMNS of encoded pair rows (:func:`~cwpo_ray.student.data.encode_rows`): summed log-probs
    and response token counts of chosen and rejected under ``model`` (a
    :class:`~cwpo_ray.student.logprobs.SequenceLogprobs`), ``batch_size`` pairs per forward, no grad."""
    import torch

    out: dict[str, list] = {c: [] for c in REF_COLUMNS}
    with torch.no_grad():
        for s in range(0, len(rows), batch_size):
            group = rows[s:s + batch_size]
            b = collate_pairs(group, pad)
            logp, ntok = model(*(b[k].to(device) for k in ("input_ids", "attention_mask", "response_mask")))
            n = len(group)
            out["ref_chosen_logp"] += logp[:n].tolist()
            out["ref_rejected_logp"] += logp[n:].tolist()
            out["chosen_ntok"] += ntok[:n].tolist()
            out["rejected_ntok"] += ntok[n:].tolist()
    return out


class RefLogprobScorer:
    """Ray Data actor: adds summed reference log-probs and response token counts of chosen/rejected."""

    def __init__(self, model: str, tokenizer: str | None, max_length: int, max_prompt_length: int,
                 chunk_size: int = 1024, batch_size: int = 16, trust_remote_code: bool = False, bf16: bool = False):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from cwpo_ray.student.logprobs import SequenceLogprobs

        self.torch = torch
        self.device = torch.device(local_device())
        tok = AutoTokenizer.from_pretrained(io.local_model_dir(tokenizer or model), trust_remote_code=trust_remote_code)
        self.enc = PairEncoder(tok, max_length, max_prompt_length)
        lm = AutoModelForCausalLM.from_pretrained(io.local_model_dir(model), dtype=torch.bfloat16 if bf16 else torch.float32,
                                                  trust_remote_code=trust_remote_code)
        self.model = SequenceLogprobs(lm, chunk_size).to(self.device).eval()
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        cols = {c: batch.column(c).to_pylist() for c in ("prompt", "chosen", "rejected")}
        out = score_reference(self.model, encode_rows(cols, self.enc), self.enc.pad, self.batch_size, self.device)
        for c in REF_COLUMNS:
            batch = batch.append_column(c, pa.array(out[c], pa.float32() if c.startswith("ref") else pa.int32()))
        return batch


def precompute_reference(ds, cfg: AlignConfig):
    """One Ray Data pass over the pairs with the reference model; persisted to ``{output_dir}/ref_logprobs``."""
    from ray.data import ActorPoolStrategy

    ref = cfg.reference or cfg.model
    out = ds.map_batches(
        RefLogprobScorer,
        fn_constructor_kwargs=dict(model=ref, tokenizer=cfg.tokenizer, max_length=cfg.max_length,
                                   max_prompt_length=cfg.max_prompt_length, chunk_size=cfg.logprob_chunk_size,
                                   batch_size=cfg.batch_size, trust_remote_code=cfg.trust_remote_code,
                                   bf16=cfg.use_gpu and cfg.precision != "fp32"),
        batch_format="pyarrow", batch_size=max(cfg.batch_size * 8, 64),
        compute=ActorPoolStrategy(min_size=1, max_size=cfg.num_workers),
        num_gpus=1 if cfg.use_gpu else 0, num_cpus=cfg.cpus_per_worker,
    ).materialize()
    path = io.join(cfg.output_dir, "ref_logprobs")
    io.rmtree(path)
    out.select_columns(["pair_id", *REF_COLUMNS]).write_parquet(path)
    return out


class _Prepared(PreparedRun):
    """One align run's driver-side input pass: its validated, weighted pairs (+ precomputed reference)."""

    def __init__(self, cfg: AlignConfig):
        super().__init__(cfg, needs_scores=cfg.weighting.endswith("delta"))
        ds, self.wstats = with_weights(self.pairs, cfg)
        cols = ["pair_id", "prompt", "chosen", "rejected", "weight"]
        self.ref_seconds = None
        if cfg.reference_mode == "precomputed":
            t1 = time.time()
            ds = precompute_reference(ds.select_columns(cols), cfg)
            self.ref_seconds = round(time.time() - t1, 1)
            cols += list(REF_COLUMNS)
        # materialized so the trainer's split reads blocks directly (no CPU tasks competing with workers)
        self.ds, self.rows = ds.select_columns(cols).materialize(), self.counts.rows_used

    def task(self) -> AlignTask:
        return AlignTask(has_ref_columns=self.cfg.reference_mode == "precomputed",
                         reference_in_workers=self.cfg.reference_mode == "in_workers")

    def summary(self, res, job_runs: int = 1) -> AlignResult:
        cfg = self.cfg
        ref_seconds = res.final_metrics.get("reference_seconds") if cfg.reference_mode == "in_workers" else self.ref_seconds
        hist = train_metrics(res.history)
        first, last = (hist[0], hist[-1]) if hist else ({}, {})
        logged = ("loss", "reward_margin", "pref_acc", "weighted_pref_acc")
        summary = AlignResult(
            **self.counts.model_dump(), **{f"weights_{k}": v for k, v in self.wstats.items()},
            loss_type=cfg.loss, weighting=cfg.weighting, beta=cfg.beta, reduction=cfg.reduction,
            reference_mode=cfg.reference_mode, reference_seconds=ref_seconds,
            base_model=cfg.model, model_dir=res.model_dir, checkpoint=res.checkpoint, output_dir=cfg.output_dir,
            zero_stage=cfg.zero_stage, num_workers=cfg.num_workers, steps=last.get("step", 0),
            fit_seconds=res.fit_seconds, worker_seconds=res.worker_seconds, job_runs=job_runs,
            seconds=round(time.time() - self.t0, 1),
            **{f"first_{k}": first.get(k) for k in logged}, **{f"last_{k}": last.get(k) for k in logged},
            resumed_from=max((h.get("resumed_from", -1) for h in res.history), default=-1),
            history=hist,
        )
        write_result(cfg.output_dir, summary)
        return summary


@tracked_stage("align", lambda r: [f"{r.output_dir}/metrics.jsonl"])
def run_align(cfg: AlignConfig, callbacks: list | None = None, worker_hooks: list | None = None) -> AlignResult:
    """Train; returns (and writes to ``{output_dir}/summary.json``) the summary, incl. ``model_dir``.
    ``callbacks`` / ``worker_hooks``: see :func:`cwpo_ray.train.trainer.fit`."""
    prep = _Prepared(cfg)
    res = fit(prep.task(), cfg, prep.ds, prep.rows, callbacks=callbacks, worker_hooks=worker_hooks)
    return prep.summary(res)


def run_align_many(cfgs: dict[str, AlignConfig], callbacks: list | None = None) -> dict[str, AlignResult]:
    """Several align runs (e.g. a pipeline's methods) in ONE Ray Train job when they can share it (the same
    worker group and reference mode; :func:`~cwpo_ray.train.trainer.train_many`), else one :func:`run_align`
    each. ``fit_seconds`` of each is the whole job's time; ``job_runs`` says how many runs shared it."""
    return train_many(cfgs, _Prepared, run_align, callbacks, same_task=lambda cs: len({c.reference_mode for c in cs}) == 1)


def format_align(s: AlignResult) -> str:
    lines = [f"align ({s.loss_type}, weighting={s.weighting}, beta={s.beta}, log-probs {s.reduction}): "
             f"{s.rows_used} pairs ({s.quarantined} quarantined), {s.steps} steps on {s.num_workers} "
             f"workers (ZeRO-{s.zero_stage}, reference {s.reference_mode}) in {s.fit_seconds}s"
             + (f" (one training job for {s.job_runs} runs)" if s.job_runs > 1 else "")]
    if s.first_loss is not None:
        lines.append(f"  loss {s.first_loss:.4f} -> {s.last_loss:.4f}; reward margin {s.first_reward_margin:.3f} -> "
                     f"{s.last_reward_margin:.3f}; weighted pref acc {s.first_weighted_pref_acc:.3f} -> "
                     f"{s.last_weighted_pref_acc:.3f}")
    lines.append(f"  model: {s.model_dir}  (metrics: {s.output_dir}/metrics.jsonl, tensorboard/)")
    return "\n".join(lines)
