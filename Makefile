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

.PHONY: install demo test test-fast bench clean label-studio

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

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/bench_coreset.py

clean:
	rm -rf $(VENV) runs .pytest_cache
