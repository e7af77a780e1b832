"""Bad input *files* (a truncated parquet shard, a file without the needed columns) in every stage's
input: quarantined whole with their reason before any compute (or one-line failure with
``on_bad_file=fail``), every good row still processed. Plus exact duplicate pairs in `prepare`."""
from __future__ import annotations

import glob
import gzip
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cwpo_ray.config import ConfigError, build_config
from cwpo_ray.inputs import FILES_QUARANTINE, check_inputs, write_bad_files
from cwpo_ray.schema import PAIR_SCHEMA, PREFERENCE_SCHEMA, QUARANTINE_SCHEMA, pair_id

pytestmark = pytest.mark.timeout(300)


# ------------------------------------------------------------------------------------------ fixtures
def canonical_rows(n: int, start: int = 0) -> list[dict]:
    return [{"prompt": f"question number {i}?", "response_a": f"first answer {i}", "response_b": f"second reply {i}",
             "human_label": "a" if i % 2 else None} for i in range(start, start + n)]


def pair_rows(n: int, start: int = 0) -> list[dict]:
    return [{"pair_id": pair_id(r["prompt"], r["response_a"], r["response_b"]), **r, "source": "test"}
            for r in canonical_rows(n, start)]


def preference_rows(n: int, start: int = 0) -> list[dict]:
    return [{"pair_id": r["pair_id"], "prompt": r["prompt"], "chosen": r["response_a"], "rejected": r["response_b"],
             "score_chosen": 1.0, "score_rejected": 0.0, "confidence": 0.46, "human_label_agrees": None}
            for r in pair_rows(n, start)]


