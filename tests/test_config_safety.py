"""Manifests, run directories and tracking URIs that cannot be turned against the person running alctl: alias
bombs, path components from sweep values, `extends:` outside the manifest's folder, passwords in tracking URIs,
control characters in names, oversized grids, two manifests sharing a run name, refused runs that write nothing,
and non-finite throughputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from alctl import config as mf
from alctl.cli import app
from alctl.errors import UserError

runner = CliRunner()

TINY_RUN: dict[str, Any] = {
    "name": "tiny",
    "repetitions": 1,
    "dataset": {"name": "digits"},
    "model": {"width": 0.125},
    "train": {"epochs": 1, "batch_size": 16, "min_steps": 2, "lr": 0.05, "rampdown_epochs": 2, "device": "cpu"},
    "active": {"initial": 10, "budget": 10, "cycles": 1, "strategy": "random"},
}


def _write(path: Path, data: dict[str, Any] | str) -> Path:
    """Write a manifest (a mapping as YAML, or text as is), creating its folder; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _files(root: Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _error_lines(output: str) -> list[str]:
    """The `error:` lines of a command's output."""
    return [line for line in output.splitlines() if line.startswith("error:")]


# ---------------------------------------------------------------- YAML alias bombs

# The classic "billion laughs": nine levels of nine aliases, 9^9 = 387,420,489 strings once expanded, in ~500 bytes.
_LAUGHS = ", ".join(["&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                    + [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)])

# Runs `alctl validate` in a child process allowed 2 GiB more address space than its imports took, and prints how
# it ended: the code before the fix expands the alias tree into its error line (minutes, tens of MB, MemoryError).
_CHILD = """
import json, re, resource, sys, time
from typer.testing import CliRunner
from alctl.cli import app
import alctl.engine.validation
size = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (2 << 30), size + (2 << 30)))
t0 = time.perf_counter()
res = CliRunner().invoke(app, ["validate", sys.argv[1]])
print(json.dumps({"code": res.exit_code, "head": res.output[:2000], "chars": len(res.output),
                  "seconds": time.perf_counter() - t0}))
"""


@pytest.mark.parametrize("text", [f"train: {{epochs: [{_LAUGHS}]}}\n", f"lol: [{_LAUGHS}]\n"],
                         ids=["typed-field", "unknown-key"])
def test_an_alias_bomb_is_refused_in_one_short_line_at_once(workdir: Path, text: str) -> None:
    path = _write(workdir / "bomb.yaml", text)
    assert len(text) < 600
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=90,
                              cwd=workdir, env={**os.environ, "COLUMNS": "1000"})
    except subprocess.TimeoutExpired:
        pytest.fail("alctl validate still ran after 90 s")
    assert done.returncode == 0, done.stderr[-2000:]  # the child itself ran to its end (no MemoryError)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 2
    assert result["chars"] < 300, result["head"][:300]
    (line,) = result["head"].strip().splitlines()
    assert line.startswith(f"error: {path}:") and "alias" in line
    assert result["seconds"] < 5


def test_a_huge_value_in_a_typed_field_is_echoed_in_at_most_80_characters(workdir: Path) -> None:
    path = _write(workdir / "big.yaml", {"train": {"epochs": ["x" * 100_000]},
                                         "active": {"strategy": "\x1b[31m" + "y" * 5000}})
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 2
    lines = _error_lines(res.output)
    assert len(lines) == 2 and all(len(line) < 300 for line in lines), lines
    assert "\x1b" not in res.output


# ---------------------------------------------------------------- sweep values as path components


def test_a_swept_value_with_dotdot_keeps_the_task_inside_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "w"
    work.mkdir()
    monkeypatch.chdir(work)
    # w/runs/tiny/tasks/strategy=random/semi=none/pretrain=none/root=.. and 8 x .. lead to tmp_path/escaped
    value = "../" * 9 + "escaped"
    path = _write(work / "tiny.yaml", {**TINY_RUN, "sweep": {"dataset.root": [value]}})
    res = runner.invoke(app, ["cycle", str(path), "--quiet"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "escaped").exists()
    outside = [p for p in tmp_path.rglob("*") if not p.is_relative_to(work / "runs/tiny/tasks")
               and p not in (work, path, work / "runs", work / "runs/tiny")
               and not (p.parent == work / "runs/tiny" and p.name.startswith("manifest."))]
    assert outside == []
    (task,) = mf.tasks(mf.load(path))
    assert "/" not in task.key.split("pretrain=none/", 1)[1].removesuffix("/rep=0")
    assert (work / "runs/tiny/tasks" / task.key / "metrics.parquet").is_file()


def test_a_task_key_leading_out_of_the_run_is_refused() -> None:
    from alctl.engine.workspace import task_dir

    m = mf.parse(TINY_RUN)
    (task,) = mf.tasks(m)
    bad = mf.Task(index=0, key="strategy=random/../../../elsewhere/rep=0", rep=0, config=task.config, point={})
    with pytest.raises(UserError, match="does not name a folder inside"):
        task_dir(bad)


# ---------------------------------------------------------------- extends


SECRET = "api_token: hunter2-top-secret\nother_key: value-from-the-file\n"


def test_extends_outside_the_manifests_folder_is_refused_without_reading_it(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The base may lie in the manifest's folder tree or the current directory's (the project); not elsewhere."""
    monkeypatch.delenv("ALCTL_EXTENDS_ANYWHERE", raising=False)
    secret = _write(tmp_path / "private/secret.yaml", SECRET)
    project = tmp_path / "project"
    (project / "exp").mkdir(parents=True)
    monkeypatch.chdir(project)
    (project / "exp/link.yaml").symlink_to(secret)
    for ref in ("../../private/secret.yaml", str(secret), "link.yaml"):
        path = _write(project / "exp/m.yaml", f"extends: {ref}\nseed: 1\n")
        res = runner.invoke(app, ["validate", str(path)])
        assert res.exit_code == 2, res.output
        (line,) = _error_lines(res.output)
        assert "outside" in line and "ALCTL_EXTENDS_ANYWHERE=1" in line
        assert "hunter2" not in res.output and "api_token" not in res.output
    _write(project / "bases/base.yaml", "seed: 3\n")  # beside exp/, in the project: allowed
    assert mf.load(_write(project / "exp/ok.yaml", "extends: ../bases/base.yaml\n")).seed == 3
    # the person running alctl may allow it; the file's keys and values are still never shown
    monkeypatch.setenv("ALCTL_EXTENDS_ANYWHERE", "1")
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 2
    assert "hunter2" not in res.output and "api_token" not in res.output and "other_key" not in res.output
    assert "secret.yaml" in res.output


@pytest.mark.parametrize("base", [
    "train: {device: hunter2-top-secret}\n",
    "scheduler: {time: hunter2-top-secret}\n",
    "sweep: {hunter2-top-secret: [1, 2]}\n",
    "sweep: {train.device: [cpu, hunter2-top-secret]}\n",
    "train: {epochs: [hunter2-top-secret]}\n",
])
def test_errors_about_an_extended_file_never_show_its_content(workdir: Path, base: str) -> None:
    _write(workdir / "base.yaml", base)
    path = _write(workdir / "m.yaml", "extends: base.yaml\nseed: 1\n")
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 2, res.output
    assert "hunter2" not in res.output
    assert _error_lines(res.output) and all("base.yaml" in line for line in _error_lines(res.output))


# ---------------------------------------------------------------- tracking URI passwords


def test_a_tracking_password_is_given_to_mlflow_and_never_shown_or_stored(workdir: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow_tracking = pytest.importorskip("mlflow.tracking")
    real_client = mlflow_tracking.MlflowClient
    given: list[str] = []

    def client(tracking_uri: str) -> Any:  # the real client, on a local store, remembering the URI it was given
        given.append(tracking_uri)
        return real_client(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")

    monkeypatch.setattr(mlflow_tracking, "MlflowClient", client)
    uri = "http://alice:s3cr3t-pw@127.0.0.1:5000"
    path = _write(workdir / "tiny.yaml", {**TINY_RUN, "tracking": {"mlflow": uri}})
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 0, res.output
    assert "s3cr3t" not in res.output and "alice:***@127.0.0.1:5000" in res.output
    res = runner.invoke(app, ["cycle", str(path)])
    assert res.exit_code == 0, res.output
    assert given and set(given) == {uri}
    assert "s3cr3t" not in res.output
    stored = _files(workdir / "runs")
    assert {"tiny/manifest.yaml", "tiny/tasks/strategy=random/semi=none/pretrain=none/rep=0/task.yaml",
            "tiny/tasks/strategy=random/semi=none/pretrain=none/rep=0/mlflow.json"} <= set(stored)
    assert [name for name, data in stored.items() if b"s3cr3t" in data] == []
    # the task hash is that of the same manifest without tracking
    plain = mf.tasks(mf.parse({**TINY_RUN}))[0]
    from alctl.engine.workspace import task_config_hash
    assert stored["tiny/tasks/strategy=random/semi=none/pretrain=none/rep=0/task.sha256"].decode().strip() == \
        task_config_hash(plain.config)


# ---------------------------------------------------------------- names


def test_a_control_character_in_the_name_is_one_line_exit_2(workdir: Path) -> None:
    for name in ("run\\0x", "run\\x1b[2Jx"):
        path = _write(workdir / "tiny.yaml", yaml.safe_dump(TINY_RUN).replace("name: tiny", f'name: "{name}"'))
        res = runner.invoke(app, ["cycle", str(path)])
        assert res.exit_code == 2, res.output
        (line,) = _error_lines(res.output)
        assert line.startswith("error: name:") and "control characters" in line
        assert "\x1b" not in res.output and "Traceback" not in res.output
        assert not (workdir / "runs").exists()


# ---------------------------------------------------------------- grid size


def test_a_grid_over_the_task_cap_is_refused_before_it_is_expanded(workdir: Path) -> None:
    sweep = {"train.lr": [0.001 * (i + 1) for i in range(101)], "seed": list(range(100))}
    path = _write(workdir / "grid.yaml", {**TINY_RUN, "sweep": sweep})
    assert path.stat().st_size < 8000
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 2, res.output[-500:]
    (line,) = _error_lines(res.output)
    assert "10,100 tasks" in line and "10,000" in line
    path = _write(workdir / "reps.yaml", {**TINY_RUN, "repetitions": 20_000})
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 2 and "20,000 tasks" in res.output


# ---------------------------------------------------------------- two manifests, one run name


def test_a_manifest_sharing_a_run_name_cannot_hide_the_others_results(workdir: Path) -> None:
    first = _write(workdir / "a.yaml", TINY_RUN)
    assert runner.invoke(app, ["cycle", str(first), "--quiet"]).exit_code == 0
    run = workdir / "runs/tiny"
    before = _files(run)
    report = runner.invoke(app, ["report", str(run), "--format", "csv"])
    assert report.exit_code == 0 and "strategy=random" in report.output
    other = _write(workdir / "b.yaml", {**TINY_RUN, "active": {**TINY_RUN["active"], "strategy": "margin"}})
    res = runner.invoke(app, ["cycle", str(other), "--quiet"])
    assert res.exit_code == 2, res.output
    (line,) = _error_lines(res.output)
    assert "strategy=random/semi=none/pretrain=none/rep=0" in line and "name:" in line
    assert _files(run) == before
    assert runner.invoke(app, ["report", str(run), "--format", "csv"]).output == report.output
    # the same manifest, edited to sweep one more value, still runs in its run directory
    _write(first, {**TINY_RUN, "sweep": {"active.strategy": ["random", "margin"]}})
    res = runner.invoke(app, ["cycle", str(first), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "strategy=margin" in runner.invoke(app, ["report", str(run), "--format", "csv"]).output


# ---------------------------------------------------------------- refused runs write nothing


def test_a_refused_pretrain_writes_nothing(workdir: Path) -> None:
    """The second dataset of the sweep is missing: exit 2 before the first encoder is trained or anything written."""
    path = _write(workdir / "pre.yaml", {**TINY_RUN, "pretrain": {"method": "deepcluster", "epochs": 1},
                                         "sweep": {"dataset.name": ["digits", "mnist"]}})
    res = runner.invoke(app, ["pretrain", str(path), "--quiet"])
    assert res.exit_code == 2, res.output
    (line,) = _error_lines(res.output)
    assert "MNIST" in line
    assert not (workdir / "runs").exists()


# ---------------------------------------------------------------- throughputs


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("option", ["--images-per-second", "--inference-images-per-second"])
def test_a_non_finite_throughput_is_refused(workdir: Path, option: str, value: str) -> None:
    path = _write(workdir / "tiny.yaml", TINY_RUN)
    args = ["validate", str(path), option, value] + ([] if option == "--images-per-second"
                                                      else ["--images-per-second", "100"])
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    (line,) = _error_lines(res.output)
    assert line.startswith(f"error: {option}:")


def test_loader_counts_aliases_without_expanding_them() -> None:
    node = yaml.compose(f"x: [{_LAUGHS}]\n", Loader=yaml.SafeLoader)
    assert mf.expanded_nodes(node, limit=10**12) > 9**9
    with pytest.raises(yaml.YAMLError, match="refers to a section that contains it"):
        yaml.load("a: &a [1, *a]\n", Loader=mf._UniqueKeyLoader)  # noqa: S506
    text = textwrap.dedent("""\
        train: &t {epochs: 3, lr: 0.1}
        sweep: {train.lr: [0.1, 0.2]}
    """)
    assert yaml.load(text, Loader=mf._UniqueKeyLoader)["train"]["epochs"] == 3  # noqa: S506
