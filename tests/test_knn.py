"""kNN search: exact against brute force, the torch path against faiss, approximate recall, self-match removal, entry checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alctl import knn
from alctl.knn import METHODS, _drop_self, _fill_missing, _pruned_exact, _torch_exact, knn_search


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


# --------------------------------------------------------------------------- pruned exact search (CPU, large n)


def _faiss_top(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """faiss IndexFlatIP top-(k + 1), self included: the reference for _pruned_exact."""
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.search(x, k + 1)


def assert_same_neighbours(x: np.ndarray, sims, ids, ref_sims, ref_ids) -> None:
    """Equal to the reference up to ties: sims within 1e-5, and wherever the ids differ, both ids are equally
    similar to the row (float64, within 1e-6); no row lists an id twice."""
    assert sims.shape == ids.shape == ref_ids.shape
    assert sims.dtype == np.float32 and ids.dtype == np.int64
    assert np.allclose(sims, ref_sims, atol=1e-5)
    srt = np.sort(ids, axis=1)
    assert (srt[:, 1:] != srt[:, :-1]).all() and (ids >= 0).all()
    rows, cols = np.nonzero(ids != ref_ids)
    x64 = x.astype(np.float64)
    ours = np.einsum("ij,ij->i", x64[rows], x64[ids[rows, cols]])
    theirs = np.einsum("ij,ij->i", x64[rows], x64[ref_ids[rows, cols]])
    assert np.abs(ours - theirs).max(initial=0.0) <= 1e-6


def test_pruned_equals_brute_force_and_prunes_clustered_data():
    x = clustered(12_001, 32, 20, 0.4, seed=11)
    sims, ids, stats = _pruned_exact(x, 20)
    assert_same_neighbours(x, sims, ids, *_faiss_top(x, 20))
    assert not stats.fallback and stats.cells > 0  # the cell pass, not the sorted one
    # measured: 92% of the cross-cell pairs skipped; 23% of the n² similarities computed (the sample's rows and
    # columns are 12% of them), with 12% of the dot products of brute force
    assert stats.pruned_pairs > 0.8 and stats.work < 0.35 and stats.products < 0.2 * x.shape[0] ** 2, stats


def test_pruned_equals_brute_force_without_pruning():
    # uniform on the sphere: no bound prunes, the symmetric pass computes each pair once
    x = _normalise(np.random.default_rng(12).normal(size=(10_007, 24)))
    sims, ids, stats = _pruned_exact(x, 15, seed=3)
    assert_same_neighbours(x, sims, ids, *_faiss_top(x, 15))
    assert not stats.fallback and stats.pruned_pairs < 0.05 and stats.work > 0.95
    assert stats.cells == 0 and stats.estimated_pruned < knn._ESTIMATE_WORTH  # no cells: the sorted pass
    assert stats.products < 0.6 * x.shape[0] ** 2  # each pair once (plus the sample and diagonal blocks)


def test_pruned_with_duplicate_rows():
    base = clustered(4_000, 16, 10, 0.6, seed=13)
    x = np.ascontiguousarray(np.concatenate([base, base[:3_001], base[:1_000]]))  # copies, up to 3 of a row
    sims, ids, stats = _pruned_exact(x, 10)
    assert_same_neighbours(x, sims, ids, *_faiss_top(x, 10))
    assert not stats.fallback


def test_pruned_refines_rows_whose_threshold_is_too_high(monkeypatch):
    monkeypatch.setattr(knn, "_SAMPLE_Z", -4.0)  # thresholds above the true (k + 1)-th best for most rows
    x = clustered(6_003, 16, 8, 0.8, seed=14)
    sims, ids, stats = _pruned_exact(x, 12)
    assert stats.refined_rows > 0
    assert_same_neighbours(x, sims, ids, *_faiss_top(x, 12))


def test_pruned_gives_up_on_massive_ties():
    x = np.ascontiguousarray(np.repeat(_normalise(np.random.default_rng(15).normal(size=(8, 8))), 1_000, axis=0))
    sims, ids, stats = _pruned_exact(x, 5)
    assert stats.fallback  # every row ties with 999 others: faiss does it all
    ref_s, ref_i = _faiss_top(x, 5)
    assert np.array_equal(ids, ref_i) and np.array_equal(sims, ref_s)


def test_knn_search_takes_the_pruned_path_for_large_n(monkeypatch):
    x = clustered(3_001, 16, 6, 0.5, seed=16)
    ref = knn_search(x, 7)  # faiss (n below the threshold)
    calls = []
    real = knn._pruned_exact
    monkeypatch.setattr(knn, "_PRUNED_MIN_N", 1_000)
    monkeypatch.setattr(knn, "_pruned_exact", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    sims, ids = knn_search(x, 7)
    assert calls and sims.shape == ids.shape == (3_001, 7)
    assert sims.dtype == np.float32 and ids.dtype == np.int64
    assert not (ids == np.arange(3_001)[:, None]).any()
    assert np.all(np.diff(sims, axis=1) <= 0)
    assert np.allclose(sims, ref[0], atol=1e-5)
    assert np.array_equal(ids, ref[1]) or np.mean(ids == ref[1]) > 0.999  # ties and last-bit rounding


def test_pruned_cell_pass_when_forced_on_unprunable_data(monkeypatch):
    # the cell pass over data where nothing prunes gives the same neighbours as the sorted pass
    monkeypatch.setattr(knn, "_ESTIMATE_WORTH", -1.0)
    monkeypatch.setattr(knn, "_PRUNE_WORTH", -1.0)
    x = _normalise(np.random.default_rng(17).normal(size=(10_011, 24)))
    sims, ids, stats = _pruned_exact(x, 15, seed=2)
    assert stats.cells > 0 and not stats.fallback
    assert_same_neighbours(x, sims, ids, *_faiss_top(x, 15))


def test_pruned_with_large_k_and_wide_buckets(monkeypatch):
    # buckets of 2^20 rows: too many bits for the packed sort of _top_rows, which argsorts instead
    monkeypatch.setattr(knn, "_BUCKET_ROWS", 1 << 20)
    x = clustered(12_001, 16, 6, 1.5, seed=18)
    sims, ids, stats = _pruned_exact(x, 100)
    assert not stats.fallback
    assert_same_neighbours(x, sims, ids, *_faiss_top(x, 100))


def test_pack_orders_by_row_then_similarity_descending_and_unpacks():
    vals = np.array([0.5, -0.0, 0.0, 1e-30, -1e-30, -0.7, 1.0, -np.inf, np.inf, 0.25], dtype=np.float32)
    rows = np.array([1, 0, 0, 0, 0, 0, 1, 0, 1, 0])
    key = knn._pack(rows, vals)
    assert key.dtype == np.uint64 and np.array_equal(key >> np.uint64(32), rows.astype(np.uint64))
    assert np.array_equal(knn._unpack(key).view(np.uint32), vals.view(np.uint32))  # bit for bit, -0.0 too
    order = np.argsort(key, kind="stable")
    assert np.array_equal(rows[order], np.sort(rows))
    for r in (0, 1):
        got = vals[order][rows[order] == r]
        assert np.all(np.diff(got) <= 0)


def test_top_rows_packed_sort_equals_argsort_path():
    rng = np.random.default_rng(19)
    n_rows, k1 = 16_384, 40
    rows = np.repeat(np.arange(n_rows), rng.integers(0, 90, n_rows))
    vals = rng.permutation(np.linspace(-1, 1, rows.size, dtype=np.float32))  # distinct: one right answer
    cols = rng.permutation(rows.size).astype(np.int32) % 50_000
    perm = rng.permutation(n_rows)

    def run(chunks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sims = np.full((n_rows, k1), -np.inf, dtype=np.float32)
        ids = np.full((n_rows, k1), -1, dtype=np.int64)
        count = np.zeros(n_rows, dtype=np.int64)
        step = n_rows // chunks
        for lo in range(0, n_rows, step):
            inside = (rows >= lo) & (rows < lo + step)
            knn._top_rows(lo, lo + step, rows[inside] - lo, vals[inside], cols[inside], k1,
                          np.concatenate([perm, np.arange(n_rows, 50_000)]), sims, ids, count)
        return sims, ids, count

    # one chunk of 16,384 rows (14 bits) with over 2^18 entries selected (19 bits): 14 + 32 + 19 > 64, the
    # argsort; 8 chunks of 2,048 rows: packed sorts
    selected = int(np.minimum(np.bincount(rows, minlength=n_rows), k1).sum())
    assert 14 + 32 + (selected - 1).bit_length() > 64
    (s1, i1, c1), (s8, i8, c8) = run(1), run(8)
    assert np.array_equal(c1, c8) and np.array_equal(s1, s8) and np.array_equal(i1, i8)
    # against a plain per-row reference
    for r in rng.choice(n_rows, 50, replace=False):
        mine = np.flatnonzero(rows == r)
        best = np.sort(vals[mine])[::-1][:k1]
        dest = perm[r]
        assert np.array_equal(s8[dest, : best.size], best) and np.all(np.isneginf(s8[dest, best.size :]))


@pytest.mark.parametrize("case", ["full", "ties"])
def test_top_rows_full_rows_and_ties(case):
    # every row holding >= k1 entries (the row-scatter path), or values tied at each row's cut (the general
    # path): the per-row best k1 values, each id naming an entry of its row with that value
    rng = np.random.default_rng(21)
    n_rows, k1 = 1_024, 12
    low = k1 if case == "full" else 0
    rows = np.repeat(np.arange(n_rows), rng.integers(low, 40, n_rows)).astype(np.int32)
    if case == "full":
        vals = rng.permutation(np.linspace(-1, 1, rows.size, dtype=np.float32))
    else:
        vals = (rng.integers(0, 6, rows.size) / 8).astype(np.float32)  # few distinct values: ties everywhere
    cols = rng.permutation(rows.size).astype(np.int32)
    perm = rng.permutation(rows.size)
    sims = np.full((rows.size, k1), -np.inf, dtype=np.float32)
    ids = np.full((rows.size, k1), -1, dtype=np.int64)
    count = np.zeros(rows.size, dtype=np.int64)
    knn._top_rows(0, n_rows, rows, vals, cols, k1, perm, sims, ids, count)
    assert np.array_equal(count[:n_rows], np.bincount(rows, minlength=n_rows))
    value_of = {(int(r), int(perm[c])): float(v) for r, c, v in zip(rows, cols, vals)}
    for r in range(n_rows):
        mine = np.flatnonzero(rows == r)
        best = np.sort(vals[mine])[::-1][:k1]
        dest = perm[r]
        assert np.array_equal(sims[dest, : best.size], best) and np.all(np.isneginf(sims[dest, best.size :]))
        got = ids[dest, : best.size]
        assert np.unique(got).size == best.size
        assert [value_of[(r, int(i))] for i in got] == best.tolist()


def test_sample_thresholds_never_exceed_the_jth_best():
    x = _normalise(np.random.default_rng(20).normal(size=(3_200, 16)))
    s, j = 3_136, 9  # as for n = 50,000, k = 50: 392 groups of 8 sample columns
    tau = np.empty(600, dtype=np.float32)
    knn._sample_job(x, tau, 0, 600, j, (x[:s], np.arange(s), None), 4096, knn._Scratch())
    exact = np.sort(x[:600] @ x[:s].T, axis=1)[:, s - j]
    # the j-th best group maximum: never above the j-th best, and equal unless two of the best j share a group
    assert np.all(tau <= exact) and np.mean(tau == exact) > 0.8
