"""The pipeline end to end on a small synthetic task: killed mid-stage, a re-run resumes; the same config
again on an object store (moto's S3 server) gives the same numbers and writes nothing locally."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cwpo_ray.config import ConfigError, load_config
from cwpo_ray.pipeline import DEMO_CONFIG, PipelineConfig

SMALL = [
    "synthetic.task.num_pairs=800", "synthetic.pretrain.num_texts=1024", "synthetic.pretrain.epochs=1",
    "annotator.epochs=2", "sft.epochs=1", "align.epochs=1",
    # two methods on the same weak labels: both align in one Ray Train job (one SFT model on the weak labels)
    "methods={cw-dpo: {labels: weak, weighting: confidence}, ws-dpo: {labels: weak, weighting: none}}", "evaluate.max_prompts=16",
    "evaluate.num_bootstrap=200", "generate.max_prompts=8",
    "sft_data=method_labels",  # the paper's initialisation: cw-dpo starts from an SFT model on its weak labels
]


def test_pipeline_config_checks_gold_on_real_data():
    with pytest.raises(ConfigError, match="gold"):
        load_config(PipelineConfig, DEMO_CONFIG, ["synthetic=null", "prepare.sources=[{format: tldr, path: x.jsonl}]"])


def test_stage_table_shows_each_stage_own_work_beside_its_wall_time():
    from cwpo_ray.pipeline import format_pipeline, stage_work
    from cwpo_ray.results import PipelineResult, SFTResult, StageRun

    sft = SFTResult.model_construct(worker_seconds={"process": 9.0, "model": 3.1, "reference": 0.0, "train": 10.24})
    assert stage_work(sft) == ("training steps", 10.2)
    align = SFTResult.model_construct(worker_seconds={"reference": 5.0, "train": 36.0})
    assert stage_work(align) == ("reference + training steps", 41.0)
    assert stage_work(SFTResult.model_construct(worker_seconds={})) == (None, None)  # a summary of an older version
    out = PipelineResult(run_dir="r", seconds=60.0, stages={
        "sft": StageRun(skipped=False, seconds=34.2, output="r/sft", work="training steps", work_seconds=10.2),
        "prepare": StageRun(skipped=True, seconds=0.1, output="r/data")})
    text = format_pipeline(out)
    assert "  sft                    34.2s    of which training steps 10.2s" in text
    assert "  prepare                skipped (up to date)\n" in text + "\n"


_RUNS: dict = {}


@pytest.mark.timeout(900)
def test_killed_pipeline_resumes_without_redoing_finished_stages(tmp_path):
    run = tmp_path / "run"
    _RUNS["killed_and_resumed"] = run
    cmd = [sys.executable, "-m", "cwpo_ray.cli", "demo", f"run_dir={run}", *SMALL]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    manifest = run / "manifest.json"
    deadline = time.time() + 600
    try:  # kill the whole process group once the SFT stage has started (annotate is recorded as done)
        while time.time() < deadline:
            if manifest.exists() and "annotate" in json.loads(manifest.read_text() or "{}"):
                time.sleep(3)
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(1)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    done = json.loads(manifest.read_text())
    assert {"synthesize", "prepare", "train-annotator", "annotate"} <= set(done)
    assert "evaluate" not in done
    first_fps = {k: v["fingerprint"] for k, v in done.items()}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for st in ("synthesize", "prepare", "train-annotator", "annotate"):
        assert f"{st}: up to date, skipped" in out.stdout
    final = json.loads(manifest.read_text())
    for st in ("synthesize", "prepare", "train-annotator", "annotate"):
        assert final[st]["fingerprint"] == first_fps[st]
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"cw-dpo", "ws-dpo"} and 0.0 <= metrics["methods"]["cw-dpo"]["gra"] <= 1.0
    assert (run / "eval" / "report.md").exists()
    # sft_data=method_labels: an SFT model on the weak labels' chosen responses, cw-dpo's start, reference and
    # GRA baseline; the common SFT model (human labels of the labeled split) is its second comparison
    assert final["sft/weak"]["summary"]["rows_used"] == final["annotate"]["summary"]["pairs"]
    assert final["sft"]["summary"]["rows_used"] != final["sft/weak"]["summary"]["rows_used"]
    assert final["align/cw-dpo"]["summary"]["base_model"] == str(run / "sft_weak" / "model")
    # the two methods trained in one Ray Train job, each with its own data weights, model and summary
    cw, ws = final["align/cw-dpo"]["summary"], final["align/ws-dpo"]["summary"]
    assert cw["job_runs"] == ws["job_runs"] == 2 and ws["weights_mean_weight"] == 1.0 > cw["weights_mean_weight"]
    assert final["sft"]["summary"]["job_runs"] == final["sft/weak"]["summary"]["job_runs"] == 2  # the SFT models too
    assert out.stdout.count("training steps of 2 runs in one job") == 2, out.stdout
    assert "trained in align/cw-dpo's job" in out.stdout and "trained in sft's job" in out.stdout
    assert metrics["compare_to"] == {"cw-dpo": "sft-weak", "ws-dpo": "sft-weak"}
    assert metrics["baselines"] == {"sft-weak": str(run / "sft_weak" / "model")}
    assert set(metrics["methods_vs_common"]) == {"cw-dpo", "ws-dpo"}
    assert set(metrics["generation"]) == {"sft", "sft-weak", "cw-dpo", "ws-dpo"}
    assert "vs the common SFT model" in out.stdout
    # a third run has nothing left to do
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("up to date, skipped") == 10, again.stdout[-2000:]


def _labels(run):
    import pyarrow.parquet as pq

    from cwpo_ray import io

    fs, path = io.resolve(io.join(str(run), "annotated", "preferences"))
    t = pq.read_table(path, filesystem=fs).sort_by("pair_id")
    return t.select(["pair_id", "chosen", "rejected", "score_chosen", "confidence"]).to_pydict()


@pytest.mark.timeout(900)
def test_same_config_on_s3_gives_identical_numbers_and_writes_nothing_locally(s3_server, monkeypatch, tmp_path):
    """The resume test's config again, in a fresh process, with ``run_dir=s3://cwpo/run`` on a real S3 API
    (moto's server) and an empty working directory. It proves three things with one run:

    * determinism: labels, weights, every logged training loss and GRA equal the local run's bit for bit
      (that run was killed mid-SFT and resumed, so resuming changes no number either; nor does storage);
    * object-store run folders: every stage reads and writes the bucket (models through the node cache
      under $XDG_CACHE_HOME, vLLM's engines included), a re-run skips every stage and starts no Ray, and
      the working directory holds the console's logs only;
    * the quiet console: one line per stage, the results and the stage table (library logs in files).
    """
    from pathlib import Path

    from cwpo_ray import io
    from tests.s3 import aws_env

    first = _RUNS.get("killed_and_resumed")
    if first is None or not (first / "eval" / "metrics.json").exists():
        pytest.skip("needs the resume test's finished run (same module, runs first)")
    aws_env(monkeypatch, s3_server)
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    # without the `generate` showcase (nothing downstream reads it): every other stage's config is the same
    stages = ["prepare", "train-annotator", "annotate", "sft", "align", "evaluate"]
    cmd = [sys.executable, "-m", "cwpo_ray.cli", "demo", "run_dir=s3://cwpo/run", *SMALL, f"stages=[{', '.join(stages)}]"]
    runs = []
    for _ in range(2):
        t0 = time.time()
        out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=800)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        runs.append((out.stdout, time.time() - t0))
    print(f"\ns3 pipeline: first run {runs[0][1]:.0f}s, re-run {runs[1][1]:.0f}s (every stage skipped)")
    # the quiet console
    lines = runs[0][0].splitlines()
    assert len(lines) <= 40 and not any("RayTrainWorker" in ln or " INFO " in ln for ln in lines), runs[0][0]
    logs = cwd / "cwpo-logs"
    assert (logs / "driver.log").stat().st_size > 0 and (logs / "ray").is_symlink()
    # a re-run resumes every stage from the bucket and starts no Ray
    done = json.loads(io.read_text("s3://cwpo/run/manifest.json"))
    assert {"synthesize", "prepare", "train-annotator", "annotate", "sft", "sft/weak", "align/cw-dpo", "align/ws-dpo", "evaluate"} == set(done)
    for st in done:
        assert f"{st}: up to date, skipped" not in runs[0][0] and f"{st}: up to date, skipped" in runs[1][0], st
    assert (logs / "driver.log").read_text().count("starting a local Ray") == 1
    # the products are in the bucket; nothing in the working directory but the console's logs
    for f in ("synthetic/student_base/config.json", "data/labeled", "annotator/model/config.json", "annotator/reliability.png",
              "annotated/preferences", "annotated/confidence_hist.png", "sft_weak/model/config.json", "sft/ray_train",
              "align/cw-dpo/model/model.safetensors", "align/ws-dpo/model/model.safetensors", "eval/report.md", "eval/gra.png",
              "label_stats.json", "config.yaml"):
        assert io.exists(f"s3://cwpo/run/{f}"), f
    found = sorted(str(p.relative_to(cwd)) for p in Path(cwd).rglob("*"))
    assert found and all(p.startswith("cwpo-logs") for p in found), found
    assert len(os.listdir(home / ".cache" / "cwpo_ray" / "models")) >= 4  # downloaded models: the node cache
    # determinism: the same numbers as the local, killed-and-resumed run
    a, b = _labels(first), _labels("s3://cwpo/run")
    assert len(a["pair_id"]) > 100 and a == b  # weak labels and confidences (= cw-dpo's weights), bit for bit
    ma = json.loads((first / "eval" / "metrics.json").read_text())
    mb = json.loads(io.read_text("s3://cwpo/run/eval/metrics.json"))
    assert ma["methods"] == mb["methods"]  # GRA, ties, CIs, gains of both methods
    assert ma["mean_gold"] == mb["mean_gold"]
    # wall-clock measurements and where the checkpoint is, not results
    timings = ("throughput", "time", "timestamp", "reference_seconds", "checkpoint")
    strip = lambda rows: [{k: v for k, v in json.loads(x).items() if k not in timings and not k.startswith("seconds_")}  # noqa: E731
                          for x in rows]
    for method in ("cw-dpo", "ws-dpo"):  # every logged training loss and margin
        la = (first / "align" / method / "metrics.jsonl").read_text().splitlines()
        lb = io.read_text(f"s3://cwpo/run/align/{method}/metrics.jsonl").splitlines()
        assert strip(la) == strip(lb), method
