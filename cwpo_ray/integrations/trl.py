"""CW-PO inside TRL: ``WeightedDPOTrainer`` is TRL's ``DPOTrainer`` minimising mean_i(w_i · ℓ_i).

TRL (>= 1.16) reduces its per-pair DPO losses with a plain mean (TRL issue #5613 asks for a per-sample
weight). This subclass keeps TRL's data pipeline, forward pass and reference (``ref_model``,
``precompute_ref_log_probs``, or the PEFT adapter disabled: TRL's own ``compute_ref_log_probs``) and changes
only the per-pair loss and its reduction:

    L = mean_i(w_i · ℓ_i)        (:func:`~cwpo_ray.student.losses.weighted_mean`)

ℓ is our :func:`~cwpo_ray.student.losses.preference_loss`, TRL's loss types mapped to ours:

    sigmoid → dpo    summed log-probs
    ipo     → ipo    log-ratios divided by the completion's token count (TRL's IPO; our reduction "mean")
    robust  → rdpo   ε = ``label_smoothing``

w_i is a dataset column (``weight_column``) or one of our weighting schemes computed from the annotator's
``confidence`` (the delta schemes: ``score_chosen − score_rejected``) exactly as `cwpo align` does. With
every w_i = 1 the loss is TRL's.

    from trl import DPOConfig
    from cwpo_ray.integrations.trl import WeightedDPOTrainer, load_preferences

    ds = load_preferences("runs/demo/annotated/preferences")     # prompt, chosen, rejected, confidence, weight
    WeightedDPOTrainer(model=lm, args=DPOConfig(...), train_dataset=ds, processing_class=tok, weight_column="weight").train()
"""
from __future__ import annotations

import functools
import inspect
import logging
from collections import Counter

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset
from packaging.version import Version

from cwpo_ray.config import TOP_FRACTION, Weighting
from cwpo_ray.student.data import add_weights, validate_preferences
from cwpo_ray.student.logprobs import reduce_logprobs
from cwpo_ray.student.losses import WEIGHTINGS, preference_loss, top_fraction_threshold, weighted_mean

try:
    import trl
    from trl import DPOTrainer
except ImportError:  # require_trl below says what to install
    trl = None

log = logging.getLogger(__name__)

MIN_TRL = "1.16"
# TRL loss_type -> (our per-pair loss, log-prob reduction of the log-ratios)
LOSS_TYPES = {"sigmoid": ("dpo", "sum"), "ipo": ("ipo", "mean"), "robust": ("rdpo", "sum")}
WEIGHT = "weight"  # the dataset column and batch key carrying w_i
_NON_MODEL_KEYS = ("completion_mask", "ref_chosen_logps", "ref_rejected_logps", WEIGHT)


def require_trl(version: str | None) -> None:
    """One-line ImportError unless TRL >= 1.16 is installed (``version``: its ``__version__``, None if absent)."""
    if version is None:
        raise ImportError(f"cwpo_ray.integrations.trl needs trl>={MIN_TRL}, which is not installed: pip install 'cwpo-ray[trl]'")
    if Version(version) < Version(MIN_TRL):
        raise ImportError(f"cwpo_ray.integrations.trl needs trl>={MIN_TRL}, found trl {version}: pip install 'cwpo-ray[trl]'")


require_trl(getattr(trl, "__version__", None))


