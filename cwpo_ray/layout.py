"""The run folder: where each stage of ``cwpo pipeline`` / ``cwpo demo`` / a sweep trial reads and writes.

One object owns these paths, so the pipeline, the sweep and the scripts never re-derive them by hand::

    {run}/config.yaml  manifest.json  label_stats.json
    {run}/synthetic/   the embedded task (data, tokenizer, tiny base models)
    {run}/data/        prepare: {labeled,unlabeled,validation,test}/*.parquet, quarantine/, summary.json
    {run}/annotator/   train-annotator: model/ (AutoModelForSequenceClassification), plots, summary.json
    {run}/annotated/   annotate: labeled/*.parquet (prompt, chosen, rejected, confidence, ...)
    {run}/sft/         sft: model/ (AutoModelForCausalLM)
    {run}/generated/   generate (optional): pairs/*.parquet
    {run}/human_all/   labeled + unlabeled human pairs (links), for labels=human_all
    {run}/align/NAME/  align, one folder per method: model/
    {run}/eval/        evaluate: metrics.json, report.md, plots
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @classmethod
    def of(cls, run_dir: str | Path) -> "RunLayout":
        return cls(Path(run_dir).resolve())

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def label_stats(self) -> Path:
        return self.root / "label_stats.json"

    @property
    def synthetic(self) -> Path:
        return self.root / "synthetic"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def split(self, name: str) -> Path:
        return self.data / name

    @property
    def annotator(self) -> Path:
        return self.root / "annotator"

    @property
    def annotated(self) -> Path:
        return self.root / "annotated"

    @property
    def sft(self) -> Path:
        return self.root / "sft"

    @property
    def generated(self) -> Path:
        return self.root / "generated"

    @property
    def human_all(self) -> Path:
        return self.root / "human_all"

    def align(self, method: str) -> Path:
        return self.root / "align" / method

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @staticmethod
    def model(stage_dir: str | Path) -> Path:
        """The ``save_pretrained`` folder a training stage writes under its output folder."""
        return Path(stage_dir) / "model"
