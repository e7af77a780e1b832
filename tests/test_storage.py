"""Object-store run folders, against a real S3 API: moto's server on 127.0.0.1 (a subprocess on a free
port, stopped after), reached through ``AWS_ENDPOINT_URL`` like any S3-compatible store.

* bad storage input fails fast: one line naming the field and the URI, before any compute starts;
* models at a URI are downloaded once per node into a content-keyed cache, by every loader;
* the whole pipeline on ``run_dir=s3://...`` is in tests/test_pipeline.py (with the determinism check);
* `cwpo export` reads a run folder at a URI and writes its folders to one; a sweep's run folders and
  results live under a URI ``output_dir`` (its layout and result files here; the whole Ray Tune sweep
  on S3 is not run in the tests)."""
from __future__ import annotations

import os
import time

import pytest

from cwpo_ray.config import ConfigError, build_config
from tests.s3 import aws_env as _aws_env
from tests.s3 import free_port as _free_port
from tests.s3 import make_bucket as _make_bucket
from tests.s3 import start_moto as _start_moto


@pytest.fixture
def no_compute(monkeypatch):
    """Any stage that gets as far as starting Ray fails the test: the storage check must come first."""
    def refuse(*a, **k):
        raise AssertionError("compute started before the storage check")

    import cwpo_ray.evaluate.stage
    import cwpo_ray.generate.stage
    import cwpo_ray.prepare.stage
    import cwpo_ray.runtime
    import cwpo_ray.student.stage
    import cwpo_ray.synthetic.build

    for mod in (cwpo_ray.runtime, cwpo_ray.prepare.stage, cwpo_ray.generate.stage, cwpo_ray.evaluate.stage,
                cwpo_ray.student.stage):  # student.stage: SFT's and align's PreparedRun
        monkeypatch.setattr(mod, "init_ray", refuse)
    monkeypatch.setattr(cwpo_ray.synthetic.build, "SyntheticTask", refuse)  # the synthetic task's compute


