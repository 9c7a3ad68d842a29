"""Manifest schema, cross-field rules, sweep expansion and the shipped manifests."""

from __future__ import annotations

from pathlib import Path

import pytest

from alctl.config import identity
from alctl import config as mf
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


FULL_SCALE = {  # the paper's figure: manifest -> (dataset, b)
    "cifar10": ("cifar10", 100), "cifar10-b1000": ("cifar10", 1000), "cifar100": ("cifar100", 1000),
    "svhn": ("svhn", 100), "mnist": ("mnist", 10), "mnist-b20": ("mnist", 20),
}


def test_every_full_scale_manifest_ships() -> None:
    assert {p.stem for p in (ROOT / "manifests").glob("*.yaml")} >= set(FULL_SCALE)


@pytest.mark.parametrize("path", sorted((ROOT / "manifests").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_manifests_validate(path: Path) -> None:
    m = mf.load(path)
    tasks = mf.tasks(m)
    assert tasks, path
    if path.stem in FULL_SCALE:  # the paper's figure: 5 strategies x 4 variants, CEAL without +SEMI, 5 repetitions
        points = {(t.config.active.strategy, t.variant) for t in tasks}
        want = {(s, v) for s in ("random", "uncertainty", "coreset", "jlp", "ceal")
                for v in ("plain", "+PRE", "+SEMI", "+PRE+SEMI") if not (s == "ceal" and "SEMI" in v)}
        assert points == want and len(tasks) == 5 * len(want)
        assert m.repetitions == 5 and m.model.width == 1.0 and m.train.epochs == 200 and m.active.cycles == 5
        dataset, budget = FULL_SCALE[path.stem]
        assert (m.dataset.name, m.active.initial, m.active.budget) == (dataset, budget, budget)
        assert m.train.flip == dataset.startswith("cifar")  # no flips for digits


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


def test_ceal_defaults_cap_and_balance_and_paper_true_is_the_papers_ceal() -> None:
    c = mf.parse({}).active.ceal
    assert (c.cap, c.balanced, c.weight, c.paper) == (1.0, True, 1.0, False)  # measured: docs/options.md
    c = mf.parse({"active": {"ceal": {"cap": 2, "balanced": False, "weight": 0.5}}}).active.ceal
    assert (c.cap, c.balanced, c.weight) == (2.0, False, 0.5)
    assert mf.parse({"active": {"ceal": {"cap": 0, "weight": 1}}}).active.ceal.cap == 0.0
    c = mf.parse({"active": {"ceal": {"paper": True}}}).active.ceal  # one option: no cap, no balance, weight 1
    assert (c.cap, c.balanced, c.weight, c.paper) == (None, False, 1.0, True)
    same = mf.parse({"active": {"ceal": {"paper": True, "cap": None, "balanced": False}}}).active.ceal
    assert same == c  # the paper's own values alongside are no clash (a resolved manifest round-trips)
    assert mf.parse(mf.parse({"active": {"ceal": {"paper": True}}}).model_dump(mode="json")).active.ceal == c
    with pytest.raises(ManifestError, match=r"^active.ceal.paper: true is the paper's CEAL .*remove active.ceal.cap,"
                                            r" active.ceal.balanced or set paper: false$"):
        mf.parse({"active": {"ceal": {"paper": True, "cap": 1, "balanced": True}}})


def test_ceal_options_are_a_tasks_identity_away_from_their_defaults() -> None:
    default = identity.task_hash(mf.parse({"active": {"strategy": "ceal"}}))
    paper = mf.parse({"active": {"strategy": "ceal", "ceal": {"paper": True}}})
    assert identity.task_fields(paper) == {"active.strategy": "ceal", "active.ceal.paper": True,
                                           "active.ceal.cap": None, "active.ceal.balanced": False}
    changed = [{"cap": 2.0}, {"cap": 0}, {"balanced": False}, {"weight": 0.5}, {"paper": True}]
    hashes = {identity.task_hash(mf.parse({"active": {"strategy": "ceal", "ceal": c}})) for c in changed}
    assert len(hashes) == len(changed) and default not in hashes


@pytest.mark.parametrize("ceal, expected", [
    ({"cap": -0.5}, "active.ceal.cap: Input should be greater than or equal to 0 (got -0.5)"),
    ({"cap": float("inf")}, "active.ceal.cap: Input should be a finite number"),
    ({"cap": "half"}, "active.ceal.cap: Input should be a valid number"),
    ({"weight": 0}, "active.ceal.weight: Input should be greater than 0 (got 0)"),
    ({"weight": 1.5}, "active.ceal.weight: Input should be less than or equal to 1 (got 1.5)"),
    ({"balanced": "sometimes"}, "active.ceal.balanced: Input should be a valid boolean"),
])
def test_bad_ceal_cap_balanced_weight_are_one_line_errors_exit_2(tmp_path: Path, ceal: dict,
                                                                 expected: str) -> None:
    import yaml
    from typer.testing import CliRunner

    from alctl.cli import app

    with pytest.raises(ManifestError) as e:
        mf.parse({"active": {"ceal": ceal}})
    assert len(e.value.problems) == 1 and e.value.problems[0].startswith(expected)
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"active": {"strategy": "ceal", "ceal": ceal}}))
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], res.output