def truncate(src: str, dst: str) -> str:
    data = open(src, "rb").read()
    with open(dst, "wb") as f:
        f.write(data[: len(data) // 2])  # cut in the middle: no footer, "Parquet magic bytes not found"
    return dst


def bad_folder(d, good: list[pa.Table], wrong: pa.Table) -> dict:
    """``d`` with good shards part-0..k, a truncated copy of the first (part-t) and a wrong-schema file (part-w)."""
    os.makedirs(d, exist_ok=True)
    for i, t in enumerate(good):
        pq.write_table(t, f"{d}/part-{i}.parquet")
    trunc = truncate(f"{d}/part-0.parquet", f"{d}/part-t.parquet")
    pq.write_table(wrong, f"{d}/part-w.parquet")
    return {"dir": str(d), "truncated": trunc, "wrong": f"{d}/part-w.parquet"}


def files_quarantine(output_dir: str) -> dict[str, str]:
    t = pq.read_table(os.path.join(output_dir, "quarantine", FILES_QUARANTINE))
    assert t.schema.equals(QUARANTINE_SCHEMA)
    return {os.path.basename(r["source"]): r["reason"] for r in t.to_pylist()}


EXPECTED = {"part-t.parquet": "unreadable_file", "part-w.parquet": "missing_columns"}


def assert_one_line_naming(err: pytest.ExceptionInfo, path: str):
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("input error: ") and path in msg, msg


# ------------------------------------------------------------------------------------ the pure helper
def test_check_inputs_from_metadata(tmp_path):
    good = [pa.Table.from_pylist(pair_rows(5), schema=PAIR_SCHEMA), pa.Table.from_pylist(pair_rows(3, 5), schema=PAIR_SCHEMA)]
    f = bad_folder(tmp_path / "in", good, pa.table({"text": ["x"]}))
    pq.write_table(pa.table({"pair_id": ["1"], "prompt": [1], "response_a": ["a"], "response_b": ["b"]}),
                   tmp_path / "in" / "part-y.parquet")  # prompt is int64
    pq.write_table(pa.table({"x": [1]}), tmp_path / "in" / "_hidden.parquet")  # skipped like Ray Data does
    (tmp_path / "in" / "README.txt").write_text("not an input")
    need = ["pair_id", "prompt", "response_a", "response_b"]
    c = check_inputs(f["dir"], need, {"prompt": "string"})
    assert [os.path.basename(x) for x in c.files] == ["part-0.parquet", "part-1.parquet"] and c.rows == 8
    assert {os.path.basename(b.path): b.reason for b in c.bad} == {**EXPECTED, "part-y.parquet": "wrong_column_types"}
    by_name = {os.path.basename(b.path): b for b in c.bad}
    assert "Parquet magic bytes not found" in by_name["part-t.parquet"].detail
    assert "missing columns pair_id, prompt, response_a, response_b (has: text)" == by_name["part-w.parquet"].detail
    assert "prompt is int64, expected string" in by_name["part-y.parquet"].detail
    assert c.reasons == {"unreadable_file": 1, "missing_columns": 1, "wrong_column_types": 1}
    assert c.read_path() == c.files and check_inputs(f"{f['dir']}/part-0.parquet", need).read_path().endswith("part-0.parquet")
    with pytest.raises(ConfigError) as e:  # fail: the first bad file, one line
        check_inputs(f["dir"], need, on_bad_file="fail")
    assert_one_line_naming(e, f["truncated"])
    assert "not a readable parquet file (Parquet magic bytes not found" in str(e.value)
    with pytest.raises(ConfigError, match="does not exist"):
        check_inputs(str(tmp_path / "nope"), need, what="input")
    # the record: QUARANTINE_SCHEMA rows (source = path) in quarantine/files.parquet; a clean re-run removes it
    out = str(tmp_path / "out")
    write_bad_files(out, c.bad)
    assert files_quarantine(out) == {**EXPECTED, "part-y.parquet": "wrong_column_types"}
    assert pq.read_table(os.path.join(out, "quarantine", FILES_QUARANTINE)).to_pylist() == [
        {"source": b.path, "reason": b.reason, "detail": b.detail, "raw": None} for b in c.bad]
    write_bad_files(out, [])
    assert not os.path.exists(os.path.join(out, "quarantine", FILES_QUARANTINE))


def test_check_inputs_truncated_gzip(tmp_path):
    data = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in canonical_rows(200)))
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "ok.jsonl.gz").write_bytes(data)
    assert check_inputs(str(tmp_path / "ok.jsonl.gz")).bad == []
    bad = check_inputs(str(tmp_path / "cut.jsonl.gz")).bad
    assert [b.reason for b in bad] == ["unreadable_file"] and "not a readable compressed file" in bad[0].detail


def test_duplicate_mask_and_required_columns():
    from cwpo_ray.prepare.adapters import required_columns
    from cwpo_ray.prepare.core import duplicate_mask, pair_id_keys

    ids = [pair_id("p", "a", "b"), pair_id("q", "a", "b"), pair_id("p", "b", "a"), pair_id("p", "a", "b")]
    keys = pair_id_keys(pa.array(ids))
    assert keys.dtype == np.uint64 and len(set(keys.tolist())) == 2
    assert duplicate_mask(keys).tolist() == [False, False, True, True]  # swapped responses: the same pair
    assert duplicate_mask(pair_id_keys(pa.array(["x", "y", "x"]))).tolist() == [False, False, True]
    assert duplicate_mask(np.empty(0, np.uint64)).tolist() == []
    assert required_columns("hh_rlhf") == ["chosen", "rejected"]
    assert required_columns("canonical") == ["prompt", "response_a", "response_b"]
    mapping = {"prompt": "q", "response_a": "x", "response_b": "y", "label": "l"}
    assert required_columns("generic", mapping) == ["q", "x", "y", "l"]


# ---------------------------------------------------------------------------------------------- prepare
def _prepare(sources, out, **kw):
    from cwpo_ray.prepare.config import PrepareConfig
    from cwpo_ray.prepare.stage import format_summary, run_prepare

    cfg = build_config(PrepareConfig, {"sources": sources, "output_dir": str(out), "max_length": None, **kw})
    s = run_prepare(cfg)
    print(format_summary(s))
    return s


