"""Paired differences and seed aggregation over evaluate's responses (pure; no Ray, no models)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from cwpo_ray.evaluate.compare import gra_over_seeds, paired_difference, two_level_bootstrap, verdict, win_shares
from cwpo_ray.evaluate.metrics import gra


def responses(gold: dict[str, np.ndarray]) -> pa.Table:
    """A responses.parquet-shaped table: gold[method] is [prompts, samples]."""
    rows = []
    for method, g in gold.items():
        for i in range(g.shape[0]):
            for j in range(g.shape[1]):
                rows.append({"method": method, "prompt_id": f"p{i:03d}", "sample": j, "gold": float(g[i, j])})
    return pa.Table.from_pylist(rows)


def test_win_shares_agree_with_gra_per_prompt():
    rng = np.random.default_rng(0)
    sft, a = rng.normal(size=(30, 4)), rng.normal(0.3, 1, size=(30, 4))
    w = win_shares(responses({"sft": sft, "a": a}), "a")
    assert list(w) == [f"p{i:03d}" for i in range(30)]
    assert np.allclose(list(w.values()), (a > sft).mean(1))
    assert np.isclose(np.mean(list(w.values())), gra(a, sft)["gra"])


def test_paired_difference_is_exact_and_its_ci_excludes_zero_only_for_a_real_gap():
    rng = np.random.default_rng(1)
    tables, tables_same = [], []
    for _ in range(3):
        sft = rng.normal(size=(200, 4))
        good, bad = sft + rng.normal(0.8, 1, size=sft.shape), sft + rng.normal(-0.2, 1, size=sft.shape)
        tables.append(responses({"sft": sft, "good": good, "bad": bad}))
        twin = sft + rng.normal(0.3, 1, size=sft.shape)
        tables_same.append(responses({"sft": sft, "x": twin, "y": twin + 1e-9 * rng.normal(size=sft.shape)}))
    d = paired_difference(tables, "good", "bad")
    expect = [np.mean(list(win_shares(t, "good").values())) - np.mean(list(win_shares(t, "bad").values())) for t in tables]
    assert np.allclose(d["per_seed"], expect) and np.isclose(d["difference"], np.mean(expect))
    assert d["ci"][0] > 0 and verdict(d).startswith("good above bad")
    assert paired_difference(tables, "bad", "good")["ci"][1] < 0
    same = paired_difference(tables_same, "x", "y")
    assert abs(same["difference"]) < 0.02 and same["ci"][0] <= 0 <= same["ci"][1]
    assert verdict(same).startswith("x vs y: no difference resolved")


def test_two_level_ci_widens_with_seed_spread_and_reduces_to_prompt_bootstrap_for_one_seed():
    rng = np.random.default_rng(2)
    tight = [rng.binomial(1, 0.6, 300).astype(float) for _ in range(4)]
    spread = [rng.binomial(1, p, 300).astype(float) for p in (0.45, 0.55, 0.65, 0.75)]
    (_, t), (_, s) = two_level_bootstrap(tight), two_level_bootstrap(spread)
    assert (s[1] - s[0]) > 1.5 * (t[1] - t[0])
    one = rng.binomial(1, 0.6, 300).astype(float)
    mean, ci = two_level_bootstrap([one], num_bootstrap=4000)
    ref = gra(one[:, None] + 0.5, np.ones((300, 1)), num_bootstrap=4000)  # wins where one == 1
    assert mean == pytest.approx(ref["gra"]) and ci == pytest.approx(ref["gra_ci"], abs=0.01)


def test_gra_over_seeds_and_bad_input():
    rng = np.random.default_rng(3)
    tables = [responses({"sft": rng.normal(size=(50, 2)), "a": rng.normal(size=(50, 2))}) for _ in range(2)]
    r = gra_over_seeds(tables, "a")
    assert r["prompts"] == [50, 50] and np.isclose(r["gra"], np.mean(r["per_seed"]))
    assert r["ci"][0] <= r["gra"] <= r["ci"][1]
    with pytest.raises(ValueError, match="no responses of method 'b'"):
        win_shares(tables[0], "b")
    short = responses({"sft": np.zeros((3, 2)), "a": np.zeros((3, 1))})
    with pytest.raises(ValueError, match="same \\(prompt, sample\\) pairs"):
        win_shares(short, "a")
