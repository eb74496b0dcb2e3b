# Coherence Explorer: `make run` serves the dashboard on the demo workspace; `make test` tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKSPACE ?= $(or $(COHERENCE_WORKSPACE),workspace)
PORT ?= 8501
# an extra index for torch, as the Dockerfile's: e.g. https://download.pytorch.org/whl/cpu for
# the CPU build (PyPI's Linux wheel is the multi-GB CUDA one); empty: pip's own configuration
TORCH_INDEX_URL ?=
export COHERENCE_WORKSPACE := $(abspath $(WORKSPACE))

.PHONY: run test test-fast lint bench bench-peers demo docker docker-test clean

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX_URL),--extra-index-url "$(TORCH_INDEX_URL)") -e ".[dev]"
	touch $(BIN)/activate

venv: $(BIN)/activate

run: $(BIN)/activate
	$(BIN)/coherence demo --workspace "$(WORKSPACE)"
	$(BIN)/coherence serve --workspace "$(WORKSPACE)" --port $(PORT)

demo: $(BIN)/activate
	$(BIN)/coherence demo --workspace "$(WORKSPACE)"

lint: $(BIN)/activate
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(BIN)/activate lint
	$(BIN)/python -m pytest

test-fast: $(BIN)/activate
	$(BIN)/python -m pytest -m "not slow and not browser and not docker"

bench: $(BIN)/activate
	$(BIN)/python -m bench.run_all

PEERS := .peers
$(PEERS)/.installed: bench/requirements-peers.txt | $(BIN)/activate
	$(BIN)/pip install --quiet --no-deps --target $(PEERS) -r bench/requirements-peers.txt
	rm -rf $(PEERS)/tests $(PEERS)/examples  # kronfluence's own, which shadowed ours
	touch $@

# our EK-FAC beside Kronfluence's (bench/bench_kronfluence.py); the peers live in .peers/ only
bench-peers: $(BIN)/activate $(PEERS)/.installed
	PYTHONPATH=$(CURDIR):$(abspath $(PEERS)) $(BIN)/python -m bench.bench_kronfluence

DOCKER ?= docker
IMAGE ?= coherence-explorer:latest

docker:
	$(DOCKER) build -t $(IMAGE) $(DOCKER_BUILD_ARGS) .

docker-test: $(BIN)/activate
	bash scripts/docker-test.sh --image $(IMAGE)

clean:
	rm -rf $(VENV) $(PEERS) .pytest_cache .ruff_cache
