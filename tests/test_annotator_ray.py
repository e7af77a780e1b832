"""train-annotator on Ray Train and annotate on Ray Data, on the synthetic task with the tiny Qwen2."""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cwpo_ray.config import build_config
from cwpo_ray.results import TrainAnnotatorResult, read_result


@pytest.fixture(scope="module")
def trained_annotator(prepared_data, synthetic_assets, tmp_path_factory):
    """A tiny annotator trained once on DeepSpeed ZeRO-2 with 2 CPU workers (demo-style lr; 16 pairs per
    worker = 32 per optimizer step)."""
    from cwpo_ray.annotator.config import AnnotatorTrainConfig
    from cwpo_ray.annotator.train import run_train_annotator

    out = tmp_path_factory.mktemp("annotator")
    cfg = build_config(AnnotatorTrainConfig, {
        "model": synthetic_assets["weak_base"], "data_dir": prepared_data["dir"], "output_dir": str(out),
        "epochs": 5, "lr": 2e-3, "batch_size": 16, "max_length": 128, "num_workers": 2, "zero_stage": 2, "seed": 0,
    })
    return run_train_annotator(cfg)


@pytest.mark.timeout(600)  # includes the session fixtures (synthetic task, prepare) when run first
def test_train_annotator_zero2_beats_chance_and_confidence_is_informative(trained_annotator):
    from transformers import AutoModelForSequenceClassification

    from cwpo_ray.annotator.train import format_train_annotator

    s = trained_annotator
    t = s.held_out
    print(format_train_annotator(s))
    assert s.workers == 2 and s.zero_stage == 2 and s.train_pairs > 300 and s.quarantined == 0
    assert s.resumed_from == -1 and s.steps == s.history[-1]["step"] > 20
    assert s.train_loss < s.first_train_loss - 0.05 and s.train_accuracy > s.first_train_accuracy
    # metrics.jsonl: one appended row per report (training rows every log_every_steps, then the final one)
    rows = [json.loads(x) for x in open(os.path.join(s.output_dir, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "loss" in r] == [h["step"] for h in s.history] and rows[-1]["final"] == 1
    assert t.split == "validation" and t.pairs >= 100
    assert t.accuracy > 0.6, t  # chance is 0.5 (human labels are BT-noisy, so the ceiling is < 1)
    curve = t.top_confident_accuracy
    assert curve["top30"] > t.accuracy, curve  # confidence is informative
    assert curve["top100"] == pytest.approx(t.accuracy)
    assert 0.0 <= t.ece < 0.5
    for png in (t.reliability_png, t.top_confident_png):
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # final model: a plain save_pretrained folder with its tokenizer and trained head
    m = AutoModelForSequenceClassification.from_pretrained(s.model_dir)
    assert m.config.num_labels == 1 and m.config.pad_token_id is not None
    assert os.path.exists(os.path.join(s.model_dir, "tokenizer.json"))
    assert json.load(open(os.path.join(s.output_dir, "summary.json")))["held_out"]["accuracy"] == t.accuracy
    assert read_result(TrainAnnotatorResult, os.path.join(s.output_dir, "summary.json")) == s


@pytest.mark.timeout(600)
def test_train_annotator_lora_resumes_after_killed_worker(prepared_data, synthetic_assets, tmp_path):
    """Plain data parallel (ZeRO-0) + LoRA; rank 1 dies after step 3, Ray Train restarts the workers from
    the step-2 checkpoint and the run finishes; the saved folder is the merged classifier."""
    from transformers import AutoModelForSequenceClassification

    from cwpo_ray.annotator.config import AnnotatorTrainConfig
    from cwpo_ray.annotator.train import format_train_annotator, run_train_annotator
    from tests.student_fixtures import KillWorker

    cfg = build_config(AnnotatorTrainConfig, {
        "model": synthetic_assets["weak_base"], "data_dir": prepared_data["dir"], "output_dir": str(tmp_path),
        "max_steps": 6, "lr": 2e-3, "batch_size": 8, "max_length": 128, "num_workers": 2, "zero_stage": 0,
        "lora": {"r": 4, "alpha": 8}, "checkpoint_every_steps": 2, "log_every_steps": 2, "max_failures": 1,
        "max_train_pairs": 200,
    })
    s = run_train_annotator(cfg, worker_hooks=[KillWorker(step=3, rank=1)])
    print(format_train_annotator(s))
    assert s.resumed_from == 2 and s.steps == 6 and s.train_pairs == 200 and s.lora
    assert [(h["step"], h["resumed_from"]) for h in s.history] == [(2, -1), (4, 2), (6, 2)]
    m = AutoModelForSequenceClassification.from_pretrained(s.model_dir)
    assert m.config.num_labels == 1 and not any("lora" in k for k in m.state_dict())
    assert s.held_out.pairs >= 100


def _read(pattern):
    files = sorted(glob.glob(pattern))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


@pytest.fixture(scope="module")
def annotate_input(prepared_data, tmp_path_factory):
    """The unlabeled split plus a file of bad rows (and a few human labels for the agreement check)."""
    d = tmp_path_factory.mktemp("annotate_in")
    t = _read(os.path.join(prepared_data["dir"], "unlabeled", "*.parquet"))
    pq.write_table(t, d / "part-good.parquet", row_group_size=300)  # several row groups
    good = t.slice(0, 3).to_pylist()
    bad = [
        {**good[0], "pair_id": "bad-empty", "response_a": "   "},
        {**good[1], "pair_id": "bad-same", "response_b": good[1]["response_a"]},
        {**good[2], "pair_id": "bad-long", "response_a": " purr" * 400},
        {**good[0], "pair_id": "labeled-a", "human_label": "a"},
    ]
    pq.write_table(pa.Table.from_pylist(bad, schema=t.schema), d / "part-bad.parquet")
    return {"dir": str(d), "good": t}


@pytest.mark.timeout(240)
def test_annotate_killed_actor_exact_pair_ids_and_resume(trained_annotator, annotate_input, tmp_path):
    from cwpo_ray.annotator.annotate import ScorerActor, format_annotate, run_annotate
    from cwpo_ray.annotator.config import AnnotateConfig

    flag = tmp_path / "killed.flag"

    class KillOnceScorer(ScorerActor):
        """Kills its own process in the middle of its first block, once per test (file flag)."""

        def __call__(self, batch):
            try:
                fd = os.open(str(flag), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return super().__call__(batch)
            os.write(fd, str(batch["key"][0]).encode())
            os.close(fd)
            os._exit(1)

    out = tmp_path / "annotated"
    cfg = build_config(AnnotateConfig, {
        "model": trained_annotator.model_dir, "input": annotate_input["dir"], "output_dir": str(out),
        "max_length": 128, "block_rows": 100, "min_actors": 2, "max_actors": 2, "max_batch_tokens": 4096,
    })
    s = run_annotate(cfg, actor_cls=KillOnceScorer)
    print(format_annotate(s))
    assert flag.exists(), "the scorer actor was never killed"

    good_ids = annotate_input["good"].column("pair_id").to_pylist()
    got = _read(str(out / "preferences" / "*.parquet"))
    ids = got.column("pair_id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicated pairs"
    assert set(ids) == set(good_ids) | {"labeled-a"}, "lost or extra pairs"
    assert s.pairs == s.unique_pair_ids == len(good_ids) + 1
    # bad rows are quarantined with their reason, not dropped
    assert s.quarantine_reasons == {"empty_field:response_a": 1, "identical_responses": 1, "too_long": 1}
    q = _read(str(out / "quarantine" / "*.parquet"))
    assert sorted(q.column("reason").to_pylist()) == ["empty_field:response_a", "identical_responses", "too_long"]

    # TRL-compatible rows: chosen = higher score, confidence = 2(σ(Δ) − ½) exactly
    assert got.schema.names[:4] == ["pair_id", "prompt", "chosen", "rejected"]
    sc = got.column("score_chosen").to_numpy().astype(np.float64)
    sr = got.column("score_rejected").to_numpy().astype(np.float64)
    conf = got.column("confidence").to_numpy()
    assert (sc >= sr).all()
    np.testing.assert_allclose(conf, 2 * (1 / (1 + np.exp(-(sc - sr))) - 0.5), atol=1e-6)
    # `prepare` keeps the (hidden) human labels of the unlabeled split: agreement is a real diagnostic
    n_human = sum(x is not None for x in annotate_input["good"].column("human_label").to_pylist()) + 1
    assert s.human_labeled_pairs == n_human and s.human_agreement > 0.55
    assert sum(s.confidence_hist.counts) == s.pairs
    assert open(s.confidence_hist_png, "rb").read(4) == b"\x89PNG"
    assert s.blocks_skipped == 0 and s.pairs_per_s > 0

    # resume: a re-run skips every finished block ...
    again = run_annotate(cfg)
    assert again.blocks_skipped == again.blocks and again.pairs_scored_this_run == 0
    # ... and after losing one block's output scores exactly that block again
    victim = sorted(glob.glob(str(out / "preferences" / "part-good-*.parquet")))[1]
    n_victim = pq.read_metadata(victim).num_rows
    os.remove(victim)
    third = run_annotate(cfg)
    assert third.blocks_skipped == third.blocks - 1 and third.pairs_scored_this_run == n_victim
    final = _read(str(out / "preferences" / "*.parquet"))
    assert sorted(final.column("pair_id").to_pylist()) == sorted(ids)
    # a different model into the same output is refused unless overwrite=true
    from cwpo_ray.config import ConfigError

    with pytest.raises(ConfigError, match="overwrite"):
        run_annotate(cfg.model_copy(update={"block_rows": 50}))


@pytest.mark.timeout(400)
def test_annotate_vllm_backend_through_run_annotate_matches_hf(trained_annotator, annotate_input, tmp_path):
    """`annotate backend=vllm` on the sandbox's own (vLLM-compatible) annotator, through the Ray Data stage:
    the same pairs, the same chosen/rejected and confidences within float tolerance of backend=hf."""
    from cwpo_ray.annotator.annotate import run_annotate
    from cwpo_ray.annotator.config import AnnotateConfig

    good = annotate_input["good"].slice(0, 300)
    d = tmp_path / "in"
    d.mkdir()
    pq.write_table(good, d / "part-0.parquet")
    runs = {}
    for backend in ("hf", "vllm"):
        cfg = build_config(AnnotateConfig, {
            "model": trained_annotator.model_dir, "input": str(d), "output_dir": str(tmp_path / backend),
            "max_length": 128, "block_rows": 150, "min_actors": 1, "max_actors": 1, "backend": backend,
            "dtype": "float32"})
        s = run_annotate(cfg)
        assert s.backend == backend and s.pairs == good.num_rows and s.quarantined == 0
        t = _read(str(tmp_path / backend / "preferences" / "*.parquet")).sort_by("pair_id")
        runs[backend] = t
    hf, vl = runs["hf"], runs["vllm"]
    assert hf.column("pair_id").to_pylist() == vl.column("pair_id").to_pylist()
    dh = hf.column("score_chosen").to_numpy() - hf.column("score_rejected").to_numpy()
    same = np.array(hf.column("chosen").to_pylist()) == np.array(vl.column("chosen").to_pylist())
    assert np.all(same | (np.abs(dh) < 2e-3)), "a label differs where the HF scores are not tied"
    assert same.mean() > 0.98
    np.testing.assert_allclose(vl.column("confidence").to_numpy()[same], hf.column("confidence").to_numpy()[same], atol=2e-3)
