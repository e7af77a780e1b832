"""Annotation throughput: (b) the pure scorer core vs a naive padded HF forward, same process, same
model, same texts; (a, --e2e) pairs/s end to end through Ray Data (`run_annotate`) on the synthetic task.

Part (b) needs only torch + transformers (+ numpy); the model is built from a config (random weights,
no download)::

    python benchmarks/bench_annotate.py --device cuda --shape opt-125m --max-length 512 --pairs 8192
    python benchmarks/bench_annotate.py                      # CPU smoke run: tiny shape, few pairs
    python benchmarks/bench_annotate.py --e2e                # + end to end on Ray Data (needs ray)

Length mix ("hh"): token lengths of prompt+response drawn log-normally (median ~110 tokens, long tail),
clipped to [16, max_length], like HH-RLHF's many short dialogues with a tail up to 512. "max": every
text max_length long. GPU target: OPT-125M shape at 512 tokens ≥ 3,000 pairs/s and ≥ 1.7× naive.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SHAPES = {
    # name: (config class, kwargs)
    "opt-125m": ("OPTConfig", dict(hidden_size=768, ffn_dim=3072, num_hidden_layers=12, num_attention_heads=12,
                                   word_embed_proj_dim=768, vocab_size=50272, max_position_embeddings=2048,
                                   pad_token_id=1, bos_token_id=2, eos_token_id=2)),
    "qwen2.5-0.5b": ("Qwen2Config", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                         max_position_embeddings=32768, pad_token_id=151643, tie_word_embeddings=True)),
    "tiny": ("OPTConfig", dict(hidden_size=128, ffn_dim=512, num_hidden_layers=2, num_attention_heads=4,
                               word_embed_proj_dim=128, vocab_size=1000, max_position_embeddings=1024,
                               pad_token_id=1, bos_token_id=2, eos_token_id=2)),
}


def build_model(shape: str, device: str, dtype):
    import torch
    import transformers

    cls_name, kw = SHAPES[shape]
    cfg = getattr(transformers, cls_name)(num_labels=1, **kw)
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(cfg, attn_implementation="sdpa", dtype=dtype)
    return model.to(device).eval()


def sample_lengths(n: int, max_length: int, mix: str, rng) -> np.ndarray:
    if mix == "max":
        return np.full(n, max_length)
    return np.clip(rng.lognormal(np.log(110), 0.8, size=n), 16, max_length).astype(int)


def naive_scores(model, ids, batch_pairs: int, pad_id: int, device: str):
    """The baseline: input order, fixed batches of `batch_pairs` pairs (2 texts each), padded to the
    longest in the batch, attention mask, `model(...).logits`, no_grad (what a plain HF loop does)."""
    import torch

    out = np.empty(len(ids), np.float32)
    bs = 2 * batch_pairs
    with torch.no_grad():
        for s in range(0, len(ids), bs):
            chunk = ids[s:s + bs]
            width = max(len(x) for x in chunk)
            x = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            m = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, t in enumerate(chunk):
                x[i, :len(t)] = torch.tensor(t)
                m[i, :len(t)] = 1
            out[s:s + bs] = model(input_ids=x.to(device), attention_mask=m.to(device)).logits[:, 0].float().cpu().numpy()
    return out


def timed(fn, device: str, repeats: int):
    import torch

    fn()  # warm-up (CUDA kernels, compile)
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, r


def bench_core(a) -> None:
    import torch

    from cwpo_ray.annotator.scoring import HFScorer

    dtype = torch.bfloat16 if a.device.startswith("cuda") and a.dtype == "auto" else getattr(torch, "float32" if a.dtype == "auto" else a.dtype)
    model = build_model(a.shape, a.device, dtype)
    vocab, pad = model.config.vocab_size, model.config.pad_token_id
    rng = np.random.default_rng(0)
    lengths = sample_lengths(2 * a.pairs, a.max_length, a.mix, rng)
    ids = [rng.integers(3, vocab, size=int(n)).tolist() for n in lengths]  # never the pad id (pad=1 / the last ids)
    ids = [[t if t != pad else pad + 1 for t in x] for x in ids]
    scorer = HFScorer("<built in memory>", device=a.device, max_length=a.max_length, max_batch_tokens=a.max_batch_tokens,
                      max_batch_size=a.max_batch_size, compile=a.compile, model=model, tokenizer=object())
    scorer.pad_id = pad
    where = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    print(f"device={a.device} ({where}) "
          f"shape={a.shape} dtype={dtype} pairs={a.pairs} mix={a.mix} max_length={a.max_length} "
          f"mean len={lengths.mean():.0f} p50={np.median(lengths):.0f} p99={np.percentile(lengths, 99):.0f} "
          f"torch={torch.__version__}")
    t_naive, s_naive = timed(lambda: naive_scores(model, ids, a.naive_batch_pairs, pad, a.device), a.device, a.repeats)
    t_core, s_core = timed(lambda: scorer.score_ids(ids), a.device, a.repeats)
    tol = 1e-4 if dtype == torch.float32 else 0.1
    diff = float(np.max(np.abs(s_naive - s_core)))
    print(f"naive padded HF forward (batch {a.naive_batch_pairs} pairs): {a.pairs / t_naive:10.1f} pairs/s  ({t_naive:.3f}s)")
    print(f"scorer core (sorted, token budget {a.max_batch_tokens}, no mask, inference_mode{', compile' if a.compile else ''}): "
          f"{a.pairs / t_core:10.1f} pairs/s  ({t_core:.3f}s)")
    print(f"speed-up: {t_naive / t_core:.2f}x   max |score diff| = {diff:.2e} ({'ok' if diff < tol else 'MISMATCH'} at tol {tol})")
    if a.device.startswith("cuda"):
        print(f"GPU target: >= 3000 pairs/s and >= 1.7x naive -> "
              f"{'MET' if a.pairs / t_core >= 3000 and t_naive / t_core >= 1.7 else 'not met'}")


def core_rate(blocks, model_dir: str, max_length: int) -> tuple[float, int]:
    """pairs/s of annotate's whole per-block core (read + validate + tokenize + score + label, the same
    functions the two Ray stages call) on ONE thread in this process: the unit of the ideal."""
    import torch

    from cwpo_ray.annotator.annotate import read_block, score_block, tokenize_block
    from cwpo_ray.annotator.scoring import HFScorer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scorer = HFScorer(model_dir, max_length=max_length)
        pairs, t0 = 0, time.perf_counter()
        for b in blocks:
            valid, _ = tokenize_block(read_block(b), scorer.tokenizer, max_length)
            pairs += score_block(scorer, valid).num_rows
        return pairs / (time.perf_counter() - t0), pairs
    finally:
        torch.set_num_threads(threads)


def bench_e2e(a) -> None:
    """End to end on Ray Data: synthetic pairs (PAIR_SCHEMA parquet) -> run_annotate -> labeled parquet,
    against the ideal: (CPUs Ray has) × the one-thread core rate on the same blocks, in the same process."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from cwpo_ray.annotator.annotate import plan_blocks, run_annotate
    from cwpo_ray.annotator.config import AnnotateConfig
    from cwpo_ray.config import RayConfig
    from cwpo_ray.runtime import init_ray
    from cwpo_ray.schema import PAIR_SCHEMA, pair_id
    from cwpo_ray.synthetic.build import SyntheticConfig, build_synthetic
    from cwpo_ray.synthetic.task import SyntheticTask, SyntheticTaskConfig

    tmp = a.workdir or tempfile.mkdtemp(prefix="bench_annotate_")
    t0 = time.time()
    model = f"{tmp}/syn/weak_base"
    if not os.path.exists(f"{model}/config.json"):  # the synthetic models (a --workdir keeps them for re-runs)
        build_synthetic(SyntheticConfig(output_dir=f"{tmp}/syn", task=SyntheticTaskConfig(num_pairs=200)))
    data = f"{tmp}/in-{a.e2e_pairs}"
    if not os.path.exists(data):
        rows = SyntheticTask(SyntheticTaskConfig(num_pairs=a.e2e_pairs, seed=1)).rows()
        table = pa.table({"pair_id": [pair_id(r["prompt"], r["response_a"], r["response_b"]) for r in rows],
                          "prompt": [r["prompt"] for r in rows], "response_a": [r["response_a"] for r in rows],
                          "response_b": [r["response_b"] for r in rows], "human_label": [r["human_label"] for r in rows],
                          "source": ["synthetic"] * len(rows)}, schema=PAIR_SCHEMA)
        os.makedirs(f"{data}.tmp", exist_ok=True)
        pq.write_table(table, f"{data}.tmp/part-00000.parquet", row_group_size=a.block_rows)
        os.rename(f"{data}.tmp", data)
    print(f"setup (synthetic models + {a.e2e_pairs} pairs in {tmp}) {time.time() - t0:.1f}s")
    t0 = time.time()
    init_ray(RayConfig())
    cpus = ray.cluster_resources().get("CPU", 0)
    print(f"ray start {time.time() - t0:.1f}s, {cpus:g} CPUs")
    cfg = AnnotateConfig(model=model, input=data, output_dir=f"{tmp}/out", overwrite=True, max_length=128,
                         block_rows=a.block_rows, min_actors=a.actors, max_actors=a.actors,
                         cpus_per_actor=a.cpus_per_actor, tokenize_actors=a.tokenize_actors,
                         cpus_per_tokenizer=a.cpus_per_tokenizer)
    t0 = time.time()
    s = run_annotate(cfg)
    wall = time.time() - t0
    e2e = s.pairs / wall
    print(f"e2e Ray Data ({a.actors} scorer actors x {a.cpus_per_actor:g} CPU, {a.tokenize_actors} tokenizer x "
          f"{a.cpus_per_tokenizer:g} CPU): {s.pairs} pairs in {wall:.1f}s wall = {e2e:.0f} pairs/s "
          f"(incl. actor start-up; stage-reported {s.pairs_per_s} pairs/s)")
    # When each block's output was written (its file's mtime): start-up (stage start -> first block) and
    # the steady-state rate between the first and the last block.
    done = sorted(os.path.getmtime(os.path.join(f"{tmp}/out/preferences", f)) for f in os.listdir(f"{tmp}/out/preferences"))
    steady = (s.pairs - s.pairs / len(done)) / (done[-1] - done[0]) if len(done) > 1 else float("nan")
    print(f"  first block written {done[0] - t0:.1f}s after the stage started (Ray Data start, actors importing torch/"
          f"transformers and loading the model, the first block); steady state {steady:.0f} pairs/s")
    ray.shutdown()  # the core measurements below run with no Ray process left on the machine
    blocks = plan_blocks(data, a.block_rows)
    sample = blocks[: max(1, -(-a.core_pairs // a.block_rows))]
    core, n = core_rate(sample, model, 128)
    ideal = cpus * core
    print(f"core on 1 thread, same blocks ({n} pairs): {core:.0f} pairs/s -> ideal on {cpus:g} CPUs {ideal:.0f} pairs/s")
    par = parallel_core_rate(sample, model, 128, int(cpus))
    print(f"the same core in {int(cpus)} plain processes at once (no Ray; what this machine's cores give together): "
          f"{par:.0f} pairs/s = {par / ideal:.2f} of ideal")
    print(f"e2e / ideal = {e2e / ideal:.2f}  (target >= 0.8); steady state / ideal = {steady / ideal:.2f}; "
          f"e2e / plain processes = {e2e / par:.2f}")


def _core_worker(blocks, model_dir: str, max_length: int, q) -> None:
    q.put(core_rate(blocks, model_dir, max_length))


def parallel_core_rate(blocks, model_dir: str, max_length: int, procs: int) -> float:
    """Sum of the one-thread core rates of ``procs`` processes running at the same time on disjoint
    blocks: the ceiling that shared caches, memory bandwidth and the OS leave to any parallel runner."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=_core_worker, args=(blocks[i::procs], model_dir, max_length, q)) for i in range(procs)]
    for p in ps:
        p.start()
    rates = [q.get()[0] for _ in ps]
    for p in ps:
        p.join()
    return sum(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--shape", default=None, choices=sorted(SHAPES), help="default: opt-125m on cuda, tiny on cpu")
    p.add_argument("--dtype", default="auto", help="auto = bf16 on cuda, fp32 on cpu")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--mix", default="hh", choices=["hh", "max"])
    p.add_argument("--pairs", type=int, default=None, help="default: 8192 on cuda, 256 on cpu")
    p.add_argument("--max-batch-tokens", type=int, default=None, help="default: 131072 on cuda, 16384 on cpu")
    p.add_argument("--max-batch-size", type=int, default=1024)
    p.add_argument("--naive-batch-pairs", type=int, default=32)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--e2e", action="store_true", help="also run end to end through Ray Data (needs ray)")
    p.add_argument("--e2e-pairs", type=int, default=4000)
    p.add_argument("--workdir", default=None, help="keep the synthetic models and pairs here for re-runs (default: a new temp dir)")
    p.add_argument("--block-rows", type=int, default=2048)
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--tokenize-actors", type=int, default=1)
    p.add_argument("--cpus-per-tokenizer", type=float, default=1.0)
    p.add_argument("--core-pairs", type=int, default=40000, help="pairs of the one-thread core measurement")
    a = p.parse_args()
    cuda = a.device.startswith("cuda")
    a.shape = a.shape or ("opt-125m" if cuda else "tiny")
    a.pairs = a.pairs or (8192 if cuda else 256)
    a.max_batch_tokens = a.max_batch_tokens or (131072 if cuda else 16384)
    bench_core(a)
    if a.e2e:
        bench_e2e(a)


if __name__ == "__main__":
    main()
