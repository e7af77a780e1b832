"""What differs between `train-annotator`, `sft` and `align` inside the one training loop.

A task is a small picklable object (a module-level class, so Ray sends it by reference) that the
worker loop (:class:`cwpo_ray.train.loop.Recipe`) asks for:

* ``load_tokenizer(cfg)``, ``load_model(cfg, tokenizer, dtype)``: the HF model to train;
  ``trained_module(cfg, hf_model)``: the module DeepSpeed wraps (the HF model itself, or
  ``SequenceLogprobs`` around it); ``frozen_model(...)``: an optional frozen module the step uses
  (align's reference model); ``module_prefix``: where the HF weights sit in the trained module's
  state dict (ZeRO-3 consolidation); ``lora_task_type``: peft's task type.
* ``batches(cfg, tokenizer, row_batches, epoch)``: columnar batches from the worker's Ray Data shard →
  collated CPU tensors; ``read_batch_size(cfg)``: rows per read.
* ``step_fn(cfg, frozen)``: the pure step ``(model, batch) -> (loss, metrics)`` —
  :func:`~cwpo_ray.annotator.losses.bt_loss`, :func:`~cwpo_ray.student.steps.sft_loss`,
  :func:`~cwpo_ray.student.steps.align_loss`.

The final save is the loop's (``save_pretrained`` + tokenizer, LoRA merged, ZeRO-3 consolidated): the
annotator's folder loads with ``AutoModelForSequenceClassification``, the student's with
``AutoModelForCausalLM``.
"""
from __future__ import annotations

import functools