def test_strategy_names_come_from_the_registry() -> None:
    from alctl.strategies.registry import NAMES

    assert mf.ActiveConfig.model_fields["strategy"].annotation.__args__ == NAMES
    for name in NAMES:
        assert mf.parse({"active": {"strategy": name}}).active.strategy == name


# ---------------------------------------------------------------- sweep.exclude


def test_sweep_exclude_leaves_out_matching_points_and_keeps_the_rest_in_order() -> None:
    sweep = {"active.strategy": ["random", "coreset"], "active.budget": [10, 20], "seed": [0, 1]}
    full = mf.parse({"repetitions": 2, "sweep": sweep})
    m = mf.parse({"repetitions": 2, "sweep": {**sweep, "exclude": [{"active.strategy": "coreset", "active.budget": 20},
                                                                    {"seed": 1, "active.budget": 10}]}})
    assert mf.sweep_axes(m) == sweep
    kept = [p for p in mf.sweep_points(full)
            if not (p["active.strategy"] == "coreset" and p["active.budget"] == 20)
            and not (p["seed"] == 1 and p["active.budget"] == 10)]
    assert mf.sweep_points(m) == kept
    assert kept == [{"active.strategy": "random", "active.budget": 10, "seed": 0},
                    {"active.strategy": "random", "active.budget": 20, "seed": 0},
                    {"active.strategy": "random", "active.budget": 20, "seed": 1},
                    {"active.strategy": "coreset", "active.budget": 10, "seed": 0}]
    assert mf.excluded(m, {"active.strategy": "coreset", "active.budget": 20, "seed": 0})
    assert not mf.excluded(m, {"active.strategy": "coreset", "active.budget": 10, "seed": 0})
    # tasks are renumbered, but a remaining point keeps its key (its run directory) and its configuration
    tasks, full_tasks = mf.tasks(m), {t.key: t for t in mf.tasks(full)}
    assert [t.index for t in tasks] == list(range(8))
    assert [t.key for t in tasks] == [t.key for t in mf.tasks(full) if t.point in kept]
    for t in tasks:
        assert t.config == full_tasks[t.key].config and t.point == full_tasks[t.key].point


def test_an_exclude_entry_of_one_path_leaves_out_every_point_with_that_value() -> None:
    m = mf.parse({"sweep": {"active.strategy": ["random", "coreset", "jlp"], "active.budget": [10, 20],
                            "exclude": [{"active.strategy": "coreset"}]}})
    assert [(p["active.strategy"], p["active.budget"]) for p in mf.sweep_points(m)] == [
        ("random", 10), ("random", 20), ("jlp", 10), ("jlp", 20)]


