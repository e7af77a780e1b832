"""The canonical Arrow schemas and the per-row rules every stage shares.

A *pair* is (prompt, response_a, response_b) with an optional human label saying which response is
better. ``pair_id`` is a stable hash of the content (independent of the order of the two responses),
so outputs of every stage can be joined, de-duplicated and resumed by it.
"""
from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

PAIR_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("response_a", pa.string(), nullable=False),
        pa.field("response_b", pa.string(), nullable=False),
        pa.field("human_label", pa.string()),  # "a" | "b" | null
        pa.field("source", pa.string(), nullable=False),
    ]
)

# Where rows that could not be used go, with a reason; never dropped silently.
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("raw", pa.string()),  # the offending input, truncated, for a human to read
    ]
)

# Output of `annotate`: TRL's prompt/chosen/rejected columns plus the CW-PO confidence.
PREFERENCE_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("chosen", pa.string(), nullable=False),
        pa.field("rejected", pa.string(), nullable=False),
        pa.field("score_chosen", pa.float32()),
        pa.field("score_rejected", pa.float32()),
        pa.field("confidence", pa.float32()),
        pa.field("human_label_agrees", pa.bool_()),
    ]
)

# ``unused``: training prompts in neither D_labeled nor D_unlabeled (only with prepare.unlabeled_fraction,
# which fixes D_unlabeled while the labeled fraction varies, as in the paper's Figure 3).
SPLITS = ("labeled", "unlabeled", "validation", "test", "unused")
RAW_TRUNCATE = 2000


def pair_id(prompt: str, response_a: str, response_b: str) -> str:
    """Stable 16-hex-digit id of a pair's content; swapping the two responses keeps the id."""
    lo, hi = sorted((response_a, response_b))
    h = hashlib.blake2b(digest_size=8)
    for part in (prompt, lo, hi):
        b = part.encode("utf-8", "surrogatepass")
        h.update(struct.pack("<Q", len(b)))
        h.update(b)
    return h.hexdigest()


def _unit(seed: int, salt: str, text: str) -> float:
    d = hashlib.blake2b(f"{seed}\x1f{salt}\x1f".encode() + text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(d, "little") / 2**64


def assign_split(prompt: str, test_fraction: float, labeled_fraction: float, seed: int = 0,
                 validation_fraction: float = 0.0, unlabeled_fraction: float | None = None) -> str:
    """Deterministic split by a hash of the *prompt* (so no test or validation prompt leaks into training).

    ``test_fraction`` of prompts go to test and ``validation_fraction`` (of all prompts) to validation,
    where hyperparameters are selected; of the rest, ``labeled_fraction`` keep their human labels for
    the annotator and the remainder form the unlabeled pool. Independent of row order; the test split
    does not depend on ``validation_fraction``.

    With ``unlabeled_fraction`` the unlabeled pool is fixed instead: the training prompts whose draw ``u``
    is at least ``1 - unlabeled_fraction`` — the same prompts whatever ``labeled_fraction`` is — while
    ``u < labeled_fraction`` are labeled and any between are ``unused`` (``labeled_fraction +
    unlabeled_fraction <= 1``). Growing ``labeled_fraction`` then only adds labeled prompts.
    """
    if _unit(seed, "test", prompt) < test_fraction:
        return "test"
    if validation_fraction > 0 and _unit(seed, "validation", prompt) < validation_fraction / (1.0 - test_fraction):
        return "validation"
    u = _unit(seed, "labeled", prompt)
    if u < labeled_fraction:
        return "labeled"
    if unlabeled_fraction is None or u >= 1.0 - unlabeled_fraction:
        return "unlabeled"
    return "unused"


def _bad_text(value: object, name: str) -> str | None:
    if value is None:
        return f"null_field:{name}"
    if not isinstance(value, str):
        return f"non_string:{name}"
    if not value.strip():
        return f"empty_field:{name}"
    if "\ufffd" in value:
        return f"bad_utf8:{name}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from a surrogateescape decode
        return f"bad_utf8:{name}"
    return None


def validate_pair(prompt: object, response_a: object, response_b: object, human_label: object = None) -> str | None:
    """Return why a pair is unusable (a short machine-readable reason), or None if it is fine."""
    for value, name in ((prompt, "prompt"), (response_a, "response_a"), (response_b, "response_b")):
        reason = _bad_text(value, name)
        if reason:
            return reason
    if response_a.strip() == response_b.strip():  # type: ignore[union-attr]
        return "identical_responses"
    if human_label not in (None, "a", "b"):
        return "bad_label"
    return None


TEXT_FIELDS = ("prompt", "response_a", "response_b")


@functools.cache
def _py_whitespace() -> str:
    """The characters Python's ``str.strip()`` removes (``str.isspace``): the Arrow rules trim exactly
    what :func:`validate_pair` trims."""
    return "".join(c for c in map(chr, range(0x110000)) if c.isspace())


def pair_reasons(table: pa.Table) -> pa.Array:
    """:func:`validate_pair` for every row of a PAIR_SCHEMA table at once, in Arrow compute (no per-row
    Python): a string array with each row's reason, null where the row is fine. Same reasons, same
    precedence (prompt, response_a, response_b; then identical responses; then the label). Arrow strings
    are valid UTF-8, so a lone surrogate (``bad_utf8`` in the row rule) cannot occur in a table."""
    conds, reasons = [], []
    trimmed, whitespace = {}, _py_whitespace()
    for name in TEXT_FIELDS:
        col = table.column(name)
        trimmed[name] = pc.utf8_trim(col, characters=whitespace)
        conds += [pc.is_null(col), pc.equal(trimmed[name], ""), pc.match_substring(col, "\ufffd")]
        reasons += [f"null_field:{name}", f"empty_field:{name}", f"bad_utf8:{name}"]
    conds.append(pc.equal(trimmed["response_a"], trimmed["response_b"]))
    reasons.append("identical_responses")
    label = table.column("human_label")
    conds.append(pc.and_(pc.is_valid(label), pc.invert(pc.is_in(label, pa.array(["a", "b"])))))
    reasons.append("bad_label")
    conds = [pc.fill_null(c, False) for c in conds]  # a null operand (a null field) is "not this reason"
    values = [pa.scalar(r) for r in reasons]
    cond = pc.make_struct(*conds, field_names=[str(i) for i in range(len(conds))])
    out = pc.case_when(cond, *values)
    return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out


def truncate_raw(obj: object) -> str:
    s = obj if isinstance(obj, str) else repr(obj)
    return s if len(s) <= RAW_TRUNCATE else s[:RAW_TRUNCATE] + "…"


def quarantine_row(source: str | None, reason: str, detail: str = "", raw: object = None) -> dict:
    """One QUARANTINE_SCHEMA row, the only way any stage builds one. ``raw``: the offending input (a
    string, or any object: its repr), truncated; None (a whole file) stays null."""
    return {"source": source, "reason": reason, "detail": detail, "raw": None if raw is None else truncate_raw(raw)}


def quarantine_table(rows: Iterable[dict]) -> pa.Table:
    """:func:`quarantine_row` rows as a QUARANTINE_SCHEMA table (no rows: an empty one)."""
    return pa.Table.from_pylist(list(rows), schema=QUARANTINE_SCHEMA)
