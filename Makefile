# tagstream: the two commands are `make demo` and `make test`; everything they need is set up here.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BIN ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# What the stack alone needs (the `local` extra): `make up` and `make demo` stop there.
STACK_STAMP := $(VENV)/.installed-stack
STEP := scripts/step.sh
FILE ?= demo/sample_stream.jsonl
RATE ?= 0

.PHONY: help setup setup-demo system-deps system-deps-stack venv kafka-jars model k8s-tools image backfill rules dataset up down status replay demo test test-unit lint bench clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STACK_STAMP): pyproject.toml constraints.txt
	@$(STEP) "Python packages of the stack (pinned)" "$(PYTHON_BIN) -m venv $(VENV) \
		&& $(PY) -m pip install --quiet --upgrade pip \
		&& $(PY) -m pip install --quiet -c constraints.txt -e '.[local]'"
	@touch $@

$(STAMP): $(STACK_STAMP)
	@$(STEP) "Python packages of the tests and linters (pinned)" \
		"$(PY) -m pip install --quiet -c constraints.txt -e '.[local,dev]'"
	@touch $@

venv: $(STAMP)  ## the Python environment, pinned by constraints.txt

kafka-jars:  ## Apache Kafka's jars from Maven Central, cached in .cache/kafka
	@$(STEP) "Kafka's jars (Maven Central)" "scripts/kafka.sh fetch"

model: $(STACK_STAMP)  ## export ResNet50 to ONNX (CHECKPOINT=path for fine-tuned weights, FORCE=1 to redo)
	@$(STEP) "the model (ONNX export, stand-in weights unless told)" \
		"$(PY) -m tools.model.export $(if $(CHECKPOINT),--source checkpoint --checkpoint $(CHECKPOINT)) $(if $(FORCE),--force)"

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

system-deps-stack:
	@$(STEP) "Debian packages of the stack (Prometheus, curl)" "scripts/system-deps.sh stack"

system-deps: system-deps-stack  ## Debian packages of the stack, the tests and the image (scripts/system-deps.sh), when missing
	@$(STEP) "Debian packages of the tests and the image" "scripts/system-deps.sh test image"

k8s-tools:  ## kustomize, checkov, hadolint and the operators' CRDs for tests/deploy, in .cache
	@$(STEP) "kustomize, checkov, hadolint, operators' CRDs" "scripts/k8s-tools.sh"

# The demo's setup stops at what `make up` runs; the tests' adds their tools on top of it.
setup-demo: system-deps-stack $(STACK_STAMP) kafka-jars model  ## what `make up` and `make demo` need, no more
	@$(STEP) "Triton's CPU backend" "scripts/triton.sh setup"

setup: setup-demo system-deps venv k8s-tools  ## everything the stack, the tests and the benchmarks need

up: setup-demo  ## start Kafka, Triton and the four services in the background
	scripts/stack.sh up

down:  ## stop everything `make up` started, and any container left by `make image` or the tests
	scripts/stack.sh down
	scripts/image.sh down

image:  ## the container image of the four services, built with buildah (scripts/image.sh; IMAGE=name:tag)
	@$(STEP) "Debian container tools (buildah, podman, runc, mmdebstrap)" "scripts/system-deps.sh image"
	@$(STEP) "container image $(or $(IMAGE),localhost/tagstream:latest)" "scripts/image.sh build"

status:  ## what is running
	scripts/stack.sh status

# The replay's counters are scraped by the local Prometheus while it runs (services/ingest/scrape.py).
replay: $(STACK_STAMP)  ## replay a recorded stream: make replay FILE=path [RATE=posts/s] [load shape: see README]
	$(PY) -m services.ingest replay $(FILE) --rate $(RATE) $(if $(DURATION),--duration $(DURATION) \
		--burst $(or $(BURST),1) --burst-start $(or $(BURST_START),0) --burst-seconds $(or $(BURST_SECONDS),0) \
		--high-share $(or $(HIGH_SHARE),0.2) $(if $(THROTTLE),--throttle $(THROTTLE))) \
		--metrics-port 0 --register $(or $(RUN_DIR),.run)/prometheus/targets \
		--prometheus http://127.0.0.1:$(or $(PROMETHEUS_PORT),9090)

.PHONY: redrive
redrive: $(STACK_STAMP)  ## dead letters back on their source topic: make redrive TOPIC=images.dlq [REASON=a,b] [SINCE=2h] [DRY_RUN=1]
	$(PY) -m tools.redrive --topic $(or $(TOPIC),$(error TOPIC=<dead-letter topic> is required)) \
		$(if $(REASON),--reason $(REASON)) $(if $(SINCE),--since $(SINCE)) $(if $(DRY_RUN),--dry-run) \
		$(if $(GROUP),--group $(GROUP))

LIMIT ?= 100
backfill: $(STACK_STAMP)  ## recent search into tweets: make backfill QUERY=cats LIMIT=500 [OUT=file.jsonl writes a replay file instead]
	$(PY) -m services.ingest backfill --query $(QUERY) --limit $(LIMIT) $(if $(OUT),--out $(OUT))

rules: $(STACK_STAMP)  ## make the X stream's rules match services/ingest/rules.toml (DRY_RUN=1: show the diff only)
	$(PY) -m services.ingest rules $(if $(DRY_RUN),--dry-run)

THRESHOLD ?= 0.8
DATASET ?= .run/dataset/dataset.csv
dataset: $(STACK_STAMP)  ## confident predictions per hashtag as an image-folder list (THRESHOLD=0.8 DATASET=path)
	source deploy/local/services.env && $(PY) -m tools.dataset --threshold $(THRESHOLD) --out $(DATASET)

demo: up  ## bring the stack up, replay the sample stream, show predictions arriving
	$(PY) -m tools.demo --file $(FILE)

test: setup image  ## the whole suite: unit tests, then integration tests on the real stack
	$(PY) -m pytest -q -ra

test-unit: system-deps-stack venv k8s-tools  ## only the tests that need no running stack
	$(PY) -m pytest -q -m 'not integration'

bench: setup  ## the benchmarks: a table, and bench/results/latest.json (ONLY="name ..." for some)
	$(PY) -m bench.run $(if $(ONLY),--only $(ONLY))

SEED ?= $(shell date +%s)
.PHONY: fuzz
fuzz: venv  ## the property tests (marker fuzz) with many more examples; SEED=... repeats a run
	@echo "hypothesis seed: $(SEED) (make fuzz SEED=$(SEED) repeats this run)"
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -m fuzz --hypothesis-seed=$(SEED)

KILLS ?= 20
BROKERS ?= 1
.PHONY: chaos
chaos: setup-demo  ## kill -9 the stages KILLS times each (and BROKERS=3: a 3-node cluster, nodes killed) while counting every record; SEED=... repeats a run
	$(PY) -m tests.chaos --kills $(KILLS) --brokers $(BROKERS) --seed $(SEED)

lint: venv  ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean: down  ## remove the run directory (data, logs) and the container storage (images)
	scripts/image.sh clean
	rm -rf .run
