"""`cwpo evaluate`: SFT vs aligned responses on the test prompts (vLLM on Ray Data) -> gold reward -> GRA.

Output (``output_dir``): ``responses.parquet`` (every response with model, seed and gold reward),
``metrics.json`` (GRA, ties, bootstrap CI and mean gold-reward gain per method), ``report.md``,
``gra.png``, ``gold_rewards.png``, ``summary.json`` (= metrics.json: the
:class:`~cwpo_ray.results.EvaluateResult`), and ``quarantine/files.parquet`` when an
input file of ``prompts_path`` was unreadable or lacked the prompt column (checked from its parquet
footer before any compute; ``on_bad_file=fail`` stops the run instead, with one line naming the file).
"""
from __future__ import annotations

import logging
import os
import posixpath
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cwpo_ray import console, io
from cwpo_ray.config import ConfigError, require
from cwpo_ray.evaluate.config import EvaluateConfig
from cwpo_ray.evaluate.gold import GoldConfig, build_gold_reward
from cwpo_ray.evaluate.metrics import gra
from cwpo_ray.evaluate.report import REPORT_FILES, write_report
from cwpo_ray.generate.core import CANDIDATE_SCHEMA, model_seed, prompt_id
from cwpo_ray.generate.stage import collect, generate_many, generate_table, generation_stats, read_prompts
from cwpo_ray.inputs import InputCheck, check_inputs, write_bad_files
from cwpo_ray.results import EvaluateResult, ModelGeneration, ReportFiles, write_result
from cwpo_ray.runtime import cluster_device, init_ray
from cwpo_ray.tracking import tracked_stage

log = logging.getLogger(__name__)


class GoldScorer:
    """Ray Data callable class: (prompt, response) batch -> + ``gold`` column (one reward model per actor)."""

    def __init__(self, gold: dict, device: str):
        self.gold = build_gold_reward(GoldConfig.model_validate(gold), device=device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        s = self.gold.score(batch.column("prompt").to_pylist(), batch.column("response").to_pylist())
        return batch.append_column("gold", pa.array(s, pa.float64()))


def score_gold(table: pa.Table, gold: GoldConfig) -> np.ndarray:
    """Gold rewards of a (prompt, response) table. HF reward models run as a Ray Data actor pool
    (one GPU each when the cluster has GPUs); the synthetic r* is arithmetic and runs in the driver."""
    if gold.kind == "synthetic":
        return build_gold_reward(gold).score(table.column("prompt").to_pylist(), table.column("response").to_pylist())
    import ray

    device = cluster_device(gold.device)
    keyed = table.select(["prompt", "response"]).append_column("row", pa.array(np.arange(table.num_rows)))
    ds = ray.data.from_arrow(keyed).map_batches(
        GoldScorer, fn_constructor_kwargs=dict(gold=gold.model_dump(mode="json"), device=device),
        batch_format="pyarrow", batch_size=max(gold.batch_size * 8, 64),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=gold.num_scorers),
        **({"num_gpus": 1} if device == "cuda" else {"num_cpus": 1}))
    out = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    scores = np.empty(table.num_rows)
    scores[out.column("row").to_numpy()] = out.column("gold").to_numpy()
    return scores


def _report_files(output_dir: str) -> ReportFiles:
    """Where :func:`_write_outputs` puts report.md and the plots (absolute local paths, or URIs)."""
    return ReportFiles(**{k: io.join(io.absolute(output_dir), f) for k, f in REPORT_FILES.items()})


def _write_outputs(output_dir: str, responses: pa.Table, metrics: EvaluateResult, scores: dict[str, np.ndarray]) -> None:
    """responses.parquet, report.md + plots and metrics.json = summary.json (made locally, then uploaded to a URI)."""
    with io.staged_dir(output_dir) as work:
        pq.write_table(responses, os.path.join(work, "responses.parquet"))
        write_report(metrics, scores, work)
        for name in ("metrics.json", "summary.json"):
            write_result(work, metrics, name)


def check_evaluate_storage(cfg: EvaluateConfig) -> None:
    """Fail fast, before any compute, with one line naming the field: the output's store and every input
    given as a URI (prompts, models, the gold reward model)."""
    io.check_storage(cfg.output_dir, "output_dir")
    io.check_input(cfg.prompts_path, "prompts_path")
    io.check_input(cfg.sft_model, "sft_model")
    for section in ("models", "baselines"):
        for name, path in getattr(cfg, section).items():
            io.check_input(path, f"{section}.{name}")
    io.check_input(cfg.gold.model, "gold.model")


