# The two commands of the README: `make demo` and `make test`. Both set themselves up on a fresh
# machine: they create .venv if absent and install the package with its pinned constraints.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install chromium clean

# Bytecode is written as modules are first imported, also where the environment says not to
# (PYTHONDONTWRITEBYTECODE): without it every new Python of the suite compiles torch again, which
# doubles its start. Compiling only what is imported beats compiling all of .venv at install
# (docs/benchmarks.md, "The test suite", has the figures).
unexport PYTHONDONTWRITEBYTECODE

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cyclegan demo

# The browser tests drive Debian's Chromium (never a downloaded browser) with Playwright.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q -n auto

clean:
	rm -rf $(VENV) runs build dist src/*.egg-info .pytest_cache
