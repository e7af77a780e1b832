"""The paper-scale pipeline configs under jobs/configs/paper/ (base.yaml + datasets/<dataset>.yaml +
models/<pair>.yaml, overlaid with repeated --config) load as PipelineConfig for all 16 combinations and
match the paper's protocol and its Tables 7–9 (Afzali, Brbic, Jeon, ICLR 2026, Appendix G), except for the differences README.md lists.
Pure config loading: no Ray, no model or dataset download."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cwpo_ray.config import ConfigError, load_config
from cwpo_ray.pipeline import PipelineConfig

PAPER_DIR = Path(__file__).resolve().parent.parent / "jobs" / "configs" / "paper"
DATASETS = ("hh_rlhf", "tldr", "ultrafeedback", "shp")
PAIRS = (  # (models/ file stem, weak model, student model)
    ("opt-125m_to_opt-1.3b", "facebook/opt-125m", "facebook/opt-1.3b"),
    ("opt-125m_to_opt-13b", "facebook/opt-125m", "facebook/opt-13b"),
    ("qwen2.5-0.5b_to_qwen2.5-7b", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-7B"),
    ("qwen2.5-0.5b_to_qwen2.5-14b", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-14B"),
)
EXPECTED = {f"{ds}.{stem}": (ds, stem, weak, student) for ds in DATASETS for stem, weak, student in PAIRS}
GOLD = {
    "hh_rlhf": "Skywork/Skywork-Reward-V2-Llama-3.1-8B",
    "ultrafeedback": "Skywork/Skywork-Reward-V2-Llama-3.1-8B",
    "tldr": "OpenAssistant/reward-model-deberta-v3-large-v2",
    "shp": "stanfordnlp/SteamSHP-flan-t5-large",
}
SOURCES = {  # dataset -> (format, hf_dataset, hf_split)
    "hh_rlhf": ("hh_rlhf", "Anthropic/hh-rlhf", "train"),
    "tldr": ("tldr", "trl-lib/tldr-preference", "train"),
    "ultrafeedback": ("ultrafeedback", "HuggingFaceH4/ultrafeedback_binarized", "train_prefs"),
    "shp": ("shp", "stanfordnlp/SHP", "train"),
}
WEAK_SIZE = {"facebook/opt-125m": 0.125, "Qwen/Qwen2.5-0.5B": 0.5}
STUDENT_SIZE = {"facebook/opt-1.3b": 1.3, "facebook/opt-13b": 13, "Qwen/Qwen2.5-7B": 7, "Qwen/Qwen2.5-14B": 14}


def layers(dataset: str, stem: str) -> list[Path]:
    return [PAPER_DIR / "base.yaml", PAPER_DIR / "datasets" / f"{dataset}.yaml", PAPER_DIR / "models" / f"{stem}.yaml"]


def load_paper(name: str) -> PipelineConfig:
    dataset, stem, _, _ = EXPECTED[name]
    return load_config(PipelineConfig, layers(dataset, stem), [f"run_dir=runs/paper/{name}"])


def leaf_keys(data: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in data.items():
        out |= leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
    return out


def test_the_layer_files_exist():
    found = sorted(str(p.relative_to(PAPER_DIR)) for p in PAPER_DIR.rglob("*.yaml"))
    expected = ["base.yaml", *(f"datasets/{d}.yaml" for d in DATASETS), *(f"models/{s}.yaml" for s, _, _ in PAIRS)]
    assert found == sorted(expected), f"expected base + 4 dataset + 4 model-pair files, found {found}"
    assert (PAPER_DIR / "README.md").is_file()


def test_each_field_is_set_in_exactly_one_layer():
    """No layer overrides another (so the --config order does not matter and nothing is merged away
    silently), and every file of a layer sets the same fields."""
    keys = {p: leaf_keys(yaml.safe_load(p.read_text())) for p in PAPER_DIR.rglob("*.yaml")}
    base = keys[PAPER_DIR / "base.yaml"]
    ds = [keys[PAPER_DIR / "datasets" / f"{d}.yaml"] for d in DATASETS]
    pairs = [keys[PAPER_DIR / "models" / f"{s}.yaml"] for s, _, _ in PAIRS]
    assert all(k == ds[0] for k in ds) and all(k == pairs[0] for k in pairs)
    assert not (base & ds[0]) and not (base & pairs[0]) and not (ds[0] & pairs[0]), \
        (base & ds[0]) | (base & pairs[0]) | (ds[0] & pairs[0])


def test_run_dir_is_required_per_combination():
    """The per-combination run_dir is in no layer; forgetting it fails instead of sharing a default."""
    with pytest.raises(ConfigError, match="run_dir"):
        load_config(PipelineConfig, layers("tldr", "opt-125m_to_opt-1.3b"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_paper_config(name):
    dataset, _, weak, student = EXPECTED[name]
    cfg = load_paper(name)

    assert cfg.synthetic is None
    assert cfg.run_dir == f"runs/paper/{name}"

    # prepare: sources, weak tokenizer, token filter, labeled fraction
    fmt, hf_dataset, split = SOURCES[dataset]
    assert cfg.prepare.sources and all(
        (s.format, s.hf_dataset, s.hf_split) == (fmt, hf_dataset, split) for s in cfg.prepare.sources)
    if dataset == "hh_rlhf":
        assert sorted(s.hf_data_dir for s in cfg.prepare.sources) == ["harmless-base", "helpful-base"]
    if dataset == "shp":  # the paper's four subreddits
        assert sorted(s.hf_data_dir for s in cfg.prepare.sources) == ["askacademia", "askbaking", "askengineers", "askphilosophy"]
    assert cfg.prepare.tokenizer == weak
    # protocol: 512 (HH-RLHF), 1024 (TL;DR), 2048 (UltraFeedback); SHP: no filter stated, 512 = SteamSHP's input length (ours)
    assert cfg.prepare.max_length == {"hh_rlhf": 512, "tldr": 1024, "ultrafeedback": 2048, "shp": 512}[dataset]
    assert cfg.annotate.max_length == cfg.prepare.max_length  # annotate drops no pair the filter kept
    assert cfg.prepare.labeled_fraction == 0.3  # protocol

    # weak annotator is smaller than the student (same family)
    assert cfg.annotator.model == weak and cfg.sft.model == student
    assert WEAK_SIZE[weak] < STUDENT_SIZE[student]
    assert weak.split("/")[0] == student.split("/")[0]
    an = cfg.annotator  # Table 7: 5 epochs, lr 1e-5, batch 32 pairs per optimizer step (split over the workers), Adam
    assert (an.epochs, an.lr, an.batch_size * an.num_workers * an.grad_accum) == (5, 1e-5, 32)
    assert an.optimizer == "adamw" and an.weight_decay == 0.0  # Adam = AdamW without weight decay
    assert an.lora is None and not an.gradient_checkpointing  # Table 7: full fine-tune, no checkpointing
    assert an.max_length == cfg.prepare.max_length
    assert an.lr_scheduler == "constant_with_warmup" and an.warmup_ratio == 0.0

    # GPU settings
    assert cfg.annotator.use_gpu and cfg.annotator.precision == "bf16"
    assert cfg.annotate.gpus_per_actor == 1 and cfg.annotate.min_actors <= cfg.annotate.max_actors
    big = STUDENT_SIZE[student] > 7
    for stage in (cfg.sft, cfg.align):
        assert stage.use_gpu and stage.num_workers == 8
        assert stage.zero_stage == 2  # ours: LoRA trains in ZeRO 0-2
        assert stage.gradient_checkpointing  # Tables 8-9
        assert stage.optimizer == "paged_adamw_32bit"  # Tables 8-9
        assert (stage.lora.r, stage.lora.alpha, stage.lora.dropout) == (8, 16, 0.05)  # Tables 8-9
        assert (stage.lr_scheduler, stage.warmup_steps, stage.weight_decay) == ("cosine", 100, 0.05)  # Tables 8-9
        assert stage.max_prompt_length < stage.max_length == cfg.prepare.max_length

    # student initialisation (protocol): SFT on D_unlabeled's (x, y+) with the labels each method uses
    assert cfg.sft_data == "method_labels"
    # SFT (Table 9) and preference optimization (Table 8); batches read as the global batch of one device
    assert (cfg.sft.epochs, cfg.sft.lr) == (3, 1e-5)
    assert cfg.sft.batch_size * cfg.sft.num_workers * cfg.sft.grad_accum == (16 if big else 64)  # 4 x 4 above 7B, else 16 x 4
    al = cfg.align
    assert al.beta == 0.5 and al.lr == 5e-6 and al.rdpo_eps == 0.1  # rDPO epsilon: protocol
    assert al.batch_size * al.num_workers == 16 and al.grad_accum == 4  # 16 x 4 pairs per optimizer step
    assert al.epochs == 5  # Table 8
    assert al.model is None and al.reference is None  # reference = the SFT model (protocol)

    # methods
    m = cfg.methods
    assert set(m) == {"human-dpo", "cw-dpo", "ws-dpo", "human-dpo-30", "human-dpo-100", "top30-dpo", "cw-ipo", "cw-rdpo"}
    assert m["human-dpo"].labels == "human_unlabeled"  # Table 1 "Human": D_unlabeled with its human labels
    assert (m["cw-dpo"].labels, m["cw-dpo"].loss, m["cw-dpo"].weighting) == ("weak", "dpo", "confidence")
    assert (m["ws-dpo"].labels, m["ws-dpo"].weighting) == ("weak", "none")
    assert m["human-dpo-30"].labels == "human_labeled" and m["human-dpo-100"].labels == "human_all"
    assert m["top30-dpo"].weighting == "top_fraction" and m["top30-dpo"].top_fraction == 0.3
    assert (m["cw-ipo"].loss, m["cw-rdpo"].loss) == ("ipo", "rdpo")
    assert all(ms.beta is None for ms in m.values())  # every method uses align.beta

    # evaluation (protocol): gold reward per dataset, sampling temperature 0.95, 512 new tokens
    assert cfg.evaluate.gold.kind == ("steamshp" if dataset == "shp" else "hf") and cfg.evaluate.gold.model == GOLD[dataset]
    assert cfg.evaluate.sampling.temperature == 0.95 and cfg.evaluate.sampling.max_new_tokens == 512
    assert cfg.stages == ["prepare", "train-annotator", "annotate", "sft", "align", "evaluate"]
