"""`cwpo export`: a run's labeled data, weak annotator and aligned students as Hugging Face Hub repos.

Writes, under ``output_dir``, one folder per repo, each exactly what the Hub repo will hold:

* ``dataset/`` — ``data/train-00000-of-00001.parquet`` (TRL's ``prompt`` / ``chosen`` / ``rejected`` plus
  ``confidence``, ``score_chosen``, ``score_rejected``, ``pair_id``, ``human_label_agrees``) and a dataset
  card (``README.md``: YAML metadata with the ``configs`` entry ``datasets.load_dataset`` reads, then the
  annotator, the labeled fraction, the confidence histogram and the agreement with held-out human labels);
  ``confidence_hist.png`` when `annotate` drew one.
* ``annotator/`` — the weak annotator's HF folder (``AutoModelForSequenceClassification``, one logit = its
  Bradley–Terry score) and a model card with its held-out accuracy and calibration.
* ``students/<method>/`` — each aligned student's HF folder (``AutoModelForCausalLM``) and a model card
  with its method (loss, weighting, beta, base model) and its GRA when the run evaluated it.

With ``push.*`` repo ids set, each folder is uploaded by huggingface_hub (``create_repo`` +
``upload_folder``: the library's own push; the token comes from ``HF_TOKEN`` or ``huggingface-cli login``,
never from the config). Cards are built with huggingface_hub's ``DatasetCard`` / ``ModelCard``.

    cwpo export run_dir=runs/demo                      # -> runs/demo/export/{dataset,annotator,students/*}
    cwpo export run_dir=runs/demo push.dataset=me/cwpo-labels push.annotator=me/cwpo-annotator
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from cwpo_ray import io
from cwpo_ray.config import ConfigError, LocalPath, StrictModel
from cwpo_ray.results import StageResult, write_result
from cwpo_ray.schema import PREFERENCE_SCHEMA

log = logging.getLogger(__name__)

TRL_COLUMNS = ("prompt", "chosen", "rejected")
DATA_FILE = "data/train-00000-of-00001.parquet"


class PushConfig(StrictModel):
    """Hub repo ids to push to (none set: nothing is pushed)."""

    dataset: str | None = None
    annotator: str | None = None
    students: dict[str, str] = Field(default_factory=dict)  # method -> repo id
    private: bool = True
    commit_message: str = "cwpo export"


class ExportConfig(StrictModel):
    """What to export: a pipeline run folder, or explicit paths (which override the run folder's)."""

    run_dir: LocalPath | None = None  # a `cwpo pipeline` / `cwpo demo` run folder (local)
    preferences: str | None = None  # annotate's preferences parquet (default {run_dir}/annotated/preferences; URI ok)
    annotator: str | None = None  # the annotator's HF folder (default {run_dir}/annotator/model)
    students: dict[str, str] | None = None  # method -> HF folder (default: every {run_dir}/align/<method>/model)
    output_dir: LocalPath | None = None  # local folder (default {run_dir}/export)
    push: PushConfig = Field(default_factory=PushConfig)


class ExportResult(StageResult):
    output_dir: str
    dataset_dir: str
    rows: int
    columns: list[str]
    annotator_dir: str | None = None
    student_dirs: dict[str, str] = Field(default_factory=dict)
    pushed: dict[str, str] = Field(default_factory=dict)  # folder -> repo id


def _read_json(path: Path | None) -> dict:
    if path is None or not path.exists():
        return {}
    return json.loads(path.read_text())


def resolve(cfg: ExportConfig) -> ExportConfig:
    """Fill the paths the user left unset from ``run_dir``; fail fast, naming the field, on what is missing."""
    run = Path(cfg.run_dir) if cfg.run_dir else None
    if run is not None and "://" in str(cfg.run_dir):
        raise ConfigError("config error: run_dir: export reads a local run folder (object-store run folders: not yet)")
    if run is not None and not run.is_dir():
        raise ConfigError(f"config error: run_dir: {cfg.run_dir!r} is not a folder")
    upd: dict = {}
    if cfg.preferences is None:
        if run is None:
            raise ConfigError("config error: preferences: required (or give run_dir)")
        upd["preferences"] = str(run / "annotated" / "preferences")
    if cfg.annotator is None and run is not None and (run / "annotator" / "model").is_dir():
        upd["annotator"] = str(run / "annotator" / "model")
    if cfg.students is None:
        align = run / "align" if run is not None else None
        upd["students"] = {d.name: str(d / "model") for d in sorted(align.iterdir()) if (d / "model").is_dir()} \
            if align is not None and align.is_dir() else {}
    if cfg.output_dir is None:
        if run is None:
            raise ConfigError("config error: output_dir: required (or give run_dir)")
        upd["output_dir"] = str(run / "export")
    cfg = cfg.model_copy(update=upd)
    if "://" in cfg.output_dir:
        raise ConfigError("config error: output_dir: a local folder (push.* uploads it to the Hub)")
    if not io.exists(cfg.preferences):
        raise ConfigError(f"config error: preferences: {cfg.preferences!r} does not exist")
    for field, path in [("annotator", cfg.annotator), *((f"students.{m}", p) for m, p in cfg.students.items())]:
        if path is not None and not (Path(path) / "config.json").exists():
            raise ConfigError(f"config error: {field}: {path!r} is not a Hugging Face model folder (no config.json)")
    unknown = set(cfg.push.students) - set(cfg.students)
    if unknown:
        raise ConfigError(f"config error: push.students: no student {sorted(unknown)} to push (have {sorted(cfg.students)})")
    if cfg.push.annotator and cfg.annotator is None:
        raise ConfigError("config error: push.annotator: no annotator folder to push (set annotator)")
    return cfg


def preference_table(path: str) -> pa.Table:
    """annotate's preferences (PREFERENCE_SCHEMA), checked: TRL's three text columns and ``confidence``
    present and non-null, every confidence in [0, 1]."""
    fs, local = io.resolve(path)
    t = pq.read_table(local, filesystem=fs)
    missing = [c for c in (*TRL_COLUMNS, "confidence") if c not in t.column_names]
    if missing:
        raise ConfigError(f"input error: preferences: {path} has no column {', '.join(map(repr, missing))} "
                          "(expected PREFERENCE_SCHEMA, as `cwpo annotate` writes)")
    for c in (*TRL_COLUMNS, "confidence"):
        if t.column(c).null_count:
            raise ConfigError(f"input error: preferences: column {c!r} has {t.column(c).null_count} null values in {path}")
    import pyarrow.compute as pc

    conf = t.column("confidence")
    if t.num_rows and (pc.min(conf).as_py() < 0 or pc.max(conf).as_py() > 1):
        raise ConfigError(f"input error: preferences: confidence outside [0, 1] in {path}")
    keep = [f.name for f in PREFERENCE_SCHEMA if f.name in t.column_names]
    return t.select(keep)


def _hist_table(hist: dict) -> str:
    if not hist:
        return ""
    counts, edges = hist["counts"], hist["edges"]
    rows = [f"| {edges[i]:.2f}–{edges[i + 1]:.2f} | {n} |" for i, n in enumerate(counts) if n]
    return "| confidence | pairs |\n|---|---|\n" + "\n".join(rows)


def _hub_id(path: str | None) -> str | None:
    """A model reference usable as card metadata ``base_model``: a hub id, never a local path."""
    return path if path and not os.path.exists(path) and "://" not in path and path.count("/") == 1 else None


def dataset_card(t: pa.Table, run: Path | None, annotator: str | None):
    from huggingface_hub import DatasetCard, DatasetCardData

    ann = _read_json(run / "annotated" / "summary.json") if run else {}
    trained = _read_json(run / "annotator" / "summary.json") if run else {}
    stats = _read_json(run / "label_stats.json") if run else {}
    frac = None
    if run and (run / "config.yaml").exists():
        import yaml

        frac = (yaml.safe_load((run / "config.yaml").read_text()).get("prepare") or {}).get("labeled_fraction")
    data = DatasetCardData(
        tags=["cwpo", "preference", "dpo", "weak-supervision", "confidence-weighted"],
        task_categories=["text-generation"], size_categories=["n<1K" if t.num_rows < 1000 else "1K<n<10K" if t.num_rows < 10_000 else "10K<n<100K"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}])
    held = trained.get("held_out") or {}
    lines = [
        "# Weak-annotator preference labels with confidences (cwpo-ray)", "",
        f"{t.num_rows} (prompt, chosen, rejected) pairs labeled by a weak Bradley–Terry annotator, each with "
        "`confidence` = 2·(σ(s_chosen − s_rejected) − ½) ∈ [0, 1] (Confidence-Weighted Preference Optimization, "
        "Afzali, Brbic, Jeon, ICLR 2026). Train with any DPO trainer; weight each pair's loss by `confidence` for CW-DPO.", "",
        "## How it was labeled",
        f"- annotator: `{annotator or ann.get('model', 'unknown')}` (base `{trained.get('base_model', 'unknown')}`), "
        f"trained on {trained.get('train_pairs', '?')} human-labeled pairs"
        + (f" (labeled fraction {frac})" if frac is not None else ""),
    ]
    if held:
        lines.append(f"- annotator accuracy on held-out human labels ({held.get('split')}, {held.get('pairs')} pairs): "
                     f"{held.get('accuracy', float('nan')):.3f}, ECE {held.get('ece', float('nan')):.3f}")
    if ann.get("human_agreement") is not None:
        lines.append(f"- agreement of these labels with the pool's own human labels ({ann.get('human_labeled_pairs')} "
                     f"pairs with one): {ann['human_agreement']:.3f}")
    if stats.get("weak_gold_agreement") is not None:
        lines.append(f"- agreement with the gold reward's ordering: {stats['weak_gold_agreement']:.3f}; top-30% most "
                     f"confident: {stats['weak_gold_agreement_top']['top30']:.3f} (human labels: {stats['human_gold_agreement']:.3f})")
    if ann.get("confidence_quantiles"):
        q = ann["confidence_quantiles"]
        lines.append(f"- confidence: mean {ann.get('confidence_mean', 0):.3f}, p10 {q['p10']:.3f}, p50 {q['p50']:.3f}, p90 {q['p90']:.3f}")
    if ann.get("confidence_hist"):
        lines += ["", "## Confidence histogram", "", _hist_table(ann["confidence_hist"])]
        if run and (run / "annotated" / "confidence_hist.png").exists():
            lines += ["", "![confidence histogram](confidence_hist.png)"]
    lines += ["", "## Use", "", "```python", "from datasets import load_dataset",
              "ds = load_dataset(\"<this repo>\", split=\"train\")  # prompt, chosen, rejected, confidence, ...",
              "from cwpo_ray.integrations.trl import WeightedDPOTrainer  # TRL's DPOTrainer, loss weighted by `confidence`",
              "```"]
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def model_card(kind: str, path: str, summary: dict, extra: list[str]):
    from huggingface_hub import ModelCard, ModelCardData

    tag = "text-classification" if kind == "annotator" else "text-generation"
    data = ModelCardData(library_name="transformers", pipeline_tag=tag, tags=["cwpo", kind],
                         base_model=_hub_id(summary.get("base_model")))
    if kind == "annotator":
        head = ["# Weak preference annotator (cwpo-ray)", "",
                "`AutoModelForSequenceClassification` with one output: the Bradley–Terry score s(x, y) of a prompt and "
                "response. Between two responses, the one with the higher score is preferred with confidence "
                "2·(σ(Δs) − ½)."]
    else:
        head = ["# Preference-aligned student (cwpo-ray)", "", "`AutoModelForCausalLM` aligned with "
                f"{summary.get('loss_type', '?').upper()} (weighting `{summary.get('weighting', '?')}`, beta {summary.get('beta', '?')}) "
                f"from `{summary.get('base_model', '?')}` on {summary.get('rows_used', '?')} pairs."]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(head + [""] + extra) + "\n")


