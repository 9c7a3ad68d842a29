"""Tests for dataset.name: imagefolder — a real PNG tree of scikit-learn digits written to tmp_path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alctl.data import DatasetSplits, channel_stats, load_dataset, path_sample_id
from alctl.errors import DataMissingError, UserError

CORRUPT = ["pool/bad/empty.png", "pool/bad/notes.PNG", "pool/bad/truncated.png", "test/1/broken.jpg"]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 [n, 8, 8] and int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8), bunch.target.astype(np.int64)


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, object]:
    """root/ with pool/ (nested, .png/.PNG/.jpeg names), labeled/<digit>/, test/<digit>/, truth.csv, corrupt files."""
    images, labels = _digits()
    written: dict[str, tuple[np.ndarray, int]] = {}  # relative path -> (pixels, true label)
    for i in range(24):  # pool: three nesting depths, mixed suffix case
        rel = ["pool/a/b/d{:02d}.png", "pool/c/d{:02d}.PNG", "pool/d{:02d}.png"][i % 3].format(i)
        _save(tmp_path / rel, images[i])
        written[rel] = (images[i], int(labels[i]))
    for i in range(24, 30):  # labeled tree: classes = folder names
        rel = f"labeled/{labels[i]}/l{i}.png"
        _save(tmp_path / rel, images[i])
        written[rel] = (images[i], int(labels[i]))
    for i in range(30, 40):
        rel = f"test/{labels[i]}/t{i}.png"
        _save(tmp_path / rel, images[i])
        written[rel] = (images[i], int(labels[i]))
    for digit in range(10):  # every class has a folder (empty ones count): classes = "0".."9"
        (tmp_path / "test" / str(digit)).mkdir(parents=True, exist_ok=True)
    bad = tmp_path / "pool" / "bad"
    bad.mkdir(parents=True)
    (bad / "empty.png").write_bytes(b"")
    (bad / "notes.PNG").write_text("these are my notes, not an image\n")
    _save(bad / "whole.png", images[0])
    full = (bad / "whole.png").read_bytes()
    (bad / "truncated.png").write_bytes(full[: len(full) // 2])
    (bad / "whole.png").unlink()
    (tmp_path / "test" / "1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "pool" / "readme.txt").write_text("ignored: not an image suffix")
    (tmp_path / "pool" / ".hidden.png").write_bytes(b"")  # hidden: ignored, not skipped
    pool_rels = sorted(r for r in written if r.startswith("pool/"))
    truth_rows = [f"{rel},{written[rel][1]}" for rel in pool_rels[:16]]  # 16 of 24 known
    (tmp_path / "truth.csv").write_text("path,label\n" + "\n".join(truth_rows) + "\n")
    return {"root": tmp_path, "written": written, "pool": pool_rels, "known": set(pool_rels[:16])}


def _load(root: Path, **kwargs: object) -> DatasetSplits:
    args: dict[str, object] = dict(pool="pool", labeled="labeled", test="test", truth="truth.csv")
    args.update(kwargs)
    size = args.pop("image_size", 8)
    channels = args.pop("channels", 1)
    return load_dataset("imagefolder", root=root, image_size=size, channels=channels, **args)  # type: ignore[arg-type]


def test_tree_loads_with_labels_ids_and_skipped(tree: dict) -> None:
    root, written = tree["root"], tree["written"]
    ds = _load(root)
    train_rels = sorted(r for r in written if r.startswith(("pool/", "labeled/")))
    assert ds.name == "imagefolder" and ds.train_paths == train_rels  # sorted relative POSIX paths
    n = len(train_rels)
    assert ds.train_images.dtype == torch.uint8 and tuple(ds.train_images.shape) == (n, 1, 8, 8)
    assert ds.train_labels.dtype == torch.int64 and ds.train_ids.dtype == torch.int64
    assert tuple(ds.test_images.shape) == (10, 1, 8, 8) and ds.test_labels.dtype == torch.int64
    assert ds.classes == [str(d) for d in range(10)]
    for row, rel in enumerate(ds.train_paths):  # pixels survive PNG + 8 -> 8 "resize" exactly
        assert np.array_equal(ds.train_images[row, 0].numpy(), written[rel][0])
        label = written[rel][1] if rel.startswith("labeled/") or rel in tree["known"] else -1
        assert int(ds.train_labels[row]) == (ds.classes.index(str(label)) if label >= 0 else -1)
    assert (ds.train_labels == -1).sum() == 8
    assert ds.initial_positions is not None and ds.initial_positions.dtype == np.int64
    assert [ds.train_paths[i] for i in ds.initial_positions] == [r for r in train_rels if r.startswith("labeled/")]
    test_rels = sorted(r for r in written if r.startswith("test/"))
    assert [ds.classes[i] for i in ds.test_labels.tolist()] == [r.split("/")[1] for r in test_rels]
    assert sorted(line.split(": ")[0] for line in ds.skipped) == sorted(CORRUPT)
    assert all(len(line.split(": ", 1)[1]) > 0 and "\n" not in line for line in ds.skipped)
    assert "pool/bad/empty.png: empty file (0 bytes)" in ds.skipped
    digest = hashlib.blake2b(train_rels[0].encode(), digest_size=8).digest()
    assert int(ds.train_ids[0]) == int.from_bytes(digest, "big") & (2**63 - 1) == path_sample_id(train_rels[0])
    assert len(set(ds.train_ids.tolist())) == n and int(ds.train_ids.min()) >= 0
    assert np.allclose(ds.mean, channel_stats(ds.train_images)[0]) and np.allclose(ds.std, channel_stats(ds.train_images)[1])


def test_ids_stable_across_loads_and_added_files(tree: dict) -> None:
    root = tree["root"]
    first, second = _load(root), _load(root)
    assert torch.equal(first.train_ids, second.train_ids) and torch.equal(first.train_images, second.train_images)
    _save(root / "pool" / "a" / "aa_new.png", _digits()[0][50])  # first pool row: positions shift
    (root / "pool" / "d02.png").unlink()
    third = _load(root)
    before = dict(zip(first.train_paths, first.train_ids.tolist()))
    after = dict(zip(third.train_paths, third.train_ids.tolist()))
    assert third.train_paths.index("pool/a/aa_new.png") == 6 and "pool/d02.png" not in after  # after labeled/
    assert all(after[p] == before[p] for p in after if p in before)
    assert after["pool/a/aa_new.png"] == path_sample_id("pool/a/aa_new.png")


def test_rgb_default_resize_and_centre_crop(tree: dict) -> None:
    root = tree["root"]
    ds = _load(root, channels=None, image_size=16)
    assert tuple(ds.train_images.shape)[1:] == (3, 16, 16) and ds.test_images.shape[1:] == (3, 16, 16)
    assert torch.equal(ds.train_images[:, 0], ds.train_images[:, 2]) and len(ds.mean) == 3
    wide = np.zeros((10, 30, 3), dtype=np.uint8)  # red | green | blue thirds: centre crop keeps green
    wide[:, :10, 0], wide[:, 10:20, 1], wide[:, 20:, 2] = 255, 255, 255
    _save(root / "pool" / "wide.jpeg", wide)
    ds = _load(root, channels=3, image_size=4)
    row = ds.train_paths.index("pool/wide.jpeg")
    pixels = ds.train_images[row].to(torch.int64)
    assert int(pixels[1].min()) > 200 and int(pixels[0].max()) < 60 and int(pixels[2].max()) < 60


def test_no_test_tree_gives_empty_test_split_and_unknown_labels(tree: dict) -> None:
    ds = _load(tree["root"], test=None, truth=None, labeled=None, classes=["zero", "one"], image_size=12)
    assert tuple(ds.test_images.shape) == (0, 1, 12, 12) and tuple(ds.test_labels.shape) == (0,)
    assert ds.test_images.dtype == torch.uint8 and ds.test_labels.dtype == torch.int64
    assert bool((ds.train_labels == -1).all()) and ds.initial_positions is not None and ds.initial_positions.size == 0
    assert ds.classes == ["zero", "one"] and len(ds.train_paths) == 24


def test_explicit_classes_order_and_unlisted_folder(tree: dict) -> None:
    root = tree["root"]
    names = [str(d) for d in range(9, -1, -1)]  # reversed order: index 0 is class "9"
    ds = _load(root, classes=names)
    assert ds.classes == names
    for row in ds.initial_positions.tolist():
        assert names[int(ds.train_labels[row])] == ds.train_paths[row].split("/")[1]
    with pytest.raises(UserError) as info:
        _load(root, classes=[str(d) for d in range(9)], truth=None)  # no "9"
    message = str(info.value)
    assert "class folder" in message and "/9 " in message and "dataset.classes" in message


def test_nested_layout_pool_dot_excludes_class_trees(tree: dict) -> None:
    root = tree["root"]
    ds = _load(root, pool=".", truth=None)
    assert not any(p.startswith("test/") for p in ds.train_paths)
    assert len(ds.train_paths) == len(set(ds.train_paths)) == 30  # 24 pool + 6 labeled, each once
    assert len(ds.initial_positions) == 6


def test_truth_errors_one_line_per_bad_row(tree: dict) -> None:
    root = tree["root"]
    rows = ["path,label", f"{tree['pool'][0]},3", "pool/nowhere.png,3", f"{tree['pool'][1]},seven", f"{tree['pool'][2]},10"]
    (root / "bad.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(UserError) as info:
        _load(root, truth="bad.csv")
    problems = info.value.problems
    assert len(problems) == 3 and all(p.startswith("dataset.truth: ") for p in problems)
    assert "line 3" in problems[0] and "'pool/nowhere.png' is not an image of the pool" in problems[0]
    assert "line 4" in problems[1] and "unknown class 'seven'" in problems[1]
    assert "line 5" in problems[2] and "unknown class '10'" in problems[2]
    many = ["path,label"] + [f"pool/missing{i}.png,1" for i in range(30)]
    (root / "many.csv").write_text("\n".join(many) + "\n")
    with pytest.raises(UserError) as info:
        _load(root, truth="many.csv")
    assert len(info.value.problems) == 21 and info.value.problems[-1] == "... and 10 more"
    (root / "noheader.csv").write_text(f"{tree['pool'][0]},1\n")
    with pytest.raises(UserError, match="header line with the columns path,label"):
        _load(root, truth="noheader.csv")
    labeled_rel = next(r for r in tree["written"] if r.startswith("labeled/"))
    wrong = (int(labeled_rel.split("/")[1]) + 1) % 10
    (root / "conflict.csv").write_text(f"label,path\n{wrong},{labeled_rel}\n")  # columns in any order
    with pytest.raises(UserError, match="lies in the class folder"):
        _load(root, truth="conflict.csv")
    with pytest.raises(DataMissingError, match="dataset.truth: file .*absent.csv not found"):
        _load(root, truth="absent.csv")


def test_truth_row_for_a_corrupt_file_is_not_an_error(tree: dict) -> None:
    root = tree["root"]
    (root / "truth.csv").write_text(f"path,label\npool/bad/truncated.png,3\n./{tree['pool'][0]},4\n")
    ds = _load(root)
    assert "pool/bad/truncated.png" not in ds.train_paths  # skipped, listed, and its truth row ignored
    assert int(ds.train_labels[ds.train_paths.index(tree["pool"][0])]) == ds.classes.index("4")


def test_missing_and_empty_pool(tree: dict, tmp_path: Path) -> None:
    with pytest.raises(DataMissingError) as info:
        _load(tree["root"], pool="nowhere")
    assert "dataset.pool" in str(info.value) and str(tree["root"] / "nowhere") in str(info.value)
    assert info.value.exit_code == 2
    only_bad = tmp_path / "only_bad"
    (only_bad / "pool").mkdir(parents=True)
    (only_bad / "pool" / "zero.png").write_bytes(b"")
    with pytest.raises(UserError, match="dataset.pool: none of the 1 images could be decoded"):
        load_dataset("imagefolder", root=only_bad, image_size=8, pool="pool", classes=["a"])
    (only_bad / "pool" / "zero.png").unlink()
    with pytest.raises(UserError, match="dataset.pool: no PNG/JPEG images under"):
        load_dataset("imagefolder", root=only_bad, image_size=8, pool="pool", classes=["a"])


def test_absolute_paths_and_field_errors(tree: dict) -> None:
    root = tree["root"]
    ds = load_dataset("imagefolder", root=root, image_size=8, channels=1, pool=str(root / "pool"), classes=["x"])
    assert ds.train_paths[0].startswith("pool/")  # relative to root even when given absolute
    (root / "labeled" / "stray.png").write_bytes((root / tree["pool"][0]).read_bytes())
    with pytest.raises(UserError, match="dataset.labeled: labeled/stray.png is not inside a class folder"):
        _load(root)
    with pytest.raises(UserError, match="dataset.image_size"):
        load_dataset("imagefolder", root=root, pool="pool", classes=["x"])
    with pytest.raises(UserError, match="dataset.pool: only for dataset.name: imagefolder"):
        load_dataset("digits", pool="pool")
    with pytest.raises(UserError, match="dataset.test: .* is the same folder as dataset.pool"):
        load_dataset("imagefolder", root=root, image_size=8, pool="pool", test="./pool", classes=["x"])


def test_thread_pool_decoding_matches_serial(tree: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from alctl.data import imagefolder

    serial = _load(tree["root"], image_size=6)
    monkeypatch.setattr(imagefolder, "_SERIAL_BELOW", 1)
    monkeypatch.setattr(imagefolder.os, "cpu_count", lambda: 4)
    threaded = _load(tree["root"], image_size=6)
    assert torch.equal(serial.train_images, threaded.train_images) and serial.skipped == threaded.skipped
    assert torch.equal(serial.test_images, threaded.test_images)
