"""`cwpo pipeline` / `cwpo demo`: prepare → train-annotator → annotate → sft → align (methods) → evaluate.

Every stage writes into one run directory and is recorded in ``{run_dir}/manifest.json`` with a key
over its config and the content fingerprints of its inputs (see :mod:`cwpo_ray.manifest`): re-running
skips finished stages, so an interrupted pipeline resumes where it stopped, and changing a setting
re-runs exactly the stages downstream of it. One exception: a synthetic task written outside the run
directory (``synthetic.output_dir``, e.g. one task shared by a sweep's upstream points) is recorded beside
it in ``{output_dir}.manifest.json``, so every run that names it builds it once.

``cwpo demo`` is this pipeline with ``cwpo_ray/configs/demo.yaml`` as its base config: the embedded
synthetic task, tiny models, hyperparameters scaled for them.
"""
from __future__ import annotations

import contextlib
import logging
import posixpath
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from filelock import FileLock
from pydantic import Field, ValidationError, model_validator

from cwpo_ray import console, io
from cwpo_ray.annotator.config import AnnotateConfig, AnnotatorTrainConfig
from cwpo_ray.config import TOP_FRACTION, Loss, RayConfig, StrictModel, TrackingConfig, Weighting, dump_config, updated
from cwpo_ray.evaluate.config import EvaluateConfig
from cwpo_ray.generate.config import GenerateConfig
from cwpo_ray.layout import RunLayout
from cwpo_ray.manifest import Manifest
from cwpo_ray.prepare.config import PrepareConfig, SourceConfig
from cwpo_ray.results import (
    AlignResult,
    AnnotateResult,
    EvaluateResult,
    GenerateResult,
    LabelReport,
    PipelineResult,
    PrepareResult,
    SanityGate,
    SFTResult,
    StageResult,
    StageRun,
    SynthesizeResult,
    SyntheticPaths,
    TrainAnnotatorResult,
    write_result,
)
from cwpo_ray.student.config import AlignConfig, SFTConfig
from cwpo_ray.synthetic.build import SyntheticConfig

log = logging.getLogger(__name__)
DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"
# stage config fields that change no result, left out of the stage keys: where metrics go, how often Ray Train's
# controller polls its workers, whether a training worker replays its shard from memory
NO_RESULT_FIELDS = {"tracking", "controller_poll_s", "cache_shard_rows"}
R = TypeVar("R", bound=StageResult)


class MethodSpec(StrictModel):
    """One student alignment run. ``labels``: weak (annotate's output on the unlabeled pool),
    human_unlabeled (the unlabeled pool's own human labels: the paper's Table 1 "Human"), human_labeled
    (the labeled fraction's human labels) or human_all (labeled + unlabeled pool: Human-DPO 100%)."""

    labels: Literal["weak", "human_unlabeled", "human_labeled", "human_all"] = "weak"
    loss: Loss = "dpo"
    weighting: Weighting = "confidence"
    top_fraction: float = Field(default=TOP_FRACTION, gt=0.0, le=1.0)
    beta: float | None = Field(default=None, gt=0)  # default: align.beta


def _default_methods() -> dict[str, MethodSpec]:
    return {"cw-dpo": MethodSpec(weighting="confidence"), "ws-dpo": MethodSpec(weighting="none")}


