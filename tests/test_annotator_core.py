"""Pure annotator core (no Ray): BT loss, confidence, metrics, batching, scorer, configs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cwpo_ray.annotator.losses import bradley_terry_loss, confidence, orient
from cwpo_ray.annotator.metrics import accuracy, evaluate_pairs, expected_calibration_error, top_confident_accuracy
from cwpo_ray.annotator.scoring import encode_texts, plan_batches
from cwpo_ray.student.data import pad_batch, pad_sequences


def test_bradley_terry_loss_hand_computed():
    s_c = torch.tensor([2.0, 0.0, -1.0])
    s_r = torch.tensor([1.0, 0.0, 1.0])
    # -log σ(1) = log(1 + e^-1) = 0.3132617; -log σ(0) = log 2; -log σ(-2) = log(1 + e^2) = 2.1269280
    expected = (math.log(1 + math.exp(-1)) + math.log(2) + math.log(1 + math.exp(2))) / 3
    assert bradley_terry_loss(s_c, s_r).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx((0.3132617 + 0.6931472 + 2.1269280) / 3, abs=1e-6)
    # finite for huge margins, and the gradient pushes chosen up / rejected down
    big = torch.tensor([1000.0, -1000.0], requires_grad=True)
    loss = bradley_terry_loss(big[1:], big[:1])
    assert loss.item() == pytest.approx(2000.0)
    loss.backward()
    assert big.grad[1] < 0 < big.grad[0]


def test_confidence_formula_hand_computed():
    # C = 2(σ(Δ) − ½): Δ=0 → 0; Δ=ln 3 → σ=3/4 → C=1/2; Δ=2 → 2σ(2)−1 = 0.7615942 = tanh(1)
    c = confidence([0.0, math.log(3), 2.0, 5.0], [0.0, 0.0, 0.0, 3.0])
    assert c.tolist() == pytest.approx([0.0, 0.5, 0.7615942, 0.7615942], abs=1e-7)
    assert c[2].item() == pytest.approx(math.tanh(1.0), abs=1e-12)
    a_wins, s_c, s_r = orient([1.0, -2.0, 0.5], [0.0, 3.0, 0.5])
    assert a_wins.tolist() == [True, False, True]
    assert s_c.tolist() == [1.0, 3.0, 0.5] and s_r.tolist() == [0.0, -2.0, 0.5]
    assert (confidence(s_c, s_r) >= 0).all()


def test_metrics_hand_computed():
    p_a = np.array([0.9, 0.8, 0.6, 0.3, 0.55])
    y_a = np.array([1, 0, 1, 0, 0])
    # predictions a,a,a,b,a -> correct: T F T T F
    assert accuracy(p_a, y_a) == pytest.approx(0.6)
    # one bin [0.5, 1]: mean conf = (0.9+0.8+0.6+0.7+0.55)/5 = 0.71, acc 0.6 -> ECE 0.11
    assert expected_calibration_error(p_a, y_a, n_bins=1) == pytest.approx(0.11)
    curve = top_confident_accuracy([0.9, 0.1, 0.5, 0.7, 0.3], [1, 0, 1, 1, 0], fractions=(0.2, 0.6, 1.0))
    assert curve == {"top20": 1.0, "top60": 1.0, "top100": 0.6}
    ev = evaluate_pairs(np.array([2.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.5]), np.array([1, 0, 1]))
    assert ev["accuracy"] == pytest.approx(2 / 3) and ev["pairs"] == 3
    assert ev["top_confident_accuracy"]["top30"] == 1.0  # the Δ=2 pair is the most confident and right


def test_plan_batches_token_budget_and_cover():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=500)
    batches = plan_batches(lengths, max_batch_tokens=2048, max_batch_size=64, pad_to_multiple_of=8)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(500))  # every item exactly once
    for b in batches:
        width = -(-lengths[b].max() // 8) * 8
        assert len(b) <= 64 and (len(b) * width <= 2048 or len(b) == 1)
    # sorted batching wastes far less padding than the input order
    def padded(bs):
        return sum(len(b) * lengths[b].max() for b in bs)
    naive = [np.arange(i, min(i + 32, 500)) for i in range(0, 500, 32)]
    assert padded(batches) < 0.7 * padded(naive)


def test_pad_batch_and_pad_sequences_right_pad_to_a_multiple():
    """The one padding helper: right padding (real tokens first), width rounded up to the multiple."""
    x, m, n = pad_batch([[5, 6, 7], [8]], pad_id=0, pad_to_multiple_of=4)
    assert x.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]] and m.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert n.tolist() == [3, 1] and x.dtype == m.dtype == n.dtype == torch.long
    assert pad_batch([[1, 2, 3, 4]], 9, 4)[0].tolist() == [[1, 2, 3, 4]]  # already a multiple: no extra column
    assert pad_batch([[1, 2, 3]], 9, 1)[0].tolist() == [[1, 2, 3]]
    # the student's (ids, prompt_len) sequences: same ids/mask, response_mask = 1 after the prompt, 0 on padding
    b = pad_sequences([([5, 6, 7], 1), ([8, 9], 2)], pad_id=0, multiple=4)
    assert b["input_ids"].tolist() == [[5, 6, 7, 0], [8, 9, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert b["response_mask"].tolist() == [[0, 1, 1, 0], [0, 0, 0, 0]] and b["response_mask"].dtype == torch.long
    # pretraining's labels: padding is -100 (right side), every real token a target
    labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    assert labels.tolist() == [[5, 6, 7, -100], [8, 9, -100, -100]]


def test_scorer_matches_plain_hf_forward(synthetic_assets):
    """The length-sorted, mask-free causal path equals HF's own padded forward, item by item."""
    from cwpo_ray.annotator.scoring import HFScorer

    sc = HFScorer(synthetic_assets["weak_base"], max_length=64, max_batch_tokens=96, pad_to_multiple_of=8)
    prompts = ["\n\nHuman: tell me about cats in 4 words mention purr avoid fur\n\nAssistant:"] * 6
    responses = [" purr", " purr kitten thanks glad", " ugh", " whiskers paws meow purr kitten glad thanks very",
                 " snow", " the the the"]
    got, n_trunc = sc.score_texts(prompts, responses)
    assert n_trunc == 0 and got.dtype == np.float32 and len(set(got.tolist())) == 6
    ids, _ = encode_texts(sc.tokenizer, prompts, responses, 64)
    x, m, _ = pad_batch(ids, sc.pad_id, 1)
    with torch.inference_mode():
        ref = sc.model(input_ids=x, attention_mask=m).logits[:, 0].numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # left truncation keeps the response end
    short, n = encode_texts(sc.tokenizer, prompts[:1], responses[3:4], 5)
    assert n == 1 and short[0] == ids[3][-5:]


