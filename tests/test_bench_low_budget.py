"""benchmarks/bench_low_budget.py: its columns, its table and the targets it checks, on known figures."""

from __future__ import annotations

from types import ModuleType

import pytest

from alctl import config as mf
from tests.checks import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The benchmark script, imported from its path (benchmarks/ is not a package)."""
    return load_benchmark("bench_low_budget")


@pytest.mark.parametrize(("changes", "name"), [
    ({}, "plain"), ({"semi": {"method": "label-propagation"}}, "+SEMI"),
    ({"pretrain": {"method": "simclr"}}, "+PRE SimCLR"),
    ({"pretrain": {"method": "deepcluster"}, "semi": {"method": "label-propagation"}}, "+PRE+SEMI DeepCluster"),
    ({"pretrain": {"method": "simclr"}, "active": {"initial_strategy": "typiclust", "initial_features": "simclr"}},
     "TypiClust +PRE SimCLR")])
def test_each_task_has_its_column(bench: ModuleType, changes: dict, name: str) -> None:
    assert bench.column(mf.parse(changes)) == name


def test_the_table_names_the_best_setting_and_the_missed_targets(bench: ModuleType) -> None:
    results = {(1, "plain"): [30.0, 32.0], (1, "+PRE+SEMI SimCLR"): [96.0, 95.0],
               (1, "1-NN pixels"): [40.0, 42.0], (1, "LabelSpreading pixels"): [60.0, 61.0],
               (5, "plain"): [80.0, 82.0], (5, "+PRE+SEMI SimCLR"): [96.0, 96.5],
               (5, "1-NN pixels"): [70.0, 71.0], (5, "LabelSpreading pixels"): [97.0, 98.0]}
    text, misses = bench.table("toy", results, {(1, "+PRE+SEMI SimCLR"): [94.0, 96.0]})
    assert "| 1 | 31.0 ± 1.4 | 95.5 ± 0.7 (95.0) | 41.0 ± 1.4 | 60.5 ± 0.7 | +35.0 (+PRE+SEMI SimCLR) |" in text
    assert misses == ["toy, 5 per class: best +PRE+SEMI SimCLR 96.2 < 97",
                      "toy, 5 per class: best +PRE+SEMI SimCLR 96.2 not above LabelSpreading 97.5"]


def test_the_benchmark_grid_is_the_few_labels_manifest_reduced(bench: ModuleType, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = bench.setting("mnist", tmp_path, "main")
    m = mf.load(path)
    assert [t.config.active.initial for t in mf.tasks(m)] == [10] * 4 * m.repetitions
    assert {t.config.pretrain.method for t in mf.tasks(m)} == {"none", "simclr"}
    cold = mf.load(bench.setting("digits", tmp_path, "cold"))
    assert {(t.config.active.initial_strategy, t.config.pretrain.method) for t in mf.tasks(cold)} \
        == {("typiclust", "simclr")}
    base = mf.load(bench.ROOT / "manifests" / "few-labels.yaml")
    assert m.train == base.train and m.semi == base.semi and m.model == base.model  # the recipe's own settings


def test_the_hand_grid_holds_only_the_graph_choices_auto_did_not_make(bench: ModuleType, tmp_path) -> None:  # type: ignore[no-untyped-def]
    hand = mf.load(bench.setting("mnist5k", tmp_path, "hand"))
    points = {(t.config.pretrain.method, t.config.semi.features) for t in mf.tasks(hand)}
    # grey images: auto builds the plain graph on pixels and the +PRE one on encoder+pixels; the others run here
    assert points == {("none", "model"), ("simclr", "pixels"), ("deepcluster", "pixels"), ("simclr", "encoder"),
                      ("deepcluster", "encoder")}
    assert {t.config.semi.method for t in mf.tasks(hand)} == {"label-propagation"}
    assert {bench.column(t.config) for t in mf.tasks(hand)} == {
        "+SEMI [graph: model]", "+PRE+SEMI SimCLR [graph: pixels]", "+PRE+SEMI DeepCluster [graph: pixels]",
        "+PRE+SEMI SimCLR [graph: encoder]", "+PRE+SEMI DeepCluster [graph: encoder]"}


def test_auto_below_a_hand_choice_is_a_missed_target(bench: ModuleType) -> None:  # type: ignore[no-untyped-def]
    results = {(1, "+SEMI"): [90.0, 92.0], (1, "+SEMI [graph: model]"): [93.0, 95.0],
               (1, "+PRE+SEMI SimCLR"): [96.0, 96.0], (1, "+PRE+SEMI SimCLR [graph: pixels]"): [95.0, 95.0],
               (1, "1-NN pixels"): [40.0, 42.0], (1, "LabelSpreading pixels"): [60.0, 61.0]}
    text, misses = bench.table("toy", results, {})
    assert misses == ["toy, 1 per class: auto's graph +SEMI 91.0 below the hand choice +SEMI [graph: model] 94.0"
                      " (paired -3.0 ± 0.0, 95% t)"]  # seed by seed 90 - 93 and 92 - 95
    assert "+35.5 (+PRE+SEMI SimCLR)" in text  # a hand column is never the recipe's best


def test_the_other_runs_start_from_the_main_runs_encoders(bench: ModuleType, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from alctl.engine.pretraining import pretrain_key, pretrain_paths
    from alctl.engine.workspace import dataset_for

    main, hand = bench.setting("digits", tmp_path, "main"), bench.setting("digits", tmp_path, "hand")
    keys = {}
    for t in mf.tasks(mf.load(main)):
        if mf.uses_encoder(t.config):
            keys[pretrain_key(t.config, dataset_for(t.config))] = t.config
    assert len(keys) == 2  # SimCLR's and DeepCluster's
    for key, config in keys.items():
        paths = pretrain_paths(config, key)
        paths["weights"].parent.mkdir(parents=True, exist_ok=True)
        for part in ("settings", "metrics", "weights"):
            paths[part].write_text(f"{part} of {key}")
    bench.share_encoders(main, hand)
    hand_config = mf.tasks(mf.load(hand))[0].config
    for key in keys:
        assert pretrain_paths(hand_config, key)["weights"].read_text() == f"weights of {key}"
    pretrain_paths(hand_config, next(iter(keys)))["weights"].write_text("trained here")
    bench.share_encoders(main, hand)  # an encoder already there is kept
    assert pretrain_paths(hand_config, next(iter(keys)))["weights"].read_text() == "trained here"
