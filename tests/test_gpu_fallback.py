"""A process that Ray gave a GPU but where torch sees no CUDA device (a simulated GPU node of Ray's fake
multi-node cluster) computes on CPU and says so; the trainer's process group is gloo there."""
from __future__ import annotations


def test_gpu_fallback_message():
    from cwpo_ray.runtime import gpu_fallback_message

    assert gpu_fallback_message([], False) is None  # no GPU assigned: CPU is the plan, nothing to say
    assert gpu_fallback_message([0], True) is None  # CUDA there: no fallback
    msg = gpu_fallback_message([0, 3], False)
    assert msg.startswith("GPU fallback:") and "GPU 0,3" in msg and msg.endswith("computing on CPU")


def test_local_device_without_ray_gpus_is_silent(capsys, caplog):
    import torch

    from cwpo_ray.runtime import local_device

    assert local_device("cuda:1") == "cuda:1"
    if not torch.cuda.is_available():
        assert local_device() == "cpu"
        assert "GPU fallback" not in capsys.readouterr().err + caplog.text


def test_process_group_backend():
    from cwpo_ray.train.backend import process_group_backend

    assert process_group_backend("nccl", 1, [True, True]) == "nccl"
    assert process_group_backend(None, 1, [True]) is None  # Ray's own choice
    assert process_group_backend("nccl", 1, [True, False]) == "gloo"
    assert process_group_backend(None, 1, [False]) == "gloo"
    assert process_group_backend("gloo", 0, [False]) == "gloo"  # CPU workers: untouched
    assert process_group_backend("hccl", 1, [False]) == "hccl"  # an explicit other backend is kept
