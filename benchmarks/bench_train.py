"""Training throughput benchmark: alctl's +SEMI epoch and feature pass vs a reference-style PyTorch loop.

The work (both loops, same device, same run): one +SEMI-style training epoch, mixed batches of --batch images
(--labeled-per-batch labeled + the rest pseudo-labeled, one pass over every pseudo-labeled image, certainty
weights and class weights in the loss, SGD with Nesterov momentum), then one feature pass over the whole pool
and the kNN graph (k = --k) of its features. Pool: --n synthetic 32x32x3 uint8 images (seeded noise), 10
classes, the first --labeled (default min(1000, n / 10)) of them labeled, the others pseudo-labeled; the network is alctl's ConvLarge at
--width (1.0 = the paper's 128/256/512 channels), initialised from the same seed for both loops.

alctl: images as one uint8 tensor on the device, batches gathered, normalised and augmented there (random
translation with reflection + flip, `alctl.augment`), the forward pass in the resolved --precision / memory format
(`alctl.train.Compute`: auto = bf16 + channels-last on a CUDA GPU with bf16, fp32 NCHW on the CPU), i.e.
`alctl.train.fit` with a `Semi` for one epoch; features by `alctl.train.predict` (float32, on the device);
the kNN by `alctl.knn.knn_search` on them (CUDA: torch products + top-k there; CPU: faiss on the tensor's memory).

Reference-style loop (as in the authors' and most PyTorch code): a Dataset of HWC uint8 numpy images, per-image
torchvision transforms on PIL images (RandomCrop(32, padding=translate, reflect), RandomHorizontalFlip, ToTensor,
Normalize) in a DataLoader with --workers worker processes (pinned memory on CUDA) over the same batches, fp32
NCHW; features the same way (ToTensor + Normalize), copied to the host as numpy, then a faiss IndexFlatIP kNN.

Each loop runs in its own fresh subprocess after a warm-up of a few steps. Peak memory: on CUDA
torch.cuda.max_memory_allocated of the timed work; on the CPU the process's peak resident set (VmHWM, the pool
included; the reference's DataLoader workers, separate processes, are listed apart). FLOPs per image come from
torch.utils.flop_counter.FlopCounterMode (forward + backward for training, forward for features); on a known GPU
the achieved rate is given as a fraction of the device's dense bf16 peak (PEAK_BF16).

--jobs 1,2,4: that many processes at once (as `alctl cycle --jobs N` runs tasks), each running alctl's training
epoch (or its first --jobs-steps batches) on its own pool after a common start signal; aggregate images/s = all
their images / wall time from the first start to the last end. On the CPU each process gets cpu_count // N
threads (unless OMP_NUM_THREADS is set).

    python benchmarks/bench_train.py                      # CUDA when present: --n 50000 --width 1.0
    python benchmarks/bench_train.py --device cpu         # CPU default: --n 2000 --width 0.25 --jobs-steps 4
    python benchmarks/bench_train.py --device cuda --precision fp32 --channels-last false --jobs 1,2,4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from procmem import reset_peak, status_kib  # benchmarks/procmem.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from alctl.knn import knn_search  # noqa: E402
from alctl.models import build_model  # noqa: E402
from alctl.propagate import class_weights  # noqa: E402
from alctl.runtime import resolve_channels_last, resolve_precision  # noqa: E402
from alctl.train import Compute, Semi, Targets, TrainSpec, fit, predict  # noqa: E402

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
CLASSES = 10
# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}
CPU_DEFAULTS = {"n": 2000, "width": 0.25}
CPU_JOBS_STEPS = 4  # batches per process of the --jobs measurement on the CPU (a whole epoch on CUDA)
GPU_DEFAULTS = {"n": 50000, "width": 1.0}
WARMUP_STEPS = 3


# --------------------------------------------------------------------------- memory




def _reset_peak(device: torch.device) -> None:
    """Reset the peak-memory mark: CUDA's allocator stats, or the process's VmHWM (clear_refs 5)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    reset_peak()


