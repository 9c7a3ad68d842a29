"""Aggregation over repetitions (mean ± std per run / strategy / variant / cycle) and rendering: markdown, csv, json, png."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from alctl import store
from alctl.errors import UserError
from alctl.strategies.registry import NAMES as STRATEGY_NAMES

_REP = re.compile(r"/?rep=\d+$")


@dataclass(frozen=True)
class Row:
    """One aggregated point: a setting at one cycle over its repetitions."""

    run: str
    setting: str  # task key without the repetition
    strategy: str
    variant: str
    cycle: int
    n_labeled: int
    accuracy_mean: float  # percent
    accuracy_std: float  # percent, sample std (0 for a single repetition)
    repetitions: int


@dataclass(frozen=True)
class TaskStatus:
    """How far one planned task of a run got."""

    run: str
    index: int
    key: str
    state: str  # finished | running | stopped | not started
    cycles_done: int
    cycles_total: int
    detail: str = ""


def task_statuses(run: Path) -> list[TaskStatus] | None:
    """Every task the run's manifest plans, with its state; None when the run has no readable manifest."""
    from alctl import manifest as mf
    from alctl.errors import ManifestError

    path = run / "manifest.yaml"
    try:
        m = mf.load(path)
    except ManifestError:
        return None
    out = []
    for t in mf.tasks(m):
        tdir = run / "tasks" / t.key
        metrics = store.read_table(tdir / "metrics.parquet", "metrics")
        done = len(np.unique(metrics["cycle"].to_numpy()))
        total = t.config.active.cycles
        lock = store.Lock(tdir / ".lock", t.key)
        owner = lock.owner() if lock.path.is_file() else None
        if done >= total:
            state, detail = "finished", ""
        elif owner is not None and not lock.is_stale(owner):
            state, detail = "running", f"process {owner.get('pid')} on {owner.get('host')}"
        elif tdir.is_dir():
            state, detail = "stopped", "failed, preempted or waiting for labels; rerun `alctl cycle` to resume"
        else:
            state, detail = "not started", ""
        out.append(TaskStatus(run.name, t.index, t.key, state, done, total, detail))
    return out


