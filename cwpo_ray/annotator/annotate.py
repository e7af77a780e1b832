"""`cwpo annotate`: label unlabeled pairs with the weak annotator on a Ray Data actor pool.

The input parquet is cut into *blocks* (row ranges of row groups, ``block_rows`` rows each) by reading
only parquet metadata. Ray Data streams the block descriptors through two stages:

1. ``TokenizeBlocks`` (CPU actors, ``tokenize_actors``): read the block's rows, validate them in Arrow
   compute (bad rows are quarantined with a reason), tokenize the rest;
2. ``ScorerActor`` (the GPU pool, ``min_actors..max_actors``): each actor loads the scorer once, scores
   the tokenized pairs (length-sorted batches), labels them in Arrow compute and writes
   ``{output_dir}/preferences/{block}.parquet`` atomically (temp file + rename; the quarantine file is
   written first).

Ray Data's streaming executor overlaps them: tokenization never runs on the accelerator's critical
path. Hence:

* resumable: a re-run skips blocks whose output exists (``overwrite=true`` starts over);
* fault tolerant: Ray Data restarts a killed actor and retries its block; a retried block rewrites the
  same file name, so no pair is lost or duplicated.

Output rows: PREFERENCE_SCHEMA (TRL's prompt/chosen/rejected + pair_id, score_chosen, score_rejected,
confidence = 2·(σ(Δ) − ½), human_label_agrees).
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cwpo_ray import console, io
from cwpo_ray.annotator.config import AnnotateConfig, local_abspath
from cwpo_ray.annotator.losses import confidence, orient
from cwpo_ray.config import ConfigError, require
from cwpo_ray.inputs import FILES_QUARANTINE, check_inputs, quarantine_lines, write_bad_files
from cwpo_ray.results import AnnotateResult, write_result
from cwpo_ray.schema import PAIR_SCHEMA, PREFERENCE_SCHEMA, pair_reasons, quarantine_row, quarantine_table

log = logging.getLogger(__name__)
STATE_FILE = "annotate_state.json"
# What an input file needs (checked from its parquet footer before any compute): these columns, and
# string types for every PAIR_SCHEMA column it has; human_label and source may be absent (read as null).
REQUIRED_COLUMNS = ("pair_id", "prompt", "response_a", "response_b")
COLUMN_TYPES = {name: "string" for name in PAIR_SCHEMA.names}


# ----------------------------------------------------------------------------------------- pure core
def list_parquet(path: str) -> list[str]:
    fs, p = io.resolve(path)
    info = fs.get_file_info(p)
    if info.type.name == "NotFound":
        raise ConfigError(f"config error: input: {path!r} does not exist")
    if info.type.name == "File":
        return [path]
    from pyarrow.fs import FileSelector

    files = sorted(f.path for f in fs.get_file_info(FileSelector(p, recursive=True))
                   if f.type.name == "File" and f.path.endswith(".parquet"))
    prefix = path[: len(path) - len(p)] if "://" in path else ""
    return [prefix + f for f in files]


def plan_blocks(path: str | list[str], block_rows: int) -> list[dict]:
    """Block descriptors {key, path, row_group, start, stop} from parquet metadata (no data read).

    ``path``: a file or folder, or the list of (checked) files. ``key`` names the output file and is
    stable for the same input files and ``block_rows``."""
    blocks = []
    for f in (list_parquet(path) if isinstance(path, str) else path):
        fs, p = io.resolve(f)
        with fs.open_input_file(p) as fh:
            md = pq.ParquetFile(fh).metadata
        stem = os.path.basename(p).rsplit(".parquet", 1)[0]
        for rg in range(md.num_row_groups):
            n = md.row_group(rg).num_rows
            for start in range(0, n, block_rows):
                blocks.append({"key": f"{stem}-rg{rg:05d}-{start:09d}", "path": f, "row_group": rg,
                               "start": start, "stop": min(n, start + block_rows)})
    keys = [b["key"] for b in blocks]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"config error: input: two parquet files under {path!r} share a file name")
    return blocks


def read_block(block: dict) -> pa.Table:
    fs, p = io.resolve(block["path"])
    with fs.open_input_file(p) as fh:
        pf = pq.ParquetFile(fh)
        cols = [c for c in PAIR_SCHEMA.names if c in pf.schema_arrow.names]
        t = pf.read_row_group(block["row_group"], columns=cols)
    t = t.slice(block["start"], block["stop"] - block["start"])
    for name in PAIR_SCHEMA.names:  # optional columns (human_label, source) absent from the file: null
        if name not in t.column_names:
            t = t.append_column(name, pa.nulls(t.num_rows, pa.string()))
    return t.select(PAIR_SCHEMA.names)


def tokenize_block(table: pa.Table, tokenizer, max_length: int) -> tuple[pa.Table, pa.Table]:
    """(rows to score with their token ids, quarantine rows): the CPU half of annotate, in Arrow.

    Validation is :func:`schema.pair_reasons` (Arrow compute, no per-row Python); bad rows go to the
    quarantine table with their reason. The rest are tokenized as ``prompt + response`` in one batch call
    per response (:func:`scoring.encode_texts`, no truncation), and a pair with a text over
    ``max_length`` tokens is quarantined as ``too_long`` (scoring a truncated text would judge a
    different pair). The first table is PAIR_SCHEMA plus ``ids_a`` / ``ids_b`` (list<int32>)."""
    from cwpo_ray.annotator.scoring import encode_texts

    reasons = pair_reasons(table)
    bad = pc.is_valid(reasons)
    quarantine = _quarantine(table.filter(bad), reasons.filter(bad).to_pylist(), None)
    ok = table.filter(pc.invert(bad))
    ids_type = pa.list_(pa.int32())
    if not ok.num_rows:  # a block of bad rows only (a tokenizer cannot be called on no texts)
        empty = pa.array([], ids_type)
        return ok.append_column("ids_a", empty).append_column("ids_b", empty), quarantine
    prompts = ok.column("prompt").to_pylist()
    ids_a, _ = encode_texts(tokenizer, prompts, ok.column("response_a").to_pylist(), 10**9)
    ids_b, _ = encode_texts(tokenizer, prompts, ok.column("response_b").to_pylist(), 10**9)
    ok = ok.append_column("ids_a", pa.array(ids_a, ids_type)).append_column("ids_b", pa.array(ids_b, ids_type))
    n = pc.max_element_wise(pc.list_value_length(ok.column("ids_a")), pc.list_value_length(ok.column("ids_b")))
    long = pc.greater(n, max_length)
    if pc.any(long).as_py():
        rows = ok.filter(long)
        details = [f"pair_id={pid} tokens={k} > max_length={max_length}"
                   for pid, k in zip(rows.column("pair_id").to_pylist(), n.filter(long).to_pylist())]
        quarantine = pa.concat_tables([quarantine, _quarantine(rows, ["too_long"] * len(details), details)])
    valid = ok.filter(pc.invert(long))
    return valid, quarantine


def _quarantine(rows: pa.Table, reasons: list[str], details: list[str] | None) -> pa.Table:
    """QUARANTINE_SCHEMA rows for ``rows`` (the few bad ones: per-row Python is fine here)."""
    out = []
    for i, r in enumerate(rows.select(PAIR_SCHEMA.names).to_pylist()):
        detail = details[i] if details else f"pair_id={r.get('pair_id')}"
        out.append(quarantine_row(r.get("source"), reasons[i], detail, json.dumps(r, ensure_ascii=False, default=str)))
    return quarantine_table(out)


def label_table(valid: pa.Table, score_a: np.ndarray, score_b: np.ndarray) -> pa.Table:
    """PREFERENCE_SCHEMA table, in Arrow: chosen = the higher-scored response (ties: a), confidence =
    2·(σ(Δ) − ½), human_label_agrees = (human label == chosen side), null without a human label."""
    a_wins, s_c, s_r = orient(score_a, score_b)
    conf = confidence(s_c, s_r).numpy()
    aw = pa.array(a_wins.numpy())
    a, b = valid.column("response_a"), valid.column("response_b")
    return pa.table({
        "pair_id": valid.column("pair_id"),
        "prompt": valid.column("prompt"),
        "chosen": pc.if_else(aw, a, b),
        "rejected": pc.if_else(aw, b, a),
        "score_chosen": s_c.numpy().astype(np.float32),
        "score_rejected": s_r.numpy().astype(np.float32),
        "confidence": conf.astype(np.float32),
        "human_label_agrees": pc.equal(pc.equal(valid.column("human_label"), "a"), aw),
    }, schema=PREFERENCE_SCHEMA)


def score_block(scorer, valid: pa.Table) -> pa.Table:
    """The accelerator half of annotate: score both responses of every pair, then label them."""
    n = valid.num_rows
    if not n:
        return PREFERENCE_SCHEMA.empty_table()
    scores = scorer.score_ids(valid.column("ids_a").to_pylist() + valid.column("ids_b").to_pylist())
    return label_table(valid, scores[:n], scores[n:])


def write_atomic(table: pa.Table, uri: str) -> None:
    """Write a parquet file under a temporary name, then rename: readers never see a partial file."""
    fs, p = io.resolve(uri)
    fs.create_dir(os.path.dirname(p), recursive=True)
    tmp = f"{p}.tmp-{uuid.uuid4().hex}"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, p)


def block_output(output_dir: str, key: str) -> str:
    return io.join(output_dir, "preferences", f"{key}.parquet")


HF_ONLY = ("max_batch_tokens", "max_batch_size", "compile")  # AnnotateConfig fields of the HF backend only


def _nest(t: pa.Table) -> pa.Array:
    """A table as one list<struct> value: a block's rows travel as one row of the Ray Data stream, so
    block boundaries (the unit of output files and resume) survive between the two stages."""
    return pa.ListArray.from_arrays(pa.array([0, t.num_rows], pa.int32()), t.to_struct_array().combine_chunks())


def _unnest(v: pa.ChunkedArray, i: int) -> pa.Table:
    return pa.Table.from_struct_array(v[i].values)


class TokenizeBlocks:
    """Ray Data callable class, the CPU stage before the scorer pool: read each block, validate it and
    tokenize it (:func:`tokenize_block`). It holds only the tokenizer and writes nothing (a retried task
    has no side effect); its output row per block carries the rows to score and the quarantine rows."""

    def __init__(self, c: dict):
        from cwpo_ray.annotator.scoring import load_tokenizer

        self.c = c
        self.tokenizer = load_tokenizer(c["model"], c["trust_remote_code"])

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = {"key": [], "rows": [], "valid": [], "quarantine": []}
        for block in batch.to_pylist():
            table = read_block(block)
            valid, quarantine = tokenize_block(table, self.tokenizer, self.c["max_length"])
            out["key"].append(block["key"])
            out["rows"].append(table.num_rows)
            out["valid"].append(_nest(valid))
            out["quarantine"].append(_nest(quarantine))
        return pa.table({"key": out["key"], "rows": pa.array(out["rows"], pa.int64()),
                         "valid": pa.concat_arrays(out["valid"]), "quarantine": pa.concat_arrays(out["quarantine"])})


class ScorerActor:
    """Ray Data callable class on the accelerator: one scorer per actor; scores the tokenized blocks it
    is given (:func:`score_block`) and writes each block's files, the quarantine file first and the
    labeled file last (its presence marks the block done)."""

    def __init__(self, c: dict):
        from cwpo_ray.annotator.scoring import make_scorer

        self.c = c  # (the vLLM scorer sets vLLM's CPU environment itself: runtime.vllm_cpu_env)
        hf_only = {k: c[k] for k in HF_ONLY} if c["backend"] == "hf" else {}
        self.scorer = make_scorer(c["backend"], c["model"], max_length=c["max_length"], dtype=c["dtype"],
                                  trust_remote_code=c["trust_remote_code"], **hf_only)

    def write_block(self, key: str, valid: pa.Table, quarantine: pa.Table) -> int:
        labeled = score_block(self.scorer, valid)
        qpath = io.join(self.c["output_dir"], "quarantine", f"{key}.parquet")
        if quarantine.num_rows:
            write_atomic(quarantine, qpath)
        elif io.exists(qpath):  # a stale file from an earlier run of this block
            io.rmtree(qpath)
        write_atomic(labeled, block_output(self.c["output_dir"], key))  # last: marks the block done
        return labeled.num_rows

    def __call__(self, batch: pa.Table) -> dict:
        out = {"key": [], "rows": [], "pairs": [], "quarantined": [], "seconds": []}
        for i in range(batch.num_rows):
            t0 = time.time()
            key = batch.column("key")[i].as_py()
            quarantine = _unnest(batch.column("quarantine"), i)
            out["pairs"].append(self.write_block(key, _unnest(batch.column("valid"), i), quarantine))
            out["key"].append(key)
            out["rows"].append(batch.column("rows")[i].as_py())
            out["quarantined"].append(quarantine.num_rows)
            out["seconds"].append(time.time() - t0)
        return {k: np.array(v) for k, v in out.items()}


def summarize_output(output_dir: str, hist_bins: int) -> dict:
    """Counts, confidence histogram and human agreement from the output files (all blocks, any run)."""
    files = list_parquet(io.join(output_dir, "preferences")) if io.exists(io.join(output_dir, "preferences")) else []
    ids, conf, agree = [], [], []
    for f in files:
        fs, p = io.resolve(f)
        t = pq.read_table(p, filesystem=fs, columns=["pair_id", "confidence", "human_label_agrees"])
        ids += t.column("pair_id").to_pylist()
        conf.append(t.column("confidence").to_numpy(zero_copy_only=False))
        agree += t.column("human_label_agrees").to_pylist()
    conf_a = np.concatenate(conf) if conf else np.empty(0)
    counts, edges = np.histogram(conf_a, bins=hist_bins, range=(0.0, 1.0))
    with_label = [a for a in agree if a is not None]
    qdir = io.join(output_dir, "quarantine")
    reasons: Counter = Counter()
    file_reasons: Counter = Counter()  # quarantine/files.parquet: whole input files set aside by this run
    if io.exists(qdir):
        for f in list_parquet(qdir):
            fs, p = io.resolve(f)
            found = pq.read_table(p, filesystem=fs, columns=["reason"]).column("reason").to_pylist()
            (file_reasons if os.path.basename(p) == FILES_QUARANTINE else reasons).update(found)
    return {
        "pairs": len(ids),
        "unique_pair_ids": len(set(ids)),
        "quarantined": sum(reasons.values()),  # rows
        "files_quarantined": sum(file_reasons.values()),
        "quarantine_reasons": dict(reasons + file_reasons),
        "confidence_mean": float(conf_a.mean()) if len(conf_a) else None,
        "confidence_quantiles": {f"p{q}": float(np.quantile(conf_a, q / 100)) for q in (10, 50, 90)} if len(conf_a) else {},
        "confidence_hist": {"counts": counts.tolist(), "edges": [round(float(e), 4) for e in edges]},
        "human_labeled_pairs": len(with_label),
        "human_agreement": (sum(with_label) / len(with_label)) if with_label else None,
    }


# ---------------------------------------------------------------------------------------- the stage
def _check_state(cfg: AnnotateConfig, input_path: str) -> None:
    """Refuse to resume into an output written by another model / input / block size."""
    state = {"model": cfg.model, "input": input_path,
             "block_rows": cfg.block_rows, "max_length": cfg.max_length}
    path = io.join(cfg.output_dir, STATE_FILE)
    if cfg.overwrite:
        for sub in ("preferences", "quarantine"):
            io.rmtree(io.join(cfg.output_dir, sub))
    elif io.exists(path):
        old = json.loads(io.read_text(path))
        diff = [k for k in state if old.get(k) != state[k]]
        if diff:
            raise ConfigError(f"config error: overwrite: {cfg.output_dir} holds an annotation with a different "
                              f"{', '.join(diff)}; set overwrite=true to start over")
    io.write_text(path, json.dumps(state, indent=2))


def run_annotate(cfg: AnnotateConfig, actor_cls: type = ScorerActor, tokenize_cls: type = TokenizeBlocks) -> AnnotateResult:
    """Annotate ``input`` (or ``{data_dir}/unlabeled``) into ``{output_dir}/preferences``; returns the summary.

    ``actor_cls`` / ``tokenize_cls``: the two stages' Ray Data callable classes (subclasses in tests)."""
    import ray

    from cwpo_ray.annotator.metrics import confidence_histogram
    from cwpo_ray.runtime import init_ray

    require(cfg, "model", "output_dir")
    if not (cfg.input or cfg.data_dir):
        raise ConfigError("config error: input: give input or data_dir")
    io.check_input(cfg.model, "model")
    cfg = cfg.model_copy(update={"model": local_abspath(cfg.model, must_exist=True), "data_dir": local_abspath(cfg.data_dir),
                                 "input": local_abspath(cfg.input), "output_dir": local_abspath(cfg.output_dir)})
    input_path = cfg.input or io.join(cfg.data_dir, "unlabeled")
    io.check_storage(cfg.output_dir, "output_dir")
    # Every input file is checked from its parquet footer before any compute: a truncated / non-parquet
    # file or one without the pair columns is quarantined whole (or, on_bad_file=fail, stops the run here).
    check = check_inputs(input_path, REQUIRED_COLUMNS, COLUMN_TYPES, on_bad_file=cfg.on_bad_file, what="input")
    _check_state(cfg, input_path)
    write_bad_files(cfg.output_dir, check.bad)
    blocks = plan_blocks(check.files, cfg.block_rows)
    todo = [b for b in blocks if not io.exists(block_output(cfg.output_dir, b["key"]))]
    skipped = len(blocks) - len(todo)
    console.info(f"[annotate] {len(blocks)} blocks in {input_path}: {skipped} already done, {len(todo)} to score "
                 f"(backend={cfg.backend}, actors {cfg.min_actors}..{cfg.max_actors})")

    init_ray(cfg.ray)
    t0 = time.time()
    done_rows = done_pairs = 0
    if todo:
        c = cfg.model_dump(mode="json")
        ds = ray.data.from_items(todo, override_num_blocks=len(todo))
        # CPU stage: read + validate + tokenize, overlapped with scoring (off the accelerator's critical path)
        ds = ds.map_batches(tokenize_cls, fn_constructor_kwargs={"c": c}, batch_size=1, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=min(cfg.tokenize_actors, len(todo))),
                            num_cpus=cfg.cpus_per_tokenizer)
        ds = ds.map_batches(actor_cls, fn_constructor_kwargs={"c": c}, batch_size=1, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(min_size=min(cfg.min_actors, len(todo)),
                                                               max_size=min(cfg.max_actors, len(todo))),
                            num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor or None)
        total_rows = sum(b["stop"] - b["start"] for b in todo)
        with console.bar(total=total_rows, desc="annotate", unit="pair") as pbar:
            for i, r in enumerate(iter(ds.iter_rows()), 1):
                done_rows += int(r["rows"])
                done_pairs += int(r["pairs"])
                el = time.time() - t0
                pbar.update(int(r["rows"]))
                console.info(f"[annotate] block {i}/{len(todo)} {r['key']}: {r['pairs']} pairs, {r['quarantined']} "
                             f"quarantined | {done_rows}/{total_rows} rows ({100 * done_rows / max(1, total_rows):.0f}%), "
                             f"{done_pairs / max(el, 1e-9):.0f} pairs/s")
    seconds = time.time() - t0

    out = summarize_output(cfg.output_dir, cfg.hist_bins)
    h = out["confidence_hist"]
    with io.staged_dir(cfg.output_dir) as d:  # drawn locally, uploaded to a URI
        confidence_histogram(h["counts"], h["edges"], os.path.join(d, "confidence_hist.png"))
    png = io.join(io.absolute(cfg.output_dir), "confidence_hist.png")
    summary = AnnotateResult(
        **out,
        blocks=len(blocks),
        blocks_skipped=skipped,
        pairs_scored_this_run=done_pairs,
        seconds=round(seconds, 2),
        pairs_per_s=round(done_pairs / seconds, 1) if done_pairs and seconds > 0 else None,
        backend=cfg.backend,
        model=cfg.model,
        input=input_path,
        output=io.join(cfg.output_dir, "preferences"),
        confidence_hist_png=png,
        output_dir=cfg.output_dir,
        bad_files=check.records(),
    )
    write_result(cfg.output_dir, summary)
    return summary


