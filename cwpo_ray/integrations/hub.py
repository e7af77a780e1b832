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

``run_dir``, every input and ``output_dir`` are local paths or URIs (``s3://``, ``gs://``, any pyarrow.fs
filesystem): models at a URI are read through this node's model cache (:func:`cwpo_ray.io.local_model_dir`),
the rest through pyarrow.fs; the folders are written in a local staging folder (the output folder itself
when it is local), pushed from there, and uploaded to a URI ``output_dir`` when everything succeeded
(:func:`cwpo_ray.io.staged_dir`).

    cwpo export run_dir=runs/demo                      # -> runs/demo/export/{dataset,annotator,students/*}
    cwpo export run_dir=runs/demo push.dataset=me/cwpo-labels push.annotator=me/cwpo-annotator
    cwpo export run_dir=s3://bucket/runs/demo          # -> s3://bucket/runs/demo/export/...
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
from cwpo_ray.config import ConfigError, StrictModel
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

    run_dir: str | None = None  # a `cwpo pipeline` / `cwpo demo` run folder (local path or URI)
    preferences: str | None = None  # annotate's preferences parquet (default {run_dir}/annotated/preferences)
    annotator: str | None = None  # the annotator's HF folder (default {run_dir}/annotator/model)
    students: dict[str, str] | None = None  # method -> HF folder (default: every {run_dir}/align/<method>/model)
    output_dir: str | None = None  # local folder or URI (default {run_dir}/export)
    push: PushConfig = Field(default_factory=PushConfig)


class ExportResult(StageResult):
    output_dir: str
    dataset_dir: str
    rows: int
    columns: list[str]
    annotator_dir: str | None = None
    student_dirs: dict[str, str] = Field(default_factory=dict)
    pushed: dict[str, str] = Field(default_factory=dict)  # folder -> repo id


def _read_json(uri: str | None) -> dict:
    if uri is None or not io.exists(uri):
        return {}
    return json.loads(io.read_text(uri))


def resolve(cfg: ExportConfig) -> ExportConfig:
    """Fill the paths the user left unset from ``run_dir``; fail fast, before any copy, naming the field, on
    what is missing: a run folder or an input that is not there, an output store that cannot be used (scheme,
    endpoint, credentials, bucket: :func:`cwpo_ray.io.check_storage`)."""
    run = io.absolute(cfg.run_dir) if cfg.run_dir else None
    if run is not None:
        io.check_storage(cfg.run_dir, "run_dir", must_exist=True)
        if not io.is_dir(run):
            raise ConfigError(f"config error: run_dir: {cfg.run_dir!r} is not a folder")
    upd: dict = {}
    if cfg.preferences is None:
        if run is None:
            raise ConfigError("config error: preferences: required (or give run_dir)")
        upd["preferences"] = io.join(run, "annotated", "preferences")
    if cfg.annotator is None and run is not None and io.is_dir(io.join(run, "annotator", "model")):
        upd["annotator"] = io.join(run, "annotator", "model")
    if cfg.students is None:
        align = io.join(run, "align") if run is not None else None
        upd["students"] = {m: io.join(align, m, "model") for m in io.listdir(align)
                           if io.is_dir(io.join(align, m, "model"))} if align is not None else {}
    if cfg.output_dir is None:
        if run is None:
            raise ConfigError("config error: output_dir: required (or give run_dir)")
        upd["output_dir"] = io.join(run, "export")
    cfg = cfg.model_copy(update=upd)
    io.check_storage(cfg.output_dir, "output_dir")
    io.check_storage(cfg.preferences, "preferences", must_exist=True)
    for field, path in [("annotator", cfg.annotator), *((f"students.{m}", p) for m, p in cfg.students.items())]:
        if path is None:
            continue
        io.check_input(path, field)
        if not io.exists(io.join(path, "config.json")):
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
    """A model reference usable as card metadata ``base_model``: a hub id, never a local path or a URI."""
    return path if path and not io.is_remote(path) and not os.path.exists(path) and path.count("/") == 1 else None


