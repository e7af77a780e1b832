"""Pure core of `prepare`: raw rows -> canonical pairs with a split, or quarantine with a reason.

Works on plain Python rows and returns one Arrow table per batch whose ``split`` column is one of
labeled / unlabeled / validation / test / quarantine; the Ray stage only reads, maps this, and writes.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cwpo_ray.prepare.adapters import BadRow, get_adapter
from cwpo_ray.schema import assign_split, pair_id, quarantine_row, validate_pair

BATCH_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()), ("prompt", pa.string()), ("response_a", pa.string()),
        ("response_b", pa.string()), ("human_label", pa.string()), ("source", pa.string()),
        ("split", pa.string()), ("reason", pa.string()), ("detail", pa.string()), ("raw", pa.string()),
    ]
)


def parse_json_lines(lines: Iterable[bytes], locs: Iterable[str]) -> Iterable[tuple[dict | None, str | None, str, str]]:
    """Decode + parse jsonl lines; yields (row | None, reason | None, detail, raw)."""
    for line, loc in zip(lines, locs):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield None, "bad_utf8", f"{loc}: {e.reason} at byte {e.start}", line.decode("utf-8", "replace")
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            yield None, "bad_json", f"{loc}: {e.msg}", text
            continue
        if not isinstance(row, dict):
            yield None, "bad_json", f"{loc}: top level is {type(row).__name__}, not an object", text
            continue
        yield row, None, loc, text


@lru_cache(maxsize=4)
def _load_tokenizer(name: str):
    from cwpo_ray.annotator.scoring import auto_tokenizer

    return auto_tokenizer(name)


def token_lengths(tokenizer: str, texts: list[str]) -> list[int]:
    tok = _load_tokenizer(tokenizer)
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


class Normalizer:
    """rows -> one BATCH_SCHEMA table. Holds the adapter, split and length-filter settings."""

    def __init__(self, fmt: str, source: str, columns: dict[str, str], test_fraction: float,
                 labeled_fraction: float, split_seed: int, tokenizer: str | None, max_length: int | None,
                 validation_fraction: float = 0.0, unlabeled_fraction: float | None = None):
        self.adapt: Callable = get_adapter(fmt, columns)
        self.source = source
        self.test_fraction, self.labeled_fraction, self.split_seed = test_fraction, labeled_fraction, split_seed
        self.validation_fraction, self.unlabeled_fraction = validation_fraction, unlabeled_fraction
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, items: Iterable[tuple[dict | None, str | None, str, str]]) -> pa.Table:
        rows: list[dict] = []  # BATCH_SCHEMA rows; a missing column is null
        kept: list[int] = []

        def quarantine(reason: str, detail: str, raw: str) -> dict:
            return {"split": "quarantine", **quarantine_row(self.source, reason, detail, raw)}

        for row, reason, detail, raw in items:
            if row is None:
                rows.append(quarantine(reason, detail, raw))
                continue
            try:
                prompt, a, b, label = self.adapt(row)
            except BadRow as e:
                rows.append(quarantine(e.reason, f"{detail}: {e.detail}" if e.detail else detail, raw))
                continue
            bad = validate_pair(prompt, a, b, label)
            if bad:
                rows.append(quarantine(bad, detail, raw))
                continue
            pid = pair_id(prompt, a, b)
            # Canonical order: put the two responses in a content-determined order so that a source
            # which always lists the preferred response first does not teach a position bias.
            if label is not None and int(pid[-1], 16) % 2 == 1:
                a, b, label = b, a, ("b" if label == "a" else "a")
            kept.append(len(rows))
            rows.append({"pair_id": pid, "prompt": prompt, "response_a": a, "response_b": b, "human_label": label,
                         "source": self.source,
                         "split": assign_split(prompt, self.test_fraction, self.labeled_fraction, self.split_seed,
                                               self.validation_fraction, self.unlabeled_fraction)})

        if self.tokenizer and self.max_length and kept:
            la = token_lengths(self.tokenizer, [rows[i]["prompt"] + rows[i]["response_a"] for i in kept])
            lb = token_lengths(self.tokenizer, [rows[i]["prompt"] + rows[i]["response_b"] for i in kept])
            for i, n_a, n_b in zip(kept, la, lb):
                if max(n_a, n_b) > self.max_length:
                    r = rows[i]
                    rows[i] = quarantine("too_long", f"{max(n_a, n_b)} tokens > max_length={self.max_length}",
                                         r["prompt"] + " || " + r["response_a"] + " || " + r["response_b"])
        return pa.Table.from_pylist(rows, schema=BATCH_SCHEMA)


# ---- exact duplicates (same pair_id) ------------------------------------------------------------------
def pair_id_keys(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """pair_ids as uint64 keys (8 bytes a row, for de-duplicating millions of pairs in one process).

    ``schema.pair_id`` is 16 hex digits, so the mapping is exact; any other id is hashed (blake2b, 64 bits)."""
    if len(ids) == 0:
        return np.empty(0, np.uint64)
    lengths = pc.min_max(pc.utf8_length(ids))
    values = ids.to_pylist()
    if lengths["min"].as_py() == lengths["max"].as_py() == 16:
        try:
            return np.frombuffer(bytes.fromhex("".join(values)), dtype=">u8").astype(np.uint64)
        except ValueError:  # not hex
            pass
    return np.array([int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "little")
                     for v in values], dtype=np.uint64)


def duplicate_mask(keys: np.ndarray) -> np.ndarray:
    """True for every row whose key already occurred at an earlier row (the first occurrence is kept)."""
    mask = np.ones(len(keys), dtype=bool)
    if len(keys):
        _, first = np.unique(keys, return_index=True)  # index of each key's first occurrence
        mask[first] = False
    return mask
