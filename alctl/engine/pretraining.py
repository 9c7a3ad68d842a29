"""+PRE orchestration: one encoder (DeepCluster or SimCLR) per key under runs/<name>/pretrain/, trained once under a
lock, resumed after an interruption, checked against the task when loaded."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from alctl.config import identity
from alctl import config as mf
from alctl import runtime, store
from alctl.console import Ui
from alctl.data import DatasetSplits
from alctl.engine import checkpoint, settings
from alctl.errors import AlctlError, Preempted, UserError
from alctl.models import ConvLarge, build_model
from alctl.pretrain import PROBE_K, EpochStats, PretrainState, Probe, deepcluster, encoder_problem, encoder_state
from alctl.simclr import SimclrState, simclr

ENCODER_FILE = "an alctl encoder file"


def pretrain_key(config: mf.Manifest, ds: DatasetSplits) -> str:
    """Hash of what determines the encoder: its identity (`identity.encoder_fields`) and the input shape."""
    return identity.digest({**identity.encoder_fields(config), "input": list(ds.train_images.shape[1:])})


def _encoder_settings(config: mf.Manifest, ds: DatasetSplits, key: str) -> dict[str, Any]:
    """What an encoder file records about itself, compared when it is loaded."""
    return {"key": key, "method": mf.encoder_method(config), "dataset": config.dataset.name,
            "input": list(ds.train_images.shape[1:]), "width": config.model.width,
            "pretrain": config.pretrain.model_dump(mode="json", exclude={"weights"}), "seed": config.seed}


def pretrain_paths(config: mf.Manifest, key: str) -> dict[str, Path]:
    """Files of one pre-training under runs/<name>/pretrain/."""
    base = mf.run_dir(config) / "pretrain"
    return {"weights": base / f"{key}.pt", "settings": base / f"{key}.yaml", "metrics": base / f"{key}.parquet",
            "checkpoint": base / f"{key}.ckpt.pt", "lock": base / f"{key}.lock"}


def load_encoder_file(path: Path, config: mf.Manifest, ds: DatasetSplits) -> dict[str, torch.Tensor]:
    """Encoder weights from a file written by `alctl pretrain` (weights_only), checked against the task's
    dataset and model (settings, then every weight's name, shape and finiteness); a UserError naming the file."""
    if not path.is_file():
        raise UserError(f"pretrain.weights: {path} not found; run `alctl pretrain MANIFEST` or fix the path")
    payload = checkpoint.load(path, ENCODER_FILE, field="pretrain.weights")
    if not isinstance(payload.get("encoder"), dict):
        raise UserError(f"pretrain.weights: {path} is not {ENCODER_FILE} (no 'encoder' entry)")
    saved = payload.get("settings", {})
    saved = saved if isinstance(saved, dict) else {}
    want = {"dataset": config.dataset.name, "input": list(ds.train_images.shape[1:]), "width": config.model.width}
    for name, value in want.items():
        if saved.get(name) != value:
            raise UserError(
                f"pretrain.weights: {path} was pre-trained with {name} {saved.get(name)!r}, this task has {value!r};"
                " pre-train for this configuration (`alctl pretrain MANIFEST`) or use matching weights"
            )
    with torch.random.fork_rng(devices=[]), torch.device("meta"):  # shapes only: no memory, no trace on the RNG
        model = build_model(ds.train_images.shape[1], ds.num_classes, config.model.width, config.model.dropout,
                            mf.l2_features(config))
    problem = encoder_problem(model, payload["encoder"])
    if problem is not None:
        raise checkpoint.refusal(f"pretrain.weights: {path}", ENCODER_FILE, f"{problem}; pre-train again (`alctl"
                                 " pretrain MANIFEST`, after removing the file) or use other weights")
    return payload["encoder"]


def ensure_pretrained(
    config: mf.Manifest, ds: DatasetSplits, device: torch.device, ui: Ui, stop: Callable[[], bool]
) -> tuple[dict[str, torch.Tensor], float]:
    """The encoder weights of a task (`manifest.encoder_method`: +PRE's, or a cold start's), training (or
    resuming) it once under a lock if missing.

    Returns (weights, seconds spent pre-training in this call). Concurrent tasks wait for the one that trains.
    """
    if config.pretrain.weights is not None:
        return load_encoder_file(Path(config.pretrain.weights), config, ds), 0.0
    key = pretrain_key(config, ds)
    paths = pretrain_paths(config, key)
    if paths["weights"].is_file():
        return load_encoder_file(paths["weights"], config, ds), 0.0
    lock = store.Lock(paths["lock"], f"pre-training {key}")
    lock.wait(on_wait=lambda owner: ui.line(
        f"pre-training {key} is running in process {owner.get('pid')} on {owner.get('host')}; waiting for it"))
    try:
        if paths["weights"].is_file():  # finished by the process we waited for
            return load_encoder_file(paths["weights"], config, ds), 0.0
        started = time.perf_counter()
        _run_pretrain(config, ds, device, key, paths, ui, stop, lock)
        return load_encoder_file(paths["weights"], config, ds), time.perf_counter() - started
    finally:
        lock.release()


def _deepcluster_to_plain(state: PretrainState) -> dict[str, Any]:
    """A PretrainState as tensors, numbers and strings (weights_only checkpoint)."""
    prev = state.previous_assign
    return {"epoch": state.epoch, "body_optimizer": state.body_optimizer,
            "previous_assign": None if prev is None else torch.from_numpy(prev),
            "history": [dataclasses.asdict(e) for e in state.history]}


def _deepcluster_from_plain(d: dict[str, Any]) -> PretrainState:
    """Inverse of `_deepcluster_to_plain`."""
    prev = d["previous_assign"]
    return PretrainState(epoch=int(d["epoch"]), body_optimizer=d["body_optimizer"],
                         previous_assign=None if prev is None else prev.cpu().numpy(),
                         history=[EpochStats(**e) for e in d["history"]])


def _simclr_to_plain(state: SimclrState) -> dict[str, Any]:
    """A SimclrState as tensors, numbers and strings (weights_only checkpoint)."""
    return {"epoch": state.epoch, "optimizer": state.optimizer, "head": state.head,
            "history": [dataclasses.asdict(e) for e in state.history]}


def _simclr_from_plain(d: dict[str, Any]) -> SimclrState:
    """Inverse of `_simclr_to_plain`."""
    return SimclrState(epoch=int(d["epoch"]), optimizer=d["optimizer"], head=d["head"],
                       history=[EpochStats(**e) for e in d["history"]])


@dataclass(frozen=True)
class _Method:
    """One pre-training method as the engine runs it: its spec, loop and checkpointed state."""

    spec: Any  # PretrainSpec | SimclrSpec (both carry .epochs)
    run: Callable[..., Any]  # deepcluster | simclr: (model, images, mean, std, spec, seed, **keywords) -> state
    to_plain: Callable[[Any], dict[str, Any]]
    from_plain: Callable[[dict[str, Any]], Any]
    head: int | None  # outputs of the classifier the checkpointed model has (DeepCluster's K), None: unchanged
    l2_features: bool  # the network's own head (DeepCluster's rethinking recipe uses the task's)
    lr_field: str  # the manifest field to lower when training diverges
    lr: float


def _method(config: mf.Manifest, ds: DatasetSplits) -> _Method:
    """How the task's encoder is trained (`manifest.encoder_method`), settings resolved for the pool's images."""
    shape = tuple(ds.train_images.shape[1:])
    if mf.encoder_method(config) == "simclr":
        spec = settings.simclr_spec(config, ds.num_classes, shape, len(ds.train_labels))  # type: ignore[arg-type]
        return _Method(spec, simclr, _simclr_to_plain, _simclr_from_plain, None, False,
                       "pretrain.simclr.lr", config.pretrain.simclr.lr)
    spec = settings.pretrain_spec(config, ds.num_classes, shape)  # type: ignore[arg-type]
    if not 1 <= spec.clusters <= len(ds.train_labels):
        raise UserError(f"pretrain.clusters_per_class: {config.pretrain.clusters_per_class} x {ds.num_classes}"
                        f" classes = {spec.clusters} clusters, more than the {len(ds.train_labels)} pool images")
    # Caron et al.'s head sees the raw features; the authors' (rethinking) network is their classifier's
    l2 = mf.l2_features(config) and config.pretrain.recipe == "rethinking"
    return _Method(spec, deepcluster, _deepcluster_to_plain, _deepcluster_from_plain, spec.clusters, l2,
                   "pretrain.lr", config.pretrain.lr)


def _run_pretrain(
    config: mf.Manifest, ds: DatasetSplits, device: torch.device, key: str, paths: dict[str, Path], ui: Ui,
    stop: Callable[[], bool], lock: store.Lock,
) -> None:
    """The task's pre-training from scratch or from its last finished epoch; writes weights, settings and
    per-epoch metrics."""
    method = _method(config, ds)
    runtime.seed_torch(config.seed, 0, 0, "pretrain-init")
    model = build_model(ds.train_images.shape[1], ds.num_classes, config.model.width, config.model.dropout,
                        method.l2_features).to(device)
    state = None
    if paths["checkpoint"].is_file():
        what = "an alctl pre-training checkpoint"
        ckpt = checkpoint.load(paths["checkpoint"], what, device)
        if method.head is not None:
            model.reset_classifier(method.head)
        checkpoint.load_weights(model, ckpt["model"], paths["checkpoint"], what)
        with checkpoint.reading(paths["checkpoint"], what):
            state = method.from_plain(ckpt["state"])
        ui.line(f"pre-training {key}: resuming after epoch {state.epoch}/{method.spec.epochs}")
    truth = ds.train_labels.numpy()
    labels = truth if (truth >= 0).all() else None
    probe = None
    if labels is not None and len(ds.test_labels):  # a simulation: measure the encoder (never used to train)
        probe = Probe(ds.test_images.to(device), ds.test_labels.numpy(), labels, ds.num_classes)
    encoder_settings = _encoder_settings(config, ds, key)
    store.atomic_write_bytes(paths["settings"], json.dumps(encoder_settings, indent=2).encode())

    def on_epoch(st: Any, m: ConvLarge) -> None:
        checkpoint.save(paths["checkpoint"], {"model": m.state_dict(), "state": method.to_plain(st)})
        e = st.history[-1]
        store.append_table(paths["metrics"], "pretrain", store.to_table("pretrain", {
            "epoch": [e.epoch], "kmeans_loss": [e.kmeans_loss], "nmi_previous": [e.nmi_previous],
            "nmi_labels": [e.nmi_labels], "reseeded": [e.reseeded], "train_loss": [e.train_loss],
            "seconds": [e.seconds], "seconds_kmeans": [e.seconds_kmeans], "knn_accuracy": [e.knn_accuracy]}))
        lock.beat()
        nmi = "" if e.nmi_labels is None else f", NMI to labels {e.nmi_labels:.3f}"
        knn = "" if e.knn_accuracy is None else f", {PROBE_K}-NN test accuracy {100 * e.knn_accuracy:.2f}%"
        ui.line(f"pre-training {key} epoch {e.epoch + 1}/{method.spec.epochs}: loss {e.train_loss:.4g}, k-means loss"
                f" {e.kmeans_loss:.4g}{nmi}{knn}, {e.seconds:.1f}s")

    if state is not None and paths["metrics"].is_file():  # drop rows of an epoch that was not checkpointed
        rows = store.read_table(paths["metrics"], "pretrain")
        keep = rows["epoch"].to_numpy() < state.epoch
        store.write_table(paths["metrics"], "pretrain", rows.filter(pa.array(keep)))
    elif state is None:
        paths["metrics"].unlink(missing_ok=True)
    images = ds.train_images.to(device)
    try:
        final = method.run(model, images, ds.mean, ds.std, method.spec, config.seed, labels=labels, state=state,
                           on_epoch=on_epoch, should_stop=stop, probe=probe)
    except FloatingPointError as exc:  # the loss or the weights became NaN or infinite: that epoch is not kept
        raise AlctlError(f"pre-training {key}: {exc}; lower {method.lr_field} (now {method.lr:g})") from None
    if final.epoch < method.spec.epochs:
        raise Preempted(f"pre-training {key} stopped after epoch {final.epoch}/{method.spec.epochs}; rerun to resume")
    checkpoint.save(paths["weights"], {"encoder": encoder_state(model), "settings": encoder_settings})
    paths["checkpoint"].unlink(missing_ok=True)