def find_runs(root: Path = Path("runs")) -> list[Path]:
    """Every run directory under root (a directory with tasks/)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "tasks").is_dir())


def aggregate(run_dirs: list[Path], finished_only: bool = True) -> list[Row]:
    """Mean ± std of test accuracy over repetitions for each run, setting and cycle (finished tasks only, when the
    run's manifest tells which tasks are finished)."""
    rows: list[Row] = []
    for run in run_dirs:
        t = store.read_metrics_dataset(run)
        statuses = task_statuses(run) if finished_only else None
        if statuses is not None and t.num_rows:
            done = {st.key for st in statuses if st.state == "finished"}
            t = t.filter(pa.array(np.isin(np.array(t["task_key"].to_pylist(), dtype=object), list(done))))
        if t.num_rows == 0:
            continue
        keys = np.array([_REP.sub("", k) for k in t["task_key"].to_pylist()], dtype=object)
        strategy = np.array(t["strategy"].to_pylist(), dtype=object)
        variant = np.array(t["variant"].to_pylist(), dtype=object)
        cycle = t["cycle"].to_numpy()
        acc = t["accuracy"].to_numpy() * 100.0
        labels = t["n_labeled"].to_numpy()
        for setting in sorted(set(keys), key=_setting_order):
            sm = keys == setting
            for c in np.unique(cycle[sm]):
                m = sm & (cycle == c)
                a = acc[m][~np.isnan(acc[m])]
                rows.append(
                    Row(run=run.name, setting=setting, strategy=str(strategy[m][0]), variant=str(variant[m][0]),
                        cycle=int(c), n_labeled=int(np.round(labels[m].mean())),
                        accuracy_mean=float(a.mean()) if len(a) else float("nan"),
                        accuracy_std=float(a.std(ddof=1)) if len(a) > 1 else 0.0, repetitions=int(m.sum()))
                )
    return rows


_VARIANT_ORDER = {"plain": 0, "+PRE": 1, "+SEMI": 2, "+PRE+SEMI": 3}
_STRATEGY_ORDER = {name: i for i, name in enumerate(STRATEGY_NAMES)}


def _setting_order(setting: str) -> tuple:
    """Sort settings as the paper does: strategy, then variant (plain, +PRE, +SEMI, +PRE+SEMI), then the rest."""
    parts = dict(p.split("=", 1) for p in setting.split("/") if "=" in p)
    pre = parts.get("pretrain", "none") != "none"
    semi = parts.get("semi", "none") != "none"
    return (_STRATEGY_ORDER.get(parts.get("strategy", ""), len(_STRATEGY_ORDER)), semi, pre, setting)


def render_markdown(rows: list[Row]) -> str:
    """A markdown table, one line per setting and cycle."""
    out = ["| run | strategy | variant | cycle | labels | accuracy (%) | reps |", "|---|---|---|---:|---:|---|---:|"]
    for r in rows:
        extra = _extra(r)
        acc = "n/a (no test set)" if np.isnan(r.accuracy_mean) else f"{r.accuracy_mean:.2f} ± {r.accuracy_std:.2f}"
        out.append(f"| {r.run} | {r.strategy}{extra} | {r.variant} | {r.cycle} | {r.n_labeled} | {acc} | {r.repetitions} |")
    best = winners(rows)
    if best:
        out += ["", "Best variant at each number of labels (highest mean accuracy):", "",
                "| run | strategy | cycle | labels | best variant | accuracy (%) | ahead of | by (points) |",
                "|---|---|---:|---:|---|---:|---|---:|"]
        out += [f"| {w.run} | {w.strategy} | {w.cycle} | {w.n_labeled} | {w.variant} | {w.accuracy_mean:.2f} |"
                f" {w.runner_up} | {w.margin:.2f} |" for w in best]
    return "\n".join(out)


@dataclass(frozen=True)
class Winner:
    """The variant with the highest mean accuracy among those of one strategy at one cycle."""

    run: str
    strategy: str  # with the other swept parameters, as in the table
    cycle: int
    n_labeled: int
    variant: str
    accuracy_mean: float  # percent
    margin: float  # points above the next best variant
    runner_up: str


def winners(rows: list[Row]) -> list[Winner]:
    """For every run, strategy (and other swept parameters) and cycle that has more than one variant, the variant
    with the highest mean accuracy and its margin over the next one."""
    groups: dict[tuple[str, str, int], list[Row]] = {}
    for r in rows:
        if not np.isnan(r.accuracy_mean):
            groups.setdefault((r.run, f"{r.strategy}{_extra(r)}", r.cycle), []).append(r)
    out = []
    for (run, strategy, cycle), group in groups.items():
        if len({r.variant for r in group}) < 2:
            continue
        best, second = sorted(group, key=lambda r: (-r.accuracy_mean, _VARIANT_ORDER.get(r.variant, 9)))[:2]
        out.append(Winner(run, strategy, cycle, best.n_labeled, best.variant, best.accuracy_mean,
                          best.accuracy_mean - second.accuracy_mean, second.variant))
    return out


def _extra(r: Row) -> str:
    """Swept parameters other than strategy / variant, e.g. ' (budget=100)'."""
    parts = [p for p in r.setting.split("/") if p.split("=", 1)[0] not in ("strategy", "semi", "pretrain")]
    return f" ({', '.join(parts)})" if parts else ""


def render_csv(rows: list[Row]) -> str:
    """CSV with a header line."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(Row.__dataclass_fields__))
    writer.writeheader()
    for r in rows:
        writer.writerow(asdict(r))
    return buf.getvalue()


def render_json(rows: list[Row]) -> str:
    """JSON list of rows."""
    return json.dumps([asdict(r) for r in rows], indent=2)


def plot(rows: list[Row], path: Path) -> None:
    """Learning curves (accuracy vs labels) with ±std bands, one panel per run, like the paper's figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted({r.run for r in rows})
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False)
    for ax, run in zip(axes[0], runs):
        settings = sorted({r.setting for r in rows if r.run == run}, key=_setting_order)
        for s in settings:
            pts = sorted((r for r in rows if r.run == run and r.setting == s), key=lambda r: r.cycle)
            x = np.array([p.n_labeled for p in pts])
            y = np.array([p.accuracy_mean for p in pts])
            e = np.array([p.accuracy_std for p in pts])
            style = "-" if pts[0].variant == "plain" else "--" if "SEMI" in pts[0].variant else "-."
            (line,) = ax.plot(x, y, style, marker="o", label=f"{pts[0].strategy}{_extra(pts[0])} {pts[0].variant}")
            ax.fill_between(x, y - e, y + e, alpha=0.15, color=line.get_color())
        ax.set_title(run)
        ax.set_xlabel("labeled images")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    suffix = path.suffix.lower().lstrip(".")
    fig.savefig(buf, dpi=120, format=suffix if suffix in fig.canvas.get_supported_filetypes() else "png")
    plt.close(fig)
    store.atomic_write_bytes(path, buf.getvalue())  # exactly at `path`: its suffix's format (.pdf, .svg, ...), else PNG


def unfinished_lines(run_dirs: list[Path]) -> list[str]:
    """One line per planned task that is not finished (running, stopped, not started)."""
    lines = []
    for run in run_dirs:
        for st in task_statuses(run) or []:
            if st.state != "finished":
                detail = f" ({st.detail})" if st.detail else ""
                lines.append(f"{st.run} task {st.index} {st.key}: {st.state}, {st.cycles_done}/{st.cycles_total}"
                             f" cycles{detail}")
    return lines


def report(run_dir: Path | None, fmt: str, plot_path: Path | None = None) -> tuple[str, list[str]]:
    """(report text over one run directory, or every run under ./runs when None; lines naming unfinished tasks)."""
    if plot_path is not None and plot_path.is_dir():
        raise UserError(f"--plot: {plot_path} is a folder; give a file name such as {plot_path / 'curves.png'}")
    if run_dir is None:
        runs = find_runs(Path("runs"))
        if not runs:
            raise UserError("no runs under ./runs; run `alctl cycle MANIFEST.yaml` first or pass a run directory")
    else:
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: run directory not found")
        runs = [run_dir] if (run_dir / "tasks").is_dir() else find_runs(run_dir)
        if not runs:
            raise UserError(f"{run_dir}: no tasks/ inside; is this a run directory (runs/<name>)?")
    rows = aggregate(runs)
    missing = unfinished_lines(runs)
    if not rows:
        detail = f"; {len(missing)} tasks not finished" if missing else ""
        raise UserError(f"{', '.join(map(str, runs))}: no finished task yet{detail}")
    if plot_path is not None:
        plot(rows, plot_path)
    renderers = {"markdown": render_markdown, "csv": render_csv, "json": render_json}
    return renderers[fmt](rows), missing