def test_configs_fail_fast_naming_the_field():
    from cwpo_ray.annotator.config import AnnotateConfig, AnnotatorTrainConfig
    from cwpo_ray.config import ConfigError, build_config

    d = build_config(AnnotatorTrainConfig, {})
    # paper defaults: 5 epochs, lr 1e-5, batch 32 (1 worker), 512 tokens, constant lr after the warm-up
    assert (d.epochs, d.lr, d.batch_size * d.num_workers * d.grad_accum, d.max_length) == (5, 1e-5, 32, 512)
    assert (d.lr_scheduler, d.warmup_ratio, d.warmup_steps) == ("constant_with_warmup", 0.0, None)
    with pytest.raises(ConfigError, match=r"^config error: lr: .*greater than 0"):
        build_config(AnnotatorTrainConfig, {}, ["lr=-1"])
    for old in ("strategy", "max_tokens", "bf16", "log_every", "fault_injection"):  # shared names only
        with pytest.raises(ConfigError, match=rf"^config error: {old}: unknown field"):
            build_config(AnnotatorTrainConfig, {old: 1})
    with pytest.raises(ConfigError, match=r"^config error: zero_stage: "):
        build_config(AnnotatorTrainConfig, {"zero_stage": 4})
    with pytest.raises(ConfigError, match="lora with zero_stage=3"):
        build_config(AnnotatorTrainConfig, {"zero_stage": 3, "lora": {}})
    with pytest.raises(ConfigError, match=r"^config error: bogus: unknown field"):
        build_config(AnnotateConfig, {"bogus": 1})
    with pytest.raises(ConfigError, match="min_actors"):
        build_config(AnnotateConfig, {"min_actors": 3, "max_actors": 2})
    with pytest.raises(ConfigError, match=r"^config error: backend: "):
        build_config(AnnotateConfig, {"backend": "onnx"})


