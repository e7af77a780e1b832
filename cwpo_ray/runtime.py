"""One way to get a Ray cluster, the same on a laptop and on a cluster.

``init_ray`` connects to ``RayConfig.address`` or ``$RAY_ADDRESS`` when set (a cluster, or a job
started by ``ray job submit``, where Ray sets it for the driver), else starts a light local Ray sized
for the machine (no dashboard, small object store).
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile

from cwpo_ray.config import RayConfig

log = logging.getLogger(__name__)

# Quiet, reproducible defaults for local runs; a cluster's own environment wins.
_LOCAL_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_AUTH_MODE": "disabled",
    # Ray Data progress bars are useful on a terminal, noise in logs.
    "RAY_DATA_DISABLE_PROGRESS_BARS": os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS", "0"),
}


def init_ray(cfg: RayConfig | None = None):
    """Connect to (or start) Ray once per process and return the ``ray`` module."""
    import ray

    from cwpo_ray import console

    cfg = cfg or RayConfig()
    if ray.is_initialized():
        return ray
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    for k, v in _LOCAL_ENV.items():
        os.environ.setdefault(k, v)
    if address:
        # On a cluster (or inside `ray job submit`) the job's own runtime_env governs: passing env vars
        # here would conflict with the ones the job already sets.
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=console.forward_worker_logs(), configure_logging=not console.quiet())
    else:
        num_cpus = cfg.num_cpus or os.cpu_count() or 1
        log.info("starting a local Ray (%d CPUs)", num_cpus)
        ray.init(
            address="local",
            num_cpus=num_cpus,
            num_gpus=cfg.num_gpus,
            include_dashboard=False,
            object_store_memory=cfg.object_store_mb * 2**20,
            _temp_dir=os.environ.get("CWPO_RAY_TMP", os.path.join(tempfile.gettempdir(), "ray-cwpo")),
            runtime_env={"env_vars": {k: os.environ[k] for k in ("TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE")
                                      if k in os.environ}},
            # quiet console: workers' output stays in Ray's logs, the driver's Ray logs go to its log file
            log_to_driver=console.forward_worker_logs(), configure_logging=not console.quiet(),
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS", "0") != "1"
    console.route_library_logs()
    console.link_ray_logs()
    return ray


# ---- one device / dtype resolution and one vLLM-on-CPU environment for every stage -------------------
def local_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when this process sees a GPU, else ``cpu``; anything else is kept. ``cpu``
    although Ray assigned this process a GPU logs one warning (:func:`warn_gpu_fallback`)."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    warn_gpu_fallback()
    return "cpu"


def gpu_fallback_message(gpu_ids: list, cuda_available: bool) -> str | None:
    """The warning for a process that Ray gave GPUs (``gpu_ids``: ``ray.get_gpu_ids()``) but where torch
    sees no CUDA device (a simulated GPU node of Ray's fake multi-node cluster, a CPU-only torch, a broken
    driver); None when there is nothing to fall back from."""
    if cuda_available or not gpu_ids:
        return None
    ids = ",".join(str(i) for i in gpu_ids)
    return (f"GPU fallback: Ray assigned GPU {ids} to this process but torch sees no CUDA device; "
            "computing on CPU")


_warned_fallback = False


def warn_gpu_fallback() -> bool:
    """Log :func:`gpu_fallback_message` once per process when it applies (this process holds Ray GPUs and
    torch has no CUDA); True when this process falls back."""
    global _warned_fallback
    import torch

    try:
        import ray

        gpu_ids = list(ray.get_gpu_ids()) if ray.is_initialized() else []
    except Exception:  # outside a Ray worker / driver: nothing was assigned
        gpu_ids = []
    msg = gpu_fallback_message(gpu_ids, torch.cuda.is_available())
    if msg and not _warned_fallback:
        _warned_fallback = True
        if log.hasHandlers():
            log.warning(msg)
        else:  # a bare Ray worker process: one line on its stderr (its log file; forwarded to the driver)
            print(f"WARNING {msg}", file=sys.stderr, flush=True)
    return msg is not None


def cluster_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when the Ray cluster has GPUs (for stages that place actors), else ``cpu``."""
    if device != "auto":
        return device
    import ray

    return "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"


def dtype_name(dtype: str, device: str) -> str:
    """``auto`` -> ``bfloat16`` on CUDA, ``float32`` on CPU (no fast bf16 kernels there); else as given."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def torch_dtype(dtype: str, device: str):
    import torch

    return getattr(torch, dtype_name(dtype, device))


def vllm_cpu_env(kvcache_gib: float = 1.0, threads: int | None = None, in_process: bool = True) -> dict[str, str]:
    """Environment vLLM's CPU backend needs, set before vLLM is imported: a small KV cache (else it asks
    for most of the RAM), no OpenMP thread binding (Ray already placed the process; binding fights other
    actors), and the engine core in the calling process (starts in seconds, no second process)."""
    env = {"VLLM_CPU_KVCACHE_SPACE": f"{kvcache_gib:g}", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if in_process:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return env


def import_deepspeed():
    """``import deepspeed`` without the import of mlflow that DeepSpeed's autotuner module makes as a side effect
    (``try: import mlflow`` at import time, for the autotuner's result logging, which this package never runs).
    On the 2-core CPU machine that import is ~0.75 of DeepSpeed's ~1 s import, paid by every Ray Train worker
    process of every stage. mlflow stays importable afterwards (``tracking.kind: mlflow`` imports it itself)."""
    if "deepspeed" in sys.modules:
        return sys.modules["deepspeed"]
    blocked = "mlflow" not in sys.modules
    if blocked:
        sys.modules["mlflow"] = None  # `import mlflow` raises ImportError; the autotuner sets has_mlflow = False
    try:
        import deepspeed
    finally:
        if blocked and sys.modules.get("mlflow", 0) is None:
            del sys.modules["mlflow"]
    return deepspeed
