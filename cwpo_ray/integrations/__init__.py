"""Bridges to other training libraries: label pairs with `cwpo annotate`, train with the trainer you already use.

- :mod:`cwpo_ray.integrations.trl`: ``WeightedDPOTrainer``, TRL's ``DPOTrainer`` with the CW-PO per-pair
  weight (``pip install 'cwpo-ray[trl]'``), and ``load_preferences`` for `annotate`'s output.
"""
