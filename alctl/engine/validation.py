"""`alctl validate`: the resolved grid of a manifest, what it costs (steps, images, estimated hours), and how the
image folders of started tasks changed since their pools were written."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from alctl import config as mf
from alctl import plan, tracking
from alctl.engine.tables import TaskTables
from alctl.engine.workspace import dataset_for, task_dir
from alctl.engine.workspace import plan as task_plan
from alctl.safe_text import terminal


def _n(x: float) -> str:
    """An integer with thousands separators."""
    return f"{int(round(x)):,}"


def _per_cycle(values: list[int]) -> str:
    """Per-cycle values as 'a / b / c', or one number when they are all equal."""
    return _n(values[0]) if len(set(values)) == 1 else " / ".join(_n(v) for v in values)


def _hours(seconds: float) -> str:
    """Seconds as hours with a sensible precision."""
    h = seconds / 3600
    return f"{h:.2f} h" if h < 10 else f"{h:,.0f} h"


def grid_line(m: mf.Manifest, n_tasks: int) -> str:
    """'grid: a (3) x b (2) = 6 points, 1 left out by sweep.exclude -> 5 points x 2 repetitions = 10 tasks'."""
    axes = mf.sweep_axes(m)
    full = 1
    for values in axes.values():
        full *= len(values)
    points = len(mf.sweep_points(m))
    shape = " x ".join(f"{path} ({len(values)})" for path, values in axes.items()) or "no sweep"
    left_out = f", {full - points} left out by sweep.exclude" if full != points else ""
    return f"grid: {shape} = {full} point{'s' * (full != 1)}{left_out} -> {points} x {m.repetitions} repetitions = {n_tasks} tasks"


def pool_change_lines(tasks: list[mf.Task]) -> list[str]:
    """'[task i key] pool: ...' lines of the started image-folder tasks whose files were removed, renamed or added
    since their pool was written (other datasets' sample ids never change; unstarted tasks have no pool)."""
    lines = []
    for t in tasks:
        tables_dir = task_dir(t)
        if t.config.dataset.name != "imagefolder" or not (tables_dir / "pool.parquet").is_file():
            continue
        tables = TaskTables(tables_dir, dataset_for(t.config))
        tables.read_pool()
        if tables.changes is not None:
            lines += [terminal(f"[task {t.index} {t.key}] {line}") for line in tables.changes.lines()]
    return lines


def validate_command(manifest: str | Path, console: Console, images_per_second: float | None = None,
                     inference_per_second: float | None = None) -> None:
    """Check a manifest and print its header, grid, per-point task plan, DeepCluster's share and the run's totals."""
    plan.throughput(images_per_second, "--images-per-second")
    plan.throughput(inference_per_second, "--inference-images-per-second")
    m, tasks = task_plan(manifest)
    console.print(f"{manifest}: valid; run directory {mf.run_dir(m)}; hash {mf.manifest_hash(m)}; {len(tasks)} tasks")
    console.print(grid_line(m, len(tasks)))
    if m.tracking.mlflow is not None:
        missing = tracking.missing_packages(m.tracking.mlflow)
        note = "" if missing is None else f" (alctl cycle exits 2 here: {missing.removeprefix('tracking.mlflow: ')})"
        console.print(f"tracking: MLflow at {tracking.shown_uri(m.tracking.mlflow)}, experiment"
                      f" {tracking.experiment_name(m)}, one run per task{note}", markup=False)
    for entry in m.sweep.get(mf.EXCLUDE, []):
        console.print("  left out: " + ", ".join(f"{k}={v}" for k, v in entry.items()))
    cost = plan.run_cost(m)
    timed = images_per_second is not None and cost is not None
    table = Table(title="grid: one row per point, one task per repetition")
    for header in ("tasks", "key", "variant", "labels (initial + budget x selections)"):
        table.add_column(header, overflow="fold")
    by_point: dict[str, list[int]] = {}
    for t in tasks:
        by_point.setdefault(t.key.rsplit("/rep=", 1)[0], []).append(t.index)
    lines = []
    for key, indices in by_point.items():
        t = tasks[indices[0]]
        a, d = t.config.active, t.config.dataset
        labels = (f"the {d.labeled}/ tree + {a.budget} x {a.cycles - 1}" if d.name == "imagefolder" and d.labeled
                  else f"{a.initial} + {a.budget} x {a.cycles - 1} = {a.initial + a.budget * (a.cycles - 1)}")
        span = str(indices[0]) if len(indices) == 1 else f"{indices[0]}-{indices[-1]}"
        table.add_row(span, key, t.variant, labels)
        if cost is not None:
            tc = cost.tasks[t.index]
            hours = ""
            if timed:
                hours = f"; {_hours(plan.task_seconds(cost, t.index, images_per_second, inference_per_second))} per task"  # type: ignore[arg-type]
            lines.append(
                f"tasks {span}: {a.cycles} cycles; per cycle {_per_cycle([c.steps for c in tc.cycles])} steps,"
                f" images: train {_per_cycle([c.train for c in tc.cycles])}, features"
                f" {_per_cycle([c.features for c in tc.cycles])}, test {_per_cycle([c.evaluate for c in tc.cycles])};"
                f" propagations {_per_cycle([c.propagations for c in tc.cycles])}{hours}"
            )
    console.print(table)
    if lines:
        console.print("plan (per task; a / b / ... = cycle 0 / 1 / ...)" + (
            "; a +PRE task's hours include its DeepCluster, which the first such task trains and the others reuse:"
            if timed and cost is not None and cost.pretrains else ":"))
        for line in lines:
            console.print("  " + line)
    for line in pool_change_lines(tasks):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if cost is None:
        console.print("plan: the pool size of an image folder is known once it is read; steps and images not estimated")
        return
    for i, (key, p) in enumerate(cost.pretrains.items()):
        users = sum(1 for t in cost.tasks if t.pretrain_key == key)
        name = "SimCLR" if p.method == "simclr" else "DeepCluster"
        console.print(f"{name} encoder {i + 1} of {len(cost.pretrains)} ({users} tasks): {p.epochs} epochs,"
                      f" {_n(p.steps)} steps, {_n(p.train)} training images, {_n(p.features)} feature images")
    console.print(
        f"run: {len(cost.tasks)} tasks, {_n(sum(t.steps for t in cost.tasks) + sum(p.steps for p in cost.pretrains.values()))}"
        f" optimizer steps, {_n(cost.train)} training images, {_n(cost.inference)} feature and test images;"
        f" pre-training's share {100 * cost.pretrain_share:.1f}% (a training image counted as {plan.INFERENCE_SPEEDUP:g}"
        " forward passes)"
    )
    if timed:
        longest, total = plan.estimate(m, images_per_second, inference_per_second)  # type: ignore[arg-type,misc]
        fwd = inference_per_second or plan.INFERENCE_SPEEDUP * images_per_second  # type: ignore[operator]
        console.print(f"estimate at {images_per_second:,.0f} training and {fwd:,.0f} forward images/s: longest task"
                      f" {_hours(longest)} (its DeepCluster included where it has one), whole run {_hours(total)} on one"
                      " device; network passes only: k-means, kNN graphs, propagations and selections come on top")
    else:
        console.print("time: give --images-per-second (training throughput measured on the target device, e.g. a"
                      " cycle's train images above over its train seconds in metrics.parquet) for estimated hours")
