# The two commands of the README: `make demo` and `make test`. Both set themselves up on a fresh
# machine: they create .venv if absent and install the package with its pinned constraints.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install chromium clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile -c constraints.txt -e ".[dev]"
	@# pip would compile every installed module one file after another (half of the install);
	@# compileall does it on every core. Like pip, it leaves a file that does not compile
	@# (torch ships one for Python 3.12 only) without bytecode: hence the || true.
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true
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