def _read_splits(out) -> pa.Table:
    files = [f for s in ("labeled", "unlabeled", "validation", "test") for f in sorted(glob.glob(f"{out}/{s}/*.parquet"))]
    return pa.concat_tables([pq.read_table(f) for f in files])


def test_prepare_quarantines_bad_files_and_drops_duplicates(ray_session, tmp_path):
    rows = canonical_rows(60)
    dups = [rows[3], {**rows[7], "response_a": rows[7]["response_b"], "response_b": rows[7]["response_a"]}]
    f = bad_folder(tmp_path / "shards", [pa.Table.from_pylist(rows[:30]), pa.Table.from_pylist(rows[30:] + dups)],
                   pa.Table.from_pylist([{"prompt": "p", "chosen": "a", "rejected": "b"}]))  # tldr columns
    gz = tmp_path / "more.jsonl.gz"
    data = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in canonical_rows(20, 100)))
    gz.write_bytes(data[: len(data) // 2])  # a truncated gzip
    (tmp_path / "extra.jsonl").write_text("".join(json.dumps(r) + "\n" for r in canonical_rows(10, 200)))
    sources = [{"format": "canonical", "path": f["dir"], "name": "shards"},
               {"format": "canonical", "path": str(gz), "name": "gz"},
               {"format": "canonical", "path": str(tmp_path / "extra.jsonl"), "name": "extra"}]
    out = tmp_path / "out"
    s = _prepare(sources, out)
    # every good row processed: 60 + 2 duplicates from the shards, 10 from the jsonl; the 2 copies quarantined
    assert s.rows_in == 72 and s.kept == 70 and s.quarantined == 2
    assert s.duplicate_pairs == 2 and s.duplicates == "drop"
    assert s.files_quarantined == 3
    assert s.quarantine_reasons == {"duplicate_pair_id": 2, "unreadable_file": 2, "missing_columns": 1}
    assert {(b.source, os.path.basename(b.path), b.reason) for b in s.bad_files} == {
        ("shards", "part-t.parquet", "unreadable_file"), ("shards", "part-w.parquet", "missing_columns"),
        ("gz", "more.jsonl.gz", "unreadable_file")}
    assert files_quarantine(out) == {**EXPECTED, "more.jsonl.gz": "unreadable_file"}
    kept = _read_splits(out)
    ids = kept.column("pair_id").to_pylist()
    assert len(ids) == len(set(ids)) == 70
    assert set(kept.column("prompt").to_pylist()) == {r["prompt"] for r in rows + canonical_rows(10, 200)}
    q = pq.read_table(out / "quarantine" / "duplicates.parquet").to_pylist()
    assert sorted(r["reason"] for r in q) == ["duplicate_pair_id"] * 2
    assert s.per_source["shards"]["quarantine"] == 2 and sum(s.splits.values()) == 70
    assert json.load(open(out / "summary.json"))["files_quarantined"] == 3

    with pytest.raises(ConfigError) as e:
        _prepare(sources, tmp_path / "out_fail", on_bad_file="fail")
    assert_one_line_naming(e, "part-t.parquet")
    assert not os.path.exists(tmp_path / "out_fail" / "preferences")  # stopped before any compute


def test_prepare_keeps_duplicates_when_asked(ray_session, tmp_path):
    rows = canonical_rows(12)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:3]))
    s = _prepare([{"format": "canonical", "path": str(tmp_path / "a.jsonl")}], tmp_path / "out", duplicates="keep")
    assert s.rows_in == s.kept == 15 and s.duplicate_pairs == 3 and s.quarantined == 0
    assert "duplicate_pair_id" not in s.quarantine_reasons and s.files_quarantined == 0
    assert _read_splits(tmp_path / "out").num_rows == 15


