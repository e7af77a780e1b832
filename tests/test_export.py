"""`cwpo export`: Hub-ready dataset / annotator / student folders with cards, the round trip through
`datasets.load_dataset` into TRL, the push calls (huggingface_hub's, recorded offline) and bad input."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cwpo_ray.config import ConfigError, build_config
from cwpo_ray.integrations.hub import ExportConfig, format_export, run_export
from cwpo_ray.schema import PREFERENCE_SCHEMA

N = 24


def build_run_dir(run: Path) -> Path:
    """A run folder as `cwpo demo` leaves it (the parts export reads), with tiny Qwen2 models, in ``run``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, Qwen2Config

    from cwpo_ray.synthetic.models import train_tokenizer
    from cwpo_ray.synthetic.task import SyntheticTask, SyntheticTaskConfig

    task = SyntheticTask(SyntheticTaskConfig(num_pairs=48, seed=0))
    tok = train_tokenizer(task.corpus(), run / "tok", 512)
    rows = task.rows()[:N]
    conf = np.linspace(0.0, 1.0, N)
    t = pa.table({
        "pair_id": [f"p{i}" for i in range(N)], "prompt": [r["prompt"] for r in rows],
        "chosen": [r["response_a"] for r in rows], "rejected": [r["response_b"] for r in rows],
        "score_chosen": pa.array(conf + 1, pa.float32()), "score_rejected": pa.array(np.ones(N), pa.float32()),
        "confidence": pa.array(conf, pa.float32()), "human_label_agrees": pa.array([None] * N, pa.bool_()),
    }, schema=PREFERENCE_SCHEMA)
    (run / "annotated" / "preferences").mkdir(parents=True)
    pq.write_table(t, run / "annotated" / "preferences" / "part-0.parquet")
    (run / "annotated" / "summary.json").write_text(json.dumps({
        "pairs": N, "human_agreement": 0.61, "human_labeled_pairs": N, "confidence_mean": 0.5,
        "confidence_quantiles": {"p10": 0.1, "p50": 0.5, "p90": 0.9},
        "confidence_hist": {"counts": [12, 12], "edges": [0.0, 0.5, 1.0]}}))
    (run / "label_stats.json").write_text(json.dumps({"human_gold_agreement": 0.7, "weak_gold_agreement": 0.66,
                                                      "weak_gold_agreement_top": {"top30": 0.8}}))
    (run / "config.yaml").write_text("prepare: {labeled_fraction: 0.3}\n")
    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=256, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    for cls, d, summary in (
        (AutoModelForSequenceClassification, run / "annotator",
         {"base_model": "Qwen/Qwen2.5-0.5B", "train_pairs": 10, "epochs_trained": 5,
          "held_out": {"split": "validation", "pairs": 8, "accuracy": 0.625, "ece": 0.05}}),
        (AutoModelForCausalLM, run / "align" / "cw-dpo",
         {"base_model": str(run / "sft" / "model"), "loss_type": "dpo", "weighting": "confidence", "beta": 0.35, "rows_used": N})):
        cfg.num_labels = 1 if cls is AutoModelForSequenceClassification else 2
        m = cls.from_config(cfg)
        m.save_pretrained(d / "model")
        tok.save_pretrained(d / "model")
        (d / "summary.json").write_text(json.dumps(summary))
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps({"num_prompts": 10, "methods": {"cw-dpo": {"gra": 0.6, "gra_ci": [0.5, 0.7]}}}))
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return build_run_dir(tmp_path_factory.mktemp("run"))


