"""What every stage returns and writes: one pydantic model per stage, written by :func:`write_result`.

A stage's ``run_*`` returns its result model and writes it once, as ``{output_dir}/summary.json``
(evaluate: also ``metrics.json``; synthesize: ``manifest.json``); its ``format_*`` reads the model's
fields. Field names are the JSON keys of the summaries written before these models existed, so those
read back with :func:`read_result` (fields recorded later, e.g. the input-file counts, have defaults).
The run manifest stores the same dump; the pipeline turns it back into the model when it skips a
finished stage, and runs a stage again whose record is not one.

Floats that are NaN (e.g. an agreement over zero pairs) are written as ``NaN``, like ``json.dumps``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from cwpo_ray import io

Number = int | float  # an int stays an int (steps, counts), a float a float
MetricsRow = dict[str, Number]  # one training report of metrics.jsonl: step, epoch, loss, lr, throughput, time, ...
CI = tuple[float, float]  # (low, high) of a percentile bootstrap interval


class StageResult(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


R = TypeVar("R", bound=StageResult)


def write_result(output_dir: str | Path, result: StageResult, name: str = "summary.json") -> str:
    """Write ``result`` as ``{output_dir}/{name}`` (local path or URI); returns where."""
    uri = io.join(str(output_dir), name)
    io.write_text(uri, result.model_dump_json(indent=2))
    return uri


def read_result(cls: type[R], path: str | Path) -> R:
    """A result written by :func:`write_result` (or an earlier version's summary), validated as ``cls``."""
    return cls.model_validate_json(io.read_text(str(path)))


# ------------------------------------------------------------------------------------------- shared parts
class BadFileRecord(StageResult):
    """An input file set aside whole before any compute (:mod:`cwpo_ray.inputs`)."""

    path: str
    reason: str  # unreadable_file | missing_columns | wrong_column_types
    detail: str


class SourceBadFile(BadFileRecord):
    source: str  # the prepare source (its name or path) the file belongs to


class PairCounts(StageResult):
    """The rows sft / align read (``student.stage.load_pairs``): rows_in = rows_used + quarantined."""

    rows_in: int
    rows_used: int
    quarantined: int  # rows
    quarantine_reasons: dict[str, int]  # rows and whole files, by reason
    files_quarantined: int = 0
    bad_files: list[BadFileRecord] = Field(default_factory=list)  # the first 100


class PromptCounts(StageResult):
    """The prompts generate / evaluate read (``generate.stage.read_prompts``)."""

    rows_in: int
    unique_prompts: int
    duplicate_prompts: int  # counted, not quarantined: prompts repeat in pair data
    bad_prompts: int  # quarantined with a reason
    not_used_max_prompts: int  # unique prompts beyond max_prompts
    prompts_used: int


class GenerationStats(StageResult):
    """One model's sampled responses (``generate.stage.generation_stats``)."""

    responses: int
    generated_tokens: int
    seconds: float
    tokens_per_s: float | None
    finish_reasons: dict[str, int]  # stop / length / ...
    backends: dict[str, int]  # responses per backend that produced them (vllm / hf)
    fallback_reasons: list[str]  # why vLLM was not used, when HF generated instead
    device: str
    executor: str


# ------------------------------------------------------------------------------------------------ stages
class SyntheticPaths(StageResult):
    data: str  # canonical jsonl pairs
    gold: str  # jsonl gold rewards (diagnostics only)
    tokenizer: str
    weak_base: str
    student_base: str


class SyntheticLabels(StageResult):
    pairs: int
    gold_ties: int  # pairs whose two responses have equal gold reward
    human_gold_agreement: float  # share of human labels agreeing with the gold ordering (ties excluded)
    label_temperature: float | None  # the Bradley–Terry temperature of the human labels (None: flip noise)
    label_noise: str = "bradley_terry"  # SyntheticTaskConfig.label_noise
    target_agreement: float | None  # the configured human_agreement (None: a temperature was given)


class PretrainStats(StageResult):
    steps: int
    first_loss: float
    final_loss: float  # mean LM loss over the last steps
    texts: int
    parameters: int


class SynthesizeResult(StageResult):
    """``cwpo synthesize`` (``{output_dir}/manifest.json``)."""

    config: dict[str, Any]  # the SyntheticConfig as run
    paths: SyntheticPaths
    labels: SyntheticLabels
    pretrain: dict[str, PretrainStats | None]  # per base model; None when left randomly initialised


class PrepareResult(StageResult):
    """``cwpo prepare``."""

    rows_in: int  # = kept + quarantined
    kept: int
    quarantined: int  # rows
    splits: dict[str, int]  # labeled / unlabeled / validation / test / unused (0 unless unlabeled_fraction)
    quarantine_reasons: dict[str, int]  # every record under quarantine/: rows, and whole files
    duplicate_pairs: int  # rows repeating an earlier pair_id (dropped unless duplicates=keep)
    duplicates: str  # drop | keep
    files_quarantined: int = 0
    bad_files: list[SourceBadFile] = Field(default_factory=list)  # the first 100
    per_source: dict[str, dict[str, int]]  # source -> split (or quarantine) -> rows
    output_dir: str


class ReliabilityBin(StageResult):
    lo: float
    hi: float
    n: int
    confidence: float | None  # mean predicted P(winner) in the bin (None: empty bin)
    accuracy: float | None


class HeldOutEval(StageResult):
    """The annotator on held-out human-labeled pairs (``annotator.metrics.evaluate_pairs`` + plots)."""

    split: str
    pairs: int
    accuracy: float
    ece: float
    top_confident_accuracy: dict[str, float]  # top10 ... top100: accuracy of the N% most confident pairs
    mean_confidence: float
    reliability: list[ReliabilityBin]
    unlabeled_skipped: int  # rows of the split without a usable human label
    reliability_png: str
    top_confident_png: str


class TrainAnnotatorResult(StageResult):
    """``cwpo train-annotator``."""

    model_dir: str
    base_model: str
    train_pairs: int
    quarantined: int
    quarantine_reasons: dict[str, int]
    files_quarantined: int = 0
    bad_files: list[BadFileRecord] = Field(default_factory=list)
    epochs: float
    epochs_trained: float  # differs from `epochs` when max_steps is set
    steps: int
    workers: int
    zero_stage: int
    strategy: str
    lora: bool
    first_train_loss: float | None  # None: no training step was logged
    train_loss: float | None
    first_train_accuracy: float | None
    train_accuracy: float | None
    train_pairs_per_s: float | None
    train_seconds: float
    # rank 0's wall seconds per phase of the training worker: process (start + imports), init, model, reference,
    # optimizer, resume, train (the optimizer steps); {} in summaries of older versions
    worker_seconds: dict[str, float] = Field(default_factory=dict)
    eval_seconds: float
    seconds: float
    checkpoint: str
    resumed_from: int  # the step training resumed from after a failure; -1: never
    held_out: HeldOutEval
    output_dir: str
    history: list[MetricsRow]


class ConfidenceHistogram(StageResult):
    counts: list[int]
    edges: list[float]


class AnnotateResult(StageResult):
    """``cwpo annotate``: counts over every block written (this run and earlier ones it resumed)."""

    pairs: int
    unique_pair_ids: int
    quarantined: int  # rows
    files_quarantined: int = 0
    quarantine_reasons: dict[str, int]  # rows and whole files
    confidence_mean: float | None  # None: no pair labeled
    confidence_quantiles: dict[str, float]  # p10 / p50 / p90 (empty: no pair labeled)
    confidence_hist: ConfidenceHistogram
    human_labeled_pairs: int
    human_agreement: float | None  # weak labels vs the pairs' human labels (None: no human label)
    blocks: int
    blocks_skipped: int  # already written by an earlier run
    pairs_scored_this_run: int
    seconds: float
    pairs_per_s: float | None
    backend: str
    model: str
    input: str
    output: str
    confidence_hist_png: str | None  # a local path or a URI (None in summaries of older versions)
    output_dir: str
    bad_files: list[BadFileRecord] = Field(default_factory=list)


class SFTResult(PairCounts):
    """``cwpo sft``."""

    stage: Literal["sft"] = "sft"
    model_dir: str
    checkpoint: str
    output_dir: str
    steps: int
    fit_seconds: float
    # rank 0's wall seconds per phase of the training worker: process (start + imports), init, model, reference,
    # optimizer, resume, train (the optimizer steps); {} in summaries of older versions
    worker_seconds: dict[str, float] = Field(default_factory=dict)
    job_runs: int = 1  # SFT runs trained in its Ray Train job (run_sft_many); fit_seconds is that job's
    seconds: float
    first_loss: float | None  # response NLL of the first / last logged step (None: none logged)
    last_loss: float | None
    zero_stage: int
    num_workers: int
    lora: bool
    history: list[MetricsRow]


class AlignResult(PairCounts):
    """``cwpo align``."""

    stage: Literal["align"] = "align"
    weights_threshold: float | None  # the top_fraction confidence cut (None for other weightings)
    weights_mean_weight: float
    weights_nonzero_weight_fraction: float
    loss_type: str
    weighting: str
    beta: float
    reduction: str
    reference_mode: str
    reference_seconds: float | None  # the precomputed reference pass (None: on the fly)
    base_model: str | None = None  # the model it started from (and, without align.reference, its reference)
    model_dir: str
    checkpoint: str
    output_dir: str
    zero_stage: int
    num_workers: int
    steps: int
    fit_seconds: float
    # rank 0's wall seconds per phase of the training worker: process (start + imports), init, model, reference,
    # optimizer, resume, train (the optimizer steps); {} in summaries of older versions
    worker_seconds: dict[str, float] = Field(default_factory=dict)
    job_runs: int = 1  # align runs trained in its Ray Train job (run_align_many); fit_seconds is that job's
    seconds: float
    # first / last logged training step (None: none logged)
    first_loss: float | None
    first_reward_margin: float | None
    first_pref_acc: float | None
    first_weighted_pref_acc: float | None
    last_loss: float | None
    last_reward_margin: float | None
    last_pref_acc: float | None
    last_weighted_pref_acc: float | None
    resumed_from: int  # the step training resumed from after a failure; -1: never
    history: list[MetricsRow]


class GenerateGeneration(GenerationStats):
    requested_backend: str


class GenerateResult(StageResult):
    """``cwpo generate``."""

    model: str
    prompts: PromptCounts
    num_candidates: int
    pairing: str
    generation: GenerateGeneration
    pairs: int
    quarantined: int
    quarantine_reasons: dict[str, int]
    sampling: dict[str, Any]  # the SamplingConfig as run
    seeds: str  # how each request's seed is derived
    seconds_total: float
    output_dir: str


class MethodMetrics(StageResult):
    """One method against the SFT model (``evaluate.metrics.gra``)."""

    n: int  # prompts
    samples_per_prompt: int
    wins: int  # comparisons (prompt x sample)
    ties: int
    losses: int
    gra: float  # share of comparisons won, averaged per prompt
    tie_rate: float
    loss_rate: float
    gra_ci: CI
    mean_gain: float  # mean gold reward of the method minus the SFT model's
    mean_gain_ci: CI
    mean_gold_aligned: float
    mean_gold_sft: float
    ci: float
    num_bootstrap: int


class ModelGeneration(GenerationStats):
    """One model's responses in ``evaluate``."""

    length_limit_share: float  # share of responses stopped by max_new_tokens
    model: str
    base_seed: int  # sampling seed of this model's requests (differs per model with seeding=independent)
    cached_from: str | None = None  # the responses were read from this cache file (evaluate.cache_responses)


class ReportFiles(StageResult):
    report: str
    gra_plot: str
    gold_plot: str


class EvaluateResult(StageResult):
    """``cwpo evaluate`` (``metrics.json`` = ``summary.json``)."""

    num_prompts: int
    samples_per_prompt: int
    seeding: str
    prompts: PromptCounts
    prompts_path: str
    files_quarantined: int = 0  # input files set aside whole (quarantine/files.parquet)
    bad_files: list[BadFileRecord] = Field(default_factory=list)
    quarantine_reasons: dict[str, int] = Field(default_factory=dict)  # bad files and unusable prompts
    sft_model: str
    models: dict[str, str]  # method -> aligned model
    baselines: dict[str, str] = Field(default_factory=dict)  # more references by name -> model
    compare_to: dict[str, str] = Field(default_factory=dict)  # method -> its reference when not "sft"
    gold: str  # the gold reward model
    gold_seconds: float
    methods: dict[str, MethodMetrics]  # each method against its reference (compare_to, default the SFT model)
    methods_vs_common: dict[str, MethodMetrics] = Field(default_factory=dict)  # those with their own reference, vs "sft"
    mean_gold: dict[str, float]  # per model, "sft" included
    length_limit_share: dict[str, float]  # per model, "sft" included
    generation: dict[str, ModelGeneration]  # per model, "sft" included
    sampling: dict[str, Any]  # the SamplingConfig as run
    ci: float
    num_bootstrap: int
    tie_tolerance: float
    output_dir: str
    seconds_total: float
    files: ReportFiles | None = None  # report.md and plots (None in a metrics.json written before it was recorded)


class SweepRow(StageResult):
    """One trial of ``cwpo sweep`` (a row of results.csv): one method at one point in one seed, scored on
    the validation split."""

    point: dict[str, Any]  # dotted pipeline key -> value
    seed: int
    method: str
    val_gra: float | None  # None: the trial failed or was stopped early
    val_gra_ci_low: float | None
    val_gra_ci_high: float | None
    val_gold_gain: float | None
    status: Literal["ok", "error", "stopped_early"]


class SweepSelection(StageResult):
    """A method's selected point (highest validation GRA over seeds) and, after it, its test GRA."""

    point: dict[str, Any]
    validation_gra: float  # mean over seeds
    validation_per_seed: list[float]
    test_gra: float | None = None  # mean over seeds (None: final_test off)
    test_gra_ci: CI | None = None  # two-level bootstrap over seeds x prompts
    test_per_seed: list[float] = Field(default_factory=list)


class SweepResult(StageResult):
    """``cwpo sweep``."""

    trials: int
    ok: int
    seconds: float
    results_csv: str
    results_md: str
    rows: list[SweepRow]
    selected: dict[str, SweepSelection] = Field(default_factory=dict)  # per method


class LabelReport(StageResult):
    """Synthetic runs only: the human and weak labels against the gold reward (``label_stats.json``).
    The pool's fields are None when there is no unlabeled pool, the weak ones when nothing is annotated."""

    human_gold_agreement: float | None = None  # the unlabeled pool's human labels vs gold
    pool_pairs: int | None = None
    weak_pairs: int | None = None
    weak_human_agreement: float | None = None  # weak labels vs held-out human labels
    weak_gold_agreement: float | None = None
    weak_gold_agreement_top: dict[str, float] | None = None  # top30 ...: the N% most confident weak labels vs gold
    weak_gold_agreement_by_confidence_quartile: list[float | None] | None = None  # lowest quartile first


class SanityGate(StageResult):
    """Does preference optimization work here at all: Human-DPO against its SFT model."""

    method: str
    gra: float
    gra_ci: CI
    works: bool  # the GRA CI's lower bound is above 0.5
    ci: float


class StageRun(StageResult):
    skipped: bool  # up to date in the run manifest
    seconds: float
    output: str
    # the part of ``seconds`` spent on the stage's own work (``work`` says which: e.g. the training workers'
    # optimizer steps); the rest is fixed cost: processes, imports, Ray and engine start-up, data passes, saving
    work: str | None = None
    work_seconds: float | None = None


class PipelineResult(StageResult):
    """``cwpo pipeline`` / ``cwpo demo`` (printed, not written: each stage wrote its own)."""

    run_dir: str
    stages: dict[str, StageRun]
    labels: LabelReport | None = None  # synthetic runs
    evaluation: EvaluateResult | None = None  # when evaluate ran (or was up to date)
    report: str | None = None
    gate: SanityGate | None = None
    seconds: float
