"""The one training loop of the package: ``train-annotator``, ``sft`` and ``align`` all run
:func:`cwpo_ray.train.loop.train_loop_per_worker` on a Ray Train ``TorchTrainer`` with DeepSpeed.

* :mod:`config` — :class:`TrainConfig`, the base training config every training stage derives from.
* :mod:`tasks` — what differs per stage (model, rows → batches, step function, final save):
  :class:`~cwpo_ray.train.tasks.BTTask`, :class:`~cwpo_ray.train.tasks.SFTTask`,
  :class:`~cwpo_ray.train.tasks.AlignTask`.
* :mod:`loop` — the worker loop (setup model / optimizer / data, resume, linear train step, save).
* :mod:`trainer` — the driver side: :func:`~cwpo_ray.train.trainer.fit` and the metrics callback.
"""
