"""Student core, no Ray: losses × weightings against hand-computed values, identities, gradients,
chunked log-probs against the full-logits computation, data conversion and bucketing."""
from __future__ import annotations

import math

import pyarrow as pa
import pytest
import torch

from cwpo_ray.student.losses import (
    dpo_loss,
    ipo_loss,
    pair_weights,
    preference_loss,
    robust_dpo_loss,
    top_fraction_threshold,
    weighted_mean,
)

DELTA = [1.0, -0.5, 2.0]
BETA = 0.5
CONF = [0.9, 0.2, 0.5]
MARGIN = [0.5, 3.0, 10.0]


def _logsig(x):
    return -math.log1p(math.exp(-x))


def _hand_loss(kind, d, beta, eps=0.1):
    if kind == "dpo":
        return -_logsig(beta * d)
    if kind == "ipo":
        return (d - 1 / (2 * beta)) ** 2
    return (-(1 - eps) * _logsig(beta * d) + eps * _logsig(-beta * d)) / (1 - 2 * eps)


def _hand_weights(scheme):
    return {
        "confidence": CONF,
        "none": [1.0, 1.0, 1.0],
        "top_fraction": [1.0, 0.0, 1.0],  # top 2/3 by confidence: 0.9 and 0.5
        "sigmoid_delta": [1 / (1 + math.exp(-m)) for m in MARGIN],
        "clip_delta": [0.5, 1.0, 1.0],
        "scaled_clip_delta": [0.1, 0.6, 1.0],
    }[scheme]


def test_hand_values_literal():
    d = torch.tensor(DELTA)
    assert dpo_loss(d, BETA).tolist() == pytest.approx([0.474077, 0.825939, 0.313262], abs=1e-6)
    assert ipo_loss(d, BETA).tolist() == pytest.approx([0.0, 2.25, 1.0], abs=1e-6)
    # rDPO, eps=0.1, Δ=1: (0.9·0.474077 − 0.1·0.974077) / 0.8
    assert robust_dpo_loss(d, BETA, 0.1)[0].item() == pytest.approx(0.411577, abs=1e-6)


@pytest.mark.parametrize("kind", ["dpo", "ipo", "rdpo"])
@pytest.mark.parametrize("scheme", ["confidence", "none", "top_fraction", "sigmoid_delta", "clip_delta", "scaled_clip_delta"])
@pytest.mark.parametrize("normalize", [False, True])
def test_every_loss_times_weighting(kind, scheme, normalize):
    thr = top_fraction_threshold(CONF, 2 / 3)
    w = pair_weights(scheme, confidence=CONF, delta=MARGIN, threshold=thr)
    assert w.tolist() == pytest.approx(_hand_weights(scheme), abs=1e-6)
    losses = preference_loss(kind, torch.tensor(DELTA), BETA, 0.1)
    got = weighted_mean(losses, w, normalize).item()
    hw, hl = _hand_weights(scheme), [_hand_loss(kind, d, BETA) for d in DELTA]
    want = sum(a * b for a, b in zip(hw, hl)) / (sum(hw) if normalize else len(hl))
    assert got == pytest.approx(want, rel=1e-5)


def test_identities():
    d = torch.linspace(-4, 4, 17)
    ones = pair_weights("none", confidence=torch.rand(17))
    assert torch.allclose(weighted_mean(dpo_loss(d, BETA), ones), dpo_loss(d, BETA).mean())  # w ≡ 1 → plain DPO
    assert torch.allclose(robust_dpo_loss(d, BETA, 0.0), dpo_loss(d, BETA))  # ε = 0 → DPO
    # confidence 1 everywhere (human labels) = plain DPO as well
    assert torch.allclose(weighted_mean(dpo_loss(d, BETA), pair_weights("confidence", confidence=torch.ones(17))),
                          dpo_loss(d, BETA).mean())


def test_top_fraction_is_dataset_level_and_validation():
    conf = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert top_fraction_threshold(conf, 0.3) == pytest.approx(0.8)
    w = pair_weights("top_fraction", confidence=conf, threshold=0.8)
    assert w.sum().item() == 3
    with pytest.raises(ValueError):
        pair_weights("top_fraction", confidence=conf)
    with pytest.raises(ValueError):
        pair_weights("bogus", confidence=conf)
    with pytest.raises(ValueError):
        robust_dpo_loss(torch.zeros(1), BETA, 0.5)


def _tiny_lm(dtype=torch.float64, vocab=40):
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True)
    return AutoModelForCausalLM.from_config(cfg).to(dtype)


def _batch(B=3, T=12, vocab=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (2 * B, T), generator=g)
    attn = torch.ones_like(ids)
    resp = torch.zeros_like(ids)
    for i in range(2 * B):
        L = T - (i % 3)  # right padding on some rows
        attn[i, L:] = 0
        resp[i, 4 + i % 2: L] = 1
    return {"input_ids": ids, "attention_mask": attn, "response_mask": resp,
            "weight": torch.tensor([0.9, 0.2, 0.5], dtype=torch.float32)}


