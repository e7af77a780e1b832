"""``cwpo <stage> [--config FILE] [key=value ...]``.

Each stage is one typed config + one run function. Only stages that work are registered.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cwpo_ray.config import ConfigError, load_config

# stage -> (config class "module:Class", run function "module:function", printer "module:function"|None, help)
STAGES: dict[str, tuple[str, str, str | None, str]] = {
    "synthesize": ("cwpo_ray.synthetic.build:SyntheticConfig", "cwpo_ray.synthetic.build:build_synthetic", None,
                   "write the embedded synthetic task (data, tokenizer, tiny models)"),
    "prepare": ("cwpo_ray.prepare.config:PrepareConfig", "cwpo_ray.prepare.stage:run_prepare",
                "cwpo_ray.prepare.stage:format_summary", "raw preference data -> canonical split parquet (Ray Data)"),
    "demo": ("cwpo_ray.pipeline:PipelineConfig", "cwpo_ray.pipeline:run_pipeline", None,
             "the pipeline on the embedded synthetic task with tiny models (no downloads)"),
}


def _load(spec: str):
    mod, name = spec.split(":")
    return getattr(importlib.import_module(mod), name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cwpo", description="Confidence-Weighted Preference Optimization on Ray")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for name, (_, _, _, help_) in STAGES.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", "-c", help="YAML config file (defaults are used for missing fields)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="override config fields, e.g. prepare.labeled_fraction=0.3")
        p.add_argument("-v", "--verbose", action="store_true")
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg_cls, run_spec, printer, _ = STAGES[args.stage]
    try:
        cfg = load_config(_load(cfg_cls), args.config, args.overrides)
        if args.print_config:
            from cwpo_ray.config import dump_config

            print(dump_config(cfg), end="")
            return 0
        result = _load(run_spec)(cfg)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    if printer:
        print(_load(printer)(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