def _peak_mib(device: torch.device) -> float:
    """Peak memory since `_reset_peak`: CUDA allocated bytes, or the process's peak resident set, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return status_kib("VmHWM") / 1024


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work (timers then measure it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- the pool and the work


def make_pool(n: int, labeled: int, seed: int) -> dict[str, np.ndarray]:
    """Synthetic pool: images uint8 [n, 3, 32, 32], labels int64 [n], labeled positions [n_l], pseudo positions
    [n - n_l], pseudo labels [n - n_l], certainty weights float32 [n - n_l] in (0, 1]."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, size=n).astype(np.int64)
    n_l = min(labeled, n // 2)
    return {"images": images, "labels": labels, "labeled": np.arange(n_l, dtype=np.int64),
            "pseudo": np.arange(n_l, n, dtype=np.int64), "pseudo_y": labels[n_l:].copy(),
            "pseudo_w": rng.uniform(0.05, 1.0, size=n - n_l).astype(np.float32)}


def make_targets(pool: dict[str, np.ndarray]) -> Targets:
    """alctl's targets of the pool: labels, pseudo-labels with weights, class weights over both."""
    y_l = pool["labels"][pool["labeled"]]
    cw = class_weights(np.concatenate([y_l, pool["pseudo_y"]]), CLASSES)
    return Targets(labeled_pos=pool["labeled"], labeled_y=y_l, pseudo_pos=pool["pseudo"], pseudo_y=pool["pseudo_y"],
                   pseudo_w=pool["pseudo_w"], class_w=cw)


def make_spec(args: argparse.Namespace, compute: Compute) -> TrainSpec:
    """One epoch of SGD (the paper's lr, momentum, weight decay) with the benchmark's augmentation."""
    return TrainSpec(epochs=1, batch_size=args.batch, lr=0.05, rampdown_epochs=2, momentum=0.9, nesterov=True,
                     weight_decay=2e-4, translate=args.translate, flip=True, min_steps=0, eval_batch_size=args.eval_batch,
                     compute=compute)


def make_semi(targets: Targets, args: argparse.Namespace, per_epoch: int | None) -> Semi:
    """+SEMI's mixed batches over fixed pseudo-labels (no propagation inside the timed epoch)."""
    return Semi(refresh=lambda epoch: targets, every=1, warmup=0, batch_size=args.batch,
                labeled_per_batch=args.labeled_per_batch, unlabeled_per_epoch=per_epoch, phase2_epochs=0,
                phase2_lr=None)


def epoch_images(n_pseudo: int, args: argparse.Namespace) -> int:
    """Images one +SEMI epoch over n_pseudo pseudo-labeled images trains on: all of them, plus
    --labeled-per-batch labeled ones in each of its ceil(n_pseudo / pseudo per batch) batches."""
    per = args.batch - args.labeled_per_batch
    return n_pseudo + -(-n_pseudo // per) * args.labeled_per_batch


def resolve_compute(args: argparse.Namespace, device: torch.device) -> Compute:
    """The Compute of --precision / --channels-last / --compile on the device (as the manifest's would resolve)."""
    cl: str | bool = args.channels_last if args.channels_last == "auto" else args.channels_last == "true"
    return Compute(resolve_precision(args.precision, device), resolve_channels_last(cl, device), args.compile)


def flops_per_image(model: torch.nn.Module, device: torch.device, compute: Compute, batch: int) -> tuple[float, float]:
    """(training forward + backward, forward-only) FLOPs per 32x32x3 image, counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, 3, 32, 32, device=device)
    model.train()
    with FlopCounterMode(display=False) as counter:
        with compute.autocast(device):
            logits, _ = model(x)
        logits.float().sum().backward()
    train_flops = counter.get_total_flops() / batch
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        with compute.autocast(device):
            model(x)
    return train_flops, counter.get_total_flops() / batch


# --------------------------------------------------------------------------- alctl


def alctl_epoch(model: torch.nn.Module, images: torch.Tensor, targets: Targets, args: argparse.Namespace,
                compute: Compute, per_epoch: int | None, seed: int) -> None:
    """One +SEMI epoch of `alctl.train.fit` (per_epoch: pseudo-labeled images drawn, None = all)."""
    gen = torch.Generator().manual_seed(seed)
    fit(model, images, targets, make_spec(args, compute), MEAN, STD, gen, semi=make_semi(targets, args, per_epoch))


def run_alctl(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """alctl's epoch, feature pass and kNN, timed after a warm-up; figures for the parent."""
    pool = make_pool(args.n, args.labeled, args.seed)
    targets = make_targets(pool)
    compute = resolve_compute(args, device)
    images = torch.from_numpy(pool["images"]).to(device)
    torch.manual_seed(args.seed)
    model = build_model(3, CLASSES, args.width).to(device)
    per = args.batch - args.labeled_per_batch
    alctl_epoch(model, images, targets, args, compute, WARMUP_STEPS * per, args.seed + 1)  # warm-up (and compile)
    _, f = predict(model, images[: 2 * args.eval_batch], MEAN, STD, args.eval_batch, compute)
    knn_search(f, min(args.k, len(f) - 1))  # imports faiss on the CPU, as the reference does before timing
    _sync(device)
    _reset_peak(device)
    t0 = time.perf_counter()
    alctl_epoch(model, images, targets, args, compute, None, args.seed)
    _sync(device)
    t1 = time.perf_counter()
    _, feats = predict(model, images, MEAN, STD, args.eval_batch, compute)
    _sync(device)
    t2 = time.perf_counter()
    sims, ids = knn_search(feats, args.k)
    t3 = time.perf_counter()
    peak = _peak_mib(device)
    flops = flops_per_image(model, device, compute, 32)
    return {"train_images": epoch_images(len(pool["pseudo"]), args), "train_s": t1 - t0, "feature_s": t2 - t1,
            "knn_s": t3 - t2, "peak_mib": peak, "flops": flops, "compute": compute.__dict__,
            "knn_shape": list(ids.shape)}


# --------------------------------------------------------------------------- the reference-style loop


class PoolDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """HWC uint8 images [n, 32, 32, 3] with per-image transforms; items (image, target, weight)."""

    def __init__(self, images_hwc: np.ndarray, targets: np.ndarray, weights: np.ndarray, transform: Any) -> None:
        """Bind the arrays (indexed by pool position) and a torchvision transform."""
        self.images, self.targets, self.weights, self.transform = images_hwc, targets, weights, transform

    def __len__(self) -> int:
        """Pool size."""
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, float]:
        """One transformed image [3, 32, 32] float32, its (pseudo-)label and certainty weight."""
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.targets[i]), float(self.weights[i])


