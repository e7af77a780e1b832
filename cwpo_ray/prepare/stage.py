"""`cwpo prepare` on Ray Data: read (jsonl / parquet / HF dataset) -> normalize -> split parquet shards.

Everything streams: a line-oriented jsonl datasource (so a bad line is a quarantined row, not a
failed read), ``map_batches`` with the pure :class:`~cwpo_ray.prepare.core.Normalizer`, and one
datasink that routes rows to ``{output_dir}/{labeled,unlabeled,validation,test,quarantine}/part-*.parquet``.

Before any compute every input file is checked (:mod:`cwpo_ray.inputs`: parquet from its footer, for
the columns the source's format needs; compressed jsonl by decompressing it once): a bad file is
quarantined whole (``quarantine/files.parquet``, ``files_quarantined`` in the summary) or, with
``on_bad_file=fail``, stops the run with one line naming it.

Exact duplicate pairs (same ``pair_id``) are found after the write by one pass over the ``pair_id``
column of each split (pair_id decides the prompt and so the split, hence duplicates never straddle
splits): 8 bytes a pair in the driver (~80 MB for 10M pairs), no shuffle of the text. With
``duplicates=drop`` (default) the files holding a later copy are rewritten without it and the copies go
to ``quarantine/duplicates.parquet`` (reason ``duplicate_pair_id``), so the counts stay conserved; the
first copy in output order is kept.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.datasource import FileBasedDatasource

from cwpo_ray import io
from cwpo_ray.config import ConfigError, require
from cwpo_ray.inputs import InputCheck, check_inputs, quarantine_lines, write_bad_files
from cwpo_ray.prepare.adapters import required_columns
from cwpo_ray.prepare.config import PrepareConfig, SourceConfig
from cwpo_ray.prepare.core import BATCH_SCHEMA, Normalizer, duplicate_mask, pair_id_keys, parse_json_lines
from cwpo_ray.results import PrepareResult, write_result
from cwpo_ray.runtime import init_ray
from cwpo_ray.schema import PAIR_SCHEMA, QUARANTINE_SCHEMA, SPLITS, quarantine_row, quarantine_table

log = logging.getLogger(__name__)
LINES_PER_BLOCK = 8192


class JsonLinesDatasource(FileBasedDatasource):
    """Raw jsonl lines as bytes (+ their location), decoded later so bad UTF-8/JSON is quarantined."""

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        buf, lines, locs, n = b"", [], [], 0
        while True:
            chunk = f.read(8 << 20)
            if not chunk:
                break
            buf += chunk
            *complete, buf = buf.split(b"\n")
            for line in complete:
                n += 1
                if line.strip():
                    lines.append(line)
                    locs.append(f"{path}:{n}")
            if len(lines) >= LINES_PER_BLOCK:
                yield pa.table({"line": pa.array(lines, pa.binary()), "loc": locs})
                lines, locs = [], []
        if buf.strip():
            lines.append(buf)
            locs.append(f"{path}:{n + 1}")
        if lines:
            yield pa.table({"line": pa.array(lines, pa.binary()), "loc": locs})


class SplitParquetSink(Datasink):
    """Routes BATCH_SCHEMA rows to one parquet file per split per write task; returns counts."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.counts: dict = {}

    def write(self, blocks: Iterable[pa.Table], ctx) -> dict:
        fs, root = io.resolve(self.output_dir)
        writers: dict[str, pq.ParquetWriter] = {}
        counts: Counter = Counter()
        try:
            for block in blocks:
                if block.num_rows == 0:
                    continue
                split_col = block.column("split")
                for split in pc.unique(split_col).to_pylist():
                    part = block.filter(pc.equal(split_col, split))
                    if split == "quarantine":
                        table = part.select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA)
                        counts.update(f"reason:{r}" for r in part.column("reason").to_pylist())
                    else:
                        table = part.select(PAIR_SCHEMA.names).cast(PAIR_SCHEMA)
                    counts.update(f"source:{s}:{split}" for s in part.column("source").to_pylist())
                    counts[split] += part.num_rows
                    if split not in writers:
                        fs.create_dir(f"{root}/{split}", recursive=True)
                        writers[split] = pq.ParquetWriter(f"{root}/{split}/part-{ctx.task_idx:05d}.parquet",
                                                          table.schema, filesystem=fs)
                    writers[split].write_table(table)
        finally:
            for w in writers.values():
                w.close()
        return dict(counts)

    def on_write_complete(self, write_result) -> None:
        total: Counter = Counter()
        for c in write_result.write_returns:
            total.update(c)
        self.counts = dict(total)


