"""The few-labels recipe (issue 26): settings decided from the images (auto rules), SimCLR as +PRE through the
engine (cached per key, used by +PRE, the graph and the cold start), and one manifest for every dataset."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from typer.testing import CliRunner

from alctl.config import identity
from alctl import config as mf
from alctl.cli import app
from alctl.engine import settings
from tests.checks import kept_and_direct_propagation

runner = CliRunner()
MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"
SIMCLR = {
    "repetitions": 1,
    "model": {"l2_features": "auto"},
    "train": {"epochs": 3, "rampdown_epochs": 4, "translate": "auto", "flip": "auto"},
    "active": {"cycles": 1},
    "semi": {"features": "auto", "k": 10, "batch_size": 64, "labeled_per_batch": 16, "unlabeled_per_epoch": 480},
    "pretrain": {"simclr": {"epochs": 2, "batch_size": 128, "projection_dim": 16}},
}


# ------------------------------------------------------------------ auto rules


@pytest.mark.parametrize(("side", "pixels"), [(8, 1), (16, 1), (28, 2), (32, 2), (64, 5), (224, 16)])
def test_translation_is_about_seven_percent_of_the_side(side: int, pixels: int) -> None:
    assert mf.translate(mf.TrainConfig(), (1, side, side)) == pixels
    assert mf.translate(mf.TrainConfig(translate=3), (1, side, side)) == 3  # a number is kept


def test_flips_for_colour_images_only_unless_set() -> None:
    assert mf.flip(mf.TrainConfig(), (3, 32, 32)) and not mf.flip(mf.TrainConfig(), (1, 28, 28))
    assert mf.flip(mf.TrainConfig(flip=True), (1, 28, 28))


@pytest.mark.parametrize(("pretrain", "channels", "head", "graph"), [
    ("none", 1, False, "pixels"), ("none", 3, False, "model"),
    ("simclr", 1, True, "encoder+pixels"), ("deepcluster", 3, True, "encoder")])
def test_head_and_graph_follow_the_encoder_and_the_channels(pretrain: str, channels: int, head: bool,
                                                            graph: str) -> None:
    m = mf.parse({"pretrain": {"method": pretrain}})
    assert mf.l2_features(m) is head
    assert mf.semi_features(m, (channels, 28, 28)) == graph
    fixed = mf.parse({"pretrain": {"method": pretrain}, "model": {"l2_features": True}, "semi": {"features": "model"}})
    assert mf.l2_features(fixed) is True and mf.semi_features(fixed, (channels, 28, 28)) == "model"


def test_simclr_runs_about_the_same_number_of_steps_on_any_pool() -> None:
    s = mf.SimclrConfig()
    assert [mf.simclr_epochs(s, n) for n in (1397, 4000, 60000)] == [92, 32, 2]
    assert mf.simclr_epochs(mf.SimclrConfig(epochs=7), 60000) == 7


def test_a_manifest_naming_only_the_dataset_and_methods_gets_the_auto_settings() -> None:
    m = mf.parse({"dataset": {"name": "digits"}, "pretrain": {"method": "simclr"},
                  "semi": {"method": "label-propagation"}})
    spec = settings.train_spec(m.train, None, (1, 8, 8))
    assert (spec.translate, spec.flip) == (1, False)
    assert mf.l2_features(m) and mf.semi_features(m, (1, 8, 8)) == "encoder+pixels"
    simclr = settings.simclr_spec(m, 10, (1, 8, 8), 1397)
    assert simclr.views.min_area == 0.85 and simclr.epochs == 92


# ------------------------------------------------------------------ one recipe for every dataset


def test_the_few_labels_manifests_differ_only_in_their_dataset() -> None:
    names = {}
    for path in sorted(MANIFESTS.glob("*-few.yaml")):
        data = yaml.safe_load(path.read_text())
        assert set(data) == {"extends", "dataset"} and data["extends"] == "few-labels.yaml", path
        m = mf.load(path)
        names[path.stem] = m.dataset.name
        base = mf.load(MANIFESTS / "few-labels.yaml")
        differ = {k for k in type(m).model_fields if getattr(m, k) != getattr(base, k)}
        assert differ <= {"dataset", "name"}, (path, differ)
    assert names == {"digits-few": "digits", "mnist-few": "mnist", "mnist5k-few": "mnist5k"}


def test_the_recipe_leaves_every_image_dependent_choice_to_the_rules() -> None:
    m = mf.load(MANIFESTS / "few-labels.yaml")
    assert (m.train.translate, m.train.flip, m.model.l2_features, m.semi.features) == ("auto",) * 4
    assert m.pretrain.simclr.epochs == "auto"


# ------------------------------------------------------------------ SimCLR through the engine


@pytest.mark.slow
def test_simclr_is_trained_once_and_serves_pre_the_graph_and_the_cold_start(write_manifest, workdir: Path) -> None:
    path = write_manifest({**SIMCLR, "active": {"cycles": 1, "initial_strategy": "typiclust",
                                                "initial_features": "simclr"},
                           "sweep": {"pretrain.method": ["none", "simclr"],
                                     "semi.method": ["none", "label-propagation"]}})
    res = runner.invoke(app, ["pretrain", str(path)])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if "pre-training" in line and "epoch" in line]
    assert len(lines) == 2 and all("NMI to labels" in x and "10-NN test accuracy" in x for x in lines), res.output
    pre_dir = workdir / "runs" / "tiny" / "pretrain"
    (weights,) = pre_dir.glob("*.pt")
    payload = torch.load(weights, weights_only=True)
    assert payload["settings"]["method"] == "simclr"
    epochs = pq.read_table(weights.with_suffix(".parquet")).to_pydict()
    assert epochs["epoch"] == [0, 1] and all(0 < v <= 1 for v in epochs["knn_accuracy"] + epochs["nmi_labels"])

    res = runner.invoke(app, ["cycle", str(path)])
    assert res.exit_code == 0, res.output
    assert "pre-training" not in res.output  # the cached encoder serves every task
    m = mf.load(path)
    initial = set()
    for t in mf.tasks(m):
        tdir = mf.run_dir(m) / "tasks" / t.key
        pool = pq.read_table(tdir / "pool.parquet").to_pydict()
        initial.add(tuple(sorted(s for s, c in zip(pool["sample_id"], pool["labeled_cycle"]) if c == 0)))
        assert pq.read_table(tdir / "metrics.parquet")["seconds_pretrain"].to_pylist() == [0.0]
    assert len(initial) == 1  # plain and +PRE variants share the cold start's set


@pytest.mark.slow
def test_pre_semi_builds_its_graph_on_the_simclr_encoder_joined_to_the_pixels(write_manifest, workdir: Path) -> None:
    from alctl.engine.cycle import new_model
    from alctl.engine.pretraining import ensure_pretrained
    from alctl.engine.steps import joined_features, pixel_features, pool_features
    from alctl.console import Ui

    path = write_manifest({**SIMCLR, "pretrain": {**SIMCLR["pretrain"], "method": "simclr"},
                           "semi": {**SIMCLR["semi"], "method": "label-propagation"}})
    res = runner.invoke(app, ["cycle", str(path)])
    assert res.exit_code == 0, res.output

    def encoder_features(task: mf.Task, ds: object) -> torch.Tensor:
        cpu = torch.device("cpu")
        weights, _ = ensure_pretrained(task.config, ds, cpu, Ui(quiet=True), lambda: False)  # type: ignore[arg-type]
        with torch.random.fork_rng():
            model = new_model(task.config, ds, task.rep, 0, cpu, weights)  # type: ignore[arg-type]
        encoder = pool_features(task.config, ds, model, ds.train_images)  # type: ignore[attr-defined]
        return joined_features([encoder, pixel_features(ds.train_images)])  # type: ignore[attr-defined]

    kept, direct, _ = kept_and_direct_propagation(path, encoder_features)
    assert kept == direct  # grey images: auto joins the encoder's features to the pixels


def test_simclr_and_deepcluster_encoders_have_different_keys() -> None:
    simclr = mf.parse({"pretrain": {"method": "simclr"}})
    deep = mf.parse({"pretrain": {"method": "deepcluster"}})
    assert identity.encoder_fields(simclr) != identity.encoder_fields(deep)
    assert identity.encoder_fields(mf.parse({"pretrain": {"method": "deepcluster", "simclr": {"temperature": 0.5}}})) \
        == identity.encoder_fields(deep)  # DeepCluster's key ignores the simclr section


def test_a_cold_start_on_another_methods_encoder_is_refused() -> None:
    with pytest.raises(Exception, match="active.initial_features: simclr with pretrain.method deepcluster"):
        mf.parse({"pretrain": {"method": "deepcluster"},
                  "active": {"initial_strategy": "typiclust", "initial_features": "simclr"}})


def test_joined_features_are_unit_rows_whose_products_average_the_cosines() -> None:
    from alctl.engine.steps import joined_features

    gen = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(6, 4, generator=gen), dim=1)
    b = torch.nn.functional.normalize(torch.randn(6, 9, generator=gen), dim=1)
    j = joined_features([a, b])
    assert j.shape == (6, 13) and torch.allclose(j.norm(dim=1), torch.ones(6))
    assert torch.allclose(j @ j.T, (a @ a.T + b @ b.T) / 2, atol=1e-6)
    assert joined_features([a]) is a


def test_encoder_plus_pixels_needs_an_encoder() -> None:
    with pytest.raises(Exception, match="semi.features: encoder\\+pixels joins a pre-trained encoder"):
        mf.parse({"semi": {"method": "label-propagation", "features": "encoder+pixels"}})
    m = mf.parse({"pretrain": {"method": "simclr"}, "semi": {"features": "encoder+pixels"}})
    assert mf.semi_features(m, (3, 32, 32)) == "encoder+pixels"  # a hand choice holds on colour images too
