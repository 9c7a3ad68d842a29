"""A person as the oracle: cycle stops for labels, export, import (good and bad files), continue; same pool as simulated."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from alctl import config as mf
from alctl.cli import app

runner = CliRunner()
N_POOL, N_TEST = 240, 100


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8), bunch.target.astype(np.int64)


@pytest.fixture
def folder(workdir: Path) -> dict[str, int]:
    """images/pool/** (nested, with 3 corrupt files), images/labeled/<d>/ (1 per class), images/test/<d>/, truth.csv;
    returns the true label of every pool file by relative path."""
    images, labels = _digits()
    root = workdir / "images"
    truth: dict[str, int] = {}
    for i in range(N_POOL):
        rel = f"pool/batch{i % 4}/{'deep/' if i % 3 == 0 else ''}img{i:04d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(root / rel)
        truth[rel] = int(labels[i])
    start = N_POOL
    for digit in range(10):  # one labeled image per class: the initial set
        i = start + int(np.flatnonzero(labels[start:] == digit)[0])
        (root / f"labeled/{digit}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(root / f"labeled/{digit}/seed{i}.png")
    for i in range(N_POOL + 200, N_POOL + 200 + N_TEST):
        (root / f"test/{labels[i]}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(root / f"test/{labels[i]}/t{i}.png")
    (root / "pool/batch0/empty.png").write_bytes(b"")
    (root / "pool/batch1/notes.png").write_text("not an image")
    (root / "pool/batch2/cut.png").write_bytes((root / "pool/batch2/img0002.png").read_bytes()[:40])
    (root / "truth.csv").write_text("path,label\n" + "".join(f"{p},{y}\n" for p, y in truth.items()))
    return truth


def _manifest(workdir: Path, oracle: str, name: str) -> Path:
    data = {
        "name": name, "seed": 3, "repetitions": 1,
        "dataset": {"name": "imagefolder", "root": "images", "pool": "pool", "labeled": "labeled", "test": "test",
                    "image_size": 8, "channels": 1, **({"truth": "truth.csv"} if oracle == "simulated" else {})},
        "model": {"width": 0.125},
        "train": {"epochs": 4, "batch_size": 16, "min_steps": 4, "lr": 0.05, "rampdown_epochs": 5, "translate": 1,
                  "device": "cpu"},
        "active": {"budget": 10, "cycles": 3, "strategy": "uncertainty", "oracle": oracle},
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _pool(path: Path):
    m = mf.load(path)
    return pq.read_table(mf.run_dir(m) / "tasks" / mf.tasks(m)[0].key / "pool.parquet")


def _answer(exported: Path, truth: dict[str, int], rows: slice = slice(None)) -> Path:
    """The annotator: fill the label column of to_label.csv (by class name) from the true labels of the files."""
    table = list(csv.DictReader(exported.read_text().splitlines()))
    for row in table[rows]:
        row["label"] = str(truth[row["path"]])
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(table[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    answered = exported.with_name(f"answered{rows.start or 0}.csv")
    answered.write_text(out.getvalue())
    return answered


@pytest.mark.slow
def test_human_oracle_round_trip_equals_simulated_oracle(folder: dict[str, int], workdir: Path) -> None:
    human = _manifest(workdir, "human", "human")
    for cycle in (1, 2):
        res = runner.invoke(app, ["cycle", str(human)])
        assert res.exit_code == 0, res.output
        assert "waiting for labels: 10 images selected for cycle" in res.output
        assert "skipped unreadable image pool/batch0/empty.png" in res.output
        res = runner.invoke(app, ["select", str(human), "--export", "out"])
        assert res.exit_code == 0, res.output
        exported = workdir / "out" / "to_label.csv"
        rows = list(csv.DictReader(exported.read_text().splitlines()))
        assert len(rows) == 10 and all(r["path"].startswith("pool/") and r["label"] == "" for r in rows)
        assert all(0.0 <= float(r["p1"]) <= 1.0 and r["top1"] in [str(d) for d in range(10)] for r in rows)
        sheet = Image.open(workdir / "out" / "contact_sheet.png")
        assert sheet.width >= 10 * 64 and sheet.height >= 64
        # a partial import is accepted and the cycle waits for the rest
        answered = _answer(exported, folder, slice(0, 4))
        res = runner.invoke(app, ["label", str(human), "--labels", str(answered)])
        assert res.exit_code == 0 and "6 selected images still wait for labels" in res.output, res.output
        res = runner.invoke(app, ["cycle", str(human)])
        assert res.exit_code == 0 and "waiting for labels: 6 images" in res.output, res.output
        # exporting again over the sheet whose filled rows were all imported: the 6 still pending
        exported.write_text(answered.read_text())
        res = runner.invoke(app, ["select", str(human), "--export", "out"])
        assert res.exit_code == 0 and len(exported.read_text().splitlines()) == 1 + 6, res.output
        res = runner.invoke(app, ["label", str(human), "--labels", str(_answer(exported, folder))])
        assert res.exit_code == 0 and "the selection is complete" in res.output, res.output
    res = runner.invoke(app, ["cycle", str(human)])
    assert res.exit_code == 0 and "waiting" not in res.output, res.output

    simulated = _manifest(workdir, "simulated", "simulated")
    assert runner.invoke(app, ["cycle", str(simulated)]).exit_code == 0
    a, b = _pool(human), _pool(simulated)
    for column in ("sample_id", "label", "labeled_cycle"):
        assert a[column].equals(b[column]), column
    sources = a["label_source"].to_pylist()
    assert sources.count("initial") == 10 and sources.count("human") == 20
    assert b["label_source"].to_pylist().count("oracle") == 20


BAD_FILES = {
    "unknown id": ("sample_id,label\n{pending0},3\n12345,4\n", "sample_id 12345 is not in the pool"),
    "not pending": ("sample_id,label\n{pending0},3\n{other},4\n", "is not waiting for a label"),
    "unknown class": ("sample_id,label\n{pending0},3\n{pending1},eleven\n", "unknown class 'eleven'"),
    "conflict": ("sample_id,label\n{pending0},3\n{pending0},4\n", "labeled '4' here and '3' on line 2"),
    "empty": ("", "empty file"),
    "no labels": ("sample_id,label\n{pending0},\n", "no labels"),
    "no label column": ("sample_id,class\n{pending0},3\n", "missing column(s) label"),
    "not an id": ("sample_id,label\nabc,3\n", "sample_id 'abc' is not an integer"),
}


@pytest.mark.slow
def test_every_bad_label_file_is_rejected_and_nothing_is_written(folder: dict[str, int], workdir: Path) -> None:
    human = _manifest(workdir, "human", "bad")
    assert runner.invoke(app, ["cycle", str(human)]).exit_code == 0
    m = mf.load(human)
    tdir = mf.run_dir(m) / "tasks" / mf.tasks(m)[0].key
    pool = pq.read_table(tdir / "pool.parquet")
    pending = [sid for sid, src in zip(pool["sample_id"].to_pylist(), pool["label_source"].to_pylist())
               if src == "pending"]
    other = next(sid for sid, c in zip(pool["sample_id"].to_pylist(), pool["labeled_cycle"].to_pylist()) if c < 0)
    before = {p.name: p.read_bytes() for p in tdir.glob("*.parquet")}
    for kind, (text, expected) in BAD_FILES.items():
        path = workdir / f"{kind.replace(' ', '_')}.csv"
        path.write_text(text.format(pending0=pending[0], pending1=pending[1], other=other))
        res = runner.invoke(app, ["label", str(human), "--labels", str(path)])
        assert res.exit_code == 2, (kind, res.output)
        assert expected in res.output, (kind, res.output)
        assert "Traceback" not in res.output
        assert {p.name: p.read_bytes() for p in tdir.glob("*.parquet")} == before, kind
    two_bad = workdir / "two_bad.csv"  # one line per bad row
    two_bad.write_text(f"sample_id,label\n1,3\n2,4\n{pending[0]},7\n")
    res = runner.invoke(app, ["label", str(human), "--labels", str(two_bad)])
    assert res.exit_code == 2 and res.output.count("error:") == 2, res.output
    res = runner.invoke(app, ["label", str(human), "--labels", str(workdir / "missing.csv")])
    assert res.exit_code == 2 and "missing.csv not found" in res.output


def test_without_a_labeled_tree_a_person_labels_the_initial_set_first(folder: dict[str, int], workdir: Path) -> None:
    path = _manifest(workdir, "human", "cold")
    data = yaml.safe_load(path.read_text())
    del data["dataset"]["labeled"]
    data["dataset"]["classes"] = [str(d) for d in range(10)]
    data["active"].update({"initial": 10, "cycles": 1})
    path.write_text(yaml.safe_dump(data))
    res = runner.invoke(app, ["cycle", str(path)])
    assert res.exit_code == 0 and "waiting for labels: 10 images selected for cycle 0" in res.output, res.output
    res = runner.invoke(app, ["select", str(path), "--export", "first"])
    assert res.exit_code == 0 and "the initial set" in res.output, res.output
    rows = list(csv.DictReader((workdir / "first" / "to_label.csv").read_text().splitlines()))
    assert len(rows) == 10 and all(r["top1"] == "" and r["label"] == "" for r in rows)
    assert (workdir / "first" / "contact_sheet.png").is_file()
    res = runner.invoke(app, ["label", str(path), "--labels", str(_answer(workdir / "first" / "to_label.csv", folder))])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["cycle", str(path)])
    assert res.exit_code == 0 and "cycle 0: 10 labels, accuracy" in res.output, res.output


def test_simulated_oracle_with_a_partial_truth_file_exits_2_before_writing(folder: dict[str, int], workdir: Path) -> None:
    path = _manifest(workdir, "simulated", "partial")
    known = list(folder.items())[:5]
    (workdir / "images" / "truth.csv").write_text("path,label\n" + "".join(f"{p},{y}\n" for p, y in known))
    res = runner.invoke(app, ["cycle", str(path)])
    assert res.exit_code == 2, res.output
    assert "dataset.truth: 235 of 250 pool images have no true label (first: pool/batch0/deep/img0012.png)" in res.output
    assert "active.oracle: human" in res.output
    assert not (workdir / "runs").exists()


def test_validate_plans_from_the_labeled_tree(folder: dict[str, int], workdir: Path) -> None:
    res = runner.invoke(app, ["validate", str(_manifest(workdir, "human", "plan"))])
    assert res.exit_code == 0 and "the labeled/ tree" in res.output and "+ 10 x 2" in res.output, res.output
    assert "10 + 10 x 2 = 30" not in res.output  # active.initial does not apply: the tree is the initial set
