"""Stage result models (cwpo_ray.results): written once, read back as the same model, unknown keys
rejected, and a skipped pipeline stage's manifest record turned back into its model. No Ray."""
import json

import numpy as np
import pytest
from pydantic import ValidationError

from cwpo_ray.evaluate.metrics import gra
from cwpo_ray.manifest import Manifest
from cwpo_ray.results import EvaluateResult, LabelReport, PrepareResult, SanityGate, read_result, write_result

PREPARE = {
    "rows_in": 12, "kept": 10, "quarantined": 2, "splits": {"labeled": 3, "unlabeled": 4, "validation": 1, "test": 2},
    "quarantine_reasons": {"bad_json": 1, "unreadable_file": 1}, "duplicate_pairs": 1, "duplicates": "drop",
    "files_quarantined": 1,
    "bad_files": [{"source": "hh", "path": "/d/x.parquet", "reason": "unreadable_file", "detail": "not parquet"}],
    "per_source": {"hh": {"labeled": 3, "unlabeled": 4, "validation": 1, "test": 2, "quarantine": 2}},
    "output_dir": "/out",
}


def _evaluation() -> EvaluateResult:
    rng = np.random.default_rng(0)
    sft, aligned = rng.normal(size=(20, 2)), rng.normal(0.5, size=(20, 2))
    gen = {"responses": 40, "generated_tokens": 400, "seconds": 1.5, "tokens_per_s": 266.7,
           "finish_reasons": {"stop": 38, "length": 2}, "backends": {"vllm": 40}, "fallback_reasons": [],
           "device": "cpu", "executor": "actor_pool", "length_limit_share": 0.05, "base_seed": 0}
    return EvaluateResult(
        num_prompts=20, samples_per_prompt=2, seeding="common",
        prompts={"rows_in": 25, "unique_prompts": 20, "duplicate_prompts": 5, "bad_prompts": 0,
                 "not_used_max_prompts": 0, "prompts_used": 20},
        prompts_path="/d/test", sft_model="/m/sft", models={"human-dpo": "/m/a"}, gold="synthetic r*(x, y)",
        gold_seconds=0.1, methods={"human-dpo": gra(aligned, sft, num_bootstrap=200)},
        mean_gold={"sft": float(sft.mean()), "human-dpo": float(aligned.mean())},
        length_limit_share={"sft": 0.05, "human-dpo": 0.05},
        generation={"sft": {**gen, "model": "/m/sft"}, "human-dpo": {**gen, "model": "/m/a"}},
        sampling={"max_new_tokens": 24, "seed": 0, "stop": [], "temperature": 0.95, "top_p": 1.0},
        ci=0.95, num_bootstrap=200, tie_tolerance=0.0, output_dir="/out/eval", seconds_total=3.2,
        files={"report": "/out/eval/report.md", "gra_plot": "/out/eval/gra.png", "gold_plot": "/out/eval/gold_rewards.png"})


def test_result_round_trips_and_keeps_the_summary_keys(tmp_path):
    s = PrepareResult(**PREPARE)
    path = write_result(tmp_path / "prep", s)
    assert path == str(tmp_path / "prep" / "summary.json")
    assert json.loads((tmp_path / "prep" / "summary.json").read_text()) == PREPARE  # what readers of the file see
    back = read_result(PrepareResult, path)
    assert back == s and back.bad_files[0].source == "hh"
    ev = _evaluation()
    write_result(tmp_path, ev, "metrics.json")
    back = read_result(EvaluateResult, tmp_path / "metrics.json")
    assert back == ev and back.methods["human-dpo"].gra_ci == ev.methods["human-dpo"].gra_ci
    raw = json.loads((tmp_path / "metrics.json").read_text())
    assert set(raw["methods"]["human-dpo"]) == set(gra(np.zeros(1), np.zeros(1), num_bootstrap=1))  # gra()'s keys
    assert isinstance(raw["methods"]["human-dpo"]["gra_ci"], list)


def test_unknown_field_is_rejected(tmp_path):
    with pytest.raises(ValidationError, match="nope"):
        PrepareResult(**PREPARE, nope=1)
    (tmp_path / "summary.json").write_text(json.dumps({**PREPARE, "splits_typo": {}}))
    with pytest.raises(ValidationError, match="splits_typo"):
        read_result(PrepareResult, tmp_path / "summary.json")
    with pytest.raises(ValidationError, match="nope"):  # nested models too
        PrepareResult(**{**PREPARE, "bad_files": [{**PREPARE["bad_files"][0], "nope": 1}]})


def test_nan_and_missing_later_fields(tmp_path):
    # NaN is written like json.dumps writes it (not null), and reads back as NaN
    write_result(tmp_path, LabelReport(human_gold_agreement=float("nan"), pool_pairs=3), "labels.json")
    assert "NaN" in (tmp_path / "labels.json").read_text()
    assert np.isnan(read_result(LabelReport, tmp_path / "labels.json").human_gold_agreement)
    # a metrics.json written before files / bad-file counts were recorded still reads
    old = _evaluation().model_dump(mode="json", exclude={"files", "files_quarantined", "bad_files", "quarantine_reasons"})
    (tmp_path / "old.json").write_text(json.dumps(old))
    back = read_result(EvaluateResult, tmp_path / "old.json")
    assert back.files is None and back.files_quarantined == 0 and back.bad_files == []


def test_skipped_stage_gets_its_model_back_from_the_manifest(tmp_path):
    from cwpo_ray.pipeline import MethodSpec, _recorded, format_gate, sanity_gate

    ev = _evaluation()
    out = tmp_path / "eval"

    def run():
        write_result(out, ev, "metrics.json")
        return ev.model_dump(mode="json")  # what the pipeline's stage() hands the manifest

    _, stored, skipped = Manifest(tmp_path).run("evaluate", {"k": 1}, {}, out, run)
    assert not skipped
    _, stored, skipped = Manifest(tmp_path).run("evaluate", {"k": 1}, {}, out, run)
    assert skipped and _recorded(EvaluateResult, stored) == ev
    assert _recorded(EvaluateResult, {**stored, "nope": 1}) is None and _recorded(EvaluateResult, None) is None
    m = Manifest(tmp_path)
    m.forget("evaluate")
    assert "evaluate" not in Manifest(tmp_path).data
    gate = sanity_gate({"human-dpo": MethodSpec(labels="human_unlabeled", weighting="none")}, ev)
    assert isinstance(gate, SanityGate) and gate.works == (gate.gra_ci[0] > 0.5) and gate.method == "human-dpo"
    assert "human-dpo GRA" in format_gate(gate)


def test_report_reads_the_evaluate_result(tmp_path):
    from cwpo_ray.evaluate.report import markdown

    text = markdown(_evaluation())
    assert "| human-dpo |" in text and "synthetic r*(x, y)" in text and "24 new tokens" in text
