import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cwpo_ray.config import build_config
from cwpo_ray.prepare.config import PrepareConfig
from cwpo_ray.prepare.stage import format_summary, run_prepare
from cwpo_ray.schema import PAIR_SCHEMA, QUARANTINE_SCHEMA
from tests.formats import HH_PROMPT_0, HH_ROWS, SHP_ROWS, TLDR_ROWS, UFB_ROWS, write_jsonl

pytestmark = pytest.mark.timeout(300)


def _read(d, split):
    import glob

    files = sorted(glob.glob(f"{d}/{split}/*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


def _prepare(tmp_path, sources, **kw):
    cfg = build_config(PrepareConfig, {"sources": sources, "output_dir": str(tmp_path / "out"), "max_length": None, **kw})
    return run_prepare(cfg), str(tmp_path / "out")


def test_hh_with_corrupted_rows(ray_session, tmp_path):
    corrupted = [
        b'{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: hello", "rejected": null}',       # null field
        b'{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: hello", ',                          # truncated JSON
        b'{"chosen": "\\n\\nHuman: caf\xe9\\n\\nAssistant: x", "rejected": "y"}',         # latin-1 byte, bad UTF-8
        b'{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: same", "rejected": "\\n\\nHuman: hi\\n\\nAssistant: same"}',
        b'{"chosen": "\\n\\nHuman: a\\n\\nAssistant: x", "rejected": "\\n\\nHuman: b\\n\\nAssistant: y"}',
        b'{"rejected": "\\n\\nHuman: hi\\n\\nAssistant: no"}',                             # missing column
        b'[1, 2, 3]',                                                                    # not an object
    ]
    path = write_jsonl(tmp_path / "hh.jsonl", HH_ROWS, corrupted)
    s, out = _prepare(tmp_path, [{"format": "hh_rlhf", "path": path}], test_fraction=0.0, labeled_fraction=1.0)
    assert s.rows_in == len(HH_ROWS) + len(corrupted)
    assert s.kept == len(HH_ROWS) and s.quarantined == len(corrupted)
    assert s.kept + s.quarantined == s.rows_in
    assert s.quarantine_reasons == {
        "null_field:rejected": 1, "bad_json": 2, "bad_utf8": 1, "identical_responses": 1,
        "hh_prompt_mismatch": 1, "missing_column:chosen": 1,
    }
    q = _read(out, "quarantine")
    assert q.schema.equals(QUARANTINE_SCHEMA)
    details = q.column("detail").to_pylist()
    assert all("hh.jsonl:" in d for d in details), details  # file:line for a human to find the row
    kept = _read(out, "labeled")
    assert kept.schema.equals(PAIR_SCHEMA)
    rows = {r["prompt"]: r for r in kept.to_pylist()}
    r0 = rows[HH_PROMPT_0]
    chosen = r0["response_a"] if r0["human_label"] == "a" else r0["response_b"]
    assert chosen == "Snake plants tolerate low light well."
    assert "Human:" not in r0["response_a"] + r0["response_b"]
    assert "quarantined" in format_summary(s)


def test_split_is_independent_of_row_order(ray_session, tmp_path, synthetic_assets):
    lines = open(synthetic_assets["data"]).read().splitlines()[:600]
    random.Random(0).shuffle(lines)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(reversed(lines)) + "\n")
    maps = []
    for name in ("a", "b"):
        s, out = _prepare(tmp_path / name, [{"format": "canonical", "path": str(tmp_path / f"{name}.jsonl")}])
        assert s.rows_in == 600
        m = {}
        for split in ("labeled", "unlabeled", "validation", "test"):
            t = _read(out, split)
            for pid, lab in zip(t.column("pair_id").to_pylist(), t.column("human_label").to_pylist()):
                m[pid] = (split, lab)
        maps.append(m)
    assert maps[0] == maps[1] and len(maps[0]) == 600
    # every prompt lands in exactly one split (no validation or test prompt in training), each split is used
    by_prompt: dict = {}
    for name in ("labeled", "unlabeled", "validation", "test"):
        for p in _read(tmp_path / "a" / "out", name).column("prompt").to_pylist():
            by_prompt.setdefault(p, set()).add(name)
    assert all(len(v) == 1 for v in by_prompt.values())
    assert {n for v in by_prompt.values() for n in v} == {"labeled", "unlabeled", "validation", "test"}


def test_assign_split_fractions_and_stable_test_split():
    from cwpo_ray.schema import assign_split

    prompts = [f"prompt {i}" for i in range(20000)]
    with_val = [assign_split(p, 0.1, 0.3, 0, validation_fraction=0.1) for p in prompts]
    without = [assign_split(p, 0.1, 0.3, 0) for p in prompts]
    share = {s: with_val.count(s) / len(prompts) for s in set(with_val)}
    assert abs(share["test"] - 0.1) < 0.01 and abs(share["validation"] - 0.1) < 0.01
    assert abs(share["labeled"] - 0.3 * 0.8) < 0.015
    assert [a == "test" for a in with_val] == [b == "test" for b in without]  # test split unchanged


def test_unlabeled_fraction_fixes_the_unlabeled_pool():
    """The paper's labeled-fraction curve: D_unlabeled is the same prompts at every labeled fraction, D_labeled
    only grows, and the training prompts in neither are `unused`; test and validation do not move."""
    from cwpo_ray.prepare.config import PrepareConfig
    from cwpo_ray.schema import assign_split

    prompts = [f"prompt {i}" for i in range(20000)]
    runs = {f: [assign_split(p, 0.1, f, 0, validation_fraction=0.1, unlabeled_fraction=0.5) for p in prompts]
            for f in (0.1, 0.3, 0.5)}
    pools = {f: {p for p, s in zip(prompts, r) if s == "unlabeled"} for f, r in runs.items()}
    labeled = {f: {p for p, s in zip(prompts, r) if s == "labeled"} for f, r in runs.items()}
    assert pools[0.1] == pools[0.3] == pools[0.5] and abs(len(pools[0.1]) / 20000 - 0.5 * 0.8) < 0.015
    assert labeled[0.1] < labeled[0.3] < labeled[0.5] and abs(len(labeled[0.3]) / 20000 - 0.3 * 0.8) < 0.015
    assert "unused" not in runs[0.5] and abs(runs[0.1].count("unused") / 20000 - 0.4 * 0.8) < 0.015
    default = [assign_split(p, 0.1, 0.3, 0, validation_fraction=0.1) for p in prompts]
    assert [s in ("test", "validation") for s in default] == [s in ("test", "validation") for s in runs[0.3]]
    with pytest.raises(ValueError, match="unlabeled_fraction"):
        PrepareConfig(labeled_fraction=0.6, unlabeled_fraction=0.5)


def test_normalizer_rows_and_quarantine_rows(monkeypatch):
    """The pure core: every input item comes out once, a usable pair with its split, any other as a
    quarantine row (source, reason, detail, raw) with the pair columns null."""
    import cwpo_ray.prepare.core as core
    from cwpo_ray.schema import assign_split, pair_id

    monkeypatch.setattr(core, "token_lengths", lambda tok, texts: [len(t.split()) for t in texts])  # 1 word = 1 token
    norm = core.Normalizer("canonical", "src", {}, test_fraction=0.1, labeled_fraction=0.3, split_seed=0,
                           tokenizer="words", max_length=6)
    t = norm([
        (None, "bad_json", "f:1", "{oops"),
        ({"prompt": "p", "response_a": "x", "response_b": "y", "human_label": "c"}, None, "f:2", "line 2"),
        ({"prompt": "p", "response_a": "same", "response_b": "same"}, None, "f:3", "line 3"),
        ({"prompt": "q one", "response_a": " a", "response_b": " b", "human_label": None}, None, "f:4", "line 4"),
        ({"prompt": "w w w w w", "response_a": " a a", "response_b": " b"}, None, "f:5", "line 5"),
    ])
    assert t.schema.equals(core.BATCH_SCHEMA)
    rows = t.to_pylist()
    pair_cols = ("pair_id", "prompt", "response_a", "response_b", "human_label")
    assert [(r["source"], r["reason"], r["detail"], r["raw"]) for r in rows if r["split"] == "quarantine"] == [
        ("src", "bad_json", "f:1", "{oops"),
        ("src", "bad_label", "f:2: label 'c' is not one of a/b/0/1", "line 2"),
        ("src", "identical_responses", "f:3", "line 3"),
        ("src", "too_long", "7 tokens > max_length=6", "w w w w w ||  a a ||  b"),
    ]
    assert all(r[k] is None for r in rows if r["split"] == "quarantine" for k in pair_cols)
    assert rows[3] == {"pair_id": pair_id("q one", " a", " b"), "prompt": "q one", "response_a": " a", "response_b": " b",
                       "human_label": None, "source": "src", "split": assign_split("q one", 0.1, 0.3, 0),
                       "reason": None, "detail": None, "raw": None}
    assert norm([]).num_rows == 0


def test_many_formats_and_length_filter(ray_session, tmp_path, synthetic_assets):
    pq.write_table(pa.Table.from_pylist(TLDR_ROWS), tmp_path / "tldr.parquet")
    harmless = write_jsonl(tmp_path / "harmless.jsonl", HH_ROWS[:2])
    helpful = write_jsonl(tmp_path / "helpful.jsonl", HH_ROWS[2:])
    ufb = write_jsonl(tmp_path / "ufb.jsonl", UFB_ROWS)
    long_row = {"prompt": "x " * 400, "chosen": "a", "rejected": "b"}
    pq.write_table(pa.Table.from_pylist([long_row]), tmp_path / "long.parquet")
    s, out = _prepare(tmp_path, [
        {"format": "hh_rlhf", "path": harmless, "name": "hh/harmless"},
        {"format": "hh_rlhf", "path": helpful, "name": "hh/helpful"},
        {"format": "ultrafeedback", "path": ufb},
        {"format": "tldr", "path": str(tmp_path / "tldr.parquet")},
        {"format": "generic", "path": str(tmp_path / "long.parquet"), "columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}},
    ], tokenizer=synthetic_assets["tokenizer"], max_length=300)
    assert s.rows_in == 2 + 1 + 2 + 2 + 1
    assert s.quarantine_reasons == {"too_long": 1}
    assert set(s.per_source) == {"hh/harmless", "hh/helpful", "ultrafeedback", "tldr", "generic"}
    assert sum(s.splits.values()) == 7
    q = _read(out, "quarantine").to_pylist()
    assert "max_length=300" in q[0]["detail"]
    summary = json.loads(open(f"{out}/summary.json").read())
    assert summary["kept"] == 7


def test_shp_format_counts_and_label_direction(ray_session, tmp_path):
    """SHP's labels: 1 means human_ref_A is preferred, 0 means human_ref_B; a row with another value is quarantined."""
    rows = [*SHP_ROWS, dict(SHP_ROWS[2], labels=2, human_ref_A="Yes.")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "shp.parquet")
    s, out = _prepare(tmp_path, [{"format": "shp", "path": str(tmp_path / "shp.parquet")}],
                      test_fraction=0.0, validation_fraction=0.0, labeled_fraction=1.0)
    assert s.rows_in == 4 and s.kept == 3 and s.quarantined == 1 and s.quarantine_reasons == {"bad_label": 1}
    kept = _read(out, "labeled").to_pylist()
    preferred = {(r["history"], r["human_ref_A"] if r["labels"] == 1 else r["human_ref_B"]) for r in SHP_ROWS}
    got = {(r["prompt"], r["response_a"] if r["human_label"] == "a" else r["response_b"]) for r in kept}
    assert got == preferred
    assert {r["source"] for r in kept} == {"shp"}
