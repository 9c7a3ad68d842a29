"""A person's labels stay with their sample id when image-folder files are removed, renamed, added or come back."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from alctl import config as mf
from alctl.cli import app
from alctl.data.imagefolder import path_sample_id
from alctl.engine import workspace

runner = CliRunner()
N_POOL, N_TEST = 60, 30
GONE_PERSON = "pool: 1 image gone since the last cycle (labeled by a person: kept in the store, not trained on)"


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8), bunch.target.astype(np.int64)


@pytest.fixture
def truth(workdir: Path) -> dict[str, int]:
    """images/pool/imgNNNN.png, images/labeled/<d>/ (one per class: the initial set), images/test/<d>/; returns the
    true class of every pool file (and of images/spare.png, outside the pool, for tests that add it) by path."""
    images, labels = _digits()
    root = workdir / "images"
    out: dict[str, int] = {}
    for i in range(N_POOL):
        rel = f"pool/img{i:04d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(root / rel)
        out[rel] = int(labels[i])
    for digit in range(10):
        i = N_POOL + int(np.flatnonzero(labels[N_POOL:] == digit)[0])
        (root / f"labeled/{digit}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(root / f"labeled/{digit}/seed{i}.png")
    for i in range(N_POOL + 100, N_POOL + 100 + N_TEST):
        (root / f"test/{labels[i]}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(root / f"test/{labels[i]}/t{i}.png")
    Image.fromarray(images[N_POOL + 300]).save(root / "spare.png")
    out["spare"] = int(labels[N_POOL + 300])
    return out


def _manifest(workdir: Path, cycles: int) -> Path:
    data = {
        "name": "moved", "seed": 1, "repetitions": 1,
        "dataset": {"name": "imagefolder", "root": "images", "pool": "pool", "labeled": "labeled", "test": "test",
                    "image_size": 8, "channels": 1},
        "model": {"width": 0.125},
        "train": {"epochs": 2, "batch_size": 16, "min_steps": 2, "lr": 0.05, "rampdown_epochs": 3, "translate": 1,
                  "device": "cpu"},
        "active": {"budget": 5, "cycles": cycles, "strategy": "random", "oracle": "human"},
    }
    path = workdir / "moved.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _invoke(*args: str) -> Any:
    """One command as a new process would run it: the dataset read afresh (files may have changed since)."""
    workspace._dataset.cache_clear()
    return runner.invoke(app, list(args))


def _tdir(path: Path) -> Path:
    m = mf.load(path)
    return mf.run_dir(m) / "tasks" / mf.tasks(m)[0].key


def _rows(path: Path) -> list[tuple[int, int, int, str]]:
    """pool.parquet as (sample_id, label, labeled_cycle, label_source) rows, in file order."""
    t = pq.read_table(_tdir(path) / "pool.parquet").to_pydict()
    return list(zip(t["sample_id"], t["label"], t["labeled_cycle"], t["label_source"]))


def _n_labeled(path: Path) -> list[int]:
    return pq.read_table(_tdir(path) / "metrics.parquet")["n_labeled"].to_pylist()


def _export_and_fill(path: Path, truth: dict[str, int], folder: str) -> tuple[Path, list[tuple[int, str]]]:
    """`alctl select --export`, then the annotator fills every row's label; returns the filled CSV and the
    selection's (sample_id, path) rows."""
    res = _invoke("select", str(path), "--task", "0", "--export", folder)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((Path(folder) / "to_label.csv").read_text().splitlines()))
    for row in rows:
        row["label"] = str(truth[row["path"]])
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    filled = Path(folder) / "filled.csv"
    filled.write_text(out.getvalue())
    return filled, [(int(r["sample_id"]), r["path"]) for r in rows]


def _label_next(path: Path, truth: dict[str, int], folder: str) -> list[tuple[int, str]]:
    """Export the pending selection, fill it and import it with `alctl label`."""
    filled, selected = _export_and_fill(path, truth, folder)
    res = _invoke("label", str(path), "--task", "0", "--labels", str(filled))
    assert res.exit_code == 0 and "the selection is complete" in res.output, res.output
    return selected


