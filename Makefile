# Developer entry points. `make demo` and `make test` are the README's two commands:
# both set everything up on a fresh machine (a virtualenv with the pinned packages;
# the test cluster's binaries are built from source on first use and cached).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: demo test unit lint crd crd-check ci clean cluster-binaries venv system-packages

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[operator,trainer,dev]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

## The demo: fine-tuning teaches a small pre-trained model a new task on 2 CPU processes.
demo: $(STAMP)
	$(BIN)/kubetune validate examples/
	$(BIN)/kubetune run examples/local/demo.yaml --local

## Every test tier that runs without a GPU (unit, control-plane e2e, trainer).
test: $(STAMP) cluster-binaries system-packages
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Debian packages of the image and real-pod tiers (installed when root with apt-get).
system-packages:
	bash hack/system-packages.sh

## Fast checks for the edit loop: unit tests only (no cluster build, no torch runs).
unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q $(PYTEST_ARGS)

## The chaos suite: 200+ seeded faults on the dev cluster (operator kills, leader failover,
## API server/etcd restarts, pod and node loss, pods that never start, hostile /progress).
CHAOS_ARGS ?= --faults 200 --seed 1 --report chaos-report.json
.PHONY: chaos
chaos: $(STAMP) cluster-binaries
	$(BIN)/python -m tests.chaos.run $(CHAOS_ARGS)

## OCI images without a docker engine (mmdebstrap + umoci; images/README.md):
## dist/images/kubetune-{operator,trainer}-<version>.oci.tar. The trainer's is ~3 GB of wheels.
.PHONY: images image-operator image-trainer
images: $(STAMP)
	$(BIN)/python images/build.py operator trainer

image-operator: $(STAMP)
	$(BIN)/python images/build.py operator

image-trainer: $(STAMP)
	$(BIN)/python images/build.py trainer

## etcd, kube-*, kubectl, KWOK and helm built from source at pinned versions (cached).
cluster-binaries:
	bash hack/cluster/build.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy src/kubetune operator/kubetune_operator trainer/kubetune_trainer

crd: $(STAMP)
	$(BIN)/kubetune crd
	$(BIN)/kubetune docs metrics
	$(BIN)/kubetune dashboards

crd-check: $(STAMP)
	$(BIN)/kubetune crd --check
	$(BIN)/kubetune docs metrics --check
	$(BIN)/kubetune dashboards --check

ci: lint crd-check test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
