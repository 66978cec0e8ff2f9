# The README's two commands: `make demo` and `make test`. Each creates the virtual environment
# it needs (.venv) on first use, so a fresh clone needs nothing but Python 3.10+.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# PyTorch is pinned to the release this project is tested with; override for other platforms,
# e.g. `make test TORCH="torch==2.9.1 torchvision==0.24.1"`.
TORCH ?= torch==2.14.1 torchvision==0.29.1
PACKS := -e "core[all]" -e plugins/apache -e plugins/gpl -e plugins/noncommercial
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint bench docs docs-screenshot clean

$(STAMP): core/pyproject.toml plugins/*/pyproject.toml tests/requirements.txt \
		tests/plugins/histobag-example/pyproject.toml \
		tests/plugins/histobag-writer-example/pyproject.toml \
		tests/plugins/histobag-reader-example/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet $(PACKS) -r tests/requirements.txt
	$(BIN)/python -m pip install --quiet ./tests/plugins/histobag-example
	$(BIN)/python -m pip install --quiet ./tests/plugins/histobag-writer-example
	$(BIN)/python -m pip install --quiet ./tests/plugins/histobag-reader-example
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/histobag demo

# ruff check includes the docstring coverage check: pydocstyle's D rules, Google convention,
# on every public module, class and function of core/src and plugins/*/src (pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# -n auto: one xdist worker per core. --dist loadfile: each test file runs on one worker, so
# module-scoped fixtures (reference models, pip-installed packs, slides) are built once per
# run, not once per worker.
XDIST := -n auto --dist loadfile

# The linters, then the documentation site (--strict), then the tests.
test: lint docs
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# The quick loop while developing: the tests not marked @pytest.mark.slow, without the linters.
test-fast: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	PATH=$(BIN):$$PATH $(BIN)/python benchmarks/startup.py
	$(BIN)/python benchmarks/extract_throughput.py

# The site, into site/: --strict fails on any warning (broken link, missing page or
# reference). Its model table, CLI and API reference are generated from the installed code.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# A PNG of the built start page, rendered by headless Chromium (apt-get install chromium).
docs-screenshot: docs
	$(BIN)/python docs/screenshot.py site docs/images/site_start_page.png

clean:
	rm -rf $(VENV) build site .pytest_cache
