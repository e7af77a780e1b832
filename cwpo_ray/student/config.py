"""SFTConfig and AlignConfig: the student stages' typed configs (defaults = the paper's)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cwpo_ray.config import TOP_FRACTION, LoraSettings, Loss, OnBadFile, RayConfig, StrictModel, Weighting


class FaultInjection(StrictModel):
    """Testing aid: worker ``rank`` exits hard after optimizer step ``step`` of a fresh (not resumed) run."""

    step: int = Field(gt=0)
    rank: int = Field(default=0, ge=0)
    # Ray Train V2's controller registers a reported checkpoint when it next polls the workers
    # (every 2 s): a crash sooner than that after the report restarts from the checkpoint before it.
    delay_s: float = Field(default=4.0, ge=0)


class StudentTrainConfig(StrictModel):
    """What SFT and align share: model, data, Ray Train scaling, DeepSpeed, schedule, checkpoints."""

    model: str | None = None  # hub id or local folder (AutoModelForCausalLM); the pipeline sets it
    tokenizer: str | None = None  # default: the model's folder / id
    trust_remote_code: bool = False
    data_dir: str | None = None  # parquet folder / file (URI ok)
    data_format: Literal["labeled", "pairs"] = "labeled"  # LABELED_SCHEMA (annotate) or PAIR_SCHEMA human labels
    on_bad_file: OnBadFile = "quarantine"  # an unreadable / wrong-schema parquet file in data_dir
    output_dir: str | None = None  # {output_dir}/model (save_pretrained), summary.json, metrics, checkpoints
    max_length: int = Field(default=512, gt=8)  # prompt + response tokens
    max_prompt_length: int = Field(default=256, gt=0)  # prompts longer are left-truncated
    pad_to_multiple_of: int = Field(default=8, gt=0)
    epochs: float = Field(default=3, gt=0)
    max_steps: int | None = Field(default=None, gt=0)  # optimizer steps; overrides epochs when set
    lr: float = Field(default=1e-5, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    warmup_steps: int | None = Field(default=None, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)  # used when warmup_steps is None
    weight_decay: float = Field(default=0.0, ge=0.0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = Field(default=16, gt=0)  # pairs (align) / sequences (sft) per worker per micro-step
    grad_accum: int = Field(default=1, gt=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    bucket_window: int = Field(default=16, gt=0)  # micro-batches per length-bucketing window
    shuffle_buffer: int = Field(default=0, ge=0)  # Ray Data local shuffle buffer (rows); 0 = none
    # Ray Train + DeepSpeed
    num_workers: int = Field(default=2, gt=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    zero_stage: int = Field(default=2, ge=0, le=3)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    gradient_checkpointing: bool = False
    logprob_chunk_size: int = Field(default=1024, gt=0)  # tokens per lm_head chunk
    lora: LoraSettings | None = None
    checkpoint_every_steps: int | None = Field(default=None, gt=0)  # Ray Train checkpoints (DeepSpeed state)
    keep_checkpoints: int = Field(default=2, gt=0)
    max_failures: int = Field(default=0, ge=-1)  # Ray Train FailureConfig; -1 = retry forever
    resume: bool = False  # continue a previous run's latest checkpoint in output_dir (else start fresh)
    log_every_steps: int = Field(default=10, gt=0)
    seed: int = 0
    deepspeed_extra: dict = Field(default_factory=dict)  # merged into the generated DeepSpeed config
    fault_injection: FaultInjection | None = None
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _check_common(self):
        if self.lora is not None and self.zero_stage == 3:
            raise ValueError("lora with zero_stage=3 is not supported (use ZeRO 0-2 with LoRA)")
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
    reference_mode: Literal["on_the_fly", "precomputed"] = "on_the_fly"
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
        return self

    @property
    def reduction(self) -> str:
        if self.logprob_reduction == "auto":
            return "mean" if self.loss == "ipo" else "sum"
        return self.logprob_reduction