def load_prompts(cfg: EvaluateConfig) -> tuple[list[str], dict, InputCheck, dict]:
    """The test prompts of ``cfg.prompts_path`` from its readable files only.

    Every file is checked first (parquet footer: readable, with a string ``prompt_column``); a bad one is
    written to ``{output_dir}/quarantine/files.parquet`` and skipped, or (``on_bad_file=fail``) raises
    ConfigError naming it. Returns (unique prompts in first-seen order, counts as
    :func:`~cwpo_ray.generate.stage.read_prompts`, the check, quarantine reasons of files and prompts)."""
    col = cfg.prompt_column
    check = check_inputs(cfg.prompts_path, [col], {col: "string"}, on_bad_file=cfg.on_bad_file, what="prompts_path")
    write_bad_files(cfg.output_dir, check.bad)
    if not check.files:
        raise ConfigError(f"input error: prompts_path: no readable input file in {cfg.prompts_path!r} "
                          f"({len(check.bad)} quarantined, see {cfg.output_dir}/quarantine/)")
    if not check.bad:
        prompts, bad, counts = read_prompts(cfg.prompts_path, col, cfg.max_prompts)
    else:  # only the good files, merged in file order as one read of the folder would
        seen: dict[str, None] = {}
        bads, counts = [], {"rows_in": 0, "bad_prompts": 0}
        for f in check.files:
            p, b, c = read_prompts(f, col)
            bads.append(b)
            counts["rows_in"] += c["rows_in"]
            counts["bad_prompts"] += c["bad_prompts"]
            seen.update(dict.fromkeys(p))
        bad = pa.concat_tables(bads)
        prompts = list(seen)
        limited = max(0, len(prompts) - cfg.max_prompts) if cfg.max_prompts is not None else 0
        prompts = prompts[: len(prompts) - limited]
        counts = {"rows_in": counts["rows_in"], "unique_prompts": len(seen),
                  "duplicate_prompts": counts["rows_in"] - counts["bad_prompts"] - len(seen),
                  "bad_prompts": counts["bad_prompts"], "not_used_max_prompts": limited, "prompts_used": len(prompts)}
    reasons = Counter([*bad.column("reason").to_pylist(), *(b.reason for b in check.bad)])
    return prompts, counts, check, dict(reasons)


def method_metrics(scores: dict[str, np.ndarray], cfg: EvaluateConfig) -> tuple[dict, dict]:
    """GRA of each method against its reference (``cfg.compare_to``, default "sft"), and of the methods
    that have their own reference also against "sft" (the common SFT model), from [prompts, samples] gold
    scores per model name."""
    def one(name: str, ref: str):
        return gra(scores[name], scores[ref], cfg.num_bootstrap, cfg.ci, cfg.sampling.seed, cfg.tie_tolerance)

    refs = {name: cfg.compare_to.get(name, "sft") for name in cfg.models}
    return ({name: one(name, ref) for name, ref in refs.items()},
            {name: one(name, "sft") for name, ref in refs.items() if ref != "sft"})


RESPONSE_COLUMNS = ["prompt_id", "candidate_idx", "response", "seed", "num_tokens", "finish_reason"]


def response_cache_path(path: str, prompt_ids: list[str], k: int, sampling, engine) -> str | None:
    """Where a model folder's responses for these requests are cached: ``{folder}/../responses_cache/
    {key}.parquet`` beside a local folder or one at a URI, the key hashing the model's files (name, size,
    mtime), the prompts, k, the sampling (its seed included) and the engine settings. None for hub ids."""
    import hashlib
    import json

    if not io.is_dir(path):
        return None
    root = io.resolve(path)[1].rstrip("/")
    files = [(posixpath.relpath(f.path, root), f.size, f.mtime_ns) for f in io.files_under(path)]
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"files": files, "k": k, "sampling": sampling.model_dump(mode="json"),
                         "engine": engine.model_dump(mode="json"), "prompts": prompt_ids}).encode())
    return io.join(io.parent(path), "responses_cache", f"{h.hexdigest()}.parquet")


def _cache_read(cache: str | None) -> tuple[pa.Table, dict] | None:
    import json

    if cache is None or not io.exists(cache):
        return None
    try:
        fs, p = io.resolve(cache)
        t = pq.read_table(p, filesystem=fs)
        info = json.loads((t.schema.metadata or {}).get(b"cwpo_generation", b"{}"))
        return t.select(RESPONSE_COLUMNS), info
    except Exception as e:  # a torn cache file is regenerated, never fatal
        log.warning("evaluate: response cache %s unreadable (%s); regenerating", cache, e)
        return None