def _one_line(e: pytest.ExceptionInfo, *parts: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("config error: ") and all(p in msg for p in parts), msg
    return msg


def _stage_calls(tmp_path):
    from cwpo_ray.annotator.annotate import run_annotate
    from cwpo_ray.annotator.config import AnnotateConfig, AnnotatorTrainConfig
    from cwpo_ray.annotator.train import run_train_annotator
    from cwpo_ray.evaluate.config import EvaluateConfig
    from cwpo_ray.evaluate.stage import run_evaluate
    from cwpo_ray.generate.config import GenerateConfig
    from cwpo_ray.generate.stage import run_generate
    from cwpo_ray.integrations.hub import ExportConfig, run_export
    from cwpo_ray.pipeline import PipelineConfig, run_pipeline
    from cwpo_ray.prepare.config import PrepareConfig
    from cwpo_ray.prepare.stage import run_prepare
    from cwpo_ray.student.align import run_align
    from cwpo_ray.student.config import AlignConfig, SFTConfig
    from cwpo_ray.student.sft import run_sft
    from cwpo_ray.sweep.config import SweepConfig
    from cwpo_ray.sweep.tune import run_sweep
    from cwpo_ray.synthetic.build import SyntheticConfig, build_synthetic

    local = tmp_path / "in.jsonl"
    local.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    train = {"model": str(tmp_path), "data_dir": str(tmp_path)}
    return {
        "synthesize": lambda out: build_synthetic(build_config(SyntheticConfig, {"output_dir": out})),
        "train-annotator": lambda out, src=str(tmp_path): run_train_annotator(build_config(AnnotatorTrainConfig, {
            **train, "data_dir": src, "output_dir": out})),
        "sft": lambda out, model=str(tmp_path): run_sft(build_config(SFTConfig, {**train, "model": model, "output_dir": out})),
        "align": lambda out: run_align(build_config(AlignConfig, {**train, "output_dir": out})),
        "evaluate": lambda out, model=str(tmp_path): run_evaluate(build_config(EvaluateConfig, {
            "prompts_path": str(local), "sft_model": str(tmp_path), "models": {"m": model}, "output_dir": out})),
        "pipeline": lambda out: run_pipeline(build_config(PipelineConfig, {"run_dir": out})),
        "prepare": lambda out, src=str(local): run_prepare(build_config(PrepareConfig, {
            "sources": [{"format": "hh_rlhf", "path": src}], "output_dir": out})),
        "annotate": lambda out, src=str(tmp_path): run_annotate(build_config(AnnotateConfig, {
            "model": str(tmp_path), "input": src, "output_dir": out})),
        "generate": lambda out, src=str(local): run_generate(build_config(GenerateConfig, {
            "model": str(tmp_path), "prompts_path": src, "output_dir": out})),
        "sweep": lambda out: run_sweep(build_config(SweepConfig, {"output_dir": out})),
        "export": lambda out, run=None: run_export(build_config(ExportConfig, {
            **({"run_dir": run} if run else {"preferences": str(local), "output_dir": out})})),
    }


def test_missing_bucket_and_object_fail_fast_naming_the_uri(s3_server, monkeypatch, no_compute, tmp_path):
    _aws_env(monkeypatch, s3_server)
    calls = _stage_calls(tmp_path)
    for stage, run in calls.items():
        with pytest.raises(ConfigError) as e:
            run("s3://no-such-bucket/run/out")
        field = "run_dir" if stage == "pipeline" else "output_dir"
        assert "bucket 'no-such-bucket' does not exist" in _one_line(e, field, "s3://no-such-bucket/run/out"), stage
    for stage in ("sft", "evaluate"):  # a model at a URI that is not there, the output's bucket being fine
        with pytest.raises(ConfigError) as e:
            calls[stage]("s3://cwpo/run/out", model="s3://cwpo/no/model")
        _one_line(e, "model", "s3://cwpo/no/model", "does not exist")
    with pytest.raises(ConfigError) as e:
        calls["train-annotator"]("s3://cwpo/run/ann", src="s3://cwpo/no/data")
    _one_line(e, "data_dir", "s3://cwpo/no/data", "does not exist")
    with pytest.raises(ConfigError) as e:  # an input that is not there (the bucket is)
        calls["prepare"]("s3://cwpo/run/data", src="s3://cwpo/missing/pairs.jsonl")
    _one_line(e, "sources[0].path", "s3://cwpo/missing/pairs.jsonl", "does not exist")
    with pytest.raises(ConfigError) as e:
        calls["annotate"]("s3://cwpo/run/ann", src="s3://no-such-bucket/unlabeled")
    _one_line(e, "input", "s3://no-such-bucket/unlabeled")
    for run in ("s3://no-such-bucket/run", "s3://cwpo/no/run"):  # export's run folder: its bucket, then itself
        with pytest.raises(ConfigError) as e:
            calls["export"](None, run=run)
        _one_line(e, "run_dir", run, "does not exist")
    with pytest.raises(ConfigError) as e:  # a scheme pyarrow does not know
        calls["prepare"]("s4://cwpo/run/data")
    _one_line(e, "output_dir", "s4://cwpo/run/data", "storage not usable")


def test_unreachable_endpoint_fails_fast_naming_the_uri(monkeypatch, no_compute, tmp_path):
    _aws_env(monkeypatch, f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    t0 = time.time()
    with pytest.raises(ConfigError) as e:
        _stage_calls(tmp_path)["annotate"]("s3://cwpo/run/ann")
    _one_line(e, "output_dir", "s3://cwpo/run/ann", "storage not usable", "connect")
    assert time.time() - t0 < 60


def test_refused_credentials_fail_fast_naming_the_uri(monkeypatch, no_compute, tmp_path):
    """A server that checks credentials (moto with IAM auth after its first action) refuses ours."""
    p, endpoint = _start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "1"})
    try:
        _make_bucket(endpoint, "cwpo")  # the one unauthenticated action
        _aws_env(monkeypatch, endpoint)
        with pytest.raises(ConfigError) as e:
            _stage_calls(tmp_path)["prepare"]("s3://cwpo/run/data")
        _one_line(e, "output_dir", "s3://cwpo/run/data", "ACCESS_DENIED")
    finally:
        p.terminate()
        p.wait(timeout=30)