def reference_batches(targets: Targets, args: argparse.Namespace, seed: int, per_epoch: int | None) -> list[list[int]]:
    """The same mixed batches as alctl's epoch, as lists of pool positions (a DataLoader batch_sampler)."""
    from alctl.train import _mixed_batches

    gen = torch.Generator().manual_seed(seed)
    batches = _mixed_batches(len(targets.labeled_pos), len(targets.pseudo_pos), args.batch, args.labeled_per_batch,
                             per_epoch, gen)
    pos = np.concatenate([targets.labeled_pos, targets.pseudo_pos])
    return [pos[b.numpy()].tolist() for b in batches]


def reference_epoch(model: torch.nn.Module, loader: torch.utils.data.DataLoader, class_w: torch.Tensor,  # type: ignore[type-arg]
                    device: torch.device, opt: torch.optim.Optimizer) -> int:
    """One epoch over the loader's batches, fp32 NCHW; returns the images trained on."""
    import torch.nn.functional as F

    model.train()
    seen = 0
    for x, y, w in loader:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        w = w.to(device, dtype=torch.float32, non_blocking=True)
        logits, _ = model(x)
        cw = class_w[y]
        loss = (F.cross_entropy(logits, y, reduction="none") * w * cw).sum() / cw.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
    return seen