def test_chunked_logprobs_match_full_logits():
    from cwpo_ray.student.logprobs import SequenceLogprobs, full_logits_logprobs

    lm = _tiny_lm()
    b = _batch()
    for chunk in (1, 5, 1000):
        got, n = SequenceLogprobs(lm, chunk)(b["input_ids"], b["attention_mask"], b["response_mask"])
        want, n2 = full_logits_logprobs(lm, b["input_ids"], b["attention_mask"], b["response_mask"])
        assert torch.equal(n, n2)
        assert torch.allclose(got.double(), want, atol=1e-5)
    # gradients through the checkpointed chunks equal the full-logits gradients
    lm.zero_grad()
    SequenceLogprobs(lm, 5)(b["input_ids"], b["attention_mask"], b["response_mask"])[0].sum().backward()
    g1 = [p.grad.clone() for p in lm.parameters()]
    lm.zero_grad()
    full_logits_logprobs(lm, b["input_ids"], b["attention_mask"], b["response_mask"])[0].sum().backward()
    for a, p in zip(g1, lm.parameters()):
        assert torch.allclose(a.double(), p.grad, atol=1e-5)


@pytest.mark.parametrize("kind,reduction", [("dpo", "sum"), ("ipo", "mean"), ("rdpo", "sum")])
def test_gradient_check_align_loss_tiny_model(kind, reduction):
    """Autograd gradient of the weighted loss vs central finite differences (float64)."""
    import copy

    from cwpo_ray.student.logprobs import SequenceLogprobs
    from cwpo_ray.student.steps import align_loss

    lm = _tiny_lm()
    ref = SequenceLogprobs(copy.deepcopy(lm), 4)
    with torch.no_grad():  # move the policy away from the reference so Δ ≠ 0
        for p in lm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pol = SequenceLogprobs(lm, 4)
    b = _batch()

    def f():
        return align_loss(pol, b, loss_type=kind, beta=BETA, reduction=reduction, reference=ref)[0]

    lm.zero_grad()
    f().backward()
    gen = torch.Generator().manual_seed(0)
    for name, p in [("embed", lm.model.embed_tokens.weight), ("q_proj", lm.model.layers[0].self_attn.q_proj.weight),
                    ("norm", lm.model.norm.weight)]:
        for _ in range(3):
            idx = tuple(int(torch.randint(s, (1,), generator=gen)) for s in p.shape)
            eps = 1e-3  # the HF model computes RMSNorm/RoPE in fp32 internally
            with torch.no_grad():
                p[idx] += eps
                up = f().item()
                p[idx] -= 2 * eps
                down = f().item()
                p[idx] += eps
            fd = (up - down) / (2 * eps)
            assert p.grad[idx].item() == pytest.approx(fd, rel=2e-3, abs=1e-5), name


def test_align_loss_with_precomputed_reference_equals_on_the_fly():
    import copy

    from cwpo_ray.student.logprobs import SequenceLogprobs
    from cwpo_ray.student.steps import align_loss

    lm = _tiny_lm(torch.float32)
    ref = SequenceLogprobs(copy.deepcopy(lm), 4)
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pol = SequenceLogprobs(lm, 4)
    b = _batch()
    with torch.no_grad():
        r, _ = ref(b["input_ids"], b["attention_mask"], b["response_mask"])
    pre = dict(b, ref_chosen_logp=r[:3], ref_rejected_logp=r[3:])
    l1, m1 = align_loss(pol, b, loss_type="dpo", beta=BETA, reduction="sum", reference=ref)
    l2, m2 = align_loss(pol, pre, loss_type="dpo", beta=BETA, reduction="sum")
    assert torch.allclose(l1, l2, atol=1e-6)
    assert 0 <= m1["weighted_pref_acc"] <= 1


