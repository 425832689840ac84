# Two commands do everything: `make reproduce` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The shared offline speech data sits beside the repository; $PRUNELIB_DATA overrides it.
export PRUNELIB_DATA ?= $(abspath ../shared/data)

# whisper-base saved as a plain folder: the smoke-base profile loads it as a user's own model folder.
BASE_FOLDER := build/whisper-base

.PHONY: install lint test unit nbval smoke-base reproduce smoke book browser clean-results

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

$(BASE_FOLDER)/config.json: $(STAMP)
	$(PY) -m prunelib -q save --model openai/whisper-base --out $(BASE_FOLDER)

# The second size notebook 07 compares at smoke scale (its notebook 03 only, about a minute).
smoke-base: install $(BASE_FOLDER)/config.json
	$(PY) -m prunelib notebooks --profile smoke-base --only 03

nbval: install smoke-base
	$(PY) -m pytest -q --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks

# The book's browser test drives Debian's Chromium; without it (no apt-get, no root) that test is skipped.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
browser:
	command -v chromium >/dev/null 2>&1 || $(SUDO) apt-get install -y -q chromium \
	  || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium) \
	  || echo "chromium could not be installed: the book's browser test will be skipped"

test: install browser
	$(PY) -m ruff check .
	$(PY) -m pytest -q -rs tests
	$(MAKE) nbval

# The HTML book of the committed executed notebooks (executes nothing): open build/book/index.html.
book: install
	$(PY) -m prunelib book --out build/book

smoke: install
	$(PY) -m prunelib notebooks --profile smoke

reproduce: install
	# The second model size first: notebook 07 of the default profile sets it beside whisper-base.
	$(PY) -m prunelib notebooks --profile default-tiny
	$(PY) -m prunelib notebooks --profile default

# The committed executed notebooks (executed/default*/) stay: only what runs wrote and git ignores goes.
clean-results:
	rm -rf executed/smoke executed/smoke-base executed/*/running results/cache results/smoke results/smoke-base
