"""``python -m cwpo_ray <stage> [--config FILE ...] [key=value ...]``: the same as the ``cwpo`` command.

This is the Ray job entrypoint: ``ray job submit --working-dir . -- python -m cwpo_ray pipeline --config
FILE`` runs the uploaded copy of the package (``-m`` puts the job's working directory first on
``sys.path``), and inside a job Ray sets ``RAY_ADDRESS``, so every stage joins the cluster it runs on.
"""
import sys

from cwpo_ray.cli import main

sys.exit(main())
