# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch/torchvision are pinned for the dev environment only; the package keeps ranges.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint clean venv

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e ".[dev]" $(TORCH_PINS)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/robustprune run recipes/digits-cnn.toml --threads 1

# two workers (the CI machine has 2 cores; every test runs on one torch thread); a document's
# doc blocks stay together in one worker (tests/test_docs.py)
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup tests

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info runs
