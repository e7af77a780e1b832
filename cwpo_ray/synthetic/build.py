"""`cwpo synthesize`: write the synthetic task's data, tokenizer and tiny base models to a folder."""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from cwpo_ray.config import StrictModel, require
from cwpo_ray.synthetic.models import TinyModelConfig, build_tiny_causal_lm, train_tokenizer
from cwpo_ray.synthetic.task import SyntheticTask, SyntheticTaskConfig


def _weak_default() -> TinyModelConfig:
    return TinyModelConfig(arch="qwen2", hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2)


def _student_default() -> TinyModelConfig:
    return TinyModelConfig(arch="qwen2", hidden_size=128, intermediate_size=256, num_layers=3, num_heads=4, num_kv_heads=2)


class SyntheticConfig(StrictModel):
    output_dir: str | None = None  # the pipeline sets {run_dir}/synthetic
    task: SyntheticTaskConfig = Field(default_factory=SyntheticTaskConfig)
    weak: TinyModelConfig = Field(default_factory=_weak_default)  # weak annotator backbone
    student: TinyModelConfig = Field(default_factory=_student_default)  # student (larger than weak)
    vocab_size: int = Field(default=512, ge=300)


def build_synthetic(cfg: SyntheticConfig) -> dict[str, str]:
    """Returns paths: data (canonical jsonl), tokenizer, weak_base, student_base, gold (jsonl)."""
    require(cfg, "output_dir")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = SyntheticTask(cfg.task)
    rows = task.rows()
    with open(out / "pairs.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({k: r[k] for k in ("prompt", "response_a", "response_b", "human_label")}) + "\n")
    with open(out / "gold.jsonl", "w") as f:  # diagnostics only; never read by training
        for r in rows:
            f.write(json.dumps({"prompt": r["prompt"], "gold_a": r["gold_a"], "gold_b": r["gold_b"]}) + "\n")
    tok = train_tokenizer(task.corpus(), out / "tokenizer", cfg.vocab_size)
    weak = build_tiny_causal_lm(cfg.weak, tok, out / "weak_base")
    student = build_tiny_causal_lm(cfg.student, tok, out / "student_base")
    paths = {"data": str(out / "pairs.jsonl"), "gold": str(out / "gold.jsonl"), "tokenizer": str(out / "tokenizer"),
             "weak_base": str(weak), "student_base": str(student)}
    (out / "manifest.json").write_text(json.dumps({"config": cfg.model_dump(mode="json"), "paths": paths}, indent=2))
    return paths
