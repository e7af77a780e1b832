"""Benchmark `cwpo prepare`: N synthetic pairs as jsonl -> split parquet through Ray Data.

    python benchmarks/bench_prepare.py --rows 1000000 [--tokenizer DIR --max-length 512]

Prints rows/s end to end (Ray start excluded, file reading, parsing, validation, hashing, split,
parquet writing included) and, as a baseline in the same process, the pure core on one process.
Target on the 2-core dev machine: >= 20k rows/s for 1M rows.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def write_jsonl(path: str, rows: int) -> None:
    from cwpo_ray.synthetic.task import SyntheticTask, SyntheticTaskConfig

    base = SyntheticTask(SyntheticTaskConfig(num_pairs=min(rows, 50_000), seed=0)).rows()
    with open(path, "w") as f:
        for i in range(rows):
            r = base[i % len(base)]
            # vary the prompt so every pair is distinct (distinct pair_id, spread over splits)
            f.write(json.dumps({"prompt": r["prompt"] + f" #{i // len(base)}", "response_a": r["response_a"],
                                "response_b": r["response_b"], "human_label": r["human_label"]}) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    from cwpo_ray.config import RayConfig, build_config
    from cwpo_ray.prepare.config import PrepareConfig
    from cwpo_ray.prepare.core import Normalizer, parse_json_lines
    from cwpo_ray.prepare.stage import run_prepare
    from cwpo_ray.runtime import init_ray

    work = args.workdir or tempfile.mkdtemp(prefix="bench_prepare_")
    os.makedirs(work, exist_ok=True)
    src = os.path.join(work, "pairs.jsonl")
    t = time.perf_counter()
    write_jsonl(src, args.rows)
    print(f"wrote {args.rows:,} rows ({os.path.getsize(src) / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f}s")

    # Baseline: the pure core in this process on the first 100k lines (no Ray, one core).
    n_base = min(args.rows, 100_000)
    with open(src, "rb") as f:
        lines = [next(f).rstrip(b"\n") for _ in range(n_base)]
    norm = Normalizer("canonical", "bench", {}, 0.1, 0.3, 0, args.tokenizer, args.max_length)
    t = time.perf_counter()
    for i in range(0, n_base, 4096):
        norm(parse_json_lines(lines[i:i + 4096], [""] * len(lines[i:i + 4096])))
    base_rps = n_base / (time.perf_counter() - t)
    print(f"pure core, 1 process (parse+validate+hash+split, no I/O): {base_rps:,.0f} rows/s")

    init_ray(RayConfig(num_cpus=os.cpu_count()))
    cfg = build_config(PrepareConfig, {"sources": [{"format": "canonical", "path": src}], "output_dir": os.path.join(work, "out"),
                                       "tokenizer": args.tokenizer, "max_length": args.max_length if args.tokenizer else None})
    t = time.perf_counter()
    s = run_prepare(cfg)
    dt = time.perf_counter() - t
    assert s.rows_in == args.rows and s.kept + s.quarantined == args.rows
    rps = args.rows / dt
    print(f"cwpo prepare via Ray Data ({os.cpu_count()} CPUs): {args.rows:,} rows in {dt:.1f}s = {rps:,.0f} rows/s "
          f"({rps / base_rps:.2f}x the 1-process core); splits {s.splits}")
    print(f"target >= 20,000 rows/s: {'MET' if rps >= 20_000 else 'NOT MET'}")


if __name__ == "__main__":
    main()
