from __future__ import annotations

from typing import Literal

from pydantic import Field

from cwpo_ray.config import Loss, RayConfig, StrictModel, Weighting


class AshaSettings(StrictModel):
    """ASHA early stopping on the align loss that each trial's TorchTrainer reports to Tune."""

    metric: str = "loss"
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(default=5, gt=0)  # reports (align log steps) before a trial can be stopped
    reduction_factor: float = Field(default=2.0, gt=1.0)
    max_t: int = Field(default=1000, gt=0)


class SweepConfig(StrictModel):
    """`cwpo sweep`: Ray Tune over β, labeled fraction, loss and weighting.

    Trials sharing a labeled fraction share its prepare/annotator/annotate/sft run directory (the
    pipeline's manifest skips what is finished, and a lock serialises trials racing for it); each
    trial then runs its own align + evaluate.
    """

    output_dir: str = "runs/sweep"
    # Base pipeline: "demo" (the packaged demo config) or a YAML path; `pipeline` overrides deep-merge on top.
    pipeline_config: str | None = "demo"
    pipeline: dict = Field(default_factory=dict)
    beta: list[float] = Field(default_factory=lambda: [0.5], min_length=1)
    labeled_fraction: list[float] = Field(default_factory=lambda: [0.3], min_length=1)
    loss: list[Loss] = Field(default_factory=lambda: ["dpo"], min_length=1)
    weighting: list[Weighting] = Field(default_factory=lambda: ["confidence", "none"], min_length=1)
    top_fraction: float = Field(default=0.3, gt=0.0, le=1.0)
    max_concurrent_trials: int = Field(default=1, gt=0)
    trial_cpus: float = Field(default=0.01, gt=0)  # the trial driver itself; its TorchTrainer asks for its own
    asha: AshaSettings | None = None
    ray: RayConfig = Field(default_factory=RayConfig)
