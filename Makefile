# Set-up and checks. `make test` builds .venv when missing, installs what the tests
# need (torch pinned to the CPU build these machines carry) and runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean

# pip shows what it collects, downloads and installs (no -q): on a fresh machine this takes minutes.
PIP := $(PY) -m pip install

$(STAMP): pyproject.toml Makefile
	@echo "== [1/5] virtual environment $(VENV)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "== [2/5] pip"
	$(PIP) --upgrade pip
	@echo "== [3/5] $(TORCH_PIN) (the largest download)"
	$(PIP) $(TORCH_PIN)
	@echo "== [4/5] eos and its dependencies, editable, with the dev tools"
	$(PIP) -e '.[dev]'
	@echo "== [5/5] Chromium for the dashboard's browser tests (Debian's package; never playwright install)"
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium) \
		|| echo "chromium not installed: the dashboard browser tests will skip"
	touch $(STAMP)
	@echo "== installed: $(VENV) is ready"

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

demo: $(STAMP)
	rm -f out/demo.sqlite
	$(VENV)/bin/eos run examples/demo_fig4_small.yaml --sweep optimizer.lr=3,30,100 --db out/demo.sqlite

bench: $(STAMP)
	$(PY) bench/instrumentation.py
	$(PY) bench/store.py
	$(PY) bench/api.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
