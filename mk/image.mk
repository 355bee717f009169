# The RankQ OCI image without Docker or a registry (hack/k8s/image.sh, docs/real-node.md).
# Included by the top-level Makefile.
IMAGE_HACK := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))/../hack/k8s

.PHONY: image

image: $(STAMP) ## Build the RankQ OCI image from Debian packages + PyPI, no Docker (~/.cache/rankq/image)
	@PYTHON=$(abspath $(PY)) bash $(IMAGE_HACK)/image.sh
