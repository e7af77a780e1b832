"""The vLLM scorer backend (pooling runner, raw logits) agrees with the HF backend on a tiny Qwen2."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    from cwpo_ray.annotator.scoring import VLLMScorer

    if __name__ == "__main__":
        model, ids_path, out_path = sys.argv[1:4]
        ids = json.load(open(ids_path))
        scorer = VLLMScorer(model, max_length=128, dtype="float32", enforce_eager=True)
        json.dump(scorer.score_ids(ids).tolist(), open(out_path, "w"))
""")


@pytest.mark.timeout(300)
def test_vllm_backend_matches_hf_backend(synthetic_assets, tmp_path):
    import torch

    from cwpo_ray.annotator.scoring import HFScorer, encode_texts, load_scorer_model, load_tokenizer
    from cwpo_ray.synthetic.models import TinyModelConfig, build_tiny_causal_lm
    from cwpo_ray.synthetic.task import SyntheticTask, SyntheticTaskConfig

    # A tiny Qwen2ForSequenceClassification with a non-trivial (seeded) head. vLLM's CPU attention
    # supports head sizes 32, 64, 80, … only: 2 heads of 32, the synthetic weak_base's shape.
    tok = load_tokenizer(synthetic_assets["tokenizer"])
    base, _ = build_tiny_causal_lm(TinyModelConfig(arch="qwen2", hidden_size=64, intermediate_size=128, num_layers=2,
                                                   num_heads=2, num_kv_heads=1), tok, tmp_path / "qwen2_base")
    torch.manual_seed(1)
    model = load_scorer_model(str(base), tok, dtype=torch.float32)
    torch.nn.init.normal_(model.score.weight, std=0.5)
    scorer_dir = tmp_path / "qwen2_scorer"
    model.save_pretrained(scorer_dir)
    tok.save_pretrained(scorer_dir)

    rows = SyntheticTask(SyntheticTaskConfig(num_pairs=32, seed=3)).rows()
    prompts = [r["prompt"] for r in rows] * 2
    responses = [r["response_a"] for r in rows] + [r["response_b"] for r in rows]
    ids, _ = encode_texts(tok, prompts, responses, 128)
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    (tmp_path / "score_vllm.py").write_text(SCRIPT)

    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_OMP_THREADS_BIND="nobind",
               OMP_NUM_THREADS="2", VLLM_CPU_KVCACHE_SPACE="1", PYTHONPATH=os.getcwd())
    shm_before = set(glob.glob("/dev/shm/psm_*") + glob.glob("/dev/shm/sem.mp-*"))
    try:
        proc = subprocess.run([sys.executable, str(tmp_path / "score_vllm.py"), str(scorer_dir), str(tmp_path / "ids.json"),
                               str(tmp_path / "vllm.json")], env=env, capture_output=True, text=True, timeout=280)
    finally:
        for f in set(glob.glob("/dev/shm/psm_*") + glob.glob("/dev/shm/sem.mp-*")) - shm_before:
            try:
                os.remove(f)
            except OSError:
                pass
    assert proc.returncode == 0, proc.stderr[-3000:]
    got_vllm = np.array(json.loads((tmp_path / "vllm.json").read_text()))

    hf = HFScorer(str(scorer_dir), dtype="float32", max_length=128).score_ids(ids)
    assert len(got_vllm) == len(hf) == 64
    assert np.std(hf) > 0.05  # scores are spread out, so agreement is not trivial
    # raw logits, not σ(logit): a sigmoid would squash everything into (0, 1)
    assert (hf < 0).any() or (hf > 1).any()
    np.testing.assert_allclose(got_vllm, hf, atol=1e-3, rtol=0)