def check_weights(w: np.ndarray, where: str, rows) -> None:
    """Fail on the first weight that is negative or not finite, naming its row."""
    bad = ~(np.isfinite(w) & (w >= 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"WeightedDPOTrainer: {where} row {rows[i]}: weight {w[i]} is negative or not finite (weights must be finite and >= 0)")


def _numbers(batch: dict, column: str, where: str) -> np.ndarray:
    try:
        return np.asarray(batch[column], dtype=np.float64)  # None -> nan
    except (TypeError, ValueError):
        raise ValueError(f"WeightedDPOTrainer: {where} column {column!r} is not numeric") from None


def _weight_batch(batch: dict, rows: list[int], *, column: str | None, scheme: str, threshold: float | None, where: str) -> dict:
    """Batched ``datasets.map`` function: this batch's ``weight`` (float32), from ``column`` or computed with
    :func:`~cwpo_ray.student.data.add_weights` for ``scheme``; checked finite and >= 0."""
    if column is not None:
        w = _numbers(batch, column, where)
    else:
        cols = {c: _numbers(batch, c, where) for c in ("confidence", "score_chosen", "score_rejected") if c in batch}
        finite = np.isfinite(cols["confidence"])  # top_fraction / none would turn a bad confidence into 0 / 1
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            raise ValueError(f"WeightedDPOTrainer: {where} row {rows[i]}: confidence {cols['confidence'][i]} is not finite")
        w = add_weights(pa.table(cols), scheme, threshold).column(WEIGHT).to_numpy()
    check_weights(w, where, rows)
    return {WEIGHT: w.astype(np.float32)}


def _columns(ds) -> list[str]:
    return list(ds.column_names or next(iter(ds)).keys())  # an IterableDataset may not know its columns


def _confidence(ds) -> np.ndarray:
    rows = ds.select_columns(["confidence"])
    values = rows["confidence"] if isinstance(rows, Dataset) else (r["confidence"] for r in rows)
    return np.asarray(list(values), dtype=np.float64)


def _check_args(args) -> None:
    """One-line errors for the DPOConfig options whose per-pair weighted form is not implemented here."""
    if args is None:  # TRL's default DPOConfig: sigmoid, reverse_kl
        return
    types = list(args.loss_type)
    if len(types) != 1 or types[0] not in LOSS_TYPES:
        raise ValueError(f"WeightedDPOTrainer: loss_type must be one of {sorted(LOSS_TYPES)} (a single one), got {types}")
    if args.f_divergence_type != "reverse_kl":
        raise ValueError(f"WeightedDPOTrainer: f_divergence_type={args.f_divergence_type!r} is not supported (reverse_kl only)")
    if args.ld_alpha is not None:
        raise ValueError(f"WeightedDPOTrainer: ld_alpha={args.ld_alpha} (LD-DPO) is not supported; leave it None")
    if args.use_weighting:
        raise ValueError("WeightedDPOTrainer: use_weighting=True (WPO weights) is not supported; the weights are the dataset's")
    if types[0] == "robust" and not 0.0 <= args.label_smoothing < 0.5:
        raise ValueError(f"WeightedDPOTrainer: loss_type robust needs label_smoothing (rDPO's ε) in [0, 0.5), got {args.label_smoothing}")


def _moe_aux_loss(model, args) -> bool:
    """TRL's rule (DPOTrainer.__init__): an MoE model's load-balancing loss is added unless its coefficient is 0."""
    cfg = model.config.get_text_config()
    coef = getattr(args, "router_aux_loss_coef", None)
    coef = getattr(cfg, "router_aux_loss_coef", 0.0) if coef is None else coef
    return hasattr(cfg, "output_router_logits") and coef != 0.0


class WeightCollator:
    """Wraps a preference collator: the batch also carries ``weight`` [B] (float32), one per pair."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collator(examples)
        w = np.asarray([e[WEIGHT] for e in examples], dtype=np.float32)
        check_weights(w, "batch", range(len(w)))
        batch[WEIGHT] = torch.from_numpy(w)
        return batch


class WeightedDPOTrainer(DPOTrainer):
    """TRL's ``DPOTrainer`` with the CW-PO loss mean_i(w_i · ℓ_i), for ``loss_type`` sigmoid, ipo or robust.

    ``weight_column``: a numeric column holding w_i (finite, >= 0). When None, w_i is computed with
    ``weighting`` (:data:`~cwpo_ray.config.Weighting`) from ``confidence`` (the delta schemes also read
    ``score_chosen`` / ``score_rejected``); ``top_fraction``'s threshold is decided over the whole training
    dataset and reused for the evaluation datasets. ``normalize_weights``: Σ w·ℓ / Σ w per batch instead.
    Every other argument, the data formats and the reference handling are TRL's. Logs TRL's reward and
    log-prob metrics plus ``weights/mean``.
    """

    def __init__(self, *args, weighting: Weighting = "confidence", weight_column: str | None = None,
                 top_fraction: float = TOP_FRACTION, normalize_weights: bool = False, **kwargs):
        given = inspect.signature(DPOTrainer.__init__).bind(self, *args, **kwargs).arguments
        if weight_column is None and weighting not in WEIGHTINGS:
            raise ValueError(f"WeightedDPOTrainer: unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
        if weight_column is None and weighting == "top_fraction" and not 0.0 < top_fraction <= 1.0:
            raise ValueError(f"WeightedDPOTrainer: top_fraction must be in (0, 1], got {top_fraction}")
        self.weighting, self.weight_column, self.top_fraction = weighting, weight_column, top_fraction
        self.normalize_weights = normalize_weights
        self._threshold: float | None = None  # top_fraction's, set by the training dataset
        _check_args(given.get("args"))
        model = given.get("model")
        if model is not None and not isinstance(model, str) and _moe_aux_loss(model, given.get("args")):
            raise ValueError("WeightedDPOTrainer: the MoE load-balancing loss has no per-pair form; set router_aux_loss_coef=0.0")
        for name in ("train_dataset", "eval_dataset"):
            ds = given.get(name)
            for key, d in ds.items() if isinstance(ds, dict) else [(name, ds)]:
                if d is not None:
                    self._check_columns(d, key)
        super().__init__(*args, **kwargs)
        if self.aux_loss_enabled:  # a model given by name, seen only now
            raise ValueError("WeightedDPOTrainer: the MoE load-balancing loss has no per-pair form; set router_aux_loss_coef=0.0")
        self.data_collator = WeightCollator(self.data_collator)

    def _check_columns(self, ds, name: str) -> None:
        cols = _columns(ds)
        if "image" in cols or "images" in cols:
            raise ValueError(f"WeightedDPOTrainer: {name} is a vision dataset ('image'/'images'), which is not supported")
        need = ["prompt", "chosen", "rejected"]
        if self.weight_column is not None:
            need.append(self.weight_column)
        else:
            need += ["confidence", *(("score_chosen", "score_rejected") if self.weighting.endswith("delta") else ())]
        missing = [c for c in need if c not in cols]
        if missing:
            raise ValueError(f"WeightedDPOTrainer: {name} has no column {', '.join(map(repr, missing))} (columns: {cols})")
        if WEIGHT in cols and self.weight_column != WEIGHT:
            raise ValueError(f"WeightedDPOTrainer: {name} already has a {WEIGHT!r} column: pass weight_column={WEIGHT!r} "
                             "to train with it, or drop it")

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """Add the checked ``weight`` column, then TRL's preparation (which keeps extra columns)."""
        self._check_columns(dataset, dataset_name)
        if self.weight_column is None and self.weighting == "top_fraction" and self._threshold is None:  # TRL prepares train first
            self._threshold = top_fraction_threshold(_confidence(dataset), self.top_fraction)
        fn = functools.partial(_weight_batch, column=self.weight_column, scheme=self.weighting, threshold=self._threshold,
                               where=dataset_name)
        kw = {"desc": f"Weighting {dataset_name} dataset"} if isinstance(dataset, Dataset) else {}
        dataset = dataset.map(fn, batched=True, with_indices=True, **kw)
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()  # so that remove_unused_columns keeps the weight
        if WEIGHT not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, WEIGHT]

    def compute_ref_log_probs(self, model, inputs):
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k != WEIGHT})

    def _compute_loss(self, model, inputs, return_outputs):
        """TRL's policy forward and reference log-probs, then our per-pair loss reduced with the pair weights."""
        mode = "train" if self.model.training else "eval"
        kind, reduction = LOSS_TYPES[self.loss_types[0]]
        completion_mask = inputs["completion_mask"]
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        logps = outputs.log_probs[:, -(completion_mask.size(1) - 1):].sum(dim=1)  # [2B]: chosen rows, then rejected
        if self.precompute_ref_logps:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = self.compute_ref_log_probs(self.ref_model if self.ref_model is not None else self.model, inputs)
        logratios = logps - torch.cat([ref_chosen, ref_rejected])
        ratio = reduce_logprobs(logratios, completion_mask.sum(dim=1), reduction)  # "mean": / completion tokens, as TRL's IPO
        n = ratio.shape[0] // 2
        losses = preference_loss(kind, ratio[:n] - ratio[n:], self.beta, self.label_smoothing)
        weight = inputs[WEIGHT].to(losses.device)
        loss = weighted_mean(losses, weight, self.normalize_weights) * self.loss_weights[0]

        # TRL's metrics (rewards from the summed log-ratios, as TRL logs them for every loss type) + the weights
        metrics = self._metrics[mode]
        mean = lambda x: self.accelerator.gather(x).float().mean().item()
        chosen_rewards, rejected_rewards = (self.beta * logratios.detach()).chunk(2)
        metrics["rewards/chosen"].append(mean(chosen_rewards))
        metrics["rewards/rejected"].append(mean(rejected_rewards))
        metrics["rewards/accuracies"].append(mean((chosen_rewards > rejected_rewards).float()))
        metrics["rewards/margins"].append(mean(chosen_rewards - rejected_rewards))
        chosen_logps, rejected_logps = logps.detach().chunk(2)
        metrics["logps/chosen"].append(mean(chosen_logps))
        metrics["logps/rejected"].append(mean(rejected_logps))
        metrics["weights/mean"].append(mean(weight))
        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]

        if return_outputs:  # TRL's deprecated path: logits for compute_metrics, from an extra forward
            with torch.no_grad():
                return loss, model(**model_kwargs)
        return loss


