"""The two annotator configs. Class defaults are the paper's (5 epochs, lr 1e-5, batch 32, 512 tokens);
the tiny synthetic models need a higher lr (see jobs/configs/train-annotator.demo.yaml)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cwpo_ray.config import OnBadFile, RayConfig, StrictModel
from cwpo_ray.train.config import TrainConfig


def local_abspath(value: str | None, must_exist: bool = False) -> str | None:
    """Absolute path for a local path (Ray workers do not share the driver's cwd); URIs and hub ids
    (``must_exist``: only rewrite paths that exist locally) are kept as given."""
    import os

    if not value or "://" in value or (must_exist and not os.path.exists(value)):
        return value
    return os.path.abspath(value)


class AnnotatorTrainConfig(TrainConfig):
    """`cwpo train-annotator`: Bradley–Terry training of a scalar-head LM (``AutoModelForSequenceClassification``,
    num_labels=1) with the shared training loop (Ray Train + DeepSpeed, see :class:`TrainConfig`).

    Paper defaults: 5 epochs, lr 1e-5, batch 32 pairs, 512 tokens, constant lr after a linear warm-up.
    """

    model: str | None = None  # hub id or local folder of a causal LM / sequence classifier; pipeline: weak_base
    data_dir: str | None = None  # output of `prepare`: trains on {data_dir}/labeled, evaluates on {data_dir}/validation
    output_dir: str | None = None  # local path or URI; writes {output_dir}/model (save_pretrained), plots, summary.json, metrics.jsonl
    epochs: float = Field(default=5, gt=0)
    lr: float = Field(default=1e-5, gt=0.0)
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "constant_with_warmup"
    warmup_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    batch_size: int = Field(default=32, gt=0)  # pairs per worker per micro-step (1 worker: the paper's 32)
    num_workers: int = Field(default=1, gt=0)
    zero_stage: int = Field(default=0, ge=0, le=3)  # 0 = plain data parallel; 1-3 shard optimizer / grads / weights
    shuffle_buffer: int = Field(default=4096, ge=0)  # pairs; reshuffled every epoch
    max_train_pairs: int | None = Field(default=None, gt=0)  # train on the first N usable labeled pairs
    # Held-out evaluation (the validation split)
    eval_max_batch_tokens: int = Field(default=16384, gt=0)
    calibration_bins: int = Field(default=10, gt=1)


class AnnotateConfig(StrictModel):
    """`cwpo annotate`: score unlabeled pairs with a trained annotator on a Ray Data actor pool."""

    model: str | None = None  # the annotator folder ({train output_dir}/model)
    data_dir: str | None = None  # output of `prepare`: reads {data_dir}/unlabeled unless `input` is set
    input: str | None = None  # a parquet file or folder in PAIR_SCHEMA (overrides data_dir)
    output_dir: str | None = None  # {output_dir}/labeled/*.parquet (PREFERENCE_SCHEMA), quarantine/, summary.json
    on_bad_file: OnBadFile = "quarantine"  # an unreadable / wrong-schema input file: quarantine it, or fail
    backend: Literal["hf", "vllm"] = "hf"
    max_length: int = Field(default=512, gt=1)  # tokens of prompt + response; longer pairs are quarantined (too_long)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    max_batch_tokens: int = Field(default=16384, gt=0)  # HF backend: padded tokens per forward
    max_batch_size: int = Field(default=256, gt=0)
    compile: bool = False  # HF backend: torch.compile the forward (GPU)
    block_rows: int = Field(default=2048, gt=0)  # resumable unit: output is keyed by these input blocks
    min_actors: int = Field(default=1, gt=0)
    max_actors: int = Field(default=2, gt=0)
    gpus_per_actor: float = Field(default=0.0, ge=0.0)  # 1 on GPU clusters
    cpus_per_actor: float = Field(default=1.0, gt=0.0)
    # The CPU stage before the scorer pool (read + validate + tokenize): at most this many actors (Ray Data
    # adds them while blocks wait; one CPU tokenizes ~15k texts/s, so raise it with many GPU actors)
    tokenize_actors: int = Field(default=1, gt=0)
    cpus_per_tokenizer: float = Field(default=1.0, gt=0.0)
    overwrite: bool = False  # False: resume (skip finished blocks); True: start over
    hist_bins: int = Field(default=20, gt=1)
    trust_remote_code: bool = False
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _actors(self):
        if self.min_actors > self.max_actors:
            raise ValueError(f"min_actors ({self.min_actors}) > max_actors ({self.max_actors})")
        hf_only = sorted({"max_batch_tokens", "max_batch_size", "compile"} & self.model_fields_set)
        if self.backend == "vllm" and hf_only:
            raise ValueError(f"{hf_only[0]}: an option of backend=hf only (vLLM batches by itself)")
        return self