def test_export_round_trip_into_datasets_transformers_and_trl(run_dir, tmp_path):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    r = run_export(build_config(ExportConfig, {"run_dir": str(run_dir), "output_dir": str(tmp_path / "export")}))
    assert r.rows == N and r.pushed == {} and set(r.student_dirs) == {"cw-dpo"}
    assert "nothing pushed" in format_export(r)
    ds = load_dataset(r.dataset_dir, split="train")  # the card's `configs` entry names the parquet file
    assert ds.num_rows == N and {"prompt", "chosen", "rejected", "confidence", "pair_id"} <= set(ds.column_names)
    assert ds["confidence"] == pytest.approx(np.linspace(0.0, 1.0, N), abs=1e-6)
    card = (tmp_path / "export" / "dataset" / "README.md").read_text()
    for text in ("labeled fraction 0.3", "held-out human labels", "0.625", "with one): 0.610", "top-30% most confident: 0.800", "| 0.50–1.00 | 12 |"):
        assert text in card, text
    ann = (tmp_path / "export" / "annotator" / "README.md").read_text()
    assert "pipeline_tag: text-classification" in ann and "base_model: Qwen/Qwen2.5-0.5B" in ann and "0.625" in ann
    stu = (tmp_path / "export" / "students" / "cw-dpo" / "README.md").read_text()
    assert "GRA" in stu and "0.600 [0.500, 0.700]" in stu and "base_model:" not in stu  # a local path is no hub id
    assert AutoModelForSequenceClassification.from_pretrained(r.annotator_dir).config.num_labels == 1
    AutoModelForCausalLM.from_pretrained(r.student_dirs["cw-dpo"])

    trl = pytest.importorskip("trl")
    from cwpo_ray.integrations.trl import WeightedDPOTrainer

    tok = AutoTokenizer.from_pretrained(r.student_dirs["cw-dpo"])
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=8, max_steps=2, learning_rate=1e-3,
                         report_to=[], logging_steps=1, save_strategy="no", use_cpu=True, beta=0.1, precompute_ref_log_probs=True)
    trainer = WeightedDPOTrainer(model=AutoModelForCausalLM.from_pretrained(r.student_dirs["cw-dpo"]), args=args,
                                 train_dataset=ds, processing_class=tok)  # weights: the `confidence` column
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs) and 0 < logs[0]["weights/mean"] < 1


def test_push_uses_huggingface_hub_create_and_upload(run_dir, tmp_path, monkeypatch):
    """Offline here: the two huggingface_hub calls are recorded instead of sent (the push itself is the library's)."""
    import huggingface_hub

    calls = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: calls.append(("create", repo_id, kw["repo_type"], kw["private"])))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, **kw: calls.append(("upload", kw["repo_id"], kw["repo_type"], kw["folder_path"])) or f"https://hub/{kw['repo_id']}")
    r = run_export(build_config(ExportConfig, {"run_dir": str(run_dir), "output_dir": str(tmp_path / "x"),
                                               "push": {"dataset": "me/labels", "annotator": "me/ann", "students": {"cw-dpo": "me/cw"}}}))
    out = tmp_path / "x"
    assert calls == [("create", "me/labels", "dataset", True), ("upload", "me/labels", "dataset", str(out / "dataset")),
                     ("create", "me/ann", "model", True), ("upload", "me/ann", "model", str(out / "annotator")),
                     ("create", "me/cw", "model", True), ("upload", "me/cw", "model", str(out / "students" / "cw-dpo"))]
    assert r.pushed[str(out / "dataset")] == "https://hub/me/labels"


def test_bad_input_fails_fast_naming_the_field(run_dir, tmp_path):
    def err(**kw) -> str:
        with pytest.raises(ConfigError) as e:
            run_export(build_config(ExportConfig, {"output_dir": str(tmp_path / "o"), **kw}))
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "preferences: required" in err()
    assert "run_dir" in err(run_dir=str(tmp_path / "nope"))
    assert "push.students" in err(run_dir=str(run_dir), push={"students": {"ipo": "me/x"}})
    assert "HF_HUB_OFFLINE" in err(run_dir=str(run_dir), push={"dataset": "me/x"})  # the tests run offline
    assert "annotator" in err(run_dir=str(run_dir), annotator=str(tmp_path))
    prefs = tmp_path / "p.parquet"
    t = pq.read_table(run_dir / "annotated" / "preferences")
    pq.write_table(t.drop(["confidence"]), prefs)
    assert "no column 'confidence'" in err(preferences=str(prefs))
    pq.write_table(t.set_column(t.schema.get_field_index("confidence"), "confidence", pa.array([2.0] * N, pa.float32())), prefs)
    assert "outside [0, 1]" in err(preferences=str(prefs))
