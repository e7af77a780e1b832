from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cwpo_ray.config import OnBadFile, RayConfig, StrictModel


class SourceConfig(StrictModel):
    """One input: local files / a URI (jsonl, jsonl.gz, parquet) or a Hugging Face dataset name."""

    format: Literal["hh_rlhf", "tldr", "ultrafeedback", "shp", "generic", "canonical"]
    path: str | None = None
    hf_dataset: str | None = None  # e.g. "Anthropic/hh-rlhf" (loaded with datasets.load_dataset)
    hf_config: str | None = None
    hf_data_dir: str | None = None  # e.g. "harmless-base" / "helpful-base" for HH-RLHF, "askacademia" for SHP
    hf_split: str = "train"
    columns: dict[str, str] = Field(default_factory=dict)  # for format=generic
    name: str | None = None  # value of the `source` column; default: format[/data_dir]
    max_rows: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_location(self):
        if (self.path is None) == (self.hf_dataset is None):
            raise ValueError("give exactly one of path / hf_dataset")
        if self.format == "generic" and not self.columns:
            raise ValueError("format=generic needs a columns mapping")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return self.format + (f"/{self.hf_data_dir}" if self.hf_data_dir else "")


class PrepareConfig(StrictModel):
    sources: list[SourceConfig] = Field(default_factory=list)  # filled by the pipeline when empty
    output_dir: str | None = None  # local path or URI; the pipeline sets {run_dir}/data
    test_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    # Share of all prompts held out for hyperparameter selection (`cwpo sweep` scores trials here, never on test).
    validation_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    labeled_fraction: float = Field(default=0.3, ge=0.0, le=1.0)
    # None: D_unlabeled is every training prompt not labeled (1 - labeled_fraction of them). A value fixes
    # D_unlabeled to that share of the training prompts, the same prompts for every labeled_fraction (the
    # paper's labeled-fraction curve); training prompts in neither go to the `unused` split.
    unlabeled_fraction: float | None = Field(default=None, gt=0.0, le=1.0)
    split_seed: int = 0
    # Token-length filter on prompt + response (paper: 512 HH-RLHF, 1024 TL;DR, 2048 UltraFeedback); the same
    # name as the training configs' max_length. Needs a tokenizer (hub id or local folder).
    tokenizer: str | None = None
    max_length: int | None = Field(default=512, gt=0)
    batch_size: int = Field(default=4096, gt=0)
    on_bad_file: OnBadFile = "quarantine"  # an unreadable / wrong-schema input file: quarantine it, or fail
    # Exact duplicate pairs (same pair_id, e.g. a shard listed twice or two sources sharing pairs) are
    # counted in the summary (duplicate_pairs); drop: keep the first, quarantine the others with reason
    # duplicate_pair_id; keep: leave them all in their split.
    duplicates: Literal["drop", "keep"] = "drop"
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _fractions(self):
        if self.test_fraction + self.validation_fraction >= 1.0:
            raise ValueError("test_fraction + validation_fraction must be < 1 (nothing would be left to train on)")
        if self.unlabeled_fraction is not None and self.labeled_fraction + self.unlabeled_fraction > 1.0 + 1e-9:
            raise ValueError(f"unlabeled_fraction: labeled_fraction ({self.labeled_fraction}) + unlabeled_fraction "
                             f"({self.unlabeled_fraction}) must be <= 1 (shares of the same training prompts)")
        return self