def run_reference(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The reference-style epoch, feature pass (to numpy) and faiss kNN, timed after a warm-up."""
    import faiss
    import torch.nn.functional as F
    import torchvision.transforms as T

    pool = make_pool(args.n, args.labeled, args.seed)
    targets = make_targets(pool)
    hwc = np.ascontiguousarray(pool["images"].transpose(0, 2, 3, 1))
    y = pool["labels"].copy()
    y[pool["pseudo"]] = pool["pseudo_y"]
    w = np.ones(args.n, np.float32)
    w[pool["pseudo"]] = pool["pseudo_w"]
    train_tf = T.Compose([T.RandomCrop(32, padding=args.translate, padding_mode="reflect"), T.RandomHorizontalFlip(),
                          T.ToTensor(), T.Normalize(MEAN, STD)])
    eval_tf = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    pin = device.type == "cuda"
    torch.manual_seed(args.seed)
    model = build_model(3, CLASSES, args.width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=2e-4)
    class_w = torch.as_tensor(targets.class_w, device=device)

    def loader(batches: list[list[int]]) -> torch.utils.data.DataLoader:  # type: ignore[type-arg]
        return torch.utils.data.DataLoader(PoolDataset(hwc, y, w, train_tf), batch_sampler=batches,
                                           num_workers=args.workers, pin_memory=pin)

    per = args.batch - args.labeled_per_batch
    reference_epoch(model, loader(reference_batches(targets, args, args.seed + 1, WARMUP_STEPS * per)), class_w,
                    device, opt)
    _sync(device)
    _reset_peak(device)
    t0 = time.perf_counter()
    seen = reference_epoch(model, loader(reference_batches(targets, args, args.seed, None)), class_w, device, opt)
    _sync(device)
    t1 = time.perf_counter()
    model.eval()
    feats = []
    eval_loader = torch.utils.data.DataLoader(PoolDataset(hwc, y, w, eval_tf), batch_size=args.eval_batch,
                                              num_workers=args.workers, pin_memory=pin)
    with torch.no_grad():
        for x, _, _ in eval_loader:
            _, f = model(x.to(device, non_blocking=True))
            feats.append(F.normalize(f, dim=1).cpu().numpy())
    x_host = np.ascontiguousarray(np.concatenate(feats), dtype=np.float32)
    t2 = time.perf_counter()
    index = faiss.IndexFlatIP(x_host.shape[1])
    index.add(x_host)
    _, ids = index.search(x_host, args.k + 1)
    t3 = time.perf_counter()
    peak = _peak_mib(device)
    workers_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"train_images": seen, "train_s": t1 - t0, "feature_s": t2 - t1, "knn_s": t3 - t2, "peak_mib": peak,
            "workers_peak_mib": workers_mib, "knn_shape": [ids.shape[0], ids.shape[1] - 1]}


# --------------------------------------------------------------------------- concurrent processes


def run_job(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One of N concurrent processes: warm up, say ready, wait for the go file, time alctl's epoch."""
    pool = make_pool(args.n, args.labeled, args.seed + args.job_id)
    targets = make_targets(pool)
    compute = resolve_compute(args, device)
    images = torch.from_numpy(pool["images"]).to(device)
    torch.manual_seed(args.seed)
    model = build_model(3, CLASSES, args.width).to(device)
    per = args.batch - args.labeled_per_batch
    alctl_epoch(model, images, targets, args, compute, WARMUP_STEPS * per, args.seed + 1)
    _sync(device)
    steps = args.jobs_steps
    n_pseudo = len(pool["pseudo"]) if steps is None else min(len(pool["pseudo"]), steps * per)
    barrier = Path(args.barrier)
    (barrier / f"ready.{args.job_id}").touch()
    while not (barrier / "go").exists():
        time.sleep(0.01)
    start = time.time()
    alctl_epoch(model, images, targets, args, compute, n_pseudo, args.seed)
    _sync(device)
    return {"start": start, "end": time.time(), "train_images": epoch_images(n_pseudo, args)}


# --------------------------------------------------------------------------- driver


def _worker_argv(args: argparse.Namespace, role: str, extra: list[str] | None = None) -> list[str]:
    """The command line of a worker subprocess (this script, the same settings)."""
    argv = [sys.executable, __file__, "--worker", role, "--n", str(args.n), "--width", str(args.width),
            "--batch", str(args.batch), "--labeled-per-batch", str(args.labeled_per_batch), "--labeled",
            str(args.labeled), "--device", args.device, "--precision", args.precision, "--channels-last",
            args.channels_last, "--workers", str(args.workers), "--k", str(args.k), "--translate", str(args.translate),
            "--eval-batch", str(args.eval_batch), "--seed", str(args.seed)]
    if args.compile:
        argv.append("--compile")
    if args.jobs_steps is not None:
        argv += ["--jobs-steps", str(args.jobs_steps)]
    return argv + (extra or [])


def _run_worker(args: argparse.Namespace, role: str, tmp: str) -> dict[str, Any]:
    """Run one worker subprocess to completion; its JSON result."""
    out = os.path.join(tmp, f"{role}.json")
    subprocess.run(_worker_argv(args, role, ["--out", out]), check=True)
    return json.loads(Path(out).read_text())


def _run_jobs(args: argparse.Namespace, n_jobs: int, tmp: str) -> dict[str, Any]:
    """n_jobs concurrent alctl epochs, started together; aggregate images/s over their common wall time."""
    barrier = Path(tmp) / f"barrier{n_jobs}"
    barrier.mkdir()
    env = dict(os.environ)
    if args.device_type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n_jobs))
    procs = []
    for i in range(n_jobs):
        out = str(barrier / f"job{i}.json")
        argv = _worker_argv(args, "job", ["--out", out, "--barrier", str(barrier), "--job-id", str(i)])
        procs.append((subprocess.Popen(argv, env=env), out))
    while len(list(barrier.glob("ready.*"))) < n_jobs:
        if any(p.poll() not in (None, 0) for p, _ in procs):
            raise SystemExit(f"--jobs {n_jobs}: a worker failed before the start")
        time.sleep(0.05)
    (barrier / "go").touch()
    for p, _ in procs:
        if p.wait() != 0:
            raise SystemExit(f"--jobs {n_jobs}: a worker failed")
    results = [json.loads(Path(out).read_text()) for _, out in procs]
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    images = sum(r["train_images"] for r in results)
    return {"jobs": n_jobs, "images": images, "wall_s": wall, "images_per_s": images / wall}


