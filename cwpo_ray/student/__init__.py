"""The student: SFT and confidence-weighted DPO / IPO / rDPO (Ray Train + DeepSpeed).

Stages: `cwpo sft` (:func:`cwpo_ray.student.sft.run_sft`) and `cwpo align`
(:func:`cwpo_ray.student.align.run_align`). Pure cores: `losses.py`, `logprobs.py`, `steps.py`, `data.py`.
"""