# --------------------------------------------------------------------------------------------- annotate
def test_annotate_quarantines_bad_files(ray_session, tmp_path):
    from cwpo_ray.annotator.annotate import ScorerActor, TokenizeBlocks, format_annotate, run_annotate
    from cwpo_ray.annotator.config import AnnotateConfig

    class WordTokenizer:
        def __call__(self, texts, **kw):
            return {"input_ids": [list(range(len(t.split()))) for t in texts]}

    class FakeScorer:
        def score_ids(self, ids):
            return np.array([len(x) for x in ids], np.float32)

    class FakeScorerActor(ScorerActor):  # the stage's Ray Data plumbing, without a model
        def __init__(self, c: dict):
            self.c, self.scorer = c, FakeScorer()

    class FakeTokenize(TokenizeBlocks):
        def __init__(self, c: dict):
            self.c, self.tokenizer = c, WordTokenizer()

    good = [pa.Table.from_pylist(pair_rows(25), schema=PAIR_SCHEMA), pa.Table.from_pylist(pair_rows(15, 25), schema=PAIR_SCHEMA)]
    # a wrong-schema file: annotate's own output (prompt/chosen/rejected) given back as input
    f = bad_folder(tmp_path / "in", good, pa.Table.from_pylist(preference_rows(4), schema=PREFERENCE_SCHEMA))
    out = tmp_path / "ann"
    model = tmp_path / "model"
    model.mkdir()
    cfg = build_config(AnnotateConfig, {"model": str(model), "input": f["dir"], "output_dir": str(out),
                                        "min_actors": 1, "max_actors": 1, "max_length": 64})
    with pytest.raises(ConfigError) as e:
        run_annotate(cfg.model_copy(update={"on_bad_file": "fail"}), actor_cls=FakeScorerActor, tokenize_cls=FakeTokenize)
    assert_one_line_naming(e, "part-t.parquet")
    assert not os.path.exists(out / "preferences")
    s = run_annotate(cfg, actor_cls=FakeScorerActor, tokenize_cls=FakeTokenize)
    print(format_annotate(s))
    assert s.pairs == s.unique_pair_ids == 40 and s.quarantined == 0 and s.blocks == 2
    assert s.files_quarantined == 2 and s.quarantine_reasons == {"unreadable_file": 1, "missing_columns": 1}
    assert files_quarantine(out) == EXPECTED
    assert "bad input files: 2" in format_annotate(s)
    # a file without the optional human_label / source columns is fine: read as null
    pq.write_table(pa.Table.from_pylist(pair_rows(5, 40)).drop_columns(["human_label", "source"]), f"{f['dir']}/part-2.parquet")
    s2 = run_annotate(cfg, actor_cls=FakeScorerActor, tokenize_cls=FakeTokenize)
    assert s2.pairs == 45 and s2.blocks_skipped == 2 and s2.files_quarantined == 2


# ------------------------------------------------------------------------------------------ train-annotator
def test_train_annotator_checks_the_validation_split_first(ray_session, tmp_path):
    """The held-out split's files are checked before any compute, like the labeled split's: fail stops the
    run naming the file; quarantine records them with the labeled split's and the evaluation reads the rest."""
    from cwpo_ray.annotator.config import AnnotatorTrainConfig
    from cwpo_ray.annotator.train import load_training_pairs, read_pairs, run_train_annotator

    data = tmp_path / "data"
    (data / "labeled").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(pair_rows(10), schema=PAIR_SCHEMA), data / "labeled" / "part-0.parquet")
    good = [pa.Table.from_pylist(pair_rows(4, 10), schema=PAIR_SCHEMA), pa.Table.from_pylist(pair_rows(3, 14), schema=PAIR_SCHEMA)]
    f = bad_folder(data / "validation", good, pa.table({"text": ["x"]}))
    cfg = build_config(AnnotatorTrainConfig, {"model": "unused", "data_dir": str(data), "output_dir": str(tmp_path / "ann"),
                                              "on_bad_file": "fail"})
    with pytest.raises(ConfigError) as e:  # before Ray, the model or the training split is touched
        run_train_annotator(cfg)
    assert_one_line_naming(e, "part-t.parquet")
    assert not os.path.exists(tmp_path / "ann" / "quarantine")

    eval_check = check_inputs(f["dir"], PAIR_SCHEMA.names)
    _, n_train, counts = load_training_pairs(cfg.model_copy(update={"on_bad_file": "quarantine"}), eval_check.bad)
    assert n_train == counts.rows_used == 5 and counts.quarantined == 5  # rows without a human label
    assert counts.files_quarantined == 2 and {b.reason for b in counts.bad_files} == {"unreadable_file", "missing_columns"}
    assert counts.quarantine_reasons == {"no_human_label": 5, "unreadable_file": 1, "missing_columns": 1}
    assert files_quarantine(tmp_path / "ann") == EXPECTED
    assert read_pairs(eval_check.read_path()).column("pair_id").to_pylist() == [r["pair_id"] for r in pair_rows(7, 10)]


