"""Gold rewards: the interface, the HF reward model behind it, and a factory from config.

A gold reward scores (prompt, response) pairs with one float each; higher is better. Three kinds:

* ``synthetic`` — the embedded task's programmatic r*(x, y)
  (:class:`cwpo_ray.synthetic.task.SyntheticGoldReward`).
* ``hf`` — an ``AutoModelForSequenceClassification`` reward model, scored by its raw logit (no
  sigmoid). Inputs are formatted the way the model was trained: ``chat`` (the tokenizer's chat
  template over user/assistant messages, e.g. Skywork-Reward-V2), ``pair`` (question/answer as a
  text pair, e.g. OpenAssistant/reward-model-deberta-v3-large-v2), or ``concat`` (prompt + response).
* ``steamshp`` — a SteamSHP judge (stanfordnlp/SteamSHP-flan-t5-large, the paper's judge for SHP): a
  FLAN-T5 model that reads ``POST: … RESPONSE A: … RESPONSE B: … Which response is better? RESPONSE``
  and answers ``A`` or ``B``. Scored the way its model card gives for one response: the response is
  RESPONSE A, RESPONSE B is ``.``, and the score is log P("A") at the first decoding step (any monotone
  function of P("A") ranks responses the same, which is all GRA uses).
"""
from __future__ import annotations

import re
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import Field, model_validator

from cwpo_ray.config import StrictModel

ENCODER_TYPES = {"bert", "roberta", "deberta", "deberta-v2", "electra", "xlm-roberta", "distilbert", "albert"}


@runtime_checkable
class GoldReward(Protocol):
    name: str

    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """One float64 gold reward per (prompt, response)."""
        ...


