# The two commands of the quick start: `make demo` and `make test`.
# Both create .venv when it is missing and install the project into it.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean system-tools

# The first run spends a while here: say so, and what it is doing, before each long step.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { echo "make: creating the virtual environment $(VENV) (first run only)"; \
		$(PYTHON) -m venv $(VENV); }
	@echo "make: upgrading pip in $(VENV)"
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "make: installing the project and its dependencies into $(VENV) (first run, or pyproject.toml changed):"
	@echo "make:   numpy, opencv, cryptography, httpx, hypercorn... about 30 s to a few minutes, once"
	@$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)
	@echo "make: $(VENV) is ready"

demo: $(STAMP)
	$(BIN)/python -m agent.demo

# Tools the tests use that come from Debian rather than PyPI.
system-tools:
	@command -v systemd-analyze >/dev/null 2>&1 || { \
		echo "installing Debian's systemd for systemd-analyze (unit tests)"; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd; }

# pytest exits 5 when it collected no test: make treats that as a failure too.
test: $(STAMP) system-tools
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/python -m ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
