"""Long-tailed pools (dataset.imbalance): the exponential profile, seeded draws, ids kept, the test split whole."""

from __future__ import annotations

import numpy as np
import pytest

from alctl import config as mf
from alctl.data.imbalance import long_tail_counts, long_tailed
from alctl.engine.workspace import dataset_for
from alctl.errors import ManifestError


def test_the_exponential_profile_goes_from_the_largest_class_to_one_ratio_th_of_it() -> None:
    counts = long_tail_counts(np.full(10, 400), 50.0)
    assert counts[0] == 400 and counts[-1] == 8 and (np.diff(counts) <= 0).all()
    assert counts.tolist() == np.rint(400 * 50.0 ** (-np.arange(10) / 9)).astype(int).tolist()
    assert long_tail_counts(np.array([5, 3, 9]), 1.0).tolist() == [5, 3, 9]  # ratio 1: as it is
    assert long_tail_counts(np.array([10, 10, 0]), 100.0).tolist() == [10, 1, 0]  # at least one where any
    with pytest.raises(ValueError, match=">= 1"):
        long_tail_counts(np.array([3]), 0.5)


def test_a_long_tailed_mnist5k_keeps_ids_and_the_test_split() -> None:
    full = dataset_for(mf.parse({"dataset": {"name": "mnist5k"}}))
    skewed = dataset_for(mf.parse({"dataset": {"name": "mnist5k", "imbalance": {"ratio": 50}}}))
    assert np.bincount(skewed.train_labels.numpy()).tolist() == long_tail_counts(
        np.bincount(full.train_labels.numpy()), 50.0).tolist()
    assert skewed.test_labels.equal(full.test_labels) and skewed.test_images.equal(full.test_images)
    # each kept image is the full pool's image of the same id and label
    where = {int(i): k for k, i in enumerate(full.train_ids.numpy())}
    rows = np.array([where[int(i)] for i in skewed.train_ids.numpy()])
    assert skewed.train_images.equal(full.train_images[rows]) and skewed.train_labels.equal(full.train_labels[rows])
    again = long_tailed(full, 50.0, 0)
    other = long_tailed(full, 50.0, 1)
    assert again.train_ids.equal(skewed.train_ids) and not other.train_ids.equal(skewed.train_ids)


def test_imbalance_is_for_named_datasets_only() -> None:
    with pytest.raises(ManifestError, match="dataset.imbalance: for the named datasets only"):
        mf.parse({"dataset": {"name": "imagefolder", "pool": "p", "imbalance": {"ratio": 10}}})
    with pytest.raises(ManifestError, match="dataset.imbalance.ratio"):
        mf.parse({"dataset": {"name": "mnist5k", "imbalance": {"ratio": 0.5}}})
