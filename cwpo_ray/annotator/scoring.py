"""Pure scorer core: s(x, y) of an ``AutoModelForSequenceClassification(num_labels=1)`` on many texts.

Two backends with one interface (``score_ids(list[list[int]]) -> np.ndarray[float32]``):

* :class:`HFScorer` (default): tokenize ``prompt + response``, sort by length, cut into batches under a
  token budget (so a batch of short texts is wide and a batch of long ones narrow; padding is at most
  ``pad_to_multiple_of - 1`` tokens plus the spread inside a bucket), bf16 + ``inference_mode`` on GPU,
  SDPA. For decoder-only models right padding cannot be seen by the real tokens (causal attention), so
  the attention mask is dropped and the pure causal SDPA kernel runs; the score is the head applied to
  the hidden state of each sequence's last real token.
* :class:`VLLMScorer`: vLLM's pooling runner (``LLM(runner="pooling").classify``) on the same token
  ids, with ``PoolingParams(use_activation=False)``: vLLM applies a sigmoid to num_labels=1 classifiers
  by default, we want the raw logit s(x, y).

Both take token ids produced by :func:`encode_texts`, so the two backends see identical inputs.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

# Decoder-only model types: right padding is invisible to real tokens, so no attention mask is needed.
CAUSAL_MODEL_TYPES = {
    "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "llama", "mistral", "mixtral", "opt", "gpt2", "gpt_neox",
    "gptj", "gemma", "gemma2", "gemma3_text", "phi", "phi3", "olmo", "olmo2", "falcon", "stablelm", "starcoder2",
}


# tokenizer_config.json classes that AutoTokenizer returns as they are for a tokenizer-only folder (transformers 5
# names the generic fast tokenizer TokenizersBackend; PreTrainedTokenizerFast is the same class)
GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def auto_tokenizer(path: str, trust_remote_code: bool = False):
    """``AutoTokenizer.from_pretrained`` of a folder (local or a URI, through the node's model cache).

    A tokenizer-only folder (no ``config.json``) whose ``tokenizer_config.json`` names the generic fast tokenizer
    class (and no ``auto_map``) is loaded through that class directly: the class AutoTokenizer returns there, with
    the same files, but without AutoTokenizer's import of torch (~2 CPU-seconds per process on the 2-core machine;
    prepare's length filter runs on CPU workers that need no torch). A model folder always goes through
    AutoTokenizer: with a ``config.json`` it picks the model type's tokenizer class (e.g. Qwen2Tokenizer for
    Qwen2 models), which in general need not tokenize like the generic class (the synthetic task's tokenizer is
    trained with Qwen2's pre-tokenization so that, for it, they agree)."""
    import json
    import os

    from cwpo_ray.io import local_model_dir

    local = local_model_dir(path)
    tc = {}
    if os.path.isfile(os.path.join(local, "tokenizer_config.json")):
        with open(os.path.join(local, "tokenizer_config.json")) as f:
            tc = json.load(f)
    if (tc.get("tokenizer_class") in GENERIC_TOKENIZER_CLASSES and "auto_map" not in tc and "model_type" not in tc
            and not os.path.exists(os.path.join(local, "config.json"))):
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(local)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(local, trust_remote_code=trust_remote_code)


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """The model folder's tokenizer, with a pad token (decoder-only models often lack one: use EOS)."""
    tok = auto_tokenizer(path, trust_remote_code)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer of {path} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_scorer_model(path: str, tokenizer=None, dtype=None, device: str = "cpu", attn_implementation: str | None = "sdpa",
                      trust_remote_code: bool = False):
    """``AutoModelForSequenceClassification(num_labels=1)`` with ``config.pad_token_id`` set.

    A causal-LM checkpoint (e.g. ``Qwen/Qwen2.5-0.5B`` or the synthetic ``weak_base``) gets a freshly
    initialised scalar head; an annotator saved by ``train-annotator`` loads with its trained head.
    """
    from transformers import AutoModelForSequenceClassification

    from cwpo_ray.io import local_model_dir

    local = local_model_dir(path)  # a URI's folder, downloaded to this node's cache
    kwargs = dict(num_labels=1, trust_remote_code=trust_remote_code)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForSequenceClassification.from_pretrained(local, **kwargs)
    except (ValueError, ImportError) as e:  # an architecture without an SDPA path
        if not attn_implementation or "attn" not in str(e).lower():
            raise
        log.warning("attn_implementation=%s unsupported for %s (%s); using the default", attn_implementation, path, e)
        kwargs.pop("attn_implementation")
        model = AutoModelForSequenceClassification.from_pretrained(local, **kwargs)
    if model.config.pad_token_id is None:
        if tokenizer is None:
            tokenizer = load_tokenizer(path, trust_remote_code)
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    model.eval()
    return model


def encode_texts(tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int) -> tuple[list[list[int]], int]:
    """Token ids of ``prompt + response`` (the tokenizer's special tokens included), and how many were
    truncated. Over-long texts keep their *last* ``max_length`` tokens: the response, which the score
    reads at the final token, survives; the start of the prompt is cut."""
    texts = [p + r for p, r in zip(prompts, responses)]
    ids = tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
    n_trunc = 0
    for i, x in enumerate(ids):
        if len(x) > max_length:
            ids[i] = x[-max_length:]
            n_trunc += 1
    return ids, n_trunc


def plan_batches(lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int, pad_to_multiple_of: int = 8,
                 sort: bool = True) -> list[np.ndarray]:
    """Index batches over ``lengths``: sorted longest-first, each batch's padded size
    (``n × round_up(max_len)``) ≤ ``max_batch_tokens`` and ``n ≤ max_batch_size``.

    Longest first so the largest activation (and any OOM) shows up in the first batch.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable") if sort else np.arange(len(lengths))
    batches, start = [], 0
    m = max(1, pad_to_multiple_of)
    while start < len(order):
        width = int(-(-lengths[order[start]] // m) * m) if sort else 0
        end = start
        while end < len(order) and end - start < max_batch_size:
            if not sort:
                width = max(width, int(-(-lengths[order[end]] // m) * m))
            if (end - start + 1) * width > max_batch_tokens and end > start:
                break
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def last_token_scores(model, input_ids, attention_mask, lengths, causal: bool):
    """s(x, y) for a right-padded batch: the scalar head on each sequence's last real token.

    For causal models the mask is not passed (right padding is invisible to earlier tokens), letting
    SDPA take its causal fast path; for others (or heads we do not recognise) the HF forward runs with
    the mask and picks the last non-pad token itself.
    """
    import torch

    head = getattr(model, "score", None)
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if head is None or base is None:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]
    out = base(input_ids=input_ids, attention_mask=None if causal else attention_mask, use_cache=False)
    h = out.last_hidden_state
    last = h[torch.arange(h.shape[0], device=h.device), (lengths - 1).to(h.device)]
    return head(last)[:, 0]


class HFScorer:
    """The default backend: a transformers model, length-sorted token-budget batches.

    ``dtype``: "auto" = bf16 on CUDA, fp32 on CPU. ``compile``: ``torch.compile(dynamic=True)`` on the
    base model (worth it on GPU for long runs; compile time is minutes on CPU).
    """

    def __init__(self, model_path: str, device: str = "auto", dtype: str = "auto", max_length: int = 512,
                 max_batch_tokens: int = 16384, max_batch_size: int = 256, pad_to_multiple_of: int = 8,
                 attn_implementation: str | None = "sdpa", compile: bool = False, trust_remote_code: bool = False,
                 model=None, tokenizer=None):
        from cwpo_ray.runtime import local_device, torch_dtype

        device = local_device(device)
        self.device, self.dtype = device, torch_dtype(dtype, device)
        self.max_length, self.max_batch_tokens, self.max_batch_size = max_length, max_batch_tokens, max_batch_size
        self.pad_to_multiple_of = pad_to_multiple_of
        self.tokenizer = tokenizer or load_tokenizer(model_path, trust_remote_code)
        self.model = model if model is not None else load_scorer_model(
            model_path, self.tokenizer, self.dtype, device, attn_implementation, trust_remote_code)
        self.causal = self.model.config.model_type in CAUSAL_MODEL_TYPES
        self.pad_id = self.model.config.pad_token_id
        self._forward = last_token_scores
        if compile:
            import torch

            self._forward = torch.compile(last_token_scores, dynamic=True)

    def score_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        import torch

        from cwpo_ray.student.data import pad_batch

        out = np.empty(len(ids), dtype=np.float32)
        if not len(ids):
            return out
        batches = plan_batches([len(x) for x in ids], self.max_batch_tokens, self.max_batch_size, self.pad_to_multiple_of)
        with torch.inference_mode():
            for idx in batches:
                input_ids, mask, lengths = pad_batch([ids[i] for i in idx], self.pad_id, self.pad_to_multiple_of)
                s = self._forward(self.model, input_ids.to(self.device, non_blocking=True),
                                  mask.to(self.device, non_blocking=True), lengths, self.causal)
                out[idx] = s.float().cpu().numpy()
        return out

    def score_texts(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[np.ndarray, int]:
        ids, n_trunc = encode_texts(self.tokenizer, prompts, responses, self.max_length)
        return self.score_ids(ids), n_trunc


class VLLMScorer:
    """vLLM's pooling runner on the same token ids; raw logits (``use_activation=False``).

    For architectures vLLM serves as sequence classifiers (Qwen2/Qwen3/Llama/Mistral/Gemma …
    ``*ForSequenceClassification``; OPT's head is not among them). Creating an engine needs the caller's
    ``if __name__ == "__main__":`` guard and, on CPU, ``VLLM_CPU_KVCACHE_SPACE`` (GiB).
    """

    def __init__(self, model_path: str, max_length: int = 512, dtype: str = "auto", enforce_eager: bool = True,
                 gpu_memory_utilization: float = 0.85, trust_remote_code: bool = False, tokenizer=None):
        import os

        from cwpo_ray.runtime import dtype_name, local_device, vllm_cpu_env

        device = local_device()
        if device == "cpu":
            for k, v in vllm_cpu_env().items():
                os.environ.setdefault(k, v)
        from vllm import LLM

        dtype = dtype_name(dtype, device)
        self.max_length = max_length
        self.tokenizer = tokenizer or load_tokenizer(model_path, trust_remote_code)
        from cwpo_ray.io import local_model_dir

        t0 = time.time()
        self.llm = LLM(model=local_model_dir(model_path), runner="pooling", dtype=dtype, max_model_len=max_length,
                       enforce_eager=enforce_eager, trust_remote_code=trust_remote_code,
                       gpu_memory_utilization=gpu_memory_utilization)
        log.info("vLLM pooling engine for %s up in %.1fs", model_path, time.time() - t0)

    def score_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        from vllm import PoolingParams, TokensPrompt

        if not len(ids):
            return np.empty(0, dtype=np.float32)
        prompts = [TokensPrompt(prompt_token_ids=list(x)) for x in ids]
        outs = self.llm.classify(prompts, pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
        return np.array([o.outputs.probs[0] for o in outs], dtype=np.float32)

    def score_texts(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[np.ndarray, int]:
        ids, n_trunc = encode_texts(self.tokenizer, prompts, responses, self.max_length)
        return self.score_ids(ids), n_trunc


def make_scorer(backend: str, model_path: str, **kw):
    """``backend``: "hf" (default) or "vllm"; ``kw`` goes to the backend's constructor. An option that
    backend does not have is an error (a typo must not silently do nothing)."""
    import inspect

    cls = {"hf": HFScorer, "vllm": VLLMScorer}[backend]
    unknown = sorted(set(kw) - set(inspect.signature(cls.__init__).parameters))
    if unknown:
        raise TypeError(f"make_scorer: the {backend!r} backend has no option(s) {', '.join(unknown)}")
    return cls(model_path, **kw)