def _first_cycle_labeled(workdir: Path, truth: dict[str, int], cycles: int) -> tuple[Path, list[tuple[int, str]]]:
    """Cycle 0 run (`--cycles 1`), its five selected images labeled by a person."""
    path = _manifest(workdir, cycles)
    res = _invoke("cycle", str(path), "--cycles", "1")
    assert res.exit_code == 0 and "waiting for labels: 5 images" in res.output, res.output
    return path, _label_next(path, truth, "out")


def test_join_ids_maps_rows_by_sample_id_and_lists_new_images() -> None:
    from alctl.engine.tables import join_ids

    dataset = np.array([50, 10, 40, 30], np.int64)
    join = join_ids(dataset, np.array([10, 20, 40, 99, 5, 50], np.int64))
    assert join.rows.tolist() == [1, -1, 2, -1, -1, 0]  # 20, 99 (past the largest id) and 5 are gone
    assert join.gone.tolist() == [1, 3, 4] and join.present.tolist() == [True, False, True, False, False, True]
    assert join.new.tolist() == [3]  # id 30: no row names it
    assert join_ids(dataset, np.zeros(0, np.int64)).new.tolist() == [0, 1, 2, 3]
    assert join_ids(np.zeros(0, np.int64), np.array([7], np.int64)).rows.tolist() == [-1]


def test_a_removed_file_keeps_its_label_in_the_store_and_no_other_image_gets_it(truth: dict[str, int],
                                                                             workdir: Path) -> None:
    path, selected = _first_cycle_labeled(workdir, truth, cycles=2)
    before = _rows(path)
    gone_id, gone_path = selected[0]
    (workdir / "images" / gone_path).unlink()
    res = _invoke("cycle", str(path))
    assert res.exit_code == 0, res.output
    assert "cycle 1: 14 labels" in res.output  # 10 initial + the 4 labeled images still there
    assert GONE_PERSON in res.output and str(gone_id) in res.output
    after = _rows(path)
    assert sorted(after) == sorted(before)  # nothing moved: the last cycle selects nothing
    assert after[-1] == next(r for r in before if r[0] == gone_id)  # the gone row, verbatim
    assert sorted(r[0] for r in after if r[3] == "human") == sorted(sid for sid, _ in selected)
    assert _n_labeled(path) == [10, 14]


def test_removing_the_file_with_the_largest_id_does_not_crash(truth: dict[str, int], workdir: Path) -> None:
    path, selected = _first_cycle_labeled(workdir, truth, cycles=2)
    files = {path_sample_id(p.relative_to(workdir / "images").as_posix()): p
             for p in (workdir / "images").glob("[lp]*/**/*.png")}
    largest = max(r[0] for r in _rows(path))
    files[largest].unlink()
    res = _invoke("cycle", str(path))
    assert res.exit_code == 0, res.output
    lost = 1 if largest in {sid for sid, _ in selected} or "labeled/" in files[largest].as_posix() else 0
    assert f"cycle 1: {15 - lost} labels" in res.output
    assert _rows(path)[-1][0] == largest  # its row kept, after the images present
    res = _invoke("validate", str(path))
    assert res.exit_code == 0 and "pool: 1 image gone since the last cycle (" in res.output, res.output


def test_a_renamed_file_is_one_image_gone_and_one_new_image_never_selected(truth: dict[str, int],
                                                                          workdir: Path) -> None:
    path, selected = _first_cycle_labeled(workdir, truth, cycles=2)
    gone_id, gone_path = selected[0]
    before = next(r for r in _rows(path) if r[0] == gone_id)
    (workdir / "images" / gone_path).rename(workdir / "images" / "pool" / "renamed.png")
    new_line = "pool: 1 new image joined as unlabeled: pool/renamed.png"
    res = _invoke("validate", str(path))
    assert res.exit_code == 0, res.output
    assert GONE_PERSON in res.output and new_line in res.output
    res = _invoke("cycle", str(path))
    assert res.exit_code == 0 and "cycle 1: 14 labels" in res.output, res.output
    assert GONE_PERSON in res.output and new_line in res.output
    rows = {r[0]: r for r in _rows(path)}
    assert rows[gone_id] == before
    assert rows[path_sample_id("pool/renamed.png")][1:] == (-1, -1, "")