def test_an_existing_bucket_passes_the_check(s3_server, monkeypatch):
    from cwpo_ray import io

    _aws_env(monkeypatch, s3_server)
    io.check_storage("s3://cwpo/run/out", "output_dir")  # no error: the bucket is there, the prefix need not be


def test_stages_take_uris_at_config_load():
    """Every folder field takes a URI (``file://`` too), a sweep's output folder and an export's included."""
    from cwpo_ray.annotator.config import AnnotatorTrainConfig
    from cwpo_ray.evaluate.config import EvaluateConfig
    from cwpo_ray.integrations.hub import ExportConfig
    from cwpo_ray.pipeline import PipelineConfig
    from cwpo_ray.student.config import AlignConfig, SFTConfig
    from cwpo_ray.sweep.config import SweepConfig
    from cwpo_ray.synthetic.build import SyntheticConfig

    cases = [(PipelineConfig, "run_dir"), (AnnotatorTrainConfig, "output_dir"), (SFTConfig, "output_dir"),
             (AlignConfig, "output_dir"), (EvaluateConfig, "output_dir"), (SyntheticConfig, "output_dir"),
             (SweepConfig, "output_dir"), (ExportConfig, "run_dir"), (ExportConfig, "output_dir")]
    for cls, field in cases:
        for uri in ("s3://bucket/run", "file:///tmp/run"):
            assert getattr(build_config(cls, {field: uri}), field) == uri, (cls.__name__, field)


def _tiny_model(path) -> None:
    """A tiny causal LM + tokenizer folder (the synthetic task's builders: no download)."""
    from cwpo_ray.synthetic.models import TinyModelConfig, build_tiny_causal_lm, train_tokenizer

    tok = train_tokenizer(["the cat sat on the mat", "a dog ran in the park"] * 20, path, vocab_size=300)
    build_tiny_causal_lm(TinyModelConfig(hidden_size=64, num_heads=2), tok, path)


