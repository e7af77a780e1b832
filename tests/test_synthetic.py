import numpy as np
import pytest

from cwpo_ray.synthetic.task import (
    Prompt,
    SyntheticGoldReward,
    SyntheticTask,
    SyntheticTaskConfig,
    agreement_for_temperature,
    expected_label_noise,
    gold_reward,
    label_statistics,
    parse_prompt,
    word_weight,
)


def test_gold_reward_by_hand():
    p = Prompt("cats", 4, "purr", "fur")
    w = lambda word: word_weight("cats", word)  # noqa: E731
    assert 0.5 <= w("kitten") <= 1.5 and 0.25 <= w("thanks") <= 0.75 and -2 <= w("hate") <= -1
    assert -0.7 <= w("bark") <= -0.37 and w("the") == 0.0
    assert gold_reward(p, " purr kitten thanks meow") == pytest.approx(w("purr") + w("kitten") + w("thanks") + w("meow") + 1.5)
    # rude, off-topic, repeat (-0.5, no second credit), avoided word (-2 on top of its weight), length off by 1
    assert gold_reward(p, " hate bark kitten kitten fur") == pytest.approx(
        w("hate") + w("bark") + w("kitten") - 0.5 + w("fur") - 2.0 - 0.4)
    assert parse_prompt(p.text) == p


def test_gold_reward_has_spread_and_ranks_quality():
    rows = SyntheticTask(SyntheticTaskConfig(num_pairs=2000, seed=3)).rows()
    g = np.array([r["gold_a"] for r in rows] + [r["gold_b"] for r in rows])
    assert g.std() > 2.0 and g.max() - g.min() > 10
    d = np.abs(np.array([r["gold_a"] - r["gold_b"] for r in rows]))
    assert (d > 0).mean() > 0.99         # per-word weights: almost no exact ties
    assert (d > 3).mean() > 0.2 and (d < 1).mean() > 0.1  # both easy and hard pairs
    gold = SyntheticGoldReward()
    assert np.allclose(gold.score([r["prompt"] for r in rows[:5]], [r["response_a"] for r in rows[:5]]),
                       [r["gold_a"] for r in rows[:5]])


@pytest.mark.parametrize("temperature", [0.0, 0.5, 2.0])
def test_label_noise_matches_temperature(temperature):
    task = SyntheticTask(SyntheticTaskConfig(num_pairs=6000, seed=1, human_agreement=None, label_temperature=temperature))
    rows = task.rows()
    d = np.array([r["gold_a"] - r["gold_b"] for r in rows])
    lab = np.array([r["human_label"] for r in rows])
    wrong = ((d > 0) & (lab == "b")) | ((d < 0) & (lab == "a"))
    observed = wrong[d != 0].mean()
    expected = expected_label_noise(rows, temperature)
    n = (d != 0).sum()
    assert abs(observed - expected) < 4 * np.sqrt(max(expected * (1 - expected), 1e-4) / n) + 1e-3
    if temperature == 0:
        assert observed == 0


@pytest.mark.parametrize("target", [0.6, 0.7, 0.85])
def test_human_agreement_is_calibrated(target):
    task = SyntheticTask(SyntheticTaskConfig(num_pairs=6000, seed=2, human_agreement=target))
    rows = task.rows()
    d = np.array([r["gold_a"] - r["gold_b"] for r in rows])
    assert agreement_for_temperature(d, task.temperature) == pytest.approx(target, abs=1e-6)  # T solved exactly
    measured = label_statistics(rows)["human_gold_agreement"]
    assert abs(measured - target) < 4 * np.sqrt(target * (1 - target) / len(rows))  # sampled labels match it


