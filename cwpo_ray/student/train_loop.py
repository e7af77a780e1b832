"""The Ray Train worker loop shared by `sft` and `align`: DeepSpeed engine, streamed batches,
metrics, Ray Train checkpoints and resume. The math is in :mod:`cwpo_ray.student.steps`.

Everything runs inside ``TorchTrainer`` workers: Ray Train sets up the process group (gloo on CPU,
NCCL on GPU) and ``deepspeed.initialize`` reuses it, so the same code runs on 2 CPU workers and on
N GPUs over several nodes. ZeRO stage, precision and accumulation come from the config.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time

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


def _load_lm(name: str, cfg, dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(name, dtype=dtype, trust_remote_code=cfg.trust_remote_code)


def train_loop_per_worker(config: dict) -> None:
    """``config = {"mode": "sft"|"align", "cfg": <config dict>, "rows": int, "has_ref_columns": bool}``."""
    import copy

    import deepspeed
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from transformers import AutoTokenizer, get_scheduler

    from cwpo_ray.student.config import AlignConfig, SFTConfig
    from cwpo_ray.student.data import PairEncoder, collate_pairs, collate_sft, encode_rows, length_buckets
    from cwpo_ray.student.logprobs import SequenceLogprobs
    from cwpo_ray.student.steps import align_loss, sft_loss

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # don't JIT-build the shm comm op
    mode = config["mode"]
    cfg = (AlignConfig if mode == "align" else SFTConfig).model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    dtype = torch.bfloat16 if bf16 else torch.float32
    torch.manual_seed(cfg.seed)
    sched = schedule(cfg, config["rows"], world)

    tok = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.model, trust_remote_code=cfg.trust_remote_code)
    enc = PairEncoder(tok, cfg.max_length, cfg.max_prompt_length)
    lm = _load_lm(cfg.model, cfg, dtype)
    reference_lm = None
    if mode == "align" and not config["has_ref_columns"]:
        # deep-copied BEFORE deepspeed.initialize (ZeRO-3 partitions the policy in place)
        reference_lm = copy.deepcopy(lm) if not cfg.reference or cfg.reference == cfg.model else _load_lm(cfg.reference, cfg, dtype)
        reference_lm.requires_grad_(False).eval()
    peft_model = None
    if cfg.lora is not None:
        from peft import LoraConfig, get_peft_model

        peft_model = get_peft_model(lm, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                                   target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM"))
        lm = peft_model.get_base_model()  # the same modules, LoRA layers injected
    if cfg.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm.config.use_cache = False
    policy = SequenceLogprobs(lm, cfg.logprob_chunk_size)

    params = [p for p in policy.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                  **({"fused": True} if device.type == "cuda" else {}))
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=sched["warmup_steps"],
                              num_training_steps=max(sched["total_steps"], 1))
    engine, _, _, _ = deepspeed.initialize(model=policy, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(cfg, bf16))
    reference = None
    if reference_lm is not None:
        ref_policy = SequenceLogprobs(reference_lm, cfg.logprob_chunk_size)
        if cfg.zero_stage == 3:  # sharded like the policy, no optimizer
            reference, *_ = deepspeed.initialize(model=ref_policy, config=deepspeed_config(cfg, bf16, with_optimizer=False))
        else:
            reference = ref_policy.to(device=device, dtype=dtype)
        reference.eval()

    # ---- resume from the latest Ray Train checkpoint --------------------------------------------
    state = {"micro_step": 0, "step": 0, "epoch": 0, "batch_in_epoch": 0, "resumed_from": -1}
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            if os.path.exists(os.path.join(d, FINAL_MARK)):
                raise RuntimeError(f"{d} is the final model of a finished run; nothing to resume (set resume=false)")
            engine.load_checkpoint(d, tag=CKPT_TAG)
            with open(os.path.join(d, STATE_FILE)) as f:
                state.update(json.load(f))
            state["resumed_from"] = state["step"]
        if rank == 0:
            print(f"[{mode}] resumed from step {state['step']} (micro-step {state['micro_step']})", flush=True)

    def batches(epoch: int):
        shard = ray.train.get_dataset_shard("train")
        it = shard.iter_batches(batch_size=cfg.batch_size * cfg.bucket_window, batch_format="numpy",
                                local_shuffle_buffer_size=cfg.shuffle_buffer or None,
                                local_shuffle_seed=cfg.seed + epoch if cfg.shuffle_buffer else None)
        rows = (r for b in it for r in encode_rows(b, enc, with_rejected=(mode == "align")))
        collate = collate_pairs if mode == "align" else collate_sft
        for group in length_buckets(rows, cfg.batch_size, cfg.bucket_window, seed=cfg.seed + epoch):
            yield {k: v.to(device) for k, v in collate(group, enc.pad, cfg.pad_to_multiple_of).items()}

    def step_fn(batch):
        if mode == "sft":
            return sft_loss(engine, batch)
        return align_loss(engine, batch, loss_type=cfg.loss, beta=cfg.beta, reduction=cfg.reduction,
                          rdpo_eps=cfg.rdpo_eps, normalize_weights=cfg.normalize_weights, reference=reference)

    def report(metrics: dict, with_ckpt: bool, final: bool = False):
        if not with_ckpt:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix=f"cwpo_{mode}_ckpt_") as d:
            engine_state = not final or bool(cfg.checkpoint_every_steps)
            if final:  # the HF model at the top level (+ the DeepSpeed state under ds/ when checkpointing)
                _save_final(engine, lm, peft_model, tok, d, rank, cfg)
                if rank == 0:
                    with open(os.path.join(d, FINAL_MARK), "w") as f:
                        json.dump({"step": state["step"]}, f)
            if engine_state:
                engine.save_checkpoint(d, tag=CKPT_TAG)
                if rank == 0:
                    with open(os.path.join(d, STATE_FILE), "w") as f:
                        json.dump({k: state[k] for k in ("micro_step", "step", "epoch", "batch_in_epoch")}, f)
            has = engine_state or rank == 0
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d) if has else None)

    unit = "pairs" if mode == "align" else "seqs"
    acc: dict = {}
    n_acc, t_last, items = 0, time.time(), 0
    engine.train()
    done = state["micro_step"] >= sched["total_micro"]
    while not done:
        skip, seen = state["batch_in_epoch"], 0  # on resume: batches already trained in this epoch
        for i, batch in enumerate(batches(state["epoch"])):
            seen += 1
            if i < skip:
                continue
            loss, m = step_fn(batch)
            engine.backward(loss)
            engine.step()
            state["micro_step"] += 1
            state["batch_in_epoch"] += 1
            items += batch["input_ids"].shape[0] // (2 if mode == "align" else 1)
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
                vec = torch.tensor([acc[k] / n_acc for k in sorted(acc)] + [float(items)], dtype=torch.float64)
                dist.all_reduce(vec)  # mean over workers (sum for the item count)
                dt = time.time() - t_last
                metrics = {k: float(vec[j]) / world for j, k in enumerate(sorted(acc))}
                metrics.update(step=step, epoch=state["micro_step"] / sched["micro_per_epoch"],
                               lr=float(engine.get_lr()[0]), throughput=float(vec[-1]) / max(dt, 1e-9),
                               total_steps=sched["total_steps"], resumed_from=state["resumed_from"])
                if rank == 0:
                    print(f"[{mode}] step {step}/{sched['total_steps']} epoch {metrics['epoch']:.2f} "
                          f"loss {metrics['loss']:.4f}"
                          + (f" margin {metrics['reward_margin']:.3f} acc {metrics['pref_acc']:.3f}" if mode == "align" else "")
                          + f" lr {metrics['lr']:.2e} {metrics['throughput']:.1f} {unit}/s", flush=True)
                report(metrics, with_ckpt=do_ckpt)
                acc, n_acc, t_last, items = {}, 0, time.time(), 0
            fi = cfg.fault_injection
            if fi and state["resumed_from"] < 0 and step == fi.step and rank == fi.rank:
                print(f"[{mode}] fault injection: rank {rank} exits at step {step} in {fi.delay_s}s", flush=True)
                time.sleep(fi.delay_s)
                os._exit(1)
            if last:
                done = True
                break
        if seen == 0:
            raise RuntimeError(f"[{mode}] rank {rank}: the training data shard is empty")
        if not done:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    report({"step": state["step"], "final": 1, "resumed_from": state["resumed_from"]}, with_ckpt=True, final=True)


def _save_final(engine, lm, peft_model, tok, out_dir: str, rank: int, cfg) -> None:
    """The trained student as a plain HF folder (``save_pretrained`` + tokenizer) on rank 0."""
    if cfg.zero_stage == 3:
        sd = engine._zero3_consolidated_16bit_state_dict()  # collective: every rank calls it
        if rank == 0:
            sd = {k[len("lm."):]: v for k, v in sd.items() if k.startswith("lm.")}
            lm.save_pretrained(out_dir, state_dict=sd)
    elif rank == 0:
        model = peft_model.merge_and_unload() if peft_model is not None else lm
        model.save_pretrained(out_dir)
    if rank == 0:
        tok.save_pretrained(out_dir)
