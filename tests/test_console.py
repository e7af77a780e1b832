"""The quiet console (cwpo_ray.console): libraries' logs go to the log file, ours stay on the console,
and a failed stage tells the user where the full log is. Each case runs in a fresh interpreter (the
console configures the process's logging)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _run(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=ENV, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.timeout(150)
def test_quiet_console_sends_library_logs_to_the_file(tmp_path):
    r = _run(f"""
        import logging, sys, warnings
        # a library that configured its own console handler at import (as vLLM and Ray Data do)
        lib = logging.getLogger("vllm.engine")
        lib.addHandler(logging.StreamHandler(sys.stdout)); lib.setLevel(logging.INFO); lib.propagate = False
        from cwpo_ray import console
        console.setup({str(tmp_path / 'logs')!r}, verbose=False)
        lib.info("engine INFO line")
        logging.getLogger("ray.data").warning("ray data WARNING line")
        logging.getLogger("deepspeed.runtime").info("deepspeed INFO line")
        late = logging.getLogger("transformers.modeling")  # imported later, its own handler again
        late.addHandler(logging.StreamHandler(sys.stderr)); late.propagate = False
        console.route_library_logs()  # what every stage does first
        late.warning("transformers WARNING line")
        warnings.warn("a python warning")
        logging.getLogger("cwpo_ray.stage").info("our INFO line")
        logging.getLogger("cwpo_ray.stage").warning("our WARNING line")
        console.info("a progress line")
        print(console.stage_line("stage: first line\\n  detail\\n  WARNING: fallback used"))
        # setup imported DeepSpeed without its autotuner's mlflow import, and mlflow is importable as before
        from deepspeed.autotuning import autotuner
        assert autotuner.has_mlflow is False and "mlflow" not in sys.modules, sys.modules.get("mlflow")
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["stage: first line", "  WARNING: fallback used"], r.stdout
    assert r.stderr.strip().splitlines() == ["WARNING: our WARNING line"], r.stderr
    log = (tmp_path / "logs" / "driver.log").read_text()
    for line in ("engine INFO line", "ray data WARNING line", "deepspeed INFO line", "transformers WARNING line",
                 "a python warning", "our INFO line", "our WARNING line", "a progress line"):
        assert line in log, line


@pytest.mark.timeout(150)
def test_verbose_console_keeps_everything_on_screen(tmp_path):
    r = _run("""
        import logging
        from cwpo_ray import console
        console.setup(None, verbose=True)
        logging.getLogger("ray.data").info("ray data INFO line")
        console.info("a progress line")
        print(console.stage_line("stage: first line\\n  detail"))
        print(console.forward_worker_logs())
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["a progress line", "stage: first line", "  detail", "True"]
    assert "ray data INFO line" in r.stderr
    assert not (tmp_path / "cwpo-logs").exists()


@pytest.mark.timeout(150)
def test_failed_stage_prints_one_line_and_the_log_path(tmp_path):
    """An exception inside a stage: the console gets its type, message and the log's path; the log
    file gets the traceback. With --verbose the exception propagates as before."""
    code = """
        import sys
        from cwpo_ray import cli
        def boom(cfg):
            raise RuntimeError("worker died: out of memory\\nsecond line of the message")
        cli.STAGES["prepare"] = (*cli.STAGES["prepare"][:1], "__main__:boom", *cli.STAGES["prepare"][2:])
        sys.exit(cli.main(["prepare", "output_dir=out", *sys.argv[1:]]))
    """
    r = _run(code, tmp_path)
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()
    assert err[0] == "prepare failed: RuntimeError: worker died: out of memory", r.stderr
    assert err[1].strip().startswith(f"full log: {tmp_path / 'out' / 'logs' / 'driver.log'}") and len(err) == 2
    log = (tmp_path / "out" / "logs" / "driver.log").read_text()
    assert "Traceback" in log and "second line of the message" in log
    v = subprocess.run([sys.executable, "-c", textwrap.dedent(code), "--verbose"], cwd=tmp_path, env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert v.returncode == 1 and "Traceback" in v.stderr and "RuntimeError: worker died" in v.stderr
