"""Tests for alctl.data.registry (every named format from real small files, splits, transforms, errors) and
alctl.data.classes."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from alctl.data import DATASETS, DatasetSplits, channel_stats, class_index, load_dataset
from alctl.errors import DataMissingError, UserError
from tests.fakedata import label_pixel, write_cifar, write_mnist_idx, write_svhn

WRITERS = {
    "mnist": lambda root, rng: write_mnist_idx(root, 30, 12, rng),
    "cifar10": lambda root, rng: write_cifar(root, 25, 10, rng),
    "cifar100": lambda root, rng: write_cifar(root, 120, 100, rng, hundred=True),
    "svhn": lambda root, rng: write_svhn(root, 30, 12, rng),
}
EXPECTED_PATH = {
    "mnist": Path("MNIST") / "raw",
    "cifar10": Path("cifar-10-batches-py"),
    "cifar100": Path("cifar-100-python"),
    "svhn": Path(""),
}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every DNS lookup and socket connect fail, as on a machine without internet."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _check_contract(ds: DatasetSplits, n: int, m: int, shape: tuple[int, int, int]) -> None:
    assert ds.train_images.dtype == torch.uint8 and ds.test_images.dtype == torch.uint8
    assert ds.train_labels.dtype == torch.int64 and ds.test_labels.dtype == torch.int64
    assert ds.train_ids.dtype == torch.int64
    assert tuple(ds.train_images.shape) == (n, *shape) and tuple(ds.test_images.shape) == (m, *shape)
    assert ds.train_labels.shape == (n,) and ds.train_ids.shape == (n,) and ds.test_labels.shape == (m,)
    assert len(ds.mean) == shape[0] and len(ds.std) == shape[0]
    mean, std = channel_stats(ds.train_images)
    assert np.allclose(ds.mean, mean) and np.allclose(ds.std, std)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UserError) as info:
        load_dataset("imagenet")
    message = str(info.value)
    assert "dataset.name" in message and "'imagenet'" in message
    assert "valid: " + ", ".join(DATASETS) in message
    assert "\n" not in message


def test_mnist5k_fixed_stratified_split() -> None:
    ds = load_dataset("mnist5k")
    _check_contract(ds, 4000, 1000, (1, 28, 28))
    assert ds.classes == [str(d) for d in range(10)] and ds.num_classes == 10
    assert np.all(np.bincount(ds.test_labels.numpy(), minlength=10) == 100)
    assert np.all(np.bincount(ds.train_labels.numpy(), minlength=10) == 400)
    assert torch.all(ds.train_ids[1:] > ds.train_ids[:-1])  # row order of the file
    assert 0 <= int(ds.train_ids.min()) and int(ds.train_ids.max()) < 5000
    assert 0.05 < ds.mean[0] < 0.25 and 0.2 < ds.std[0] < 0.45  # real MNIST statistics
    assert int(ds.train_images.max()) == 255
    again = load_dataset("mnist5k")
    assert torch.equal(again.train_ids, ds.train_ids) and torch.equal(again.test_images, ds.test_images)
    assert torch.equal(again.train_images, ds.train_images) and again.mean == ds.mean


def test_digits_split_scaling_and_resize() -> None:
    ds = load_dataset("digits")
    _check_contract(ds, 1397, 400, (1, 8, 8))
    assert np.all(np.bincount(ds.test_labels.numpy(), minlength=10) == 40)
    assert int(ds.train_images.max()) == 255 and int(ds.train_images.min()) == 0
    from sklearn.datasets import load_digits

    bunch = load_digits()
    ids = ds.train_ids.numpy()
    expected = np.rint(bunch.images[ids] * 255 / 16).astype(np.uint8)
    assert np.array_equal(ds.train_images[:, 0].numpy(), expected)
    assert np.array_equal(ds.train_labels.numpy(), bunch.target[ids])
    assert len(set(ids.tolist())) == 1397

    small = load_dataset("digits", image_size=4, channels=3)
    _check_contract(small, 1397, 400, (3, 4, 4))
    assert torch.equal(small.train_ids, ds.train_ids)
    assert torch.equal(small.train_images[:, 0], small.train_images[:, 2])


def test_mnist_idx_loads_aligned(tmp_path: Path) -> None:
    written = write_mnist_idx(tmp_path, 30, 12, np.random.default_rng(1))
    ds = load_dataset("mnist", root=tmp_path)
    _check_contract(ds, 30, 12, (1, 28, 28))
    assert np.array_equal(ds.train_labels.numpy(), written["train"])
    assert np.array_equal(ds.test_labels.numpy(), written["t10k"])
    assert torch.equal(ds.train_ids, torch.arange(30))
    pix = torch.from_numpy(label_pixel(written["train"]).astype(np.uint8))
    assert torch.equal(ds.train_images, pix.view(-1, 1, 1, 1).expand(-1, 1, 28, 28))
    assert ds.num_classes == 10


def test_mnist_pad_to_32_and_replicate_channels(tmp_path: Path) -> None:
    write_mnist_idx(tmp_path, 30, 12, np.random.default_rng(2))
    native = load_dataset("mnist", root=tmp_path)
    ds = load_dataset("mnist", root=tmp_path, image_size=32, channels=3)
    _check_contract(ds, 30, 12, (3, 32, 32))
    for c in range(3):
        assert torch.equal(ds.train_images[:, c, 2:30, 2:30], native.train_images[:, 0])
        assert torch.equal(ds.test_images[:, c, 2:30, 2:30], native.test_images[:, 0])
    border = ds.train_images.clone()
    border[:, :, 2:30, 2:30] = 0
    assert int(border.max()) == 0
    assert ds.mean[0] == pytest.approx(native.mean[0] * 28 * 28 / (32 * 32))  # stats after padding
    shrunk = load_dataset("mnist", root=tmp_path, image_size=16)
    assert tuple(shrunk.train_images.shape) == (30, 1, 16, 16) and shrunk.train_images.dtype == torch.uint8
    assert torch.equal(shrunk.train_images[:, :, 8, 8], native.train_images[:, :, 0, 0])  # constant stays


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_pickles_load_chw(tmp_path: Path, hundred: bool) -> None:
    n, m = (120, 100) if hundred else (25, 10)
    written = write_cifar(tmp_path, n, m, np.random.default_rng(3), hundred=hundred)
    ds = load_dataset("cifar100" if hundred else "cifar10", root=tmp_path)
    _check_contract(ds, n, m, (3, 32, 32))
    assert np.array_equal(ds.train_labels.numpy(), written["train"])
    assert np.array_equal(ds.test_labels.numpy(), written["test"])
    assert torch.equal(ds.train_ids, torch.arange(n))
    for c in range(3):
        expected = (label_pixel(written["test"]) + c) % 256
        assert np.array_equal(ds.test_images[:, c, 5, 7].numpy(), expected)
    assert ds.num_classes == (100 if hundred else 10)
    assert ds.classes[0] == ("fine0" if hundred else "airplane")
    with pytest.raises(UserError, match="dataset.channels"):
        load_dataset("cifar10" if not hundred else "cifar100", root=tmp_path, channels=1)


def test_svhn_mat_loads_with_zero_digit(tmp_path: Path) -> None:
    written = write_svhn(tmp_path, 30, 12, np.random.default_rng(4))
    ds = load_dataset("svhn", root=tmp_path)
    _check_contract(ds, 30, 12, (3, 32, 32))
    assert np.array_equal(ds.train_labels.numpy(), written["train"])
    assert int(ds.train_labels.min()) == 0 and int(ds.train_labels.max()) == 9
    assert ds.classes == [str(d) for d in range(10)]
    for c in range(3):
        assert np.array_equal(ds.train_images[:, c, 31, 0].numpy(), label_pixel(written["train"]) + c)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_missing_files_name_the_path(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataMissingError) as info:
        load_dataset(name, root=tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere" / EXPECTED_PATH[name]) in message
    assert "dataset.download: true" in message and "\n" not in message


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_download_without_network_is_a_user_error(tmp_path: Path, name: str, no_network: None) -> None:
    with pytest.raises(DataMissingError) as info:
        load_dataset(name, root=tmp_path, download=True)
    message = str(info.value)
    assert str(tmp_path / EXPECTED_PATH[name]) in message and "download failed" in message
    assert "rerun on a machine with internet (dataset.download is true)" in message
    assert "set dataset.download" not in message and "\n" not in message


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_local_copy_used_without_network_even_with_download(tmp_path: Path, name: str, no_network: None) -> None:
    WRITERS[name](tmp_path, np.random.default_rng(5))  # md5s differ from the official files
    ds = load_dataset(name, root=tmp_path, download=True)
    assert ds.train_images.shape[0] > 0 and ds.train_images.dtype == torch.uint8


def test_corrupt_file_is_a_user_error(tmp_path: Path) -> None:
    write_cifar(tmp_path, 25, 10, np.random.default_rng(6))
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataMissingError, match="could not read CIFAR-10") as info:
        load_dataset("cifar10", root=tmp_path)
    assert "\n" not in str(info.value)


def test_class_index_takes_a_name_first_then_an_index_in_range() -> None:
    classes = ["cat", "dog", "7", "0"]
    assert class_index("dog", classes) == 1
    assert class_index("7", classes) == 2  # a class named "7" wins over index 7 (and over index 2's name)
    assert class_index("0", classes) == 3 and class_index("3", classes) == 3
    assert class_index("1", classes) == 1
    for bad in ("4", "-1", "bird", "Dog", "1.0", ""):
        assert class_index(bad, classes) is None, bad
    assert class_index("2", ["a", "b", "a"]) == 2 and class_index("a", ["a", "b", "a"]) == 0


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_the_table_of_dataset_facts_matches_what_the_loader_reads(name: str) -> None:
    from alctl.config.facts import FACTS

    ds = load_dataset(name)
    facts = FACTS[name]
    assert (ds.num_classes, len(ds.train_labels), len(ds.test_labels), ds.train_images.shape[1]) == (
        facts.classes, facts.pool, facts.test, facts.channels)
