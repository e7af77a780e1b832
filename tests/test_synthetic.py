import numpy as np
import pytest

from cwpo_ray.synthetic.task import (
    Prompt, SyntheticGoldReward, SyntheticTask, SyntheticTaskConfig, expected_label_noise, gold_reward, parse_prompt,
)


def test_gold_reward_by_hand():
    p = Prompt("cats", 4, "purr", "fur")
    assert gold_reward(p, " purr kitten thanks meow") == pytest.approx(1 + 1.5 + 1 + 0.5 + 1)
    # rude, off-topic, repeat, avoided word, length off by 1
    assert gold_reward(p, " hate bark kitten kitten fur") == pytest.approx(-1.5 - 0.5 + 1 - 0.5 + 1 - 2.0 - 0.4)
    assert parse_prompt(p.text) == p


def test_gold_reward_has_spread_and_ranks_quality():
    rows = SyntheticTask(SyntheticTaskConfig(num_pairs=2000, seed=3)).rows()
    g = np.array([r["gold_a"] for r in rows] + [r["gold_b"] for r in rows])
    assert g.std() > 2.0 and g.max() - g.min() > 10
    d = np.abs(np.array([r["gold_a"] - r["gold_b"] for r in rows]))
    assert (d > 0).mean() > 0.9          # few exact ties
    assert (d > 3).mean() > 0.2 and (d < 1).mean() > 0.1  # both easy and hard pairs
    gold = SyntheticGoldReward()
    assert np.allclose(gold.score([r["prompt"] for r in rows[:5]], [r["response_a"] for r in rows[:5]]),
                       [r["gold_a"] for r in rows[:5]])


@pytest.mark.parametrize("temperature", [0.0, 0.5, 2.0])
def test_label_noise_matches_temperature(temperature):
    rows = SyntheticTask(SyntheticTaskConfig(num_pairs=6000, seed=1, label_temperature=temperature)).rows()
    d = np.array([r["gold_a"] - r["gold_b"] for r in rows])
    lab = np.array([r["human_label"] for r in rows])
    wrong = ((d > 0) & (lab == "b")) | ((d < 0) & (lab == "a"))
    observed = wrong[d != 0].mean()
    expected = expected_label_noise(rows, temperature)
    n = (d != 0).sum()
    assert abs(observed - expected) < 4 * np.sqrt(max(expected * (1 - expected), 1e-4) / n) + 1e-3
    if temperature == 0:
        assert observed == 0


def test_task_is_seeded():
    a = SyntheticTask(SyntheticTaskConfig(num_pairs=50, seed=7)).rows()
    assert a == SyntheticTask(SyntheticTaskConfig(num_pairs=50, seed=7)).rows()
    assert a != SyntheticTask(SyntheticTaskConfig(num_pairs=50, seed=8)).rows()


def test_assets_load_through_real_hf_paths(synthetic_assets):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(synthetic_assets["tokenizer"])
    text = "\n\nHuman: tell me about cats in 4 words mention purr avoid fur\n\nAssistant: purr kitten meow paws"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text and len(ids) < 30  # task words are single tokens
    weak = AutoModelForCausalLM.from_pretrained(synthetic_assets["weak_base"])
    student = AutoModelForCausalLM.from_pretrained(synthetic_assets["student_base"])
    assert weak.num_parameters() < student.num_parameters()
    clf = AutoModelForSequenceClassification.from_pretrained(synthetic_assets["weak_base"], num_labels=1)
    with torch.no_grad():
        out = clf(torch.tensor([ids]))
    assert out.logits.shape == (1, 1)
