"""`sft` and `align` for real: Ray Train TorchTrainer + DeepSpeed on 2 CPU workers, tiny student."""
from __future__ import annotations

import json
import os

import pytest
import torch

from cwpo_ray.config import ConfigError, build_config
from cwpo_ray.student.config import AlignConfig, SFTConfig

SMALL = {"max_length": 64, "max_prompt_length": 40, "batch_size": 16, "log_every_steps": 2}


@pytest.fixture(scope="module")
def preference_dir(prepared_data, tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cwpo_ray.schema import PREFERENCE_SCHEMA
    from tests.student_fixtures import preferences_from_prepared

    out = preferences_from_prepared(prepared_data["dir"], str(tmp_path_factory.mktemp("annotated")))
    bad = [  # what a buggy upstream could write: these must be quarantined with a reason, not trained on
        {"pair_id": "bad1", "prompt": " ", "chosen": "a", "rejected": "b", "confidence": 0.5},
        {"pair_id": "bad2", "prompt": "p", "chosen": "same", "rejected": "same", "confidence": 0.5},
        {"pair_id": "bad3", "prompt": "p", "chosen": "a", "rejected": "b", "confidence": float("nan")},
    ]
    pq.write_table(pa.Table.from_pylist(bad, schema=PREFERENCE_SCHEMA), f"{out}/part-00001.parquet")
    return out


@pytest.fixture(scope="module")
def sft_model(ray_session, synthetic_assets, prepared_data, tmp_path_factory):
    """SFT on the human-labeled split (PAIR_SCHEMA → chosen), ZeRO-0; optimizer paged_adamw_32bit, which
    on CPU workers is torch AdamW with a logged note (the loss must still fall)."""
    from cwpo_ray.student.sft import format_sft, run_sft
    from cwpo_ray.train.trainer import POLL_ENV
    from tests.student_fixtures import ControllerEnv

    out = str(tmp_path_factory.mktemp("sft"))
    cfg = build_config(SFTConfig, {**SMALL, "model": synthetic_assets["student_base"], "data_format": "pairs",
                                   "data_dir": os.path.join(prepared_data["dir"], "labeled"), "output_dir": out,
                                   "lr": 1e-3, "max_steps": 30, "zero_stage": 0, "warmup_steps": 0,
                                   "optimizer": "paged_adamw_32bit", "controller_poll_s": 0.5})
    s = run_sft(cfg, callbacks=[ControllerEnv(os.path.join(out, "controller_env.json"), (POLL_ENV,))])
    print(format_sft(s))
    return s


def test_config_fails_fast():
    with pytest.raises(ConfigError, match="beta"):
        build_config(AlignConfig, {"beta": 0})
    with pytest.raises(ConfigError, match="zero_stage"):
        build_config(AlignConfig, {"zero_stage": 4})
    with pytest.raises(ConfigError, match="weighting"):
        build_config(AlignConfig, {"weighting": "softmax"})
    with pytest.raises(ConfigError, match="needs annotator scores"):
        build_config(AlignConfig, {"data_format": "pairs", "weighting": "clip_delta"})
    with pytest.raises(ConfigError, match="fault_injection"):  # a test aid, not a production setting
        build_config(AlignConfig, {"fault_injection": {"step": 3}})
    c = build_config(AlignConfig, {})
    assert (c.beta, c.lr, c.batch_size, c.grad_accum, c.warmup_steps, c.weight_decay, c.lr_scheduler) == \
        (0.5, 5e-6, 16, 4, 100, 0.05, "cosine")  # the paper's defaults
    assert build_config(AlignConfig, {"loss": "ipo"}).reduction == "mean"
    with pytest.raises(ConfigError, match="optimizer"):
        build_config(AlignConfig, {"optimizer": "sgd"})
    import importlib.util

    from cwpo_ray.train.trainer import check_optimizer

    check_optimizer(build_config(AlignConfig, {"optimizer": "paged_adamw_32bit"}))  # CPU: falls back, no error
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ConfigError, match=r"^config error: optimizer: paged_adamw_32bit needs bitsandbytes"):
            check_optimizer(build_config(AlignConfig, {"optimizer": "paged_adamw_32bit", "use_gpu": True}))
    assert build_config(AlignConfig, {"loss": "ipo", "logprob_reduction": "sum"}).reduction == "sum"


