"""TrainConfig: the one base training config of `train-annotator`, `sft` and `align`.

Every field means the same in every stage. Stage configs derive from it and change defaults only
(the annotator's and the student's paper defaults differ) or add their own fields.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cwpo_ray.config import LoraSettings, OnBadFile, RayConfig, StrictModel, TrackingConfig


class TrainConfig(StrictModel):
    """Model, data, optimizer, schedule, batch, precision, DeepSpeed ZeRO, LoRA, checkpoints, Ray Train workers."""

    model: str | None = None  # hub id or local folder; the pipeline sets it
    tokenizer: str | None = None  # default: the model's folder / id
    trust_remote_code: bool = False
    data_dir: str | None = None  # parquet folder / file (URI ok)
    on_bad_file: OnBadFile = "quarantine"  # an unreadable / wrong-schema parquet file in data_dir
    output_dir: str | None = None  # local path or URI: {output_dir}/model (save_pretrained), summary.json, metrics.jsonl, checkpoints
    max_length: int = Field(default=512, gt=8)  # tokens per sequence (prompt + response)
    epochs: float = Field(default=3, gt=0)
    max_steps: int | None = Field(default=None, gt=0)  # optimizer steps; overrides epochs when set
    lr: float = Field(default=1e-5, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"  # after a linear warm-up
    warmup_steps: int | None = Field(default=None, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)  # of the optimizer steps; used when warmup_steps is None
    weight_decay: float = Field(default=0.0, ge=0.0)  # on weight matrices (not biases / norms)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    # adamw: torch AdamW (fused on CUDA). paged_adamw_32bit: bitsandbytes' PagedAdamW32bit (the paper's
    # Tables 8-9; optimizer state paged to host memory under GPU memory pressure), CUDA only: on CPU the
    # workers log a note and use torch AdamW. Needs the `bnb` extra on GPU workers.
    optimizer: Literal["adamw", "paged_adamw_32bit"] = "adamw"
    # Examples (pairs or sequences) per worker per micro-step; one optimizer step sees
    # batch_size x num_workers x grad_accum of them.
    batch_size: int = Field(default=16, gt=0)
    grad_accum: int = Field(default=1, gt=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    shuffle_buffer: int = Field(default=0, ge=0)  # Ray Data local shuffle buffer (rows, reseeded per epoch); 0 = none
    # A worker whose shard has at most this many rows keeps it in memory after its first complete pass and replays
    # it for later passes (epochs; align's training after its in-worker reference pass) instead of a new Ray Data
    # pass (~1.3 s each on the demo). Same rows in the same order: changes timing only. 0 = every pass through
    # Ray Data; never with shuffle_buffer (each epoch's local shuffle is Ray Data's).
    cache_shard_rows: int = Field(default=200_000, ge=0)
    # Ray Train + DeepSpeed
    num_workers: int = Field(default=2, gt=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    zero_stage: int = Field(default=2, ge=0, le=3)  # DeepSpeed ZeRO stage; 0 = plain data parallel
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    gradient_checkpointing: bool = False
    lora: LoraSettings | None = None  # merged into the base weights in the final save
    checkpoint_every_steps: int | None = Field(default=None, gt=0)  # Ray Train checkpoints (DeepSpeed state)
    keep_checkpoints: int = Field(default=2, gt=0)
    max_failures: int = Field(default=0, ge=-1)  # Ray Train FailureConfig; -1 = retry forever
    resume: bool = False  # continue a previous run's latest checkpoint in output_dir (else start fresh)
    log_every_steps: int = Field(default=10, gt=0)  # optimizer steps between metrics rows
    # Seconds between the Ray Train controller's polls of the workers (Ray's RAY_TRAIN_HEALTH_CHECK_INTERVAL_S,
    # default 2 s): the controller takes ONE report per worker per poll and a worker's next report waits for it,
    # so at Ray's 2 s a loop that logs every log_every_steps steps can go no faster than one metrics row per 2 s
    # (measured on the demo: align's 423 steps took 44 s for ~29 s of steps). Changes timing only, no number. This
    # field wins over the environment variable for the job (a differing value set there is reported on the console).
    controller_poll_s: float = Field(default=0.25, gt=0)
    seed: int = 0
    deepspeed_extra: dict = Field(default_factory=dict)  # merged into the generated DeepSpeed config
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)  # MLflow / W&B (cwpo_ray.tracking)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _check_train(self):
        if self.lora is not None and self.zero_stage == 3:
            raise ValueError("lora with zero_stage=3 is not supported (use ZeRO 0-2 with LoRA)")
        return self
