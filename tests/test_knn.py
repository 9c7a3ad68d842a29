"""kNN search: exact against brute force, the torch path against faiss, approximate recall, self-match removal, entry checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alctl.knn import METHODS, _drop_self, _fill_missing, _torch_exact, knn_search


def _normalise(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def clustered(n: int, dim: int, clusters: int, noise: float, seed: int = 0) -> np.ndarray:
    """Gaussian clusters around random unit centres, L2-normalised float32 rows."""
    rng = np.random.default_rng(seed)
    centres = _normalise(rng.normal(size=(clusters, dim)))
    x = centres[rng.integers(0, clusters, n)] + noise * rng.normal(size=(n, dim)) / np.sqrt(dim)
    return _normalise(x)


def brute_force(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest by inner product in float64, self excluded."""
    s = x.astype(np.float64) @ x.astype(np.float64).T
    np.fill_diagonal(s, -np.inf)
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, axis=1), ids


def test_exact_matches_brute_force():
    x = _normalise(np.random.default_rng(0).normal(size=(300, 16)))
    sims, ids = knn_search(x, 12)
    ref_s, ref_i = brute_force(x, 12)
    assert sims.shape == ids.shape == (300, 12)
    assert sims.dtype == np.float32 and ids.dtype == np.int64
    assert np.array_equal(ids, ref_i)
    assert np.allclose(sims, ref_s, atol=1e-6)
    assert np.all(np.diff(sims, axis=1) <= 0)
    assert not (ids == np.arange(300)[:, None]).any()


def test_torch_blocked_path_equals_faiss():
    x = clustered(1000, 24, 8, 1.0, seed=1)
    sims, ids = knn_search(x, 15)
    for block in (37, 1000):  # uneven blocks, one block
        t_sims, t_ids = _torch_exact(torch.from_numpy(x), 15, block_rows=block)
        assert t_sims.dtype == np.float32 and t_ids.dtype == np.int64
        assert np.allclose(t_sims, sims, atol=1e-5)
        assert np.array_equal(t_ids, ids)


def test_cpu_tensor_takes_the_numpy_path():
    x = clustered(400, 8, 4, 1.0, seed=2)
    a = knn_search(torch.from_numpy(x), 5)
    b = knn_search(x, 5)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensor_searches_on_the_device():
    x = clustered(3000, 24, 8, 1.0, seed=9)
    sims, ids = knn_search(torch.from_numpy(x).cuda(), 10)  # blocked products + topk on the GPU
    ref_s, ref_i = knn_search(x, 10)
    assert sims.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (3000, 10)
    assert np.allclose(sims, ref_s, atol=1e-5)
    assert np.mean(ids == ref_i) > 0.999  # ties and last-bit rounding may swap equally similar ids
    assert not (ids == np.arange(3000)[:, None]).any()
    a_s, a_i = knn_search(torch.from_numpy(x).cuda(), 10, "hnsw")  # approximate: copied to the CPU
    assert a_i.shape == (3000, 10) and np.mean([np.intersect1d(u, v).size for u, v in zip(a_i, ref_i)]) > 9.5


@pytest.mark.parametrize("method,floor", [("ivf", 0.98), ("hnsw", 0.98)])
def test_approximate_recall_and_determinism(method, floor):
    # measured here: ivf 0.998, hnsw 0.999 recall@10 on this data
    x = clustered(20000, 32, 20, 1.0, seed=3)
    _, exact = knn_search(x, 10)
    sims, ids = knn_search(x, 10, method, seed=5)
    recall = np.mean([np.intersect1d(a, b).size for a, b in zip(ids, exact)]) / 10
    assert recall >= floor, recall
    assert not (ids == np.arange(x.shape[0])[:, None]).any()
    assert np.all(np.diff(sims, axis=1) <= 1e-6)
    again = knn_search(x, 10, method, seed=5)
    assert np.array_equal(again[1], ids) and np.array_equal(again[0], sims)


def test_approximate_on_a_tiny_pool():
    x = clustered(60, 8, 3, 1.0, seed=4)
    for method in METHODS:
        sims, ids = knn_search(x, 5, method)
        assert ids.shape == (60, 5) and (ids >= 0).all()
        assert not (ids == np.arange(60)[:, None]).any()


def test_drop_self_removes_own_id_or_last_column():
    sims = np.array([[1.0, 0.9, 0.8], [0.95, 0.9, 0.7], [0.99, 0.99, 0.5]], dtype=np.float32)
    ids = np.array([[0, 5, 6], [7, 1, 8], [4, 3, 9]], dtype=np.int64)  # row 2 does not list itself
    s, i = _drop_self(sims, ids)
    assert i.tolist() == [[5, 6], [7, 8], [4, 3]]
    assert np.allclose(s, [[0.9, 0.8], [0.95, 0.7], [0.99, 0.99]])