def is_parquet_source(src: SourceConfig) -> bool:
    fs, p = io.resolve(src.path)
    return src.path.endswith(".parquet") or fs.get_file_info(p).type.name == "Directory"


def check_source(src: SourceConfig, cfg: PrepareConfig, index: int) -> InputCheck | None:
    """The source's input files, checked before any compute (None for a Hugging Face dataset)."""
    if src.hf_dataset:
        return None
    required = required_columns(src.format, src.columns) if is_parquet_source(src) else ()
    return check_inputs(src.path, required, on_bad_file=cfg.on_bad_file, what=f"sources[{index}].path")


def read_source(src: SourceConfig, cfg: PrepareConfig, check: InputCheck | None = None):
    """One source as a Ray Dataset of BATCH_SCHEMA rows (only the good files of ``check`` are read)."""
    import ray

    norm = Normalizer(src.format, src.label, src.columns, cfg.test_fraction, cfg.labeled_fraction,
                      cfg.split_seed, cfg.tokenizer, cfg.max_length, cfg.validation_fraction, cfg.unlabeled_fraction)
    if src.hf_dataset:
        import datasets

        hf = datasets.load_dataset(src.hf_dataset, name=src.hf_config, data_dir=src.hf_data_dir, split=src.hf_split)
        ds = ray.data.from_huggingface(hf)
        kind = "rows"
    elif is_parquet_source(src):
        ds = ray.data.read_parquet(check.read_path() if check else src.path)
        kind = "rows"
    else:
        ds = ray.data.read_datasource(JsonLinesDatasource(check.read_path() if check else src.path))
        kind = "lines"
    if src.max_rows:
        ds = ds.limit(src.max_rows)

    def normalize(batch: pa.Table) -> pa.Table:
        if kind == "lines":
            items = parse_json_lines(batch.column("line").to_pylist(), batch.column("loc").to_pylist())
        else:
            items = ((row, None, f"row {i}", json.dumps(row, default=str)) for i, row in enumerate(batch.to_pylist()))
        return norm(items)

    return ds.map_batches(normalize, batch_format="pyarrow", batch_size=cfg.batch_size)


def dedupe_splits(output_dir: str, drop: bool) -> tuple[int, Counter]:
    """Find exact duplicate pairs (same pair_id) in the written splits; with ``drop`` rewrite the files
    that hold a later copy without it and write the copies to ``quarantine/duplicates.parquet``.

    Returns (number of later copies, Counter of dropped rows by ``"{source}:{split}"``). Memory: the
    uint64 keys of one split (8 bytes a pair) and its sort; the text is only read for files with a copy."""
    fs, root = io.resolve(output_dir)
    n_dup, moved, dropped = 0, Counter(), []
    for split in SPLITS:
        d = f"{root}/{split}"
        if fs.get_file_info(d).type.name != "Directory":
            continue
        files = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(d)) if f.path.endswith(".parquet"))
        keys = [pair_id_keys(pq.read_table(f, columns=["pair_id"], filesystem=fs).column("pair_id")) for f in files]
        mask = duplicate_mask(np.concatenate(keys) if keys else np.empty(0, np.uint64))
        n_dup += int(mask.sum())
        if not drop or not mask.any():
            continue
        offset = 0
        for f, k in zip(files, keys):
            m, offset = mask[offset: offset + len(k)], offset + len(k)
            if not m.any():
                continue
            t = pq.read_table(f, filesystem=fs).cast(PAIR_SCHEMA)
            copies, keep = t.filter(pa.array(m)), t.filter(pa.array(~m))
            if keep.num_rows:
                tmp = f"{f}.tmp-dedupe"
                pq.write_table(keep, tmp, filesystem=fs)
                fs.move(tmp, f)
            else:
                fs.delete_file(f)
            for r in copies.to_pylist():
                dropped.append(quarantine_row(r["source"], "duplicate_pair_id",
                                              f"pair_id={r['pair_id']}: an earlier copy is kept in {split}/",
                                              json.dumps(r, ensure_ascii=False)))
                moved[f"{r['source']}:{split}"] += 1
    if dropped:
        fs.create_dir(f"{root}/quarantine", recursive=True)
        pq.write_table(quarantine_table(dropped), f"{root}/quarantine/duplicates.parquet",
                       filesystem=fs)
    return n_dup, moved