def load_preferences(path: str, weighting: Weighting | None = "confidence", top_fraction: float = TOP_FRACTION,
                     drop_bad: bool = False) -> Dataset:
    """`annotate`'s ``{output_dir}/preferences`` (PREFERENCE_SCHEMA parquet: a folder or one file, local or
    URI) as a ``datasets.Dataset`` for TRL: pair_id, prompt, chosen, rejected, score_chosen, score_rejected,
    confidence (those present; the first four and confidence are required) and, unless ``weighting`` is None,
    ``weight`` (:func:`~cwpo_ray.student.data.add_weights`; ``top_fraction``'s threshold over all rows).

    Unusable rows (:func:`~cwpo_ray.student.data.validate_preferences`: bad text, confidence outside
    [0, 1], scores missing for the delta schemes) raise ValueError, or with ``drop_bad`` are dropped and
    counted by reason in a warning.
    """
    import pyarrow.parquet as pq

    from cwpo_ray import io

    if weighting is not None and weighting not in WEIGHTINGS:
        raise ValueError(f"load_preferences: unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
    fs, local = io.resolve(path)
    table = pq.read_table(local, filesystem=fs)
    needs_scores = weighting is not None and weighting.endswith("delta")
    need = ["prompt", "chosen", "rejected", "confidence", *(("score_chosen", "score_rejected") if needs_scores else ())]
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise ValueError(f"load_preferences: {path} has no column {', '.join(map(repr, missing))} "
                         "(expected PREFERENCE_SCHEMA, as `cwpo annotate` writes)")
    keep = ["pair_id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected", "confidence"]
    table, bad = validate_preferences(table.select([c for c in keep if c in table.column_names]), needs_scores)
    if bad.num_rows:
        reasons = dict(Counter(bad.column("reason").to_pylist()))
        if not drop_bad:
            raise ValueError(f"load_preferences: {path}: {bad.num_rows} unusable rows {reasons}; fix them or pass drop_bad=True")
        log.warning("load_preferences: %s: dropped %d unusable rows %s", path, bad.num_rows, reasons)
    if weighting is not None:
        conf = table.column("confidence").to_numpy(zero_copy_only=False)
        threshold = top_fraction_threshold(conf, top_fraction) if weighting == "top_fraction" else None
        table = add_weights(table, weighting, threshold)
    return Dataset(table)
