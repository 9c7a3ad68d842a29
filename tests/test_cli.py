"""CLI exit codes and messages: validate, cycle, report, select."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from alctl.cli import app

runner = CliRunner()


def test_validate_prints_the_plan(write_manifest) -> None:
    path = write_manifest({"sweep": {"active.strategy": ["random", "coreset"]}})
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 0, res.output
    assert "4 tasks" in res.output and "coreset" in res.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train:\n  epochz: 3\n", "train.epochz: unknown key"),
        ("train:\n  epochs: lots\n", "train.epochs: Input should be a valid integer"),
        ("active:\n  budget: 99999\n", "active.budget: initial 100 + budget 99999"),
        ("active:\n  strategy: magic\n", "active.strategy: Input should be"),
        ("train: [1, 2\n", "YAML syntax error"),
        ("active:\n  strategy: ceal\nsemi:\n  method: label-propagation\n", "ceal does not combine"),
    ],
)
def test_bad_manifest_exits_2_with_one_line_per_problem(workdir: Path, text: str, expected: str) -> None:
    path = workdir / "bad.yaml"
    path.write_text(text)
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 2
    assert expected in res.output
    assert "Traceback" not in res.output


def test_missing_manifest_exits_2(workdir: Path) -> None:
    res = runner.invoke(app, ["cycle", "nope.yaml"])
    assert res.exit_code == 2 and "nope.yaml: manifest file not found" in res.output


def test_full_size_dataset_absent_offline_exits_2_with_instructions(workdir: Path, monkeypatch) -> None:
    """`alctl cycle manifests/mnist.yaml` exactly as typed, with no files and no network: exit 2, how to get them."""
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    manifests = Path(__file__).resolve().parents[1] / "manifests"
    (workdir / "manifests").symlink_to(manifests)
    res = runner.invoke(app, ["cycle", "manifests/mnist.yaml"])
    assert res.exit_code == 2, res.output
    assert "data/MNIST" in res.output and "dataset.download" in res.output
    assert not (workdir / "runs").exists()  # nothing written


def test_task_index_outside_plan_exits_2(write_manifest, monkeypatch) -> None:
    res = runner.invoke(app, ["cycle", str(write_manifest()), "--task", "7"])
    assert res.exit_code == 2 and "--task: index 7 is outside the plan (0..1" in res.output
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")  # the index came from the scheduler: the error names it
    res = runner.invoke(app, ["cycle", str(write_manifest())])
    assert res.exit_code == 2 and "SLURM_ARRAY_TASK_ID: index 5 is outside the plan (0..1" in res.output


def test_report_without_runs_exits_2(workdir: Path) -> None:
    res = runner.invoke(app, ["report"])
    assert res.exit_code == 2 and "no runs under ./runs" in res.output


@pytest.mark.parametrize("command", ["select", "propagate"])
def test_select_or_propagate_before_training_exits_2_writing_nothing(write_manifest, workdir: Path,
                                                                     command: str) -> None:
    path = write_manifest()
    res = runner.invoke(app, [command, str(path), "--task", "0"])
    assert res.exit_code == 2 and "no trained model yet" in res.output
    assert f"run `alctl cycle {path} --task 0` first" in res.output
    assert not (workdir / "runs").exists()


@pytest.mark.slow
def test_cycle_then_report_end_to_end(write_manifest, workdir: Path) -> None:
    path = write_manifest({"sweep": {"active.strategy": ["random", "uncertainty", "coreset", "ceal"]}})
    res = runner.invoke(app, ["cycle", str(path), "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["cycle", str(path)])
    assert res.exit_code == 0 and "nothing to do" in res.output
    # exactly as a user types it: no run directory -> every run under ./runs
    res = runner.invoke(app, ["report", "--format", "markdown", "--long", "--plot", "curves.png"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.split("\n\n")[0].splitlines() if line.startswith("| tiny")]
    assert len(lines) == 4 * 3  # 4 strategies x 3 cycles
    assert "| tiny | coreset | plain | 2 | 30 |" in res.output and "± " in res.output
    assert (workdir / "curves.png").stat().st_size > 10_000
    rows = json.loads(runner.invoke(app, ["report", "runs/tiny", "--format", "json"]).output)["rows"]
    assert {r["repetitions"] for r in rows} == {2}
    assert np.mean([r["accuracy_mean"] for r in rows]) > 15.0  # chance is 10%
    csv_out = runner.invoke(app, ["report", "runs/tiny", "-f", "csv"]).output
    assert csv_out.splitlines()[0].startswith("table,run,setting,strategy,variant,cycle,n_labeled")
    res = runner.invoke(app, ["select", str(path), "--task", "4", "--export", "out"])
    assert res.exit_code == 0 and "oracle is simulated (active.oracle)" in res.output, res.output
    assert "alctl label" not in res.output
    exported = (workdir / "out" / "to_label.csv").read_text().splitlines()
    assert exported[0] == "sample_id,path,score,top1,p1,top2,p2,top3,p3,label" and len(exported) == 11
    assert (workdir / "out" / "contact_sheet.png").stat().st_size > 1000
    # exporting again over an unfilled sheet is fine; over a sheet a person has started filling in, it is refused
    assert runner.invoke(app, ["select", str(path), "--task", "4", "--export", "out"]).exit_code == 0
    filled = "\n".join([exported[0], exported[1] + "3", *exported[2:]]) + "\n"
    (workdir / "out" / "to_label.csv").write_text(filled)
    res = runner.invoke(app, ["select", str(path), "--task", "4", "--export", "out"])
    assert res.exit_code == 2 and "already holds 1 filled-in label" in res.output and "alctl label" in res.output
    assert (workdir / "out" / "to_label.csv").read_text() == filled
    # the importer's reading: a BOM, a capitalised header, the label column moved first
    header = exported[0].split(",")
    moved = ["\ufeff" + ",".join(["Label"] + header[:-1])] + ["2," + line[:-1] for line in exported[1:3]]
    (workdir / "out" / "to_label.csv").write_text("\n".join(moved) + "\n", encoding="utf-8")
    res = runner.invoke(app, ["select", str(path), "--task", "4", "--export", "out"])
    assert res.exit_code == 2 and "already holds 2 filled-in label" in res.output, res.output
    res = runner.invoke(app, ["select", str(path), "--task", "4", "--export", str(path)])
    assert res.exit_code == 2 and "is a file; give a directory" in res.output, res.output


def test_console_script_help() -> None:
    res = subprocess.run([sys.executable, "-m", "alctl.cli", "--help"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "cycle" in res.stdout and "report" in res.stdout
    res = subprocess.run([sys.executable, "-m", "alctl.cli"], capture_output=True, text=True, check=False)
    assert res.returncode == 2 and "Usage: alctl" in res.stdout and "cycle" in res.stdout


@pytest.mark.parametrize(("args", "expected"), [
    (["cycle", "m.yaml", "--task", "abc"], "error: Invalid value for '--task' / '-t':"),
    (["cycle", "m.yaml", "--cycles", "0"], "error: Invalid value for '--cycles' / '-n':"),
    (["report", "-f", "html"], "error: Invalid value for '--format' / '-f':"),
    (["cycle", "--bogus", "m.yaml"], "error: No such option: --bogus"),
    (["select"], "error: Missing argument 'manifest'."),
    (["label", "m.yaml", "--project", "x"], "error: Invalid value for '--project':"),
    (["select", "m.yaml", "--format", "xml"], "error: Invalid value for '--format' / '-f':"),
])
def test_usage_mistakes_are_one_line_and_exit_2(args: list[str], expected: str) -> None:
    res = subprocess.run([sys.executable, "-m", "alctl.cli", *args], capture_output=True, text=True, check=False)
    assert res.returncode == 2 and res.stdout == "", res.stdout + res.stderr
    assert res.stderr.startswith(expected) and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.rstrip().endswith(f"(see `alctl {args[0]} --help`)")


# ---------------------------------------------------------------- validate: grid, plan and estimates

OPTIONS = "manifests/mnist5k-options.yaml"  # shipped; extends mnist5k-semi.yaml


@pytest.fixture
def options(workdir: Path) -> str:
    """The shipped mnist5k-options manifest and its base, copied into the working directory; its path as typed."""
    shipped = Path(__file__).resolve().parents[1] / "manifests"
    (workdir / "manifests").mkdir()
    for name in ("mnist5k-options.yaml", "mnist5k-semi.yaml"):
        (workdir / "manifests" / name).write_text((shipped / name).read_text())
    return OPTIONS


def flat(text: str) -> str:
    """Console output with rich's line wrapping undone (runs of whitespace as one space)."""
    return " ".join(text.split())


