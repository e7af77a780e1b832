"""THE training loop of the package: one ``train_loop_per_worker`` for `train-annotator`, `sft` and `align`.

Runs inside ``TorchTrainer`` workers: Ray Train sets up the process group (gloo on CPU, NCCL on GPU)
and ``deepspeed.initialize`` reuses it, so the same code runs on 2 CPU workers and on N GPUs over
several nodes; ZeRO stage (0 = plain data parallel), precision and accumulation come from the config.

A :class:`Recipe` per worker, torchtune-style: ``setup_model`` → ``setup_reference`` (align with
``reference_mode: in_workers`` only) → ``setup_optimizer`` (DeepSpeed engine) → ``resume`` (latest
Ray Train checkpoint) → ``train`` (a linear loop over the Ray Data shard: batch → step function →
backward → step → metrics / checkpoint / hooks) → ``save`` (the final HF folder). What differs
between stages is a *task* (:mod:`cwpo_ray.train.tasks`): how to build the model, turn shard rows into
batches, the pure step function ``(model, batch) -> (loss, metrics)`` and how to save the final model.

``train_loop_config``::

    {"task": <task object or name>, "cfg": <config dict>, "rows": <training rows>,
     "hooks": [callable(step=, rank=, resumed=)]}   # optional, called after every optimizer step

or, for several runs of one task in one worker group (e.g. `align` for every method of a pipeline: one
set of worker processes, imports and process group instead of one per run), ``{"runs": [{"task", "cfg",
"rows"}, ...], "hooks": [...]}``: the runs train one after the other, run ``i`` on the dataset shard
``train_{i}``, and every report carries ``run: i`` (a restarted job skips the runs that finished and
resumes the next from its own latest checkpoint, if any).
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time


def _process_start() -> float:
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - a timing, not a result
        return time.time()


_PROCESS_START = _process_start()
CKPT_TAG = "ds"
STATE_FILE = "train_state.json"
FINAL_MARK = "final_model.json"


def deepspeed_config(cfg, bf16: bool, with_optimizer: bool = True) -> dict:
    from cwpo_ray.config import deep_merge

    ds = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,  # we hand DeepSpeed a plain torch.optim.AdamW
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if not with_optimizer:
        ds.pop("gradient_clipping")
    return deep_merge(ds, cfg.deepspeed_extra)


def schedule(cfg, rows: int, world: int) -> dict:
    """Micro-steps and optimizer steps per worker for ``rows`` training rows (equal split)."""
    rows_pw = rows // world
    micro_per_epoch = max(1, math.ceil(rows_pw / cfg.batch_size))
    total_micro = max(cfg.grad_accum, int(micro_per_epoch * cfg.epochs))
    total_steps = total_micro // cfg.grad_accum
    if cfg.max_steps:  # overrides epochs (more epochs run if needed)
        total_steps = cfg.max_steps
        total_micro = total_steps * cfg.grad_accum
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total_steps)
    return {"rows_per_worker": rows_pw, "micro_per_epoch": micro_per_epoch, "total_micro": total_micro,
            "total_steps": total_steps, "warmup_steps": min(warmup, max(total_steps - 1, 0))}


def worker_logger(name: str) -> logging.Logger:
    """Rank 0's progress lines: a logger writing to the worker's stdout (forwarded to the driver by Ray)."""
    log = logging.getLogger(f"cwpo_ray.train.{name}")
    if not log.handlers:
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter(f"[{name}] %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


def resolve_task(task):
    """A task object, or its registered name ("bt", "sft", "align")."""
    if isinstance(task, str):
        from cwpo_ray.train.tasks import TASKS

        return TASKS[task]()
    return task


class ShardPasses:
    """Passes over one worker's dataset shard. Each pass through Ray Data restarts the shard's streaming split
    (an executor start and a barrier with the other workers: ~1.3 s per pass on the demo's 2 CPU workers, for
    a few thousand rows). With ``keep``, the batches of the first pass that runs to its end are kept and every
    later pass replays them in the same order: the same rows, batches and numbers, one Ray Data pass per run.
    ``read(epoch)`` opens a pass through Ray Data."""

    def __init__(self, read, keep: bool):
        self.read, self.keep = read, keep
        self.kept: list | None = None
        self.reads = 0  # passes through Ray Data

    def __call__(self, epoch: int | None = None):
        if self.kept is not None:
            return iter(self.kept)
        self.reads += 1
        it = self.read(epoch)
        return self._keeping(it) if self.keep else it

    def _keeping(self, it):
        batches = []
        for b in it:
            batches.append(b)
            yield b
        self.kept = batches  # only a pass that ran to its end (a loop that stops early keeps nothing)


class Recipe:
    """One worker's training run: set up, resume, train, save (torchtune-style)."""

    def __init__(self, config: dict, run: int | None = None, checkpoint=None):
        """``run``: this run's index in a several-run job (None: the job's only run), which names its dataset
        shard (``train_{run}``) and tags its reports; ``checkpoint``: the Ray Train checkpoint to resume from."""
        import ray.train
        import ray.train.torch
        import torch

        self.run, self.checkpoint = run, checkpoint
        self.shard = "train" if run is None else f"train_{run}"

        self.task = resolve_task(config["task"])
        self.cfg = self.task.config_cls.model_validate(config["cfg"])
        self.hooks = list(config.get("hooks") or [])
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        # Ray's device for this worker (cuda:<its GPU> with use_gpu), or CPU, saying so, where Ray gave the
        # worker a GPU that torch cannot see (a simulated GPU node; the process group is gloo there too).
        self.device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")
        if self.device.type == "cpu":
            from cwpo_ray.runtime import warn_gpu_fallback

            warn_gpu_fallback()
            torch.set_num_threads(max(1, int(self.cfg.cpus_per_worker)))
        cfg = self.cfg
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        self.dtype = torch.bfloat16 if self.bf16 else torch.float32
        torch.manual_seed(cfg.seed)
        self.sched = schedule(cfg, config["rows"], self.world)
        self.log = worker_logger(self.task.name)
        self.state = {"micro_step": 0, "step": 0, "epoch": 0, "batch_in_epoch": 0, "resumed_from": -1}
        self.reference_seconds: float | None = None
        self.phases: dict[str, float] = {}  # wall seconds of each setup phase, train and save (rank 0 logs them)
        # no local shuffle and a shard small enough: passes after the first replay it from this worker's memory
        keep = not cfg.shuffle_buffer and 0 < self.sched["rows_per_worker"] <= cfg.cache_shard_rows
        self.passes = ShardPasses(self._read_shard, keep)

    # ---- setup -------------------------------------------------------------------------------------
    def setup_model(self) -> None:
        """The HF model (+ LoRA, gradient checkpointing), the trained module and any frozen module."""
        cfg, task = self.cfg, self.task
        self.tokenizer = task.load_tokenizer(cfg)
        self.hf_model = task.load_model(cfg, self.tokenizer, self.dtype)
        # built from the freshly loaded weights BEFORE deepspeed.initialize (ZeRO-3 partitions in place)
        self.frozen = task.frozen_model(cfg, self.hf_model, self.dtype)
        self.peft_model = None
        if cfg.lora is not None:
            from peft import LoraConfig, get_peft_model

            lc = cfg.lora
            self.peft_model = get_peft_model(self.hf_model, LoraConfig(
                r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=lc.target_modules,
                task_type=task.lora_task_type))
            self.hf_model = self.peft_model.get_base_model()  # the same modules, LoRA layers injected
        if cfg.gradient_checkpointing:
            self.hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.hf_model.config.use_cache = False
        self.hf_model.train()
        self.module = task.trained_module(cfg, self.hf_model)

    def setup_optimizer(self) -> None:
        """AdamW (no decay on biases / norms; bitsandbytes' paged variant on CUDA when configured) + the
        warm-up schedule, wrapped in a DeepSpeed engine."""
        import torch
        from transformers import get_scheduler

        from cwpo_ray.runtime import import_deepspeed

        deepspeed = import_deepspeed()

        cfg = self.cfg
        params = [p for p in self.module.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]  # e.g. LoRA: matrices only (DeepSpeed drops empty groups)
        if cfg.optimizer == "paged_adamw_32bit" and self.device.type == "cuda":
            import bitsandbytes as bnb

            optimizer = bnb.optim.PagedAdamW32bit(groups, lr=cfg.lr, betas=tuple(cfg.adam_betas))
        else:
            if cfg.optimizer == "paged_adamw_32bit":
                self.log.info("optimizer=paged_adamw_32bit pages optimizer state between GPU and host memory and "
                              "needs CUDA; on %s this run uses torch AdamW (same update rule, 32-bit state)", self.device)
            optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                          **({"fused": True} if self.device.type == "cuda" else {}))
        scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=self.sched["warmup_steps"],
                                  num_training_steps=max(self.sched["total_steps"], 1))
        self.engine, _, _, _ = deepspeed.initialize(model=self.module, optimizer=optimizer, lr_scheduler=scheduler,
                                                    config=deepspeed_config(cfg, self.bf16))
        if self.frozen is not None:
            if cfg.zero_stage == 3:  # sharded like the trained module, no optimizer
                self.frozen, *_ = deepspeed.initialize(model=self.frozen,
                                                       config=deepspeed_config(cfg, self.bf16, with_optimizer=False))
            else:
                self.frozen = self.frozen.to(device=self.device, dtype=self.dtype)
            self.frozen.eval()
        self.step_fn = self.task.step_fn(cfg, self.frozen)

    def resume(self) -> None:
        """Engine state and loop position from the latest Ray Train checkpoint, if any."""
        ckpt = self.checkpoint
        if ckpt is None:
            return
        with ckpt.as_directory() as d:
            if os.path.exists(os.path.join(d, FINAL_MARK)):
                raise RuntimeError(f"{d} is the final model of a finished run; nothing to resume (set resume=false)")
            self.engine.load_checkpoint(d, tag=CKPT_TAG)
            with open(os.path.join(d, STATE_FILE)) as f:
                self.state.update(json.load(f))
            self.state["resumed_from"] = self.state["step"]
        if self.rank == 0:
            self.log.info("resumed from step %d (micro-step %d)", self.state["step"], self.state["micro_step"])

    def setup_reference(self) -> None:
        """Tasks that ask for it (align, reference_mode=in_workers): reference log-probs of this worker's
        shard, one pass with the initial weights, before the optimizer exists (and before a resumed
        checkpoint's weights are loaded)."""
        if not getattr(self.task, "reference_in_workers", False):
            return
        t = time.time()
        n = self.task.reference_from_shard(self.cfg, self.module, self.tokenizer, self.shard_batches(), self.device, self.dtype)
        self.reference_seconds = round(time.time() - t, 1)
        if self.rank == 0:
            self.log.info("reference log-probs of %d pairs in %.1fs (this worker's shard)", n, self.reference_seconds)

    def _timed(self, phase: str, fn) -> None:
        t = time.time()
        fn()
        self.phases[phase] = round(time.time() - t, 2)

    def setup(self) -> "Recipe":
        self._timed("model", self.setup_model)
        self._timed("reference", self.setup_reference)
        self._timed("optimizer", self.setup_optimizer)
        self._timed("resume", self.resume)
        if self.rank == 0:
            s = self.sched
            self.log.info("%d rows/worker x %d workers, %d steps (%d warm-up), ZeRO-%d, %s on %s",
                          s["rows_per_worker"], self.world, s["total_steps"], s["warmup_steps"], self.cfg.zero_stage,
                          "bf16" if self.bf16 else "fp32", self.device)
        return self

    # ---- data ----------------------------------------------------------------------------------------
    def shard_batches(self, epoch: int | None = None):
        """One pass over this worker's shard: columnar numpy batches (shuffled per ``epoch`` when
        ``shuffle_buffer`` is set), from Ray Data or, after a first complete pass, from memory
        (``cache_shard_rows``; :class:`ShardPasses`)."""
        return self.passes(epoch)

    def _read_shard(self, epoch: int | None = None):
        """One pass over this worker's Ray Data shard."""
        import ray.train

        cfg = self.cfg
        shuffle = cfg.shuffle_buffer and epoch is not None
        return ray.train.get_dataset_shard(self.shard).iter_batches(
            batch_size=self.task.read_batch_size(cfg), batch_format="numpy",
            local_shuffle_buffer_size=cfg.shuffle_buffer if shuffle else None,
            local_shuffle_seed=cfg.seed + epoch if shuffle else None)

    def batches(self, epoch: int):
        """This worker's batches of one epoch, on the device (rows from its Ray Data shard)."""
        for batch in self.task.batches(self.cfg, self.tokenizer, self.shard_batches(epoch), epoch):
            yield {k: v.to(self.device) for k, v in batch.items()}

    # ---- checkpoints -----------------------------------------------------------------------------------
    def report(self, metrics: dict, with_ckpt: bool, final: bool = False) -> None:
        import ray.train

        if self.run is not None:
            metrics = {**metrics, "run": self.run}
        if not with_ckpt:
            ray.train.report(metrics)
            return
        cfg, rank = self.cfg, self.rank
        with tempfile.TemporaryDirectory(prefix=f"cwpo_{self.task.name}_ckpt_") as d:
            engine_state = not final or bool(cfg.checkpoint_every_steps)
            if final:  # the HF model at the top level (+ the DeepSpeed state under ds/ when checkpointing)
                self.save(d)
                if rank == 0:
                    with open(os.path.join(d, FINAL_MARK), "w") as f:
                        json.dump({"step": self.state["step"], "run": self.run}, f)
            if engine_state:
                self.engine.save_checkpoint(d, tag=CKPT_TAG)
                if rank == 0:
                    with open(os.path.join(d, STATE_FILE), "w") as f:
                        json.dump({**{k: self.state[k] for k in ("micro_step", "step", "epoch", "batch_in_epoch")}, "run": self.run}, f)
            has = engine_state or rank == 0
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d) if has else None)

    def save(self, out_dir: str) -> None:
        """The trained model as a plain HF folder (``save_pretrained`` + tokenizer) on rank 0: LoRA
        merged, ZeRO-3 shards consolidated (a collective: every rank takes part)."""
        if self.cfg.zero_stage == 3:
            sd = self.engine._zero3_consolidated_16bit_state_dict()
            if self.rank == 0:
                prefix = self.task.module_prefix
                sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
                self.hf_model.save_pretrained(out_dir, state_dict=sd)
        elif self.rank == 0:
            model = self.peft_model.merge_and_unload() if self.peft_model is not None else self.hf_model
            model.save_pretrained(out_dir)
        if self.rank == 0:
            self.tokenizer.save_pretrained(out_dir)

    # ---- the loop ------------------------------------------------------------------------------------
    def train(self) -> None:
        import torch
        import torch.distributed as dist

        cfg, task, engine, state, sched = self.cfg, self.task, self.engine, self.state, self.sched
        acc: dict = {}
        n_acc, t_last, items = 0, time.time(), 0
        engine.train()
        t_train = time.time()
        done = state["micro_step"] >= sched["total_micro"]
        while not done:
            skip, seen = state["batch_in_epoch"], 0  # on resume: batches already trained in this epoch
            for i, batch in enumerate(self.batches(state["epoch"])):
                seen += 1
                if i < skip:
                    continue
                loss, m = self.step_fn(engine, batch)
                engine.backward(loss)
                engine.step()
                state["micro_step"] += 1
                state["batch_in_epoch"] += 1
                items += task.batch_items(batch)
                for k, v in m.items():
                    acc[k] = acc.get(k, 0.0) + float(v)
                n_acc += 1
                if state["micro_step"] % cfg.grad_accum:
                    continue
                state["step"] += 1
                step = state["step"]
                last = state["micro_step"] >= sched["total_micro"]
                do_ckpt = bool(cfg.checkpoint_every_steps) and step % cfg.checkpoint_every_steps == 0 and not last
                if step % cfg.log_every_steps == 0 or do_ckpt or last:
                    keys = sorted(acc)
                    vec = torch.tensor([acc[k] / n_acc for k in keys] + [float(items)], dtype=torch.float64)
                    dist.all_reduce(vec)  # mean over workers (sum for the item count)
                    dt = time.time() - t_last
                    metrics = {k: float(vec[j]) / self.world for j, k in enumerate(keys)}
                    metrics.update(step=step, epoch=state["micro_step"] / sched["micro_per_epoch"],
                                   lr=float(engine.get_lr()[0]), throughput=float(vec[-1]) / max(dt, 1e-9),
                                   total_steps=sched["total_steps"], resumed_from=state["resumed_from"])
                    if self.rank == 0:
                        self.log.info("step %d/%d epoch %.2f %s lr %.2e %.1f %s/s", step, sched["total_steps"],
                                      metrics["epoch"], " ".join(f"{k} {metrics[k]:.4f}" for k in task.log_keys if k in metrics),
                                      metrics["lr"], metrics["throughput"], task.unit)
                    self.report(metrics, with_ckpt=do_ckpt)
                    acc, n_acc, t_last, items = {}, 0, time.time(), 0
                for hook in self.hooks:
                    hook(step=step, rank=self.rank, resumed=state["resumed_from"] >= 0)
                if last:
                    done = True
                    break
            if seen == 0:
                raise RuntimeError(f"[{task.name}] rank {self.rank}: the training data shard is empty")
            if not done:
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
        self.phases["train"] = round(time.time() - t_train, 2)
        extra = {"reference_seconds": self.reference_seconds} if self.reference_seconds is not None else {}
        extra.update({f"seconds_{k}": v for k, v in self.phases.items()})  # where the worker's time went
        extra["shard_reads"] = self.passes.reads  # passes through Ray Data (ShardPasses)
        t = time.time()
        self.report({"step": state["step"], "final": 1, "resumed_from": state["resumed_from"], **extra}, with_ckpt=True, final=True)
        self.phases["save"] = round(time.time() - t, 2)
        if self.rank == 0:
            self.log.info("seconds: %s", " ".join(f"{k} {v:.1f}" for k, v in self.phases.items()))


