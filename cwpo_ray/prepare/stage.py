"""`cwpo prepare` on Ray Data: read (jsonl / parquet / HF dataset) -> normalize -> split parquet shards.

Everything streams: a line-oriented jsonl datasource (so a bad line is a quarantined row, not a
failed read), ``map_batches`` with the pure :class:`~cwpo_ray.prepare.core.Normalizer`, and one
datasink that routes rows to ``{output_dir}/{labeled,unlabeled,validation,test,quarantine}/part-*.parquet``.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.datasource import FileBasedDatasource

from cwpo_ray import io
from cwpo_ray.config import ConfigError, require
from cwpo_ray.prepare.config import PrepareConfig, SourceConfig
from cwpo_ray.prepare.core import BATCH_SCHEMA, Normalizer, parse_json_lines
from cwpo_ray.runtime import init_ray
from cwpo_ray.schema import PAIR_SCHEMA, QUARANTINE_SCHEMA, SPLITS

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


def read_source(src: SourceConfig, cfg: PrepareConfig):
    """One source as a Ray Dataset of BATCH_SCHEMA rows."""
    import ray

    norm = Normalizer(src.format, src.label, src.columns, cfg.test_fraction, cfg.labeled_fraction,
                      cfg.split_seed, cfg.tokenizer, cfg.max_tokens, cfg.validation_fraction)
    if src.hf_dataset:
        import datasets

        hf = datasets.load_dataset(src.hf_dataset, name=src.hf_config, data_dir=src.hf_data_dir, split=src.hf_split)
        ds = ray.data.from_huggingface(hf)
        kind = "rows"
    elif src.path.endswith(".parquet") or io.resolve(src.path)[0].get_file_info(io.resolve(src.path)[1]).type.name == "Directory":
        ds = ray.data.read_parquet(src.path)
        kind = "rows"
    else:
        ds = ray.data.read_datasource(JsonLinesDatasource(src.path))
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


def run_prepare(cfg: PrepareConfig) -> dict:
    """Run the stage; returns (and writes to ``summary.json``) the counts."""
    if not cfg.sources:
        raise ConfigError("config error: sources: at least one source is required")
    require(cfg, "output_dir")
    init_ray(cfg.ray)
    for split in (*SPLITS, "quarantine"):
        io.rmtree(io.join(cfg.output_dir, split))
    datasets = [read_source(s, cfg) for s in cfg.sources]
    ds = datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
    sink = SplitParquetSink(cfg.output_dir)
    ds.write_datasink(sink)
    c = sink.counts
    kept = sum(c.get(s, 0) for s in SPLITS)
    summary = {
        "rows_in": kept + c.get("quarantine", 0),
        "kept": kept,
        "quarantined": c.get("quarantine", 0),
        "splits": {s: c.get(s, 0) for s in SPLITS},
        "quarantine_reasons": {k.split(":", 1)[1]: v for k, v in sorted(c.items()) if k.startswith("reason:")},
        "per_source": {},
        "output_dir": cfg.output_dir,
    }
    for k, v in c.items():
        if k.startswith("source:"):
            _, name, split = k.split(":", 2)
            summary["per_source"].setdefault(name, {})[split] = v
    io.write_text(io.join(cfg.output_dir, "summary.json"), json.dumps(summary, indent=2))
    return summary


def format_summary(s: dict) -> str:
    sp = s["splits"]
    lines = [
        f"prepare: {s['rows_in']} rows in = {s['kept']} kept + {s['quarantined']} quarantined",
        f"  splits: labeled {sp['labeled']}, unlabeled {sp['unlabeled']}, validation {sp['validation']}, test {sp['test']}",
    ]
    if s["quarantine_reasons"]:
        lines.append("  quarantine: " + ", ".join(f"{k} {v}" for k, v in s["quarantine_reasons"].items())
                     + f"  (see {s['output_dir']}/quarantine/)")
    lines.append(f"  output: {s['output_dir']}/{{labeled,unlabeled,validation,test}}/*.parquet")
    return "\n".join(lines)


__all__ = ["run_prepare", "format_summary", "JsonLinesDatasource", "SplitParquetSink", "BATCH_SCHEMA"]
