"""The weak annotator: Bradley–Terry training (Ray Train) and confidence labeling (Ray Data).

Pure cores: :mod:`losses` (BT loss, confidence), :mod:`scoring` (HF / vLLM scorer),
:mod:`metrics` (accuracy, ECE, top-N% curve, plots). Ray wrappers: :mod:`train`, :mod:`annotate`.
"""
