"""``cwpo <stage> [--config FILE ...] [key=value ...]`` (also ``python -m cwpo_ray <stage> ...``).

``--config`` may be repeated: later files deep-merge over earlier ones (e.g. a base file, a dataset
file and a model-pair file), then ``key=value`` overrides assign on top.

Each stage is one typed config + one run function. Only stages that work are registered.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from cwpo_ray import console, io
from cwpo_ray.config import ConfigError, load_config

# stage -> (config class "module:Class", run function "module:function", printer "module:function"|None, help).
# The run function returns the stage's result model (cwpo_ray.results); the printer formats it.
STAGES: dict[str, tuple[str, str, str | None, str]] = {
    "synthesize": ("cwpo_ray.synthetic.build:SyntheticConfig", "cwpo_ray.synthetic.build:build_synthetic",
                   "cwpo_ray.synthetic.build:format_synthesize",
                   "write the embedded synthetic task (data, tokenizer, tiny models)"),
    "prepare": ("cwpo_ray.prepare.config:PrepareConfig", "cwpo_ray.prepare.stage:run_prepare",
                "cwpo_ray.prepare.stage:format_summary", "raw preference data -> canonical split parquet (Ray Data)"),
    "train-annotator": ("cwpo_ray.annotator.config:AnnotatorTrainConfig", "cwpo_ray.annotator.train:run_train_annotator",
                        "cwpo_ray.annotator.train:format_train_annotator",
                        "Bradley–Terry weak annotator on the labeled split (Ray Train) + held-out calibration"),
    "annotate": ("cwpo_ray.annotator.config:AnnotateConfig", "cwpo_ray.annotator.annotate:run_annotate",
                 "cwpo_ray.annotator.annotate:format_annotate",
                 "label unlabeled pairs with annotator confidence (Ray Data actor pool, resumable)"),
    "sft": ("cwpo_ray.student.config:SFTConfig", "cwpo_ray.student.sft:run_sft", "cwpo_ray.student.sft:format_sft",
            "supervised fine-tuning of the student on (prompt, chosen) (Ray Train + DeepSpeed)"),
    "align": ("cwpo_ray.student.config:AlignConfig", "cwpo_ray.student.align:run_align",
              "cwpo_ray.student.align:format_align",
              "confidence-weighted DPO / IPO / rDPO of the student (Ray Train + DeepSpeed)"),
    "generate": ("cwpo_ray.generate.config:GenerateConfig", "cwpo_ray.generate.stage:run_generate",
                 "cwpo_ray.generate.stage:format_generate", "k sampled responses per prompt (vLLM on Ray Data) -> pairs"),
    "evaluate": ("cwpo_ray.evaluate.config:EvaluateConfig", "cwpo_ray.evaluate.stage:run_evaluate",
                 "cwpo_ray.evaluate.stage:format_evaluate", "SFT vs aligned responses (vLLM) -> gold reward -> GRA report"),
    "pipeline": ("cwpo_ray.pipeline:PipelineConfig", "cwpo_ray.pipeline:run_pipeline", "cwpo_ray.pipeline:format_pipeline",
                 "prepare -> train-annotator -> annotate -> sft -> align (methods) -> evaluate, resumable"),
    "sweep": ("cwpo_ray.sweep.config:SweepConfig", "cwpo_ray.sweep.tune:run_sweep", "cwpo_ray.sweep.tune:format_sweep",
              "Ray Tune over dotted pipeline keys x methods x seeds, selected on validation, then tested"),
    "export": ("cwpo_ray.integrations.hub:ExportConfig", "cwpo_ray.integrations.hub:run_export",
               "cwpo_ray.integrations.hub:format_export",
               "a run's labeled data, annotator and students as Hugging Face Hub repos (+ push_to_hub)"),
    "demo": ("cwpo_ray.pipeline:PipelineConfig", "cwpo_ray.pipeline:run_pipeline", "cwpo_ray.pipeline:format_pipeline",
             "the pipeline on the embedded synthetic task with tiny models (no downloads)"),
}

# Stages whose config starts from a packaged YAML (then --config, then key=value overrides).
BASE_CONFIGS = {"demo": "cwpo_ray.pipeline:DEMO_CONFIG"}


def _load(spec: str):
    mod, name = spec.split(":")
    return getattr(importlib.import_module(mod), name)


def log_dir(cfg) -> str | None:
    """``{run_dir}/logs`` (pipeline, demo), ``{output_dir}/logs`` (a stage, a sweep); None on object
    storage (the console then logs to ``./cwpo-logs``)."""
    root = getattr(cfg, "run_dir", None) or getattr(cfg, "output_dir", None)
    if not root or io.is_remote(root):
        return None
    return os.path.join(io.absolute(root), "logs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cwpo", description="Confidence-Weighted Preference Optimization on Ray")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for name, (_, _, _, help_) in STAGES.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", "-c", action="append", default=[], metavar="FILE",
                       help="YAML config file; repeat to overlay several (later files deep-merge over earlier ones)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="override config fields, e.g. prepare.labeled_fraction=0.3")
        p.add_argument("-v", "--verbose", action="store_true",
                       help="show Ray, vLLM, DeepSpeed and transformers logs and the workers' output on the console "
                            "(default: one line per stage; those logs go to {run_dir}/logs/)")
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    cfg_cls, run_spec, printer, _ = STAGES[args.stage]
    try:
        base = [str(_load(BASE_CONFIGS[args.stage]))] if args.stage in BASE_CONFIGS else []
        cfg = load_config(_load(cfg_cls), [*base, *args.config], args.overrides)
        if args.print_config:
            from cwpo_ray.config import dump_config

            print(dump_config(cfg), end="")
            return 0
        console.setup(log_dir(cfg), verbose=args.verbose)
        result = _load(run_spec)(cfg)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    except Exception as e:
        if not console.quiet():
            raise
        # the traceback (and the libraries' logs before it) go to the log file; the console gets the gist
        logging.getLogger("cwpo.cli").error("%s failed", args.stage, exc_info=True)  # file only
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"{args.stage} failed: {type(e).__name__}: {first}\n  {console.where_logs()}", file=sys.stderr)
        return 1
    if printer:
        print(_load(printer)(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
