"""Sequence log-probs of response tokens without a full [B, T, V] fp32 logits tensor.

The backbone gives hidden states; only the positions whose *next* token is a response token are
gathered, and ``lm_head`` is applied to them in chunks of ``chunk_size`` tokens. Each chunk runs
under activation checkpointing, so autograd keeps only the chunk's inputs and the per-token
log-prob: peak extra memory is one chunk's logits (``chunk_size × V``), not ``B × T × V``.
Prompt and padding positions never reach ``lm_head`` at all.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


def _chunk_token_logp(h: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
    logits = lm_head(h)
    logits = logits if logits.dtype == torch.float64 else logits.float()  # fp32 (or fp64 in gradient checks)
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def response_logprobs(hidden: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor,
                      lm_head: nn.Module, chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ log p(response tokens) per sequence [B] in fp32, number of response tokens [B]).

    ``hidden`` [B, T, H] are the backbone's last hidden states for ``input_ids`` [B, T];
    ``response_mask`` [B, T] is 1 on response tokens (the targets), 0 on prompt and padding.
    """
    target_mask = response_mask[:, 1:].bool()
    b_idx, t_idx = target_mask.nonzero(as_tuple=True)
    h = hidden[:, :-1][b_idx, t_idx]  # [N, H]: the states that predict a response token
    y = input_ids[:, 1:][b_idx, t_idx]
    use_ckpt = torch.is_grad_enabled() and h.requires_grad
    parts = []
    for s in range(0, h.shape[0], chunk_size):
        hc, yc = h[s:s + chunk_size], y[s:s + chunk_size]
        parts.append(checkpoint(_chunk_token_logp, hc, yc, lm_head, use_reentrant=False) if use_ckpt
                     else _chunk_token_logp(hc, yc, lm_head))
    acc_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    tok = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=acc_dtype)
    seq = torch.zeros(input_ids.shape[0], dtype=acc_dtype, device=hidden.device).index_add(0, b_idx, tok)
    return seq, target_mask.sum(-1)


def reduce_logprobs(logp_sum: torch.Tensor, ntok: torch.Tensor, reduction: str) -> torch.Tensor:
    """``sum`` (the paper's equations) or ``mean`` (length-averaged, as TRL's IPO)."""
    if reduction == "sum":
        return logp_sum
    if reduction == "mean":
        return logp_sum / ntok.clamp(min=1).to(logp_sum.dtype)
    raise ValueError(f"unknown log-prob reduction {reduction!r}")


class SequenceLogprobs(nn.Module):
    """Wraps an HF causal LM: ``forward(input_ids, attention_mask, response_mask) -> (logp_sum, ntok)``.

    This module is what DeepSpeed wraps, so ZeRO-3's parameter hooks fire on the backbone and on
    ``lm_head`` as ordinary module calls. ``self.lm`` is the HF model (save it with
    ``save_pretrained``).
    """

    def __init__(self, lm: nn.Module, chunk_size: int = 1024):
        super().__init__()
        self.lm = lm
        self.chunk_size = chunk_size

    def forward(self, input_ids, attention_mask, response_mask):
        out = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = out[0] if not hasattr(out, "last_hidden_state") else out.last_hidden_state
        return response_logprobs(hidden, input_ids, response_mask, self.lm.get_output_embeddings(), self.chunk_size)


def full_logits_logprobs(lm: nn.Module, input_ids, attention_mask, response_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """The naive reference: full [B, T, V] logits → log_softmax → gather (tests and benchmarks only)."""
    logits = lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
    logits = logits if logits.dtype == torch.float64 else logits.float()
    logp = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    m = response_mask[:, 1:].to(logp.dtype)
    return (logp * m).sum(-1), response_mask[:, 1:].sum(-1)
