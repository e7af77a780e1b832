"""`cwpo demo` / `cwpo pipeline`: the stages in one run directory.

Stages land here as they are implemented; ``cwpo demo`` runs the pipeline on the embedded synthetic
task with tiny models (the defaults of :class:`PipelineConfig`).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from pydantic import Field

from cwpo_ray.config import RayConfig, StrictModel
from cwpo_ray.prepare.config import PrepareConfig, SourceConfig
from cwpo_ray.synthetic.build import SyntheticConfig

log = logging.getLogger(__name__)


class PipelineConfig(StrictModel):
    run_dir: str = "runs/demo"
    ray: RayConfig = Field(default_factory=RayConfig)
    # The embedded synthetic task; set to null and give prepare.sources to run on real data.
    synthetic: SyntheticConfig | None = Field(default_factory=SyntheticConfig)
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)


def run_pipeline(cfg: PipelineConfig) -> dict:
    from cwpo_ray.prepare.stage import format_summary, run_prepare
    from cwpo_ray.synthetic.build import build_synthetic

    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    out: dict = {"run_dir": str(run)}
    prep = cfg.prepare.model_copy(update={"ray": cfg.ray})
    t0 = time.time()
    if cfg.synthetic is not None:
        syn = cfg.synthetic.model_copy(update={"output_dir": cfg.synthetic.output_dir or str(run / "synthetic")})
        paths = build_synthetic(syn)
        print(f"synthesize: {syn.task.num_pairs} pairs, tokenizer and tiny models in {syn.output_dir} "
              f"({time.time() - t0:.1f}s)")
        out["synthetic"] = paths
        if not prep.sources:
            prep = prep.model_copy(update={"sources": [SourceConfig(format="canonical", path=paths["data"], name="synthetic")],
                                           "tokenizer": prep.tokenizer or paths["tokenizer"]})
    prep = prep.model_copy(update={"output_dir": prep.output_dir or str(run / "data")})
    t0 = time.time()
    summary = run_prepare(prep)
    print(format_summary(summary) + f"\n  ({time.time() - t0:.1f}s)")
    out["prepare"] = summary
    return out
