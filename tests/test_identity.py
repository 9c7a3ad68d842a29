"""One identity rule: a task's (and an encoder's) identity is its settings that differ from the defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from alctl.config import identity
from alctl import config as mf
from alctl.cli import app
from alctl.console import silent
from alctl.engine import commands
from alctl.engine.cycle import run_task
from alctl.engine.workspace import check_task_dir, known_hashes, task_dir
from alctl.errors import Preempted, UserError

runner = CliRunner()
GOLDEN = Path(__file__).parent / "golden" / "defaults.json"


def test_every_default_is_pinned_so_changing_one_needs_a_new_identity_version() -> None:
    golden = json.loads(GOLDEN.read_text())
    now = identity.defaults()
    # a changed or removed default changes what manifests relying on it mean: bump identity.VERSION (with a
    # `migrate` step for recorded task.yaml files) and regenerate the file in the same commit
    changed = sorted(k for k in golden["defaults"] if now.get(k, "<removed>") != golden["defaults"][k])
    assert not changed, f"defaults changed: {changed}; bump identity.VERSION and regenerate {GOLDEN.name}"
    assert golden["identity"] == identity.VERSION, f"identity.VERSION changed: regenerate {GOLDEN.name}"
    added = sorted(set(now) - set(golden["defaults"]))  # a new field at its default: no new version, but pinned
    assert not added, f"new fields {added}: regenerate {GOLDEN.name} (python -c 'from alctl.config import identity; ...')"


def test_identity_keeps_only_non_default_values_outside_the_sections_that_cannot_change_a_result() -> None:
    assert identity.task_fields(mf.Manifest()) == {}
    m = mf.parse({"name": "x", "output": "elsewhere", "repetitions": 3, "scheduler": {"time": "02:00:00"},
                  "tracking": {"mlflow": "file:./mlruns"}, "train": {"lr": 0.1, "epochs": 200},
                  "active": {"ceal": {"cap": 2}}, "sweep": {"seed": [0, 1]}})
    assert identity.task_fields(m) == {"train.lr": 0.1, "active.ceal.cap": 2.0}
    explicit = mf.parse({"train": {"lr": 0.1, "epochs": 200}})  # a default written out is no difference
    assert identity.task_hash(explicit) == identity.task_hash(mf.parse({"train": {"lr": 0.1}}))
    # pinned: these hashes are the task directories of recorded runs; they change only with identity.VERSION
    assert identity.task_hash(mf.Manifest()) == "6438b7e7dc82dad7"
    assert identity.task_hash(mf.parse({"train": {"lr": 0.1}})) == "18ea353ebd7812cc"


def test_a_field_added_with_its_default_leaves_every_identity_unchanged(monkeypatch) -> None:
    m = mf.parse({"train": {"lr": 0.1}, "semi": {"method": "label-propagation"}})
    before = identity.task_hash(m)
    data = m.model_dump(mode="json")
    data["semi"]["a_new_option"] = 7  # what a new field at its default adds to the dump and to the defaults
    monkeypatch.setattr(identity, "_defaults_json", lambda: json.dumps(
        {**identity.flatten(mf.Manifest().model_dump(mode="json")), "semi.a_new_option": 7}, sort_keys=True))
    assert identity.digest({p: v for p, v in identity.flatten(data).items() if p.split(".")[0] not in identity.DROPPED
                            and identity.defaults().get(p) != v}) == before


def test_differences_name_the_fields_and_their_values() -> None:
    old = identity.task_fields(mf.parse({"train": {"lr": 0.2}, "seed": 3}))
    new = identity.task_fields(mf.parse({"train": {"lr": 0.1}, "semi": {"k": 20}}))
    default_k = mf.Manifest().semi.k
    assert identity.differences(old, new) == ["seed: 3 -> 0", f"semi.k: {default_k} -> 20", "train.lr: 0.2 -> 0.1"]
    many = {f"x.f{i}": i for i in range(12)}
    assert identity.differences({}, many, limit=3)[-1] == "... and 9 more"


def test_encoder_identity_reads_only_what_pre_training_reads() -> None:
    deep = mf.parse({"pretrain": {"method": "deepcluster"}})
    simclr = mf.parse({"pretrain": {"method": "simclr"}})
    assert identity.encoder_fields(deep) == {"method": "deepcluster"}  # every field it reads at its default
    assert identity.encoder_fields(simclr) != identity.encoder_fields(deep)
    for extra in ({"train": {"lr": 0.01}}, {"semi": {"method": "label-propagation"}}, {"active": {"budget": 7}},
                  {"model": {"l2_features": True}}, {"name": "other"}):
        for base in ({"pretrain": {"method": "deepcluster"}}, {"pretrain": {"method": "simclr"}}):
            merged = {**base, **extra}
            assert identity.encoder_fields(mf.parse(merged)) == identity.encoder_fields(mf.parse(base)), merged
    # what each method reads does tell encoders apart
    assert identity.encoder_fields(mf.parse({"pretrain": {"method": "simclr", "simclr": {"temperature": 0.5}}})) \
        != identity.encoder_fields(simclr)
    assert identity.encoder_fields(mf.parse({"pretrain": {"method": "deepcluster", "simclr": {"temperature": 0.5}}})) \
        == identity.encoder_fields(deep)  # DeepCluster does not read the simclr section
    assert identity.encoder_fields(mf.parse({"pretrain": {"method": "deepcluster", "epochs": 3}})) \
        != identity.encoder_fields(deep)
    assert identity.encoder_fields(mf.parse({"pretrain": {"method": "simclr"}, "seed": 4})) \
        != identity.encoder_fields(simclr)


def _one_task(write_manifest, extra: dict | None = None) -> tuple[Path, mf.Task]:
    path = write_manifest({"repetitions": 1, "active": {"cycles": 1}, **(extra or {})})
    (task,) = mf.tasks(mf.load(path))
    return path, task


def test_a_changed_setting_is_refused_naming_the_field_exit_2(write_manifest) -> None:
    path, task = _one_task(write_manifest)
    commands.cycle_command(path, None, None, silent())
    lr = task.config.train.lr
    changed = write_manifest({"repetitions": 1, "active": {"cycles": 1}, "train": {"lr": lr / 2}})
    res = runner.invoke(app, ["cycle", str(changed)])
    assert res.exit_code == 2
    assert f"holds results of another configuration (train.lr: {lr} -> {lr / 2});" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_a_directory_recorded_under_an_older_hash_is_accepted_once_and_its_checkpoint_resumes(write_manifest) -> None:
    path, task = _one_task(write_manifest, {"train": {"epochs": 4, "rampdown_epochs": 5}})
    calls = iter(range(10_000))
    with pytest.raises(Preempted):
        run_task(task, silent(), path, None, stop=lambda: next(calls) == 12)
    tdir = task_dir(task)
    ckpt_path = tdir / "checkpoints" / "train.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    new = ckpt["task_hash"]
    # as an older alctl left it: another hash in the marker and in the checkpoint, the same task.yaml
    old = "0123456789abcdef"
    (tdir / "task.sha256").write_text(old + "\n")
    ckpt["task_hash"] = old
    torch.save(ckpt, ckpt_path)
    assert check_task_dir(task, write=False) == new and known_hashes(task) == {new, old}
    assert (tdir / "task.sha256").read_text() == old + "\n"  # not written without write
    commands.cycle_command(path, None, None, silent())
    assert (tdir / "task.sha256").read_text().split() == [new, old]
    straight, stask = _one_task(write_manifest, {"name": "straight", "train": {"epochs": 4, "rampdown_epochs": 5}})
    commands.cycle_command(straight, None, None, silent())
    columns = ["accuracy", "loss"]  # resumed from the old-hash checkpoint: the same as uninterrupted
    assert pq.read_table(tdir / "metrics.parquet").select(columns).equals(
        pq.read_table(task_dir(stask) / "metrics.parquet").select(columns))


def test_a_recorded_configuration_that_differs_is_refused_even_under_an_older_hash(write_manifest) -> None:
    path, task = _one_task(write_manifest)
    check_task_dir(task)
    tdir = task_dir(task)
    recorded = tdir / "task.yaml"
    recorded.write_text(recorded.read_text().replace(f"seed: {task.config.seed}", "seed: 11"))
    (tdir / "task.sha256").write_text("0123456789abcdef\n")
    with pytest.raises(UserError, match=rf"another configuration \(seed: 11 -> {task.config.seed}\)"):
        check_task_dir(task)
    recorded.write_text("not: [a manifest")
    with pytest.raises(UserError, match="task hash 0123456789abcdef, manifest now gives"):
        check_task_dir(task)


def test_a_task_recorded_before_version_3_with_initial_strategy_random_is_todays_auto(write_manifest) -> None:
    path, task = _one_task(write_manifest)
    check_task_dir(task)
    tdir = task_dir(task)
    recorded = tdir / "task.yaml"
    text = recorded.read_text()
    assert text.startswith(identity.HEADER) and identity.recorded_version(text) == identity.VERSION
    # as version 2 wrote it: no header, and `random` for what was the balanced draw
    recorded.write_text(text[len(identity.HEADER):].replace("initial_strategy: auto", "initial_strategy: random"))
    (tdir / "task.sha256").write_text("0123456789abcdef\n")
    assert check_task_dir(task) == identity.task_hash(task.config)
    # written today, `random` means a draw without labels: another configuration
    recorded.write_text(identity.HEADER + text[len(identity.HEADER):].replace("initial_strategy: auto",
                                                                             "initial_strategy: random"))
    (tdir / "task.sha256").write_text("fedcba9876543210\n")
    with pytest.raises(UserError, match='active.initial_strategy: "random" -> "auto"'):
        check_task_dir(task)


SHIPPED = Path(__file__).parents[1] / "manifests"
PINNED = Path(__file__).parent / "golden" / "task_hashes.json"


def test_the_task_hashes_of_every_shipped_manifest_are_pinned() -> None:
    # each is the directory a recorded run of that manifest resumes from: a code change that moves one would
    # strand those runs; a new manifest or a new task of a sweep is added to the file, an old one never changes
    pinned = json.loads(PINNED.read_text())
    for path in sorted(SHIPPED.glob("*.yaml")):
        now = {t.key: identity.task_hash(t.config) for t in mf.tasks(mf.load(path))}
        old = pinned.get(path.name)
        assert old is not None, f"{path.name} is new: add its task hashes to {PINNED.name}"
        moved = {k: (v, now[k]) for k, v in old.items() if k in now and now[k] != v}
        assert not moved, f"{path.name}: task hashes changed {moved}"
        assert set(now) <= set(old), f"{path.name}: new tasks {sorted(set(now) - set(old))}: add them to {PINNED.name}"
