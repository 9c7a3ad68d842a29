"""Per-class figures against scikit-learn's definitions, on skewed and degenerate predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score

from alctl.metrics import class_figures


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", range(5))
def test_figures_equal_scikit_learns_on_skewed_random_predictions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.choice(6, size=300, p=[0.6, 0.2, 0.1, 0.05, 0.05, 0.0])  # class 5 never occurs
    predicted = np.where(rng.random(300) < 0.7, truth, rng.integers(0, 6, 300))
    f = class_figures(predicted, truth, 6)
    assert f.accuracy == pytest.approx(float(np.mean(predicted == truth)))
    assert f.balanced_accuracy == pytest.approx(balanced_accuracy_score(truth, predicted))
    assert f.macro_f1 == pytest.approx(f1_score(truth, predicted, average="macro", zero_division=0))
    present = np.unique(truth)
    assert f.recall[present] == pytest.approx(recall_score(truth, predicted, labels=present, average=None))
    assert np.isnan(f.recall[5])


def test_a_model_that_predicts_the_majority_class_has_high_accuracy_and_low_balanced_accuracy() -> None:
    truth = np.array([0] * 95 + [1] * 5)
    f = class_figures(np.zeros(100, dtype=np.int64), truth, 2)
    assert (f.accuracy, f.balanced_accuracy) == (0.95, 0.5)
    assert f.recall.tolist() == [1.0, 0.0] and f.macro_f1 == pytest.approx((2 * 95 / 195 + 0.0) / 2)


def test_no_image_gives_nan_and_bad_input_is_refused() -> None:
    f = class_figures(np.zeros(0), np.zeros(0), 3)
    assert np.isnan([f.accuracy, f.balanced_accuracy, f.macro_f1]).all() and np.isnan(f.recall).all()
    with pytest.raises(ValueError, match="same"):
        class_figures(np.zeros(3), np.zeros(2), 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        class_figures(np.array([0, 3]), np.array([0, 1]), 3)


def test_a_cycle_records_per_class_figures_and_labels_per_class(write_manifest) -> None:
    import pyarrow.parquet as pq

    from alctl import config as mf
    from alctl.console import silent
    from alctl.engine import commands

    path = write_manifest({"repetitions": 1, "train": {"epochs": 2, "rampdown_epochs": 3}, "active": {"cycles": 2}})
    commands.cycle_command(path, None, None, silent())
    m = mf.load(path)
    (task,) = mf.tasks(m)
    tdir = mf.run_dir(m) / "tasks" / task.key
    rows = pq.read_table(tdir / "metrics.parquet").to_pylist()
    pool = pq.read_table(tdir / "pool.parquet").to_pydict()
    from alctl.engine.workspace import dataset_for

    truth = dataset_for(task.config).train_labels.numpy()
    for row in rows:
        recall = np.array([np.nan if r is None else r for r in row["recall_per_class"]])
        assert len(recall) == len(row["labeled_per_class"]) == 10
        assert row["balanced_accuracy"] == pytest.approx(np.nanmean(recall))
        assert 0.0 <= row["macro_f1"] <= 1.0
        labeled = [lab for lab, c in zip(pool["label"], pool["labeled_cycle"]) if 0 <= c <= row["cycle"]]
        assert row["labeled_per_class"] == np.bincount(labeled, minlength=10).tolist()
        assert sum(row["labeled_per_class"]) == row["n_labeled"]
        assert row["pool_per_class"] == np.bincount(truth, minlength=10).tolist()


def _write(run, setting: str, rep: int, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from alctl import store

    path = run / "tasks" / setting / f"rep={rep}" / "metrics.parquet"
    path.parent.mkdir(parents=True)
    full = [{"task": rep, "task_key": f"{setting}/rep={rep}", "strategy": setting.split("/")[0].split("=")[1],
             "variant": "plain", "rep": rep, "cycle": c, "n_labeled": 10 * (c + 1), **r} for c, r in enumerate(rows)]
    pq.write_table(pa.Table.from_pylist(full, schema=store.METRICS), path)


def test_report_metric_picks_the_figure_of_every_table_and_refuses_others(workdir) -> None:
    import json

    from typer.testing import CliRunner

    from alctl.cli import app

    run = workdir / "runs" / "skewed"
    for rep in range(2):
        _write(run, "strategy=random/semi=none/pretrain=none", rep,
               [{"accuracy": 0.9, "balanced_accuracy": 0.5 + 0.1 * rep, "macro_f1": 0.4},
                {"accuracy": 0.95, "balanced_accuracy": 0.7, "macro_f1": 0.6}])
        _write(run, "strategy=margin/semi=none/pretrain=none", rep,
               [{"accuracy": 0.9, "balanced_accuracy": 0.5 + 0.1 * rep, "macro_f1": 0.4},
                {"accuracy": 0.94, "balanced_accuracy": 0.8, "macro_f1": None}])  # an older file: no macro-F1
    runner = CliRunner()
    res = runner.invoke(app, ["report", "runs/skewed", "--metric", "balanced_accuracy"])
    assert res.exit_code == 0, res.output
    assert "Test balanced accuracy (%), mean ± std" in res.stdout
    assert "| skewed | random | plain | 55.00 ± 7.07 | 70.00 ± 0.00 | 2 |" in res.stdout
    assert "| skewed | margin | plain | random plain | +0.00 ± 0.00 | +10.00 ± 0.00 | 2 |" in res.stdout  # paired
    data = json.loads(runner.invoke(app, ["report", "runs/skewed", "-f", "json", "--metric", "macro_f1"]).stdout)
    assert data["metric"] == "macro_f1"
    got = {(r["strategy"], r["n_labeled"]): r["accuracy_mean"] for r in data["rows"]}
    assert got[("random", 20)] == pytest.approx(60.0) and got[("margin", 20)] is None  # unknown there: null
    plain = runner.invoke(app, ["report", "runs/skewed"])
    assert "| skewed | margin | plain | 90.00 ± 0.00 | 94.00 ± 0.00 | 2 |" in plain.stdout  # accuracy by default
    bad = runner.invoke(app, ["report", "runs/skewed", "--metric", "f2"])
    assert bad.exit_code == 2
    assert "--metric: f2 is not one of accuracy, balanced_accuracy, macro_f1" in bad.output


def test_the_report_counts_the_labels_of_the_rarest_class_on_a_skewed_pool(workdir) -> None:
    from alctl import report

    run = workdir / "runs" / "tail"
    pool = [40, 20, 4]
    for rep, found in enumerate([[0, 1, 3], [1, 1, 2]]):
        _write(run, "strategy=margin/semi=none/pretrain=none", rep,
               [{"accuracy": 0.5, "labeled_per_class": [3, 3, f], "pool_per_class": pool} for f in found])
    # the same run sweeps a balanced pool too: no rarest class there
    _write(run, "strategy=margin/semi=none/pretrain=none/imbalance=None", 0,
           [{"accuracy": 0.5, "labeled_per_class": [3, 3, 3], "pool_per_class": [40, 38, 30]}])
    figs = report.figures(report.read_points([run]))
    got = {(r.setting, r.n_labeled): r.rarest_labeled_mean for r in figs.rows}
    skewed, flat = "strategy=margin/semi=none/pretrain=none", "strategy=margin/semi=none/pretrain=none/imbalance=None"
    assert got[(skewed, 10)] == 0.5 and got[(skewed, 30)] == 2.5 and got[(flat, 10)] is None
    out = report.render_markdown(figs).split("rarest class")[1]
    assert "| tail | margin | plain | 2 (4 in the pool) | 0.5 | 1.0 | 2.5 |" in out and "imbalance" not in out