def _cache_write(cache: str | None, tbl: pa.Table, gen: dict) -> None:
    import json

    if cache is None:
        return
    t = tbl.select(RESPONSE_COLUMNS)
    t = t.replace_schema_metadata({b"cwpo_generation": json.dumps(gen).encode()})
    fs, p = io.resolve(cache)
    fs.create_dir(posixpath.dirname(p), recursive=True)
    if io.is_remote(cache):  # an object store's PUT is atomic: readers see the old object or the new one
        pq.write_table(t, p, filesystem=fs)
        return
    tmp = f"{p}.{os.getpid()}.tmp"
    pq.write_table(t, tmp)
    os.replace(tmp, p)  # atomic: a concurrent reader sees the old file or the whole new one


def _generate_models(prompts: list[str], models: dict[str, tuple[str, object]], k: int, engine) -> dict:
    """name -> (responses table, engine seconds, info) for each model. The actor-pool executor generates
    every model in one Ray Data pass (each engine actor serves the models in turn: one actor start for
    all of them); ``ray_data_llm`` runs one pipeline per model. Progress: one bar over all responses."""
    if not models:
        return {}
    out = {}
    pbar = console.bar(total=len(models) * len(prompts) * k, desc="evaluate", unit="response")
    if engine.executor == "actor_pool":
        ds, info = generate_many(prompts, models, k, engine)
        parts = []
        for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            parts.append(b)
            pbar.update(b.num_rows)
        allt = pa.concat_tables(parts)
        keys = allt.column("model_key").to_pylist()
        for name in models:
            sub = allt.filter(pa.array([x == name for x in keys], pa.bool_()))
            seconds = float(sum(sub.column("gen_seconds").to_pylist()))
            out[name] = (sub.select(CANDIDATE_SCHEMA.names).cast(CANDIDATE_SCHEMA), seconds, info)
    else:
        for name, (path, sampling) in models.items():
            cands, info = generate_table(prompts, path, k, sampling, engine)
            tbl = collect(cands)
            out[name] = (tbl, info["seconds"], info)
            pbar.update(tbl.num_rows)
    pbar.close()
    return out