def _release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_finished(cfg: dict) -> bool:
    """Whether a run of a several-run job finished in this job: its ``metrics.jsonl`` (started afresh by the
    job) has the final row, written on the controller after the run's model was copied out."""
    from cwpo_ray import io

    path = io.join(cfg["output_dir"], "metrics.jsonl")
    if not io.exists(path):
        return False
    for line in io.read_text(path).splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a row being written
            continue
        if row.get("final") and "checkpoint" in row:
            return True
    return False


def checkpoint_run(checkpoint) -> int | None:
    """The run a mid-run checkpoint belongs to (None: no checkpoint, or a finished run's final one)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        if os.path.exists(os.path.join(d, FINAL_MARK)) or not os.path.exists(os.path.join(d, STATE_FILE)):
            return None
        with open(os.path.join(d, STATE_FILE)) as f:
            return json.load(f).get("run")


def train_loop_per_worker(config: dict) -> None:
    """The Ray Train worker function of every training stage (see the module docstring)."""
    import ray.train

    from cwpo_ray.runtime import import_deepspeed

    deepspeed = import_deepspeed()

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # don't JIT-build the shm comm op
    started = _PROCESS_START
    checkpoint = ray.train.get_checkpoint()
    if "runs" not in config:
        runs, first, ckpt = [(None, config)], 0, checkpoint
    else:  # after a restart: skip the finished runs (their models were copied out as they reported)
        first = 0
        while first < len(config["runs"]) and run_finished(config["runs"][first]["cfg"]):
            first += 1
        ckpt = checkpoint if checkpoint_run(checkpoint) == first else None  # a mid-run checkpoint of the next run
        runs = [(i, {**r, "hooks": config.get("hooks")}) for i, r in enumerate(config["runs"])][first:]
    for run, run_config in runs:
        t = time.time()
        recipe = Recipe(run_config, run=run, checkpoint=ckpt)
        # this worker's start (process, imports of torch, Ray Train, DeepSpeed; or the previous run's end) -> here
        recipe.phases["process"] = round(t - started, 2)
        recipe.phases["init"] = round(time.time() - t, 2)
        recipe.setup().train()
        del recipe  # its engine, models and optimizer state, before the next run builds its own
        _release_memory()
        ckpt, started = None, time.time()
