"""+SEMI in the pipeline: label propagation every epoch, pseudo.parquet, `alctl propagate`, jLP, the report's variants."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from alctl import config as mf
from alctl.cli import app
from tests.checks import kept_and_direct_propagation

runner = CliRunner()
SEMI = {
    "repetitions": 1,
    "train": {"epochs": 4, "rampdown_epochs": 5},
    "active": {"cycles": 2},
    "semi": {"k": 10, "batch_size": 64, "labeled_per_batch": 16, "unlabeled_per_epoch": 480, "every": 2},
    "sweep": {"active.strategy": ["random", "jlp"], "semi.method": ["none", "label-propagation"]},
}


@pytest.mark.slow
def test_semi_cycles_write_pseudo_labels_and_report_variants(write_manifest, workdir: Path) -> None:
    path = write_manifest(SEMI)
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 0 and "4 tasks" in res.output
    res = runner.invoke(app, ["cycle", str(path)])
    assert res.exit_code == 0, res.output
    assert "pseudo-labels" in res.output and "% correct" in res.output
    m = mf.load(path)
    for t in mf.tasks(m):
        tdir = mf.run_dir(m) / "tasks" / t.key
        metrics = pq.read_table(tdir / "metrics.parquet").to_pydict()
        if t.config.semi.method == "none":
            assert not (tdir / "pseudo.parquet").exists() and metrics["pseudo_accuracy"] == [None, None]
            continue
        assert t.variant == "+SEMI" and metrics["variant"] == ["+SEMI", "+SEMI"]
        assert all(0.1 < a <= 1.0 for a in metrics["pseudo_accuracy"]), metrics["pseudo_accuracy"]
        assert all(s > 0 for s in metrics["seconds_propagate"])
        assert metrics["n_pseudo"] == [694, 688]  # semi.selection prob: half of the 1,387 / 1,377 unlabeled images
        pseudo = pq.read_table(tdir / "pseudo.parquet").to_pydict()
        assert sorted(set(zip(pseudo["cycle"], pseudo["epoch"]))) == [(0, 2), (1, 2)]  # the last refresh per cycle
        w = np.array(pseudo["weight"])
        assert w.min() >= 0 and w.max() <= 1 and len(w) == 2 * 1397 - 10 - 20
    res = runner.invoke(app, ["report", "runs/tiny", "--format", "json"])
    rows = json.loads(res.stdout)["rows"]
    assert {(r["strategy"], r["variant"]) for r in rows} == {
        ("random", "plain"), ("random", "+SEMI"), ("jlp", "plain"), ("jlp", "+SEMI")}

    # alctl propagate on the final model of a +SEMI task: rows for (last cycle, epoch = train.epochs); the metrics
    # keep the accuracy its training measured
    tdir = mf.run_dir(m) / "tasks" / mf.tasks(m)[1].key
    trained = pq.read_table(tdir / "metrics.parquet")
    res = runner.invoke(app, ["propagate", str(path), "--task", "1"])
    assert res.exit_code == 0, res.output
    assert "propagated 20 labels to 1377 images" in res.output and "most certain half" in res.output
    assert "metrics keep the accuracy already recorded for that cycle" in res.output
    pseudo = pq.read_table(tdir / "pseudo.parquet").to_pydict()
    assert sum(1 for c, e in zip(pseudo["cycle"], pseudo["epoch"]) if (c, e) == (1, 4)) == 1377
    assert pq.read_table(tdir / "metrics.parquet").equals(trained)
    # on a plain task it fills the cycle's accuracy, which its training left empty
    res = runner.invoke(app, ["propagate", str(path), "--task", "0"])
    assert res.exit_code == 0 and "metrics keep" not in res.output, res.output
    metrics = pq.read_table(mf.run_dir(m) / "tasks" / mf.tasks(m)[0].key / "metrics.parquet").to_pydict()
    assert metrics["pseudo_accuracy"][0] is None and 0.1 < metrics["pseudo_accuracy"][1] <= 1.0
    assert metrics["pseudo_accuracy_top_half"][1] >= metrics["pseudo_accuracy"][1] - 0.05
    res = runner.invoke(app, ["propagate", str(path), "--task", "0"])  # filled now: kept
    assert res.exit_code == 0 and "metrics keep the accuracy already recorded" in res.output, res.output
    again = runner.invoke(app, ["propagate", str(path), "--task", "1"])  # idempotent: rows replaced, not appended
    assert again.exit_code == 0 and pq.read_table(tdir / "pseudo.parquet").num_rows == len(pseudo["cycle"])


def test_ceal_with_label_propagation_is_rejected_naming_both_fields(write_manifest) -> None:
    path = write_manifest({"sweep": {"active.strategy": ["random", "ceal"], "semi.method": ["label-propagation"]}})
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 2
    assert "active.strategy: ceal does not combine with semi.method: label-propagation" in res.output
    assert "(sweep point active.strategy=ceal, semi.method=label-propagation)" in res.output


def test_pixel_features_are_the_centred_unit_images() -> None:
    import torch

    from alctl.engine.steps import pixel_features

    images = torch.tensor([[[[0, 2]]], [[[4, 2]]], [[[2, 8]]]], dtype=torch.uint8)  # [3, 1, 1, 2]
    f = pixel_features(images)
    want = np.array([[-2.0, -2.0], [2.0, -2.0], [0.0, 4.0]]) / np.array([[8**0.5], [8**0.5], [4.0]])
    assert f.dtype == torch.float32 and np.allclose(f.numpy(), want)


@pytest.mark.slow
def test_semi_on_pixels_propagates_over_the_images_themselves(write_manifest, workdir: Path) -> None:
    from alctl.engine.steps import pixel_features

    path = write_manifest({**SEMI, "active": {"cycles": 1}, "sweep": {},
                           "semi": {**SEMI["semi"], "method": "label-propagation", "features": "pixels"}})
    res = runner.invoke(app, ["cycle", str(path)])
    assert res.exit_code == 0, res.output
    kept, direct, _ = kept_and_direct_propagation(path, lambda task, ds: pixel_features(ds.train_images))
    assert kept == direct


@pytest.mark.parametrize("weighted", [True, False])
def test_class_weights_enter_the_semi_loss_only_when_asked(write_manifest, workdir: Path, weighted: bool) -> None:
    import torch

    from alctl.engine.cycle import CycleTraining, TaskContext
    from alctl.engine.tables import TaskTables, new_pool
    from alctl.engine.workspace import dataset_for, task_dir
    from alctl.propagate import class_weights

    path = write_manifest({**SEMI, "sweep": {}, "semi": {**SEMI["semi"], "method": "label-propagation",
                                                         "class_weights": weighted}})
    (task,) = mf.tasks(mf.load(path))
    ds = dataset_for(task.config)
    ctx = TaskContext(task, ds, TaskTables(task_dir(task), ds), torch.device("cpu"), None, lambda: False)
    training = CycleTraining(ctx, new_pool(task.config, 0, ds), 0)
    targets = training._refresh(0)
    assert len(targets.pseudo_pos) > 0
    if weighted:  # Iscen et al.: inversely proportional to the class frequency among labels and pseudo-labels
        want = class_weights(np.concatenate([targets.labeled_y, targets.pseudo_y]), ds.num_classes)
        np.testing.assert_allclose(targets.class_w, want)
    else:  # the authors' code: uniform
        assert targets.class_w is None
