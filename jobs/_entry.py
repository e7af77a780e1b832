"""Shared helper of the Ray job entrypoints in ``jobs/``.

``ray job submit --working-dir . -- python jobs/<stage>.py --config FILE [key=value ...]`` uploads
the repository as the job's working directory; nothing is installed there, so this puts the
repository root first on ``sys.path`` (the uploaded copy wins over any installed ``cwpo_ray``) and
hands the arguments to ``cwpo <stage>`` (:func:`cwpo_ray.cli.main`). Inside a job Ray sets
``RAY_ADDRESS`` for the driver, so every stage's ``init_ray`` joins the cluster the job runs on.

A stage that this version of the package does not register exits with status 2 and one line saying
so, not a traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def main(stage: str, argv: list[str] | None = None) -> int:
    """Run ``cwpo <stage> *argv``; returns the process exit status."""
    if str(REPO_ROOT) not in sys.path[:1]:
        sys.path.insert(0, str(REPO_ROOT))
    from cwpo_ray.cli import STAGES, main as cli_main

    if stage not in STAGES:
        print(f"cwpo-ray: stage {stage!r} is not available in this version "
              f"(available: {', '.join(STAGES)})", file=sys.stderr)
        return 2
    return cli_main([stage, *(sys.argv[1:] if argv is None else argv)])


def run(stage: str) -> None:
    """Entrypoint body: ``run("prepare")`` exits with :func:`main`'s status."""
    sys.exit(main(stage))
