"""Manifest schema, cross-field rules, sweep expansion and the shipped manifests."""

from __future__ import annotations

from pathlib import Path

import pytest

from alctl import manifest as mf
from alctl.errors import ManifestError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_follow_the_paper() -> None:
    m = mf.parse({})
    assert (m.train.lr, m.train.epochs, m.train.rampdown_epochs, m.train.weight_decay) == (0.2, 200, 210, 2e-4)
    assert (m.semi.k, m.semi.alpha, m.semi.gamma, m.semi.max_iter) == (50, 0.99, 3.0, 20)
    assert m.model.width == 1.0 and m.active.ceal.threshold == 0.1


def test_every_field_has_a_description() -> None:
    for model in (mf.Manifest, mf.DatasetConfig, mf.ModelConfig, mf.TrainConfig, mf.ActiveConfig, mf.SemiConfig,
                  mf.PretrainConfig, mf.CealConfig):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} lacks a description"


def test_unknown_key_and_wrong_type_name_the_field_path() -> None:
    with pytest.raises(ManifestError) as e:
        mf.parse({"train": {"epochs": "many", "lrr": 0.1}, "active": {"budget": -1}})
    lines = e.value.problems
    assert any(line.startswith("train.epochs:") for line in lines)
    assert any(line.startswith("train.lrr:") and "unknown key (valid here: epochs, batch_size, lr," in line
               for line in lines)
    assert any(line.startswith("active.budget:") for line in lines)
    assert len(lines) == 3


def test_budget_larger_than_pool_is_rejected() -> None:
    with pytest.raises(ManifestError, match=r"active.budget: .* exceeds the digits pool \(1397"):
        mf.parse({"dataset": {"name": "digits"}, "active": {"initial": 10, "budget": 1000, "cycles": 3}})


def test_ceal_with_label_propagation_is_rejected_also_inside_a_sweep() -> None:
    with pytest.raises(ManifestError, match="ceal does not combine"):
        mf.parse({"active": {"strategy": "ceal"}, "semi": {"method": "label-propagation"}})
    with pytest.raises(ManifestError, match="ceal does not combine.*sweep point"):
        mf.parse({"sweep": {"active.strategy": ["random", "ceal"], "semi.method": ["none", "label-propagation"]}})


def test_pca_larger_than_the_feature_dimension_is_rejected() -> None:
    mf.parse({"model": {"width": 0.125}, "pretrain": {"method": "deepcluster", "pca": 16}})
    with pytest.raises(ManifestError, match=r"pretrain.pca: 32 exceeds the feature dimension 16 of model.width 0.125"):
        mf.parse({"model": {"width": 0.125}, "pretrain": {"method": "deepcluster", "pca": 32}})


def test_phase2_epochs_with_a_warmup_is_rejected() -> None:
    m = mf.parse({"semi": {"method": "label-propagation", "phase2_epochs": 15}, "train": {"epochs": 25}})
    assert mf.cycle_epochs(m) == 40
    assert mf.cycle_epochs(mf.parse({"semi": {"phase2_epochs": 15}, "train": {"epochs": 25}})) == 25
    with pytest.raises(ManifestError, match=r"semi.warmup: not used with semi.phase2_epochs"):
        mf.parse({"semi": {"method": "label-propagation", "phase2_epochs": 15, "warmup": 5}})


def test_unknown_sweep_path() -> None:
    with pytest.raises(ManifestError, match=r"sweep.active.strategyy: not a manifest field"):
        mf.parse({"sweep": {"active.strategyy": ["random"]}})


def test_sweep_expands_into_numbered_tasks() -> None:
    m = mf.parse({"repetitions": 3, "sweep": {"active.strategy": ["random", "coreset"], "active.budget": [10, 20]}})
    tasks = mf.tasks(m)
    assert len(tasks) == 12 and [t.index for t in tasks] == list(range(12))
    assert tasks[0].key == "strategy=random/semi=none/pretrain=none/budget=10/rep=0"
    assert tasks[5].config.active.budget == 20 and tasks[5].rep == 2
    assert tasks[6].config.active.strategy == "coreset"
    assert len({t.key for t in tasks}) == 12


def test_hash_is_stable_and_sensitive() -> None:
    a, b = mf.parse({"seed": 1}), mf.parse({"seed": 1})
    assert mf.manifest_hash(a) == mf.manifest_hash(b)
    assert mf.manifest_hash(a) != mf.manifest_hash(mf.parse({"seed": 2}))