def _copy_model(src: str, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("README.md", "responses_cache"))


def push_folder(folder: Path, repo_id: str, repo_type: str, push: PushConfig) -> str:
    """Upload a folder as a Hub repo (created if missing) with huggingface_hub; returns the repo URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type=repo_type, private=push.private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type=repo_type, commit_message=push.commit_message)
    return str(getattr(info, "commit_url", info))


def run_export(cfg: ExportConfig) -> ExportResult:
    cfg = resolve(cfg)
    run = Path(cfg.run_dir) if cfg.run_dir else None
    out = Path(cfg.output_dir)
    if (cfg.push.dataset or cfg.push.annotator or cfg.push.students) and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ConfigError("config error: push: HF_HUB_OFFLINE=1 is set, so nothing can be pushed (unset it, or drop push.*)")
    # the dataset: parquet + card
    t = preference_table(cfg.preferences)
    ds_dir = out / "dataset"
    if ds_dir.exists():
        shutil.rmtree(ds_dir)
    (ds_dir / "data").mkdir(parents=True)
    pq.write_table(t, ds_dir / DATA_FILE)
    dataset_card(t, run, cfg.annotator).save(ds_dir / "README.md")
    if run and (run / "annotated" / "confidence_hist.png").exists():
        shutil.copy(run / "annotated" / "confidence_hist.png", ds_dir / "confidence_hist.png")
    # the annotator and the students: HF folders + cards
    ann_dir = None
    if cfg.annotator:
        ann_dir = out / "annotator"
        _copy_model(cfg.annotator, ann_dir)
        s = _read_json(Path(cfg.annotator).parent / "summary.json")
        held = s.get("held_out") or {}
        extra = [f"- trained on {s.get('train_pairs', '?')} human-labeled pairs, {s.get('epochs_trained', '?')} epochs"]
        if held:
            extra.append(f"- held-out accuracy vs human labels ({held.get('pairs')} pairs): {held.get('accuracy', float('nan')):.3f}; "
                         f"ECE {held.get('ece', float('nan')):.3f}")
        model_card("annotator", cfg.annotator, s, extra).save(ann_dir / "README.md")
    metrics = _read_json(run / "eval" / "metrics.json") if run else {}
    student_dirs = {}
    for method, path in cfg.students.items():
        d = out / "students" / method
        _copy_model(path, d)
        s = _read_json(Path(path).parent / "summary.json")
        extra = []
        if method in (metrics.get("methods") or {}):
            g = metrics["methods"][method]
            extra.append(f"- gold reward accuracy (GRA) vs its SFT model on {metrics.get('num_prompts')} test prompts: "
                         f"{g['gra']:.3f} [{g['gra_ci'][0]:.3f}, {g['gra_ci'][1]:.3f}]")
        model_card("student", path, s, extra).save(d / "README.md")
        student_dirs[method] = str(d)
    pushed = {}
    if cfg.push.dataset:
        pushed[str(ds_dir)] = push_folder(ds_dir, cfg.push.dataset, "dataset", cfg.push)
    if cfg.push.annotator:
        pushed[str(ann_dir)] = push_folder(ann_dir, cfg.push.annotator, "model", cfg.push)
    for method, repo in cfg.push.students.items():
        pushed[student_dirs[method]] = push_folder(Path(student_dirs[method]), repo, "model", cfg.push)
    result = ExportResult(output_dir=str(out), dataset_dir=str(ds_dir), rows=t.num_rows, columns=t.column_names,
                          annotator_dir=str(ann_dir) if ann_dir else None, student_dirs=student_dirs, pushed=pushed)
    write_result(str(out), result)
    return result


def format_export(r: ExportResult) -> str:
    lines = [f"export: {r.rows} labeled pairs -> {r.dataset_dir} (columns {', '.join(r.columns)})"]
    if r.annotator_dir:
        lines.append(f"  annotator -> {r.annotator_dir}")
    for m, d in r.student_dirs.items():
        lines.append(f"  student {m} -> {d}")
    for d, url in r.pushed.items():
        lines.append(f"  pushed {d} -> {url}")
    if not r.pushed:
        lines.append("  nothing pushed (set push.dataset / push.annotator / push.students.<method> to a repo id)")
    return "\n".join(lines)


__all__ = ["ExportConfig", "PushConfig", "ExportResult", "run_export", "format_export", "preference_table"]
