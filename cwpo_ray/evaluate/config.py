"""Config of `cwpo evaluate`."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from cwpo_ray.config import OnBadFile, RayConfig, StrictModel, TrackingConfig
from cwpo_ray.evaluate.gold import GoldConfig
from cwpo_ray.generate.config import EngineConfig, SamplingConfig


class EvaluateConfig(StrictModel):
    """Responses of the SFT model and of each aligned model on the same test prompts -> GRA per method."""

    prompts_path: str | None = None  # test split (parquet folder/file, or jsonl) with a prompt column
    prompt_column: str = "prompt"
    on_bad_file: OnBadFile = "quarantine"  # an unreadable / wrong-schema input file: quarantine it, or fail
    sft_model: str | None = None  # the reference every method is compared with; required
    # method name -> aligned model (hub id or folder), e.g. {cw-dpo: runs/x/align/cw-dpo, dpo: ...}.
    # Baselines are simply more entries: every method gets the same GRA/CI/gain treatment.
    models: dict[str, str] = Field(default_factory=dict)
    # More reference models by name (e.g. one SFT model per label source, the paper's initialisation) and,
    # per method, the reference its GRA is computed against (default: "sft", the sft_model). A method with
    # its own reference is also compared with sft_model (``methods_vs_common`` in the result).
    baselines: dict[str, str] = Field(default_factory=dict)
    compare_to: dict[str, str] = Field(default_factory=dict)
    output_dir: str | None = None  # required, a local path or a URI; the pipeline sets {run_dir}/eval
    max_prompts: int | None = Field(default=None, gt=0)
    # Responses per prompt and model; GRA averages each prompt's k comparisons (sample j vs sample j).
    num_samples: int = Field(default=4, ge=1)
    # independent: every model samples with its own seeds (derived from sampling.seed and the model's
    # name), as two separately sampled models are compared in the paper. paired: all models use the same
    # per-request seeds, which couples near-identical models into identical responses (counted as ties).
    seeding: Literal["independent", "paired"] = "independent"
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    gold: GoldConfig = Field(default_factory=GoldConfig)
    num_bootstrap: int = Field(default=1000, ge=100)
    ci: float = Field(default=0.95, gt=0.0, lt=1.0)
    tie_tolerance: float = Field(default=0.0, ge=0.0)  # |Δr*| <= tol counts as a tie
    # Reuse a model's responses (a local folder or one at a URI) when the same model files were already sampled on the same prompts
    # with the same sampling, seed and engine settings (``{model folder}/../responses_cache/``): a sweep's
    # trials share their SFT models, whose samples are then generated once. The gold reward is always rescored.
    cache_responses: bool = True
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)  # MLflow / W&B (cwpo_ray.tracking)
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("models")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        if "sft" in v:
            raise ValueError("'sft' is the reference's name; give it as sft_model")
        for name in v:
            if not name or any(c in name for c in "/\\ "):
                raise ValueError(f"method name {name!r} must be non-empty without '/', '\\' or spaces")
        return v

    @model_validator(mode="after")
    def _references(self):
        for name in self.baselines:
            if name == "sft" or name in self.models or not name or any(c in name for c in "/\\ "):
                raise ValueError(f"baselines: name {name!r} must differ from 'sft' and every method, without '/', '\\' or spaces")
        for method, ref in self.compare_to.items():
            if method not in self.models:
                raise ValueError(f"compare_to: {method!r} is not one of the models {sorted(self.models)}")
            if ref != "sft" and ref not in self.baselines:
                raise ValueError(f"compare_to.{method}: {ref!r} is neither 'sft' nor one of the baselines {sorted(self.baselines)}")
        return self