def test_runs_share_a_job_only_with_the_same_worker_group_and_controller_settings():
    from cwpo_ray.train.trainer import can_share_job

    a = build_config(AlignConfig, {**SMALL, "model": "m"})
    assert can_share_job([a, a.model_copy(update={"beta": 0.5, "seed": 3})])
    for field, value in (("num_workers", 3), ("controller_poll_s", 2.0), ("resume", True)):
        assert not can_share_job([a, a.model_copy(update={field: value})]), field


def test_metrics_logger_appends_rows(tmp_path):
    """metrics.jsonl is append-only: one line per report, earlier lines never rewritten; a fresh run
    starts an empty file, a resumed one continues the old rows."""
    from cwpo_ray.train.trainer import MetricsLogger, read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    log = MetricsLogger(str(tmp_path), tensorboard=False)
    log.start(fresh=False)
    log.after_report(None, [{"step": 2, "loss": 1.0}], None)
    with open(tmp_path / "metrics.jsonl", "a") as f:  # a rewrite from memory would drop this line
        f.write('{"step": 99}\n')
    log.after_report(None, [{"step": 3, "loss": 0.5}], None)
    log.after_report(None, [], None)  # non-rank-0 / empty reports add nothing
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2, 99, 3]
    MetricsLogger(str(tmp_path), tensorboard=False).start(fresh=True)
    assert read_metrics(str(tmp_path)) == []


@pytest.mark.timeout(300)
def test_sft_lowers_response_nll(sft_model):
    from transformers import AutoModelForCausalLM

    s = sft_model
    assert s.steps == 30 and s.rows_used > 100 and s.rows_used + s.quarantined == s.rows_in
    assert s.last_loss < s.first_loss - 0.3
    # where the worker's time went (the pipeline's stage table shows the steps beside the stage's wall time)
    assert {"process", "model", "optimizer", "train"} <= set(s.worker_seconds) and 0 < s.worker_seconds["train"] < s.fit_seconds
    AutoModelForCausalLM.from_pretrained(s.model_dir)
    # controller_poll_s reached the Ray Train controller (it drains one report per poll), and only for this job
    from cwpo_ray.train.trainer import POLL_ENV

    seen = json.loads(open(os.path.join(os.path.dirname(s.model_dir), "controller_env.json")).read())
    assert seen == {POLL_ENV: "0.5"} and POLL_ENV not in os.environ


