"""`cwpo_ray.integrations.trl`: WeightedDPOTrainer against TRL's DPOTrainer (weights 1) and against our
`align_loss` (non-uniform weights), a short training run, the fail-fast errors, and `load_preferences`.

Tiny Qwen2 models built from a config and the synthetic task's locally trained tokenizer; no Ray, no hub."""
from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("trl")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from cwpo_ray.integrations.trl import WeightedDPOTrainer, load_preferences, require_trl  # noqa: E402
from cwpo_ray.schema import PREFERENCE_SCHEMA  # noqa: E402
from cwpo_ray.student.data import PairEncoder, collate_pairs, encode_rows  # noqa: E402
from cwpo_ray.student.logprobs import SequenceLogprobs  # noqa: E402
from cwpo_ray.student.steps import align_loss  # noqa: E402

N, B, BETA = 32, 8, 0.1
TOL_TRL = 1e-5  # (a): |ours - TRL's DPOTrainer| with all weights 1 (same forward and reference code: ~0 expected)
TOL_ALIGN = 1e-5  # (b): |ours - align_loss| (TRL's fused LM head vs our chunked log-probs, fp32)
LOSS_TYPES = [("sigmoid", {}), ("ipo", {}), ("robust", {"label_smoothing": 0.1})]
OURS = {"sigmoid": ("dpo", "sum"), "ipo": ("ipo", "mean"), "robust": ("rdpo", "sum")}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """The synthetic task's tokenizer (trained in < 1 s) and N pairs with a confidence in [0.05, 1]."""
    from cwpo_ray.synthetic.models import train_tokenizer
    from cwpo_ray.synthetic.task import SyntheticTask, SyntheticTaskConfig

    task = SyntheticTask(SyntheticTaskConfig(num_pairs=64, seed=0))
    tok = train_tokenizer(task.corpus(), tmp_path_factory.mktemp("tok"), 512)
    rows = []
    for r, c in zip(task.rows()[:N], np.linspace(0.05, 1.0, N)):
        a_wins = r["human_label"] == "a"
        rows.append({"prompt": r["prompt"], "chosen": r["response_a"] if a_wins else r["response_b"],
                     "rejected": r["response_b"] if a_wins else r["response_a"], "confidence": float(c)})
    return tok, rows


def make_lm(tok, noise: float = 0.0):
    """The same tiny Qwen2 every call (seed 0); ``noise`` perturbs it (seed 1) so policy != reference."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=256, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(cfg)
    if noise:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in lm.parameters():
                p.add_(noise * torch.randn(p.shape, generator=g))
    return lm


def config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=B, report_to=[], save_strategy="no", use_cpu=True,
                bf16=False, disable_tqdm=True, dataloader_num_workers=0, max_length=128, beta=BETA, logging_steps=1, seed=0)
    return DPOConfig(**{**base, **kw})


def batch_loss(trainer) -> torch.Tensor:
    """The trainer's loss on its first B training pairs (its own collator, no shuffling)."""
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(B)])
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("loss_type,extra", LOSS_TYPES)
def test_weights_one_equal_trl(assets, tmp_path, loss_type, extra):
    """(a) weighting none (w = 1): the loss is TRL's DPOTrainer's on the same batch, models and args."""
    tok, rows = assets
    ds = Dataset.from_list(rows)
    # ipo also goes through precomputed reference log-probs (TRL's precompute pass, then the batch's ref_* columns)
    args = dict(loss_type=[loss_type], precompute_ref_log_probs=loss_type == "ipo", **extra)
    trl_trainer = DPOTrainer(model=make_lm(tok, 0.05), ref_model=make_lm(tok), args=config(tmp_path / "trl", **args),
                             train_dataset=ds, processing_class=tok)
    ours = WeightedDPOTrainer(model=make_lm(tok, 0.05), ref_model=make_lm(tok), args=config(tmp_path / "ours", **args),
                              train_dataset=ds, processing_class=tok, weighting="none")
    expected, got = batch_loss(trl_trainer), batch_loss(ours)
    print(f"(a) {loss_type}: TRL {expected.item():.8f} ours {got.item():.8f} |diff| {abs(got - expected).item():.2e}")
    assert expected.item() > 1e-3 and math.isfinite(got.item())
    assert abs(got - expected).item() <= TOL_TRL
    assert ours._metrics["train"]["weights/mean"] == [1.0]


@pytest.mark.timeout(300)
def test_peft_reference_equal_trl(assets, tmp_path):
    """(a) with a LoRA adapter and no ref_model (the reference is the adapter disabled, TRL's code path)."""
    peft = pytest.importorskip("peft")
    tok, rows = assets
    ds = Dataset.from_list(rows)
    lora = lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # != base
    trl_trainer = DPOTrainer(model=make_lm(tok), args=config(tmp_path / "trl"), train_dataset=ds, processing_class=tok, peft_config=lora())
    ours = WeightedDPOTrainer(model=make_lm(tok), args=config(tmp_path / "ours"), train_dataset=ds, processing_class=tok,
                              peft_config=lora(), weighting="none")
    expected, got = batch_loss(trl_trainer), batch_loss(ours)
    print(f"(a) sigmoid + LoRA: TRL {expected.item():.8f} ours {got.item():.8f} |diff| {abs(got - expected).item():.2e}")
    assert abs(expected.item() - math.log(2)) > 1e-3 and abs(got - expected).item() <= TOL_TRL


