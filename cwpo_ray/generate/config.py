"""Configs of `cwpo generate` (and the sampling/engine parts `cwpo evaluate` reuses)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from cwpo_ray.config import RayConfig, StrictModel


class SamplingConfig(StrictModel):
    """Sampling of responses. Defaults are the paper's (temperature 0.95, 512 new tokens).

    Every request gets its own seed, derived from ``seed``, the prompt and the candidate index
    (:func:`cwpo_ray.generate.core.request_seed`), so outputs do not depend on batching, on the
    number of engines, or on the backend's request order; the seeds are written next to the outputs.
    Generation always stops at the tokenizer's eos token.
    """

    temperature: float = Field(default=0.95, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=512, gt=0)
    seed: int = Field(default=0, ge=0)
    stop: list[str] = Field(default_factory=list)  # extra stop strings (eos always stops)


class EngineConfig(StrictModel):
    """Which backend generates, and how it is placed on the Ray cluster."""

    # vllm: vLLM engines inside Ray Data. hf: transformers `generate` (explicit fallback; logged).
    backend: Literal["vllm", "hf"] = "vllm"
    # If vLLM cannot load the model (e.g. an architecture it lacks), generate with HF instead; the
    # switch is logged as a warning and recorded per row (`backend`) and in the stage summary.
    hf_fallback: bool = True
    # actor_pool: Ray Data actor pool whose actors each hold a `vllm.LLM` (in-process engine; fast start).
    # ray_data_llm: `ray.data.llm.build_processor(vLLMEngineProcessorConfig)` (Ray's own vLLM stage).
    executor: Literal["actor_pool", "ray_data_llm"] = "actor_pool"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda if the Ray cluster has GPUs
    tensor_parallel_size: int = Field(default=1, ge=1)
    num_engines: int = Field(default=1, ge=1)  # engine replicas (Ray Data actors)
    batch_size: int = Field(default=256, gt=0)  # requests per Ray Data batch handed to an engine
    dtype: str = "auto"  # "auto" means float32 on CPU, the model's dtype on GPU
    max_model_len: int | None = Field(default=None, gt=0)
    enforce_eager: bool = False  # True: no torch.compile/CUDA graphs (fast start; use on CPU / in tests)
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    cpu_kvcache_gib: float = Field(default=1.0, gt=0.0)  # VLLM_CPU_KVCACHE_SPACE
    cpu_threads: int = Field(default=1, ge=1)  # CPUs (and OMP threads) per CPU engine
    trust_remote_code: bool = False
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)  # extra vllm EngineArgs, e.g. {model_impl: vllm}


class GenerateConfig(StrictModel):
    """`cwpo generate`: k sampled responses per prompt, paired into canonical (unlabeled) pairs."""

    model: str | None = None  # hub id or local folder (a causal LM + tokenizer); required
    prompts_path: str | None = None  # parquet file/folder or jsonl(.gz) with a prompt column; required
    prompt_column: str = "prompt"
    output_dir: str | None = None  # required; the pipeline sets {run_dir}/generated
    num_candidates: int = Field(default=2, ge=2)  # k responses per prompt
    pairing: Literal["adjacent", "all"] = "adjacent"  # (0,1),(2,3),... or all k·(k-1)/2 pairs
    max_prompts: int | None = Field(default=None, gt=0)
    source_name: str = "generated"  # value of the pairs' `source` column
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
