"""The two annotator configs. Class defaults are the paper's (5 epochs, lr 1e-5, batch 32, 512 tokens);
the tiny synthetic models need a higher lr (see jobs/configs/annotator.demo.yaml)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cwpo_ray.config import LoraSettings, OnBadFile, RayConfig, StrictModel


def local_abspath(value: str | None, must_exist: bool = False) -> str | None:
    """Absolute path for a local path (Ray workers do not share the driver's cwd); URIs and hub ids
    (``must_exist``: only rewrite paths that exist locally) are kept as given."""
    import os

    if not value or "://" in value or (must_exist and not os.path.exists(value)):
        return value
    return os.path.abspath(value)


class AnnotatorTrainConfig(StrictModel):
    """`cwpo train-annotator`: Bradley–Terry training of a scalar-head LM on Ray Train."""

    model: str | None = None  # hub id or local folder of a causal LM / sequence classifier; pipeline: weak_base
    data_dir: str | None = None  # output of `prepare`: reads {data_dir}/labeled and {data_dir}/test
    output_dir: str | None = None  # writes {output_dir}/model (save_pretrained), plots, summary.json
    epochs: int = Field(default=5, gt=0)
    lr: float = Field(default=1e-5, gt=0.0)
    batch_size: int = Field(default=32, gt=0)  # global pairs per optimizer step (split over workers)
    max_tokens: int = Field(default=512, gt=1)
    weight_decay: float = Field(default=0.0, ge=0.0)
    warmup_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)  # linear warm-up, then constant
    max_grad_norm: float | None = Field(default=1.0, gt=0.0)
    max_train_pairs: int | None = Field(default=None, gt=0)
    seed: int = 0
    # Ray Train
    num_workers: int = Field(default=1, gt=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0.0)
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    zero_stage: Literal[0, 1, 2, 3] = 2  # DeepSpeed ZeRO stage (strategy=deepspeed)
    bf16: bool = True  # on GPU: bf16 autocast (DDP) / bf16 engine (DeepSpeed); CPU always fp32
    lora: LoraSettings | None = None
    max_failures: int = Field(default=0, ge=0)  # Ray Train restarts from the last checkpoint
    keep_checkpoints: int = Field(default=2, gt=0)
    log_every: int = Field(default=10, gt=0)  # optimizer steps between progress lines
    # Held-out evaluation
    eval_max_batch_tokens: int = Field(default=16384, gt=0)
    calibration_bins: int = Field(default=10, gt=1)
    trust_remote_code: bool = False
    ray: RayConfig = Field(default_factory=RayConfig)


class AnnotateConfig(StrictModel):
    """`cwpo annotate`: score unlabeled pairs with a trained annotator on a Ray Data actor pool."""

    model: str | None = None  # the annotator folder ({train output_dir}/model)
    data_dir: str | None = None  # output of `prepare`: reads {data_dir}/unlabeled unless `input` is set
    input: str | None = None  # a parquet file or folder in PAIR_SCHEMA (overrides data_dir)
    output_dir: str | None = None  # {output_dir}/labeled/*.parquet (LABELED_SCHEMA), quarantine/, summary.json
    on_bad_file: OnBadFile = "quarantine"  # an unreadable / wrong-schema input file: quarantine it, or fail
    backend: Literal["hf", "vllm"] = "hf"
    max_tokens: int = Field(default=512, gt=1)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    max_batch_tokens: int = Field(default=16384, gt=0)  # HF backend: padded tokens per forward
    max_batch_size: int = Field(default=256, gt=0)
    compile: bool = False  # HF backend: torch.compile the forward (GPU)
    block_rows: int = Field(default=2048, gt=0)  # resumable unit: output is keyed by these input blocks
    min_actors: int = Field(default=1, gt=0)
    max_actors: int = Field(default=2, gt=0)
    gpus_per_actor: float = Field(default=0.0, ge=0.0)  # 1 on GPU clusters
    cpus_per_actor: float = Field(default=1.0, gt=0.0)
    overwrite: bool = False  # False: resume (skip finished blocks); True: start over
    hist_bins: int = Field(default=20, gt=1)
    trust_remote_code: bool = False
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _actors(self):
        if self.min_actors > self.max_actors:
            raise ValueError(f"min_actors ({self.min_actors}) > max_actors ({self.max_actors})")
        return self
