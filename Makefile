# The two commands a newcomer needs: `make demo` and `make test`.
# Both create/refresh .venv from pyproject.toml; nothing has to be installed by hand
# beyond Python 3.11+.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The hot modules compiled by setup.py: those with the line adopt(globals()) (rules/native.py).
NATIVE_SOURCES := setup.py rules/native.py $(shell grep -lx 'adopt(globals())' rules/*.py streams/*.py)
NATIVE_STAMP   := $(VENV)/.native-stamp

.PHONY: demo test bench venv clean

venv: $(STAMP) $(NATIVE_STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "leadpulse needs Python >= 3.11, found " + sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing leadpulse and its dependencies into $(VENV) ..."
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[embedded,test]'
	@touch $(STAMP) $(NATIVE_STAMP)

# An edited hot module would run pure Python (its twin is stale); rebuild the twins only.
$(NATIVE_STAMP): $(STAMP) $(NATIVE_SOURCES)
	@echo "compiling the hot modules with Cython (pure Python is used where this fails) ..."
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(NATIVE_STAMP)

demo: venv
	$(BIN)/leadpulse demo

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: venv
	$(BIN)/leadpulse bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build .leadpulse .pytest_cache .hypothesis