def test_ceal_with_label_propagation_validates_once_excluded() -> None:
    sweep = {"active.strategy": ["random", "ceal"], "semi.method": ["none", "label-propagation"]}
    with pytest.raises(ManifestError, match="ceal does not combine.*sweep point"):
        mf.parse({"sweep": sweep})
    m = mf.parse({"sweep": {**sweep, "exclude": [{"active.strategy": "ceal", "semi.method": "label-propagation"}]}})
    assert [t.key for t in mf.tasks(m.model_copy(update={"repetitions": 1}))] == [
        "strategy=random/semi=none/pretrain=none/rep=0",
        "strategy=random/semi=lp/pretrain=none/rep=0",
        "strategy=ceal/semi=none/pretrain=none/rep=0",
    ]


@pytest.mark.parametrize(
    ("exclude", "expected"),
    [
        ([{"active.budget": 10}], "sweep.exclude[0].active.budget: not swept (swept: active.strategy, semi.method)"),
        ([{"active.strategy": "random"}, {"active.strategy": "jlp"}],
         "sweep.exclude[1].active.strategy: 'jlp' is not one of the swept values ['random', 'coreset']"),
        (["coreset"], "sweep.exclude[0]: expected a mapping of swept paths to values, e.g. {active.strategy: ceal}"),
        ([{}], "sweep.exclude[0]: expected a mapping of swept paths to values, e.g. {active.strategy: ceal}"),
        ([{"active.strategy": "random"}, {"active.strategy": "coreset"}], "sweep.exclude: leaves no task in the grid"),
        ({"active.strategy": "random"}, "sweep.exclude: Input should be a valid list"),
    ],
)
def test_bad_sweep_exclude_is_one_line_naming_the_entry(exclude: object, expected: str) -> None:
    sweep = {"active.strategy": ["random", "coreset"], "semi.method": ["none", "label-propagation"], "exclude": exclude}
    with pytest.raises(ManifestError) as e:
        mf.parse({"sweep": sweep})
    assert e.value.problems == [expected]


def test_exclude_without_a_sweep_says_nothing_is_swept() -> None:
    with pytest.raises(ManifestError) as e:
        mf.parse({"sweep": {"exclude": [{"active.strategy": "random"}]}})
    assert e.value.problems == ["sweep.exclude[0].active.strategy: not swept (swept: nothing)"]


def test_resolved_yaml_of_an_excluding_manifest_loads_to_the_same_tasks(tmp_path: Path) -> None:
    """What `submit --to k8s` ships: the resolved manifest, exclusions included."""
    m = mf.parse({"name": "x", "sweep": {"active.strategy": ["random", "coreset"], "active.budget": [10, 20],
                                         "exclude": [{"active.strategy": "coreset", "active.budget": 20}]}})
    path = tmp_path / "x.yaml"
    path.write_text(mf.to_yaml(m))
    again = mf.load(path)
    assert [t.key for t in mf.tasks(again)] == [t.key for t in mf.tasks(m)]
    assert mf.manifest_hash(again) == mf.manifest_hash(m)


# ---------------------------------------------------------------- extends


def write(path: Path, text: str) -> Path:
    """Write a manifest file (creating its folder) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BASE = """\
name: base-run
dataset: {name: digits}
train: {epochs: 3, batch_size: 16, lr: 0.1}
active: {initial: 10, budget: 10, cycles: 2}
sweep:
  active.strategy: [random, coreset, uncertainty]
  active.budget: [10, 20]
