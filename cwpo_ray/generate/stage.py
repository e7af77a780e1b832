"""`cwpo generate`: prompt-only data -> k sampled responses per prompt (vLLM on Ray Data) -> pairs.

Output (``output_dir``): ``candidates/`` (every response with its seed, token count, finish reason
and backend), ``pairs/`` (PAIR_SCHEMA, ``human_label`` null: ready for ``annotate``),
``quarantine/`` (QUARANTINE_SCHEMA: bad prompts and unusable pairs, with reasons), ``summary.json``.
"""
from __future__ import annotations

import logging
import time
from collections import Counter

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cwpo_ray import io
from cwpo_ray.config import ConfigError, require
from cwpo_ray.generate.config import EngineConfig, GenerateConfig, SamplingConfig
from cwpo_ray.generate.core import CANDIDATE_SCHEMA, expand_requests, pair_candidates
from cwpo_ray.generate.engines import generate_candidates, generate_candidates_many
from cwpo_ray.prepare.core import BATCH_SCHEMA
from cwpo_ray.results import GenerateResult, write_result
from cwpo_ray.runtime import init_ray
from cwpo_ray.schema import PAIR_SCHEMA, QUARANTINE_SCHEMA, _bad_text, quarantine_row

log = logging.getLogger(__name__)


def _read_column(path: str, column: str) -> pa.ChunkedArray:
    """One column of a parquet file/folder or a jsonl(.gz) file (local path or URI), via pyarrow."""
    import pyarrow.dataset as pads
    import pyarrow.json as pajson

    fs, p = io.resolve(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"config error: prompts_path: {path!r} does not exist")
    if p.endswith(".parquet") or info.type == pafs.FileType.Directory:
        return pads.dataset(p, filesystem=fs, format="parquet").to_table(columns=[column]).column(column)
    compression = "gzip" if p.endswith(".gz") else None
    with fs.open_input_stream(p, compression=compression) as f:
        return pajson.read_json(f).column(column)


def read_prompts(path: str, column: str = "prompt", max_prompts: int | None = None) -> tuple[list[str], pa.Table, dict]:
    """Unique prompts of a parquet/jsonl file or folder, in first-seen order.

    Returns (prompts, quarantine rows in BATCH_SCHEMA for unusable prompts, counts). Duplicates are
    counted (``duplicate_prompts``), not quarantined: a prompt repeated in pair data is expected.
    """
    try:
        values = _read_column(path, column).to_pylist()
    except KeyError:
        raise ConfigError(f"config error: prompt_column: no column {column!r} in {path!r}") from None
    seen: dict[str, None] = {}
    bad: list[dict] = []
    dup = 0
    for i, value in enumerate(values):
        reason = _bad_text(value, "prompt")
        if reason:
            bad.append({"split": "quarantine", **quarantine_row("prompts", reason, f"{path} row {i}", value)})
        elif value in seen:
            dup += 1
        else:
            seen[value] = None
    prompts = list(seen)
    limited = 0
    if max_prompts is not None and len(prompts) > max_prompts:
        limited, prompts = len(prompts) - max_prompts, prompts[:max_prompts]
    counts = {"rows_in": len(values), "unique_prompts": len(seen), "duplicate_prompts": dup,
              "bad_prompts": len(bad), "not_used_max_prompts": limited, "prompts_used": len(prompts)}
    return prompts, pa.Table.from_pylist(bad, schema=BATCH_SCHEMA), counts


def write_routed(table: pa.Table, output_dir: str) -> Counter:
    """BATCH_SCHEMA rows -> ``{output_dir}/pairs/`` (PAIR_SCHEMA) and ``quarantine/``; returns counts."""
    fs, root = io.resolve(output_dir)
    counts: Counter = Counter()
    split = table.column("split").to_pylist()
    for name, schema in (("pairs", PAIR_SCHEMA), ("quarantine", QUARANTINE_SCHEMA)):
        part = table.filter(pa.array([x == name for x in split], pa.bool_()))
        counts[name] = part.num_rows
        if name == "quarantine":
            counts.update(f"reason:{r}" for r in part.column("reason").to_pylist())
        fs.create_dir(f"{root}/{name}", recursive=True)
        pq.write_table(part.select(schema.names).cast(schema), f"{root}/{name}/part-00000.parquet", filesystem=fs)
    return counts


def collect(ds) -> pa.Table:
    """A (materialized) Dataset of CANDIDATE_SCHEMA rows as one Arrow table in the driver."""
    import ray

    tables = [t.select(CANDIDATE_SCHEMA.names).cast(CANDIDATE_SCHEMA) for t in ray.get(ds.to_arrow_refs())]
    return pa.concat_tables(tables) if tables else CANDIDATE_SCHEMA.empty_table()


def generation_stats(cands: pa.Table, seconds: float) -> dict:
    toks = sum(cands.column("num_tokens").to_pylist())
    fallback = sorted({r for r in cands.column("fallback_reason").to_pylist() if r})
    return {
        "responses": cands.num_rows,
        "generated_tokens": toks,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(toks / seconds, 1) if seconds > 0 else None,
        "finish_reasons": dict(Counter(cands.column("finish_reason").to_pylist())),
        "backends": dict(Counter(cands.column("backend").to_pylist())),
        "fallback_reasons": fallback,
    }


