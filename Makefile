# tagstream: the two commands are `make demo` and `make test`; everything they need is set up here.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BIN ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FILE ?= demo/sample_stream.jsonl
RATE ?= 0

.PHONY: help setup system-deps venv kafka-jars model k8s-tools backfill rules dataset up down status replay demo test test-unit lint bench clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[local,dev]'
	touch $@

venv: $(STAMP)  ## the Python environment, pinned by constraints.txt

kafka-jars:  ## Apache Kafka's jars from Maven Central, cached in .cache/kafka
	scripts/kafka.sh fetch

model: $(STAMP)  ## export ResNet50 to ONNX (CHECKPOINT=path for fine-tuned weights, FORCE=1 to redo)
	$(PY) -m tools.model.export $(if $(CHECKPOINT),--source checkpoint --checkpoint $(CHECKPOINT)) $(if $(FORCE),--force)

# Opt-in, never part of `make test`: PyTorch in a virtualenv of its own (about 2.3 GB to download).
TORCH_VENV := .venv-torch
TORCH_PY := $(TORCH_VENV)/bin/python
TORCH_STAMP := $(TORCH_VENV)/.installed
VERIFY_DIR ?= .run/verify-export
.PHONY: torch-venv verify-export finetune

$(TORCH_STAMP): tools/model/requirements-torch.txt
	$(PYTHON_BIN) -m venv $(TORCH_VENV)
	$(TORCH_PY) -m pip install --quiet --upgrade pip
	$(TORCH_PY) -m pip install --quiet --no-deps -r tools/model/requirements-torch.txt
	$(TORCH_PY) -c 'import torch, torchvision, onnxscript'
	touch $@

torch-venv: $(TORCH_STAMP)  ## PyTorch and torchvision in .venv-torch (pins: tools/model/requirements-torch.txt)

verify-export: $(STAMP) $(TORCH_STAMP)  ## run the torch export paths with weights=None, serve them on a Triton of its own, compare with torch
	rm -rf $(VERIFY_DIR)
	$(TORCH_PY) -m tools.model.verify_export torch --out $(VERIFY_DIR)
	$(PY) -m tools.model.verify_export serve --out $(VERIFY_DIR)

finetune: $(TORCH_STAMP)  ## train the 13-class head on `make dataset`'s CSV: DATASET=... [EPOCHS=...] [CHECKPOINT=out.pt]
	$(TORCH_PY) -m tools.model.finetune --dataset $(DATASET) --out $(or $(CHECKPOINT),.run/finetune/checkpoint.pt) \
		$(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(INIT),--init $(INIT))

system-deps:  ## Debian packages (scripts/system-deps.sh), installed only when missing
	scripts/system-deps.sh

k8s-tools:  ## kustomize, checkov, hadolint and the operators' CRDs for tests/deploy, in .cache
	scripts/k8s-tools.sh

setup: system-deps venv kafka-jars model k8s-tools  ## everything the stack and the tests need
	scripts/triton.sh setup

up: setup  ## start Kafka, Triton and the four services in the background
	scripts/stack.sh up

down:  ## stop everything `make up` started
	scripts/stack.sh down

status:  ## what is running
	scripts/stack.sh status

replay: venv  ## replay a recorded stream: make replay FILE=path [RATE=posts/s] [load shape: see README]
	$(PY) -m services.ingest replay $(FILE) --rate $(RATE) $(if $(DURATION),--duration $(DURATION) \
		--burst $(or $(BURST),1) --burst-start $(or $(BURST_START),0) --burst-seconds $(or $(BURST_SECONDS),0) \
		--high-share $(or $(HIGH_SHARE),0.2) $(if $(THROTTLE),--throttle $(THROTTLE)))

LIMIT ?= 100
backfill: venv  ## recent search into tweets: make backfill QUERY=cats LIMIT=500 [OUT=file.jsonl writes a replay file instead]
	$(PY) -m services.ingest backfill --query $(QUERY) --limit $(LIMIT) $(if $(OUT),--out $(OUT))

rules: venv  ## make the X stream's rules match services/ingest/rules.toml (DRY_RUN=1: show the diff only)
	$(PY) -m services.ingest rules $(if $(DRY_RUN),--dry-run)

THRESHOLD ?= 0.8
DATASET ?= .run/dataset/dataset.csv
dataset: venv  ## confident predictions per hashtag as an image-folder list (THRESHOLD=0.8 DATASET=path)
	source deploy/local/services.env && $(PY) -m tools.dataset --threshold $(THRESHOLD) --out $(DATASET)

demo: up  ## bring the stack up, replay the sample stream, show predictions arriving
	$(PY) -m tools.demo --file $(FILE)

test: setup  ## the whole suite: unit tests, then integration tests on the real stack
	$(PY) -m pytest -q -ra

test-unit: venv k8s-tools  ## only the tests that need no running stack
	$(PY) -m pytest -q -m 'not integration'

bench: setup  ## the benchmarks: a table, and bench/results/latest.json (ONLY="name ..." for some)
	$(PY) -m bench.run $(if $(ONLY),--only $(ONLY))

SEED ?= $(shell date +%s)
.PHONY: fuzz
fuzz: venv  ## the property tests (marker fuzz) with many more examples; SEED=... repeats a run
	@echo "hypothesis seed: $(SEED) (make fuzz SEED=$(SEED) repeats this run)"
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -m fuzz --hypothesis-seed=$(SEED)

lint: venv  ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean: down  ## remove the run directory (data, logs)
	rm -rf .run