def test_duplicates_never_list_themselves():
    base = _normalise(np.random.default_rng(6).normal(size=(10, 4)))
    x = np.ascontiguousarray(np.repeat(base, 5, axis=0))  # every point 5 times
    sims, ids = knn_search(x, 4)
    assert not (ids == np.arange(50)[:, None]).any()
    assert np.allclose(sims, 1.0, atol=1e-6)  # the 4 other copies
    assert (ids // 5 == np.arange(50)[:, None] // 5).all()


def test_fill_missing_searches_short_rows_exactly():
    x = clustered(200, 8, 4, 1.0, seed=7)
    sims, ids = knn_search(x, 6)
    raw_s = np.full((200, 7), -np.finfo(np.float32).max, dtype=np.float32)
    raw_i = np.full((200, 7), -1, dtype=np.int64)
    raw_s[:, 0], raw_i[:, 0] = 1.0, np.arange(200)
    raw_s[:, 1:], raw_i[:, 1:] = sims, ids
    raw_i[[3, 50], 5:] = -1  # two rows answered short
    s, i = _fill_missing(x, 6, raw_s, raw_i)
    assert np.array_equal(i, ids) and np.allclose(s, sims)


def test_entry_checks():
    x = clustered(50, 8, 2, 1.0, seed=8)
    with pytest.raises(ValueError, match="float32"):
        knn_search(x.astype(np.float64), 3)
    with pytest.raises(ValueError, match=r"\[n, D\]"):
        knn_search(x[0], 3)
    with pytest.raises(ValueError, match="contiguous"):
        knn_search(np.asfortranarray(x), 3)
    with pytest.raises(ValueError, match="contiguous"):
        knn_search(_normalise(np.ones((50, 8)))[::2], 3)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        knn_search(bad, 3)
    with pytest.raises(ValueError, match="L2-normalised"):
        knn_search(x * 2, 3)
    for k in (0, 50, 3.0, True):
        with pytest.raises(ValueError, match=r"\[1, 49\]"):
            knn_search(x, k)
    with pytest.raises(ValueError, match="valid: exact, ivf, hnsw"):
        knn_search(x, 3, "lsh")
    with pytest.raises(ValueError, match="numpy array or a torch tensor"):
        knn_search(x.tolist(), 3)
    with pytest.raises(ValueError, match="float32"):
        knn_search(torch.from_numpy(x).double(), 3)


# --------------------------------------------------------------------------- large n


def test_exact_equals_brute_force_for_large_n():
    # n >= 10,000 (the sizes a pruned search used to take), clustered, with duplicate rows
    base = clustered(12_000, 32, 20, 0.4, seed=11)
    x = np.ascontiguousarray(np.concatenate([base, base[:7]]))
    sims, ids = knn_search(x, 20)
    assert sims.shape == ids.shape == (12_007, 20)
    assert sims.dtype == np.float32 and ids.dtype == np.int64
    assert not (ids == np.arange(x.shape[0])[:, None]).any()
    assert np.all(np.diff(sims, axis=1) <= 0)
    x64 = x.astype(np.float64)
    for lo in range(0, x.shape[0], 4_096):  # brute force in float64, in row blocks
        s = x64[lo : lo + 4_096] @ x64.T
        s[np.arange(s.shape[0]), np.arange(lo, lo + s.shape[0])] = -np.inf
        ref = -np.sort(-s, axis=1)[:, :20]
        assert np.allclose(sims[lo : lo + 4_096], ref, atol=1e-5)
        # every id names a neighbour exactly as similar as the reference's at that rank (ties may swap ids)
        got = np.take_along_axis(s, ids[lo : lo + 4_096], axis=1)
        assert np.abs(got - ref).max() <= 1e-6
        assert (np.diff(np.sort(ids[lo : lo + 4_096], axis=1), axis=1) > 0).all()  # no id twice in a row


def test_knn_vote_equals_a_brute_force_weighted_vote() -> None:
    from alctl.knn import knn_vote

    train, queries = clustered(300, 8, 4, 0.8, seed=1), clustered(50, 8, 4, 0.8, seed=2)
    labels = np.random.default_rng(3).integers(0, 3, 300)
    for k in (1, 7):
        s = queries.astype(np.float64) @ train.astype(np.float64).T
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        votes = np.zeros((50, 3))
        for q in range(50):
            for j in top[q]:
                votes[q, labels[j]] += max(s[q, j], 0.0) + 1e-6
        assert (knn_vote(train, labels, queries, k, 3) == votes.argmax(1)).mean() >= 0.98  # float32 near-ties aside
    assert knn_vote(train[:2], labels[:2], queries, 5, 3).shape == (50,)  # k capped at n
    with pytest.raises(ValueError):
        knn_vote(train, labels + 5, queries, 1, 3)