def format_annotate(s: AnnotateResult) -> str:
    rate = f", {s.pairs_per_s:.0f} pairs/s" if s.pairs_per_s else ""
    lines = [
        f"annotate: {s.pairs} pairs labeled ({s.pairs_scored_this_run} this run in {s.seconds:.1f}s{rate}; "
        f"{s.blocks_skipped}/{s.blocks} blocks resumed), {s.quarantined} quarantined [{s.backend}]",
    ]
    if s.confidence_mean is not None:
        q = s.confidence_quantiles
        lines.append(f"  confidence: mean {s.confidence_mean:.3f}, p10 {q['p10']:.3f}, p50 {q['p50']:.3f}, "
                     f"p90 {q['p90']:.3f}  (histogram: {s.confidence_hist_png})")
    if s.human_agreement is not None:
        lines.append(f"  agreement with {s.human_labeled_pairs} human labels: {s.human_agreement:.3f}")
    lines += quarantine_lines(s.quarantine_reasons, s.files_quarantined, s.output_dir)
    lines.append(f"  output: {s.output}/*.parquet")
    return "\n".join(lines)


__all__ = ["run_annotate", "format_annotate", "ScorerActor", "TokenizeBlocks", "plan_blocks", "read_block",
           "tokenize_block", "label_table", "score_block", "summarize_output"]