def per_cycle(values: list[int]) -> str:
    """How a plan line shows per-cycle counts: one number when they are equal, else 'a / b / c'."""
    return f"{values[0]:,}" if len(set(values)) == 1 else " / ".join(f"{v:,}" for v in values)


def test_validate_shows_the_grid_less_its_exclusions_and_the_plan(options: str, workdir: Path) -> None:
    res = runner.invoke(app, ["validate", options])
    assert res.exit_code == 0, res.output
    out = flat(res.output)
    assert out.startswith("manifests/mnist5k-options.yaml: valid; run directory runs/mnist5k-options; hash ")
    assert "; 18 tasks grid:" in out
    assert ("grid: active.strategy (1) x model.l2_features (2) x semi.method (2) x semi.class_weights (2) = 8 points,"
            " 2 left out by sweep.exclude -> 6 x 3 repetitions = 18 tasks") in out
    assert "left out: semi.method=none, semi.class_weights=False" in out
    # one plan line per point (3 repetitions each) with alctl.plan's counts; the plain ones never propagate
    from alctl import config as mf
    from alctl import plan

    run = plan.run_cost(mf.load(options))
    assert run is not None
    for first in range(0, 18, 3):
        cycles = run.tasks[first].cycles
        steps, train = (per_cycle([getattr(c, name) for c in cycles]) for name in ("steps", "train"))
        assert f"tasks {first}-{first + 2}: 3 cycles; per cycle {steps} steps, images: train {train}," in out
    assert out.count("propagations 0;") + out.count("propagations 0 ") == 2
    steps = sum(t.steps for t in run.tasks)
    assert f"run: 18 tasks, {steps:,} optimizer steps, {run.train:,} training images" in out
    assert "pre-training's share 0.0%" in out
    assert "time: give --images-per-second" in out and "h per task" not in out
    assert not (workdir / "runs").exists()  # validating writes nothing