# ------------------------------------------------------------------------------------------- sft / align
def test_load_pairs_quarantines_bad_files(ray_session, tmp_path):
    from cwpo_ray.student.config import AlignConfig, SFTConfig
    from cwpo_ray.student.stage import load_pairs

    good = [pa.Table.from_pylist(preference_rows(20), schema=PREFERENCE_SCHEMA),
            pa.Table.from_pylist(preference_rows(12, 20), schema=PREFERENCE_SCHEMA)]
    # a wrong-schema file: human pairs (PAIR_SCHEMA, no confidence) in a preferences folder
    f = bad_folder(tmp_path / "preferences", good, pa.Table.from_pylist(pair_rows(3), schema=PAIR_SCHEMA))
    cfg = build_config(AlignConfig, {"data_dir": f["dir"], "output_dir": str(tmp_path / "align")})
    ds, counts = load_pairs(cfg, needs_scores=True)
    assert ds.count() == counts.rows_used == counts.rows_in == 32 and counts.quarantined == 0
    assert counts.files_quarantined == 2 and counts.quarantine_reasons == {"unreadable_file": 1, "missing_columns": 1}
    assert files_quarantine(tmp_path / "align") == EXPECTED
    with pytest.raises(ConfigError) as e:  # pairs format: the preference files lack the pair columns
        load_pairs(build_config(SFTConfig, {"data_dir": f["dir"], "data_format": "pairs", "on_bad_file": "fail",
                                            "output_dir": str(tmp_path / "sft")}), needs_scores=False)
    assert_one_line_naming(e, "part-0.parquet")
    assert "missing columns" in str(e.value)


# --------------------------------------------------------------------------------------------- evaluate
def test_evaluate_prompts_skip_bad_files(tmp_path):
    from cwpo_ray.evaluate.config import EvaluateConfig
    from cwpo_ray.evaluate.stage import load_prompts, run_evaluate

    good = [pa.Table.from_pylist(pair_rows(8), schema=PAIR_SCHEMA),
            pa.Table.from_pylist(pair_rows(6, 8) + pair_rows(2), schema=PAIR_SCHEMA)]  # 2 repeated prompts
    f = bad_folder(tmp_path / "test", good, pa.table({"question": ["where is the prompt?"]}))
    cfg = build_config(EvaluateConfig, {"prompts_path": f["dir"], "sft_model": "unused", "output_dir": str(tmp_path / "eval")})
    prompts, counts, check, reasons = load_prompts(cfg)
    assert prompts == [r["prompt"] for r in canonical_rows(14)]
    assert counts["rows_in"] == 16 and counts["duplicate_prompts"] == 2 and counts["prompts_used"] == 14
    assert len(check.bad) == 2 and reasons == {"unreadable_file": 1, "missing_columns": 1}
    assert files_quarantine(tmp_path / "eval") == EXPECTED
    assert load_prompts(cfg.model_copy(update={"max_prompts": 5}))[0] == prompts[:5]
    with pytest.raises(ConfigError) as e:  # the run stops before Ray or any model is touched
        run_evaluate(cfg.model_copy(update={"on_bad_file": "fail"}))
    assert_one_line_naming(e, "part-t.parquet")