def test_models_at_a_uri_load_through_one_node_cache(s3_server, monkeypatch, tmp_path):
    """Every loader takes a model folder URI: it is downloaded once into $XDG_CACHE_HOME/cwpo_ray/models/<key>
    (the key changes with the files), while local paths and hub ids pass through unchanged."""
    import pyarrow.fs as pafs
    import torch

    from cwpo_ray import io
    from cwpo_ray.annotator.scoring import HFScorer, load_scorer_model, load_tokenizer
    from cwpo_ray.evaluate.gold import HFRewardModel
    from cwpo_ray.generate.core import HFGenerator
    from cwpo_ray.prepare.core import token_lengths
    from cwpo_ray.student.align import RefLogprobScorer
    from cwpo_ray.student.config import SFTConfig
    from cwpo_ray.train.tasks import SFTTask

    _aws_env(monkeypatch, s3_server)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    _tiny_model(tmp_path / "lm")
    uri = "s3://cwpo/models/lm"
    io.upload_dir(str(tmp_path / "lm"), uri)
    downloads = []
    copy = pafs.copy_files
    def counted(src, dst, **kw):  # downloads into the cache (not uploads)
        if "/.download-" in dst:
            downloads.append(src)
        return copy(src, dst, **kw)

    monkeypatch.setattr(pafs, "copy_files", counted)

    local = io.local_model_dir(uri)
    assert local.startswith(str(tmp_path / "cache" / "cwpo_ray" / "models")) and len(downloads) == 1
    assert sorted(os.listdir(local)) == sorted(os.listdir(tmp_path / "lm"))
    assert io.local_model_dir(uri) == local and len(downloads) == 1  # cached: no second download
    assert io.local_model_dir("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # hub ids and local paths unchanged
    assert io.local_model_dir(str(tmp_path / "lm")) == str(tmp_path / "lm")
    assert io.local_model_dir(f"file://{tmp_path / 'lm'}") == str(tmp_path / "lm")
    with pytest.raises(FileNotFoundError, match="s3://cwpo/models/none"):
        io.local_model_dir("s3://cwpo/models/none")

    # every loader of the stages' workers and actors, on the URI
    n = len(downloads)
    assert load_tokenizer(uri).pad_token is not None and token_lengths(uri, ["the cat"])[0] > 0
    scorer = HFScorer(uri, device="cpu", max_length=32)
    assert scorer.score_texts(["the cat"], [" sat"])[0].shape == (1,)
    assert HFGenerator(uri).generate(["the cat"], [0], {"temperature": 0.0, "max_new_tokens": 3})[0][1] <= 3
    RefLogprobScorer(uri, None, max_length=32, max_prompt_length=16)
    cfg = SFTConfig(model=uri)
    SFTTask().load_model(cfg, SFTTask().load_tokenizer(cfg), torch.float32)
    with io.staged_dir("s3://cwpo/models/rm") as d:  # a num_labels=1 head: the gold reward model's shape
        load_scorer_model(uri).save_pretrained(d)
        load_tokenizer(uri).save_pretrained(d)
    assert HFRewardModel("s3://cwpo/models/rm", device="cpu").score(["the cat"], [" sat"]).shape == (1,)
    assert len(downloads) == n + 1  # the loaders shared the first download; the reward model is a new folder

    # a changed file is a new key (a re-trained model is never read from a stale cache)
    (tmp_path / "lm" / "config.json").write_text((tmp_path / "lm" / "config.json").read_text() + " ")
    io.upload_dir(str(tmp_path / "lm"), uri)
    assert io.local_model_dir(uri) != local
    assert sorted(os.listdir(tmp_path)) == ["cache", "lm"]  # the loaders wrote nothing to the working directory


def _files(uri: str) -> dict[str, bytes]:
    """Every file under a folder (local or URI): relative name -> bytes."""
    from cwpo_ray import io

    root = io.resolve(uri)[1].rstrip("/")
    return {f.path[len(root) + 1:]: io.read_bytes(io.join(uri, f.path[len(root) + 1:])) for f in io.files_under(uri)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A run folder as `cwpo demo` leaves it (tests/test_export.py's) and its export to a local folder."""
    from cwpo_ray.integrations.hub import ExportConfig, run_export
    from tests.test_export import build_run_dir

    run = build_run_dir(tmp_path_factory.mktemp("run"))
    local = tmp_path_factory.mktemp("export")
    run_export(build_config(ExportConfig, {"run_dir": str(run), "output_dir": str(local)}))
    return run, local


def test_export_writes_its_folders_to_a_uri(s3_server, monkeypatch, tmp_path, exported):
    """`cwpo export output_dir=s3://...`: the bucket holds exactly what a local export holds (byte for byte but
    the summary, which names the folders), the working directory nothing; the folders load back from the URI."""
    import pyarrow.parquet as pq
    from transformers import AutoModelForCausalLM

    from cwpo_ray import io
    from cwpo_ray.integrations.hub import ExportConfig, ExportResult, run_export
    from cwpo_ray.results import read_result
    from tests.test_export import N

    _aws_env(monkeypatch, s3_server)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    run, local = exported
    r = run_export(build_config(ExportConfig, {"run_dir": str(run), "output_dir": "s3://cwpo/export"}))
    assert (r.dataset_dir, r.student_dirs, r.annotator_dir) == (
        "s3://cwpo/export/dataset", {"cw-dpo": "s3://cwpo/export/students/cw-dpo"}, "s3://cwpo/export/annotator")
    remote, here = _files("s3://cwpo/export"), _files(str(local))
    assert remote.keys() == here.keys() and {k for k in here if remote[k] != here[k]} == {"summary.json"}
    assert read_result(ExportResult, "s3://cwpo/export/summary.json") == r
    fs, path = io.resolve(io.join(r.dataset_dir, "data"))
    assert pq.read_table(path, filesystem=fs).num_rows == N
    AutoModelForCausalLM.from_pretrained(io.local_model_dir(r.student_dirs["cw-dpo"]))
    assert os.listdir(tmp_path / "cwd") == []


def test_export_reads_a_run_folder_at_a_uri(s3_server, monkeypatch, tmp_path, exported):
    """`cwpo export run_dir=s3://...` (output_dir defaults to {run_dir}/export, in the bucket): the same folders
    as from the local copy of the run folder; only the annotator's path in the dataset card differs."""
    from cwpo_ray import io
    from cwpo_ray.integrations.hub import ExportConfig, run_export

    _aws_env(monkeypatch, s3_server)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run, local = exported
    io.upload_dir(str(run), "s3://cwpo/runs/exp")
    r = run_export(build_config(ExportConfig, {"run_dir": "s3://cwpo/runs/exp"}))
    assert r.output_dir == "s3://cwpo/runs/exp/export" and r.annotator_dir == "s3://cwpo/runs/exp/export/annotator"
    remote, here = _files(r.output_dir), _files(str(local))
    assert remote.keys() == here.keys()
    assert {k for k in here if remote[k] != here[k]} == {"summary.json", "dataset/README.md"}
    card = remote["dataset/README.md"].decode()
    assert card.replace("s3://cwpo/runs/exp/", f"{run}/") == here["dataset/README.md"].decode()
    for text in ("labeled fraction 0.3", "with one): 0.610", "top-30% most confident: 0.800"):  # read from the bucket
        assert text in card, text


def test_sweep_run_folders_and_results_under_a_uri(s3_server, monkeypatch, tmp_path):
    """A sweep with ``output_dir=s3://...``: every trial's run folders (shared upstream, its own align and
    evaluate) are under the URI, the lock on a shared run folder is a file in the node's cache, and the results
    table, CSV and plot are written to the bucket. (The Ray Tune sweep itself is tests/test_sweep.py's, locally.)"""
    import csv
    import io as stdio

    import matplotlib.image

    from cwpo_ray import io
    from cwpo_ray.results import SweepSelection
    from cwpo_ray.sweep.config import SweepConfig
    from cwpo_ray.sweep.tune import select_per_method, slug, trial_configs, write_results
    from tests.test_sweep import row

    _aws_env(monkeypatch, s3_server)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = build_config(SweepConfig, {"output_dir": "s3://cwpo/sweep/", "space": {"align.beta": [0.5]}})
    shared, own = trial_configs(cfg, {"align.beta": 0.5}, 0, "cw-dpo", split="test")
    assert shared.run_dir == "s3://cwpo/sweep/shared/seed0/default"
    assert own.run_dir == "s3://cwpo/sweep/trials/seed0/align.beta=0.5/cw-dpo"
    assert own.sft.output_dir == f"{shared.run_dir}/sft" and own.evaluate.prompts_path == f"{shared.run_dir}/data/test"
    assert own.evaluate.output_dir == f"{own.run_dir}/eval_test"
    lock = io.lock_file(shared.run_dir)
    assert lock.startswith(str(tmp_path / "cache" / "cwpo_ray" / "locks")) and lock == io.lock_file(shared.run_dir + "/")

    rows = [row({"align.beta": b}, 0, m, 0.5 + 0.1 * b) for m in ("cw-dpo", "ws-dpo") for b in (0.1, 0.5)]
    sel = {m: SweepSelection(**s) for m, s in select_per_method(rows).items()}
    write_results(rows, sel, "s3://cwpo/sweep")
    back = list(csv.DictReader(stdio.StringIO(io.read_text("s3://cwpo/sweep/results.csv"))))
    assert [(r["method"], r["point"], float(r["val_gra"])) for r in back] == [(r.method, slug(r.point), r.val_gra) for r in rows]
    assert "| cw-dpo | `align.beta=0.5` | 0.550 (0.550) | not run |" in io.read_text("s3://cwpo/sweep/results.md")
    assert matplotlib.image.imread(stdio.BytesIO(io.read_bytes("s3://cwpo/sweep/gra_sweep.png")))[..., :3].std() > 0.05



def test_training_metrics_and_tensorboard_at_a_uri(s3_server, monkeypatch, tmp_path):
    """A training stage's metrics.jsonl and TensorBoard event file land under a URI output_dir (the event file
    is written locally and uploaded after each report; a resumed run continues the old rows)."""
    from cwpo_ray import io
    from cwpo_ray.train.trainer import MetricsLogger, read_metrics

    _aws_env(monkeypatch, s3_server)
    monkeypatch.chdir(tmp_path)
    out = "s3://cwpo/train-metrics/sft"
    log = MetricsLogger(out)
    log.start(fresh=True)
    for step, loss in ((1, 2.0), (2, 1.5)):
        log.after_report(None, [{"step": step, "loss": loss}], None)
    assert [r["loss"] for r in read_metrics(out)] == [2.0, 1.5]
    events = io.listdir(io.join(out, "tensorboard"))
    assert len(events) == 1 and events[0].startswith("events.out.tfevents") and io.files_under(io.join(out, "tensorboard"))[0].size > 0
    again = MetricsLogger(out, tensorboard=False)
    again.start(fresh=False)
    again.after_report(None, [{"step": 3, "loss": 1.0}], None)
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
    assert os.listdir(tmp_path) == []  # nothing in the working directory


def test_tracking_follows_steps_and_logs_artifacts_at_a_uri(s3_server, monkeypatch, tmp_path):
    """MLflow tracking of a stage whose folder is in the bucket: the steps of the remote metrics.jsonl become
    step metrics and a plot at a URI is downloaded and logged as an artifact."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from cwpo_ray import io
    from cwpo_ray.config import TrackingConfig
    from cwpo_ray.tracking import follow_steps, local_tracking_dir, tracked

    _aws_env(monkeypatch, s3_server)
    out = "s3://cwpo/tracked/align/cw-dpo"
    cfg = TrackingConfig(kind="mlflow", tracking_uri=f"file://{tmp_path}/mlruns")
    with tracked(cfg, "align/cw-dpo", {"beta": 0.35}, local_tracking_dir(out, "align/cw-dpo")) as tr:
        with follow_steps(tr, io.join(out, "metrics.jsonl"), poll_s=0.1):
            io.write_text(io.join(out, "metrics.jsonl"), '{"step": 1, "loss": 0.7}\n{"step": 2, "loss": 0.6}\n')
        io.write_text(io.join(out, "gra.png"), "\x89PNG")
        tr.log_artifact(io.join(out, "gra.png"))
    c = MlflowClient(f"file://{tmp_path}/mlruns")
    assert [(m.step, m.value) for m in c.get_metric_history(tr.run_id, "train/loss")] == [(1, 0.7), (2, 0.6)]
    assert [a.path for a in c.list_artifacts(tr.run_id)] == ["gra.png"]
    assert local_tracking_dir(out, "align/cw-dpo").endswith("cwpo-logs/tracking/align_cw-dpo")
    assert local_tracking_dir(str(tmp_path / "sft"), "sft") == str(tmp_path / "sft" / "tracking")


def test_evaluate_response_cache_beside_a_model_at_a_uri(s3_server, monkeypatch, tmp_path):
    """evaluate's response cache works for model folders in the bucket: keyed by the folder's files (a
    changed file is a new key), stored beside the folder, read back as written."""
    import pyarrow as pa

    from cwpo_ray import io
    from cwpo_ray.evaluate.config import EvaluateConfig
    from cwpo_ray.evaluate.stage import RESPONSE_COLUMNS, _cache_read, _cache_write, response_cache_path
    from cwpo_ray.generate.config import SamplingConfig

    _aws_env(monkeypatch, s3_server)
    model = "s3://cwpo/cache-run/sft/model"
    io.write_text(io.join(model, "config.json"), "{}")
    engine = build_config(EvaluateConfig, {"prompts_path": "p", "sft_model": "m", "models": {}}).engine
    key = response_cache_path(model, ["a", "b"], 2, SamplingConfig(seed=0), engine)
    assert key.startswith("s3://cwpo/cache-run/sft/responses_cache/") and key.endswith(".parquet")
    assert key == response_cache_path(model, ["a", "b"], 2, SamplingConfig(seed=0), engine)
    assert key != response_cache_path(model, ["a", "b"], 2, SamplingConfig(seed=1), engine)
    tbl = pa.table({"prompt_id": ["a", "b"], "candidate_idx": [0, 0], "response": ["x", "y"], "seed": [0, 0],
                    "num_tokens": [1, 1], "finish_reason": ["stop", "stop"]}).select(RESPONSE_COLUMNS)
    assert _cache_read(key) is None
    _cache_write(key, tbl, {"backend": "hf"})
    back, info = _cache_read(key)
    assert back.equals(tbl) and info == {"backend": "hf"}
    io.write_text(io.join(model, "config.json"), '{"changed": 1}')  # another size (and last-modified)
    assert response_cache_path(model, ["a", "b"], 2, SamplingConfig(seed=0), engine) != key
