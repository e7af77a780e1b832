"""Student training data: PREFERENCE_SCHEMA rows → validated, weighted, tokenized, length-bucketed batches.

Pure pyarrow / python / torch; the Ray Data plumbing lives in :mod:`cwpo_ray.student.stage`.
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from cwpo_ray.schema import PREFERENCE_SCHEMA, quarantine_row, quarantine_table, validate_pair
from cwpo_ray.student.losses import pair_weights

REF_COLUMNS = ("ref_chosen_logp", "ref_rejected_logp", "chosen_ntok", "rejected_ntok")


def human_pairs_to_preferences(table: pa.Table, source: str = "human_pairs") -> tuple[pa.Table, pa.Table]:
    """PAIR_SCHEMA rows with a human label → PREFERENCE_SCHEMA (confidence 1.0, no scores) for Human-DPO.

    Rows without a usable label or with bad text go to the quarantine table with a reason.
    """
    good, bad = [], []
    for row in table.to_pylist():
        reason = validate_pair(row.get("prompt"), row.get("response_a"), row.get("response_b"), row.get("human_label"))
        if reason is None and row.get("human_label") is None:
            reason = "no_human_label"
        if reason:
            bad.append(quarantine_row(source, reason, raw=row))
            continue
        a_wins = row["human_label"] == "a"
        good.append({"pair_id": row["pair_id"], "prompt": row["prompt"],
                     "chosen": row["response_a"] if a_wins else row["response_b"],
                     "rejected": row["response_b"] if a_wins else row["response_a"],
                     "score_chosen": None, "score_rejected": None, "confidence": 1.0, "human_label_agrees": True})
    return pa.Table.from_pylist(good, schema=PREFERENCE_SCHEMA), quarantine_table(bad)


def validate_preferences(table: pa.Table, needs_scores: bool = False, source: str = "preferences") -> tuple[pa.Table, pa.Table]:
    """Split PREFERENCE_SCHEMA rows into (usable, quarantined-with-reason)."""
    keep, bad = [], []
    rows = table.to_pylist()
    for i, row in enumerate(rows):
        reason, detail = validate_pair(row.get("prompt"), row.get("chosen"), row.get("rejected")), ""
        if reason:
            reason = reason.replace("response_a", "chosen").replace("response_b", "rejected")
        elif row.get("confidence") is None or not math.isfinite(row["confidence"]) or not -1e-6 <= row["confidence"] <= 1 + 1e-6:
            reason, detail = "bad_confidence", repr(row.get("confidence"))
        elif needs_scores and (row.get("score_chosen") is None or row.get("score_rejected") is None
                               or not math.isfinite(row["score_chosen"] - row["score_rejected"])):
            reason = "missing_scores"
        if reason:
            bad.append(quarantine_row(source, reason, detail, row))
        else:
            keep.append(i)
    good = table.take(pa.array(keep, pa.int64())) if len(keep) < table.num_rows else table
    return good, quarantine_table(bad)


def add_weights(table: pa.Table, scheme: str, threshold: float | None = None) -> pa.Table:
    """Append the per-pair ``weight`` column (float32) for ``scheme`` (see :func:`pair_weights`)."""
    conf = table.column("confidence").to_numpy(zero_copy_only=False).astype(np.float32)
    delta = None
    if scheme.endswith("delta"):
        delta = pc.subtract(table.column("score_chosen"), table.column("score_rejected")).to_numpy(zero_copy_only=False)
    w = pair_weights(scheme, confidence=conf, delta=delta, threshold=threshold).numpy().astype(np.float32)
    return table.append_column("weight", pa.array(w, pa.float32()))


class PairEncoder:
    """Tokenizes (prompt, response) with an exact prompt/response boundary (like TRL).

    prompt: ``tokenizer(prompt)`` (the tokenizer's own special tokens), left-truncated to
    ``max_prompt_length``; response: tokens + EOS, right-truncated to fit ``max_length``.
    """

    def __init__(self, tokenizer, max_length: int, max_prompt_length: int):
        self.tok = tokenizer
        self.max_length = max_length
        self.max_prompt_length = min(max_prompt_length, max_length - 1)
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def encode(self, prompts: list[str], responses: list[str]) -> list[tuple[list[int], int]]:
        """[(ids, prompt_len)] per row."""
        p_ids = self.tok(list(prompts), add_special_tokens=True)["input_ids"]
        r_ids = self.tok(list(responses), add_special_tokens=False)["input_ids"]
        out = []
        for p, r in zip(p_ids, r_ids):
            p = p[-self.max_prompt_length:]
            r = (list(r) + ([self.eos] if self.eos is not None else []))[: self.max_length - len(p)]
            out.append((list(p) + r, len(p)))
        return out


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int, pad_to_multiple_of: int = 8):
    """Right-padded ``input_ids`` [B, L], ``attention_mask`` [B, L] and ``lengths`` [B] (torch int64); L is
    the longest length rounded up to a multiple of ``pad_to_multiple_of``. The one padding of the package:
    annotator scoring and BT batches, student batches (:func:`pad_sequences`), synthetic pretraining."""
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
    m = max(1, pad_to_multiple_of)
    width = int(-(-int(lengths.max()) // m) * m)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
    attention_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    return input_ids, attention_mask, lengths


def pad_sequences(seqs: list[tuple[list[int], int]], pad_id: int, multiple: int) -> dict[str, torch.Tensor]:
    """[(ids, prompt_len)] -> right-padded input_ids, attention_mask and response_mask (1 after the prompt)."""
    ids, attn, _ = pad_batch([s for s, _ in seqs], pad_id, multiple)
    prompt_len = torch.tensor([p for _, p in seqs], dtype=torch.long)
    resp = attn * (torch.arange(ids.shape[1])[None, :] >= prompt_len[:, None])
    return {"input_ids": ids, "attention_mask": attn, "response_mask": resp}


def collate_pairs(rows: list[dict], pad_id: int, multiple: int = 8) -> dict[str, torch.Tensor]:
    """Rows with ``chosen_enc``/``rejected_enc`` (+ ``weight``, optional ref columns) → one batch.

    input_ids is [2B, T]: the B chosen sequences then the B rejected ones (one forward, like TRL's
    concatenated forward).
    """
    batch = pad_sequences([r["chosen_enc"] for r in rows] + [r["rejected_enc"] for r in rows], pad_id, multiple)
    batch["weight"] = torch.tensor([float(r.get("weight", 1.0)) for r in rows], dtype=torch.float32)
    if all(c in rows[0] for c in REF_COLUMNS):
        for c in REF_COLUMNS:
            batch[c] = torch.tensor([float(r[c]) for r in rows], dtype=torch.float32)
    return batch


def collate_sft(rows: list[dict], pad_id: int, multiple: int = 8) -> dict[str, torch.Tensor]:
    return pad_sequences([r["chosen_enc"] for r in rows], pad_id, multiple)


def length_buckets(rows: Iterable[dict], batch_size: int, window: int, seed: int = 0,
                   length=lambda r: len(r["chosen_enc"][0]) + len(r.get("rejected_enc", ([], 0))[0])) -> Iterator[list[dict]]:
    """Group rows of similar length: take ``window`` batches' worth, sort by length, cut, shuffle the cuts.

    Every row is yielded exactly once; the number of batches depends only on the number of rows, so
    workers with equal shards take the same number of steps.
    """
    rng = random.Random(seed)
    buf: list[dict] = []

    def flush():
        buf.sort(key=length)
        cuts = [buf[i: i + batch_size] for i in range(0, len(buf), batch_size)]
        rng.shuffle(cuts)
        return cuts

    for r in rows:
        buf.append(r)
        if len(buf) >= batch_size * window:
            yield from flush()
            buf = []
    if buf:
        yield from flush()


def encode_rows(batch: dict, enc: PairEncoder, with_rejected: bool = True) -> list[dict]:
    """A columnar batch (numpy / lists) → row dicts with ``chosen_enc`` / ``rejected_enc``."""
    n = len(batch["prompt"])
    prompts = [str(x) for x in batch["prompt"]]
    ch = enc.encode(prompts, [str(x) for x in batch["chosen"]])
    rj = enc.encode(prompts, [str(x) for x in batch["rejected"]]) if with_rejected else [None] * n
    rows = []
    for i in range(n):
        row = {"chosen_enc": ch[i], "rejected_enc": rj[i]}
        for c in ("pair_id", "weight", *REF_COLUMNS):
            if c in batch:
                row[c] = batch[c][i]
        rows.append(row)
    if not with_rejected:
        for r in rows:
            del r["rejected_enc"]
    return rows
