"""Run manifests: skip a pipeline stage when its output exists for the same config and inputs.

A stage's *key* is a hash of (stage name, its config, the fingerprints of its inputs, the package
version). After a stage finishes, the fingerprint of its output is recorded in ``{run_dir}/manifest.json``.
On a re-run, a stage whose key matches the manifest and whose output still has the recorded fingerprint
is skipped; anything else re-runs, and so does everything downstream of it (their keys include this
stage's output fingerprint).

``run_dir`` may be a local path or a URI (``s3://`` …): the manifest is read and written through
pyarrow.fs. The fingerprint of a local output is a content hash (relative paths + bytes of every file);
that of a remote one hashes every file's relative path, size and modification time as the store reports
them (:class:`pyarrow.fs.FileInfo`) instead of downloading the bytes: a rewritten object has a new
modification time, so a re-written output re-runs what depends on it.
"""
from __future__ import annotations

import hashlib
import json
import posixpath
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cwpo_ray import __version__, io


def fingerprint(*paths: str | Path) -> str:
    """Hash of files, or of every file under folders: relative paths + bytes (local) or relative paths +
    sizes + modification times (remote, see the module docstring)."""
    h = hashlib.blake2b(digest_size=16)
    for uri in map(str, paths):
        fs, root = io.resolve(uri)
        found = io.files_under(uri)
        if not found:
            raise FileNotFoundError(f"nothing to fingerprint at {uri}")
        name = posixpath.basename(root.rstrip("/"))
        for f in found:
            rel = f.base_name if f.path.rstrip("/") == root.rstrip("/") else f"{name}/{f.path[len(root.rstrip('/')) + 1:]}"
            h.update(rel.encode() + b"\0")
            if io.is_remote(uri):
                h.update(f"{f.size}:{f.mtime_ns}".encode())
            else:
                with fs.open_input_stream(f.path) as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
            h.update(b"\0")
    return h.hexdigest()


def stage_key(stage: str, config: Any, inputs: dict[str, str]) -> str:
    blob = json.dumps({"stage": stage, "config": config, "inputs": inputs, "version": __version__},
                      sort_keys=True, default=str)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


class Manifest:
    def __init__(self, run_dir: str | Path, name: str = "manifest.json"):
        self.path = io.join(io.absolute(str(run_dir)), name)
        self.data: dict[str, dict] = json.loads(io.read_text(self.path)) if io.exists(self.path) else {}

    def save(self) -> None:
        # whole or not at all (io.write_text): a killed run never leaves a half-written manifest
        io.write_text(self.path, json.dumps(self.data, indent=2, sort_keys=True))

    def forget(self, stage: str) -> None:
        """Drop a stage's record, so that the next :meth:`run` of it runs it."""
        if self.data.pop(stage, None) is not None:
            self.save()

    def is_done(self, stage: str, key: str, artifacts: list) -> bool:
        rec = self.data.get(stage)
        if not rec or rec.get("key") != key:
            return False
        try:
            return fingerprint(*artifacts) == rec.get("fingerprint")
        except FileNotFoundError:
            return False

    def is_recorded(self, stage: str, config: Any, inputs: dict[str, str]) -> bool:
        """Whether this stage is recorded with the same config and inputs (no fingerprinting of its products:
        :meth:`run` still checks those before it skips the stage)."""
        return self.data.get(stage, {}).get("key") == stage_key(stage, config, inputs)

    def run(self, stage: str, config: Any, inputs: dict[str, str], output: str | Path,
            fn: Callable[[], Any], artifacts: list | None = None) -> tuple[str, Any, bool]:
        """Run ``fn`` unless already done; returns (output fingerprint, fn's result or the stored
        summary, skipped?). ``artifacts`` (default: the whole ``output``) are what is fingerprinted:
        the stage's products (e.g. ``model/``), not logs or checkpoints that keep changing."""
        key = stage_key(stage, config, inputs)
        artifacts = artifacts or [output]
        if self.is_done(stage, key, artifacts):
            rec = self.data[stage]
            return rec["fingerprint"], rec.get("summary"), True
        self.data.pop(stage, None)
        self.save()
        t = time.time()
        result = fn()
        fp = fingerprint(*artifacts)
        self.data[stage] = {"key": key, "fingerprint": fp, "output": str(output), "inputs": inputs,
                            "seconds": round(time.time() - t, 2), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                            "summary": result if _jsonable(result) else None}
        self.save()
        return fp, result, False


def _jsonable(x: Any) -> bool:
    try:
        json.dumps(x)
        return True
    except TypeError:
        return False
