"""Checkpoints and encoder files are read with weights_only=True: a file that pickles a callable is refused with
exit 2 naming it, and the callable never runs."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from alctl import config as mf
from alctl.cli import app
from alctl.engine import checkpoint
from alctl.errors import UserError

runner = CliRunner()


class _Planted:
    """Pickles as a call of open(marker, "w"): loading it with full unpickling creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return builtins.open, (str(self.marker), "w")


def _plant(path: Path, marker: Path, **plain: object) -> None:
    """A torch file whose payload looks like an alctl file but carries a pickled callable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**plain, "extra": _Planted(marker)}, path)


def test_the_planted_callable_runs_under_plain_unpickling(tmp_path: Path) -> None:
    """The test's bait works: a full unpickle (weights_only=False) does run it."""
    marker = tmp_path / "ran"
    _plant(tmp_path / "bait.pt", marker)
    torch.load(tmp_path / "bait.pt", weights_only=False)
    assert marker.exists()


def test_load_refuses_a_pickled_callable(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    _plant(tmp_path / "x.pt", marker, model={})
    with pytest.raises(UserError, match=r"x\.pt: not an alctl checkpoint .*refused without running it"):
        checkpoint.load(tmp_path / "x.pt", "an alctl checkpoint")
    assert not marker.exists()


def test_round_trip_of_plain_payloads(tmp_path: Path) -> None:
    arrays = {"a": __import__("numpy").arange(5, dtype="int64"), "b": None}
    checkpoint.save(tmp_path / "c.pt", {"t": checkpoint.arrays_to_tensors(arrays), "s": "x", "f": 1.5})
    back = checkpoint.load(tmp_path / "c.pt", "a checkpoint")
    assert back["s"] == "x" and back["f"] == 1.5
    again = checkpoint.tensors_to_arrays(back["t"])
    assert again["b"] is None and again["a"].tolist() == [0, 1, 2, 3, 4]


def test_cycle_refuses_crafted_pretrain_weights(write_manifest, workdir: Path) -> None:
    marker = workdir / "ran"
    weights = workdir / "encoder.pt"
    _plant(weights, marker, encoder={}, settings={"dataset": "digits"})
    path = write_manifest({"repetitions": 1, "pretrain": {"method": "deepcluster", "weights": str(weights)}})
    res = runner.invoke(app, ["cycle", str(path)])
    assert res.exit_code == 2, res.output
    assert f"pretrain.weights: {weights}: not an alctl encoder file" in res.output
    assert not marker.exists()


def test_cycle_refuses_a_planted_training_checkpoint(write_manifest, workdir: Path) -> None:
    marker = workdir / "ran"
    path = write_manifest({"repetitions": 1})
    m = mf.load(path)
    planted = mf.run_dir(m) / "tasks" / mf.tasks(m)[0].key / "checkpoints" / "train.pt"
    _plant(planted, marker, cycle=0, task_hash="x")
    res = runner.invoke(app, ["cycle", str(path)])
    assert res.exit_code == 2, res.output
    assert f"{planted}: not an alctl training checkpoint" in res.output
    assert not marker.exists()


def test_select_refuses_a_planted_model(write_manifest, workdir: Path) -> None:
    marker = workdir / "ran"
    path = write_manifest({"repetitions": 1, "train": {"epochs": 1}, "active": {"cycles": 2}})
    assert runner.invoke(app, ["cycle", str(path), "--cycles", "1"]).exit_code == 0
    m = mf.load(path)
    planted = mf.run_dir(m) / "tasks" / mf.tasks(m)[0].key / "checkpoints" / "model.pt"
    _plant(planted, marker, cycle=0)
    res = runner.invoke(app, ["select", str(path)])
    assert res.exit_code == 2, res.output
    assert f"{planted}: not an alctl model checkpoint" in res.output
    assert not marker.exists()
