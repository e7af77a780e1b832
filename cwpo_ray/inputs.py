"""Input files of a stage, checked before any compute: readable, and with the columns the stage needs.

Every stage that reads files (prepare, annotate, sft/align, evaluate) lists its input files with
:func:`check_inputs` first. A parquet file is checked from its footer only (``ParquetFile(...).metadata``:
no data page is read): a file whose footer cannot be read (truncated, not parquet) is ``unreadable_file``,
one without a required column is ``missing_columns``, one whose column has an incompatible type is
``wrong_column_types``. A compressed jsonl file (``.gz``, ...) has no footer: it is checked by streaming it
through the decompressor once (a truncated gzip fails there, not inside a Ray task).

With ``on_bad_file="quarantine"`` (default) a bad file is set aside whole and the run goes on with the
good files; :func:`write_bad_files` records each one as a QUARANTINE_SCHEMA row (source = the file's path,
reason, detail, raw = null) in ``{output_dir}/quarantine/files.parquet`` — the one place every stage puts
them. With ``on_bad_file="fail"`` the first bad file raises :class:`~cwpo_ray.config.ConfigError` with one
line naming it, e.g. ``input error: /d/part-3.parquet: not a readable parquet file (Parquet magic bytes
not found in footer. ...)``.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cwpo_ray import io
from cwpo_ray.config import ConfigError
from cwpo_ray.schema import quarantine_row, quarantine_table

FILES_QUARANTINE = "files.parquet"  # {output_dir}/quarantine/files.parquet: one row per quarantined input file
UNREADABLE, MISSING_COLUMNS, WRONG_TYPES = "unreadable_file", "missing_columns", "wrong_column_types"
FILE_REASONS = (UNREADABLE, MISSING_COLUMNS, WRONG_TYPES)
# Compressed stream formats (checked by decompressing them once; the rest are only opened).
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4")
_MAX_DETAIL = 300


@dataclass(frozen=True)
class BadFile:
    path: str
    reason: str  # one of FILE_REASONS
    detail: str  # for a human, one line

    @property
    def message(self) -> str:
        return f"input error: {self.path}: {self.detail}"


@dataclass
class InputCheck:
    """Result of :func:`check_inputs`: the files to read, the ones set aside, and row counts from metadata."""

    path: str
    files: list[str] = field(default_factory=list)  # good files, in sorted order (URIs keep their scheme)
    bad: list[BadFile] = field(default_factory=list)
    rows: int | None = 0  # rows of the good files from parquet metadata (None: not known, e.g. jsonl)

    @property
    def reasons(self) -> dict[str, int]:
        return dict(Counter(b.reason for b in self.bad))

    def records(self) -> list:
        """What a stage's result gets: the first 100 bad files as ``results.BadFileRecord`` (path, reason, detail);
        ``files_quarantined`` is ``len(self.bad)``."""
        from cwpo_ray.results import BadFileRecord

        return [BadFileRecord(**asdict(b)) for b in self.bad[:100]]

    def read_path(self) -> str | list[str]:
        """What to hand a reader: the original path when every file is good (same semantics as before,
        e.g. hive partitions), else the explicit list of good files."""
        return self.path if not self.bad else list(self.files)


def _one_line(text: str) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= _MAX_DETAIL else s[: _MAX_DETAIL - 1] + "…"


def list_files(path: str, suffixes: tuple[str, ...] = (".parquet",), what: str = "input") -> list[str]:
    """Sorted files of ``path`` (a file, or a folder searched recursively for ``suffixes``). Like Ray Data
    and Arrow datasets, names starting with ``.`` or ``_`` inside a folder are skipped. A path that does
    not exist, or storage that cannot be reached, is a config error (not a bad file)."""
    io.check_storage(path, what)  # reachable store, existing bucket: one line, not a traceback
    fs, p = io.resolve(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"config error: {what}: {path!r} does not exist")
    if info.type == pafs.FileType.File:
        return [path]
    prefix = path[: len(path) - len(p)] if io.is_remote(path) else ""
    out = []
    for f in fs.get_file_info(pafs.FileSelector(p, recursive=True)):
        rel = f.path[len(p):].lstrip("/")
        if f.type != pafs.FileType.File or any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        if f.path.endswith(suffixes):
            out.append(prefix + f.path)
    return sorted(out)


def _type_ok(t: pa.DataType, kind: str) -> bool:
    if pa.types.is_null(t):  # an all-null column: its rows are quarantined one by one with a reason
        return True
    if pa.types.is_dictionary(t):
        t = t.value_type
    if kind == "string":
        return pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", lambda _: False)(t)
    if kind == "number":
        return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
    if kind == "bool":
        return pa.types.is_boolean(t)
    raise ValueError(f"unknown column kind {kind!r}")


def check_parquet_file(path: str, required: Iterable[str] = (), types: Mapping[str, str] | None = None
                       ) -> tuple[BadFile | None, int]:
    """(why the file is bad or None, its row count) from the parquet footer only.

    ``types``: column -> "string" | "number" | "bool"; checked for the columns that are present (a
    required column must also be present)."""
    fs, p = io.resolve(path)
    try:
        with fs.open_input_file(p) as fh:
            md = pq.ParquetFile(fh).metadata
            schema = md.schema.to_arrow_schema()
    except Exception as e:  # noqa: BLE001 - any failure to read the footer makes the file unreadable
        return BadFile(path, UNREADABLE, f"not a readable parquet file ({_one_line(e)})"), 0
    names = set(schema.names)
    missing = [c for c in required if c not in names]
    if missing:
        has = ", ".join(schema.names[:12]) + (", …" if len(schema.names) > 12 else "")
        return BadFile(path, MISSING_COLUMNS, f"missing columns {', '.join(missing)} (has: {has or 'none'})"), md.num_rows
    wrong = [f"{c} is {schema.field(c).type}, expected {kind}" for c, kind in (types or {}).items()
             if c in names and not _type_ok(schema.field(c).type, kind)]
    if wrong:
        return BadFile(path, WRONG_TYPES, "wrong column types: " + "; ".join(wrong)), md.num_rows
    return None, md.num_rows


def check_stream_file(path: str) -> BadFile | None:
    """A non-parquet file (jsonl): can it be opened and, when compressed, decompressed to the end?"""
    fs, p = io.resolve(path)
    compressed = p.endswith(COMPRESSED_SUFFIXES)
    try:
        with fs.open_input_stream(p, compression="detect" if compressed else None) as f:
            if compressed:
                while f.read(8 << 20):
                    pass
            else:
                f.read(1)
    except Exception as e:  # noqa: BLE001
        kind = "compressed file" if compressed else "file"
        return BadFile(path, UNREADABLE, f"not a readable {kind} ({_one_line(e)})")
    return None


def check_inputs(path: str, required: Iterable[str] = (), types: Mapping[str, str] | None = None,
                 on_bad_file: str = "quarantine", what: str = "input") -> InputCheck:
    """List and check the input files of ``path`` (parquet: footer only; jsonl: readability).

    Returns the good files, the bad ones with reasons and the good files' row count (parquet metadata;
    None when a jsonl file is among them). ``on_bad_file="fail"``: raise ConfigError at the first bad file."""
    required = list(required)
    out = InputCheck(path=path)
    for f in list_files(path, what=what):  # a folder: its parquet files; a file: itself (parquet or jsonl)
        if f.endswith(".parquet"):
            bad, n = check_parquet_file(f, required, types)
        else:
            bad, n = check_stream_file(f), None
        if bad is not None:
            if on_bad_file == "fail":
                raise ConfigError(bad.message)
            out.bad.append(bad)
            continue
        out.files.append(f)
        out.rows = None if (n is None or out.rows is None) else out.rows + n
    return out


def bad_file_table(bad: Iterable[BadFile]) -> pa.Table:
    """QUARANTINE_SCHEMA rows for quarantined files: source = path, reason, detail, raw = null."""
    return quarantine_table(quarantine_row(b.path, b.reason, b.detail) for b in bad)


def quarantine_lines(reasons: dict[str, int], files_quarantined: int, output_dir: str) -> list[str]:
    """The console lines a stage's summary prints about what it quarantined (rows by reason, whole files)."""
    lines = []
    if reasons:
        lines.append("  quarantine: " + ", ".join(f"{k} {v}" for k, v in reasons.items()) + f"  (see {output_dir}/quarantine/)")
    if files_quarantined:
        lines.append(f"  bad input files: {files_quarantined} quarantined whole (see {output_dir}/quarantine/{FILES_QUARANTINE})")
    return lines


def write_bad_files(output_dir: str, bad: Iterable[BadFile]) -> str | None:
    """Write ``{output_dir}/quarantine/files.parquet`` (or remove a stale one when there is no bad file)."""
    bad = list(bad)
    uri = io.join(output_dir, "quarantine", FILES_QUARANTINE)
    if not bad:
        if io.exists(uri):
            io.rmtree(uri)
        return None
    fs, p = io.resolve(uri)
    fs.create_dir(os.path.dirname(p), recursive=True)
    pq.write_table(bad_file_table(bad), p, filesystem=fs)
    return uri


__all__ = ["BadFile", "InputCheck", "check_inputs", "check_parquet_file", "check_stream_file", "list_files",
           "bad_file_table", "write_bad_files", "quarantine_lines", "FILES_QUARANTINE", "FILE_REASONS", "UNREADABLE", "MISSING_COLUMNS",
           "WRONG_TYPES"]