def _device(name: str) -> torch.device:
    """--device: auto = CUDA when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def main() -> None:
    """Parse the flags; as a worker run one measurement, else run them all and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=None, help="pool images (default 50000 on CUDA, 4000 on the CPU)")
    ap.add_argument("--width", type=float, default=None, help="ConvLarge width (default 1.0 on CUDA, 0.25 on the CPU)")
    ap.add_argument("--batch", type=int, default=128, help="images per mixed batch")
    ap.add_argument("--labeled-per-batch", type=int, default=50, help="labeled images in each mixed batch")
    ap.add_argument("--labeled", type=int, default=None,
                    help="labeled images in the pool, the rest pseudo-labeled (default min(1000, n / 10))")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="alctl's precision")
    ap.add_argument("--channels-last", default="auto", choices=["auto", "true", "false"], help="alctl's memory format")
    ap.add_argument("--compile", action="store_true", help="alctl's forward through torch.compile")
    ap.add_argument("--workers", type=int, default=None, help="reference DataLoader workers (default min(8, cpus))")
    ap.add_argument("--k", type=int, default=50, help="neighbours of the kNN graph")
    ap.add_argument("--translate", type=int, default=2, help="pixels of random translation (RandomCrop padding)")
    ap.add_argument("--eval-batch", type=int, default=512, help="images per batch of the feature pass")
    ap.add_argument("--jobs", default="1,2,4", help="concurrent process counts to measure ('' = none)")
    ap.add_argument("--jobs-steps", type=int, default=None,
                    help="batches each --jobs process trains on (default: a whole epoch on CUDA, 4 on the CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", choices=["alctl", "reference", "job"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--barrier", help=argparse.SUPPRESS)
    ap.add_argument("--job-id", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = _device(args.device)
    args.device = str(device)
    args.device_type = device.type
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    args.n = args.n or defaults["n"]
    args.width = args.width or defaults["width"]
    args.labeled = min(1000, args.n // 10) if args.labeled is None else args.labeled
    if args.jobs_steps is None and device.type == "cpu":
        args.jobs_steps = CPU_JOBS_STEPS
    args.workers = min(8, os.cpu_count() or 1) if args.workers is None else args.workers
    if args.worker:
        run = {"alctl": run_alctl, "reference": run_reference, "job": run_job}[args.worker]
        Path(args.out).write_text(json.dumps(run(args, device)))
        return

    compute = resolve_compute(args, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"bench_train: n={args.n} 32x32x3 uint8, width={args.width}, batch={args.batch} "
          f"({args.labeled_per_batch} labeled + {args.batch - args.labeled_per_batch} pseudo), labeled={args.labeled}, "
          f"k={args.k}, translate={args.translate}; device {device} ({name}); torch {torch.__version__}; "
          f"cpus={os.cpu_count()} OMP_NUM_THREADS={threads}; torch threads {torch.get_num_threads()}; --jobs "
          f"{args.jobs or 'none'}, each process {'a whole epoch' if args.jobs_steps is None else f'{args.jobs_steps} batches'}")
    print(f"alctl compute: precision {compute.precision}, channels_last {compute.channels_last}, compile "
          f"{compute.compile}; reference: fp32 NCHW, torchvision per-image transforms, DataLoader workers "
          f"{args.workers}, features to numpy + faiss")
    with tempfile.TemporaryDirectory() as tmp:
        ours = _run_worker(args, "alctl", tmp)
        ref = _run_worker(args, "reference", tmp)
        jobs = [_run_jobs(args, int(j), tmp) for j in args.jobs.split(",") if j.strip()]

    def total(r: dict[str, Any]) -> float:
        return (r["train_images"] + args.n) / (r["train_s"] + r["feature_s"] + r["knn_s"])

    mem = "CUDA max allocated" if device.type == "cuda" else "peak RSS (VmHWM)"
    for label, r in (("alctl    ", ours), ("reference", ref)):
        extra = f", DataLoader workers' peak RSS {r['workers_peak_mib']:.0f} MiB" if "workers_peak_mib" in r else ""
        print(f"{label}: train {r['train_images'] / r['train_s']:9.1f} img/s ({r['train_images']} images, "
              f"{r['train_s']:.2f} s) | features {args.n / r['feature_s']:9.1f} img/s ({r['feature_s']:.2f} s) | "
              f"kNN {r['knn_s']:.2f} s | total {total(r):9.1f} img/s | {mem} {r['peak_mib']:.0f} MiB{extra}")
    ratio_train = (ours["train_images"] / ours["train_s"]) / (ref["train_images"] / ref["train_s"])
    ratio_feat = ref["feature_s"] / ours["feature_s"]
    print(f"alctl / reference: train {ratio_train:.2f}x, features {ratio_feat:.2f}x, kNN "
          f"{ref['knn_s'] / max(ours['knn_s'], 1e-9):.2f}x, total {total(ours) / total(ref):.2f}x")
    train_flops, eval_flops = ours["flops"]
    achieved = train_flops * ours["train_images"] / ours["train_s"]
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None) if device.type == "cuda" else None
    share = f", {100 * achieved / peak:.1f}% of the {peak / 1e12:.0f} TFLOP/s dense bf16 peak" if peak else ""
    print(f"FLOPs per image: train {train_flops / 1e9:.3f} GFLOP (fwd+bwd), features {eval_flops / 1e9:.3f} GFLOP; "
          f"alctl training reaches {achieved / 1e12:.3f} TFLOP/s{share}")
    for j in jobs:
        print(f"--jobs {j['jobs']}: {j['images_per_s']:9.1f} img/s aggregate ({j['images']} images in {j['wall_s']:.2f} s"
              f" over {j['jobs']} processes)")


if __name__ == "__main__":
    main()