@pytest.mark.timeout(300)
@pytest.mark.parametrize("loss_type,extra", LOSS_TYPES)
def test_weighted_loss_equals_align_loss(assets, tmp_path, loss_type, extra):
    """(b) w = confidence (non-uniform): the loss is our `align_loss` on the same pairs, encoded by our PairEncoder."""
    tok, rows = assets
    trainer = WeightedDPOTrainer(model=make_lm(tok, 0.05), ref_model=make_lm(tok), args=config(tmp_path, loss_type=[loss_type], **extra),
                                 train_dataset=Dataset.from_list(rows), processing_class=tok, weighting="confidence")
    got = batch_loss(trainer)
    cols = {k: [r[k] for r in rows[:B]] for k in ("prompt", "chosen", "rejected")}
    cols["weight"] = np.float32([r["confidence"] for r in rows[:B]])
    batch = collate_pairs(encode_rows(cols, PairEncoder(tok, max_length=128, max_prompt_length=128)), tok.pad_token_id)
    kind, reduction = OURS[loss_type]
    with torch.no_grad():
        expected, _ = align_loss(SequenceLogprobs(trainer.model), batch, loss_type=kind, beta=BETA, reduction=reduction,
                                 rdpo_eps=extra.get("label_smoothing", 0.1), reference=SequenceLogprobs(trainer.ref_model))
        unweighted, _ = align_loss(SequenceLogprobs(trainer.model), {**batch, "weight": torch.ones(B)}, loss_type=kind, beta=BETA,
                                   reduction=reduction, rdpo_eps=extra.get("label_smoothing", 0.1),
                                   reference=SequenceLogprobs(trainer.ref_model))
    print(f"(b) {loss_type}: align_loss {expected.item():.8f} ours {got.item():.8f} |diff| {abs(got - expected).item():.2e}")
    assert abs(unweighted - expected).item() > 100 * TOL_ALIGN  # the weights matter on this batch
    assert abs(got - expected).item() <= TOL_ALIGN
    assert trainer._metrics["train"]["weights/mean"][0] == pytest.approx(float(cols["weight"].mean()), abs=1e-6)


@pytest.mark.timeout(300)
def test_short_training_run(assets, tmp_path):
    """(c) a few steps (reference precomputed from the initial policy): finite, decreasing loss and the metrics
    logged; all weights 0 => loss 0 and the parameters do not move."""
    tok, rows = assets
    ds = Dataset.from_list(rows[:16])
    trainer = WeightedDPOTrainer(model=make_lm(tok), args=config(tmp_path / "run", max_steps=4, learning_rate=5e-3,
                                                                 precompute_ref_log_probs=True),
                                 train_dataset=ds, processing_class=tok)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    losses = [h["loss"] for h in logs]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] and logs[-1]["rewards/margins"] > logs[0]["rewards/margins"] == 0.0
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "weights/mean"):
        assert key in logs[0]
    assert 0 < logs[0]["weights/mean"] < 1

    zero = ds.add_column("w", [0.0] * len(ds))
    lm = make_lm(tok)
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    trainer = WeightedDPOTrainer(model=lm, ref_model=make_lm(tok, 0.05), args=config(tmp_path / "zero", max_steps=2, learning_rate=5e-3),
                                 train_dataset=zero, processing_class=tok, weight_column="w")
    trainer.train()
    assert all(h["loss"] == 0.0 for h in trainer.state.log_history if "loss" in h)
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


@pytest.mark.timeout(300)
def test_top_fraction_threshold_from_training_set(assets, tmp_path):
    """top_fraction's threshold is decided over the whole training set (here a streamed IterableDataset) and reused
    for the evaluation set, whose pairs are all more confident: every eval weight is 1; evaluate() logs weights/mean."""
    tok, rows = assets
    train = Dataset.from_list(rows[:16]).to_iterable_dataset()
    trainer = WeightedDPOTrainer(model=make_lm(tok), ref_model=make_lm(tok, 0.05), args=config(tmp_path, max_steps=1),
                                 train_dataset=train, eval_dataset=Dataset.from_list(rows[16:24]), processing_class=tok,
                                 weighting="top_fraction", top_fraction=0.3)
    confidence = [r["confidence"] for r in rows[:16]]
    assert trainer._threshold == sorted(confidence)[-5]  # ceil(0.3 * 16) = 5 most confident pairs
    assert [r["weight"] for r in trainer.train_dataset] == [float(c >= trainer._threshold) for c in confidence]
    assert list(trainer.eval_dataset["weight"]) == [1.0] * 8
    assert trainer.evaluate()["eval_weights/mean"] == 1.0


def _error(fn) -> str:
    with pytest.raises((ValueError, ImportError)) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.timeout(300)
