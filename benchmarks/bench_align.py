"""Align-step throughput and peak memory: cwpo's step vs a naive full-logits step vs TRL's DPOTrainer.

Same model shape (random weights, built from config: nothing is downloaded), same tokens, same batch,
same optimizer (torch AdamW) and dtype. Each variant runs in its own subprocess so its peak memory is
its own; the parent prints pairs/s, peak memory, an MFU estimate and ratios against the baselines.

    python benchmarks/bench_align.py --device cuda --shape qwen2.5-1.5b          # the GPU target (H100)
    python benchmarks/bench_align.py --device cpu --shape tiny --steps 4          # CPU smoke run
    python benchmarks/bench_align.py --device cpu --shape small --mix hh --seq-len 512 --batch 8 --steps 20 --warmup 2
                                                                                 # CPU: ~13M params, HH-like lengths

Measured on the 2-core CPU dev machine (2026-11-24, the `small` + `--mix hh` command above, fp32, 176 pairs, 160
timed): TRL 0.37 pairs/s; naive 1.62; cwpo 3.43 (9.3x TRL); cwpo-precomp 4.78 (13.0x TRL); peak RSS 6.4 GB (TRL)
vs 2.5 GB (cwpo). The cwpo and naive variants take the package's length-bucketed batches, TRL its own
shuffled batches padded to their longest pair, so "vs trl" combines length bucketing, chunked
response-only log-probs and TRL's per-step overheads; TRL's CPU step was not profiled. Without length
variation (`--mix fixed --seq-len 256 --prompt-len 128`, 80 timed pairs): TRL 0.64 pairs/s, naive 1.33
(2.09x), cwpo 1.95 (3.06x), cwpo-precomp 2.19 (3.43x).

Recorded H100 anchors for TRL's DPOTrainer (bf16, 2 × 512 tokens per pair): 56.3 pairs/s on the
Qwen2.5-0.5B shape, 22.7 pairs/s on the 1.5B shape. The GPU path here is bf16, SDPA attention (flash
kernels where PyTorch picks them) and fused AdamW; it has not been run on a GPU by this project yet.

Variants:
  naive          HF forward with full [2B, T, V] logits → log_softmax → gather; reference forward each step
  cwpo           cwpo_ray.student: chunked log-probs of response tokens only; reference forward each step
  cwpo-precomp   as cwpo, reference log-probs precomputed once (`reference_mode: precomputed`)
  trl            trl.DPOTrainer (TRL is a benchmark-only extra: pip install trl)

MFU counts model FLOPs 6·N·T for the policy (+2·N·T for an on-the-fly reference forward) plus
attention, with N the matmul parameters (incl. lm_head) and T all tokens, whether or not a variant
skips work; precomputed-reference variants are credited only the policy FLOPs.
Needs torch + transformers (+ trl for the TRL variant); cwpo_ray is imported from this checkout.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SHAPES = {
    # Qwen2.5 shapes (config.json of the hub models); tiny = the synthetic student's shape with a bigger vocab
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    # ~13M parameters (8.2M of them the tied embedding): the CPU comparison issue 13 asks for (>= 10M)
    "small": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=32000, tie_word_embeddings=True),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=True),
}
VARIANTS = ("naive", "cwpo", "cwpo-precomp", "trl")


def build_model(shape: str, dtype, device):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(**SHAPES[shape], max_position_embeddings=4096, rope_theta=1e6, rms_norm_eps=1e-6,
                      attn_implementation="sdpa", use_cache=False)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype).to(device)


def matmul_params(model) -> int:
    cfg = model.config
    emb = cfg.vocab_size * cfg.hidden_size
    total = sum(p.numel() for p in model.parameters())
    # the input embedding is a lookup (no FLOPs); lm_head (V×H) is a matmul whether tied or not
    return total if cfg.tie_word_embeddings else total - emb


def model_flops_per_pair(model, seq_len: int, with_ref: bool) -> float:
    cfg = model.config
    n = matmul_params(model)
    attn = 4 * cfg.num_hidden_layers * cfg.hidden_size * seq_len * seq_len  # QK^T + AV forward, per sequence (causal ≈ half, counted full as in PaLM)
    per_seq_fwd = 2 * n * seq_len + attn
    return 2 * (3 * per_seq_fwd + (per_seq_fwd if with_ref else 0))


def make_batch(args, vocab: int, device):
    import torch

    g = torch.Generator().manual_seed(1)
    B, T, P = args.batch, args.seq_len, args.prompt_len
    prompt = torch.randint(10, vocab, (B, P), generator=g)
    ch = torch.randint(10, vocab, (B, T - P), generator=g)
    rj = torch.randint(10, vocab, (B, T - P), generator=g)
    ids = torch.cat([torch.cat([prompt, ch], 1), torch.cat([prompt, rj], 1)])
    resp = torch.zeros_like(ids)
    resp[:, P:] = 1
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "response_mask": resp.to(device), "weight": torch.rand(B, generator=g).to(device)}


def make_pool(args, vocab: int) -> list[tuple[list[int], list[int], list[int]]]:
    """``--mix hh``: batch × (warmup + steps) pairs (prompt, chosen, rejected token ids) with HH-RLHF-like
    lengths: log-normal prompt and response lengths (medians 60 and 40 tokens, long tails), each
    sequence clipped to ``seq_len`` — many short pairs, a few long ones."""
    import numpy as np

    rng = np.random.default_rng(1)
    n = args.batch * (args.warmup + args.steps)
    out = []
    for _ in range(n):
        p = int(np.clip(rng.lognormal(np.log(60), 0.9), 4, args.seq_len // 2))
        c, r = (int(np.clip(rng.lognormal(np.log(40), 0.9), 2, args.seq_len - p)) for _ in range(2))
        out.append(tuple(rng.integers(10, vocab, size=k).tolist() for k in (p, c, r)))
    return out


def pool_batches(args, pool, device) -> list[dict]:
    """The pool as cwpo's align step sees it: rows length-bucketed (student.data.length_buckets, the
    default window of 16 batches) and collated (collate_pairs: right-padded to a multiple of 8)."""
    import torch

    from cwpo_ray.student.data import collate_pairs, length_buckets

    g = torch.Generator().manual_seed(2)
    rows = [{"chosen_enc": (p + c, len(p)), "rejected_enc": (p + r, len(p))} for p, c, r in pool]
    batches = []
    for chunk in length_buckets(rows, args.batch, window=16, seed=0):
        b = collate_pairs(chunk, pad_id=1)
        b["weight"] = torch.rand(len(chunk), generator=g)
        batches.append({k: v.to(device) for k, v in b.items()})
    return batches


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run_torch_variant(args, variant: str) -> dict:
    import copy

    import torch

    from cwpo_ray.student.logprobs import SequenceLogprobs, full_logits_logprobs
    from cwpo_ray.student.steps import align_loss

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    lm = build_model(args.shape, dtype, device)
    if args.grad_ckpt:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ref_lm = copy.deepcopy(lm).eval().requires_grad_(False)
    if args.mix == "hh":
        batches = pool_batches(args, make_pool(args, lm.config.vocab_size), device)
    else:
        batches = [make_batch(args, lm.config.vocab_size, device)] * (args.warmup + args.steps)

    class Naive(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, attn, resp):
            return full_logits_logprobs(self.m, ids, attn, resp)

    wrap = Naive if variant == "naive" else (lambda m: SequenceLogprobs(m, args.chunk_size))
    policy, reference = wrap(lm), wrap(ref_lm)
    if variant == "cwpo-precomp":
        with torch.no_grad():
            for i, batch in enumerate(batches):
                r, _ = reference(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
                n = len(batch["weight"])
                batches[i] = dict(batch, ref_chosen_logp=r[:n], ref_rejected_logp=r[n:])
        del reference, ref_lm
        reference = None
    opt = torch.optim.AdamW(lm.parameters(), lr=5e-6, weight_decay=0.05, **({"fused": True} if device.type == "cuda" else {}))
    if args.compile:
        policy = torch.compile(policy)

    def step(batch):
        loss, _ = align_loss(policy, batch, loss_type="dpo", beta=0.5, reduction="sum", reference=reference)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for batch in batches[: args.warmup]:
        step(batch)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    timed = batches[args.warmup:]
    for batch in timed:
        loss = step(batch)
    sync(device)
    dt = time.perf_counter() - t0
    return {"pairs_per_s": sum(len(b["weight"]) for b in timed) / dt, "step_s": dt / args.steps, "loss": float(loss),
            **peak_memory(device), "flops_per_pair": model_flops_per_pair(lm, args.seq_len, variant != "cwpo-precomp"),
            "params": sum(p.numel() for p in lm.parameters())}


def peak_memory(device) -> dict:
    import resource

    import torch

    if device.type == "cuda":
        return {"peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9, "peak_reserved_gb": torch.cuda.max_memory_reserved() / 1e9}
    return {"peak_mem_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "peak_reserved_gb": None}  # RSS


def word_tokenizer(vocab: int):
    """A WordLevel tokenizer 'w0'..'wN': one word = one token, so token counts are exact."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_map = {f"w{i}": i for i in range(vocab)}
    tok = Tokenizer(models.WordLevel(vocab_map, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", pad_token="w1", eos_token="w2", bos_token=None)


def run_trl(args) -> dict:
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    lm = build_model(args.shape, dtype, device)
    tok = word_tokenizer(lm.config.vocab_size)
    n = args.batch * (args.steps + args.warmup)
    words = lambda ids: " ".join(f"w{t}" for t in ids)  # noqa: E731
    rows = []
    if args.mix == "hh":  # the same pool as the torch variants; TRL batches it its own way (shuffled, padded per batch)
        for p, c, r in make_pool(args, lm.config.vocab_size):
            rows.append({"prompt": words(p), "chosen": " " + words(c[:-1] or c), "rejected": " " + words(r[:-1] or r)})
    else:
        b = make_batch(args, lm.config.vocab_size, "cpu")
        P = args.prompt_len
        # The same token ids as the torch variants (responses carry EOS via TRL, so one token shorter).
        for i in range(n):
            j = i % args.batch
            ids_c, ids_r = b["input_ids"][j].tolist(), b["input_ids"][args.batch + j].tolist()
            rows.append({"prompt": words(ids_c[:P]), "chosen": " " + words(ids_c[P:-1]), "rejected": " " + words(ids_r[P:-1])})
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            sync(device)
            times.append(time.perf_counter())
            if len(times) == args.warmup and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()

    with tempfile.TemporaryDirectory() as out:
        cfg = DPOConfig(output_dir=out, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                        learning_rate=5e-6, weight_decay=0.05, beta=0.5, max_length=args.seq_len, max_steps=args.steps + args.warmup,
                        logging_steps=10**6, save_strategy="no", report_to="none", bf16=args.dtype == "bf16",
                        use_cpu=device.type == "cpu", gradient_checkpointing=args.grad_ckpt, dataloader_num_workers=0,
                        max_grad_norm=1.0, lr_scheduler_type="constant", seed=0, disable_tqdm=True)
        import copy

        ref = copy.deepcopy(lm).eval().requires_grad_(False)  # random weights: no hub id to reload it from
        trainer = DPOTrainer(model=lm, ref_model=ref, args=cfg, train_dataset=Dataset.from_list(rows),
                             processing_class=tok, callbacks=[Timer()])
        trainer.train()
    dt = times[-1] - times[args.warmup - 1] if args.warmup else times[-1] - times[0]
    steps = args.steps if args.warmup else args.steps - 1
    return {"pairs_per_s": args.batch * steps / dt, "step_s": dt / steps, "loss": None, **peak_memory(device),
            "flops_per_pair": model_flops_per_pair(lm, args.seq_len, True), "params": sum(p.numel() for p in lm.parameters())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", default="qwen2.5-1.5b", choices=list(SHAPES))
    ap.add_argument("--batch", type=int, default=8, help="pairs per step")
    ap.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (prompt + response); 2 per pair")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--mix", default="fixed", choices=["fixed", "hh"],
                    help="fixed: every pair seq-len tokens, one batch repeated; hh: an HH-like length mix (seq-len = the cap), "
                         "cwpo's variants length-bucket it, TRL pads its own shuffled batches")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dtype", default=None, choices=["bf16", "fp32"], help="default: bf16 on cuda, fp32 on cpu")
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--grad-ckpt", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the cwpo policy")
    ap.add_argument("--variants", default="naive,cwpo,cwpo-precomp,trl")
    ap.add_argument("--peak-tflops", type=float, default=None, help="for MFU; default 989 (H100 bf16 dense) on cuda")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")

    if args.variant:
        res = run_trl(args) if args.variant == "trl" else run_torch_variant(args, args.variant)
        print("RESULT " + json.dumps(res))
        return

    results = {}
    for v in args.variants.split(","):
        if v == "trl":
            try:
                import trl  # noqa: F401
            except ImportError:
                print("trl: not installed (pip install trl) — skipped")
                continue
        cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--variant", v]
        t0 = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if p.returncode or not line:
            tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
            print(f"{v}: FAILED (rc {p.returncode}): {' | '.join(tail)}")
            results[v] = {"error": tail}
            continue
        results[v] = json.loads(line[0][7:])
        results[v]["wall_s"] = round(time.time() - t0, 1)

    peak = args.peak_tflops or (989.0 if args.device.startswith("cuda") else None)
    what = (f"{args.seq_len} tokens (prompt {args.prompt_len})" if args.mix == "fixed" else
            f"an HH-like length mix capped at {args.seq_len} tokens (tokens/s and MFU below assume the cap)")
    print(f"\nalign step, shape {args.shape}, device {args.device}, {args.dtype}, batch {args.batch} pairs x 2 x "
          f"{what}, {args.steps} timed steps after {args.warmup} warm-up")
    print(f"{'variant':14s} {'pairs/s':>9s} {'tokens/s':>10s} {'peak GB':>8s} {'MFU':>6s} {'vs naive':>9s} {'vs trl':>7s}")
    for v, r in results.items():
        if "error" in r:
            continue
        tps = r["pairs_per_s"] * 2 * args.seq_len
        mfu = r["pairs_per_s"] * r["flops_per_pair"] / (peak * 1e12) if peak else None
        r["mfu"] = mfu
        rel = {b: r["pairs_per_s"] / results[b]["pairs_per_s"] for b in ("naive", "trl")
               if b in results and "error" not in results[b]}
        r.update({f"speedup_vs_{b}": x for b, x in rel.items()})
        mfu_s = f"{100 * mfu:5.1f}%" if mfu is not None else "n/a"
        naive_s = f"{rel['naive']:.2f}x" if "naive" in rel else "n/a"
        trl_s = f"{rel['trl']:.2f}x" if "trl" in rel else "n/a"
        print(f"{v:14s} {r['pairs_per_s']:9.2f} {tps:10.0f} {r['peak_mem_gb']:8.2f} {mfu_s:>6s} {naive_s:>9s} {trl_s:>7s}")
    if not args.device.startswith("cuda"):
        print("(CPU: peak GB is the process's peak RSS, incl. Python/torch; MFU not computed)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