"""


def test_extends_overrides_leaves_merges_sections_and_replaces_lists(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml",
                  "extends: base.yaml\ntrain: {epochs: 5}\nsweep:\n  active.strategy: [jlp]\n")
    m = mf.load(child)
    assert m.name == "child"  # the base's name names the base's own run
    assert (m.train.epochs, m.train.batch_size, m.train.lr) == (5, 16, 0.1)
    assert m.dataset.name == "digits" and (m.active.initial, m.active.cycles) == (10, 2)
    assert m.sweep == {"active.strategy": ["jlp"]}  # a sweep given by the child is its whole grid
    assert mf.run_dir(m) == Path("runs/child")
    assert mf.load(tmp_path / "base.yaml").name == "base-run"
    named = write(tmp_path / "named.yaml", "extends: base.yaml\nname: mine\n")
    assert mf.load(named).name == "mine"


def test_extends_the_same_as_writing_the_merged_manifest(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml", "extends: base.yaml\nseed: 4\nmodel: {width: 0.25}\n")
    flat = write(tmp_path / "flat.yaml",
                 BASE.replace("name: base-run", "name: child") + "seed: 4\nmodel: {width: 0.25}\n")
    assert mf.manifest_hash(mf.load(child)) == mf.manifest_hash(mf.load(flat))


def test_extends_chain_of_two_bases_resolved_relative_to_each_file(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "bases/grand.yaml", BASE + "model: {width: 0.125, dropout: 0.3}\n")
    write(tmp_path / "bases/mid.yaml", "extends: grand.yaml\nname: mid\ntrain: {epochs: 4}\nmodel: {width: 0.25}\n")
    write(tmp_path / "exp/child.yaml",
          "extends: ../bases/mid.yaml\nmodel: {width: 0.5}\nsweep:\n  active.budget: [30]\n")
    monkeypatch.chdir(tmp_path / "bases")  # the current directory plays no part
    m = mf.load(tmp_path / "exp/child.yaml")
    assert m.name == "child"
    assert (m.model.width, m.model.dropout, m.train.epochs, m.train.lr) == (0.5, 0.3, 4, 0.1)
    assert m.sweep == {"active.budget": [30]}


def test_missing_base_is_an_error_naming_the_files(tmp_path: Path) -> None:
    child = write(tmp_path / "child.yaml", "extends: nowhere/base.yaml\n")
    with pytest.raises(ManifestError) as e:
        mf.load(child)
    (line,) = e.value.problems
    assert line.startswith(f"{child}: extends: ") and line.endswith("nowhere/base.yaml not found")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"a.yaml": "extends: a.yaml\n"}, "a.yaml: extends: a.yaml leads back to itself"),
        ({"a.yaml": "extends: ./sub/../a.yaml\n"}, "a.yaml: extends: ./sub/../a.yaml leads back to itself"),
        ({"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"},
         "b.yaml: extends: a.yaml leads back to itself"),
        ({"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: c.yaml\n", "c.yaml": "extends: b.yaml\n"},
         "c.yaml: extends: b.yaml leads back to itself"),
        ({"a.yaml": "extends: [b.yaml]\n"}, "a.yaml: extends: expected the path of a base manifest, got ['b.yaml']"),
        ({"a.yaml": "extends: ''\n"}, "a.yaml: extends: expected the path of a base manifest, got ''"),
        ({"a.yaml": "extends: b.yaml\n", "b.yaml": "- train\n"}, "b.yaml: the manifest must be a mapping of sections"),
    ],
)
def test_bad_extends_is_one_line(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    (tmp_path / "sub").mkdir()
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(ManifestError) as e:
        mf.load(tmp_path / "a.yaml")
    (line,) = e.value.problems
    assert expected in line


def test_an_empty_base_and_a_base_with_extends_errors_in_the_child(tmp_path: Path) -> None:
    write(tmp_path / "empty.yaml", "")
    assert mf.load(write(tmp_path / "a.yaml", "extends: empty.yaml\nseed: 2\n")).seed == 2
    write(tmp_path / "base.yaml", BASE)
    with pytest.raises(ManifestError, match=r"^train.epochz: unknown key"):
        mf.load(write(tmp_path / "b.yaml", "extends: base.yaml\ntrain: {epochz: 2}\n"))
