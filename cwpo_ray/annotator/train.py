"""`cwpo train-annotator`: Bradley–Terry training of the weak annotator on Ray Train.

Pure core (no Ray): :func:`read_pairs`, :func:`labeled_pairs`, :class:`BTBatcher`, :func:`bt_step`.
Ray wrapper: :func:`train_loop_per_worker` under a ``TorchTrainer`` (DDP via ``prepare_model``, or
DeepSpeed ZeRO when ``strategy=deepspeed``), one Ray Train checkpoint per epoch (``save_pretrained``
model + tokenizer, optimizer state), then a held-out evaluation in the driver.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cwpo_ray import io
from cwpo_ray.annotator.config import AnnotatorTrainConfig, local_abspath
from cwpo_ray.annotator.losses import bradley_terry_loss
from cwpo_ray.annotator.scoring import encode_texts, load_scorer_model, load_tokenizer, pad_batch
from cwpo_ray.config import ConfigError, require
from cwpo_ray.schema import PAIR_SCHEMA, validate_pair

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- pure core
def read_pairs(path: str) -> pa.Table:
    """All rows of a parquet file or folder (``*.parquet``) in PAIR_SCHEMA order."""
    fs, p = io.resolve(path)
    info = fs.get_file_info(p)
    if info.type.name == "NotFound":
        raise ConfigError(f"config error: data: {path!r} does not exist")
    table = pq.read_table(p, filesystem=fs) if info.type.name == "File" else pq.ParquetDataset(p, filesystem=fs).read()
    return table.select(PAIR_SCHEMA.names)


def labeled_pairs(table: pa.Table) -> tuple[dict[str, list[str]], Counter]:
    """(prompt, chosen, rejected) of the human-labeled rows, and a Counter of quarantine reasons for
    rows that cannot be trained on (never dropped silently: the counts go to the summary)."""
    out = {"pair_id": [], "prompt": [], "chosen": [], "rejected": []}
    bad: Counter = Counter()
    for r in table.to_pylist():
        reason = validate_pair(r["prompt"], r["response_a"], r["response_b"], r["human_label"])
        if reason is None and r["human_label"] is None:
            reason = "no_human_label"
        if reason:
            bad[reason] += 1
            continue
        a_wins = r["human_label"] == "a"
        out["pair_id"].append(r["pair_id"])
        out["prompt"].append(r["prompt"])
        out["chosen"].append(r["response_a"] if a_wins else r["response_b"])
        out["rejected"].append(r["response_b"] if a_wins else r["response_a"])
    return out, bad


class BTBatcher:
    """Pre-tokenized pairs -> right-padded [2B, L] batches: rows [0, B) chosen, [B, 2B) rejected."""

    def __init__(self, tokenizer, pairs: dict[str, list[str]], max_tokens: int, pad_id: int):
        self.chosen, t1 = encode_texts(tokenizer, pairs["prompt"], pairs["chosen"], max_tokens)
        self.rejected, t2 = encode_texts(tokenizer, pairs["prompt"], pairs["rejected"], max_tokens)
        self.truncated = t1 + t2
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.chosen)

    def batch(self, idx):
        ids = [self.chosen[i] for i in idx] + [self.rejected[i] for i in idx]
        input_ids, attention_mask, _ = pad_batch(ids, self.pad_id)
        return input_ids, attention_mask


def bt_step(model, input_ids, attention_mask):
    """One forward: (loss, accuracy, mean margin) of a [2B, L] chosen/rejected batch.

    The HF forward (not the inner base model) is called so DDP / DeepSpeed wrappers see it.
    """
    scores = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
    s_c, s_r = scores.chunk(2)
    loss = bradley_terry_loss(s_c, s_r)
    return loss, (s_c > s_r).float().mean(), (s_c - s_r).mean()


def epoch_shard(n: int, seed: int, epoch: int, rank: int, world: int, batch_size: int) -> list[np.ndarray]:
    """This rank's per-step index batches for an epoch: a seeded permutation, equal step counts on all
    ranks (the last partial global batch is dropped so every rank steps together)."""
    per_rank = max(1, batch_size // world)
    perm = np.random.default_rng(seed + epoch).permutation(n)
    steps = n // (per_rank * world)
    if steps == 0:
        raise ValueError(f"{n} training pairs are fewer than one global batch ({per_rank * world})")
    mine = perm[: steps * per_rank * world].reshape(steps, world, per_rank)[:, rank]
    return list(mine)


def _unwrap(model):
    m = getattr(model, "module", model)  # DDP / DeepSpeed engine
    return m


def save_model(model, tokenizer, out_dir: str, lora: bool = False, state_dict=None) -> None:
    """``save_pretrained`` model + tokenizer (LoRA merged), loadable by AutoModelForSequenceClassification."""
    m = _unwrap(model)
    if lora:
        m = m.merge_and_unload() if state_dict is None else m
    m.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


# ------------------------------------------------------------------------------------- Ray Train loop
def train_loop_per_worker(c: dict) -> None:
    """Runs on every Ray Train worker. ``c`` = AnnotatorTrainConfig.model_dump() + resolved paths."""
    import copy

    import ray.train
    import torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(c["seed"])
    if c["use_gpu"]:
        import ray.train.torch

        device = ray.train.torch.get_device()
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, int(c["cpus_per_worker"])))

    tok = load_tokenizer(c["model"], c["trust_remote_code"])
    model = load_scorer_model(c["model"], tok, dtype=torch.float32, device="cpu", trust_remote_code=c["trust_remote_code"])
    start_epoch = 0
    ckpt = ray.train.get_checkpoint()
    opt_state = None
    if ckpt:  # resume after a failure: weights (+ optimizer for DDP) of the last finished epoch
        with ckpt.as_directory() as d:
            meta = json.loads(open(os.path.join(d, "meta.json")).read())
            start_epoch = meta["epoch"] + 1
            model = load_scorer_model(os.path.join(d, "model"), tok, dtype=torch.float32, device="cpu")
            if os.path.exists(os.path.join(d, f"optimizer-rank{rank}.pt")):
                opt_state = torch.load(os.path.join(d, f"optimizer-rank{rank}.pt"), map_location="cpu")
        if rank == 0:
            print(f"[train-annotator] resuming at epoch {start_epoch + 1}", flush=True)
    model.train()
    if c["lora"] and not ckpt:
        from peft import LoraConfig, TaskType, get_peft_model

        lc = c["lora"]
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=lc["r"], lora_alpha=lc["alpha"],
                                                 lora_dropout=lc["dropout"], target_modules=lc["target_modules"]))

    table = read_pairs(c["train_path"])
    pairs, _ = labeled_pairs(table)
    if c["max_train_pairs"]:
        pairs = {k: v[: c["max_train_pairs"]] for k, v in pairs.items()}
    batcher = BTBatcher(tok, pairs, c["max_tokens"], model.config.pad_token_id)
    steps_per_epoch = len(epoch_shard(len(batcher), c["seed"], 0, rank, world, c["batch_size"]))
    total_steps = steps_per_epoch * c["epochs"]
    warmup = int(c["warmup_ratio"] * total_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=c["lr"], weight_decay=c["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    use_bf16 = c["bf16"] and device.type == "cuda"
    deepspeed_engine = None

    if c["strategy"] == "deepspeed":
        import deepspeed

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # no 33 s JIT build (see NOTES)
        ds_cfg = {
            "train_micro_batch_size_per_gpu": max(1, c["batch_size"] // world),
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": c["zero_stage"]},
            "bf16": {"enabled": use_bf16},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
        }
        if c["max_grad_norm"]:
            ds_cfg["gradient_clipping"] = c["max_grad_norm"]
        model.to(device)
        deepspeed_engine, optimizer, _, sched = deepspeed.initialize(model=model, optimizer=optimizer,
                                                                     lr_scheduler=sched, config=ds_cfg)
        model = deepspeed_engine
    else:
        import ray.train.torch

        model = ray.train.torch.prepare_model(model) if (world > 1 or device.type == "cuda") else model.to(device)
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)
            for _ in range(start_epoch * steps_per_epoch):
                sched.step()

    if rank == 0:
        print(f"[train-annotator] {len(batcher)} pairs, {world} worker(s), {steps_per_epoch} steps/epoch × "
              f"{c['epochs']} epochs, strategy={c['strategy']}, device={device}", flush=True)
    t_start = time.time()
    for epoch in range(start_epoch, c["epochs"]):
        t0 = time.time()
        sums = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0}
        steps = epoch_shard(len(batcher), c["seed"], epoch, rank, world, c["batch_size"])
        for step, idx in enumerate(steps):
            input_ids, attention_mask = batcher.batch(idx)
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16 and deepspeed_engine is None):
                loss, acc, margin = bt_step(model, input_ids, attention_mask)
            if deepspeed_engine is not None:
                deepspeed_engine.backward(loss)
                deepspeed_engine.step()
            else:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if c["max_grad_norm"]:
                    torch.nn.utils.clip_grad_norm_(params, c["max_grad_norm"])
                optimizer.step()
                sched.step()
            for k, v in (("loss", loss), ("accuracy", acc), ("margin", margin)):
                sums[k] += float(v.detach())
            if rank == 0 and ((step + 1) % c["log_every"] == 0 or step + 1 == len(steps)):
                done = epoch * len(steps) + step + 1
                print(f"[train-annotator] epoch {epoch + 1}/{c['epochs']} step {step + 1}/{len(steps)} "
                      f"loss {sums['loss'] / (step + 1):.4f} acc {sums['accuracy'] / (step + 1):.3f} "
                      f"({100 * done / total_steps:.0f}%, {time.time() - t_start:.0f}s)", flush=True)
        metrics = {k: v / len(steps) for k, v in sums.items()}
        metrics.update(epoch=epoch + 1, epoch_seconds=time.time() - t0,
                       pairs_per_s=len(steps) * max(1, c["batch_size"] // world) * world / (time.time() - t0))
        # Checkpoint: rank 0 writes the HF model (+ tokenizer); each rank its optimizer state (DDP).
        with tempfile.TemporaryDirectory() as d:
            state_dict = None
            if deepspeed_engine is not None and c["zero_stage"] == 3:
                state_dict = deepspeed_engine._zero3_consolidated_16bit_state_dict()  # collective: all ranks
            if rank == 0:
                m = _unwrap(model)
                if c["lora"]:
                    m = copy.deepcopy(m).merge_and_unload()
                save_model(m, tok, os.path.join(d, "model"), lora=False, state_dict=state_dict)
                with open(os.path.join(d, "meta.json"), "w") as f:
                    json.dump({"epoch": epoch, **metrics}, f)
            if deepspeed_engine is None and not c["lora"]:
                torch.save(optimizer.state_dict(), os.path.join(d, f"optimizer-rank{rank}.pt"))
            has_files = bool(os.listdir(d))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d) if has_files else None)


# ---------------------------------------------------------------------------------------- the stage
def _split_dir(cfg: AnnotatorTrainConfig, split: str) -> str:
    return io.join(cfg.data_dir, split)


def evaluate_annotator(model_dir: str, test_path: str, out_dir: str, max_tokens: int = 512,
                       max_batch_tokens: int = 16384, n_bins: int = 10, trust_remote_code: bool = False) -> dict:
    """Held-out evaluation (pure core + files): accuracy, ECE, top-N% curve, reliability plot PNG."""
    from cwpo_ray.annotator.metrics import evaluate_pairs, reliability_plot, top_confident_plot
    from cwpo_ray.annotator.scoring import HFScorer

    table = read_pairs(test_path)
    rows = [r for r in table.to_pylist() if r["human_label"] in ("a", "b")
            and validate_pair(r["prompt"], r["response_a"], r["response_b"], r["human_label"]) is None]
    scorer = HFScorer(model_dir, max_tokens=max_tokens, max_batch_tokens=max_batch_tokens, trust_remote_code=trust_remote_code)
    prompts = [r["prompt"] for r in rows]
    s_a, _ = scorer.score_texts(prompts, [r["response_a"] for r in rows])
    s_b, _ = scorer.score_texts(prompts, [r["response_b"] for r in rows])
    y_a = np.array([r["human_label"] == "a" for r in rows], dtype=np.int64)
    ev = evaluate_pairs(s_a, s_b, y_a, n_bins)
    ev["unlabeled_skipped"] = table.num_rows - len(rows)
    io.makedirs(out_dir)
    ev["reliability_png"] = reliability_plot(ev["reliability"], os.path.join(out_dir, "reliability.png"))
    ev["top_confident_png"] = top_confident_plot(ev["top_confident_accuracy"], os.path.join(out_dir, "top_confident.png"))
    return ev


def run_train_annotator(cfg: AnnotatorTrainConfig) -> dict:
    """Train on ``{data_dir}/labeled``, save ``{output_dir}/model``, evaluate on ``{data_dir}/test``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from cwpo_ray.runtime import init_ray

    require(cfg, "model", "data_dir", "output_dir")
    if "://" in cfg.output_dir:
        raise ConfigError("config error: output_dir: train-annotator writes a local/shared folder (got a URI)")
    cfg = cfg.model_copy(update={"model": local_abspath(cfg.model, must_exist=True), "data_dir": local_abspath(cfg.data_dir)})
    out = os.path.abspath(cfg.output_dir)
    os.makedirs(out, exist_ok=True)
    train_path = _split_dir(cfg, "labeled")
    table = read_pairs(train_path)
    pairs, bad = labeled_pairs(table)
    n_train = min(len(pairs["prompt"]), cfg.max_train_pairs or 10**18)
    if n_train < cfg.batch_size:
        raise ConfigError(f"config error: batch_size: {cfg.batch_size} > the {n_train} usable labeled pairs in {train_path}")

    init_ray(cfg.ray)
    t0 = time.time()
    loop_cfg = cfg.model_dump(mode="json") | {"train_path": train_path}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_cfg,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}),
        run_config=RunConfig(name="annotator", storage_path=os.path.join(out, "ray_train"),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=cfg.max_failures)),
    )
    result = trainer.fit()
    train_seconds = time.time() - t0
    if result.checkpoint is None:
        raise RuntimeError("train-annotator: Ray Train finished without a checkpoint")
    model_dir = os.path.join(out, "model")
    with result.checkpoint.as_directory() as d:
        if os.path.exists(model_dir):
            shutil.rmtree(model_dir)
        shutil.copytree(os.path.join(d, "model"), model_dir)
    metrics = dict(result.metrics or {})

    t1 = time.time()
    test = evaluate_annotator(model_dir, _split_dir(cfg, "test"), out, cfg.max_tokens, cfg.eval_max_batch_tokens,
                              cfg.calibration_bins, cfg.trust_remote_code)
    summary = {
        "model_dir": model_dir,
        "base_model": cfg.model,
        "train_pairs": n_train,
        "quarantined": sum(bad.values()),
        "quarantine_reasons": dict(bad),
        "epochs": cfg.epochs,
        "workers": cfg.num_workers,
        "strategy": cfg.strategy if cfg.strategy == "ddp" else f"deepspeed-zero{cfg.zero_stage}",
        "lora": cfg.lora is not None,
        "train_loss": metrics.get("loss"),
        "train_accuracy": metrics.get("accuracy"),
        "train_pairs_per_s": metrics.get("pairs_per_s"),
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(time.time() - t1, 2),
        "checkpoint": result.checkpoint.path,
        "test": test,
        "output_dir": out,
    }
    io.write_text(os.path.join(out, "summary.json"), json.dumps(summary, indent=2))
    return summary


def format_train_annotator(s: dict) -> str:
    t = s["test"]
    curve = t["top_confident_accuracy"]
    lines = [
        f"train-annotator: {s['train_pairs']} labeled pairs ({s['quarantined']} quarantined), {s['epochs']} epochs on "
        f"{s['workers']} worker(s) [{s['strategy']}{', LoRA' if s['lora'] else ''}] in {s['train_seconds']:.1f}s; "
        f"final epoch loss {s['train_loss']:.4f}, train acc {s['train_accuracy']:.3f}",
        f"  held-out ({t['pairs']} human-labeled pairs): accuracy {t['accuracy']:.3f}, ECE {t['ece']:.3f}, "
        f"top-10% {curve['top10']:.3f}, top-30% {curve['top30']:.3f}, top-50% {curve['top50']:.3f}",
        f"  model: {s['model_dir']}  plots: {t['reliability_png']}, {t['top_confident_png']}",
    ]
    return "\n".join(lines)


__all__ = ["run_train_annotator", "format_train_annotator", "train_loop_per_worker", "evaluate_annotator",
           "BTBatcher", "bt_step", "labeled_pairs", "read_pairs", "epoch_shard"]
