"""Experiment tracking: MLflow or Weights & Biases, through each library's own client.

One tracked run per stage (`train-annotator`, `sft`, `align`, `evaluate`): the stage's config as
params, every logged training step as step metrics (followed live from ``metrics.jsonl`` while Ray
Train runs, so a long job shows up in the UI as it goes), the stage's numeric results as final
metrics and its plots and report as artifacts. The run ends FINISHED, or FAILED when the stage raises.

MLflow goes through ``mlflow.MlflowClient`` (explicit run ids, no global active run, so it is safe beside
Ray's threads); ``tracking_uri`` may be a local file store (``file:///…/mlruns``; MLflow 3 keeps it in
maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``, which a file URI here sets) or a server. W&B goes through
``wandb.init(..., reinit="create_new")``; ``mode: offline`` writes the run under ``{output_dir}/tracking/wandb``
for a later ``wandb sync`` (``cwpo-logs/tracking/<stage>/wandb`` when the stage's folder is a URI).

Stage folders at a URI (an object-store run folder) are tracked too: steps are followed from the remote
``metrics.jsonl`` (polled every 5 s) and artifacts are downloaded to a temporary folder before logging.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import json
import logging
import os
import posixpath
import tempfile
import threading
import time
from typing import Any

from cwpo_ray.config import ConfigError, TrackingConfig

log = logging.getLogger(__name__)

PACKAGES = {"mlflow": "mlflow", "wandb": "wandb"}


def check_tracking(cfg: TrackingConfig, field: str = "tracking") -> None:
    """Fail fast, with one line naming the field, when the tracking package is not installed."""
    if cfg.kind != "none" and importlib.util.find_spec(PACKAGES[cfg.kind]) is None:
        raise ConfigError(f"config error: {field}.kind: {cfg.kind} needs the `{PACKAGES[cfg.kind]}` package "
                          "(pip install 'cwpo-ray[tracking]'), or set kind=none")


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a.b": value} (lists and None as strings), for params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
    return out


def numeric(d: dict, prefix: str = "") -> dict[str, float]:
    """The finite int/float leaves of a (nested) result, as metrics."""
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)) and v == v and abs(v) != float("inf"):
            out[f"{prefix}{k}"] = float(v)
        elif isinstance(v, dict):
            out.update(numeric(v, f"{prefix}{k}/"))
    return out


class Tracker:
    """One tracked run. ``log_metrics``, ``log_artifact`` and ``finish`` are thread-safe."""

    def __init__(self, cfg: TrackingConfig, name: str, params: dict, output_dir: str | None = None):
        self.cfg, self.name, self._lock = cfg, name, threading.Lock()
        tags = {**cfg.tags, "cwpo.stage": name.split("/")[-1]}
        if cfg.kind == "mlflow":
            if cfg.tracking_uri and (cfg.tracking_uri.startswith("file:") or "://" not in cfg.tracking_uri):
                # a local file store was asked for by its URI: MLflow 3 keeps it behind this opt-in
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            from mlflow import MlflowClient
            from mlflow.entities import Param

            self.client = MlflowClient(tracking_uri=cfg.tracking_uri)
            exp = self.client.get_experiment_by_name(cfg.experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(cfg.experiment)
            self.run_id = self.client.create_run(exp_id, run_name=name, tags=tags).info.run_id
            items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
            for i in range(0, len(items), 100):  # MLflow's batch limit for params
                self.client.log_batch(self.run_id, params=items[i:i + 100])
        elif cfg.kind == "wandb":
            import wandb

            wdir = output_dir
            if wdir:
                os.makedirs(wdir, exist_ok=True)
            from cwpo_ray import console

            self.run = wandb.init(project=cfg.experiment, entity=cfg.entity, name=name, config=params, tags=list(tags.values()),
                                  mode=cfg.mode, dir=wdir, reinit="create_new",
                                  settings=wandb.Settings(silent=console.quiet()))  # its banner only with --verbose
            self.run_id = self.run.id
        else:
            raise ValueError(f"Tracker needs tracking.kind mlflow or wandb, not {cfg.kind!r}")
        log.info("tracking: %s run %s (%s)", cfg.kind, name, self.run_id)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if not metrics:
            return
        with self._lock:
            if self.cfg.kind == "mlflow":
                from mlflow.entities import Metric

                ts = int(time.time() * 1000)
                batch = [Metric(k.replace("@", "_"), v, ts, step or 0) for k, v in metrics.items()]
                for i in range(0, len(batch), 1000):
                    self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])
            else:
                self.run.log(metrics, step=step)

    def log_artifact(self, path: str) -> None:
        """Log one file; a file at a URI (an object-store run folder) is downloaded to a temporary folder
        first. A missing file is skipped."""
        from cwpo_ray import io

        if not path or not io.exists(path):
            return
        if io.is_remote(path):
            with tempfile.TemporaryDirectory(prefix="cwpo_artifact_") as d:
                local = os.path.join(d, posixpath.basename(path.rstrip("/")))
                io.copy_file(path, local)
                self._log_local_artifact(local)
            return
        self._log_local_artifact(path)

    def _log_local_artifact(self, path: str) -> None:
        with self._lock:
            if self.cfg.kind == "mlflow":
                self.client.log_artifact(self.run_id, path)
            else:
                import wandb

                if path.endswith(".png"):
                    self.run.log({os.path.splitext(os.path.basename(path))[0]: wandb.Image(path)})
                self.run.save(path, base_path=os.path.dirname(path), policy="now")

    def finish(self, failed: bool = False) -> None:
        with self._lock:
            if self.cfg.kind == "mlflow":
                self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
            else:
                self.run.finish(exit_code=1 if failed else 0)


@contextlib.contextmanager
def tracked(cfg: TrackingConfig, name: str, params: dict, output_dir: str | None = None):
    """A :class:`Tracker` for the length of a stage (None when ``cfg.kind`` is none); FAILED if it raises."""
    if cfg.kind == "none":
        yield None
        return
    check_tracking(cfg)
    tracker = Tracker(cfg, cfg.run_name or name, params, output_dir)
    try:
        yield tracker
    except BaseException:
        tracker.finish(failed=True)
        raise
    tracker.finish()


@contextlib.contextmanager
def follow_steps(tracker: Tracker | None, metrics_path: str, poll_s: float = 1.0):
    """While the block runs, forward every new ``metrics.jsonl`` row (one per logged optimizer step) to the
    tracker as step metrics; the rows left when the block ends are forwarded before it returns."""
    from cwpo_ray import io

    if tracker is None:
        yield
        return
    remote = io.is_remote(metrics_path)
    if remote:  # an object store: the whole (small) file is read again on each poll
        poll_s = max(poll_s, 5.0)
    stop, pos = threading.Event(), [0]

    def drain() -> None:
        try:
            if remote:
                chunk = io.read_text(metrics_path)[pos[0]:] if io.exists(metrics_path) else ""
            else:
                with open(metrics_path) as f:
                    f.seek(pos[0])
                    chunk = f.read()
        except OSError:
            return
        done = chunk[:chunk.rfind("\n") + 1]  # complete lines only
        pos[0] += len(done)
        for line in done.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            step = row.get("step")
            try:
                tracker.log_metrics({f"train/{k}": v for k, v in row.items()
                                     if k not in ("step", "time", "total_steps") and isinstance(v, (int, float))},
                                    step=int(step) if step is not None else None)
            except Exception as e:  # noqa: BLE001 - a tracking server hiccup must not stop training
                log.warning("tracking: step %s not logged: %s: %s", step, type(e).__name__, e)

    def loop() -> None:
        while not stop.wait(poll_s):
            drain()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=5)
        drain()


_CURRENT: contextvars.ContextVar[Tracker | None] = contextvars.ContextVar("cwpo_tracker", default=None)


def current() -> Tracker | None:
    """The tracker of the stage running in this thread (set by :func:`tracked_stage`), if any."""
    return _CURRENT.get()


def local_tracking_dir(output_dir: str | None, name: str) -> str | None:
    """Where a tracker keeps its local files (W&B's run folder, for ``wandb sync`` of an offline run):
    ``{output_dir}/tracking`` for a local stage folder; for a URI, the console's log folder
    (``cwpo-logs/tracking/<stage>``), since W&B writes local files only."""
    from cwpo_ray import console, io

    if not output_dir:
        return None
    if not io.is_remote(output_dir):
        return os.path.join(output_dir, "tracking")
    return os.path.join(str(console.STATE.log_dir or os.path.abspath("cwpo-logs")), "tracking", name.replace("/", "_"))


def tracked_stage(name: str, artifacts=lambda result: []):
    """Decorator of a stage's run function ``fn(cfg, ...) -> StageResult`` whose config has ``tracking``:
    a tracked run around it (params = the config without ``ray``/``tracking``; :func:`current` returns it,
    so :func:`cwpo_ray.train.trainer.fit` streams the training steps), then the result's numeric fields
    as final metrics and ``artifacts(result)`` (file paths) as artifacts."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(cfg, *args, **kwargs):
            tcfg = getattr(cfg, "tracking", None)
            if tcfg is None or tcfg.kind == "none":
                return fn(cfg, *args, **kwargs)
            params = cfg.model_dump(mode="json", exclude={"tracking", "ray"})
            with tracked(tcfg, name, params, local_tracking_dir(getattr(cfg, "output_dir", None), name)) as tr:
                token = _CURRENT.set(tr)
                try:
                    result = fn(cfg, *args, **kwargs)
                finally:
                    _CURRENT.reset(token)
                try:  # tracking is a record of the stage: a failure here is a warning, never the stage's failure
                    tr.log_metrics({f"final/{k}": v for k, v in numeric(result.model_dump(mode="json", exclude={"history"})).items()})
                    for path in artifacts(result):
                        tr.log_artifact(path)
                except Exception as e:  # noqa: BLE001
                    log.warning("tracking: %s: final metrics / artifacts not logged: %s: %s", name, type(e).__name__, e)
                return result
        wrapper.__wrapped_artifacts__ = artifacts  # the artifact list, for tests
        return wrapper
    return deco


__all__ = ["Tracker", "tracked", "tracked_stage", "current", "follow_steps", "check_tracking", "flatten", "numeric"]
