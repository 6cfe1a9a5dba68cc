# One obvious way to run each job; every target calls the `distill` CLI or a tool in its venv.
PYTHON ?= python3.11
VENV := .venv
VENV_TRAIN := .venv-train
AXOLOTL_VERSION ?= 0.19.0
DISTILL := $(VENV)/bin/distill
# Axolotl's telemetry retries for minutes without a network: always off.
TRAIN_ENV := AXOLOTL_DO_NOT_TRACK=1 DO_NOT_TRACK=1 HF_HUB_DISABLE_TELEMETRY=1
# `axolotl train` launches `accelerate` from PATH: put the training venv first.
AXOLOTL_ENV := $(TRAIN_ENV) PATH="$(abspath $(VENV_TRAIN))/bin:$$PATH"
AXOLOTL_CHECK = test -x $(VENV_TRAIN)/bin/axolotl || { echo "error: $(VENV_TRAIN) has no axolotl: run make setup-train"; exit 2; }; test -f "$(CONFIG)" || { echo "error: CONFIG=$(CONFIG) not found: render one with distill config"; exit 2; }
DATASET ?= gsm8k
CONFIG ?=
OFFLINE ?=
ARGS ?=

.PHONY: help setup setup-train test lint demo pipeline train preprocess publish bench chaos clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

setup: ## Create .venv with the factory (CPU torch 2.13.0)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[dev]"

setup-train: ## Create .venv-train with Axolotl (AXOLOTL_VERSION=$(AXOLOTL_VERSION))
	$(PYTHON) -m venv $(VENV_TRAIN)
	$(VENV_TRAIN)/bin/pip install --quiet --upgrade pip
	$(TRAIN_ENV) $(VENV_TRAIN)/bin/pip install --quiet torch==2.13.0 axolotl==$(AXOLOTL_VERSION)

test: ## Run the whole test suite (what CI runs)
	HF_HUB_OFFLINE=1 $(TRAIN_ENV) $(VENV)/bin/pytest -q $(ARGS)

lint: ## Ruff
	$(VENV)/bin/ruff check pipelines prm tests bench

demo: ## The main job on the shipped demo spec (OFFLINE=1: a tiny local model, plumbing only)
	$(DISTILL) demo $(if $(OFFLINE),--offline,) $(ARGS)

pipeline: ## Run a dataset's pipeline: make pipeline DATASET=gsm8k ARGS="--teacher-url ... --limit 50"
	$(DISTILL) run $(DATASET) $(ARGS)

train: ## Launch Axolotl: make train CONFIG=axolotl_configs/....yaml
	@test -n "$(CONFIG)" || { echo "error: CONFIG is required: make train CONFIG=axolotl_configs/<file>.yaml"; exit 2; }
	@$(AXOLOTL_CHECK)
	$(AXOLOTL_ENV) $(VENV_TRAIN)/bin/axolotl train $(CONFIG) $(ARGS)

preprocess: ## Tokenise a config's datasets: make preprocess CONFIG=...
	@test -n "$(CONFIG)" || { echo "error: CONFIG is required: make preprocess CONFIG=axolotl_configs/<file>.yaml"; exit 2; }
	@$(AXOLOTL_CHECK)
	$(AXOLOTL_ENV) $(VENV_TRAIN)/bin/axolotl preprocess $(CONFIG) $(ARGS)

publish: ## Push a dataset folder to the Hub: make publish DATASET=out/gsm8k REPO=owner/name (ARGS="--dry-run DIR")
	@test -n "$(REPO)" || { echo "error: REPO is required: make publish DATASET=out/<name> REPO=owner/name"; exit 2; }
	$(DISTILL) publish $(DATASET) --repo-id $(REPO) $(ARGS)

bench: ## Generation throughput against the teacher simulator
	$(VENV)/bin/python bench/throughput.py $(ARGS)

CHAOS_KILLS ?= 8
CHAOS_SEED ?= 0
chaos: ## kill -9 a run CHAOS_KILLS times at random points (CHAOS_SEED), resume; plus the fault suite (make test: 2 kills)
	HF_HUB_OFFLINE=1 CHAOS_KILLS=$(CHAOS_KILLS) CHAOS_SEED=$(CHAOS_SEED) $(VENV)/bin/pytest -q tests/test_resume.py tests/test_faults.py $(ARGS)

clean: ## Remove outputs (keeps the venvs)
	rm -rf out .pytest_cache
