"""The driver side of the one training loop: :func:`fit` (a ``TorchTrainer`` over a Ray Dataset) and
:class:`MetricsLogger` (rank-0 metrics → append-only ``metrics.jsonl`` + TensorBoard)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass

from cwpo_ray import console, io
from cwpo_ray.train.loop import FINAL_MARK, STATE_FILE

log = logging.getLogger(__name__)

try:
    from ray.train.v2.api.callback import UserCallback
except ImportError:  # pragma: no cover - Train V1
    UserCallback = object

METRICS_FILE = "metrics.jsonl"


class MetricsLogger(UserCallback):
    """Runs on the Ray Train controller: each rank-0 report becomes one row of ``metrics.jsonl``
    (appended; a local file is never rewritten) and TensorBoard scalars.

    Object stores (``s3://`` …) cannot append: there the rows of this process are kept and the file is
    rewritten on each report; TensorBoard writes its event file to a local temporary folder, uploaded to
    ``{output_dir}/tensorboard`` after each report.
    """

    def __init__(self, output_dir: str, tensorboard: bool = True):
        self.remote = io.is_remote(output_dir)
        # absolute here, on the driver: the callback runs in the Ray Train controller, elsewhere
        self.output_dir = io.absolute(output_dir)
        self.path = io.join(self.output_dir, METRICS_FILE)
        self.tensorboard = tensorboard
        self.rows: list[dict] = []
        self._tb = None
        self._tb_dir: str | None = None  # where the event file is written (a temporary folder for a URI)

    def start(self, fresh: bool) -> None:
        """Before the run: a fresh run starts an empty file, a resumed one appends to the old rows."""
        if self.remote:
            self.rows = [] if fresh or not io.exists(self.path) else \
                [json.loads(x) for x in io.read_text(self.path).splitlines() if x.strip()]
            if fresh:
                io.rmtree(self.path)
        else:
            os.makedirs(self.output_dir, exist_ok=True)
            if fresh and os.path.exists(self.path):
                os.remove(self.path)

    def after_report(self, run_context, metrics, checkpoint):
        m = dict(metrics[0]) if metrics else {}
        if not m:
            return
        m["time"] = time.time()
        self.append(m)
        if self.tensorboard:
            try:
                if self._tb is None:
                    from tensorboardX import SummaryWriter

                    self._tb_dir = tempfile.mkdtemp(prefix="cwpo_tb_") if self.remote else \
                        os.path.join(self.output_dir, "tensorboard")
                    self._tb = SummaryWriter(self._tb_dir)
                for k, v in m.items():
                    if isinstance(v, (int, float)) and k not in ("step", "time"):
                        self._tb.add_scalar(k, v, int(m.get("step", 0)))
                self._tb.flush()
                if self.remote:
                    io.upload_dir(self._tb_dir, io.join(self.output_dir, "tensorboard"))
            except ImportError:
                self.tensorboard = False

    def append(self, row: dict) -> None:
        line = json.dumps(row) + "\n"
        if self.remote:
            self.rows.append(row)
            io.write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))
            return
        with open(self.path, "a") as f:
            f.write(line)


def read_metrics(output_dir: str) -> list[dict]:
    path = io.join(output_dir, METRICS_FILE)
    if not io.exists(path):
        return []
    return [json.loads(line) for line in io.read_text(path).splitlines() if line.strip()]


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` hands back to its stage (which folds it into the stage's result model)."""

    model_dir: str  # {output_dir}/model: the HF folder of the final step
    checkpoint: str  # the Ray Train checkpoint it was copied from
    fit_seconds: float
    history: list[dict]  # the metrics.jsonl rows, one per logged step
    final_metrics: dict[str, float]  # the last report's numeric metrics

    @property
    def worker_seconds(self) -> dict[str, float]:
        """Rank 0's wall seconds per phase (:class:`~cwpo_ray.train.loop.Recipe`): ``process`` (worker start
        and imports), ``init``, ``model``, ``reference``, ``optimizer``, ``resume``, ``train`` (the steps)."""
        return {k[len("seconds_"):]: v for k, v in self.final_metrics.items() if k.startswith("seconds_")}


def check_train_storage(cfg) -> None:
    """Fail fast, before Ray starts, with one line naming the field: ``output_dir``'s store (scheme,
    endpoint, credentials, bucket) and every input given as a URI (model, tokenizer, data_dir, reference)."""
    io.check_storage(cfg.output_dir, "output_dir")
    for field in ("model", "tokenizer", "reference", "data_dir"):
        io.check_input(getattr(cfg, field, None), field)


def check_optimizer(cfg) -> None:
    """Fail before any worker starts when the configured optimizer cannot be built where it will run."""
    import importlib.util

    if cfg.optimizer == "paged_adamw_32bit" and cfg.use_gpu and importlib.util.find_spec("bitsandbytes") is None:
        from cwpo_ray.config import ConfigError

        raise ConfigError("config error: optimizer: paged_adamw_32bit needs bitsandbytes on the GPU workers "
                          "(pip install 'cwpo-ray[bnb]'), or set optimizer=adamw")


# Fields every run of a several-run job must share: they shape the one worker group and Ray Train run.
SHARED_FIELDS = ("num_workers", "use_gpu", "cpus_per_worker", "max_failures", "keep_checkpoints", "resume",
                 "controller_poll_s")


POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # Ray Train V2 propagates it from the driver to the controller


@contextlib.contextmanager
def controller_poll(seconds: float):
    """``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` = ``seconds`` while a ``TorchTrainer`` starts in this process (Ray
    Train V2 hands the driver's value to the controller it creates, also on a cluster), restored after."""
    old = os.environ.get(POLL_ENV)
    if old is not None and old != str(seconds):  # the config field is what this job uses: say so, once per job
        log.warning("controller_poll_s=%g replaces %s=%s for this training job", seconds, POLL_ENV, old)
    os.environ[POLL_ENV] = str(seconds)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(POLL_ENV, None)
        else:
            os.environ[POLL_ENV] = old


def can_share_job(cfgs: list) -> bool:
    """Whether these runs can train in one worker group (:func:`fit_many`): the same worker group and
    failure settings, no ``resume`` (a resumed job must be the same list of runs as the one it resumes) and
    no tracking (a tracked run is a tracked stage of its own)."""
    return all(not c.resume and c.tracking.kind == "none" for c in cfgs) and all(
        {f: getattr(c, f) for f in SHARED_FIELDS} == {f: getattr(cfgs[0], f) for f in SHARED_FIELDS} for c in cfgs)


def train_many(cfgs: dict, prepare, run_one, callbacks: list | None = None, same_task=lambda cfgs: True) -> dict:
    """A stage's runs (name -> config; e.g. a pipeline's align methods) in ONE training job when they can
    share it (:func:`can_share_job` and ``same_task(cfgs)``; no ``callbacks``, which follow one run), else
    ``run_one(cfg, callbacks=)`` each. ``prepare(cfg)`` is the stage's driver-side input pass: an object with
    ``cfg``, ``ds``, ``rows``, ``task()`` and ``summary(fit_result, job_runs)``. Each run keeps its own data,
    seed, output folder and summary; its numbers equal a separate run's."""
    runs = list(cfgs.values())
    if callbacks or len(runs) < 2 or not (can_share_job(runs) and same_task(runs)):
        return {name: run_one(c, callbacks=callbacks) for name, c in cfgs.items()}
    preps = {name: prepare(c) for name, c in cfgs.items()}
    first = next(iter(preps.values()))
    results = fit_many(first.task(), [(p.cfg, p.ds, p.rows) for p in preps.values()])
    return {name: p.summary(res, job_runs=len(preps)) for (name, p), res in zip(preps.items(), results)}


def copy_model(checkpoint_fs, checkpoint_path: str, model_dir: str) -> None:
    """The HF files of a final checkpoint (not its DeepSpeed state under ds/) -> ``model_dir``, replaced."""
    import pyarrow.fs as pafs

    io.rmtree(model_dir)
    dst_fs, dst = io.resolve(model_dir)
    dst_fs.create_dir(dst, recursive=True)
    for info in checkpoint_fs.get_file_info(pafs.FileSelector(checkpoint_path)):
        if info.type == pafs.FileType.File and info.base_name not in (STATE_FILE, FINAL_MARK):
            pafs.copy_files(info.path, f"{dst}/{info.base_name}", source_filesystem=checkpoint_fs, destination_filesystem=dst_fs)


class RunsLogger(UserCallback):
    """Runs on the Ray Train controller: each report goes to its run's :class:`MetricsLogger` (by its ``run``
    tag in a several-run job), and a run's final model is copied from its checkpoint to its
    ``{output_dir}/model`` as soon as it is reported (so no later checkpoint of the job can evict it first);
    the final row of ``metrics.jsonl`` records that checkpoint's path (``checkpoint``). Ray Train V2 pins the
    controller to the driver's node, so a local output folder is the driver's, as when the driver copied it."""

    def __init__(self, loggers: list[MetricsLogger]):
        self.loggers = loggers

    def after_report(self, run_context, metrics, checkpoint):
        m = dict(metrics[0]) if metrics else {}
        i = int(m.get("run", 0))
        if m.get("final") and checkpoint is not None:
            copy_model(checkpoint.filesystem, checkpoint.path, io.join(self.loggers[i].output_dir, "model"))
            metrics = [{**m, "checkpoint": checkpoint.path}, *metrics[1:]]
        self.loggers[i].after_report(run_context, metrics, checkpoint)


def fit(task, cfg, ds, rows: int, callbacks: list | None = None, worker_hooks: list | None = None) -> FitResult:
    """Run :func:`cwpo_ray.train.loop.train_loop_per_worker` for ``task`` (an object or its name) on a
    ``TorchTrainer`` over the Ray Dataset ``ds`` (``rows`` rows); copy the final HF model to
    ``{output_dir}/model``.

    ``callbacks``: extra Ray Train callbacks (e.g. Tune's ``TuneReportCallback`` in a sweep trial).
    ``worker_hooks``: picklable callables run by every worker after each optimizer step as
    ``hook(step=, rank=, resumed=)`` (tests use one to kill a worker).
    """
    return fit_many(task, [(cfg, ds, rows)], callbacks, worker_hooks)[0]


def fit_many(task, runs: list[tuple], callbacks: list | None = None, worker_hooks: list | None = None) -> list[FitResult]:
    """:func:`fit` for several runs ``(cfg, ds, rows)`` of one task in ONE ``TorchTrainer`` job: one worker
    group trains them one after the other (the worker processes, their imports, the process group and the
    controller are paid once, not once per run). The configs must agree on :data:`SHARED_FIELDS`
    (:func:`can_share_job`); each run keeps its own output folder, metrics, model and seed. The job's Ray
    Train checkpoints live under the first run's output folder. Returns one FitResult per run, in order;
    ``fit_seconds`` is the whole job's wall time."""
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from cwpo_ray.config import ConfigError
    from cwpo_ray.train.backend import DeviceAwareTorchConfig
    from cwpo_ray.train.loop import resolve_task, train_loop_per_worker

    task = resolve_task(task)
    cfgs = [r[0] for r in runs]
    several = len(runs) > 1
    if several and not can_share_job(cfgs):
        raise ConfigError(f"config error: runs of one training job must agree on {', '.join(SHARED_FIELDS)}, "
                          "and neither resume nor be tracked")
    for c in cfgs:
        check_optimizer(c)
    cfg = cfgs[0]
    storage = io.absolute(cfg.output_dir)  # Ray Train checkpoints: {output_dir}/ray_train, on any pyarrow.fs filesystem
    if not cfg.resume:  # Ray Train would otherwise pick up an earlier run of the same name
        io.rmtree(io.join(storage, "ray_train", task.name))
    loggers = [MetricsLogger(c.output_dir) for c in cfgs]
    for lg, c in zip(loggers, cfgs):
        lg.start(fresh=not c.resume)
    runs_logger = RunsLogger(loggers)
    loop_config = {"task": task, "cfg": cfg.model_dump(mode="json"), "rows": runs[0][2]}
    if several:
        loop_config = {"runs": [{"task": task, "cfg": c.model_dump(mode="json"), "rows": rows} for c, _, rows in runs]}
    trainer = TorchTrainer(
        train_loop_per_worker,
        torch_config=DeviceAwareTorchConfig(),  # NCCL on CUDA workers, gloo on GPU workers without CUDA
        train_loop_config={**loop_config, "hooks": list(worker_hooks or [])},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}),
        run_config=RunConfig(name=task.name, storage_path=io.join(storage, "ray_train"),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                             callbacks=[runs_logger, *(callbacks or [])]),
        datasets={"train": runs[0][1]} if not several else {f"train_{i}": r[1] for i, r in enumerate(runs)},
        # Same rows to the same worker in the same order on every run (same config and seed -> same numbers);
        # locality-based block assignment would depend on where blocks happen to live.
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True), enable_shard_locality=False),
    )
    t0 = time.time()
    from cwpo_ray import tracking

    with console.metrics_bar([lg.path for lg in loggers], task.name), tracking.follow_steps(tracking.current(), loggers[0].path), \
            controller_poll(cfg.controller_poll_s):
        result = trainer.fit()
    wall = time.time() - t0
    if result.error:
        raise result.error
    out = []
    for lg in loggers:
        history = read_metrics(lg.output_dir)
        final = next((h for h in reversed(history) if h.get("final")), None)
        if final is None or "checkpoint" not in final:
            raise RuntimeError(f"{task.name}: the run in {lg.output_dir} ended without a final model")
        out.append(FitResult(model_dir=io.join(lg.output_dir, "model"), checkpoint=final["checkpoint"], fit_seconds=round(wall, 1),
                             history=history, final_metrics={k: v for k, v in final.items() if isinstance(v, (int, float))}))
    return out


def train_metrics(history: list[dict]) -> list[dict]:
    """The metrics rows of training steps (not the final report)."""
    return [h for h in history if "loss" in h]
