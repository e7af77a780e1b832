"""evaluate: GRA math against a hand count, the HF gold reward model, and the stage on vLLM CPU."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from cwpo_ray.config import ConfigError, build_config
from cwpo_ray.evaluate.config import EvaluateConfig
from cwpo_ray.evaluate.gold import GoldConfig, GoldReward, HFRewardModel, build_gold_reward, hh_to_messages
from cwpo_ray.evaluate.metrics import gra
from cwpo_ray.results import EvaluateResult, read_result

# ---------------------------------------------------------------- GRA on fixed scores

SFT = np.array([1.0, 2.0, 3.0, 0.5, -1.0, 2.0, 0.0, 4.0, 1.5, -2.0])
ALN = np.array([2.0, 2.0, 1.0, 0.7, -1.0, 3.5, 0.0, 3.0, 2.5, 1.0])
# by hand: wins at 0,3,5,8,9 (5); ties at 1,4,6 (3); losses at 2,7 (2); diffs sum = 1+0-2+.2+0+1.5+0-1+1+3 = 3.7


def test_gra_matches_hand_count():
    m = gra(ALN, SFT, num_bootstrap=2000, seed=1)
    assert (m["n"], m["wins"], m["ties"], m["losses"]) == (10, 5, 3, 2)
    assert m["gra"] == pytest.approx(0.5) and m["tie_rate"] == pytest.approx(0.3)
    assert m["loss_rate"] == pytest.approx(0.2)
    assert m["mean_gain"] == pytest.approx(0.37)
    lo, hi = m["gra_ci"]
    assert 0.1 <= lo < 0.5 < hi <= 0.9
    assert m["mean_gain_ci"][0] < 0.37 < m["mean_gain_ci"][1]
    assert gra(ALN, SFT, num_bootstrap=2000, seed=1) == m  # seeded bootstrap


def test_gra_tie_tolerance_and_edges():
    m = gra(ALN, SFT, num_bootstrap=200, tie_tolerance=0.25)  # the +0.2 at index 3 becomes a tie
    assert (m["wins"], m["ties"], m["losses"]) == (4, 4, 2)
    same = gra(SFT, SFT, num_bootstrap=200)
    assert same["gra"] == 0.0 and same["tie_rate"] == 1.0 and same["gra_ci"] == [0.0, 0.0]
    with pytest.raises(ValueError):
        gra(ALN[:3], SFT)


def test_gra_with_several_samples_per_prompt():
    # 2 prompts x 3 samples: prompt 0 wins 2 of 3, prompt 1 wins 0 of 3 with one tie
    aln = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 5.0]])
    sft = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 6.0]])
    m = gra(aln, sft, num_bootstrap=300)
    assert m["samples_per_prompt"] == 3 and m["n"] == 2
    assert (m["wins"], m["ties"], m["losses"]) == (2, 1, 3)
    assert m["gra"] == pytest.approx((2 / 3 + 0) / 2) and m["tie_rate"] == pytest.approx((0 + 1 / 3) / 2)
    assert m["mean_gain"] == pytest.approx(np.mean(aln - sft))
    assert gra(aln[:, :1], sft[:, :1], num_bootstrap=300)["gra"] == gra(aln[:, 0], sft[:, 0], num_bootstrap=300)["gra"]


def test_model_seeds_are_distinct_and_stable():
    from cwpo_ray.generate.core import model_seed

    assert model_seed(0, "sft") == model_seed(0, "sft")
    assert len({model_seed(0, n) for n in ("sft", "human-dpo", "cw-dpo", "ws-dpo")}) == 4
    assert model_seed(0, "sft") != model_seed(1, "sft")


# ---------------------------------------------------------------- gold rewards

def test_hh_to_messages():
    p = "\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: tell me about cats\n\nAssistant:"
    assert hh_to_messages(p, " purr") == [
        {"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "tell me about cats"}, {"role": "assistant", "content": "purr"}]
    assert hh_to_messages("plain question", "answer") == [{"role": "user", "content": "plain question"},
                                                         {"role": "assistant", "content": "answer"}]


@pytest.fixture(scope="module")
def tiny_rm(synthetic_assets, tmp_path_factory):
    """A tiny Qwen2 reward model (num_labels=1) built from config, with a chat template variant."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Qwen2Config

    tok = AutoTokenizer.from_pretrained(synthetic_assets["tokenizer"])
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(cfg)
    plain = str(tmp_path_factory.mktemp("rm_plain"))
    model.save_pretrained(plain)
    tok.save_pretrained(plain)
    chat = str(tmp_path_factory.mktemp("rm_chat"))
    tok.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}")
    model.save_pretrained(chat)
    tok.save_pretrained(chat)
    return {"plain": plain, "chat": chat}