@pytest.mark.timeout(300)
def test_align_zero2_on_the_fly_loss_decreases(sft_model, preference_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from cwpo_ray.student.align import format_align, run_align

    cfg = build_config(AlignConfig, {**SMALL, "model": sft_model.model_dir, "data_dir": preference_dir,
                                     "output_dir": str(tmp_path), "zero_stage": 2, "lr": 3e-4, "grad_accum": 1,
                                     "warmup_steps": 0, "max_steps": 12, "weighting": "confidence",
                                     "tracking": {"kind": "mlflow", "tracking_uri": f"file://{tmp_path}/mlruns", "run_name": "t/align"}})
    s = run_align(cfg)
    print(format_align(s))
    assert s.steps == 12 and s.reference_mode == "on_the_fly"
    # tracked in MLflow (a local file store): config as params, every logged step live, results, metrics.jsonl
    from mlflow import MlflowClient

    c = MlflowClient(f"file://{tmp_path}/mlruns")
    (run,) = c.search_runs([c.get_experiment_by_name("cwpo").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "t/align" and run.data.params["beta"] == str(cfg.beta)
    assert [m.step for m in c.get_metric_history(run.info.run_id, "train/loss")] == [2, 4, 6, 8, 10, 12]
    assert run.data.metrics["final/last_loss"] == pytest.approx(s.last_loss)
    assert "metrics.jsonl" in [a.path for a in c.list_artifacts(run.info.run_id)]
    assert s.last_loss < s.first_loss
    assert s.last_reward_margin > s.first_reward_margin + 0.05
    assert s.last_weighted_pref_acc > s.first_weighted_pref_acc
    assert 0 < s.weights_mean_weight < 1
    assert s.quarantined == 3 and s.quarantine_reasons == {"empty_field:prompt": 1, "identical_responses": 1,
                                                                 "bad_confidence": 1}
    assert os.listdir(tmp_path / "quarantine")
    hist = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [h["step"] for h in hist if "loss" in h] == [2, 4, 6, 8, 10, 12]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
    student = AutoModelForCausalLM.from_pretrained(s.model_dir)
    ref = AutoModelForCausalLM.from_pretrained(sft_model.model_dir)
    moved = sum((a - b).abs().sum().item() for a, b in zip(student.parameters(), ref.parameters()))
    assert moved > 0


@pytest.mark.timeout(420)
def test_align_zero3_precomputed_resume_after_killed_worker_and_reload(sft_model, preference_dir, tmp_path):
    """ZeRO-3 + precomputed reference; rank 1 dies after step 3, the run resumes from the step-2
    checkpoint; the final save_pretrained weights equal the ZeRO-3 fp32 weights of the same step."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM

    from cwpo_ray.student.align import format_align, run_align
    from tests.student_fixtures import KillWorker

    cfg = build_config(AlignConfig, {**SMALL, "model": sft_model.model_dir, "data_dir": preference_dir,
                                     "output_dir": str(tmp_path), "zero_stage": 3, "lr": 3e-4, "grad_accum": 2,
                                     "batch_size": 8, "warmup_steps": 0, "max_steps": 6, "loss": "ipo",
                                     "weighting": "top_fraction", "top_fraction": 0.5,
                                     "reference_mode": "precomputed", "checkpoint_every_steps": 2,
                                     "max_failures": 1})
    s = run_align(cfg, worker_hooks=[KillWorker(step=3, rank=1)])
    print(format_align(s))
    assert s.resumed_from == 2 and s.steps == 6
    assert s.weights_nonzero_weight_fraction == pytest.approx(0.5, abs=0.05)
    assert os.listdir(tmp_path / "ref_logprobs")
    sd = get_fp32_state_dict_from_zero_checkpoint(s.checkpoint, tag="ds")
    student = AutoModelForCausalLM.from_pretrained(s.model_dir)
    compared = 0
    for name, p in student.state_dict().items():
        key = "lm." + name
        if key not in sd and name == "lm_head.weight":  # tied to embed_tokens
            continue
        assert torch.equal(p, sd[key].to(p.dtype)), name
        compared += 1
    assert compared >= len(student.state_dict()) - 1 > 10


@pytest.mark.timeout(420)
def test_several_align_runs_in_one_job_equal_separate_runs_and_survive_a_killed_worker(sft_model, preference_dir, tmp_path,
                                                                                        monkeypatch):
    """run_align_many: three runs in ONE Ray Train job (one worker group). The third is the first's config
    again and a worker dies in it, after the others finished: the job restarts, skips the finished runs
    (their models were exported as they reported) and trains the third from scratch, which must end with
    the first's numbers and weights: a run later in a job is a fresh run. The second's own config is honoured."""
    from transformers import AutoModelForCausalLM

    from cwpo_ray.student.align import format_align, run_align_many
    from tests.student_fixtures import KillWorker

    base = {**SMALL, "model": sft_model.model_dir, "data_dir": preference_dir, "zero_stage": 2, "lr": 3e-4,
            "warmup_steps": 0, "max_steps": 4, "weighting": "confidence", "reference_mode": "in_workers", "max_failures": 1}
    cfgs = {"a": build_config(AlignConfig, {**base, "output_dir": str(tmp_path / "a")}),
            "b": build_config(AlignConfig, {**base, "output_dir": str(tmp_path / "b"), "weighting": "none", "beta": 0.5}),
            # every pass through Ray Data (the others replay their shard from memory after the reference pass)
            "a-again": build_config(AlignConfig, {**base, "output_dir": str(tmp_path / "a-again"), "cache_shard_rows": 0})}
    from cwpo_ray.train import trainer

    real_fit_many = trainer.fit_many
    kill = KillWorker(step=3, rank=1, occurrence=3)  # rank 1's third step 3: run "a-again" (a fresh process: no more)
    monkeypatch.setattr(trainer, "fit_many", lambda task, runs, callbacks=None: real_fit_many(task, runs, callbacks, [kill]))
    out = run_align_many(cfgs)
    for s in out.values():
        print(format_align(s))
    assert [s.job_runs for s in out.values()] == [3, 3, 3] and {s.fit_seconds for s in out.values()} == {out["a"].fit_seconds}
    a, again, b = out["a"], out["a-again"], out["b"]
    assert a.steps == again.steps == b.steps == 4 and a.resumed_from == again.resumed_from == -1

    def by_step(s):  # the killed attempt's rows, then the fresh one's: the last row of each step
        return {h["step"]: {k: v for k, v in h.items() if k not in ("throughput", "time", "run")} for h in s.history}
    assert by_step(again) == by_step(a) and (again.last_loss, again.last_reward_margin) == (a.last_loss, a.last_reward_margin)
    ma, mg = (AutoModelForCausalLM.from_pretrained(x.model_dir) for x in (a, again))
    assert all(torch.equal(p, q) for p, q in zip(ma.parameters(), mg.parameters()))
    assert b.weighting == "none" and b.weights_mean_weight == 1.0 and a.weights_mean_weight < 1.0 and b.last_loss != a.last_loss
    assert {"process", "model", "reference", "optimizer", "train"} <= set(b.worker_seconds)
    # a replayed shard gives the same numbers (above); Ray Data passes: the reference pass only, or one more
    reads = {k: [json.loads(x) for x in open(tmp_path / k / "metrics.jsonl")][-1]["shard_reads"] for k in cfgs}
    assert reads == {"a": 1, "b": 1, "a-again": 2}, reads


def test_shard_passes_replay_the_first_complete_pass():
    from cwpo_ray.train.loop import ShardPasses

    opened = []

    def read(epoch):
        opened.append(epoch)
        return iter([{"x": [i, i + 1]} for i in range(0, 6, 2)])

    p = ShardPasses(read, keep=True)
    first = p(None)
    next(first)  # a pass that stops early keeps nothing
    assert p.kept is None
    assert list(p(0)) == list(read(None))[:] and p.kept is not None
    opened.clear()
    assert [list(p(e)) for e in (1, 2)] == [p.kept, p.kept] and opened == [] and p.reads == 2
    off = ShardPasses(read, keep=False)
    assert [len(list(off(e))) for e in (0, 1)] == [3, 3] and opened == [0, 1] and off.reads == 2 and off.kept is None


def test_reference_in_workers_equals_the_frozen_reference(synthetic_assets):
    """reference_mode=in_workers: the log-probs a worker caches from its shard before the first step are
    the ones the frozen reference (on_the_fly) gives for the same sequences of every training batch."""
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cwpo_ray.student.data import REF_COLUMNS
    from cwpo_ray.student.logprobs import SequenceLogprobs
    from cwpo_ray.train.tasks import AlignTask

    cfg = build_config(AlignConfig, {**SMALL, "model": synthetic_assets["student_base"], "batch_size": 4,
                                     "reference_mode": "in_workers", "bucket_window": 2})
    tok = AutoTokenizer.from_pretrained(cfg.model)
    module = SequenceLogprobs(AutoModelForCausalLM.from_pretrained(cfg.model), cfg.logprob_chunk_size).train()
    n = 21
    shard = [{"pair_id": np.array([f"p{i}" for i in range(s, min(s + 8, n))], dtype=object),
              "prompt": np.array([f"question {i} about{' x' * (i % 5)}" for i in range(s, min(s + 8, n))], dtype=object),
              "chosen": np.array([f"answer {i}{' yes' * (i % 3)}" for i in range(s, min(s + 8, n))], dtype=object),
              "rejected": np.array([f"no {i}" for i in range(s, min(s + 8, n))], dtype=object),
              "weight": np.ones(min(s + 8, n) - s, dtype=np.float32)} for s in range(0, n, 8)]
    task = AlignTask(reference_in_workers=True)
    assert task.frozen_model(cfg, module.lm, torch.float32) is None  # no frozen copy beside the policy
    assert task.reference_from_shard(cfg, module, tok, iter(shard), torch.device("cpu"), torch.float32) == n
    assert module.training  # left as it was found
    seen = 0
    for batch in task.batches(cfg, tok, iter(shard), epoch=1):  # length-bucketed: other groupings than the pass
        with torch.no_grad():
            logp, ntok = module.eval()(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        B = batch["weight"].shape[0]
        torch.testing.assert_close(torch.cat([batch["ref_chosen_logp"], batch["ref_rejected_logp"]]), logp.float(),
                                   rtol=1e-5, atol=1e-4)
        assert torch.equal(torch.cat([batch["chosen_ntok"], batch["rejected_ntok"]]), ntok.float())
        assert set(REF_COLUMNS) <= set(batch)
        seen += B
    assert seen == n
    with pytest.raises(ConfigError, match="in_workers"):
        build_config(AlignConfig, {"reference_mode": "in_workers", "zero_stage": 3})
