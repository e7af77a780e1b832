"""The paper-scale pipeline configs under jobs/configs/paper/ load as PipelineConfig and match the paper's
stated defaults. Pure config loading: no Ray, no model or dataset download."""
from __future__ import annotations

from pathlib import Path

import pytest

from cwpo_ray.config import load_config
from cwpo_ray.pipeline import PipelineConfig

PAPER_DIR = Path(__file__).resolve().parent.parent / "jobs" / "configs" / "paper"
DATASETS = ("hh_rlhf", "tldr", "ultrafeedback")
PAIRS = (  # (file stem part, weak model, student model)
    ("opt-125m_to_opt-1.3b", "facebook/opt-125m", "facebook/opt-1.3b"),
    ("opt-125m_to_opt-13b", "facebook/opt-125m", "facebook/opt-13b"),
    ("qwen2.5-0.5b_to_qwen2.5-7b", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-7B"),
    ("qwen2.5-0.5b_to_qwen2.5-14b", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-14B"),
)
EXPECTED = {f"{ds}.{stem}.yaml": (ds, weak, student) for ds in DATASETS for stem, weak, student in PAIRS}
GOLD = {
    "hh_rlhf": "Skywork/Skywork-Reward-V2-Llama-3.1-8B",
    "ultrafeedback": "Skywork/Skywork-Reward-V2-Llama-3.1-8B",
    "tldr": "OpenAssistant/reward-model-deberta-v3-large-v2",
}
SOURCES = {  # dataset -> (format, hf_dataset, hf_split)
    "hh_rlhf": ("hh_rlhf", "Anthropic/hh-rlhf", "train"),
    "tldr": ("tldr", "trl-lib/tldr-preference", "train"),
    "ultrafeedback": ("ultrafeedback", "HuggingFaceH4/ultrafeedback_binarized", "train_prefs"),
}
WEAK_SIZE = {"facebook/opt-125m": 0.125, "Qwen/Qwen2.5-0.5B": 0.5}
STUDENT_SIZE = {"facebook/opt-1.3b": 1.3, "facebook/opt-13b": 13, "Qwen/Qwen2.5-7B": 7, "Qwen/Qwen2.5-14B": 14}


def test_the_twelve_files_exist():
    found = sorted(p.name for p in PAPER_DIR.glob("*.yaml"))
    assert found == sorted(EXPECTED), f"expected 3 datasets x 4 model pairs, found {found}"
    assert (PAPER_DIR / "README.md").is_file()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_paper_config(name):
    dataset, weak, student = EXPECTED[name]
    cfg = load_config(PipelineConfig, PAPER_DIR / name)

    assert cfg.synthetic is None
    assert cfg.run_dir == f"runs/paper/{name.removesuffix('.yaml')}"

    # prepare: sources, weak tokenizer, token filter, labeled fraction
    fmt, hf_dataset, split = SOURCES[dataset]
    assert cfg.prepare.sources and all(
        (s.format, s.hf_dataset, s.hf_split) == (fmt, hf_dataset, split) for s in cfg.prepare.sources)
    if dataset == "hh_rlhf":
        assert sorted(s.hf_data_dir for s in cfg.prepare.sources) == ["harmless-base", "helpful-base"]
    assert cfg.prepare.tokenizer == weak
    assert cfg.prepare.max_tokens == (1024 if dataset == "tldr" else 512)
    assert cfg.prepare.labeled_fraction == 0.3

    # weak annotator is smaller than the student (same family)
    assert cfg.annotator.model == weak and cfg.sft.model == student
    assert WEAK_SIZE[weak] < STUDENT_SIZE[student]
    assert weak.split("/")[0] == student.split("/")[0]
    an = cfg.annotator  # the paper's batch of 32 pairs per optimizer step, split over the workers
    assert (an.epochs, an.lr, an.batch_size * an.num_workers * an.grad_accum) == (5, 1e-5, 32)
    assert an.max_length == (1024 if dataset == "tldr" else 512)
    assert an.lr_scheduler == "constant_with_warmup" and an.warmup_ratio == 0.0

    # GPU settings
    assert cfg.annotator.use_gpu and cfg.annotator.precision == "bf16"
    assert cfg.annotate.gpus_per_actor == 1 and cfg.annotate.min_actors <= cfg.annotate.max_actors
    big = STUDENT_SIZE[student] > 7
    for stage in (cfg.sft, cfg.align):
        assert stage.use_gpu and stage.num_workers == 8
        assert stage.zero_stage == (3 if big else 2)
        if big:
            assert stage.gradient_checkpointing

    # SFT and preference optimization: the paper's stated defaults
    assert (cfg.sft.epochs, cfg.sft.lr, cfg.sft.lr_scheduler) == (3, 1e-5, "cosine")
    al = cfg.align
    assert al.beta == 0.5 and al.lr == 5e-6 and al.rdpo_eps == 0.1
    assert al.lr_scheduler == "cosine" and al.warmup_steps == 100 and al.weight_decay == 0.05
    assert al.batch_size * al.num_workers == 16 and al.grad_accum == 4  # 16 x 4 pairs per optimizer step
    assert al.model is None and al.reference is None  # reference = the SFT model

    # methods
    m = cfg.methods
    assert set(m) == {"cw-dpo", "ws-dpo", "human-dpo-30", "human-dpo-100", "top30-dpo", "cw-ipo", "cw-rdpo"}
    assert (m["cw-dpo"].labels, m["cw-dpo"].loss, m["cw-dpo"].weighting) == ("weak", "dpo", "confidence")
    assert (m["ws-dpo"].labels, m["ws-dpo"].weighting) == ("weak", "none")
    assert m["human-dpo-30"].labels == "human_labeled" and m["human-dpo-100"].labels == "human_all"
    assert m["top30-dpo"].weighting == "top_fraction" and m["top30-dpo"].top_fraction == 0.3
    assert (m["cw-ipo"].loss, m["cw-rdpo"].loss) == ("ipo", "rdpo")
    assert all(ms.beta is None for ms in m.values())  # every method uses align.beta

    # evaluation: gold reward per dataset, paper sampling
    assert cfg.evaluate.gold.kind == "hf" and cfg.evaluate.gold.model == GOLD[dataset]
    assert cfg.evaluate.sampling.temperature == 0.95 and cfg.evaluate.sampling.max_new_tokens == 512
    assert cfg.stages == ["prepare", "train-annotator", "annotate", "sft", "align", "evaluate"]