class BTTask:
    """`train-annotator`: a scalar-head sequence classifier, Bradley–Terry loss on (chosen, rejected)."""

    name = "bt"
    unit = "pairs"
    lora_task_type = "SEQ_CLS"
    module_prefix = ""  # DeepSpeed wraps the HF model itself
    log_keys = ("loss", "accuracy", "margin")

    @property
    def config_cls(self):
        from cwpo_ray.annotator.config import AnnotatorTrainConfig

        return AnnotatorTrainConfig

    def load_tokenizer(self, cfg):
        from cwpo_ray.annotator.scoring import load_tokenizer

        return load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code)

    def load_model(self, cfg, tokenizer, dtype):
        from cwpo_ray.annotator.scoring import load_scorer_model

        model = load_scorer_model(cfg.model, tokenizer, dtype=dtype, device="cpu", trust_remote_code=cfg.trust_remote_code)
        self.pad_id = model.config.pad_token_id  # the id the classifier looks for to find each text's last token
        return model

    def frozen_model(self, cfg, hf_model, dtype):
        return None

    def trained_module(self, cfg, hf_model):
        return hf_model

    def read_batch_size(self, cfg) -> int:
        return max(cfg.batch_size * 16, 256)

    def batches(self, cfg, tokenizer, row_batches, epoch: int):
        """[2B, L] right-padded batches: rows [0, B) chosen, [B, 2B) rejected (``prompt + response``,
        left-truncated to ``max_length`` so the scored last token survives)."""
        from cwpo_ray.annotator.scoring import encode_texts

        group: list = []
        for b in row_batches:
            prompts = [str(x) for x in b["prompt"]]
            ch, _ = encode_texts(tokenizer, prompts, [str(x) for x in b["chosen"]], cfg.max_length)
            rj, _ = encode_texts(tokenizer, prompts, [str(x) for x in b["rejected"]], cfg.max_length)
            for pair in zip(ch, rj):
                group.append(pair)
                if len(group) == cfg.batch_size:
                    yield self.collate(group)
                    group = []
        if group:
            yield self.collate(group)

    def collate(self, group: list) -> dict:
        from cwpo_ray.student.data import pad_batch

        input_ids, attention_mask, _ = pad_batch([c for c, _ in group] + [r for _, r in group], self.pad_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def batch_items(self, batch) -> int:
        return batch["input_ids"].shape[0] // 2

    def step_fn(self, cfg, frozen):
        from cwpo_ray.annotator.losses import bt_loss

        return bt_loss


class _StudentTask:
    """A causal LM wrapped in :class:`~cwpo_ray.student.logprobs.SequenceLogprobs`, length-bucketed batches."""

    lora_task_type = "CAUSAL_LM"
    module_prefix = "lm."  # SequenceLogprobs.lm
    pairs = True

    def load_tokenizer(self, cfg):
        from transformers import AutoTokenizer

        from cwpo_ray.io import local_model_dir

        return AutoTokenizer.from_pretrained(local_model_dir(cfg.tokenizer or cfg.model), trust_remote_code=cfg.trust_remote_code)

    def load_model(self, cfg, tokenizer, dtype, name: str | None = None):
        from transformers import AutoModelForCausalLM

        from cwpo_ray.io import local_model_dir

        return AutoModelForCausalLM.from_pretrained(local_model_dir(name or cfg.model), dtype=dtype,
                                                    trust_remote_code=cfg.trust_remote_code)

    def frozen_model(self, cfg, hf_model, dtype):
        return None

    def trained_module(self, cfg, hf_model):
        from cwpo_ray.student.logprobs import SequenceLogprobs

        return SequenceLogprobs(hf_model, cfg.logprob_chunk_size)

    def read_batch_size(self, cfg) -> int:
        return cfg.batch_size * cfg.bucket_window

    ref_cache: dict | None = None  # pair_id -> REF_COLUMNS values (align, reference_mode=in_workers)

    def batches(self, cfg, tokenizer, row_batches, epoch: int):
        from cwpo_ray.student.data import REF_COLUMNS, PairEncoder, collate_pairs, collate_sft, encode_rows, length_buckets

        enc = PairEncoder(tokenizer, cfg.max_length, cfg.max_prompt_length)
        rows = (r for b in row_batches for r in encode_rows(b, enc, with_rejected=self.pairs))
        if self.ref_cache is not None:
            rows = ({**r, **dict(zip(REF_COLUMNS, self.ref_cache[str(r["pair_id"])]))} for r in rows)
        collate = collate_pairs if self.pairs else collate_sft
        for group in length_buckets(rows, cfg.batch_size, cfg.bucket_window, seed=cfg.seed + epoch):
            yield collate(group, enc.pad, cfg.pad_to_multiple_of)

    def batch_items(self, batch) -> int:
        return batch["input_ids"].shape[0] // (2 if self.pairs else 1)


class SFTTask(_StudentTask):
    """`sft`: response-token NLL on (prompt, chosen)."""

    name = "sft"
    unit = "seqs"
    pairs = False
    log_keys = ("loss",)

    @property
    def config_cls(self):
        from cwpo_ray.student.config import SFTConfig

        return SFTConfig

    def step_fn(self, cfg, frozen):
        from cwpo_ray.student.steps import sft_loss

        return sft_loss


class AlignTask(_StudentTask):
    """`align`: confidence-weighted DPO / IPO / rDPO against a frozen reference, run on the fly (a
    frozen copy, ZeRO-3-sharded like the policy when zero_stage=3) or read from precomputed columns."""

    name = "align"
    unit = "pairs"
    log_keys = ("loss", "reward_margin", "pref_acc")

    def __init__(self, has_ref_columns: bool = False, reference_in_workers: bool = False):
        self.has_ref_columns = has_ref_columns
        self.reference_in_workers = reference_in_workers

    @property
    def config_cls(self):
        from cwpo_ray.student.config import AlignConfig

        return AlignConfig

    def frozen_model(self, cfg, hf_model, dtype):
        import copy

        from cwpo_ray.student.logprobs import SequenceLogprobs

        if self.has_ref_columns or self.reference_in_workers:
            return None
        same = not cfg.reference or cfg.reference == cfg.model
        ref = copy.deepcopy(hf_model) if same else self.load_model(cfg, None, dtype, name=cfg.reference)
        ref.requires_grad_(False).eval()
        return SequenceLogprobs(ref, cfg.logprob_chunk_size)

    def reference_from_shard(self, cfg, module, tokenizer, row_batches, device, dtype) -> int:
        """reference_mode=in_workers: the reference log-probs of every pair of this worker's shard, before
        the first step, kept by pair_id for :meth:`batches`. The reference is ``module`` itself (the
        untrained policy: the SFT model) unless ``cfg.reference`` names another model. Returns the pairs."""
        from cwpo_ray.student.align import score_reference
        from cwpo_ray.student.data import REF_COLUMNS, PairEncoder, encode_rows
        from cwpo_ray.student.logprobs import SequenceLogprobs

        ref = module
        if cfg.reference and cfg.reference != cfg.model:
            ref = SequenceLogprobs(self.load_model(cfg, None, dtype, name=cfg.reference), cfg.logprob_chunk_size)
        was_training = ref.training
        ref.to(device).eval()
        enc = PairEncoder(tokenizer, cfg.max_length, cfg.max_prompt_length)
        cache: dict = {}
        for b in row_batches:  # one read batch at a time: only four numbers per pair are kept
            rows = encode_rows(b, enc)
            out = score_reference(ref, rows, enc.pad, cfg.batch_size, device)
            cache.update((str(r["pair_id"]), tuple(out[c][i] for c in REF_COLUMNS)) for i, r in enumerate(rows))
        ref.train(was_training)
        self.ref_cache = cache
        return len(cache)

    def step_fn(self, cfg, frozen):
        from cwpo_ray.student.steps import align_loss

        return functools.partial(align_loss, loss_type=cfg.loss, beta=cfg.beta, reduction=cfg.reduction,
                                 rdpo_eps=cfg.rdpo_eps, normalize_weights=cfg.normalize_weights, reference=frozen)


TASKS = {"bt": BTTask, "sft": SFTTask, "align": AlignTask}
