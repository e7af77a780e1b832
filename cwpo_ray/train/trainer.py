"""The driver side of the one training loop: :func:`fit` (a ``TorchTrainer`` over a Ray Dataset) and
:class:`MetricsLogger` (rank-0 metrics → append-only ``metrics.jsonl`` + TensorBoard)."""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass

from cwpo_ray import console, io
from cwpo_ray.train.loop import FINAL_MARK, STATE_FILE

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


def fit(task, cfg, ds, rows: int, callbacks: list | None = None, worker_hooks: list | None = None) -> FitResult:
    """Run :func:`cwpo_ray.train.loop.train_loop_per_worker` for ``task`` (an object or its name) on a
    ``TorchTrainer`` over the Ray Dataset ``ds`` (``rows`` rows); copy the final HF model to
    ``{output_dir}/model``.

    ``callbacks``: extra Ray Train callbacks (e.g. Tune's ``TuneReportCallback`` in a sweep trial).
    ``worker_hooks``: picklable callables run by every worker after each optimizer step as
    ``hook(step=, rank=, resumed=)`` (tests use one to kill a worker).
    """
    import pyarrow.fs as pafs
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from cwpo_ray.train.loop import resolve_task, train_loop_per_worker

    task = resolve_task(task)
    check_optimizer(cfg)
    out = cfg.output_dir
    storage = io.absolute(out)  # Ray Train checkpoints: {output_dir}/ray_train, on any pyarrow.fs filesystem
    if not cfg.resume:  # Ray Train would otherwise pick up an earlier run of the same name
        io.rmtree(io.join(storage, "ray_train", task.name))
    logger = MetricsLogger(out)
    logger.start(fresh=not cfg.resume)
    from cwpo_ray.train.backend import DeviceAwareTorchConfig

    trainer = TorchTrainer(
        train_loop_per_worker,
        torch_config=DeviceAwareTorchConfig(),  # NCCL on CUDA workers, gloo on GPU workers without CUDA
        train_loop_config={"task": task, "cfg": cfg.model_dump(mode="json"), "rows": rows, "hooks": list(worker_hooks or [])},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}),
        run_config=RunConfig(name=task.name, storage_path=io.join(storage, "ray_train"),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                             callbacks=[logger, *(callbacks or [])]),
        datasets={"train": ds},
        # Same rows to the same worker in the same order on every run (same config and seed -> same numbers);
        # locality-based block assignment would depend on where blocks happen to live.
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True), enable_shard_locality=False),
    )
    t0 = time.time()
    from cwpo_ray import tracking

    with console.metrics_bar(logger.path, task.name), tracking.follow_steps(tracking.current(), logger.path):
        result = trainer.fit()
    wall = time.time() - t0
    if result.error:
        raise result.error
    model_dir = io.join(out, "model")
    io.rmtree(model_dir)
    dst_fs, dst = io.resolve(model_dir)
    dst_fs.create_dir(dst, recursive=True)
    src_fs = result.checkpoint.filesystem
    for info in src_fs.get_file_info(pafs.FileSelector(result.checkpoint.path)):
        if info.type == pafs.FileType.File and info.base_name not in (STATE_FILE, FINAL_MARK):  # HF files only, not ds/
            pafs.copy_files(info.path, f"{dst}/{info.base_name}", source_filesystem=src_fs, destination_filesystem=dst_fs)
    return FitResult(model_dir=model_dir, checkpoint=result.checkpoint.path, fit_seconds=round(wall, 1),
                     history=read_metrics(out),
                     final_metrics={k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))})


def train_metrics(history: list[dict]) -> list[dict]:
    """The metrics rows of training steps (not the final report)."""
    return [h for h in history if "loss" in h]