def test_tokenize_and_label_block_equal_the_row_by_row_rules():
    """annotate's Arrow core: the same quarantine reasons as validate_pair (+ too_long), the rows kept in
    input order with their token ids, and labels equal to a row-by-row reference."""
    import pyarrow as pa

    from cwpo_ray.annotator.annotate import label_table, tokenize_block
    from cwpo_ray.schema import PAIR_SCHEMA, PREFERENCE_SCHEMA, QUARANTINE_SCHEMA, validate_pair

    class WordTokenizer:  # one id per word + a BOS: lengths are easy to reason about
        def __call__(self, texts, **kw):
            return {"input_ids": [[0] + [len(w) for w in t.split()] for t in texts]}

    rows = [
        {"pair_id": "ok1", "prompt": "p one", "response_a": " a b", "response_b": " c", "human_label": "a", "source": "s"},
        {"pair_id": "empty", "prompt": "p", "response_a": " \u3000", "response_b": " c", "human_label": None, "source": "s"},
        {"pair_id": "ok2", "prompt": "p two", "response_a": " x", "response_b": " y z", "human_label": None, "source": "t"},
        {"pair_id": "same", "prompt": "p", "response_a": " c ", "response_b": "c", "human_label": "b", "source": "s"},
        {"pair_id": "long", "prompt": "p", "response_a": " w" * 9, "response_b": " c", "human_label": "b", "source": "s"},
        {"pair_id": "ok3", "prompt": "p", "response_a": " q", "response_b": " r", "human_label": "b", "source": "s"},
    ]
    valid, q = tokenize_block(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA), WordTokenizer(), max_length=6)
    assert q.schema == QUARANTINE_SCHEMA
    assert q.column("reason").to_pylist() == ["empty_field:response_a", "identical_responses", "too_long"]
    assert q.column("detail").to_pylist()[2] == "pair_id=long tokens=11 > max_length=6"
    assert [validate_pair(r["prompt"], r["response_a"], r["response_b"], r["human_label"]) for r in rows[1:4:2]] == \
        q.column("reason").to_pylist()[:2]
    assert valid.column("pair_id").to_pylist() == ["ok1", "ok2", "ok3"]
    assert valid.column("ids_a").to_pylist() == [[0, 1, 3, 1, 1], [0, 1, 3, 1], [0, 1, 1]]

    score_a, score_b = np.array([0.5, -1.0, 2.0]), np.array([0.25, 1.0, 2.0])  # a wins, b wins, tie (a)
    got = label_table(valid, score_a, score_b)
    assert got.schema == PREFERENCE_SCHEMA
    ref = []
    for r, sa, sb in zip(valid.to_pylist(), score_a, score_b):
        a_wins = sa >= sb
        ref.append({"chosen": r["response_a"] if a_wins else r["response_b"],
                    "rejected": r["response_b"] if a_wins else r["response_a"],
                    "confidence": 2 * (1 / (1 + math.exp(-abs(sa - sb))) - 0.5),
                    "human_label_agrees": None if r["human_label"] is None else (r["human_label"] == "a") == a_wins})
    for k in ("chosen", "rejected", "human_label_agrees"):
        assert got.column(k).to_pylist() == [x[k] for x in ref]
    np.testing.assert_allclose(got.column("confidence").to_numpy(), [x["confidence"] for x in ref], rtol=1e-6)
    assert got.column("human_label_agrees").to_pylist() == [True, None, False]

    # a block of bad rows only: all quarantined, nothing to tokenize or score
    valid, q = tokenize_block(pa.Table.from_pylist(rows[1:2] + rows[3:4], schema=PAIR_SCHEMA), WordTokenizer(), max_length=6)
    assert valid.num_rows == 0 and valid.column_names[-2:] == ["ids_a", "ids_b"] and q.num_rows == 2
    assert label_table(valid, np.empty(0), np.empty(0)).num_rows == 0


def test_tokenizer_folder_loads_without_torch_and_a_model_folder_as_autotokenizer_does(tmp_path):
    """prepare's length filter runs on CPU workers that need no torch: a tokenizer-only folder naming the generic
    fast tokenizer loads through that class, the one AutoTokenizer returns there (same tokens). A model folder
    goes through AutoTokenizer, which picks the model type's class (Qwen2Tokenizer: other pre-tokenization)."""
    import shutil
    import subprocess
    import sys

    from transformers import AutoTokenizer, Qwen2Config

    from cwpo_ray.annotator.scoring import auto_tokenizer, load_tokenizer
    from cwpo_ray.synthetic.models import train_tokenizer

    texts = ["\n\nHuman: tell me about cats in 6 words\n\nAssistant: purr kitten", "whiskers paws meow", "snow </s>"]
    train_tokenizer(texts * 20, tmp_path / "tok", vocab_size=300)
    ours, auto = auto_tokenizer(str(tmp_path / "tok")), AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert type(ours) is type(auto) and ours.special_tokens_map == auto.special_tokens_map
    assert ours(texts)["input_ids"] == auto(texts)["input_ids"]
    assert load_tokenizer(str(tmp_path / "tok")).pad_token_id == auto.pad_token_id
    shutil.copytree(tmp_path / "tok", tmp_path / "model")
    Qwen2Config(vocab_size=300).save_pretrained(tmp_path / "model")
    ours, auto = auto_tokenizer(str(tmp_path / "model")), AutoTokenizer.from_pretrained(tmp_path / "model")
    assert type(ours) is type(auto) and ours(texts)["input_ids"] == auto(texts)["input_ids"]
    code = (f"import sys; from cwpo_ray.prepare.core import token_lengths; n = token_lengths({str(tmp_path / 'tok')!r}, "
            "['a b c']); assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
