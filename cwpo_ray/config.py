"""Typed configs: pydantic models loaded from YAML with ``key=value`` overrides.

Every stage has exactly one config type (``extra="forbid"``): an unknown or invalid field fails at
once with a one-line message naming it, e.g. ``config error: annotator.lr: Input should be greater
than 0 (got -1)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# ---- one vocabulary: every config and core function uses these names ----------------------------------
Loss = Literal["dpo", "ipo", "rdpo"]  # the per-pair preference loss ℓ (student/losses.py)
# per-pair weight w of mean(w·ℓ) (student/losses.py): confidence = C1 = 2(σ(Δ)−½), none = 1 (WS-DPO),
# top_fraction = 1 on the most confident share else 0, sigmoid_delta = C2, clip_delta = C3, scaled_clip_delta = C4
Weighting = Literal["confidence", "none", "top_fraction", "sigmoid_delta", "clip_delta", "scaled_clip_delta"]
TOP_FRACTION = 0.3  # default share kept by weighting=top_fraction (the paper's top-30%)
# What a stage does with an input file it cannot read or whose schema lacks the needed columns:
# quarantine it whole (path + reason in the quarantine and the summary counts) and go on, or stop at once.
OnBadFile = Literal["quarantine", "fail"]


class ConfigError(ValueError):
    """A bad config; the message is one line that names the field."""


def require(cfg: BaseModel, *fields: str) -> None:
    """Fail fast, naming the field, when a stage is run without a path the pipeline would fill in."""
    for f in fields:
        if not getattr(cfg, f):
            raise ConfigError(f"config error: {f}: required")


class StrictModel(BaseModel):
    """Base of every config: unknown fields are errors, assignment is validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class RayConfig(StrictModel):
    """How to reach Ray: ``address`` (or $RAY_ADDRESS) for a cluster, else a light local Ray."""

    address: str | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    object_store_mb: int = 512


class LoraSettings(StrictModel):
    """Optional LoRA (peft) instead of full fine-tuning; merged into the base weights before the
    final ``save_pretrained``. Shared by the annotator and the student stages."""

    r: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | str = "all-linear"


class TrackingConfig(StrictModel):
    """Experiment tracking of a training or evaluation stage through MLflow's or W&B's own client
    (:mod:`cwpo_ray.tracking`): params, per-step metrics, final metrics, plots. ``none``: off."""

    kind: Literal["none", "mlflow", "wandb"] = "none"
    experiment: str = "cwpo"  # MLflow experiment / W&B project
    run_name: str | None = None  # default: the stage (in a pipeline: "<run folder>/<stage>")
    tracking_uri: str | None = None  # MLflow: file:///abs/mlruns or http://host:5000 (default: MLFLOW_TRACKING_URI / ./mlruns)
    mode: Literal["online", "offline"] = "online"  # W&B (offline: under {output_dir}/wandb, `wandb sync` later)
    entity: str | None = None  # W&B team / user
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _package_installed(cls, kind: str) -> str:
        import importlib.util

        if kind != "none" and importlib.util.find_spec(kind) is None:
            raise ValueError(f"{kind} needs the `{kind}` package (pip install 'cwpo-ray[tracking]'), or use kind=none")
        return kind


C = TypeVar("C", bound=BaseModel)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``a.b=value`` on a copy of ``data``. An override *replaces* the value at its key (a
    mapping given as a value is not merged into the one there: ``methods={cw-dpo: {...}}`` leaves
    exactly that method); use dotted keys to change one field inside a section."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"config error: override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return out


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = deep_merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    if prefix:
        loc = f"{prefix}.{loc}" if loc else prefix
    msg = first["msg"]
    if first["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
        if not loc:  # a cross-field check: its message starts with the field(s) it is about
            more = len(err.errors()) - 1
            return f"config error: {msg}" + (f" [+{more} more]" if more > 0 else "")
    loc = loc or "<root>"
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    got = first.get("input")
    got_s = "" if first["type"] in ("missing",) or isinstance(got, dict) else f" (got {got!r})"
    more = len(err.errors()) - 1
    tail = f" [+{more} more]" if more > 0 else ""
    return f"config error: {loc}: {msg}{got_s}{tail}"


def build_config(cls: type[C], data: dict[str, Any] | None = None, overrides: list[str] | None = None) -> C:
    """Validate ``data`` (+ overrides) as ``cls``; raise :class:`ConfigError` with a one-line message."""
    merged = apply_overrides(data or {}, overrides or [])
    try:
        return cls.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def updated(cfg: C, prefix: str = "", **fields: Any) -> C:
    """A copy of ``cfg`` with ``fields`` set, *validated* like user input (``model_copy(update=…)``
    is not); a bad value raises :class:`ConfigError` naming ``{prefix}.{field}``."""
    data = cfg.model_dump(exclude_unset=True)  # keeps which fields the user set (model_fields_set)
    data.update(fields)
    try:
        return type(cfg).model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, prefix)) from None


def load_config(cls: type[C], path: str | Path | list | None = None, overrides: list[str] | None = None) -> C:
    """Load ``cls`` from YAML file(s) (optional; later files deep-merge over earlier ones) with
    ``key=value`` overrides on top."""
    data: dict[str, Any] = {}
    for p in [] if path is None else (path if isinstance(path, list) else [path]):
        p = Path(p)
        if not p.exists():
            raise ConfigError(f"config error: file {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config error: {p}: invalid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config error: {p}: top level must be a mapping, got {type(loaded).__name__}")
        data = deep_merge(data, loaded)
    return build_config(cls, data, overrides)


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML that loads back as the same config (fields a parent config owns,
    listed by its ``dump_exclude()``, are left out)."""
    exclude = cfg.dump_exclude() if hasattr(cfg, "dump_exclude") else None
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude=exclude), sort_keys=False)
