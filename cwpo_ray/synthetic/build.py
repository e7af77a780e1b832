"""`cwpo synthesize`: write the synthetic task's data, tokenizer and tiny base models to a folder."""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from cwpo_ray import io
from cwpo_ray.config import StrictModel, require
from cwpo_ray.results import SynthesizeResult, write_result
from cwpo_ray.synthetic.models import TinyModelConfig, build_tiny_causal_lm, train_tokenizer
from cwpo_ray.synthetic.pretrain import PretrainConfig
from cwpo_ray.synthetic.task import SyntheticTask, SyntheticTaskConfig, label_statistics


def _weak_default() -> TinyModelConfig:
    return TinyModelConfig(arch="qwen2", hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1)


def _student_default() -> TinyModelConfig:
    return TinyModelConfig(arch="qwen2", hidden_size=128, intermediate_size=256, num_layers=3, num_heads=4, num_kv_heads=2)


class SyntheticConfig(StrictModel):
    output_dir: str | None = None  # a local path or a URI; the pipeline sets {run_dir}/synthetic
    task: SyntheticTaskConfig = Field(default_factory=SyntheticTaskConfig)
    weak: TinyModelConfig = Field(default_factory=_weak_default)  # weak annotator backbone
    student: TinyModelConfig = Field(default_factory=_student_default)  # student (larger than weak)
    vocab_size: int = Field(default=512, ge=300)
    # Causal-LM pretraining of both base models on the task's text (prompts + sampled responses; no
    # rewards, no labels); null leaves them randomly initialised.
    pretrain: PretrainConfig | None = Field(default_factory=PretrainConfig)


def build_synthetic(cfg: SyntheticConfig) -> SynthesizeResult:
    """Writes the task and returns its summary (also ``{output_dir}/manifest.json``): ``paths`` (data
    (canonical jsonl), tokenizer, weak_base, student_base, gold (jsonl)), measured ``labels`` statistics
    and ``pretrain`` stats per base model. ``output_dir`` may be a URI: the files are written to a local
    staging folder, then uploaded."""
    require(cfg, "output_dir")
    io.check_storage(cfg.output_dir, "output_dir")
    out = io.absolute(cfg.output_dir)
    task = SyntheticTask(cfg.task)
    rows = task.rows()
    pretrain: dict = {}
    with io.staged_dir(out) as d:
        stage = Path(d)
        with open(stage / "pairs.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps({k: r[k] for k in ("prompt", "response_a", "response_b", "human_label")}) + "\n")
        with open(stage / "gold.jsonl", "w") as f:  # diagnostics only; never read by training
            for r in rows:
                f.write(json.dumps({"prompt": r["prompt"], "gold_a": r["gold_a"], "gold_b": r["gold_b"]}) + "\n")
        tok = train_tokenizer(task.corpus(), stage / "tokenizer", cfg.vocab_size)
        for i, (name, mcfg) in enumerate((("weak_base", cfg.weak), ("student_base", cfg.student))):
            texts = task.pretraining_texts(cfg.pretrain.num_texts, seed=cfg.task.seed * 1000 + 7 + i) if cfg.pretrain else None
            _, pretrain[name] = build_tiny_causal_lm(mcfg, tok, stage / name, texts, cfg.pretrain)
    paths = {"data": io.join(out, "pairs.jsonl"), "gold": io.join(out, "gold.jsonl"), "tokenizer": io.join(out, "tokenizer"),
             "weak_base": io.join(out, "weak_base"), "student_base": io.join(out, "student_base")}
    labels = {**label_statistics(rows), "label_temperature": task.temperature,
              "target_agreement": cfg.task.human_agreement, "label_noise": cfg.task.label_noise}
    summary = SynthesizeResult(config=cfg.model_dump(mode="json"), paths=paths, labels=labels, pretrain=pretrain)
    write_result(out, summary, "manifest.json")
    return summary


def format_synthesize(s: SynthesizeResult) -> str:
    lab = s.labels
    target = f" (target {lab.target_agreement:.2f})" if lab.target_agreement else ""
    noise = f"BT temperature {lab.label_temperature:.3g}" if lab.label_noise == "bradley_terry" else \
        "flip noise (independent of the gold margin)"
    lines = [f"synthesize: {lab.pairs} pairs; human labels agree with the gold ordering on "
             f"{lab.human_gold_agreement:.3f}{target}, {noise}"]
    for name, st in s.pretrain.items():
        if st:
            lines.append(f"  {name}: {st.parameters / 1e6:.2f}M params pretrained on {st.texts} texts, "
                         f"{st.steps} steps, LM loss {st.first_loss:.2f} -> {st.final_loss:.2f}")
    return "\n".join(lines)