def test_flip_noise_keeps_the_gold_ordering_at_the_target_rate_whatever_the_margin():
    target = 0.7
    task = SyntheticTask(SyntheticTaskConfig(num_pairs=8000, seed=3, label_noise="flip", human_agreement=target))
    rows = task.rows()
    assert task.temperature is None
    d = np.array([r["gold_a"] - r["gold_b"] for r in rows])
    agree = ((d > 0) & (np.array([r["human_label"] for r in rows]) == "a")) | \
        ((d < 0) & (np.array([r["human_label"] for r in rows]) == "b"))
    clear, close = np.abs(d) >= np.quantile(np.abs(d), 0.75), np.abs(d) <= np.quantile(np.abs(d), 0.25)
    tol = 4 * np.sqrt(target * (1 - target) / clear.sum())
    # unlike Bradley–Terry labels, clear pairs are mislabeled as often as close ones
    assert abs(agree[clear & (d != 0)].mean() - target) < tol and abs(agree[close & (d != 0)].mean() - target) < tol
    assert abs(label_statistics(rows)["human_gold_agreement"] - target) < 4 * np.sqrt(target * (1 - target) / len(rows))
    bt = SyntheticTask(SyntheticTaskConfig(num_pairs=8000, seed=3, human_agreement=target)).rows()
    assert [(r["response_a"], r["response_b"]) for r in bt] == [(r["response_a"], r["response_b"]) for r in rows]


def test_noise_settings_are_exclusive():
    from cwpo_ray.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="human_agreement"):
        build_config(SyntheticTaskConfig, {"label_temperature": 1.0})  # the default agreement is also set
    assert build_config(SyntheticTaskConfig, {"label_temperature": 1.0, "human_agreement": None}).label_temperature == 1.0
    with pytest.raises(ConfigError, match="human_agreement"):
        build_config(SyntheticTaskConfig, {"human_agreement": 0.4})
    with pytest.raises(ConfigError, match="label_temperature"):  # flip noise has no temperature
        build_config(SyntheticTaskConfig, {"label_noise": "flip", "label_temperature": 1.0, "human_agreement": None})


def test_pretraining_text_has_no_rewards_or_labels():
    task = SyntheticTask(SyntheticTaskConfig(num_pairs=10, seed=0))
    texts = task.pretraining_texts(50, seed=1)
    assert len(texts) == 50 and all(t.startswith("\n\nHuman: tell me about ") and "\n\nAssistant: " in t for t in texts)
    assert texts == task.pretraining_texts(50, seed=1) and texts != task.pretraining_texts(50, seed=2)


def test_task_is_seeded():
    a = SyntheticTask(SyntheticTaskConfig(num_pairs=50, seed=7)).rows()
    assert a == SyntheticTask(SyntheticTaskConfig(num_pairs=50, seed=7)).rows()
    assert a != SyntheticTask(SyntheticTaskConfig(num_pairs=50, seed=8)).rows()


def test_assets_load_through_real_hf_paths(synthetic_assets):
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(synthetic_assets["tokenizer"])
    text = "\n\nHuman: tell me about cats in 4 words mention purr avoid fur\n\nAssistant: purr kitten meow paws"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text and len(ids) < 30  # task words are single tokens
    # One tokenization everywhere: the tokenizer folder (prepare) and both model folders (pretraining and every
    # later stage: AutoTokenizer returns Qwen2Tokenizer there) give the same ids, digits included.
    with open(synthetic_assets["data"]) as f:
        texts = [(r := json.loads(line))["prompt"] + r["response_a"] for line, _ in zip(f, range(200))]
    ref = tok(texts)["input_ids"]
    for folder in ("weak_base", "student_base"):
        mtok = AutoTokenizer.from_pretrained(synthetic_assets[folder])
        assert type(mtok).__name__ == "Qwen2Tokenizer" and mtok(texts)["input_ids"] == ref, folder
    weak = AutoModelForCausalLM.from_pretrained(synthetic_assets["weak_base"])
    student = AutoModelForCausalLM.from_pretrained(synthetic_assets["student_base"])
    assert weak.num_parameters() < student.num_parameters()
    clf = AutoModelForSequenceClassification.from_pretrained(synthetic_assets["weak_base"], num_labels=1)
    with torch.no_grad():
        out = clf(torch.tensor([ids]))
    assert out.logits.shape == (1, 1)