def test_human_pairs_conversion_and_validation():
    from cwpo_ray.schema import PAIR_SCHEMA, PREFERENCE_SCHEMA
    from cwpo_ray.student.data import add_weights, human_pairs_to_preferences, validate_preferences

    pairs = pa.Table.from_pylist([
        {"pair_id": "1", "prompt": "p", "response_a": "good", "response_b": "bad", "human_label": "a", "source": "s"},
        {"pair_id": "2", "prompt": "p", "response_a": "bad", "response_b": "good", "human_label": "b", "source": "s"},
        {"pair_id": "3", "prompt": "p", "response_a": "x", "response_b": "y", "human_label": None, "source": "s"},
        {"pair_id": "4", "prompt": "p", "response_a": "z", "response_b": "z", "human_label": "a", "source": "s"},
    ], schema=PAIR_SCHEMA)
    good, bad = human_pairs_to_preferences(pairs)
    assert good.schema == PREFERENCE_SCHEMA
    assert good.column("chosen").to_pylist() == ["good", "good"]
    assert good.column("confidence").to_pylist() == [1.0, 1.0]
    assert sorted(bad.column("reason").to_pylist()) == ["identical_responses", "no_human_label"]
    assert bad.to_pylist()[0] == {"source": "human_pairs", "reason": "no_human_label", "detail": "",
                                  "raw": repr(pairs.to_pylist()[2])}

    rows = [
        {"pair_id": "a", "prompt": "p", "chosen": "c", "rejected": "r", "score_chosen": 2.0, "score_rejected": 1.0,
         "confidence": 0.46, "human_label_agrees": True},
        {"pair_id": "b", "prompt": "p", "chosen": "c", "rejected": "r", "score_chosen": None, "score_rejected": None,
         "confidence": float("nan"), "human_label_agrees": None},
        {"pair_id": "c", "prompt": "", "chosen": "c", "rejected": "r", "score_chosen": 1.0, "score_rejected": 0.0,
         "confidence": 0.5, "human_label_agrees": None},
        {"pair_id": "d", "prompt": "p", "chosen": "c", "rejected": "r", "score_chosen": None, "score_rejected": 0.0,
         "confidence": 0.5, "human_label_agrees": None},
    ]
    t = pa.Table.from_pylist(rows, schema=PREFERENCE_SCHEMA)
    ok, q = validate_preferences(t, needs_scores=True)
    assert ok.column("pair_id").to_pylist() == ["a"]
    assert q.column("reason").to_pylist() == ["bad_confidence", "empty_field:prompt", "missing_scores"]
    assert q.column("detail").to_pylist() == ["nan", "", ""] and set(q.column("source").to_pylist()) == {"preferences"}
    assert q.column("raw").to_pylist() == [repr(r) for r in t.to_pylist()[1:]]
    w = add_weights(ok, "scaled_clip_delta").column("weight").to_pylist()
    assert w == pytest.approx([0.2])


def test_encoder_collate_and_buckets():
    from cwpo_ray.student.data import PairEncoder, collate_pairs, encode_rows, length_buckets

    class Tok:
        eos_token_id, pad_token_id = 2, 0

        def __call__(self, texts, add_special_tokens=True):
            return {"input_ids": [[10 + len(w) for w in t.split()] for t in texts]}

    enc = PairEncoder(Tok(), max_length=8, max_prompt_length=3)
    rows = encode_rows({"prompt": ["a bb ccc dddd", "x"], "chosen": ["y y", "z " * 20], "rejected": ["q", "r"],
                        "weight": [0.5, 1.0]}, enc)
    assert rows[0]["chosen_enc"] == ([12, 13, 14, 11, 11, 2], 3)  # prompt left-truncated, EOS appended
    assert len(rows[1]["chosen_enc"][0]) == 8  # response right-truncated to max_length
    b = collate_pairs(rows, pad_id=0, multiple=8)
    assert b["input_ids"].shape == (4, 8)
    assert b["response_mask"][0].tolist() == [0, 0, 0, 1, 1, 1, 0, 0]
    assert b["weight"].tolist() == [0.5, 1.0]

    items = [{"chosen_enc": ([1] * n, 1)} for n in [5, 1, 9, 3, 7, 2, 8]]
    out = list(length_buckets(items, batch_size=2, window=2, seed=0))
    assert sorted(len(x["chosen_enc"][0]) for g in out for x in g) == [1, 2, 3, 5, 7, 8, 9]
    assert len(out) == 4
    # windows of 4 rows: [5,1,9,3] → (1,3),(5,9); [7,2,8] → (2,7),(8,): neighbours in length
    assert {tuple(len(x["chosen_enc"][0]) for x in g) for g in out} == {(1, 3), (5, 9), (2, 7), (8,)}


def test_lora_wrapper_trains_adapters_only_and_merges(tmp_path):
    """The LoRA path of the train loop: peft adapters inside SequenceLogprobs, merged for save_pretrained."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cwpo_ray.student.logprobs import SequenceLogprobs
    from cwpo_ray.student.steps import sft_loss

    lm = _tiny_lm(torch.float32)
    peft_model = get_peft_model(lm, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    pol = SequenceLogprobs(peft_model.get_base_model(), 4)
    trainable = {n for n, p in pol.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    b = _batch(vocab=40)
    opt = torch.optim.AdamW([p for p in pol.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss, _ = sft_loss(pol, b)
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        want, _ = pol(b["input_ids"], b["attention_mask"], b["response_mask"])
    peft_model.merge_and_unload().save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert not any("lora" in k for k in back.state_dict())
    with torch.no_grad():
        got, _ = SequenceLogprobs(back, 4)(b["input_ids"], b["attention_mask"], b["response_mask"])
    assert torch.allclose(got, want, atol=1e-4)
