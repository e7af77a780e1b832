"""Experiment tracking: MLflow (a real local file store, no server) and W&B (offline mode), the live
follower of metrics.jsonl, and the fail-fast config check. A real Ray Train stage streaming into MLflow
is in tests/test_student_train.py (the ZeRO-2 align run)."""
from __future__ import annotations

import json
import threading
import time

import pytest

from cwpo_ray.config import ConfigError, TrackingConfig, build_config
from cwpo_ray.tracking import Tracker, flatten, follow_steps, numeric, tracked

pytest.importorskip("mlflow")


def mlflow_cfg(tmp_path, **kw) -> TrackingConfig:
    return TrackingConfig(kind="mlflow", tracking_uri=f"file://{tmp_path}/mlruns", **kw)


def test_flatten_and_numeric():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": {}}) == {"a.b": 1, "a.c": "[1, 2]", "d": "null", "e": "{}"}
    assert numeric({"x": 1, "ok": True, "n": float("nan"), "m": {"cw": {"gra": 0.6, "ci": [0.5, 0.7]}}, "s": "t"}) == \
        {"x": 1.0, "m/cw/gra": 0.6}


def test_mlflow_run_params_steps_artifacts_and_status(tmp_path):
    from mlflow import MlflowClient

    png = tmp_path / "gra.png"
    png.write_bytes(b"\x89PNG")
    with tracked(mlflow_cfg(tmp_path, tags={"team": "a"}), "demo/align", {"align": {"beta": 0.35}, "lr": 1e-4}) as tr:
        tr.log_metrics({"train/loss": 0.69, "flag": True}, step=2)
        tr.log_metrics({"train/loss": 0.55}, step=4)
        tr.log_artifact(str(png))
        tr.log_artifact(str(tmp_path / "missing.png"))  # a missing file is skipped, not fatal
    c = MlflowClient(f"file://{tmp_path}/mlruns")
    run = c.get_run(tr.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "demo/align"
    assert run.data.params == {"align.beta": "0.35", "lr": "0.0001"}
    assert run.data.tags["team"] == "a" and run.data.tags["cwpo.stage"] == "align"
    assert [(m.step, m.value) for m in c.get_metric_history(tr.run_id, "train/loss")] == [(2, 0.69), (4, 0.55)]
    assert "flag" not in run.data.metrics
    assert [a.path for a in c.list_artifacts(tr.run_id)] == ["gra.png"]
    with pytest.raises(RuntimeError), tracked(mlflow_cfg(tmp_path), "boom", {}) as tr2:
        raise RuntimeError("stage failed")
    assert c.get_run(tr2.run_id).info.status == "FAILED"


def test_follow_steps_forwards_every_row_live_and_at_the_end(tmp_path):
    from mlflow import MlflowClient

    path = tmp_path / "metrics.jsonl"
    path.write_text("")
    tr = Tracker(mlflow_cfg(tmp_path), "sft", {})

    def writer():
        for step in (1, 2, 3):
            with open(path, "a") as f:
                f.write(json.dumps({"step": step, "loss": 1.0 / step, "time": time.time(), "total_steps": 3}) + "\n")
            time.sleep(0.15)
        with open(path, "a") as f:
            f.write('{"step": 4, "loss": 0.2')  # a partly written row is not read (yet)

    with follow_steps(tr, str(path), poll_s=0.05):
        t = threading.Thread(target=writer)
        t.start()
        t.join()
    tr.finish()
    hist = MlflowClient(f"file://{tmp_path}/mlruns").get_metric_history(tr.run_id, "train/loss")
    assert [(m.step, round(m.value, 4)) for m in hist] == [(1, 1.0), (2, 0.5), (3, 0.3333)]


@pytest.mark.timeout(120)
def test_wandb_offline_run(tmp_path):
    pytest.importorskip("wandb")
    png = tmp_path / "plot.png"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.plot([0, 1])
    plt.savefig(png)
    with tracked(TrackingConfig(kind="wandb", mode="offline", experiment="cwpo-test"), "demo/evaluate", {"k": 4},
                 str(tmp_path / "out")) as tr:
        tr.log_metrics({"train/loss": 0.5}, step=1)
        tr.log_metrics({"final/gra": 0.6})
        tr.log_artifact(str(png))
    runs = list((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and (runs[0] / f"run-{tr.run_id}.wandb").stat().st_size > 0
    assert (runs[0] / "files" / "plot.png").exists()


def test_bad_tracking_config_fails_fast(monkeypatch):
    import importlib.util

    from cwpo_ray.student.config import AlignConfig

    with pytest.raises(ConfigError, match=r"align|tracking.kind"):
        build_config(AlignConfig, {"tracking": {"kind": "tensorboardx"}})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^config error: tracking.kind: wandb needs the `wandb` package"):
        build_config(AlignConfig, {"tracking": {"kind": "wandb"}})


def test_tracked_stage_artifact_paths_of_every_stage_and_no_failure_from_tracking(tmp_path, caplog):
    """The artifact lists of the real stages resolve on their result models, and an error while logging a
    finished stage's record is a warning: the stage's result still comes back."""
    from mlflow import MlflowClient

    from cwpo_ray.annotator.train import run_train_annotator
    from cwpo_ray.evaluate.stage import run_evaluate
    from cwpo_ray.results import AlignResult, EvaluateResult, SFTResult, TrainAnnotatorResult
    from cwpo_ray.student.align import run_align
    from cwpo_ray.student.sft import run_sft
    from cwpo_ray.tracking import tracked_stage

    def fake(cls):
        """A result with every field filled: nested models built the same way, strings as paths."""
        vals = {}
        for n, f in cls.model_fields.items():
            models = [a for a in (f.annotation, *typing.get_args(f.annotation)) if isinstance(a, type) and issubclass(a, pydantic.BaseModel)]
            vals[n] = fake(models[0]) if models else f"/x/{n}"
        return cls.model_construct(**vals)

    import typing

    import pydantic

    for fn, cls in ((run_train_annotator, TrainAnnotatorResult), (run_sft, SFTResult), (run_align, AlignResult),
                    (run_evaluate, EvaluateResult)):
        paths = fn.__wrapped_artifacts__(fake(cls))
        assert paths and all(isinstance(p, str) for p in paths), fn

    class Res(pydantic.BaseModel):
        output_dir: str
        score: float

    class Cfg(pydantic.BaseModel):
        tracking: TrackingConfig
        output_dir: str

    @tracked_stage("fake", lambda r: r.nope)  # a broken artifact list
    def run(cfg):
        return Res(output_dir=cfg.output_dir, score=0.5)

    r = run(Cfg(tracking=mlflow_cfg(tmp_path), output_dir=str(tmp_path)))
    assert r.score == 0.5 and "not logged" in caplog.text
    c = MlflowClient(f"file://{tmp_path}/mlruns")
    (run_,) = c.search_runs([c.get_experiment_by_name("cwpo").experiment_id])
    assert run_.info.status == "FINISHED" and run_.data.metrics["final/score"] == 0.5