def generate_table(prompts: list[str], model: str, k: int, sampling: SamplingConfig, engine: EngineConfig,
                   materialize: bool = True):
    """Generate k responses per prompt on Ray Data; returns (Dataset of CANDIDATE_SCHEMA rows, info)."""
    import ray

    requests = expand_requests(pa.table({"prompt": prompts}), k, sampling.seed)
    # Enough blocks that several engines get work, few enough that each batch fills an engine.
    n_blocks = max(1, min(64, -(-requests.num_rows // engine.batch_size)))
    ds = ray.data.from_arrow(requests)
    if n_blocks > 1:
        ds = ds.repartition(n_blocks)
    t0 = time.time()
    cands, info = generate_candidates(ds, model, sampling, engine)
    if materialize:
        cands = cands.materialize()
    info["seconds"] = time.time() - t0
    return cands, info


def generate_many(prompts: list[str], models: dict[str, tuple[str, SamplingConfig]], k: int, engine: EngineConfig):
    """k responses per prompt from each of several models in ONE Ray Data pass (actor-pool executor):
    each engine actor serves the models in turn instead of one pipeline and engine process per model.
    ``models``: key -> (path, sampling). Returns (Dataset of CANDIDATE_SCHEMA rows + ``model_key`` and
    ``gen_seconds``, info). Blocks hold one model's requests each, in ``models`` order."""
    import ray

    blocks = []
    for key, (_, sampling) in models.items():
        req = expand_requests(pa.table({"prompt": prompts}), k, sampling.seed)
        req = req.append_column("model_key", pa.array([key] * req.num_rows, pa.string()))
        blocks += [req.slice(i, engine.batch_size) for i in range(0, req.num_rows, engine.batch_size)]
    t0 = time.time()
    cands, info = generate_candidates_many(ray.data.from_arrow(blocks), models, engine)
    info["start"] = t0
    return cands, info


def run_generate(cfg: GenerateConfig) -> GenerateResult:
    """Run the stage; returns (and writes to ``summary.json``) counts, throughput and backend used."""
    require(cfg, "model", "prompts_path", "output_dir")
    io.check_storage(cfg.output_dir, "output_dir")
    io.check_storage(cfg.prompts_path, "prompts_path", must_exist=True)
    io.check_input(cfg.model, "model")
    init_ray(cfg.ray)
    t_start = time.time()
    for sub in ("candidates", "pairs", "quarantine"):
        io.rmtree(io.join(cfg.output_dir, sub))
    prompts, bad_prompts, prompt_counts = read_prompts(cfg.prompts_path, cfg.prompt_column, cfg.max_prompts)
    if not prompts:
        raise ConfigError(f"config error: prompts_path: no usable prompts in {cfg.prompts_path!r}")
    log.info("generate: %d prompts x %d candidates with %s", len(prompts), cfg.num_candidates, cfg.model)
    cands, info = generate_table(prompts, cfg.model, cfg.num_candidates, cfg.sampling, cfg.engine)
    cand_tbl = collect(cands)
    fs, root = io.resolve(cfg.output_dir)
    fs.create_dir(f"{root}/candidates", recursive=True)
    pq.write_table(cand_tbl, f"{root}/candidates/part-00000.parquet", filesystem=fs)
    gen = generation_stats(cand_tbl, info["seconds"])

    k, pairing, source = cfg.num_candidates, cfg.pairing, cfg.source_name
    # Pairing is a cheap pass over the collected candidates (every candidate of a prompt is needed).
    routed = pa.concat_tables([pair_candidates(cand_tbl, k, pairing, source), bad_prompts])
    c = write_routed(routed, cfg.output_dir)
    fallback = gen["fallback_reasons"]
    if info.get("fallback_reason"):
        fallback = sorted(set(fallback) | {info["fallback_reason"]})
    summary = GenerateResult(
        model=cfg.model,
        prompts=prompt_counts,
        num_candidates=k,
        pairing=pairing,
        generation={**gen, "fallback_reasons": fallback, "device": info["device"], "executor": info["executor"],
                    "requested_backend": info["requested_backend"]},
        pairs=c.get("pairs", 0),
        quarantined=c.get("quarantine", 0),
        quarantine_reasons={k_.split(":", 1)[1]: v for k_, v in sorted(c.items()) if k_.startswith("reason:")},
        sampling=cfg.sampling.model_dump(mode="json"),
        seeds="per request: request_seed(sampling.seed, prompt, candidate_idx); see candidates/ column `seed`",
        seconds_total=round(time.time() - t_start, 2),
        output_dir=cfg.output_dir,
    )
    write_result(cfg.output_dir, summary)
    return summary


def format_generate(s: GenerateResult) -> str:
    g, p = s.generation, s.prompts
    backends = ", ".join(f"{b} {n}" for b, n in g.backends.items())
    lines = [
        f"generate: {p.prompts_used} prompts x {s.num_candidates} -> {g.responses} responses "
        f"({g.generated_tokens} tokens, {g.tokens_per_s} tok/s, {g.device}, {g.executor}; backend: {backends})",
        f"  pairs: {s.pairs} ({s.pairing}), quarantined {s.quarantined}"
        + (": " + ", ".join(f"{k} {v}" for k, v in s.quarantine_reasons.items()) if s.quarantine_reasons else ""),
        "  finish: " + ", ".join(f"{k} {v}" for k, v in g.finish_reasons.items())
        + f"; prompts in {p.rows_in} (duplicates {p.duplicate_prompts}, bad {p.bad_prompts})",
    ]
    if g.fallback_reasons:
        lines.append("  WARNING: vLLM could not be used, HF fallback generated: " + "; ".join(g.fallback_reasons))
    lines.append(f"  output: {s.output_dir}/{{candidates,pairs,quarantine}}/")
    return "\n".join(lines)


__all__ = ["run_generate", "format_generate", "read_prompts", "generate_table", "generate_many", "generation_stats"]