def test_validate_estimates_hours_from_a_throughput(options: str) -> None:
    res = runner.invoke(app, ["validate", options, "--images-per-second", "100"])
    assert res.exit_code == 0, res.output
    out = flat(res.output)
    assert out.count("h per task") == 6
    assert "estimate at 100 training and 300 forward images/s: longest task" in out
    assert "whole run" in out and "time: give" not in out
    res = runner.invoke(app, ["validate", options, "--images-per-second", "100",
                              "--inference-images-per-second", "1000"])
    assert res.exit_code == 0 and "estimate at 100 training and 1,000 forward images/s" in flat(res.output)


@pytest.mark.parametrize(("args", "expected"), [
    (["--images-per-second", "0"], "error: --images-per-second: 0.0 must be positive\n"),
    (["--images-per-second", "-5"], "error: --images-per-second: -5.0 must be positive\n"),
    (["--images-per-second", "10", "--inference-images-per-second", "0"],
     "error: --inference-images-per-second: 0.0 must be positive\n"),
])
def test_validate_refuses_a_throughput_that_is_not_positive(options: str, args: list[str], expected: str) -> None:
    res = runner.invoke(app, ["validate", options, *args])
    assert res.exit_code == 2 and res.output == expected


def test_bad_sweep_exclude_exits_2_with_one_line(workdir: Path) -> None:
    path = workdir / "m.yaml"
    path.write_text("dataset: {name: digits}\nsweep:\n  active.strategy: [random, coreset]\n"
                    "  exclude:\n    - {active.strategy: ceal}\n")
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 2
    assert res.output == ("error: sweep.exclude[0].active.strategy: 'ceal' is not one of the swept values"
                          " ['random', 'coreset']\n")


def test_validate_a_manifest_that_extends_another_prints_its_own_run(write_manifest, workdir: Path) -> None:
    write_manifest({"name": "base-run"}, name="base.yaml")
    (workdir / "exp").mkdir()
    child = workdir / "exp" / "child.yaml"
    child.write_text("extends: ../base.yaml\nrepetitions: 1\nsweep:\n  active.strategy: [random, jlp]\n")
    res = runner.invoke(app, ["validate", str(child)])
    assert res.exit_code == 0, res.output
    out = flat(res.output)
    assert "run directory runs/child;" in out and "runs/base-run" not in out
    assert "= 2 points -> 2 x 1 repetitions = 2 tasks" in out
    (workdir / "exp" / "orphan.yaml").write_text("extends: missing.yaml\n")
    res = runner.invoke(app, ["validate", str(workdir / "exp" / "orphan.yaml")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "missing.yaml not found" in res.output


def test_validate_counts_a_shared_deepcluster_encoder_once(write_manifest) -> None:
    path = write_manifest({"pretrain": {"method": "deepcluster", "epochs": 3},
                           "sweep": {"active.strategy": ["random", "uncertainty"]}})
    res = runner.invoke(app, ["validate", str(path), "--images-per-second", "1000"])
    assert res.exit_code == 0, res.output
    out = flat(res.output)
    assert "DeepCluster encoder 1 of 1 (4 tasks): 3 epochs," in out and "encoder 2" not in out
    assert "(its DeepCluster included where it has one)" in out


def test_validate_image_folder_says_the_plan_waits_for_the_images(workdir: Path) -> None:
    path = workdir / "folder.yaml"
    path.write_text("dataset: {name: imagefolder, pool: pool, image_size: 32, classes: [a, b]}\n"
                    "active: {oracle: human, initial: 2, budget: 2, cycles: 2}\nrepetitions: 1\n")
    res = runner.invoke(app, ["validate", str(path), "--images-per-second", "100"])
    assert res.exit_code == 0, res.output
    out = flat(res.output)
    assert "plan: the pool size of an image folder is known once it is read" in out
    assert "estimate at" not in out and "h per task" not in out