def dataset_card(t: pa.Table, run: str | None, annotator: str | None, has_hist_png: bool = False):
    from huggingface_hub import DatasetCard, DatasetCardData

    ann = _read_json(io.join(run, "annotated", "summary.json")) if run else {}
    trained = _read_json(io.join(run, "annotator", "summary.json")) if run else {}
    stats = _read_json(io.join(run, "label_stats.json")) if run else {}
    frac = None
    if run and io.exists(io.join(run, "config.yaml")):
        import yaml

        frac = (yaml.safe_load(io.read_text(io.join(run, "config.yaml"))).get("prepare") or {}).get("labeled_fraction")
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
        if has_hist_png:
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
    """An HF folder (local, or at a URI through this node's model cache) copied without its card and caches."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(io.local_model_dir(src), dst, ignore=shutil.ignore_patterns("README.md", "responses_cache"))


def push_folder(folder: Path, repo_id: str, repo_type: str, push: PushConfig) -> str:
    """Upload a folder as a Hub repo (created if missing) with huggingface_hub; returns the repo URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type=repo_type, private=push.private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type=repo_type, commit_message=push.commit_message)
    return str(getattr(info, "commit_url", info))


def run_export(cfg: ExportConfig) -> ExportResult:
    cfg = resolve(cfg)
    run = io.absolute(cfg.run_dir) if cfg.run_dir else None
    out = io.absolute(cfg.output_dir)
    if (cfg.push.dataset or cfg.push.annotator or cfg.push.students) and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ConfigError("config error: push: HF_HUB_OFFLINE=1 is set, so nothing can be pushed (unset it, or drop push.*)")
    t = preference_table(cfg.preferences)
    hist = io.join(run, "annotated", "confidence_hist.png") if run else None
    has_hist = hist is not None and io.exists(hist)
    # each exported folder is replaced whole (an upload only adds files to what a URI holds)
    for folder in ("dataset", *(["annotator"] if cfg.annotator else []), *(f"students/{m}" for m in cfg.students)):
        io.rmtree(io.join(out, folder))
    with io.staged_dir(out) as work:  # the output folder itself when it is local
        stage = Path(work)
        # the dataset: parquet + card
        (stage / "dataset" / "data").mkdir(parents=True)
        pq.write_table(t, stage / "dataset" / DATA_FILE)
        dataset_card(t, run, cfg.annotator, has_hist).save(stage / "dataset" / "README.md")
        if has_hist:
            (stage / "dataset" / "confidence_hist.png").write_bytes(io.read_bytes(hist))
        # the annotator and the students: HF folders + cards
        ann_dir = None
        if cfg.annotator:
            _copy_model(cfg.annotator, stage / "annotator")
            s = _read_json(io.join(io.parent(cfg.annotator), "summary.json"))
            held = s.get("held_out") or {}
            extra = [f"- trained on {s.get('train_pairs', '?')} human-labeled pairs, {s.get('epochs_trained', '?')} epochs"]
            if held:
                extra.append(f"- held-out accuracy vs human labels ({held.get('pairs')} pairs): {held.get('accuracy', float('nan')):.3f}; "
                             f"ECE {held.get('ece', float('nan')):.3f}")
            model_card("annotator", cfg.annotator, s, extra).save(stage / "annotator" / "README.md")
            ann_dir = io.join(out, "annotator")
        metrics = _read_json(io.join(run, "eval", "metrics.json")) if run else {}
        student_dirs = {}
        for method, path in cfg.students.items():
            d = stage / "students" / method
            _copy_model(path, d)
            s = _read_json(io.join(io.parent(path), "summary.json"))
            extra = []
            if method in (metrics.get("methods") or {}):
                g = metrics["methods"][method]
                extra.append(f"- gold reward accuracy (GRA) vs its SFT model on {metrics.get('num_prompts')} test prompts: "
                             f"{g['gra']:.3f} [{g['gra_ci'][0]:.3f}, {g['gra_ci'][1]:.3f}]")
            model_card("student", path, s, extra).save(d / "README.md")
            student_dirs[method] = io.join(out, "students", method)
        # pushed from the local folders (the staging folder of a URI output_dir, uploaded after)
        pushed = {}
        if cfg.push.dataset:
            pushed[io.join(out, "dataset")] = push_folder(stage / "dataset", cfg.push.dataset, "dataset", cfg.push)
        if cfg.push.annotator:
            pushed[ann_dir] = push_folder(stage / "annotator", cfg.push.annotator, "model", cfg.push)
        for method, repo in cfg.push.students.items():
            pushed[student_dirs[method]] = push_folder(stage / "students" / method, repo, "model", cfg.push)
        result = ExportResult(output_dir=out, dataset_dir=io.join(out, "dataset"), rows=t.num_rows, columns=t.column_names,
                              annotator_dir=ann_dir, student_dirs=student_dirs, pushed=pushed)
        write_result(work, result)
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
