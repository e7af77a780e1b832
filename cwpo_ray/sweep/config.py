from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from cwpo_ray.config import RayConfig, StrictModel

# Pipeline sections whose fields change what the shared (upstream) stages produce; a point's other keys
# (align.*, methods.*) only change its own trial's align.
UPSTREAM = ("synthetic", "prepare", "annotator", "annotate", "sft", "sft_data")
SWEEPABLE = (*UPSTREAM, "align", "methods")


class AshaSettings(StrictModel):
    """ASHA early stopping on the align loss that each trial's TorchTrainer reports to Tune."""

    metric: str = "loss"
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(default=5, gt=0)  # reports (align log steps) before a trial can be stopped
    reduction_factor: float = Field(default=2.0, gt=1.0)
    max_t: int = Field(default=1000, gt=0)


class SweepConfig(StrictModel):
    """`cwpo sweep`: Ray Tune over any pipeline fields, selected on the validation split.

    ``space`` maps dotted pipeline keys (``align.lr``, ``align.beta``, ``align.epochs``,
    ``prepare.labeled_fraction``, ...) to the values to try; the grid is their product. Every grid point
    is run for every method of ``methods`` and every seed of ``seeds`` (one Tune trial each; every seed
    field of the pipeline set to the seed). A trial aligns its one method and evaluates it on the
    **validation** prompts; trials sharing the upstream part of their point (keys outside align/methods)
    and seed share one run folder for prepare / annotator / annotate / sft (the pipeline's manifest skips
    what is finished; a lock serialises trials racing for it).

    Selection, per method: the point with the highest validation GRA averaged over seeds (validation
    only; the test split is never read to choose). Then, with ``final_test``, each method's selected
    point is evaluated once on the **test** prompts, per seed, and reported with a CI over seeds x prompts.

    ``output_dir`` (the trials' run folders, the Tune state, the results table and plot) is a local path or
    a URI (``s3://bucket/sweeps/x``, any pyarrow.fs filesystem), like a pipeline's ``run_dir``.
    """

    output_dir: str = "runs/sweep"
    # Base pipeline: "demo" (the packaged demo config) or a YAML path; `pipeline` overrides deep-merge on top.
    pipeline_config: str | None = "demo"
    pipeline: dict = Field(default_factory=dict)
    space: dict[str, list[Any]] = Field(default_factory=lambda: {"align.beta": [0.5]}, min_length=1)
    methods: list[str] | None = None  # names in the pipeline's `methods`; default: all of them
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    final_test: bool = True
    max_concurrent_trials: int = Field(default=1, gt=0)
    trial_cpus: float = Field(default=0.01, gt=0)  # the trial driver itself; its TorchTrainer asks for its own
    asha: AshaSettings | None = None
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("space")
    @classmethod
    def _space(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if key.split(".")[0] not in SWEEPABLE or (key.split(".")[0] != "sft_data" and "." not in key):
                raise ValueError(f"{key!r}: a dotted pipeline key under one of {', '.join(SWEEPABLE)} "
                                 "(evaluate and the run folders are the sweep's own)")
            if key.split(".")[-1] == "seed" or key.endswith(".seed"):
                raise ValueError(f"{key!r}: seeds are swept with `seeds`, not in the space")
            if not values:
                raise ValueError(f"{key!r}: give at least one value")
        return v