def test_yaml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1, 2\n")
    with pytest.raises(ManifestError, match=r"bad.yaml:\d+:\d+: YAML syntax error"):
        mf.load(bad)
    with pytest.raises(ManifestError, match="manifest file not found"):
        mf.load(tmp_path / "nope.yaml")


def test_name_defaults_to_file_stem(tmp_path: Path) -> None:
    p = tmp_path / "exp1.yaml"
    p.write_text("seed: 3\n")
    assert mf.load(p).name == "exp1"


@pytest.mark.parametrize("path", sorted((ROOT / "manifests").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_manifests_validate(path: Path) -> None:
    m = mf.load(path)
    tasks = mf.tasks(m)
    assert tasks, path
    if path.stem in {"mnist", "svhn", "cifar10", "cifar10-b1000", "cifar100"}:
        strategies = {t.config.active.strategy for t in tasks}
        assert {"random", "uncertainty", "coreset", "ceal"} <= strategies
        assert m.repetitions == 5 and m.model.width == 1.0


def test_unknown_top_level_key_lists_the_sections() -> None:
    with pytest.raises(ManifestError, match=r"^tarin: unknown key \(valid here: name, output, seed, repetitions, dataset,"):
        mf.parse({"tarin": {}})


@pytest.mark.parametrize("device", ["gpu", "mps", "cuda:x", ""])
def test_unknown_training_device_is_rejected(device: str) -> None:
    with pytest.raises(ManifestError, match=r"train.device: expected auto, cpu, cuda or cuda:N, got"):
        mf.parse({"train": {"device": device}})
    assert mf.parse({"train": {"device": "cuda:1"}}).train.device == "cuda:1"


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "a\\b"])
def test_run_name_must_be_a_plain_folder_name(name: str) -> None:
    with pytest.raises(ManifestError, match="must be a plain folder name"):
        mf.parse({"name": name})


def test_sweep_refuses_repeated_values_and_run_level_fields() -> None:
    with pytest.raises(ManifestError, match=r"sweep.active.strategy: value 'random' given twice"):
        mf.parse({"sweep": {"active.strategy": ["random", "coreset", "random"]}})
    with pytest.raises(ManifestError) as e:
        mf.parse({"sweep": {"repetitions": [1, 3], "name": ["a", "b"], "scheduler.cpus": [1, 2]}})
    assert len(e.value.problems) == 3
    assert all("set once per run, cannot vary between its tasks" in line for line in e.value.problems)


def test_duplicate_keys_and_non_utf8_text_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("model:\n  width: 0.5\ntrain:\n  epochs: 3\nmodel:\n  width: 0.25\n")
    with pytest.raises(ManifestError, match=r"dup.yaml:5:1: .*key 'model' given twice"):
        mf.load(path)
    path.write_text("train:\n  epochs: 3\n  epochs: 4\n")
    with pytest.raises(ManifestError, match=r"dup.yaml:3:3: .*key 'epochs' given twice"):
        mf.load(path)
    # anchors and merge keys still work, overrides included
    path.write_text("train: &t\n  epochs: 3\n  lr: 0.1\nsweep:\n  train.lr: [0.1, 0.2]\n")
    assert mf.load(path).train.epochs == 3
    path.write_text("x: &d {epochs: 3, lr: 0.1}\n")
    with pytest.raises(ManifestError, match="x: unknown key"):
        mf.load(path)
    path.write_text("model: {width: 0.5}\ntrain: {<<: {epochs: 3, lr: 0.1}, lr: 0.05}\n")
    m = mf.load(path)
    assert (m.train.epochs, m.train.lr) == (3, 0.05)
    path.write_text("? [a, b]\n: 1\n")
    with pytest.raises(ManifestError, match="unhashable key"):
        mf.load(path)
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ManifestError, match=r"dup.yaml: not UTF-8 text \(byte 9"):
        mf.load(path)


@pytest.mark.parametrize("section", [{"semi": {"gamma": float("inf")}}, {"active": {"ceal": {"decay": float("nan")}}}])
def test_infinite_or_nan_numbers_are_refused(section: dict) -> None:
    with pytest.raises(ManifestError, match=r"(semi\.gamma|active\.ceal\.decay): Input should be a finite number"):
        mf.parse(section)


def test_strategy_names_come_from_the_registry() -> None:
    from alctl.strategies.registry import NAMES

    assert mf.ActiveConfig.model_fields["strategy"].annotation.__args__ == NAMES
    for name in NAMES:
        assert mf.parse({"active": {"strategy": name}}).active.strategy == name