@tracked_stage("evaluate", lambda r: [r.files.report, r.files.gra_plot, r.files.gold_plot] if r.files else [])
def run_evaluate(cfg: EvaluateConfig) -> EvaluateResult:
    """Generate with every model on the same prompts (same per-prompt seeds), score, compute GRA."""
    require(cfg, "prompts_path", "sft_model", "output_dir")
    check_evaluate_storage(cfg)
    t_start = time.time()
    prompts, prompt_counts, check, quarantine_reasons = load_prompts(cfg)  # before any compute
    init_ray(cfg.ray)
    if not prompts:
        raise ConfigError(f"config error: prompts_path: no usable prompts in {cfg.prompts_path!r}")
    pids = [prompt_id(p) for p in prompts]
    k = cfg.num_samples
    models = {"sft": cfg.sft_model, **cfg.baselines, **cfg.models}
    samplings = {name: (cfg.sampling.model_copy(update={"seed": model_seed(cfg.sampling.seed, name)})
                        if cfg.seeding == "independent" else cfg.sampling) for name in models}
    tbls, generation, caches, how = {}, {}, {}, {}
    for name, path in models.items():
        caches[name] = response_cache_path(path, pids, k, samplings[name], cfg.engine) if cfg.cache_responses else None
        hit = _cache_read(caches[name])
        if hit is not None:
            tbls[name], gen = hit
            generation[name] = ModelGeneration.model_validate({**gen, "cached_from": caches[name]})
            how[name] = f"read from the response cache {caches[name]}"
    todo = [name for name in models if name not in tbls]
    t0 = time.time()
    for name, (tbl, seconds, info) in _generate_models(prompts, {n: (models[n], samplings[n]) for n in todo}, k, cfg.engine).items():
        g = generation_stats(tbl, seconds)
        fallback = g["fallback_reasons"]
        if info.get("fallback_reason"):
            fallback = sorted(set(fallback) | {info["fallback_reason"]})
        generation[name] = ModelGeneration(
            **{**g, "fallback_reasons": fallback}, device=info["device"], executor=info["executor"],
            length_limit_share=round(g["finish_reasons"].get("length", 0) / max(tbl.num_rows, 1), 4),
            model=models[name], base_seed=samplings[name].seed)
        if not fallback:  # only engine output is cached (a fallback run is retried next time)
            _cache_write(caches[name], tbl, generation[name].model_dump(mode="json"))
        tbls[name] = tbl
        how[name] = f"({g['tokens_per_s']} tok/s, backend {', '.join(g['backends'])})"
    if todo:
        log.info("evaluate: %d model(s) generated in %.1fs", len(todo), time.time() - t0)
    tables = []
    for name, path in models.items():
        g = generation[name].model_dump()
        by_key = {(r["prompt_id"], r["candidate_idx"]): r for r in tbls[name].select(RESPONSE_COLUMNS).to_pylist()}
        missing = [(p, j) for p in pids for j in range(k) if (p, j) not in by_key]
        if missing:
            raise RuntimeError(f"evaluate: {name} returned no response for {len(missing)} (prompt, sample) requests")
        rows = [by_key[(p, j)] for p in pids for j in range(k)]  # prompt-major: row i*k + j
        tables.append(pa.table({
            "method": [name] * len(rows), "model": [path] * len(rows),
            "prompt_id": [p for p in pids for _ in range(k)], "prompt": [p for p in prompts for _ in range(k)],
            "sample": pa.array([j for _ in pids for j in range(k)], pa.int32()),
            "response": [r["response"] for r in rows], "seed": pa.array([r["seed"] for r in rows], pa.int64()),
            "num_tokens": pa.array([r["num_tokens"] for r in rows], pa.int32()),
            "finish_reason": [r["finish_reason"] for r in rows],
        }))
        console.info(f"evaluate: {name}: {g['responses']} responses, {g['generated_tokens']} tokens {how[name]}")
    responses = pa.concat_tables(tables)
    t0 = time.time()
    gold = score_gold(responses, cfg.gold)
    responses = responses.append_column("gold", pa.array(gold, pa.float64()))
    n = len(pids)
    scores = {name: gold[i * n * k:(i + 1) * n * k].reshape(n, k) for i, name in enumerate(models)}
    methods, vs_common = method_metrics(scores, cfg)
    metrics = EvaluateResult(
        num_prompts=n,
        samples_per_prompt=k,
        seeding=cfg.seeding,
        prompts=prompt_counts,
        prompts_path=cfg.prompts_path,
        files_quarantined=len(check.bad),
        bad_files=check.records(),
        quarantine_reasons=quarantine_reasons,
        sft_model=cfg.sft_model,
        models=dict(cfg.models),
        baselines=dict(cfg.baselines),
        compare_to={m: r for m, r in cfg.compare_to.items() if r != "sft"},
        gold=cfg.gold.model if cfg.gold.kind == "hf" else "synthetic r*(x, y)",
        gold_seconds=round(time.time() - t0, 2),
        methods=methods,
        methods_vs_common=vs_common,
        mean_gold={name: float(v.mean()) for name, v in scores.items()},
        length_limit_share={name: generation[name].length_limit_share for name in models},
        generation=generation,
        sampling=cfg.sampling.model_dump(mode="json"),
        ci=cfg.ci,
        num_bootstrap=cfg.num_bootstrap,
        tie_tolerance=cfg.tie_tolerance,
        output_dir=cfg.output_dir,
        seconds_total=round(time.time() - t_start, 2),
        files=_report_files(cfg.output_dir),
    )
    _write_outputs(cfg.output_dir, responses, metrics, {k_: v.ravel() for k_, v in scores.items()})
    return metrics


def format_evaluate(m: EvaluateResult) -> str:
    ci = int(m.ci * 100)
    lim = m.length_limit_share
    lines = [f"evaluate: {m.num_prompts} prompts x {m.samples_per_prompt} samples, gold {m.gold}; "
             f"SFT mean gold {m.mean_gold['sft']:.3f}, at the length limit {lim['sft']:.1%}"]
    for name, r in m.methods.items():
        ref = m.compare_to.get(name, "sft")
        vs = "" if ref == "sft" else f" vs {ref} (at the limit {lim[ref]:.1%})"
        lines.append(f"  {name}: GRA {r.gra:.3f} [{r.gra_ci[0]:.3f}, {r.gra_ci[1]:.3f}] ({ci}% CI){vs}, "
                     f"ties {r.tie_rate:.3f}, mean gain {r.mean_gain:+.3f}, at the length limit {lim[name]:.1%}")
        if name in m.methods_vs_common:
            c = m.methods_vs_common[name]
            lines.append(f"  {'':{len(name)}}  vs the common SFT model: GRA {c.gra:.3f} [{c.gra_ci[0]:.3f}, {c.gra_ci[1]:.3f}]")
    for name, g in m.generation.items():
        if g.fallback_reasons:
            lines.append(f"  WARNING: {name} generated with the HF fallback: {'; '.join(g.fallback_reasons)}")
    if m.files_quarantined:
        lines.append(f"  bad input files: {m.files_quarantined} quarantined whole "
                     f"(see {m.output_dir}/quarantine/files.parquet)")
    lines.append(f"  report: {m.files.report if m.files else m.output_dir}  ({m.seconds_total:.1f}s)")
    return "\n".join(lines)


__all__ = ["run_evaluate", "format_evaluate", "score_gold", "GoldScorer"]
