"""Shared fixtures: offline HF, one Ray cluster per test session, the synthetic task built once."""
from __future__ import annotations

import os

for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_TRAIN_V2_ENABLED": "1",
    "DS_ACCELERATOR": "cpu",
    "VLLM_CPU_KVCACHE_SPACE": "1",
}.items():
    os.environ.setdefault(_k, _v)

import pytest  # noqa: E402

# The longest modules first (measured on 2 cores, 2026-12-05: pipeline ~650 s, sweep ~275, student_train ~220,
# annotator_ray ~170, generate ~70, jobs ~45, evaluate ~45, bad_files ~30; everything else < 20 s each). `make
# test` runs two pytest-xdist workers with --dist loadfile --no-loadscope-reorder, which hand out whole modules
# in this order, so the short modules fill in around the long ones instead of one worker finishing a long module
# alone at the end. The fake-autoscaling rehearsal (3-4 min, most of it waiting for simulated nodes and idle
# timeouts) runs beside them from the session's start (tests/fake_autoscaling_run.py); its test collects the report.
LONGEST_FIRST = ["test_pipeline.py", "test_sweep.py", "test_student_train.py", "test_annotator_ray.py",
                 "test_generate.py", "test_jobs.py", "test_evaluate.py", "test_bad_files.py"]
FAKE_AUTOSCALING_TEST = "test_fake_autoscaling.py::test_fake_autoscaling_annotate_and_align"


def _module_rank(item) -> int:
    name = item.path.name
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_finish(session):
    """Start the fake-autoscaling rehearsal in the background when its test is selected (xdist: worker gw0
    only), so that its waits overlap the other tests (tests/fake_autoscaling_run.py)."""
    if session.config.option.collectonly or not any(item.nodeid.endswith(FAKE_AUTOSCALING_TEST) for item in session.items):
        return
    if os.environ.get("PYTEST_XDIST_WORKER", "gw0") == "gw0":
        from tests import fake_autoscaling_run

        fake_autoscaling_run.start(fake_autoscaling_run.folder(session.config))


def pytest_sessionfinish(session):
    from tests import fake_autoscaling_run

    fake_autoscaling_run.finish(aborted=bool(session.shouldfail or session.shouldstop))


def pytest_collection_modifyitems(config, items):
    items.sort(key=_module_rank)  # stable: alphabetical order within the rest, test order within a module
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on 127.0.0.1 (tests/s3.py) with an empty bucket ``cwpo``; its endpoint URL."""
    from tests.s3 import make_bucket, start_moto

    p, endpoint = start_moto()
    make_bucket(endpoint, "cwpo")
    yield endpoint
    p.terminate()
    p.wait(timeout=30)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (2 CPUs, small object store)."""
    import ray

    from cwpo_ray.config import RayConfig
    from cwpo_ray.runtime import init_ray

    init_ray(RayConfig(num_cpus=2, object_store_mb=512))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synthetic_assets(tmp_path_factory):
    """The synthetic task (1,500 pairs), its tokenizer and tiny weak/student base models (briefly pretrained).

    Labels agree with the gold ordering on 90% of pairs (the demo's 70% is the paper's regime): these
    fixtures test mechanics, and a strong signal lets small runs show learning beyond doubt."""
    from cwpo_ray.synthetic.build import SyntheticConfig, build_synthetic
    from cwpo_ray.synthetic.pretrain import PretrainConfig
    from cwpo_ray.synthetic.task import SyntheticTaskConfig

    out = tmp_path_factory.mktemp("synthetic")
    summary = build_synthetic(SyntheticConfig(output_dir=str(out), task=SyntheticTaskConfig(num_pairs=1500, seed=0, human_agreement=0.9),
                                              pretrain=PretrainConfig(num_texts=1024, epochs=1)))
    return {**summary.paths.model_dump(), "summary": summary}


@pytest.fixture(scope="session")
def prepared_data(ray_session, synthetic_assets, tmp_path_factory):
    """`prepare` run once on the synthetic task: {labeled,unlabeled,validation,test}/*.parquet."""
    from cwpo_ray.config import build_config
    from cwpo_ray.prepare.config import PrepareConfig
    from cwpo_ray.prepare.stage import run_prepare

    out = tmp_path_factory.mktemp("prepared")
    cfg = build_config(PrepareConfig, {
        "sources": [{"format": "canonical", "path": synthetic_assets["data"], "name": "synthetic"}],
        "output_dir": str(out), "tokenizer": synthetic_assets["tokenizer"], "max_length": 128,
    })
    summary = run_prepare(cfg)
    return {"dir": str(out), "summary": summary}
