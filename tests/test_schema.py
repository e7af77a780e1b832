import random

from cwpo_ray.schema import QUARANTINE_SCHEMA, RAW_TRUNCATE, assign_split, pair_id, quarantine_row, quarantine_table, validate_pair


def test_pair_id_is_stable_and_order_free():
    a = pair_id("p", "x", "y")
    assert a == pair_id("p", "y", "x") == str(a)
    assert len(a) == 16 and int(a, 16) >= 0
    assert a != pair_id("p2", "x", "y") and a != pair_id("p", "x", "z")
    # no ambiguity from concatenation
    assert pair_id("ab", "c", "d") != pair_id("a", "bc", "d")


def test_split_is_deterministic_and_order_independent():
    prompts = [f"prompt {i}" for i in range(5000)]
    first = {p: assign_split(p, 0.1, 0.3, seed=0) for p in prompts}
    shuffled = prompts[:]
    random.Random(1).shuffle(shuffled)
    assert {p: assign_split(p, 0.1, 0.3, seed=0) for p in shuffled} == first
    n = len(prompts)
    test = sum(s == "test" for s in first.values()) / n
    labeled = sum(s == "labeled" for s in first.values()) / n
    assert abs(test - 0.1) < 0.02
    assert abs(labeled - 0.9 * 0.3) < 0.03
    # another seed gives another split
    assert {p: assign_split(p, 0.1, 0.3, seed=1) for p in prompts} != first


def test_validate_pair_reasons():
    assert validate_pair("p", "a", "b", "a") is None
    assert validate_pair(None, "a", "b") == "null_field:prompt"
    assert validate_pair("p", 3, "b") == "non_string:response_a"
    assert validate_pair("p", "a", "  ") == "empty_field:response_b"
    assert validate_pair("p", "a", " a ") == "identical_responses"
    assert validate_pair("p\ufffd", "a", "b") == "bad_utf8:prompt"
    assert validate_pair("p", "a\udcff", "b") == "bad_utf8:response_a"
    assert validate_pair("p", "a", "b", "c") == "bad_label"


def test_quarantine_row_and_table():
    assert quarantine_row("hh", "bad_json", "f.jsonl:3", "{oops") == \
        {"source": "hh", "reason": "bad_json", "detail": "f.jsonl:3", "raw": "{oops"}
    # any object: its repr; a whole file: raw stays null; detail defaults to ""
    assert quarantine_row("s", "no_human_label", raw={"x": 1})["raw"] == "{'x': 1}"
    assert quarantine_row("/d/part-0.parquet", "unreadable_file") == \
        {"source": "/d/part-0.parquet", "reason": "unreadable_file", "detail": "", "raw": None}
    long = quarantine_row("s", "too_long", raw="x" * (RAW_TRUNCATE + 5))["raw"]
    assert long == "x" * RAW_TRUNCATE + "…"
    t = quarantine_table([quarantine_row("a", "r1", "d1", "x"), quarantine_row("b", "r2")])
    assert t.schema.equals(QUARANTINE_SCHEMA)
    assert t.to_pylist() == [{"source": "a", "reason": "r1", "detail": "d1", "raw": "x"},
                             {"source": "b", "reason": "r2", "detail": "", "raw": None}]
    assert quarantine_table([]).num_rows == 0 and quarantine_table([]).schema.equals(QUARANTINE_SCHEMA)


def test_pair_reasons_equal_the_row_rule_on_every_combination():
    """The Arrow rules (annotate's vectorized validation) give validate_pair's reason for every row:
    all combinations of tricky texts (Unicode spaces Python strips, U+FFFD, nulls) and labels."""
    import itertools

    import pyarrow as pa

    from cwpo_ray.schema import PAIR_SCHEMA, pair_reasons

    texts = ["ok", "", " ", "\x1c", "\x85", "\u3000x", "a\ufffd", None, "x ", " x", "\u200b", "\xa0"]
    rows = [{"pair_id": "i", "prompt": p, "response_a": a, "response_b": b, "human_label": lab, "source": "s"}
            for p, a, b, lab in itertools.product(texts, texts, texts, [None, "a", "b", "c", ""])]
    schema = pa.schema([f.with_nullable(True) for f in PAIR_SCHEMA])
    got = pair_reasons(pa.Table.from_pylist(rows, schema=schema)).to_pylist()
    want = [validate_pair(r["prompt"], r["response_a"], r["response_b"], r["human_label"]) for r in rows]
    assert len(got) == len(rows) == 8640
    assert got == want
    assert {w for w in want} >= {None, "null_field:prompt", "empty_field:response_a", "bad_utf8:response_b",
                                 "identical_responses", "bad_label"}
