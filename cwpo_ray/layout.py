"""The run folder: where each stage of ``cwpo pipeline`` / ``cwpo demo`` / a sweep trial reads and writes.

One object owns these paths, so the pipeline, the sweep and the scripts never re-derive them by hand::

    {run}/config.yaml  manifest.json  label_stats.json
    {run}/synthetic/   the embedded task (data, tokenizer, tiny base models)
    {run}/data/        prepare: {labeled,unlabeled,validation,test}/*.parquet, quarantine/, summary.json
    {run}/annotator/   train-annotator: model/ (AutoModelForSequenceClassification), plots, summary.json
    {run}/annotated/   annotate: preferences/*.parquet (prompt, chosen, rejected, confidence, ...)
    {run}/sft/         sft: model/ (AutoModelForCausalLM), on the labeled split's human labels
    {run}/sft_LABELS/  sft_data=method_labels: one SFT model per label source (weak, human_unlabeled, ...)
    {run}/generated/   generate (optional): pairs/*.parquet
    {run}/human_all/   labeled + unlabeled human pairs (links), for labels=human_all
    {run}/align/NAME/  align, one folder per method: model/
    {run}/eval/        evaluate: metrics.json, report.md, plots

The run folder is a local path or a URI (``s3://bucket/runs/x``): every location here is a string, an
absolute local path or a URI, joined with ``/`` (:func:`cwpo_ray.io.join`).
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

from cwpo_ray import io


def _sub(name: str) -> property:
    return property(lambda self: io.join(self.root, name), doc=f"``{{run}}/{name}``")


@dataclass(frozen=True)
class RunLayout:
    root: str  # an absolute local path or a URI

    @classmethod
    def of(cls, run_dir: str | Path) -> RunLayout:
        return cls(io.absolute(str(run_dir)))

    @property
    def name(self) -> str:
        """The run folder's own name (the last part of its path)."""
        return posixpath.basename(self.root)

    config = _sub("config.yaml")
    label_stats = _sub("label_stats.json")
    synthetic = _sub("synthetic")
    data = _sub("data")
    annotator = _sub("annotator")
    annotated = _sub("annotated")
    sft = _sub("sft")
    generated = _sub("generated")
    human_all = _sub("human_all")
    eval = _sub("eval")

    def sft_for(self, labels: str) -> str:
        """The SFT model folder of one label source (``sft_data: method_labels``)."""
        return self.sft_for_in(self.sft, labels)

    @staticmethod
    def sft_for_in(sft_dir: str | Path, labels: str) -> str:
        """Next to the common SFT folder, wherever that is (a sweep trial points it at a shared run)."""
        return io.join(io.parent(str(sft_dir)), f"sft_{labels}")

    def align(self, method: str) -> str:
        return io.join(self.root, "align", method)

    @staticmethod
    def model(stage_dir: str | Path) -> str:
        """The ``save_pretrained`` folder a training stage writes under its output folder."""
        return io.join(str(stage_dir), "model")
