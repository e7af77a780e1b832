import pytest

from cwpo_ray.prepare.adapters import (
    BadRow,
    adapt_hh_rlhf,
    adapt_prompt_chosen_rejected,
    adapt_shp,
    adapt_ultrafeedback,
    get_adapter,
    required_columns,
)
from tests.formats import HH_PROMPT_0, HH_ROWS, SHP_ROWS, TLDR_ROWS, UFB_ROWS


def test_hh_splits_shared_prompt_from_final_turn():
    prompt, a, b, label = adapt_hh_rlhf(HH_ROWS[0])
    assert prompt == HH_PROMPT_0
    assert a == "Snake plants tolerate low light well." and b == "I don't know, figure it out."
    assert label == "a"


def test_hh_bad_rows():
    with pytest.raises(BadRow, match="hh_prompt_mismatch"):
        adapt_hh_rlhf({"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"})
    with pytest.raises(BadRow, match="hh_no_assistant_turn"):
        adapt_hh_rlhf({"chosen": "just text", "rejected": "\n\nHuman: b\n\nAssistant: y"})
    with pytest.raises(BadRow, match="missing_column:rejected"):
        adapt_hh_rlhf({"chosen": "\n\nHuman: a\n\nAssistant: x"})
    with pytest.raises(BadRow, match="non_string:chosen"):
        adapt_hh_rlhf({"chosen": 5, "rejected": "x"})


def test_tldr_and_ultrafeedback():
    p, a, b, lab = adapt_prompt_chosen_rejected(TLDR_ROWS[0])
    assert p.endswith("TL;DR:") and a == " I burn rice; how do I stop?" and lab == "a"
    p, a, b, lab = adapt_ultrafeedback(UFB_ROWS[0])
    assert p == "Write a haiku about rain." and a.startswith("Soft rain") and b == "Rain is wet."
    bad = dict(UFB_ROWS[1], chosen=[{"content": "What is 2+2?", "role": "user"}])
    with pytest.raises(BadRow, match="bad_messages:chosen"):
        adapt_ultrafeedback(bad)


def test_generic_mappings():
    ab = get_adapter("generic", {"prompt": "q", "response_a": "r1", "response_b": "r2", "label": "pref"})
    assert ab({"q": "Q", "r1": "x", "r2": "y", "pref": 1}) == ("Q", "x", "y", "b")
    assert ab({"q": "Q", "r1": "x", "r2": "y", "pref": None}) == ("Q", "x", "y", None)
    with pytest.raises(BadRow, match="bad_label"):
        ab({"q": "Q", "r1": "x", "r2": "y", "pref": "maybe"})
    cr = get_adapter("generic", {"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert cr({"q": "Q", "good": "g", "bad": "b"}) == ("Q", "g", "b", "a")
    canonical = get_adapter("canonical")
    assert canonical({"prompt": "P", "response_a": "x", "response_b": "y"}) == ("P", "x", "y", None)


def test_shp_labels_one_means_a_preferred():
    p, a, b, lab = adapt_shp(SHP_ROWS[0])
    assert p == SHP_ROWS[0]["history"] and a.startswith("Start with a simple") and b == "Pancakes." and lab == "a"
    p, a, b, lab = adapt_shp(SHP_ROWS[1])  # labels 0: B preferred; A and B are kept in their columns
    assert a == "idk" and b.startswith("Start with a simple") and lab == "b"
    assert get_adapter("shp") is adapt_shp
    assert required_columns("shp") == ["history", "human_ref_A", "human_ref_B", "labels"]
    for bad in (2, "1", None, 0.5):
        with pytest.raises(BadRow, match="bad_label"):
            adapt_shp(dict(SHP_ROWS[0], labels=bad))
    with pytest.raises(BadRow, match="null_field:human_ref_B"):
        adapt_shp(dict(SHP_ROWS[0], human_ref_B=None))
