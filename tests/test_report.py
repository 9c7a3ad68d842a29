"""report over a shared run directory where some tasks finished, one is running, one failed and one never started."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from alctl import config as mf
from alctl.console import silent
from alctl.engine import commands
from alctl.cli import app
from alctl.report import task_statuses

runner = CliRunner()


def test_report_lists_unfinished_tasks_and_reports_the_finished_ones(write_manifest, workdir: Path) -> None:
    path = write_manifest({"repetitions": 2, "train": {"epochs": 2, "rampdown_epochs": 3}, "active": {"cycles": 2},
                           "sweep": {"active.strategy": ["random", "uncertainty"]}})
    ui = silent()
    commands.cycle_command(path, 0, None, ui)  # finished
    commands.cycle_command(path, 1, None, ui)  # finished
    commands.cycle_command(path, 2, 1, ui)  # stopped after one cycle (failed / preempted)
    m = mf.load(path)
    tasks = mf.tasks(m)
    running = mf.run_dir(m) / "tasks" / tasks[3].key
    commands.cycle_command(path, 3, 1, ui)
    (running / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}))

    states = {s.index: s.state for s in task_statuses(mf.run_dir(m))}
    assert states == {0: "finished", 1: "finished", 2: "stopped", 3: "running"}

    res = runner.invoke(app, ["report", "runs/tiny", "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["rows"]
    assert {r["strategy"] for r in rows} == {"random"} and {r["repetitions"] for r in rows} == {2}
    assert "2 tasks not finished" in res.stderr
    assert f"task 2 {tasks[2].key}: stopped, 1/2 cycles" in res.stderr
    assert f"task 3 {tasks[3].key}: running, 1/2 cycles (process {os.getpid()}" in res.stderr

    # a task whose directory never appeared (another machine has not started it)
    for f in running.rglob("*"):
        if f.is_file():
            f.unlink()
    for d in sorted(running.rglob("*"), reverse=True):
        d.rmdir()
    running.rmdir()
    res = runner.invoke(app, ["report", "--format", "csv"])
    assert res.exit_code == 0 and f"task 3 {tasks[3].key}: not started, 0/2 cycles" in res.stderr
    assert res.stdout.splitlines()[0].startswith("table,run,setting,strategy")
    assert pq.read_table(mf.run_dir(m) / "tasks" / tasks[0].key / "metrics.parquet").num_rows == 2
    # --plot: a path without a suffix gets a PNG exactly there; a folder, or a file in the way, exit 2
    res = runner.invoke(app, ["report", "runs/tiny", "--plot", "curves"])
    assert res.exit_code == 0 and (workdir / "curves").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", res.output
    res = runner.invoke(app, ["report", "runs/tiny", "--plot", "curves.svg"])
    assert res.exit_code == 0 and b"<svg" in (workdir / "curves.svg").read_bytes()[:500], res.output
    res = runner.invoke(app, ["report", "runs/tiny", "--plot", "runs"])
    assert res.exit_code == 2 and "--plot: runs is a folder; give a file name such as runs/curves.png" in res.output
    res = runner.invoke(app, ["report", "runs/tiny", "--plot", "curves/x.png"])
    assert res.exit_code == 2 and "curves: is a file, but curves/x.png needs a folder there" in res.output


def test_output_that_is_a_file_exits_2_before_anything_is_written(write_manifest, workdir: Path) -> None:
    (workdir / "taken").write_text("a file")
    path = write_manifest({"output": "taken", "repetitions": 1, "active": {"cycles": 1}})
    res = runner.invoke(app, ["cycle", str(path)])
    assert res.exit_code == 2 and "taken: is a file, but taken/tiny/manifest.yaml needs a folder there" in res.output
    assert (workdir / "taken").read_text() == "a file"


def test_winners_name_the_best_variant_per_strategy_and_cycle() -> None:
    from alctl.report import Figures, Row, render_markdown, winners

    def row(variant: str, cycle: int, acc: float, strategy: str = "random") -> Row:
        return Row("r", f"strategy={strategy}/semi={variant}", strategy, variant, cycle, 10 * (cycle + 1), acc, 1.0, 3)

    rows = [row("plain", 0, 50.0), row("+PRE", 0, 55.5), row("+PRE+SEMI", 0, 61.0), row("plain", 1, 70.0),
            row("+SEMI", 1, 69.0), row("plain", 0, 40.0, "coreset")]
    best = {(w.strategy.split(" ")[0], w.cycle): w for w in winners(rows)}
    assert set(best) == {("random", 0), ("random", 1)}  # coreset has one variant only: no winner
    assert best["random", 0].variant == "+PRE+SEMI" and best["random", 0].runner_up == "+PRE"
    assert abs(best["random", 0].margin - 5.5) < 1e-9
    assert best["random", 1].variant == "plain" and best["random", 1].margin == 1.0
    assert "| +PRE+SEMI | 61.00 | +PRE | 5.50 |" in render_markdown(Figures(rows, winners=winners(rows)))
