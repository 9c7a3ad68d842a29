#!/usr/bin/env bash
# One short GPU check of issue 18 (precision, channels-last, --jobs), for a machine with one CUDA GPU and no network.
#
#   bash benchmarks/gpu_check.sh          # from the repository root; outputs under $OUT (default /tmp/alctl-gpu)
#
# Assumes: a python3 (or $PYTHON) with torch (CUDA), torchvision, numpy, scipy, scikit-learn, pyarrow, pyyaml,
# typer, rich, pillow, matplotlib and threadpoolctl, as the workplace's GPU image has; what it lacks (pydantic and its
# parts, faiss-cpu) comes as wheels in .whl/, downloaded beforehand with benchmarks/gpu_wheels.sh where there is
# network and carried along (device tool: carry [".whl"]). alctl itself is installed from this working tree with
# `pip install --no-deps --no-build-isolation --no-index -e .` (offline: the image's setuptools builds it), else
# used from PYTHONPATH. Steps (about 5 minutes expected on an H100/H200; each step has its own timeout, which add
# up to about 16 minutes in the worst case: give the call its 600 s and read what came back under $OUT):
#   1. environment: GPU, torch, bf16 support; imports
#   2. GPU unit checks: auto precision resolves to bf16 + channels-last on CUDA; predict returns float32 under
#      bf16; an fp16 fit uses a GradScaler; channels-last reaches the model and its input
#   3. bench_train.py at full size (n 50,000, width 1.0) with the defaults (auto: bf16 + channels-last) and
#      --jobs 1,2,4; then alctl in fp32 NCHW (no --jobs), to separate the data path's gain from bf16's
#   4. bench_train.py with --compile (no --jobs; does torch.compile pay?)
#   5. a one-cycle +SEMI smoke run on digits, device cuda, 2 repetitions with --jobs 2, then the same with --jobs 1
#      into another run directory, and whether their tables are equal (informative on a GPU: cuDNN's kernels need
#      not be bit-reproducible)
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/alctl-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
LOG="$OUT/gpu_check.log"
step() { echo "== $* ($(date +%H:%M:%S))" | tee -a "$LOG"; }
run() { local limit=$1; shift; timeout "$limit" "$@" 2>&1 | tee -a "$LOG"; local rc=${PIPESTATUS[0]}; \
        [ "$rc" -eq 0 ] || echo "!! exit $rc: $*" | tee -a "$LOG"; return 0; }

step "1. environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/alctl-site .whl/*.whl \
    2>&1 | tee -a "$LOG"
  export PYTHONPATH=/tmp/alctl-site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . >>"$LOG" 2>&1; then
  echo "pip install -e . failed offline: using PYTHONPATH=$PWD" | tee -a "$LOG"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import torch, torchvision, numpy, pydantic, faiss, alctl.cli
print("torch", torch.__version__, "torchvision", torchvision.__version__, "numpy", numpy.__version__, "pydantic",
      pydantic.__version__, "faiss", faiss.__version__)
print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported(), "cpus", __import__("os").cpu_count())
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "!! imports failed: carry the wheels of benchmarks/gpu_wheels.sh" | tee -a "$LOG"; exit 2; }

step "2. GPU unit checks"
run 90 "$PY" - <<'EOF'
import numpy as np, torch
from alctl import config as mf, train
from alctl.engine import settings
from alctl.models import build_model
dev = torch.device("cuda")
c = settings.compute(mf.TrainConfig(), dev)
print("auto on cuda:", c)
assert c.precision == "bf16" and c.channels_last
torch.manual_seed(0)
images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, device=dev)
targets = train.Targets(labeled_pos=np.arange(256), labeled_y=np.random.default_rng(0).integers(0, 10, 256))
mean, std = [0.5] * 3, [0.25] * 3
for compute in (c, train.Compute("fp16", True), train.FP32):
    model = build_model(3, 10, 0.5).to(dev)
    seen = []
    model.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    spec = train.TrainSpec(epochs=2, batch_size=64, lr=0.05, rampdown_epochs=3, momentum=0.9, nesterov=True,
                           weight_decay=2e-4, translate=2, flip=True, min_steps=0, eval_batch_size=128, compute=compute)
    state = train.fit(model, images, targets, spec, mean, std, torch.Generator().manual_seed(0))
    p, f = train.predict(model, images, mean, std, 128, compute)
    mc = train.predict_mc(model, images[:64], mean, std, 3, 128, compute)
    assert p.dtype == f.dtype == mc.dtype == torch.float32 and p.is_cuda and f.is_cuda
    assert all(q.dtype == torch.float32 for q in model.parameters())
    assert all(seen) == compute.channels_last and (state.scaler is not None) == (compute.precision == "fp16")
    print(compute, "ok: probs", tuple(p.shape), p.dtype, "features", tuple(f.shape), f.dtype,
          "scaler", None if state.scaler is None else state.scaler.get_scale())
EOF

step "3. bench_train.py, full size, defaults (auto) and --jobs 1,2,4"
run 300 "$PY" benchmarks/bench_train.py --device cuda --jobs 1,2,4 | tee "$OUT/bench_train.txt"
step "3b. bench_train.py, alctl in fp32 NCHW"
run 100 "$PY" benchmarks/bench_train.py --device cuda --precision fp32 --channels-last false --jobs "" \
  | tee "$OUT/bench_train_fp32.txt"

step "4. bench_train.py with --compile"
run 150 "$PY" benchmarks/bench_train.py --device cuda --compile --jobs "" | tee "$OUT/bench_train_compile.txt"

step "5. one-cycle +SEMI smoke on digits, device cuda, --jobs 2 vs --jobs 1"
SMOKE=$(mktemp -d)
for name in smoke-j2 smoke-j1; do
cat > "$SMOKE/$name.yaml" <<EOF
name: $name
output: $SMOKE/runs
repetitions: 2
dataset: {name: digits}
model: {width: 0.5}
train: {epochs: 10, batch_size: 32, min_steps: 10, lr: 0.05, rampdown_epochs: 12, translate: 1, device: cuda}
active: {initial: 20, budget: 20, cycles: 2, strategy: coreset}
semi: {method: label-propagation, k: 20, phase2_epochs: 5, every: 2, batch_size: 64, labeled_per_batch: 16}
EOF
done
run 120 "$PY" -m alctl.cli cycle "$SMOKE/smoke-j2.yaml" --jobs 2
run 120 "$PY" -m alctl.cli cycle "$SMOKE/smoke-j1.yaml" --jobs 1
run 30 "$PY" - "$SMOKE/runs" <<'EOF'
import sys
from pathlib import Path
import pyarrow.parquet as pq
root = Path(sys.argv[1])
for a in sorted((root / "smoke-j2" / "tasks").glob("**/metrics.parquet")):
    b = root / "smoke-j1" / a.relative_to(root / "smoke-j2")
    ta, tb = pq.read_table(a), pq.read_table(b)
    print(a.parent.relative_to(root), "accuracy j2", ta["accuracy"].to_pylist(), "j1", tb["accuracy"].to_pylist(),
          "pseudo", ta["pseudo_accuracy"].to_pylist(), "device", ta["device"][0])
    for t in ("pool", "scores", "pseudo"):
        print("  ", t, "equal" if pq.read_table(a.parent / f"{t}.parquet").equals(pq.read_table(b.parent / f"{t}.parquet"))
              else "DIFFERENT")
EOF
run 30 "$PY" -m alctl.cli report "$SMOKE/runs/smoke-j2"
step "done"
