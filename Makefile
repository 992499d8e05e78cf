# The two commands of the quick start: `make demo` and `make test`.
# Both create .venv when it is missing and install the project into it.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean system-tools bytecode

# The first run spends a while here: say so, and what it is doing, before each long step.
# system-tools first: PyGObject (the `usb` extra, in `dev`) builds against Debian's girepository.
$(STAMP): pyproject.toml | system-tools
	@test -x $(BIN)/python || { echo "make: creating the virtual environment $(VENV) (first run only)"; \
		$(PYTHON) -m venv $(VENV); }
	@echo "make: upgrading pip in $(VENV)"
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "make: installing the project and its dependencies into $(VENV) (first run, or pyproject.toml changed):"
	@echo "make:   numpy, opencv, cryptography, httpx, hypercorn, PyGObject (built here)... one to a few minutes, once"
	@$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)
	@echo "make: $(VENV) is ready"

demo: $(STAMP) bytecode
	$(BIN)/python -m agent.demo

# The demo and the tests start hundreds of Python processes (verifiers, daemons, CLIs). Where the
# environment sets PYTHONDONTWRITEBYTECODE, as some CI images and shells do, each of them compiles the
# project's modules again from source: 0.2 CPU-s more per process on a 2-core VM (measured with and
# without __pycache__, 8 runs each). Compile once, up front; compileall skips what is up to date.
PACKAGES := agent biometrics bench drivers protocol simulators verifier

bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q $(PACKAGES) >/dev/null

# What the tests use from Debian rather than PyPI: systemd-analyze (unit tests);
# libfprint and its GObject introspection data (USB readers, tested on libfprint's
# virtual drivers); the headers PyGObject builds against in the venv.
DEBIAN_PACKAGES := systemd libfprint-2-2 gir1.2-fprint-2.0 libgirepository1.0-dev libcairo2-dev pkg-config

system-tools:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for the tests:" $$missing; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; fi

# pytest exits 5 when it collected no test: make treats that as a failure too.
# The suite runs on one worker more than the cores (at most 4; pytest-xdist), a file to a
# worker so that module fixtures are built once. Most tests wait on real processes, sockets
# and timers rather than compute: on a 2-core VM one worker took 675 s, two 499 to 530 s,
# three 343 s idle and 439 to 461 s with a benchmark beside them; four (with two benchmarks
# beside them) failed a test's 3 s finger timeout once.
# `python -m pytest tests/FILE` runs on one process as usual. Tests marked `alone` assert
# what a legitimate device gets while the verifier is flooded; they run afterwards, on the
# machine to themselves (under the parallel suite one such call failed once in nine runs).
CORES := $(shell nproc 2>/dev/null || echo 2)
PYTEST_WORKERS := -n $(shell echo $$(( $(CORES) + 1 < 4 ? $(CORES) + 1 : 4 ))) --dist loadfile

test: $(STAMP) system-tools bytecode
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS) -m "not alone"
	$(BIN)/python -m pytest -q -m alone

lint: $(STAMP)
	$(BIN)/python -m ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
