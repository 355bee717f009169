# RankQ developer commands. `make help` lists them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_DIR ?= .run
HTTP_PORT ?= 8080
GRPC_PORT ?= 9090
RAFT_PORT ?= 7070

.DEFAULT_GOAL := help
.PHONY: help venv run test test-quick test-all test-engine test-server lint typecheck chaos bench proto clean

help: ## List the commands
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "Variables (make run VAR=value):"
	@echo "  HTTP_PORT=$(HTTP_PORT) GRPC_PORT=$(GRPC_PORT) RAFT_PORT=$(RAFT_PORT)  first node's ports; node i uses port+i"
	@echo "  RUN_DIR=$(RUN_DIR)  data and logs of make run"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "RankQ needs Python 3.11 or newer")'
	@test -x $(PY) || { echo "creating $(VENV) with $$($(PYTHON) --version)"; $(PYTHON) -m venv $(VENV); }
	@echo "installing RankQ and its test tools into $(VENV) (about a minute; pip's output in $(VENV)/install.log)"
	@{ $(PY) -m pip install --upgrade pip && $(PY) -m pip install -e '.[all,test]'; } > $(VENV)/install.log 2>&1 \
		|| { tail -n 30 $(VENV)/install.log; echo "pip install failed; full output in $(VENV)/install.log"; exit 1; }
	@touch $@
	@echo "installed: $(VENV)/bin/rankq"

venv: $(STAMP) ## Create .venv and install RankQ with its test tools

run: $(STAMP) ## Start a local 3-node group with a demo queue (data and logs in .run/)
	$(VENV)/bin/rankq dev cluster --nodes 3 --data-dir $(RUN_DIR) --http-port $(HTTP_PORT) \
		--grpc-port $(GRPC_PORT) --raft-port $(RAFT_PORT) --demo-queue demo

test: export RANKQ_K8S_REAL_NODE ?= auto
test: $(STAMP) lint typecheck k8s-prepare ## Install what is needed and run the test suite (CI runs this; builds Kubernetes once, see k8s-prepare)
	$(PY) -m pytest -m "not slow" -q

test-quick: $(STAMP) ## The test suite without the Kubernetes tier (no Go build, a few minutes)
	$(PY) -m pytest -m "not slow and not k8s" -q

test-all: $(STAMP) ## Every test, the slow ones too
	$(PY) -m pytest -q

test-engine: $(STAMP) ## Only the engine's unit and property tests (seconds)
	$(PY) -m pytest tests/engine -q

test-server: $(STAMP) ## Only the server tests against real processes
	$(PY) -m pytest tests/server tests/client -q

lint: $(STAMP) ## ruff check and ruff format --check (`ruff format .` fixes the second)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP) ## mypy: strict for rankq.engine and rankq.client (settings in pyproject.toml)
	$(VENV)/bin/mypy

chaos: $(STAMP) ## The full chaos suite (kills, pauses, partitions in network namespaces; needs root)
	$(PY) -m pytest tests/chaos -m chaos -q

bench: $(STAMP) ## Benchmarks; results in bench/results/ (latest.{json,md}, backup.json, archive.json, worker.{json,md}, autoscaling.{json,md}, security_cost.{json,md}, tasks.{json,md}, hotpath.{json,md})
	$(PY) -m bench.run
	$(PY) -m bench.backup
	$(PY) -m bench.archive
	$(PY) -m bench.worker
	$(PY) -m bench.autoscaling
	$(PY) -m bench.security_cost
	$(PY) -m bench.tasks
	$(PY) -m bench.hotpath

proto: $(STAMP) ## Regenerate the gRPC modules from rankq/server/proto/rankq.proto
	PYTHON=$(PY) bash rankq/server/proto/generate.sh

clean: ## Remove local data and caches (keeps .venv)
	rm -rf $(RUN_DIR) .pytest_cache .hypothesis

include mk/k8s.mk
include mk/image.mk
