"""generate: pure pieces (seeds, expansion, pairing) and the stage on the real vLLM CPU engine."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cwpo_ray.config import ConfigError, build_config
from cwpo_ray.generate.config import GenerateConfig
from cwpo_ray.generate.core import CANDIDATE_SCHEMA, candidate_pairs, expand_requests, pair_candidates, prompt_id, request_seed
from cwpo_ray.schema import PAIR_SCHEMA, QUARANTINE_SCHEMA, pair_id, validate_pair

# vLLM CPU in tests: small KV cache, no torch.compile (CPU attention also needs head_dim >= 32).
ENGINE = {"enforce_eager": True, "max_model_len": 256, "batch_size": 128}


def tune_tiny_lm(base: str, pairs_jsonl: str, out: str, steps: int = 40, seed: int = 0) -> str:
    """A few AdamW steps of the tiny causal LM on prompt + chosen + eos, so it writes task words and
    stops at eos (a random-weight model writes undecodable byte soup). Plain torch, ~seconds."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    rows = [json.loads(line) for line in open(pairs_jsonl)][:512]
    seqs, starts = [], []
    for r in rows:
        chosen = r["response_a"] if r["human_label"] == "a" else r["response_b"]
        p = tok(r["prompt"])["input_ids"]
        seqs.append(p + tok(chosen)["input_ids"] + [tok.eos_token_id])
        starts.append(len(p))
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    for i, (s, st) in enumerate(zip(seqs, starts)):
        ids[i, :len(s)] = torch.tensor(s)
        labels[i, st:len(s)] = torch.tensor(s[st:])
    mask = (labels != -100) | (torch.arange(width)[None] < torch.tensor(starts)[:, None])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(seqs), (48,))
        loss = model(input_ids=ids[idx], attention_mask=mask[idx].long(), labels=labels[idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ---------------------------------------------------------------- pure core

def test_request_seed_is_stable_and_distinct():
    p = "\n\nHuman: tell me about cats in 6 words mention purr avoid fur\n\nAssistant:"
    assert request_seed(0, p, 0) == request_seed(0, p, 0)
    seeds = {request_seed(s, p, j) for s in range(3) for j in range(4)}
    assert len(seeds) == 12 and all(0 <= s < 2**31 for s in seeds)
    assert request_seed(0, p, 1) != request_seed(0, p + " ", 1)


def test_expand_requests_k_rows_per_prompt():
    t = expand_requests(pa.table({"prompt": ["x", "y"]}), 3, base_seed=7)
    assert t.num_rows == 6
    assert t.column("candidate_idx").to_pylist() == [0, 1, 2, 0, 1, 2]
    assert t.column("prompt_id").to_pylist() == [prompt_id("x")] * 3 + [prompt_id("y")] * 3
    assert t.column("seed").to_pylist()[4] == request_seed(7, "y", 1)


def test_candidate_pairs():
    assert candidate_pairs(4, "adjacent") == [(0, 1), (2, 3)]
    assert candidate_pairs(3, "adjacent") == [(0, 1)]
    assert candidate_pairs(3, "all") == [(0, 1), (0, 2), (1, 2)]


def _cands(rows):
    full = [{"prompt_id": prompt_id(r[0]), "prompt": r[0], "candidate_idx": r[1], "seed": 10 + r[1], "response": r[2],
             "num_tokens": 3, "finish_reason": "stop", "backend": "vllm", "model": "m", "fallback_reason": None}
            for r in rows]
    return pa.Table.from_pylist(full, schema=CANDIDATE_SCHEMA)


def test_pair_candidates_pairs_and_quarantines_with_reasons():
    t = _cands([("p1", 0, " good words"), ("p1", 1, " other words"), ("p1", 2, " good words"),
                ("p2", 0, " fine"), ("p2", 1, "bad \ufffd"),
                ("p3", 0, " lonely")])
    out = pair_candidates(t, 3, "all", "gen").to_pylist()
    pairs = [r for r in out if r["split"] == "pairs"]
    quarantine = [r for r in out if r["split"] == "quarantine"]
    assert len(out) == 9  # 3 pairs per prompt, every one accounted for
    assert {(r["response_a"], r["response_b"]) for r in pairs} == {(" good words", " other words"),
                                                                   (" other words", " good words")}
    for r in pairs:
        assert r["pair_id"] == pair_id(r["prompt"], r["response_a"], r["response_b"])
        assert r["human_label"] is None and r["source"] == "gen"
    reasons = sorted(r["reason"] for r in quarantine)
    assert reasons == ["bad_utf8:response_b", "identical_responses"] + ["missing_candidate"] * 5
    p2 = prompt_id("p2")
    assert [(r["source"], r["detail"], r["raw"], r["pair_id"]) for r in quarantine if r["reason"].startswith("bad_utf8")] == [
        ("gen", f"prompt {p2}: candidates 0,1 (seeds 10,11)", repr({"prompt": "p2", "response_a": " fine", "response_b": "bad \ufffd"}),
         None)]
    assert [(r["detail"], r["raw"]) for r in quarantine if r["reason"] == "missing_candidate"][-1] == \
        (f"prompt {prompt_id('p3')}: candidates 1,2; have [0]", "p3")


def test_read_prompts_unique_with_bad_prompts_as_quarantine_rows(tmp_path):
    from cwpo_ray.generate.stage import read_prompts

    path = str(tmp_path / "p.parquet")
    pq.write_table(pa.table({"prompt": ["a", None, "  ", "a", "b"]}), path)
    prompts, bad, counts = read_prompts(path)
    assert prompts == ["a", "b"]
    assert [(r["split"], r["source"], r["reason"], r["detail"], r["raw"]) for r in bad.to_pylist()] == [
        ("quarantine", "prompts", "null_field:prompt", f"{path} row 1", None),
        ("quarantine", "prompts", "empty_field:prompt", f"{path} row 2", "  ")]
    assert counts == {"rows_in": 5, "unique_prompts": 2, "duplicate_prompts": 1, "bad_prompts": 2,
                      "not_used_max_prompts": 0, "prompts_used": 2}


def test_config_rejects_bad_values_naming_the_field():
    with pytest.raises(ConfigError, match="num_candidates"):
        build_config(GenerateConfig, {"num_candidates": 1})
    with pytest.raises(ConfigError, match="sampling.temperature"):
        build_config(GenerateConfig, {}, ["sampling.temperature=-1"])
    with pytest.raises(ConfigError, match="engine.executor"):
        build_config(GenerateConfig, {}, ["engine.executor=threads"])
    d = GenerateConfig()
    assert (d.sampling.temperature, d.sampling.max_new_tokens) == (0.95, 512)  # the paper's defaults


# ---------------------------------------------------------------- vLLM CPU engine through Ray Data

@pytest.fixture(scope="module")
def tuned_lm(synthetic_assets, tmp_path_factory):
    return tune_tiny_lm(synthetic_assets["student_base"], synthetic_assets["data"],
                        str(tmp_path_factory.mktemp("tuned_lm")))


@pytest.mark.timeout(240)
def test_generate_writes_valid_canonical_pairs_with_vllm(ray_session, prepared_data, tuned_lm, tmp_path):
    from cwpo_ray.generate.stage import format_generate, run_generate

    out = str(tmp_path / "gen")
    cfg = build_config(GenerateConfig, {
        "model": tuned_lm, "prompts_path": prepared_data["dir"] + "/test", "output_dir": out,
        "num_candidates": 3, "pairing": "all", "max_prompts": 40,
        "sampling": {"max_new_tokens": 24, "seed": 3}, "engine": ENGINE})
    s = run_generate(cfg)
    print(format_generate(s))
    g = s.generation
    assert g.backends == {"vllm": 120} and g.fallback_reasons == [] and g.device == "cpu"
    assert g.finish_reasons.get("stop", 0) > 60  # the tuned model ends its answers with eos
    assert s.prompts.prompts_used == 40 and s.prompts.duplicate_prompts > 0  # test split: 1 prompt, many pairs

    cands = pq.read_table(out + "/candidates")
    assert cands.schema.equals(CANDIDATE_SCHEMA) and cands.num_rows == 120
    for r in cands.to_pylist()[:20]:
        assert r["seed"] == request_seed(3, r["prompt"], r["candidate_idx"])  # seeds recorded
        assert "</s>" not in r["response"]

    pairs = pq.read_table(out + "/pairs")
    quarantine = pq.read_table(out + "/quarantine")
    assert pairs.schema.equals(PAIR_SCHEMA) and quarantine.schema.equals(QUARANTINE_SCHEMA)
    assert pairs.num_rows + quarantine.num_rows == 120  # 40 prompts x 3 pairs, all accounted for
    assert pairs.num_rows == s.pairs > 60
    for r in pairs.to_pylist():
        assert validate_pair(r["prompt"], r["response_a"], r["response_b"]) is None
        assert r["pair_id"] == pair_id(r["prompt"], r["response_a"], r["response_b"])
        assert r["human_label"] is None and r["source"] == "generated"
    assert sum(s.quarantine_reasons.values()) == quarantine.num_rows
    summary = json.load(open(out + "/summary.json"))
    assert summary["pairs"] == pairs.num_rows


@pytest.fixture(scope="module")
def biogpt_lm(synthetic_assets, tmp_path_factory):
    """A causal LM whose architecture vLLM has no native implementation of."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BioGptConfig

    tok = AutoTokenizer.from_pretrained(synthetic_assets["tokenizer"])
    cfg = BioGptConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    out = str(tmp_path_factory.mktemp("biogpt"))
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _prompt_file(tmp_path, n=6):
    path = tmp_path / "prompts.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"\n\nHuman: tell me about cats in {4 + i} words mention purr avoid fur\n\nAssistant:"}) + "\n")
        f.write(json.dumps({"prompt": "   "}) + "\n")  # a bad prompt: quarantined, counted
    return str(path)


@pytest.mark.timeout(180)
def test_hf_fallback_only_when_vllm_cannot_load_and_says_so(ray_session, biogpt_lm, tmp_path, caplog):
    from cwpo_ray.generate.stage import format_generate, run_generate

    # model_impl=vllm: no Transformers-backend rescue, so vLLM really cannot load BioGPT.
    eng = {**ENGINE, "engine_kwargs": {"model_impl": "vllm"}}
    cfg = build_config(GenerateConfig, {"model": biogpt_lm, "prompts_path": _prompt_file(tmp_path),
                                        "output_dir": str(tmp_path / "out"), "sampling": {"max_new_tokens": 8},
                                        "engine": eng})
    s = run_generate(cfg)
    text = format_generate(s)
    g = s.generation
    assert g.requested_backend == "vllm" and g.backends == {"hf": 12}
    assert any("not supported" in r for r in g.fallback_reasons), g.fallback_reasons
    assert "HF fallback" in text
    assert s.prompts.bad_prompts == 1 and s.quarantine_reasons.get("empty_field:prompt") == 1


@pytest.mark.timeout(180)
def test_hf_backend_when_asked_and_no_silent_fallback(ray_session, biogpt_lm, tuned_lm, tmp_path):
    from cwpo_ray.generate.stage import run_generate

    prompts = _prompt_file(tmp_path)
    # Asked for: HF generates, and the summary says it was asked for (no fallback reason).
    cfg = build_config(GenerateConfig, {"model": tuned_lm, "prompts_path": prompts, "output_dir": str(tmp_path / "hf"),
                                        "sampling": {"max_new_tokens": 16}, "engine": {**ENGINE, "backend": "hf"}})
    s = run_generate(cfg)
    assert s.generation.requested_backend == "hf" and s.generation.backends == {"hf": 12}
    assert s.generation.fallback_reasons == []
    assert s.generation.finish_reasons.get("stop", 0) > 0
    # Fallback switched off: vLLM's load error surfaces instead of a quiet switch.
    cfg = build_config(GenerateConfig, {"model": biogpt_lm, "prompts_path": prompts, "output_dir": str(tmp_path / "x"),
                                        "sampling": {"max_new_tokens": 8},
                                        "engine": {**ENGINE, "hf_fallback": False, "engine_kwargs": {"model_impl": "vllm"}}})
    with pytest.raises(Exception, match="not supported"):
        run_generate(cfg)


def test_one_engine_actor_serves_several_models_in_turn(synthetic_assets, tuned_lm):
    """evaluate's single pass: a batch whose rows switch model (runs a, b, a) is answered exactly as each
    model's own predictor answers it, with an engine (re)built once per run (HF backend: no Ray/vLLM)."""
    from cwpo_ray.generate.engines import VLLMPredictor

    samp = {"temperature": 0.9, "top_p": 1.0, "max_new_tokens": 6, "seed": 0, "stop": []}
    models = {"a": {"path": tuned_lm, "sampling": samp}, "b": {"path": synthetic_assets["student_base"],
                                                              "sampling": {**samp, "seed": 5}}}
    eng = {"backend": "hf"}
    req = expand_requests(pa.table({"prompt": ["tell me about cats", "and dogs"]}), 2, 0)  # 4 rows
    keys = ["a", "a", "b", "b"]
    batch = pa.concat_tables([req.append_column("model_key", pa.array(keys)),
                              req.slice(2, 2).append_column("model_key", pa.array(["a", "a"]))])
    multi = VLLMPredictor(models, eng, "cpu")
    loads = []
    orig = multi._load
    multi._load = lambda k: (loads.append(k) if k != multi.key else None, orig(k))
    out = multi(batch)
    assert [k for k in loads] == ["a", "b", "a"] and out.column("model_key").to_pylist() == keys + ["a", "a"]
    for key in ("a", "b"):
        alone = VLLMPredictor({key: models[key]}, eng, "cpu")(req)
        mine = out.filter(pa.array([k == key for k in out.column("model_key").to_pylist()]))
        assert mine.column("model").to_pylist()[0] == models[key]["path"]
        got = dict(zip(zip(mine.column("prompt_id").to_pylist(), mine.column("candidate_idx").to_pylist()),
                       mine.column("response").to_pylist()))
        want = dict(zip(zip(alone.column("prompt_id").to_pylist(), alone.column("candidate_idx").to_pylist()),
                        alone.column("response").to_pylist()))
        assert all(got[k] == want[k] for k in got) and len(got) == (4 if key == "a" else 2)
    assert all(s > 0 for s in out.column("gen_seconds").to_pylist())
