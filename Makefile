# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install what they need by themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The environment may disable bytecode writing; installed packages then re-compile on every
# import (seconds per process), so we compile once at install time.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo down test test-quality venv lint clean-demo

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch/torchvision pinned as a pair: lpips needs a torchvision that imports beside torch.
	$(BIN)/pip install -q --compile -c requirements/constraints.txt torch torchvision
	$(BIN)/pip install -q --compile -c requirements/constraints.txt -e '.[all,dev]'
	touch $(STAMP)

test: $(STAMP)
	bash scripts/ensure-system-deps.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The demo's quality goals (VAE PSNR, prompt adherence) on the whole chain: ~10 min, so not in `test`.
test-quality: $(STAMP)
	$(BIN)/python -m pytest -m quality tests/quality $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check components flows tests bench
	$(BIN)/lint-imports

demo: $(STAMP)
	bash scripts/demo.sh

# Stops the servers and the worker that `make demo` leaves running.
down:
	bash scripts/demo-down.sh

clean-demo: down
	rm -rf .t2v/demo
