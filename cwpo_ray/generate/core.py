"""Pure pieces of generation: request seeds, request expansion, pairing, and the HF fallback backend.

Nothing here needs Ray or vLLM; :mod:`cwpo_ray.generate.engines` hands these to Ray Data.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
from typing import Any

import pyarrow as pa

from cwpo_ray.prepare.core import BATCH_SCHEMA
from cwpo_ray.schema import pair_id, quarantine_row, validate_pair

log = logging.getLogger(__name__)

# One generation request per row; what every backend returns adds the CANDIDATE_SCHEMA columns.
REQUEST_SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("prompt", pa.string()), ("candidate_idx", pa.int32()), ("seed", pa.int64()),
])
CANDIDATE_SCHEMA = pa.schema([
    *REQUEST_SCHEMA,
    ("response", pa.string()), ("num_tokens", pa.int32()), ("finish_reason", pa.string()),
    ("backend", pa.string()), ("model", pa.string()),
    ("fallback_reason", pa.string()),  # why vLLM was not used although asked for (null otherwise)
])


def prompt_id(prompt: str) -> str:
    """Stable 16-hex-digit id of a prompt (joins responses of several models to the same prompt)."""
    return hashlib.blake2b(prompt.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def request_seed(base_seed: int, prompt: str, candidate_idx: int) -> int:
    """Seed of one request: a function of (base seed, prompt, candidate index) only.

    So results do not depend on batching or on the number of engines, and two models given the same
    base seed sample candidate j of a prompt with the same seed (evaluate's ``seeding: paired``).
    """
    h = hashlib.blake2b(f"{base_seed}\x1f{candidate_idx}\x1f".encode() + prompt.encode("utf-8", "surrogatepass"),
                        digest_size=8)
    return int.from_bytes(h.digest(), "little") & 0x7FFFFFFF


def model_seed(base_seed: int, model_name: str) -> int:
    """A base seed of its own for each evaluated model: independent samples from different models."""
    h = hashlib.blake2b(f"{base_seed}\x1fmodel\x1f{model_name}".encode(), digest_size=4).digest()
    return int.from_bytes(h, "little") & 0x7FFFFFFF


def expand_requests(prompts: pa.Table, k: int, base_seed: int) -> pa.Table:
    """``prompt`` rows -> ``k`` REQUEST_SCHEMA rows per prompt (candidate 0..k-1, each with its seed)."""
    out: dict[str, list] = {f.name: [] for f in REQUEST_SCHEMA}
    for p in prompts.column("prompt").to_pylist():
        pid = prompt_id(p)
        for j in range(k):
            out["prompt_id"].append(pid)
            out["prompt"].append(p)
            out["candidate_idx"].append(j)
            out["seed"].append(request_seed(base_seed, p, j))
    return pa.table(out, schema=REQUEST_SCHEMA)


def sampling_kwargs(sampling: dict[str, Any], seed: int) -> dict[str, Any]:
    """vLLM ``SamplingParams`` kwargs of one request (from a SamplingConfig dump)."""
    kw: dict[str, Any] = dict(temperature=sampling["temperature"], top_p=sampling["top_p"],
                              max_tokens=sampling["max_new_tokens"], seed=int(seed))
    if sampling.get("stop"):
        kw["stop"] = list(sampling["stop"])
    return kw


def candidate_pairs(k: int, pairing: str) -> list[tuple[int, int]]:
    """Which candidate indices form pairs: adjacent (0,1),(2,3),... or all combinations."""
    if pairing == "all":
        return list(itertools.combinations(range(k), 2))
    return [(i, i + 1) for i in range(0, k - 1, 2)]


def pair_candidates(candidates: pa.Table, k: int, pairing: str, source: str) -> pa.Table:
    """Candidates of one or more prompts -> BATCH_SCHEMA rows: ``split="pairs"`` or ``"quarantine"``.

    A pair that :func:`cwpo_ray.schema.validate_pair` rejects (empty or undecodable response,
    identical responses) is quarantined with its reason; a prompt with a missing candidate index
    quarantines the pairs that need it (``missing_candidate``).
    """
    cols: dict[str, list] = {f.name: [] for f in BATCH_SCHEMA}

    def add(**row):
        for f in BATCH_SCHEMA:
            cols[f.name].append(row.get(f.name))

    by_prompt: dict[str, dict[int, dict]] = {}
    prompts: dict[str, str] = {}
    for r in candidates.select(["prompt_id", "prompt", "candidate_idx", "response", "seed"]).to_pylist():
        by_prompt.setdefault(r["prompt_id"], {})[r["candidate_idx"]] = r
        prompts[r["prompt_id"]] = r["prompt"]
    for pid in sorted(by_prompt):
        cands, prompt = by_prompt[pid], prompts[pid]
        for i, j in candidate_pairs(k, pairing):
            if i not in cands or j not in cands:
                add(split="quarantine", **quarantine_row(source, "missing_candidate",
                                                         f"prompt {pid}: candidates {i},{j}; have {sorted(cands)}", prompt))
                continue
            a, b = cands[i]["response"], cands[j]["response"]
            reason = validate_pair(prompt, a, b)
            if reason:
                add(split="quarantine", **quarantine_row(
                    source, reason, f"prompt {pid}: candidates {i},{j} (seeds {cands[i]['seed']},{cands[j]['seed']})",
                    {"prompt": prompt, "response_a": a, "response_b": b}))
                continue
            add(pair_id=pair_id(prompt, a, b), prompt=prompt, response_a=a, response_b=b, human_label=None,
                source=source, split="pairs")
    return pa.table(cols, schema=BATCH_SCHEMA)


class HFGenerator:
    """Fallback backend: transformers ``generate``, one seeded request at a time.

    Only used when asked (``engine.backend: hf``) or when vLLM cannot load the model; whoever
    builds it logs why. Each request re-seeds torch with its own seed, so outputs are reproducible
    per request like vLLM's (but not identical to vLLM's samples).
    """

    def __init__(self, model: str, device: str = "cpu", dtype: str = "auto", trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from cwpo_ray.runtime import torch_dtype

        self.torch = torch
        self.device = device
        from cwpo_ray.io import local_model_dir

        local = local_model_dir(model)  # a URI's folder, downloaded to this node's cache
        self.tok = AutoTokenizer.from_pretrained(local, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(local, dtype=torch_dtype(dtype, device),
                                                          trust_remote_code=trust_remote_code)
        self.model.to(device).eval()
        self.eos = self.tok.eos_token_id if self.tok.eos_token_id is not None else self.model.config.eos_token_id
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos

    def generate(self, prompts: list[str], seeds: list[int], sampling: dict[str, Any]) -> list[tuple[str, int, str]]:
        """[(text, num_new_tokens, finish_reason "stop" | "length")] for each prompt."""
        torch = self.torch
        out = []
        temp = sampling["temperature"]
        stops = list(sampling.get("stop") or [])
        for prompt, seed in zip(prompts, seeds):
            enc = self.tok(prompt, return_tensors="pt").to(self.device)
            torch.manual_seed(int(seed))
            kw: dict[str, Any] = dict(max_new_tokens=sampling["max_new_tokens"], eos_token_id=self.eos,
                                      pad_token_id=self.pad, do_sample=temp > 0)
            if temp > 0:
                kw.update(temperature=temp, top_p=sampling["top_p"], top_k=0)
            if stops:
                kw.update(stop_strings=stops, tokenizer=self.tok)
            with torch.no_grad():
                seq = self.model.generate(**enc, **kw)[0, enc["input_ids"].shape[1]:].tolist()
            n_new = len(seq)  # like vLLM's token_ids: counts the eos token when generation stopped on it
            stopped = bool(seq) and seq[-1] == self.eos
            text = self.tok.decode(seq[:-1] if stopped else seq, skip_special_tokens=True)
            for s in stops:  # like vLLM: the stop string is not part of the output
                if s in text:
                    text, stopped = text[: text.index(s)], True
            out.append((text, n_new, "stop" if stopped else "length"))
        return out