def test_fail_fast(assets, tmp_path):
    """(d) one-line errors naming the problem, before any training."""
    tok, rows = assets
    ds = Dataset.from_list(rows[:8])

    def build(data=ds, **kw):
        args = {k: kw.pop(k) for k in list(kw) if k not in ("weighting", "weight_column")}
        return WeightedDPOTrainer(model=make_lm(tok), ref_model=make_lm(tok), args=config(tmp_path, **args),
                                  train_dataset=data, processing_class=tok, **kw)

    assert "no column 'w'" in _error(lambda: build(weight_column="w"))
    assert "no column 'confidence'" in _error(lambda: build(ds.remove_columns("confidence")))
    assert "'score_chosen', 'score_rejected'" in _error(lambda: build(weighting="clip_delta"))
    assert "no column 'prompt'" in _error(lambda: build(ds.remove_columns("prompt")))
    assert "weight -1.0 is negative" in _error(lambda: build(ds.add_column("w", [1.0] * 7 + [-1.0]), weight_column="w"))
    assert "row 2: weight nan" in _error(lambda: build(ds.add_column("w", [1.0, 1.0, float("nan")] + [1.0] * 5), weight_column="w"))
    assert "'w' is not numeric" in _error(lambda: build(ds.add_column("w", ["x"] * 8), weight_column="w"))
    assert "already has a 'weight' column" in _error(lambda: build(ds.add_column("weight", [1.0] * 8)))
    assert "unknown weighting 'bogus'" in _error(lambda: build(weighting="bogus"))
    assert "loss_type must be one of" in _error(lambda: build(loss_type=["hinge"]))
    assert "a single one" in _error(lambda: build(loss_type=["sigmoid", "ipo"]))
    assert "f_divergence_type='forward_kl'" in _error(lambda: build(f_divergence_type="forward_kl"))
    assert "ld_alpha" in _error(lambda: build(ld_alpha=0.5))
    assert "use_weighting" in _error(lambda: build(use_weighting=True))
    assert "vision dataset" in _error(lambda: build(ds.add_column("image", [None] * 8)))
    from transformers import AutoModelForCausalLM, Qwen2MoeConfig

    moe = AutoModelForCausalLM.from_config(Qwen2MoeConfig(  # router_aux_loss_coef 0.001 by default
        hidden_size=64, intermediate_size=64, moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=2,
        num_experts_per_tok=1, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, vocab_size=len(tok)))
    assert "MoE load-balancing loss" in _error(lambda: WeightedDPOTrainer(model=moe, args=config(tmp_path), train_dataset=ds,
                                                                          processing_class=tok))
    assert "pip install 'cwpo-ray[trl]'" in _error(lambda: require_trl("1.15.2"))
    assert "not installed" in _error(lambda: require_trl(None))
    require_trl("1.16.0")


@pytest.mark.timeout(300)
def test_load_preferences_round_trip(tmp_path):
    """`annotate`'s parquet folder (two files, PREFERENCE_SCHEMA) -> datasets.Dataset with the weight column."""
    rows = [{"pair_id": f"{i:016x}", "prompt": f"p{i}", "chosen": f" good {i}", "rejected": f" bad {i}", "score_chosen": 1.0 + i,
             "score_rejected": 0.5, "confidence": c, "human_label_agrees": True} for i, c in enumerate([0.9, 0.1, 0.6, 0.3])]
    folder = tmp_path / "preferences"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:2], schema=PREFERENCE_SCHEMA), folder / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:], schema=PREFERENCE_SCHEMA), folder / "part-1.parquet")

    ds = load_preferences(str(folder))
    assert ds.column_names == ["pair_id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected", "confidence", "weight"]
    got = sorted(ds.to_list(), key=lambda r: r["pair_id"])
    for r, g in zip(rows, got):
        assert {k: g[k] for k in ("pair_id", "prompt", "chosen", "rejected")} == {k: r[k] for k in ("pair_id", "prompt", "chosen", "rejected")}
        assert g["confidence"] == pytest.approx(r["confidence"]) and g["weight"] == pytest.approx(r["confidence"])
    top = {r["pair_id"]: r["weight"] for r in load_preferences(str(folder), weighting="top_fraction", top_fraction=0.5).to_list()}
    assert top == {"0000000000000000": 1.0, "0000000000000001": 0.0, "0000000000000002": 1.0, "0000000000000003": 0.0}
    assert "weight" not in load_preferences(str(folder / "part-0.parquet"), weighting=None).column_names

    pq.write_table(pa.Table.from_pylist([{**rows[0], "pair_id": "bad", "confidence": 1.5}], schema=PREFERENCE_SCHEMA),
                   folder / "part-2.parquet")
    assert "1 unusable rows {'bad_confidence': 1}" in _error(lambda: load_preferences(str(folder)))
    assert len(load_preferences(str(folder), drop_bad=True)) == 4
    pq.write_table(pa.table({"prompt": ["p"], "chosen": ["a"], "rejected": ["b"]}), tmp_path / "no_conf.parquet")
    assert "no column 'confidence'" in _error(lambda: load_preferences(str(tmp_path / "no_conf.parquet")))
