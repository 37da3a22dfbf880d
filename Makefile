# Set-up and checks. On a fresh machine only python3 and make are needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## demo: run the jobs against an embedded KMS emulator seeded with a demo trust domain
demo: $(STAMP)
	$(BIN)/python -m devtools.demo

## emulator: the seeded KMS emulator on its own, for trying the daemon by hand (Ctrl-C to stop)
.PHONY: emulator
emulator: $(STAMP)
	$(BIN)/python -m devtools.standalone

## test: every test (unit, property, integration against the emulator)
test: $(STAMP)
	$(BIN)/python -m pytest -q

## lint: ruff (checks and format) and mypy --strict over the package, the dev tools, the tests and the bench
lint: $(STAMP)
	$(BIN)/ruff check daemon devtools tests bench
	$(BIN)/ruff format --check daemon devtools tests bench
	$(BIN)/mypy daemon
	$(BIN)/mypy --strict devtools tests bench

## bench: AWS calls per cycle against SPIRE's legacy alias scans; writes bench/results.json
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python -m bench.run

# The dev tools below run as `python -m devtools.<name>`.
## fleet: 100 SPIRE servers and their daemons over 60 simulated days, invariants checked at every step
## reliability: the failure matrix against the emulator, as a table (faults, runs, converged, keys wrongly touched)
## interop: real spire-server (built from SPIRE's Go module into .cache/spire/) beside the daemon, as a table
## k8s: render deploy/kubernetes/example with kustomize and validate every object (Kubernetes and CRD schemas)
## minimums: the unit tests against the oldest dependency versions pyproject.toml allows
DEVTOOLS := fleet reliability interop k8s minimums
.PHONY: $(DEVTOOLS)
$(DEVTOOLS): $(STAMP)
	$(BIN)/python -m devtools.$@

## hcl-oracle: server.conf read by the daemon and by SPIRE's HCL library (Go), corpus + 5 random seeds
.PHONY: hcl-oracle
hcl-oracle: $(STAMP)
	$(BIN)/python -m devtools.hcloracle --seeds 5

## dist: build the sdist and the wheel into dist/ and check them with twine
.PHONY: dist
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

clean:
	rm -rf $(VENV) dist .pytest_cache .mypy_cache .ruff_cache .hypothesis

## systemd-test: the unit under a real systemd (a Debian root booted with systemd-nspawn, cached in .cache/nspawn/)
.PHONY: systemd-test
systemd-test: $(STAMP)
	$(BIN)/python -m pytest -v -rs tests/test_systemd.py
