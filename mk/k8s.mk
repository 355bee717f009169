# Local Kubernetes control plane (hack/k8s/README.md). Included by the top-level Makefile;
# also usable alone: make -f mk/k8s.mk k8s-up
K8S_HACK := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))/../hack/k8s
PYTHON ?= python3
# Image that `make kind-up` loads into the kind cluster.
KIND_IMAGE ?= rankq:dev

.PHONY: k8s-prepare k8s-build k8s-up k8s-down k8s-status k8s-test kind-up kind-down

k8s-prepare: ## Before the Kubernetes tests: build missing binaries with progress (skipped without Go)
	@bash $(K8S_HACK)/prepare.sh

k8s-build: ## Build missing control-plane binaries from Go modules into ~/.cache/rankq (slow once)
	@bash $(K8S_HACK)/build.sh

k8s-up: ## Start etcd, kube-apiserver, controller-manager, scheduler and kwok (.k8s/kubeconfig); RANKQ_K8S_REAL_NODE=1 adds a real node
	@bash $(K8S_HACK)/up.sh

k8s-down: ## Stop what k8s-up started and delete its state (logs stay in .k8s/logs)
	@bash $(K8S_HACK)/down.sh

k8s-status: ## Tell which control-plane processes run and whether the API is ready
	@bash $(K8S_HACK)/status.sh

k8s-test: $(STAMP) ## Run the Kubernetes harness smoke tests (brings the control plane up if needed)
	$(or $(PY),$(PYTHON)) -m pytest tests/k8s -q

kind-up: ## With Docker: create the kind cluster "rankq" and load $(KIND_IMAGE)
	@KIND_IMAGE=$(KIND_IMAGE) bash $(K8S_HACK)/kind.sh up

kind-down: ## With Docker: delete the kind cluster "rankq"
	@bash $(K8S_HACK)/kind.sh down
