# flexcharge: `make demo` and `make test` each set up (or reuse) the local virtual environment.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.flexcharge-installed
PYTEST_ARGS ?=
# Two workers: most loopback tests wait on real time, so two share the 2 cores well (the suite
# takes about 8 minutes instead of 13); tests that listen on the reference station's own ports
# share one worker (xdist_group "reference-ports").
PYTEST_WORKERS ?= 2

.PHONY: all demo test lint bench clean system-deps opcua-peer

all: test

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

# DEMO_ARGS: the demo's own options (`flexcharge demo --help`), e.g. DEMO_ARGS="--hours 4".
DEMO_ARGS ?=

demo: $(STAMP)
	$(BIN)/flexcharge demo $(DEMO_ARGS)

test: $(STAMP) lint system-deps opcua-peer
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check base control controller drivers flexcharge scheduler simulator tests
	$(BIN)/mypy

bench: $(STAMP) system-deps
	$(BIN)/python -m tests.bench

# Debian packages some tests and benchmarks run (each package's program has its name): chromium
# for the live page, victoria-metrics as a real telemetry server, mbpoll (libmodbus) as a Modbus
# client independent of pymodbus for the simulated devices' conformance tests, socat for the
# pseudo-terminal pair the Modbus RTU tests run the serial line over. Installed with apt-get when
# missing and possible (as root; `apt-get update` once if the install fails); otherwise it says
# why and goes on, and the tests that need them are skipped naming this target.
SYSTEM_PACKAGES ?= chromium victoria-metrics mbpoll socat

system-deps:
	@missing=; \
	for pkg in $(SYSTEM_PACKAGES); do \
	  command -v $$pkg >/dev/null 2>&1 || test -x /usr/bin/$$pkg || test -x /usr/sbin/$$pkg \
	    || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	skip="the tests that need them will be skipped"; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "system-deps: not installed:$$missing (no apt-get here); $$skip"; exit 0; fi; \
	if [ "$$(id -u)" -ne 0 ]; then \
	  echo "system-deps: not installed:$$missing (installing needs root: sudo make system-deps); $$skip"; \
	  exit 0; fi; \
	echo "system-deps: apt-get install$$missing"; \
	apt="apt-get -q -y -o DPkg::Lock::Timeout=300"; \
	export DEBIAN_FRONTEND=noninteractive; \
	$$apt install --no-install-recommends $$missing \
	  || { echo "system-deps: apt-get update, then again"; $$apt update \
	       && $$apt install --no-install-recommends $$missing; } \
	  || echo "system-deps: apt-get could not install$$missing; $$skip"

# node-opcua, the independent OPC-UA client of tests/test_opcua_peer.py: `npm ci` installs the
# versions tests/opcua_peer/package-lock.json pins into tests/opcua_peer/node_modules (again when
# the lock changes). Without node and npm it installs Debian's nodejs and npm as root; when it
# cannot, it says why and goes on, and those tests are skipped naming this target.
OPCUA_PEER := tests/opcua_peer
OPCUA_PEER_STAMP := $(OPCUA_PEER)/node_modules/.flexcharge-installed

opcua-peer: $(OPCUA_PEER_STAMP)

$(OPCUA_PEER_STAMP): $(OPCUA_PEER)/package.json $(OPCUA_PEER)/package-lock.json
	@skip="the node-opcua tests will be skipped"; \
	if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" -eq 0 ]; then \
	    echo "opcua-peer: apt-get install nodejs npm"; \
	    apt="apt-get -q -y -o DPkg::Lock::Timeout=300"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    $$apt install --no-install-recommends nodejs npm \
	      || { $$apt update && $$apt install --no-install-recommends nodejs npm; } \
	      || echo "opcua-peer: apt-get could not install nodejs and npm"; \
	  fi; \
	fi; \
	if ! command -v npm >/dev/null 2>&1; then \
	  echo "opcua-peer: node and npm are not installed (as root: make opcua-peer); $$skip"; \
	  exit 0; fi; \
	echo "opcua-peer: npm ci in $(OPCUA_PEER)"; \
	if npm ci --prefix $(OPCUA_PEER) --no-audit --no-fund --loglevel=error >/dev/null; then \
	  touch $@; else echo "opcua-peer: npm ci failed; $$skip"; fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info $(OPCUA_PEER)/node_modules