def test_an_added_file_joins_unlabeled_and_a_file_that_comes_back_gets_its_label_back(truth: dict[str, int],
                                                                                    workdir: Path) -> None:
    path, selected = _first_cycle_labeled(workdir, truth, cycles=3)
    gone_id, gone_path = selected[0]
    kept = next(r for r in _rows(path) if r[0] == gone_id)
    shutil.move(workdir / "images" / gone_path, workdir / "away.png")
    shutil.copy(workdir / "images" / "spare.png", workdir / "images" / "pool" / "added.png")
    truth["pool/added.png"] = truth["spare"]
    res = _invoke("validate", str(path))
    assert res.exit_code == 0, res.output
    assert GONE_PERSON in res.output and "pool: 1 new image joined as unlabeled: pool/added.png" in res.output
    res = _invoke("cycle", str(path), "--cycles", "2")
    assert res.exit_code == 0 and "cycle 1: 14 labels" in res.output, res.output
    assert "pool: 1 new image joined as unlabeled: pool/added.png" in res.output
    added = next(r for r in _rows(path) if r[0] == path_sample_id("pool/added.png"))
    assert added[1] == -1 and added[3] in ("", "pending")  # never labeled: a candidate like any unlabeled image
    assert next(r for r in _rows(path) if r[0] == gone_id) == kept

    shutil.move(workdir / "away.png", workdir / "images" / gone_path)  # the file comes back
    res = _invoke("validate", str(path))
    assert res.exit_code == 0 and "pool:" not in res.output, res.output
    _label_next(path, truth, "out2")
    res = _invoke("cycle", str(path))
    assert res.exit_code == 0 and "cycle 2: 20 labels" in res.output, res.output  # its label is trained on again
    rows = _rows(path)
    assert len(rows) == N_POOL + 10 + 1 and kept in rows
    assert sum(r[3] == "human" for r in rows) == 10
    assert _n_labeled(path) == [10, 14, 20]


def test_a_label_import_naming_a_gone_image_is_refused_and_writes_nothing(truth: dict[str, int],
                                                                         workdir: Path) -> None:
    path = _manifest(workdir, 2)
    assert _invoke("cycle", str(path), "--cycles", "1").exit_code == 0
    filled, selected = _export_and_fill(path, truth, "out")
    gone_id, gone_path = selected[0]
    (workdir / "images" / gone_path).unlink()
    tables = {p.name: p.read_bytes() for p in _tdir(path).glob("*.parquet")}
    res = _invoke("label", str(path), "--task", "0", "--labels", str(filled))
    assert res.exit_code == 2, res.output
    assert f"sample_id {gone_id} is not in the pool" in res.output
    assert ("pool: 1 image gone since the last cycle (selected and waiting for a label: kept in the store, not"
            " trained on)") in res.output
    assert {p.name: p.read_bytes() for p in _tdir(path).glob("*.parquet")} == tables


def test_an_interrupted_training_is_not_resumed_on_another_set_of_images(truth: dict[str, int],
                                                                        workdir: Path) -> None:
    from alctl.console import silent
    from alctl.engine.cycle import run_task
    from alctl.errors import Preempted

    path, selected = _first_cycle_labeled(workdir, truth, cycles=2)
    workspace._dataset.cache_clear()
    with pytest.raises(Preempted):  # stopped after its first step: checkpoints/train.pt holds pool positions
        run_task(mf.tasks(mf.load(path))[0], silent(), path, stop=lambda: True)
    assert (_tdir(path) / "checkpoints" / "train.pt").is_file()
    (workdir / "images" / selected[0][1]).unlink()  # the positions of the files after it move
    res = _invoke("cycle", str(path))
    assert res.exit_code == 0, res.output
    assert "the interrupted training of the cycle was made on another set of pool images" in res.output
    assert "cycle 1: 14 labels" in res.output


def test_pool_change_lines_count_each_kind_and_escape_file_names() -> None:
    from alctl.engine.tables import PoolChanges

    changes = PoolChanges(np.arange(7, dtype=np.int64), ["labeled by a person"] + ["never selected"] * 6,
                          ["pool/a\x1b[31m.png"])
    gone, new = changes.lines()
    assert gone == ("pool: 7 images gone since the last cycle (1 labeled by a person, 6 never selected: kept in the"
                    " store, not trained on): sample ids 0, 1, 2, 3, 4, ... and 2 more")
    assert new == "pool: 1 new image joined as unlabeled: pool/a\\x1b[31m.png"
    assert PoolChanges(np.zeros(0, np.int64), [], []).lines() == []
