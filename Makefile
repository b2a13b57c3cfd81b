# `make demo` and `make test` create .venv from nothing when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint resume-check clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, from its exact pin: an unpinned resolve would pull several GB of CUDA wheels.
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cspnet demo

# Every test, the ones marked slow included (what CI runs: .ci/run).
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

# The fast set, what `pytest` alone runs: every test not marked slow.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q

# ruff on src/ and tests/, mypy on src/ (settings: [tool.mypy] in pyproject.toml); CI fails on either.
lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/mypy

# Every kill point of tests/test_resume.py (CI runs a sample of the slower schedule); about 2 minutes.
resume-check: $(STAMP)
	CSPNET_RESUME_CASES=all $(BIN)/python -m pytest -q -m "slow or not slow" tests/test_resume.py

clean-venv:
	rm -rf $(VENV)
