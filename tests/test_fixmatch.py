"""FixMatch as +SEMI (semi.method: fixmatch): its loss, its training through the engine, resume, counts and plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from alctl.config import identity
from alctl import config as mf
from alctl import plan
from alctl.cli import app
from alctl.console import silent
from alctl.engine import commands, settings
from alctl.engine.cycle import run_task
from alctl.engine.workspace import dataset_for
from alctl.errors import Preempted
from alctl.train import consistency_loss, flexible_thresholds

runner = CliRunner()

FIXMATCH = {
    "repetitions": 1,
    "model": {"l2_features": False},  # raw logits: confident predictions come within a few epochs
    "train": {"epochs": 6, "rampdown_epochs": 8},
    "active": {"cycles": 2},
    "semi": {"method": "fixmatch", "batch_size": 32, "labeled_per_batch": 8, "unlabeled_per_epoch": 96,
             "phase2_epochs": 2, "fixmatch": {"threshold": 0.3}},
}


def _task_dir(path: Path) -> Path:
    m = mf.load(path)
    return mf.run_dir(m) / "tasks" / mf.tasks(m)[0].key


def test_consistency_loss_trains_the_strong_view_on_confident_weak_predictions_only() -> None:
    weak = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 6.0]], requires_grad=True)
    strong = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    loss = consistency_loss(weak, strong, threshold=0.9)  # rows 0 and 2 are confident (0.96, 0.995), row 1 not
    want = (F.cross_entropy(strong[0:1], torch.tensor([0])) + F.cross_entropy(strong[2:3], torch.tensor([2]))) / 3
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    loss.backward()
    assert weak.grad is None or torch.count_nonzero(weak.grad) == 0  # the weak view is the target, not trained
    assert torch.count_nonzero(strong.grad[1]) == 0 and torch.count_nonzero(strong.grad[0]) > 0
    assert consistency_loss(weak, strong, threshold=1.0).item() == 0.0  # nothing reaches a threshold of 1
    assert consistency_loss(weak[:0], strong[:0], threshold=0.5).item() == 0.0


def test_flexible_thresholds_start_at_zero_and_reach_tau_for_the_most_learned_class() -> None:
    nothing = torch.full((6,), -1)
    assert flexible_thresholds(nothing, 3, 0.9).tolist() == [0.0, 0.0, 0.0]  # warm-up: every class takes anything
    learned = torch.tensor([0, 0, 0, 0, 1, 1, -1, -1])  # class 0 learned by 4 images, class 1 by 2, class 2 by none
    t = flexible_thresholds(learned, 3, 0.9)  # beta = 4/4, 2/4, 0 (2 unused images < 4)
    assert t.tolist() == pytest.approx([0.9, 0.9 * 0.5 / 1.5, 0.0])
    per_class = torch.tensor([0.9, 0.3, 0.0])
    weak = torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]])  # class 1 at 0.79 (>= 0.3), class 0 at 0.91 (>= 0.9)
    strong = torch.zeros(2, 3)
    assert consistency_loss(weak, strong, per_class).item() == pytest.approx(np.log(3.0))
    assert consistency_loss(weak, strong, 0.9).item() == pytest.approx(np.log(3.0) / 2)  # only row 1 at tau


@pytest.mark.slow
def test_fixmatch_cycle_counts_and_scores_its_confident_predictions(write_manifest) -> None:
    path = write_manifest(FIXMATCH)
    res = runner.invoke(app, ["cycle", str(path)])
    assert res.exit_code == 0, res.output
    assert "confident predictions" in res.output and "% correct" in res.output
    tdir = _task_dir(path)
    metrics = pq.read_table(tdir / "metrics.parquet").to_pylist()
    pseudo = pq.read_table(tdir / "pseudo.parquet").to_pydict()
    (task,) = mf.tasks(mf.load(path))
    ds = dataset_for(task.config)
    order = np.argsort(ds.train_ids.numpy())
    for m in metrics:
        rows = np.array(pseudo["cycle"]) == m["cycle"]
        ids = np.array(pseudo["sample_id"])[rows]
        truth = ds.train_labels.numpy()[order[np.searchsorted(ds.train_ids.numpy(), ids, sorter=order)]]
        assert m["n_pseudo"] == int(rows.sum()) > 0
        assert m["pseudo_accuracy"] == pytest.approx(float(np.mean(np.array(pseudo["pseudo_label"])[rows] == truth)))
        assert (np.array(pseudo["weight"])[rows] >= 0.3).all()  # only predictions at or above the threshold
    assert metrics[0]["variant"] == "+SEMI" and "semi=fm" in task.key


def test_a_prior_label_replaces_the_weak_prediction_where_its_weight_is_positive() -> None:
    weak = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 6.0]])
    strong = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    prior_y, prior_w = torch.tensor([1, 2, 0]), torch.tensor([0.5, 0.8, 0.0])  # row 2: no prior, its own guess
    loss = consistency_loss(weak, strong, 0.9, prior_y, prior_w)
    ce = [F.cross_entropy(strong[i : i + 1], torch.tensor([y])).item() for i, y in ((0, 1), (1, 2), (2, 2))]
    assert loss.item() == pytest.approx((0.5 * ce[0] + 0.8 * ce[1] + ce[2]) / 3, rel=1e-6)
    zero = torch.zeros(3)  # FixMatch's own targets: weights 0 leave the loss as without a prior
    assert consistency_loss(weak, strong, 0.9, prior_y, zero).item() == consistency_loss(weak, strong, 0.9).item()


def test_the_prior_ends_with_a_refresh_after_prior_epochs() -> None:
    m = mf.parse({"train": {"epochs": 5}, "semi": {"method": "fixmatch", "phase2_epochs": 10, "every": 3,
                                                   "fixmatch": {"prior_epochs": 2}}})
    semi = settings.semi_spec(m, lambda epoch: None)  # type: ignore[arg-type,return-value]
    assert semi.prior_epochs == 2 and semi.start(5) == 5
    assert [e for e in range(15) if semi.due(e, 5)] == [5, 7, 8, 11, 14]  # every 3 from 5, and 5 + 2
    plain = settings.semi_spec(m.model_copy(update={"semi": m.semi.model_copy(update={"fixmatch": mf.FixmatchConfig()})}),
                               lambda epoch: None)  # type: ignore[arg-type,return-value]
    assert [e for e in range(15) if plain.due(e, 5)] == [5, 8, 11, 14]
    # the plan counts the prior's propagations: model features (colour images, no encoder) every 3 epochs of 2
    for prior, count in ((0, 0), (2, 1), (4, 2)):
        cfg = mf.parse({"dataset": {"name": "cifar10"}, "train": {"epochs": 5},
                        "semi": {"method": "fixmatch", "phase2_epochs": 10, "every": 3,
                                 "fixmatch": {"prior_epochs": prior}}})
        cost = plan.cycle_cost(cfg, 0, pool=1000, test=100)
        assert cost.propagations == count and cost.features == 1000 + count * 1000


@pytest.mark.parametrize("fixmatch", [{}, {"flexible": True}, {"prior_epochs": 1}])
def test_fixmatch_stopped_mid_epoch_resumes_to_the_same_result(write_manifest, fixmatch: dict) -> None:
    flexible = fixmatch.get("flexible", False)
    extra = {**FIXMATCH, "active": {"cycles": 1},
             "semi": {**FIXMATCH["semi"], "fixmatch": {"threshold": 0.3, **fixmatch}}}
    straight = write_manifest({**extra, "name": "straight"}, name="straight.yaml")
    commands.cycle_command(straight, None, None, silent())
    resumed = write_manifest({**extra, "name": "resumed"}, name="resumed.yaml")
    (task,) = mf.tasks(mf.load(resumed))
    calls = iter(range(10_000))
    with pytest.raises(Preempted, match="epoch 6 step"):  # within phase 2's first epoch, mixed batches
        run_task(task, silent(), resumed, None, stop=lambda: next(calls) == 6 * 5 + 2)
    ckpt = torch.load(_task_dir(resumed) / "checkpoints" / "train.pt", weights_only=True)
    saved = ckpt["learned"]
    assert (saved is not None and (saved >= 0).any()) if flexible else saved is None  # FlexMatch's state travels
    prior = ckpt["targets"]["pseudo_w"]
    assert bool((prior > 0).any()) == ("prior_epochs" in fixmatch)  # label propagation's prior, in phase 2's first
    commands.cycle_command(resumed, None, None, silent())
    for table in ("pool", "pseudo"):
        assert pq.read_table(_task_dir(straight) / f"{table}.parquet").equals(
            pq.read_table(_task_dir(resumed) / f"{table}.parquet")), table
    columns = ["accuracy", "loss", "n_pseudo", "pseudo_accuracy"]
    assert pq.read_table(_task_dir(resumed) / "metrics.parquet").select(columns).equals(
        pq.read_table(_task_dir(straight) / "metrics.parquet").select(columns))


def test_fixmatch_combines_with_every_strategy_but_ceal() -> None:
    from alctl.strategies import NAMES

    for strategy in sorted(set(NAMES) - {"ceal"}):
        m = mf.parse({"active": {"strategy": strategy}, "semi": {"method": "fixmatch"}})
        assert mf.cycle_epochs(m) == m.train.epochs + m.semi.phase2_epochs
    with pytest.raises(Exception, match="active.strategy: ceal does not combine with semi.method: fixmatch"):
        mf.parse({"active": {"strategy": "ceal"}, "semi": {"method": "fixmatch"}})


def test_fixmatch_settings_are_checked_and_leave_other_tasks_hashes_alone() -> None:
    with pytest.raises(Exception, match="semi.fixmatch.threshold"):
        mf.parse({"semi": {"method": "fixmatch", "fixmatch": {"threshold": 1.5}}})
    assert identity.task_hash(mf.parse({})) == identity.task_hash(mf.parse({"semi": {"fixmatch": {"threshold": 0.95}}}))
    assert identity.task_fields(mf.parse({"semi": {"fixmatch": {"threshold": 0.9}}})) == {
        "semi.fixmatch.threshold": 0.9}