def test_label_report_against_gold(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cwpo_ray.synthetic.diagnostics import label_report

    p = Prompt("cats", 4, "purr", "fur").text
    good, bad = " purr kitten meow paws", " hate ugh dumb bark"
    (tmp_path / "data" / "unlabeled").mkdir(parents=True)
    (tmp_path / "ann").mkdir()
    # human labels: 3 of 4 agree with gold (good > bad)
    pq.write_table(pa.table({"prompt": [p] * 4, "response_a": [good, bad, good, bad], "response_b": [bad, good, bad, good],
                             "human_label": ["a", "b", "a", "a"]}), tmp_path / "data" / "unlabeled" / "part-0.parquet")
    # weak labels: the two most confident are right, the least confident is wrong
    pq.write_table(pa.table({"prompt": [p] * 4, "chosen": [good, good, good, bad], "rejected": [bad, bad, bad, good],
                             "confidence": pa.array([0.9, 0.8, 0.3, 0.1], pa.float32()),
                             "human_label_agrees": [True, True, False, None]}), tmp_path / "ann" / "part-0.parquet")
    r = label_report(str(tmp_path / "data"), str(tmp_path / "ann"))
    assert r.human_gold_agreement == 0.75
    assert r.weak_gold_agreement == 0.75 and r.weak_human_agreement == pytest.approx(2 / 3)
    assert r.weak_gold_agreement_top["top30"] == 1.0 and r.weak_gold_agreement_top["top100"] == 0.75


def test_kl_optimum_reweights_reference_samples():
    from cwpo_ray.synthetic.diagnostics import kl_optimum, scale_for_gain, tilted_gra

    r = np.array([[0.0, 1.0, 2.0, 3.0], [5.0, 5.0, 1.0, 2.0]])
    # no tilt: the policy against itself; strict wins only, so row 2's tie lowers its GRA below 1/2
    gra, gain = tilted_gra(r, np.zeros_like(r))
    assert gain == pytest.approx(0.0) and gra == pytest.approx((6 / 16 + 5 / 16) / 2)
    # a huge tilt puts all mass on each row's best samples: they beat the 3 (resp. 2) below them
    gra, gain = kl_optimum(r, 1e3)
    assert gra == pytest.approx((3 / 4 + 2 / 4) / 2) and gain == pytest.approx(((3 - 1.5) + (5 - 3.25)) / 2)
    # the optimum's gain grows with the tilt, and scale_for_gain inverts it
    s = scale_for_gain(r, 0.8)
    assert kl_optimum(r, s)[1] == pytest.approx(0.8, abs=1e-6)
    assert kl_optimum(r, 0.5 * s)[1] < 0.8 < kl_optimum(r, 2 * s)[1]


@pytest.mark.parametrize("arch", ["qwen2", "llama", "opt"])
def test_every_architecture_tokenizes_like_the_trained_tokenizer(tmp_path, arch):
    """AutoTokenizer on a model folder picks its class from the model type (Qwen2Tokenizer rebuilds its own
    pre-tokenizer; Llama and OPT folders load tokenizer.json as saved): the trained tokenizer must match all."""
    from transformers import AutoTokenizer

    from cwpo_ray.synthetic.models import TinyModelConfig, build_tiny_causal_lm, train_tokenizer

    task = SyntheticTask(SyntheticTaskConfig(num_pairs=50, seed=0))
    texts = task.pretraining_texts(100, seed=3) + ["in 10 words: 123 4567, naïve\n\n  spaced  </s>"]
    tok = train_tokenizer(task.corpus(), tmp_path / "tok", 400)
    folder, stats = build_tiny_causal_lm(TinyModelConfig(arch=arch, hidden_size=64, num_heads=2, num_kv_heads=1), tok,
                                         tmp_path / arch, texts[:8], None)
    ref = tok(texts)["input_ids"]
    assert AutoTokenizer.from_pretrained(tmp_path / "tok")(texts)["input_ids"] == ref
    mtok = AutoTokenizer.from_pretrained(folder)
    assert mtok(texts)["input_ids"] == ref and mtok.eos_token_id == tok.eos_token_id and stats["steps"] >= 1
