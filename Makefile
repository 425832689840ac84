# Two commands do everything: `make reproduce` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The shared offline speech data sits beside the repository; $PRUNELIB_DATA overrides it.
export PRUNELIB_DATA ?= $(abspath ../shared/data)

.PHONY: install lint test unit nbval reproduce smoke clean-results

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[offline,dev]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(PY) -m ruff check .

unit: install
	$(PY) -m pytest -q tests

nbval: install
	$(PY) -m pytest -q --nbval-lax --nbval-current-env --sanitize-with tests/nbval_sanitize.cfg notebooks

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests
	$(PY) -m pytest -q --nbval-lax --nbval-current-env --sanitize-with tests/nbval_sanitize.cfg notebooks

smoke: install
	$(PY) -m prunelib notebooks --profile smoke

reproduce: install
	$(PY) -m prunelib notebooks --profile default

clean-results:
	rm -rf executed results/cache results/smoke
