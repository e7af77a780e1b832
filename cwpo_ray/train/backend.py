"""Ray Train's torch backend, choosing the process group's backend from what the workers can use.

Ray picks NCCL whenever the workers ask for GPUs. A worker that Ray gave a GPU but where torch sees no
CUDA device (a simulated GPU node of Ray's fake multi-node cluster, ``cluster/fake_autoscaling.yaml``)
cannot start NCCL; there the workers compute on CPU (:class:`cwpo_ray.train.loop.Recipe` says so) and
the process group is gloo. With CUDA on every worker nothing changes (NCCL, as Ray chooses).
"""
from __future__ import annotations

import dataclasses

from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def process_group_backend(requested: str | None, gpus_per_worker: float, cuda_on_workers: list[bool]) -> str | None:
    """gloo when GPU workers would start NCCL (``requested``: None or ``nccl``, what Ray's TorchTrainer sets
    for ``use_gpu``) but some of them see no CUDA device; else ``requested``."""
    if gpus_per_worker <= 0 or requested not in (None, "nccl") or all(cuda_on_workers):
        return requested
    return "gloo"


class _DeviceAwareTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig):
        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        cuda = worker_group.execute(_cuda_available) if gpus and backend_config.backend in (None, "nccl") else []
        backend = process_group_backend(backend_config.backend, gpus, cuda)
        if backend != backend_config.backend:
            backend_config = dataclasses.replace(backend_config, backend=backend)
        super().on_start(worker_group, backend_config)


@dataclasses.dataclass
class DeviceAwareTorchConfig(TorchConfig):
    """:class:`ray.train.torch.TorchConfig` whose backend falls back to gloo on GPU workers without CUDA."""

    @property
    def backend_cls(self):
        return _DeviceAwareTorchBackend
