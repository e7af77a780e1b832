"""Run manifests: skip a pipeline stage when its output exists for the same config and inputs.

A stage's *key* is a hash of (stage name, its config, the fingerprints of its inputs, the package
version). After a stage finishes, the fingerprint of its output (a content hash of every file under
it) is recorded in ``{run_dir}/manifest.json``. On a re-run, a stage whose key matches the manifest
and whose output still has the recorded fingerprint is skipped; anything else re-runs, and so does
everything downstream of it (their keys include this stage's output fingerprint).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cwpo_ray import __version__


def fingerprint(*paths: str | Path) -> str:
    """Content hash of files, or of every file under folders (relative paths + bytes)."""
    h = hashlib.blake2b(digest_size=16)
    files: list[tuple[str, Path]] = []
    for p in map(Path, paths):
        found = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        if not found:
            raise FileNotFoundError(f"nothing to fingerprint at {p}")
        files += [(f"{p.name}/{f.relative_to(p)}" if f != p else f.name, f) for f in found]
    for rel, f in files:
        h.update(rel.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def stage_key(stage: str, config: Any, inputs: dict[str, str]) -> str:
    blob = json.dumps({"stage": stage, "config": config, "inputs": inputs, "version": __version__},
                      sort_keys=True, default=str)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


class Manifest:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "manifest.json"
        self.data: dict[str, dict] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        os.replace(tmp, self.path)  # atomic: a killed run never leaves a half-written manifest

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