PROMPTS = [f"\n\nHuman: tell me about cats in {n} words mention purr avoid fur\n\nAssistant:" for n in (4, 5, 6, 7, 8)]
RESPONSES = [" purr kitten paws", " please purr", " fur fur stupid", " whiskers meow purr kitten thanks glad", " the"]


def test_hf_reward_model_raw_logits_batched(tiny_rm):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm = HFRewardModel(tiny_rm["plain"], batch_size=2)
    assert rm.input_format == "concat" and isinstance(rm, GoldReward)
    s = rm.score(PROMPTS, RESPONSES)
    assert s.shape == (5,) and s.dtype == np.float64
    # batching/padding does not change a score; it is the raw logit of one unpadded forward
    np.testing.assert_allclose(HFRewardModel(tiny_rm["plain"], batch_size=5).score(PROMPTS, RESPONSES), s, atol=1e-5)
    tok = AutoTokenizer.from_pretrained(tiny_rm["plain"])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_rm["plain"]).eval()
    with torch.no_grad():
        ref = [model(**tok(p + r, return_tensors="pt")).logits[0, 0].item() for p, r in zip(PROMPTS, RESPONSES)]
    np.testing.assert_allclose(s, ref, atol=1e-5)


def test_hf_reward_model_chat_template_and_pair_formats(tiny_rm, synthetic_assets, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig

    rm = HFRewardModel(tiny_rm["chat"])
    assert rm.input_format == "chat"  # the tokenizer has a chat template (Skywork-Reward-V2 style)
    tok = AutoTokenizer.from_pretrained(tiny_rm["chat"])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_rm["chat"]).eval()
    text = tok.apply_chat_template(hh_to_messages(PROMPTS[0], RESPONSES[0]), tokenize=False)
    assert text.startswith("<s>user: tell me about cats")
    with torch.no_grad():
        ref = model(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
    assert rm.score(PROMPTS[:1], RESPONSES[:1])[0] == pytest.approx(ref, abs=1e-5)

    # An encoder reward model (OpenAssistant DeBERTa style) gets (question, answer) text pairs.
    btok = AutoTokenizer.from_pretrained(synthetic_assets["tokenizer"])
    bert = AutoModelForSequenceClassification.from_config(BertConfig(
        vocab_size=len(btok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        num_labels=1, pad_token_id=btok.pad_token_id))
    bert.save_pretrained(str(tmp_path / "bert"))
    btok.save_pretrained(str(tmp_path / "bert"))
    brm = HFRewardModel(str(tmp_path / "bert"))
    assert brm.input_format == "pair"
    assert np.isfinite(brm.score(PROMPTS, RESPONSES)).all()


def test_gold_factory_and_config():
    g = build_gold_reward(GoldConfig())
    assert g.name == "synthetic-gold" and isinstance(g, GoldReward)
    assert g.score(PROMPTS[:2], [" purr kitten paws whiskers", " fur"]).tolist()[0] > 0
    with pytest.raises(ConfigError, match="gold"):
        build_config(EvaluateConfig, {"gold": {"kind": "hf"}})
    with pytest.raises(ConfigError, match="models"):
        build_config(EvaluateConfig, {"models": {"sft": "x"}})
    with pytest.raises(ConfigError, match="ci"):
        build_config(EvaluateConfig, {}, ["ci=1.5"])


def test_steamshp_judge_format_truncation_and_batching(synthetic_assets, tmp_path):
    """A tiny T5 built from config stands in for stanfordnlp/SteamSHP-flan-t5-large (same class, same input
    format): the score is log P("A") at the first decoder step, batched scores equal one-by-one ones, and a
    long post loses its beginning, never the response."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from cwpo_ray.evaluate.gold import SteamSHPJudge

    tok = AutoTokenizer.from_pretrained(synthetic_assets["tokenizer"])
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_ff=64, d_kv=16, num_layers=1, num_heads=2,
                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    T5ForConditionalGeneration(cfg).save_pretrained(tmp_path / "judge")
    tok.save_pretrained(tmp_path / "judge")
    g = build_gold_reward(GoldConfig(kind="steamshp", model=str(tmp_path / "judge"), batch_size=3, max_length=160))
    assert isinstance(g, SteamSHPJudge) and g.name.startswith("steamshp:") and isinstance(g, GoldReward)

    text = tok.decode(g._ids("How do I\nbake bread?", "Use a hot oven."), skip_special_tokens=True)
    assert text == ("POST: How do I bake bread? \n\n RESPONSE A: Use a hot oven.\n\n RESPONSE B: .\n\n "
                    "Which response is better? RESPONSE")
    long_ids = g._ids("word " * 200, "Use a hot oven.")  # the tiny byte-level tokenizer: the tail is ~100 tokens
    assert len(long_ids) == 160 and tok.decode(long_ids, skip_special_tokens=True).endswith(
        "RESPONSE A: Use a hot oven.\n\n RESPONSE B: .\n\n Which response is better? RESPONSE")

    posts = [p.strip() for p in PROMPTS] + ["word " * 200]
    responses = RESPONSES + [" purr"]
    batched = g.score(posts, responses)
    one_by_one = []
    for p, r in zip(posts, responses):
        ids = torch.tensor([g._ids(p, r)])
        logits = g.model(input_ids=ids, decoder_input_ids=torch.tensor([[cfg.decoder_start_token_id]])).logits[0, 0]
        one_by_one.append(torch.log_softmax(logits.float(), -1)[tok("A", add_special_tokens=False).input_ids[0]].item())
    assert np.allclose(batched, one_by_one, atol=1e-5) and np.all(batched < 0)
    assert len(set(np.round(batched, 6))) == len(posts)  # the response and post change the score
    with pytest.raises(ConfigError, match="gold"):
        build_config(EvaluateConfig, {"gold": {"kind": "steamshp"}})
    with pytest.raises(ConfigError, match="input_format"):
        build_config(EvaluateConfig, {"gold": {"kind": "steamshp", "model": "m", "input_format": "chat"}})


def test_each_method_against_its_own_reference_and_the_common_one():
    from cwpo_ray.evaluate.stage import method_metrics

    rng = np.random.default_rng(0)
    scores = {"sft": rng.normal(size=(40, 2)), "sft-weak": rng.normal(1.0, 1, size=(40, 2))}
    scores["cw"] = scores["sft-weak"] + 0.5  # beats its own SFT model on every sample
    scores["human"] = rng.normal(size=(40, 2))
    cfg = build_config(EvaluateConfig, {"models": {"cw": "a", "human": "b"}, "baselines": {"sft-weak": "w"},
                                        "compare_to": {"cw": "sft-weak"}, "num_bootstrap": 200})
    own, common = method_metrics(scores, cfg)
    assert own["cw"] == gra(scores["cw"], scores["sft-weak"], 200, 0.95, cfg.sampling.seed) and own["cw"]["gra"] == 1.0
    assert own["human"] == gra(scores["human"], scores["sft"], 200, 0.95, cfg.sampling.seed)
    assert set(common) == {"cw"} and common["cw"] == gra(scores["cw"], scores["sft"], 200, 0.95, cfg.sampling.seed)
    for bad, field in (({"baselines": {"cw": "x"}}, "baselines"), ({"baselines": {"sft": "x"}}, "baselines"),
                       ({"compare_to": {"nope": "sft"}}, "compare_to"), ({"compare_to": {"cw": "sft-x"}}, "compare_to")):
        with pytest.raises(ConfigError, match=field):
            build_config(EvaluateConfig, {"models": {"cw": "a"}, **bad})


# ---------------------------------------------------------------- the stage on the vLLM CPU engine

@pytest.fixture(scope="module")
def tuned_lm(synthetic_assets, tmp_path_factory):
    from tests.test_generate import tune_tiny_lm

    return tune_tiny_lm(synthetic_assets["student_base"], synthetic_assets["data"],
                        str(tmp_path_factory.mktemp("eval_tuned")))


@pytest.mark.timeout(300)
def test_evaluate_stage_gra_report_and_plots(ray_session, prepared_data, synthetic_assets, tuned_lm, tmp_path):
    from cwpo_ray.evaluate.stage import format_evaluate, run_evaluate

    out = str(tmp_path / "eval")
    k = 2
    cfg = build_config(EvaluateConfig, {
        "prompts_path": prepared_data["dir"] + "/test", "sft_model": synthetic_assets["student_base"],
        # "same" is the SFT model itself, sampled with its own (independent) seeds: about as many wins as losses.
        "models": {"tuned": tuned_lm, "same": synthetic_assets["student_base"]},
        "output_dir": out, "max_prompts": 60, "num_samples": k, "num_bootstrap": 500,
        "sampling": {"max_new_tokens": 16, "seed": 0},
        "engine": {"enforce_eager": True, "max_model_len": 256}})
    m = run_evaluate(cfg)
    print(format_evaluate(m))
    assert m.num_prompts == 60 and m.samples_per_prompt == k
    # GRA recomputed by hand from the written responses and gold rewards: sample j vs sample j, per prompt
    resp = pq.read_table(out + "/responses.parquet").to_pylist()
    gold = {(r["method"], r["prompt_id"], r["sample"]): r["gold"] for r in resp}
    pids = sorted({r["prompt_id"] for r in resp})
    assert len(resp) == 3 * 60 * k and len(pids) == 60
    for name in ("tuned", "same"):
        d = np.array([[gold[(name, p, j)] - gold[("sft", p, j)] for j in range(k)] for p in pids])
        t = m.methods[name]
        assert (t.wins, t.ties) == (int((d > 0).sum()), int((d == 0).sum()))
        assert t.gra == pytest.approx((d > 0).mean()) and t.mean_gain == pytest.approx(d.mean())
        assert t.gra_ci[0] <= t.gra <= t.gra_ci[1]
    assert m.methods["same"].tie_rate < 0.9  # independent samples of one model mostly differ
    # independent seeding: each model has its own seed for every (prompt, sample)
    seeds = {}
    for r in resp:
        seeds.setdefault((r["prompt_id"], r["sample"]), []).append(r["seed"])
    assert all(len(set(v)) == 3 for v in seeds.values())
    assert set(m.length_limit_share) == {"sft", "tuned", "same"}
    t = m.methods["tuned"]
    assert json.load(open(out + "/metrics.json"))["methods"]["tuned"]["gra"] == t.gra
    assert read_result(EvaluateResult, out + "/metrics.json") == read_result(EvaluateResult, out + "/summary.json") == m
    report = open(out + "/report.md").read()
    assert "| tuned |" in report and "| same |" in report
    for png in ("gra.png", "gold_rewards.png"):
        with open(os.path.join(out, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert all(g.backends == {"vllm": 60 * k} for g in m.generation.values())
    assert "at length limit" in report

    # Same models, prompts and sampling again: every model's responses come from the response cache
    # (next to its folder), the same rows and numbers; a new sampling seed is a cache miss.
    m2 = run_evaluate(cfg.model_copy(update={"output_dir": str(tmp_path / "eval2")}))
    assert all(g.cached_from and g.cached_from.endswith(".parquet") for g in m2.generation.values())
    assert pq.read_table(str(tmp_path / "eval2" / "responses.parquet")).equals(pq.read_table(out + "/responses.parquet"))
    assert m2.methods == m.methods
    from cwpo_ray.evaluate.stage import response_cache_path
    from cwpo_ray.generate.config import SamplingConfig

    pids = [r["prompt_id"] for r in resp if r["method"] == "sft" and r["sample"] == 0]
    a = response_cache_path(tuned_lm, pids, k, SamplingConfig(seed=0), cfg.engine)
    assert a != response_cache_path(tuned_lm, pids, k, SamplingConfig(seed=1), cfg.engine)
    assert a != response_cache_path(tuned_lm, pids[:-1], k, SamplingConfig(seed=0), cfg.engine)
    assert response_cache_path("org/hub-model", pids, k, SamplingConfig(seed=0), cfg.engine) is None
