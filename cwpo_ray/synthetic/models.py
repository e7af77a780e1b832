"""Tiny real HF models and a locally trained tokenizer for the synthetic task (nothing downloaded).

Shapes keep head_dim >= 32 so vLLM's CPU backend can serve and score them; the models are
pretrained on the task's text (:mod:`cwpo_ray.synthetic.pretrain`) before anything else sees them.

The weak annotator and the student are real HF architectures built from a config and saved with
``save_pretrained``, so every downstream code path (Ray Train, Ray Data actors, vLLM) loads them
exactly as it would load ``facebook/opt-125m`` or ``Qwen/Qwen2.5-0.5B`` from the hub.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import model_validator

from cwpo_ray.config import StrictModel

SPECIAL = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


class TinyModelConfig(StrictModel):
    arch: Literal["qwen2", "llama", "opt"] = "qwen2"
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 1
    max_positions: int = 256
    seed: int = 0

    @model_validator(mode="after")
    def _shapes(self):
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must be divisible by num_heads, and num_heads by num_kv_heads")
        if self.hidden_size // self.num_heads < 32:  # vLLM's CPU attention kernels need head_dim >= 32
            raise ValueError(f"head_dim = hidden_size / num_heads = {self.hidden_size // self.num_heads} < 32 "
                             "(vLLM's CPU attention needs head_dim >= 32)")
        return self


def train_tokenizer(corpus: list[str], out_dir: str | Path, vocab_size: int = 512):
    """Byte-level BPE trained on ``corpus`` with ``tokenizers``, saved as a PreTrainedTokenizerFast.

    Its normalizer and pre-tokenizer are Qwen2's (NFC, Qwen2's split pattern, byte-level without a regex of
    its own). In transformers 5, ``AutoTokenizer`` on a Qwen2 model folder builds ``Qwen2Tokenizer`` from the
    folder's vocabulary and merges with exactly that pipeline, whatever ``tokenizer.json`` says, while a Llama
    or OPT folder, or the tokenizer-only folder, loads ``tokenizer.json`` as saved (the generic fast class).
    Training with Qwen2's pipeline makes every one of these loads tokenize alike, so pretraining, prepare's
    length filter and every later stage see the same token ids (``test_synthetic`` checks all of them)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)
    fast.padding_side = "right"
    fast.save_pretrained(str(out_dir))
    return fast


def build_tiny_causal_lm(cfg: TinyModelConfig, tokenizer, out_dir: str | Path, pretrain_texts: list[str] | None = None,
                         pretrain=None) -> tuple[Path, dict | None]:
    """A tiny causal LM (+ its tokenizer) saved with ``save_pretrained``: randomly initialised, then
    pretrained on ``pretrain_texts`` with ``pretrain`` (a :class:`PretrainConfig`) when given.
    Returns (folder, pretraining stats or None)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig, Qwen2Config

    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if cfg.arch == "opt":
        hf_cfg = OPTConfig(hidden_size=cfg.hidden_size, ffn_dim=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                           num_attention_heads=cfg.num_heads, max_position_embeddings=cfg.max_positions,
                           word_embed_proj_dim=cfg.hidden_size, **ids)
    else:
        cls = Qwen2Config if cfg.arch == "qwen2" else LlamaConfig
        hf_cfg = cls(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                     num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                     num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.max_positions,
                     tie_word_embeddings=True, **ids)
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(hf_cfg)
    out = Path(out_dir)
    tokenizer.save_pretrained(str(out))
    stats = None
    if pretrain_texts:
        from cwpo_ray.annotator.scoring import load_tokenizer
        from cwpo_ray.synthetic.pretrain import PretrainConfig, pretrain_causal_lm

        # Pretrain with the tokenizer every later stage gets from this folder (AutoTokenizer picks the class
        # from the model type), not with the object passed in.
        hf_cfg.save_pretrained(str(out))
        stats = pretrain_causal_lm(model, load_tokenizer(str(out)), pretrain_texts, pretrain or PretrainConfig(),
                                   desc=f"pretrain {out.name}")
        stats["parameters"] = model.num_parameters()
    model.save_pretrained(str(out))
    return out, stats
