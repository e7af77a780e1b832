"""Adapters from the real preference-data formats to the canonical pair.

Each adapter is a plain function ``row (dict) -> (prompt, chosen_or_a, rejected_or_b, label)`` that
raises :class:`BadRow` with a short reason when the row cannot be used. They are pure Python so they
are unit-tested on small files written in each source's real format.
"""
from __future__ import annotations

from collections.abc import Callable

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"


class BadRow(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


# (prompt, response_a, response_b, human_label) where human_label in {"a", "b", None}
Adapted = tuple[str, str, str, "str | None"]


def _get(row: dict, col: str):
    if col not in row:
        raise BadRow(f"missing_column:{col}", f"row has columns {sorted(row)[:12]}")
    return row[col]


def _text(row: dict, col: str) -> str:
    v = _get(row, col)
    if v is None:
        raise BadRow(f"null_field:{col}")
    if not isinstance(v, str):
        raise BadRow(f"non_string:{col}", f"got {type(v).__name__}")
    return v


def split_hh_transcript(transcript: str) -> tuple[str, str]:
    """Split an HH-RLHF transcript into (prompt up to and including the last ``\\n\\nAssistant:``,
    final assistant response)."""
    idx = transcript.rfind(ASSISTANT)
    if idx < 0:
        raise BadRow("hh_no_assistant_turn", "no '\\n\\nAssistant:' in transcript")
    cut = idx + len(ASSISTANT)
    return transcript[:cut], transcript[cut:]


def adapt_hh_rlhf(row: dict) -> Adapted:
    """Anthropic HH-RLHF: full ``chosen``/``rejected`` transcripts sharing every turn but the last."""
    p_c, chosen = split_hh_transcript(_text(row, "chosen"))
    p_r, rejected = split_hh_transcript(_text(row, "rejected"))
    if p_c != p_r:
        raise BadRow("hh_prompt_mismatch", "chosen and rejected transcripts differ before the last assistant turn")
    if HUMAN not in p_c:
        raise BadRow("hh_no_human_turn")
    return p_c, chosen.strip(), rejected.strip(), "a"


def adapt_prompt_chosen_rejected(row: dict) -> Adapted:
    """TL;DR preference data and any prompt/chosen/rejected string columns (TRL's format)."""
    return _text(row, "prompt"), _text(row, "chosen"), _text(row, "rejected"), "a"


def _last_assistant(messages, col: str) -> str:
    if not isinstance(messages, list) or not messages:
        raise BadRow(f"bad_messages:{col}", "expected a non-empty list of messages")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise BadRow(f"bad_messages:{col}", "last message is not an assistant turn")
    content = last.get("content")
    if not isinstance(content, str):
        raise BadRow(f"non_string:{col}.content")
    return content


def adapt_ultrafeedback(row: dict) -> Adapted:
    """UltraFeedback binarized: ``prompt`` + ``chosen``/``rejected`` message lists (user, assistant)."""
    prompt = _text(row, "prompt")
    return prompt, _last_assistant(_get(row, "chosen"), "chosen"), _last_assistant(_get(row, "rejected"), "rejected"), "a"


def adapt_shp(row: dict) -> Adapted:
    """Stanford Human Preferences (stanfordnlp/SHP): the post ``history`` is the prompt, the two comments
    ``human_ref_A`` / ``human_ref_B`` the responses, ``labels`` 1 when A is preferred and 0 when B is."""
    raw = _get(row, "labels")
    label = {1: "a", 0: "b"}.get(raw) if isinstance(raw, int) else None  # bool is an int: True = 1
    if label is None:
        raise BadRow("bad_label", f"labels {raw!r} is not 1 (A preferred) or 0 (B preferred)")
    return _text(row, "history"), _text(row, "human_ref_A"), _text(row, "human_ref_B"), label


def make_generic_adapter(columns: dict[str, str], label_optional: bool = False) -> Callable[[dict], Adapted]:
    """Any table with a column mapping. Either ``{prompt, chosen, rejected}`` (label implied) or
    ``{prompt, response_a, response_b[, label]}`` where the label column holds a/b, 0/1 or A/B."""
    if {"chosen", "rejected"} <= set(columns):
        pc, cc, rc = columns.get("prompt", "prompt"), columns["chosen"], columns["rejected"]

        def adapt(row: dict) -> Adapted:
            return _text(row, pc), _text(row, cc), _text(row, rc), "a"

        return adapt
    pc = columns.get("prompt", "prompt")
    ac, bc = columns.get("response_a", "response_a"), columns.get("response_b", "response_b")
    lc = columns.get("label")

    def adapt(row: dict) -> Adapted:
        label = None
        if lc is not None and not (label_optional and lc not in row):
            raw = _get(row, lc)
            label = {"a": "a", "b": "b", "A": "a", "B": "b", 0: "a", 1: "b", None: None}.get(raw, "?")
            if label == "?":
                raise BadRow("bad_label", f"label {raw!r} is not one of a/b/0/1")
        return _text(row, pc), _text(row, ac), _text(row, bc), label

    return adapt


ADAPTERS: dict[str, Callable[[dict], Adapted]] = {
    "hh_rlhf": adapt_hh_rlhf,
    "tldr": adapt_prompt_chosen_rejected,
    "ultrafeedback": adapt_ultrafeedback,
    "shp": adapt_shp,
    # synthetic task rows are already canonical
    "canonical": make_generic_adapter({"prompt": "prompt", "response_a": "response_a", "response_b": "response_b", "label": "human_label"},
                                      label_optional=True),
}


def required_columns(fmt: str, columns: dict[str, str] | None = None) -> list[str]:
    """The columns every row of a ``fmt`` source needs (a file without one of them is quarantined whole,
    from its schema, before any row is read)."""
    if fmt == "hh_rlhf":
        return ["chosen", "rejected"]
    if fmt in ("tldr", "ultrafeedback"):
        return ["prompt", "chosen", "rejected"]
    if fmt == "shp":
        return ["history", "human_ref_A", "human_ref_B", "labels"]
    if fmt == "canonical":  # human_label is optional
        return ["prompt", "response_a", "response_b"]
    columns = columns or {}
    if {"chosen", "rejected"} <= set(columns):
        return [columns.get("prompt", "prompt"), columns["chosen"], columns["rejected"]]
    cols = [columns.get("prompt", "prompt"), columns.get("response_a", "response_a"), columns.get("response_b", "response_b")]
    return cols + ([columns["label"]] if "label" in columns else [])


def get_adapter(fmt: str, columns: dict[str, str] | None = None) -> Callable[[dict], Adapted]:
    if fmt == "generic":
        return make_generic_adapter(columns or {})
    return ADAPTERS[fmt]