class PipelineConfig(StrictModel):
    run_dir: str = "runs/pipeline"  # a local path or a URI (s3://bucket/runs/x, gs://..., any pyarrow.fs filesystem)
    ray: RayConfig = Field(default_factory=RayConfig)
    # The embedded synthetic task; null (and prepare.sources) to run on real data.
    synthetic: SyntheticConfig | None = Field(default_factory=SyntheticConfig)
    # Stage configs: paths (data_dir, output_dir, model, ...) are filled in by the pipeline when unset.
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    annotator: AnnotatorTrainConfig = Field(default_factory=AnnotatorTrainConfig)
    annotate: AnnotateConfig = Field(default_factory=AnnotateConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    align: AlignConfig = Field(default_factory=AlignConfig)
    methods: dict[str, MethodSpec] = Field(default_factory=_default_methods, min_length=1)
    # The students' initialisation. labeled_human: one SFT model on (prompt, human-chosen) of the labeled
    # split, shared by every method (reference and GRA baseline of all). method_labels: the paper's — one
    # SFT model per label source the methods use, on the (prompt, chosen) of that method's own alignment
    # data (weak labels for weak methods, human labels for human ones); each method starts from, is
    # regularised towards and is evaluated against its own SFT model, and is also compared with the
    # labeled_human SFT model, trained as well, so that rows compare directly.
    sft_data: Literal["labeled_human", "method_labels"] = "labeled_human"
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    # MLflow / W&B tracking of every training and evaluation stage (one tracked run per stage, named
    # "<run folder>/<stage>"); not part of the stages' manifest keys: turning it on re-runs nothing.
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    # Optional: candidate pairs sampled from the SFT student (vLLM) for prompts of the unlabeled pool,
    # written in the canonical pair schema (ready for `annotate`); the paper aligns on the datasets' pairs.
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    stages: list[Literal["prepare", "train-annotator", "annotate", "sft", "generate", "align", "evaluate"]] = Field(
        default_factory=lambda: ["prepare", "train-annotator", "annotate", "sft", "align", "evaluate"])

    # Fields the pipeline sets itself: a value given for them would be ignored, so it is rejected.
    OWNED: ClassVar[dict[str, tuple[str, ...]]] = {
        "prepare": ("ray",), "annotator": ("ray", "tracking"), "annotate": ("ray", "overwrite"), "sft": ("ray", "tracking"),
        "generate": ("ray",), "evaluate": ("ray", "tracking", "baselines", "compare_to"),
        "align": ("ray", "tracking", "data_dir", "data_format", "output_dir", "loss", "weighting", "top_fraction"),
    }

    @model_validator(mode="after")
    def _owned_fields_unset(self):
        why = {"ray": "the pipeline's own `ray:` section is used by every stage",
               "tracking": "the pipeline's own `tracking:` section is used by every training and evaluation stage",
               "overwrite": "the run manifest decides when annotate re-runs",
               "data_dir": "each method's labels decide it (methods.NAME.labels)",
               "data_format": "each method's labels decide it (methods.NAME.labels)",
               "output_dir": "each method writes {run_dir}/align/NAME",
               "baselines": "the SFT models of sft_data=method_labels",
               "compare_to": "each method is compared with its own SFT model (sft_data)"}
        for section, fields in self.OWNED.items():
            for f in fields:
                if f in getattr(self, section).model_fields_set:
                    raise ValueError(f"{section}.{f}: set by the pipeline, not here: "
                                     + why.get(f, f"give it per method, e.g. methods.NAME.{f}=..."))
        if "data_format" in self.sft.model_fields_set and self.sft.data_dir is None:
            raise ValueError("sft.data_format: set by the pipeline unless sft.data_dir is given too")
        if self.sft_data == "method_labels" and self.sft.data_dir is not None:
            raise ValueError("sft.data_dir: with sft_data=method_labels each method's labels decide the SFT data")
        return self

    def dump_exclude(self) -> dict:
        """Owned fields are left out of the written config.yaml so that it loads back."""
        out = {section: set(fields) for section, fields in self.OWNED.items()}
        if self.sft.data_dir is None:
            out["sft"].add("data_format")
        return out

    @model_validator(mode="after")
    def _gold_matches_data(self):
        if self.synthetic is None and self.evaluate.gold.kind == "synthetic" and "evaluate" in self.stages:
            raise ValueError("evaluate.gold.kind=synthetic only scores the synthetic task; on real data set "
                             "evaluate.gold.kind=hf and evaluate.gold.model")
        if self.synthetic is None and not self.prepare.sources and "prepare" in self.stages:
            raise ValueError("prepare.sources is empty and synthetic is null: nothing to prepare")
        return self


def _inside(uri: str, folder: str) -> bool:
    """Whether ``uri`` is ``folder`` or lies under it."""
    a, f = io.absolute(uri), io.absolute(folder).rstrip("/")
    return a == f or a.startswith(f + "/")


def _fill(cfg: StrictModel, section: str, owned: dict | None = None, **paths) -> StrictModel:
    """A validated copy of a stage config with the pipeline's ``owned`` fields set and the ``paths``
    the user left unset filled in."""
    fill = {k: v for k, v in paths.items() if getattr(cfg, k) in (None, "", [], {})}
    return updated(cfg, section, **(owned or {}), **fill)


def _link_tree(srcs: list[str], dst: str) -> None:
    """The parquet files of several folders in one folder, as ``{folder name}-{file name}``: hard links
    (or copies) locally, copies through pyarrow.fs on an object store."""
    io.makedirs(dst)
    for src in srcs:
        folder = io.resolve(src)[1].rstrip("/")
        for f in io.files_under(src):
            target = io.join(dst, f"{posixpath.basename(folder)}-{f.base_name}")
            if posixpath.dirname(f.path) == folder and f.base_name.endswith(".parquet") and not io.exists(target):
                io.copy_file(io.join(src, f.base_name), target)


def _recorded(cls: type[R], summary) -> R | None:
    """A skipped stage's summary from the manifest as ``cls``; None when it is not one (recorded by an
    older version, or not at all)."""
    try:
        return cls.model_validate(summary)
    except ValidationError:
        return None


def run_pipeline(cfg: PipelineConfig, train_callbacks: list | None = None) -> PipelineResult:
    """Run the stages; ``train_callbacks`` (e.g. Tune's TuneReportCallback) go to align's TorchTrainer.
    Ray is started by the first stage that runs (each stage's ``init_ray(cfg.ray)``): a re-run with
    every stage up to date starts none."""
    run = RunLayout.of(cfg.run_dir)
    io.check_storage(run.root, "run_dir")  # before any compute: a missing bucket, refused credentials
    io.makedirs(run.root)
    io.write_text(run.config, dump_config(cfg))
    run_manifest = Manifest(run.root)
    fps: dict[str, str] = {}
    stages: dict[str, StageRun] = {}
    t_start = time.time()
    ray_only = {"ray": cfg.ray}

    def tracked(name: str) -> dict:  # the pipeline's tracking, one run per stage named "<run folder>/<stage>"
        if cfg.tracking.kind == "none":
            return {}
        return {"tracking": cfg.tracking.model_copy(update={"run_name": f"{cfg.tracking.run_name or run.name}/{name}"})}

    def stage(name: str, cls: type[R], stage_cfg, inputs: dict[str, str], output: str, fn: Callable[[], R],
              fmt: Callable[[R], str] | None = None, artifacts=None, full_summary: bool = False,
              manifest: Manifest | None = None) -> R:
        """Run ``fn`` (a stage returning a ``cls``) unless the manifest (the run's, or ``manifest``) has it
        done. The manifest keeps the result's JSON dump; a skipped stage returns it as a ``cls`` again, and
        one whose recorded summary is no ``cls`` runs again. A quiet console shows the first line of
        ``fmt(result)`` (all of it with ``full_summary``); the log file has every line."""
        m = manifest or run_manifest
        t = time.time()
        console.route_library_logs()  # libraries imported by the previous stage
        if not console.quiet():
            print(f"\n=== {name} ===", flush=True)
        config = stage_cfg.model_dump(mode="json", exclude=NO_RESULT_FIELDS)
        made: list[R] = []

        def run_fn() -> dict:
            made.append(fn())
            return made[-1].model_dump(mode="json")

        fp, summary, skipped = m.run(name, config, inputs, output, run_fn, artifacts)
        result = made[-1] if made else _recorded(cls, summary)
        if result is None:
            console.info(f"{name}: its recorded summary is not a {cls.__name__} (an older version wrote it): running it again")
            m.forget(name)
            fp, _, skipped = m.run(name, config, inputs, output, run_fn, artifacts)
            result = made[-1]
        fps[name] = fp
        work, work_s = (None, None) if skipped else stage_work(result)
        stages[name] = StageRun(skipped=skipped, seconds=round(time.time() - t, 1), output=str(output), work=work,
                                work_seconds=work_s)
        took = f"[{name}: {time.time() - t:.1f}s, pipeline {time.time() - t_start:.0f}s]"
        if skipped:
            print(f"{name}: up to date, skipped ({output})", flush=True)
        elif fmt:
            text = fmt(result)
            log.info("%s\n%s", text, took)
            if not console.quiet():
                print(text)
            elif full_summary:  # the results themselves
                print(text, flush=True)
            else:  # one line: the summary's first (+ any warning), with the stage's time
                first, *rest = console.stage_line(text).splitlines()
                print("\n".join([f"{first}  ({time.time() - t:.0f}s)", *rest]), flush=True)
        if not console.quiet():
            print(took, flush=True)
        return result

    def one_job(cls: type[R], runs: dict[str, tuple[Any, dict[str, str], str]], run_many, fmt, callbacks=None) -> dict[str, R]:
        """Training stages ``name -> (config, inputs, model folder)`` of one kind: those not up to date train in
        ONE Ray Train job where their configs allow (``run_many``: one worker group, its processes and imports
        paid once, instead of one per stage); each is recorded as a stage of its own. In the stage table the
        job's time and steps show under its first stage."""
        # not recorded for this config and inputs (a recorded stage whose products changed runs again on its own)
        pending = [n for n, (c, inputs, _) in runs.items()
                   if not run_manifest.is_recorded(n, c.model_dump(mode="json", exclude=NO_RESULT_FIELDS), inputs)]
        trained: dict[str, R] = {}

        def train(name: str) -> R:
            if name not in trained:  # this stage and the other pending ones
                todo = [n for n in runs if n == name or (n in pending and n not in trained)]
                trained.update(run_many({n: runs[n][0] for n in todo}, callbacks=callbacks))
            return trained[name]

        out = {name: stage(name, cls, c, inputs, c.output_dir, lambda name=name: train(name), fmt, [model])
               for name, (c, inputs, model) in runs.items()}
        shared = [n for n, r in trained.items() if r.job_runs > 1]
        if shared:
            steps = [stage_work(trained[n])[1] for n in shared]
            stages[shared[0]] = stages[shared[0]].model_copy(update={
                "work": f"training steps of {len(shared)} runs in one job", "work_seconds": None if None in steps else sum(steps)})
            for n in shared[1:]:
                stages[n] = stages[n].model_copy(update={"work": f"trained in {shared[0]}'s job", "work_seconds": None})
        return out

    # 1. synthesize (embedded task) -------------------------------------------------------------
    syn_paths: SyntheticPaths | None = None
    # Only the stages that read the task's files need it (a sweep trial that aligns and evaluates on a
    # shared run's outputs must not rebuild the shared task).
    if cfg.synthetic is not None and any(s in cfg.stages for s in ("prepare", "train-annotator", "sft")):
        from cwpo_ray.synthetic.build import build_synthetic, format_synthesize

        syn = _fill(cfg.synthetic, "synthetic", output_dir=run.synthetic)
        # A task outside the run folder may be shared by several runs (e.g. a sweep's upstream points of one
        # seed): it is recorded beside it, ``{output_dir}.manifest.json``, and built under a lock, so that the
        # first run builds it and the others skip it.
        shared_task = not _inside(syn.output_dir, run.root)
        where = io.parent(syn.output_dir)
        with FileLock(io.lock_file(where)) if shared_task else contextlib.nullcontext():
            own = Manifest(where, f"{posixpath.basename(io.absolute(syn.output_dir))}.manifest.json") if shared_task else None
            syn_paths = stage("synthesize", SynthesizeResult, syn, {}, syn.output_dir, lambda: build_synthetic(syn),
                              format_synthesize, manifest=own).paths

    # 2. prepare ------------------------------------------------------------------------------------
    from cwpo_ray.prepare.stage import format_summary, run_prepare

    sources = cfg.prepare.sources or (
        [SourceConfig(format="canonical", path=syn_paths.data, name="synthetic")] if syn_paths else [])
    prep = _fill(cfg.prepare, "prepare", {**ray_only, "sources": sources}, output_dir=run.data,
                 tokenizer=syn_paths.tokenizer if syn_paths else None)
    data = prep.output_dir
    if "prepare" in cfg.stages:
        stage("prepare", PrepareResult, prep, {"synthetic": fps.get("synthesize", "")}, data, lambda: run_prepare(prep),
              format_summary, [io.join(data, s) for s in ("labeled", "unlabeled", "test")])  # validation follows the same config

    # 3. train-annotator ---------------------------------------------------------------------------
    from cwpo_ray.annotator.train import format_train_annotator, run_train_annotator

    ann = _fill(cfg.annotator, "annotator", {**ray_only, **tracked("train-annotator")},
                model=syn_paths.weak_base if syn_paths else None, data_dir=data, output_dir=run.annotator)
    if "train-annotator" in cfg.stages:
        stage("train-annotator", TrainAnnotatorResult, ann, {"data": fps.get("prepare", "")}, ann.output_dir,
              lambda: run_train_annotator(ann), format_train_annotator, [RunLayout.model(ann.output_dir)])

    # 4. annotate -------------------------------------------------------------------------------------
    from cwpo_ray.annotator.annotate import format_annotate, run_annotate

    annot = _fill(cfg.annotate, "annotate", {**ray_only, "overwrite": True}, model=RunLayout.model(ann.output_dir),
                  data_dir=data, output_dir=run.annotated)
    weak_labels = io.join(annot.output_dir, "preferences")
    if "annotate" in cfg.stages:
        stage("annotate", AnnotateResult, annot, {"data": fps.get("prepare", ""), "annotator": fps.get("train-annotator", "")},
              annot.output_dir, lambda: run_annotate(annot), format_annotate, [weak_labels])
    labels: LabelReport | None = None
    if cfg.synthetic is not None and "annotate" in cfg.stages and io.exists(weak_labels):
        from cwpo_ray.synthetic.diagnostics import format_label_report, label_report

        labels = label_report(data, weak_labels)  # gold is known here only
        write_result(run.root, labels, "label_stats.json")
        print(format_label_report(labels), flush=True)

    # 5. sft: the student on (prompt, human-chosen) of the labeled fraction ----------------------------
    from cwpo_ray.student.sft import format_sft, run_sft_many

    sft_owned = {**ray_only, **({"data_format": "pairs"} if cfg.sft.data_dir is None else {})}
    sft = _fill(cfg.sft, "sft", {**sft_owned, **tracked("sft")}, model=syn_paths.student_base if syn_paths else None,
                data_dir=io.join(data, "labeled"), output_dir=run.sft)
    sft_model = RunLayout.model(sft.output_dir)
    sft_runs = {"sft": (sft, {"data": fps.get("prepare", "")}, sft_model)}

    # 5a. sft per label source (sft_data=method_labels, the paper's): (prompt, chosen) of each method's own
    # alignment data, after annotate (weak labels) -----------------------------------------------------------
    label_data = {
        "weak": (weak_labels, "preferences", fps.get("annotate", "")),
        "human_unlabeled": (io.join(data, "unlabeled"), "pairs", fps.get("prepare", "")),
        "human_labeled": (io.join(data, "labeled"), "pairs", fps.get("prepare", "")),
        "human_all": (run.human_all, "pairs", fps.get("prepare", "")),
    }
    if any(ms.labels == "human_all" for ms in cfg.methods.values()):
        _link_tree([io.join(data, "labeled"), io.join(data, "unlabeled")], run.human_all)
    init = {ms.labels: (sft_model, "sft") for ms in cfg.methods.values()}  # labels -> (SFT model, its stage)
    if cfg.sft_data == "method_labels":
        for source in dict.fromkeys(ms.labels for ms in cfg.methods.values()):
            if source == "human_labeled":  # the same data as the common SFT model's: that model is its SFT model
                continue
            d, fmt, fp_in = label_data[source]
            s_cfg = _fill(cfg.sft, f"sft/{source}", {**ray_only, **tracked(f"sft/{source}"), "data_format": fmt, "data_dir": d,
                                                     "output_dir": RunLayout.sft_for_in(sft.output_dir, source)},
                          model=syn_paths.student_base if syn_paths else None)
            init[source] = (RunLayout.model(s_cfg.output_dir), f"sft/{source}")
            sft_runs[f"sft/{source}"] = (s_cfg, {"data": fp_in}, init[source][0])
    if "sft" in cfg.stages:  # the common SFT model and one per label source: one training job where they can share it
        one_job(SFTResult, sft_runs, run_sft_many, format_sft)

    # 5b. generate (optional): candidate pairs from the SFT student for unlabeled prompts ------------------
    if "generate" in cfg.stages:
        from cwpo_ray.generate.stage import format_generate, run_generate

        gen = _fill(cfg.generate, "generate", ray_only, model=sft_model, prompts_path=io.join(data, "unlabeled"),
                    output_dir=run.generated)
        stage("generate", GenerateResult, gen, {"sft": fps.get("sft", ""), "data": fps.get("prepare", "")},
              gen.output_dir, lambda: run_generate(gen), format_generate, [io.join(gen.output_dir, "pairs")])

    # 6. align: one student per method; the methods not up to date train in one Ray Train job where they can
    # share it (run_align_many) -------------------------------------------------------------------------------
    from cwpo_ray.student.align import format_align, run_align_many

    models: dict[str, str] = {}
    align_runs: dict[str, tuple[AlignConfig, dict[str, str], str]] = {}
    for name, ms in cfg.methods.items():
        d, fmt, fp_in = label_data[ms.labels]
        al = _fill(cfg.align, f"methods.{name}", {
            **ray_only, **tracked(f"align/{name}"), "data_dir": d, "data_format": fmt, "output_dir": run.align(name), "loss": ms.loss,
            "weighting": ms.weighting, "top_fraction": ms.top_fraction, "beta": ms.beta or cfg.align.beta},
            model=init[ms.labels][0])
        models[name] = RunLayout.model(al.output_dir)
        align_runs[f"align/{name}"] = (al, {"data": fp_in, "sft": fps.get(init[ms.labels][1], "")}, models[name])
    if "align" in cfg.stages:
        one_job(AlignResult, align_runs, run_align_many, format_align, callbacks=train_callbacks)

    # 7. evaluate: GRA of every method against the SFT model ------------------------------------------
    from cwpo_ray.evaluate.stage import format_evaluate, run_evaluate

    own = {f"sft-{s}": m for s, (m, st) in init.items() if st != "sft"}  # SFT models other than the common one
    ev = _fill(cfg.evaluate, "evaluate", {**ray_only, **tracked("evaluate"), "baselines": own, "compare_to": {
                   n: f"sft-{ms.labels}" for n, ms in cfg.methods.items() if f"sft-{ms.labels}" in own}},
               prompts_path=io.join(data, "test"), sft_model=sft_model, output_dir=run.eval, models=models)
    evaluation, report, gate = None, None, None
    if "evaluate" in cfg.stages:
        inputs = {"sft": fps.get("sft", ""), **{f"align/{k}": fps.get(f"align/{k}", "") for k in models},
                  **{st: fps.get(st, "") for _, st in init.values() if st != "sft"}}
        evaluation = stage("evaluate", EvaluateResult, ev, inputs, ev.output_dir, lambda: run_evaluate(ev),
                           format_evaluate, [io.join(ev.output_dir, "metrics.json")], full_summary=True)
        report = io.join(ev.output_dir, "report.md")
        gate = sanity_gate(cfg.methods, evaluation)
    return PipelineResult(run_dir=run.root, stages=stages, labels=labels, evaluation=evaluation, report=report,
                          gate=gate, seconds=round(time.time() - t_start, 1))


def sanity_gate(methods: dict[str, MethodSpec], metrics: EvaluateResult) -> SanityGate | None:
    """Does preference optimization work in this setting at all? Human-DPO (DPO on the pool's own
    human labels) against its SFT model: it works when the GRA CI's lower bound is above 0.5."""
    for name, ms in methods.items():
        if ms.labels == "human_unlabeled" and ms.loss == "dpo" and name in metrics.methods:
            m = metrics.methods[name]
            return SanityGate(method=name, gra=m.gra, gra_ci=m.gra_ci, works=m.gra_ci[0] > 0.5, ci=metrics.ci)
    return None


def format_gate(g: SanityGate) -> str:
    lo, hi = g.gra_ci
    verdict = "works here" if g.works else "does NOT demonstrably work here (GRA CI reaches 0.5)"
    return f"preference optimization {verdict}: {g.method} GRA {g.gra:.3f} [{lo:.3f}, {hi:.3f}] vs its SFT model"


def stage_work(result) -> tuple[str | None, float | None]:
    """The part of a stage's wall time that is its own work, and what that is: the training workers' reference
    pass and optimizer steps; evaluate's generation (engine time) and gold scoring. The rest of the stage's
    time is fixed cost (worker and engine processes, imports, Ray set-up, data passes, saving). None where a
    stage does not measure it."""
    ws = getattr(result, "worker_seconds", None) or {}
    if "train" in ws:
        ref = ws.get("reference", 0.0)
        return ("reference + training steps" if ref >= 0.05 else "training steps"), round(ws["train"] + ref, 1)
    if isinstance(result, EvaluateResult):
        gen = sum(g.seconds for g in result.generation.values() if g.cached_from is None)
        return "generation + gold", round(gen + result.gold_seconds, 1)
    return None, None


def format_pipeline(out: PipelineResult) -> str:
    lines = [f"\npipeline finished in {out.seconds:.0f}s: {out.run_dir}"]
    if out.gate:
        lines.insert(0, "\n" + format_gate(out.gate))
    for name, s in out.stages.items():
        took = "skipped (up to date)" if s.skipped else f"{s.seconds:.1f}s"
        if s.work_seconds is not None:
            took = f"{took:<8} of which {s.work} {s.work_seconds:.1f}s"
        elif s.work and not s.skipped:
            took = f"{took:<8} {s.work}"
        lines.append(f"  {name:<22} {took}")
    if out.report:
        lines.append(f"report: {out.report}")
    return "\n".join(lines)
