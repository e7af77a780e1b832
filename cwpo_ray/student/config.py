"""SFTConfig and AlignConfig: the student stages' typed configs (defaults = the paper's).

Both derive from :class:`cwpo_ray.train.config.TrainConfig` (the shared training vocabulary) and run
the one training loop of :mod:`cwpo_ray.train.loop`.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cwpo_ray.config import TOP_FRACTION, Loss, Weighting
from cwpo_ray.train.config import TrainConfig


class StudentTrainConfig(TrainConfig):
    """What SFT and align add to the base training config: the data format, the prompt/response
    split of ``max_length``, length bucketing and the chunked log-prob head."""

    model: str | None = None  # hub id or local folder (AutoModelForCausalLM); the pipeline sets it
    data_format: Literal["preferences", "pairs"] = "preferences"  # PREFERENCE_SCHEMA (annotate) or PAIR_SCHEMA human labels
    max_prompt_length: int = Field(default=256, gt=0)  # prompts longer are left-truncated
    pad_to_multiple_of: int = Field(default=8, gt=0)
    bucket_window: int = Field(default=16, gt=0)  # micro-batches per length-bucketing window
    logprob_chunk_size: int = Field(default=1024, gt=0)  # tokens per lm_head chunk

    @model_validator(mode="after")
    def _check_common(self):
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be < max_length")
        return self


class SFTConfig(StudentTrainConfig):
    """`cwpo sft`: supervised fine-tuning on (prompt, chosen), loss on response tokens only.

    Paper defaults: 3 epochs, lr 1e-5, cosine schedule with warmup.
    """


class AlignConfig(StudentTrainConfig):
    """`cwpo align`: confidence-weighted DPO / IPO / rDPO from an SFT reference.

    Paper defaults: β = 0.5, lr 5e-6, batch 16 × 4 accumulation, cosine, warmup 100, weight decay 0.05.
    """

    loss: Loss = "dpo"
    beta: float = Field(default=0.5, gt=0)
    rdpo_eps: float = Field(default=0.1, ge=0.0, lt=0.5)
    weighting: Weighting = "confidence"
    top_fraction: float = Field(default=TOP_FRACTION, gt=0.0, le=1.0)  # for weighting=top_fraction
    normalize_weights: bool = False  # Σw·ℓ/Σw instead of the paper's mean(w·ℓ)
    # sum: the paper's equations; mean: length-averaged (TRL's IPO); auto: mean for ipo, sum otherwise
    logprob_reduction: Literal["auto", "sum", "mean"] = "auto"
    reference: str | None = None  # reference model; default: `model` (the SFT student)
    # on_the_fly: a frozen reference forward every step; precomputed: one Ray Data pass (an actor pool) over the
    # pairs first; in_workers: each training worker computes its own shard's reference log-probs before its
    # first step (no separate pass, no frozen copy; the whole model must fit on one worker: not with ZeRO-3)
    reference_mode: Literal["on_the_fly", "precomputed", "in_workers"] = "on_the_fly"
    epochs: float = Field(default=1, gt=0)
    lr: float = Field(default=5e-6, gt=0)
    grad_accum: int = Field(default=4, gt=0)
    warmup_steps: int | None = Field(default=100, ge=0)
    weight_decay: float = Field(default=0.05, ge=0.0)

    @model_validator(mode="after")
    def _check(self):
        if self.data_format == "pairs" and self.weighting.endswith("delta"):
            raise ValueError(f"weighting={self.weighting!r} needs annotator scores; human pairs (data_format=pairs, "
                             "confidence 1) support none/confidence/top_fraction (all give Human-DPO)")
        if self.reference_mode == "in_workers" and self.zero_stage == 3:
            raise ValueError("reference_mode=in_workers runs the whole reference model on each worker before ZeRO-3 "
                             "partitions it: use reference_mode=precomputed (or on_the_fly) with zero_stage=3")
        return self

    @property
    def reduction(self) -> str:
        if self.logprob_reduction == "auto":
            return "mean" if self.loss == "ipo" else "sum"
        return self.logprob_reduction