class GoldConfig(StrictModel):
    kind: Literal["synthetic", "hf", "steamshp"] = "synthetic"
    model: str | None = None  # hf / steamshp: hub id or folder, e.g. Skywork/Skywork-Reward-V2-Llama-3.1-8B
    input_format: Literal["auto", "chat", "pair", "concat"] = "auto"
    batch_size: int = Field(default=16, gt=0)
    max_length: int = Field(default=1024, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: str = "auto"  # auto: bfloat16 on cuda, float32 on cpu
    trust_remote_code: bool = False
    num_scorers: int = Field(default=1, ge=1)  # Ray Data actors (one GPU each on cuda)

    @model_validator(mode="after")
    def _model_for_hf(self):
        if self.kind in ("hf", "steamshp") and not self.model:
            raise ValueError(f"kind={self.kind} needs gold.model (a model name or path)")
        if self.kind == "synthetic" and self.model:
            raise ValueError("gold.model is not used by kind=synthetic (set kind=hf or kind=steamshp)")
        if self.kind != "hf" and self.input_format != "auto":
            raise ValueError(f"gold.input_format={self.input_format!r} applies to kind=hf only (SteamSHP has its own format)")
        return self


_TURN = re.compile(r"\n\n(Human|Assistant):")


def hh_to_messages(prompt: str, response: str) -> list[dict]:
    """HH-RLHF text (``\\n\\nHuman: ...\\n\\nAssistant:``) + response -> chat messages."""
    parts = _TURN.split(prompt)
    msgs: list[dict] = []
    if len(parts) == 1:  # no turn markers: one user message
        msgs.append({"role": "user", "content": prompt.strip()})
    else:
        if parts[0].strip():
            msgs.append({"role": "user", "content": parts[0].strip()})
        for who, text in zip(parts[1::2], parts[2::2]):
            if text.strip():
                msgs.append({"role": "user" if who == "Human" else "assistant", "content": text.strip()})
    msgs.append({"role": "assistant", "content": response.strip()})
    return msgs


class HFRewardModel:
    """A sequence-classification reward model; ``score`` returns its raw logit per pair (batched)."""

    def __init__(self, model: str, input_format: str = "auto", batch_size: int = 16, max_length: int = 1024,
                 device: str = "cpu", dtype: str = "auto", trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from cwpo_ray.io import local_model_dir
        from cwpo_ray.runtime import torch_dtype

        self.torch, self.device, self.batch_size, self.max_length = torch, device, batch_size, max_length
        self.name = f"hf:{model}"
        local = local_model_dir(model)  # a URI's folder, downloaded to this node's cache
        self.tok = AutoTokenizer.from_pretrained(local, trust_remote_code=trust_remote_code)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            local, dtype=torch_dtype(dtype, device), trust_remote_code=trust_remote_code).to(device).eval()
        if self.model.config.num_labels != 1:
            raise ValueError(f"gold reward model {model} has num_labels={self.model.config.num_labels}, expected 1")
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        if self.model.config.pad_token_id is None:  # decoder heads pool the last non-pad token
            self.model.config.pad_token_id = self.tok.pad_token_id
        if input_format == "auto":
            if getattr(self.tok, "chat_template", None):
                input_format = "chat"
            elif self.model.config.model_type in ENCODER_TYPES:
                input_format = "pair"
            else:
                input_format = "concat"
        self.input_format = input_format

    def _encode(self, prompts: list[str], responses: list[str]):
        kw = dict(padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        if self.input_format == "pair":
            return self.tok(prompts, responses, **kw)
        if self.input_format == "chat":
            texts = [self.tok.apply_chat_template(hh_to_messages(p, r), tokenize=False) for p, r in zip(prompts, responses)]
            return self.tok(texts, add_special_tokens=False, **kw)  # the template already has them
        return self.tok([p + r for p, r in zip(prompts, responses)], **kw)

    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        torch = self.torch
        out = np.empty(len(prompts), dtype=np.float64)
        order = np.argsort([len(p) + len(r) for p, r in zip(prompts, responses)])  # less padding
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            enc = self._encode([prompts[j] for j in idx], [responses[j] for j in idx]).to(self.device)
            with torch.no_grad():
                logits = self.model(**enc).logits[:, 0].float().cpu().numpy()
            out[idx] = logits
        return out


class SteamSHPJudge:
    """A SteamSHP seq2seq judge as a pointwise gold reward: log P("A") for (post, response, ".")."""

    def __init__(self, model: str, batch_size: int = 16, max_length: int = 512, device: str = "cpu",
                 dtype: str = "auto", trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from cwpo_ray.io import local_model_dir
        from cwpo_ray.runtime import torch_dtype

        self.torch, self.device, self.batch_size, self.max_length = torch, device, batch_size, max_length
        self.name = f"steamshp:{model}"
        local = local_model_dir(model)  # a URI's folder, downloaded to this node's cache
        self.tok = AutoTokenizer.from_pretrained(local, trust_remote_code=trust_remote_code)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(
            local, dtype=torch_dtype(dtype, device), trust_remote_code=trust_remote_code).to(device).eval()
        ids = self.tok("A", add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ValueError(f"steamshp judge {model}: 'A' is {len(ids)} tokens in its tokenizer, expected 1")
        self.a_id = ids[0]
        self.start = self.model.config.decoder_start_token_id
        if self.start is None:
            raise ValueError(f"steamshp judge {model}: the model config has no decoder_start_token_id")

    def _ids(self, post: str, response: str) -> list[int]:
        """Token ids of the judge's input; a post too long for ``max_length`` loses its beginning (the
        response and the question are always kept whole, as far as they fit)."""
        one_line = lambda s: " ".join(s.split())  # noqa: E731 - the card's inputs contain no newlines
        head = self.tok("POST: " + one_line(post), add_special_tokens=False).input_ids
        tail = self.tok(f" \n\n RESPONSE A: {one_line(response)}\n\n RESPONSE B: .\n\n Which response is better? RESPONSE",
                        add_special_tokens=True).input_ids  # T5 appends </s>
        room = self.max_length - len(tail)
        return (head[-room:] if room > 0 else []) + tail[-self.max_length:]

    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        torch = self.torch
        ids = [self._ids(p, r) for p, r in zip(prompts, responses)]
        out = np.empty(len(ids), dtype=np.float64)
        order = np.argsort([len(x) for x in ids])  # less padding
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            width = max(len(ids[j]) for j in idx)
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, j in enumerate(idx):  # right padding, as T5 expects
                input_ids[row, :len(ids[j])] = torch.tensor(ids[j])
                mask[row, :len(ids[j])] = 1
            dec = torch.full((len(idx), 1), self.start, dtype=torch.long)
            with torch.no_grad():
                logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                    decoder_input_ids=dec.to(self.device)).logits[:, 0].float()
            out[idx] = torch.log_softmax(logits, dim=-1)[:, self.a_id].cpu().numpy()
        return out


def build_gold_reward(cfg: GoldConfig, device: str = "cpu") -> GoldReward:
    """The gold reward a config asks for (``device`` is the resolved one for HF models)."""
    if cfg.kind == "synthetic":
        from cwpo_ray.synthetic.task import SyntheticGoldReward

        return SyntheticGoldReward()
    if cfg.kind == "steamshp":
        return SteamSHPJudge(cfg.model, batch_size=cfg.batch_size, max_length=cfg.max_length, device=device,
                             dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    return HFRewardModel(cfg.model, input_format=cfg.input_format, batch_size=cfg.batch_size,
                         max_length=cfg.max_length, device=device, dtype=cfg.dtype,
                         trust_remote_code=cfg.trust_remote_code)
