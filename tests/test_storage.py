"""Bad storage input fails fast: one line naming the field and the URI, before any compute starts.

Against a real S3 API: moto's server on 127.0.0.1 (a subprocess on a free port, stopped after), reached
through ``AWS_ENDPOINT_URL`` like any S3-compatible store. Stages that write with local file tools
refuse a URI at config load (issue: object-store run folders are not supported by them yet)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from cwpo_ray.config import ConfigError, build_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto(extra_env: dict | None = None):
    port = _free_port()
    env = {**os.environ, **(extra_env or {})}
    p = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    p.kill()
    raise RuntimeError("moto server did not start")


def _aws_env(monkeypatch, endpoint: str) -> None:
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)


def _make_bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=name)


@pytest.fixture(scope="module")
def s3_server():
    p, endpoint = _start_moto()
    _make_bucket(endpoint, "cwpo")
    yield endpoint
    p.terminate()
    p.wait(timeout=30)


@pytest.fixture
def no_compute(monkeypatch):
    """Any stage that gets as far as starting Ray fails the test: the storage check must come first."""
    def refuse(*a, **k):
        raise AssertionError("compute started before the storage check")

    import cwpo_ray.generate.stage
    import cwpo_ray.prepare.stage
    import cwpo_ray.runtime

    for mod in (cwpo_ray.runtime, cwpo_ray.prepare.stage, cwpo_ray.generate.stage):
        monkeypatch.setattr(mod, "init_ray", refuse)


def _one_line(e: pytest.ExceptionInfo, *parts: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("config error: ") and all(p in msg for p in parts), msg
    return msg


def _stage_calls(tmp_path):
    from cwpo_ray.annotator.annotate import run_annotate
    from cwpo_ray.annotator.config import AnnotateConfig
    from cwpo_ray.generate.config import GenerateConfig
    from cwpo_ray.generate.stage import run_generate
    from cwpo_ray.prepare.config import PrepareConfig
    from cwpo_ray.prepare.stage import run_prepare

    local = tmp_path / "in.jsonl"
    local.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    return {
        "prepare": lambda out, src=str(local): run_prepare(build_config(PrepareConfig, {
            "sources": [{"format": "hh_rlhf", "path": src}], "output_dir": out})),
        "annotate": lambda out, src=str(tmp_path): run_annotate(build_config(AnnotateConfig, {
            "model": str(tmp_path), "input": src, "output_dir": out})),
        "generate": lambda out, src=str(local): run_generate(build_config(GenerateConfig, {
            "model": str(tmp_path), "prompts_path": src, "output_dir": out})),
    }


def test_missing_bucket_and_object_fail_fast_naming_the_uri(s3_server, monkeypatch, no_compute, tmp_path):
    _aws_env(monkeypatch, s3_server)
    calls = _stage_calls(tmp_path)
    for stage, run in calls.items():
        with pytest.raises(ConfigError) as e:
            run("s3://no-such-bucket/run/out")
        assert "bucket 'no-such-bucket' does not exist" in _one_line(e, "output_dir", "s3://no-such-bucket/run/out"), stage
    with pytest.raises(ConfigError) as e:  # an input that is not there (the bucket is)
        calls["prepare"]("s3://cwpo/run/data", src="s3://cwpo/missing/pairs.jsonl")
    _one_line(e, "sources[0].path", "s3://cwpo/missing/pairs.jsonl", "does not exist")
    with pytest.raises(ConfigError) as e:
        calls["annotate"]("s3://cwpo/run/ann", src="s3://no-such-bucket/unlabeled")
    _one_line(e, "input", "s3://no-such-bucket/unlabeled")
    with pytest.raises(ConfigError) as e:  # a scheme pyarrow does not know
        calls["prepare"]("s4://cwpo/run/data")
    _one_line(e, "output_dir", "s4://cwpo/run/data", "storage not usable")


def test_unreachable_endpoint_fails_fast_naming_the_uri(monkeypatch, no_compute, tmp_path):
    _aws_env(monkeypatch, f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    t0 = time.time()
    with pytest.raises(ConfigError) as e:
        _stage_calls(tmp_path)["annotate"]("s3://cwpo/run/ann")
    _one_line(e, "output_dir", "s3://cwpo/run/ann", "storage not usable", "connect")
    assert time.time() - t0 < 60


def test_refused_credentials_fail_fast_naming_the_uri(monkeypatch, no_compute, tmp_path):
    """A server that checks credentials (moto with IAM auth after its first action) refuses ours."""
    p, endpoint = _start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "1"})
    try:
        _make_bucket(endpoint, "cwpo")  # the one unauthenticated action
        _aws_env(monkeypatch, endpoint)
        with pytest.raises(ConfigError) as e:
            _stage_calls(tmp_path)["prepare"]("s3://cwpo/run/data")
        _one_line(e, "output_dir", "s3://cwpo/run/data", "ACCESS_DENIED")
    finally:
        p.terminate()
        p.wait(timeout=30)


def test_an_existing_bucket_passes_the_check(s3_server, monkeypatch):
    from cwpo_ray import io

    _aws_env(monkeypatch, s3_server)
    io.check_storage("s3://cwpo/run/out", "output_dir")  # no error: the bucket is there, the prefix need not be


def test_stages_with_local_outputs_refuse_a_uri_at_config_load():
    from cwpo_ray.annotator.config import AnnotatorTrainConfig
    from cwpo_ray.evaluate.config import EvaluateConfig
    from cwpo_ray.pipeline import PipelineConfig
    from cwpo_ray.student.config import AlignConfig, SFTConfig
    from cwpo_ray.sweep.config import SweepConfig
    from cwpo_ray.synthetic.build import SyntheticConfig

    cases = [(PipelineConfig, "run_dir"), (AnnotatorTrainConfig, "output_dir"), (SFTConfig, "output_dir"),
             (AlignConfig, "output_dir"), (EvaluateConfig, "output_dir"), (SyntheticConfig, "output_dir"),
             (SweepConfig, "output_dir")]
    for cls, field in cases:
        for uri in ("s3://bucket/run", "file:///tmp/run"):
            with pytest.raises(ConfigError) as e:
                build_config(cls, {field: uri})
            _one_line(e, f"{field}: ", uri, "is a URI")