def run_prepare(cfg: PrepareConfig) -> PrepareResult:
    """Run the stage; returns (and writes to ``summary.json``) the counts."""
    if not cfg.sources:
        raise ConfigError("config error: sources: at least one source is required")
    require(cfg, "output_dir")
    io.check_storage(cfg.output_dir, "output_dir")
    io.check_input(cfg.tokenizer, "tokenizer")
    # Every input file is checked from metadata before Ray starts: fail (one line) or set bad files aside.
    checks = [check_source(s, cfg, i) for i, s in enumerate(cfg.sources)]
    bad_files = [(s, b) for s, c in zip(cfg.sources, checks) if c for b in c.bad]
    init_ray(cfg.ray)
    for split in (*SPLITS, "quarantine"):
        io.rmtree(io.join(cfg.output_dir, split))
    write_bad_files(cfg.output_dir, [b for _, b in bad_files])
    usable = [(s, c) for s, c in zip(cfg.sources, checks) if c is None or c.files]
    if not usable:
        raise ConfigError(f"input error: no readable input file in any source ({len(bad_files)} quarantined, "
                          f"see {io.join(cfg.output_dir, 'quarantine')})")
    datasets = [read_source(s, cfg, c) for s, c in usable]
    ds = datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
    sink = SplitParquetSink(cfg.output_dir)
    ds.write_datasink(sink)
    c = Counter(sink.counts)
    n_dup, moved = dedupe_splits(cfg.output_dir, drop=cfg.duplicates == "drop")
    for key, n in moved.items():  # dropped copies: from their split to the quarantine, with a reason
        name, split = key.rsplit(":", 1)
        c[split] -= n
        c[f"source:{name}:{split}"] -= n
        c["quarantine"] += n
        c[f"source:{name}:quarantine"] += n
        c["reason:duplicate_pair_id"] += n
    for _, b in bad_files:
        c[f"reason:{b.reason}"] += 1
    kept = sum(c.get(s, 0) for s in SPLITS)
    per_source: dict[str, dict[str, int]] = {}
    for k, v in c.items():
        if k.startswith("source:") and v:
            name, split = k[len("source:"):].rsplit(":", 1)
            per_source.setdefault(name, {})[split] = v
    summary = PrepareResult(
        rows_in=kept + c.get("quarantine", 0),
        kept=kept,
        quarantined=c.get("quarantine", 0),
        splits={s: c.get(s, 0) for s in SPLITS if s != "unused" or c.get(s)},
        quarantine_reasons={k.split(":", 1)[1]: v for k, v in sorted(c.items()) if k.startswith("reason:") and v},
        duplicate_pairs=n_dup,
        duplicates=cfg.duplicates,
        files_quarantined=len(bad_files),
        bad_files=[{"source": s.label, "path": b.path, "reason": b.reason, "detail": b.detail} for s, b in bad_files[:100]],
        per_source=per_source,
        output_dir=cfg.output_dir,
    )
    write_result(cfg.output_dir, summary)
    return summary


def format_summary(s: PrepareResult) -> str:
    sp = s.splits
    lines = [
        f"prepare: {s.rows_in} rows in = {s.kept} kept + {s.quarantined} quarantined",
        f"  splits: labeled {sp['labeled']}, unlabeled {sp['unlabeled']}, validation {sp['validation']}, test {sp['test']}"
        + (f", unused {sp['unused']} (unlabeled_fraction fixes D_unlabeled)" if sp.get("unused") else ""),
    ]
    lines += quarantine_lines(s.quarantine_reasons, s.files_quarantined, s.output_dir)
    if s.duplicate_pairs:
        verb = "dropped" if s.duplicates == "drop" else "kept"
        lines.append(f"  duplicate pairs (same pair_id): {s.duplicate_pairs} {verb}")
    lines.append(f"  output: {s.output_dir}/{{labeled,unlabeled,validation,test}}/*.parquet")
    return "\n".join(lines)


__all__ = ["run_prepare", "format_summary", "dedupe_splits", "JsonLinesDatasource", "SplitParquetSink", "BATCH_SCHEMA"]
