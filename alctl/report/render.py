"""Rendering a report: markdown tables, csv, json and learning-curve plots, and `report`, the command's body."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from alctl import store
from alctl.errors import UserError
from alctl.metrics import METRICS
from alctl.safe_text import terminal
from alctl.report.points import (Row, _extra, _present, _semi, _setting_order, _settings_by_run, _with, find_runs,
                                 read_points, task_statuses)
from alctl.report.figures import _METRIC_NAMES, TABLES, Figures, figures


def _span(values: list[int]) -> str:
    """'3' or '2–3'."""
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def _count(x: float) -> str:
    """A number of labels, rounded half up."""
    return f"{math.floor(x + 0.5):d}"


def _pivot(lead: list[str], tail: list[str], lines: list[tuple[list[str], dict[int, str], list[str]]]) -> list[str]:
    """A markdown table: lead columns, one column per number of labels (union over the lines; '' where a line has
    none), tail columns."""
    labels = sorted({n for _, cells, _ in lines for n in cells})
    out = ["| " + " | ".join([*lead, *map(str, labels), *tail]) + " |",
           "|" + "---|" * len(lead) + "---:|" * (len(labels) + len(tail))]
    for head, cells, rest in lines:
        out.append("| " + " | ".join([*head, *(cells.get(n, "") for n in labels), *rest]) + " |")
    return out


def _grouped(items: list, key: Callable[[object], object]) -> dict[object, list]:
    """Items grouped by key(item), in order of first appearance."""
    groups: dict[tuple, list] = {}
    for it in items:
        groups.setdefault(key(it), []).append(it)
    return groups


def _accuracy(mean: float, std: float) -> str:
    return "n/a" if np.isnan(mean) else f"{mean:.2f} ± {std:.2f}"


def _long_table(rows: list[Row], metric: str = "accuracy") -> list[str]:
    out = [f"| run | strategy | variant | cycle | labels | {_METRIC_NAMES[metric]} (%) | reps |",
           "|---|---|---|---:|---:|---|---:|"]
    for r in rows:
        acc = "n/a (no test set)" if np.isnan(r.accuracy_mean) else f"{r.accuracy_mean:.2f} ± {r.accuracy_std:.2f}"
        out.append(f"| {r.run} | {r.strategy}{_extra(r)} | {r.variant} | {r.cycle} | {r.n_labeled} | {acc} |"
                   f" {r.repetitions} |")
    return out


def _wide_table(rows: list[Row], metric: str = "accuracy") -> list[str]:
    out = [f"Test {_METRIC_NAMES[metric]} (%), mean ± std over repetitions; columns: number of labeled images:"]
    for run, group in _grouped(rows, lambda r: r.run).items():
        lines = []
        for setting_rows in _grouped(group, lambda r: r.setting).values():
            r0 = setting_rows[0]
            lines.append(([run, f"{r0.strategy}{_extra(r0)}", r0.variant],
                          {r.n_labeled: _accuracy(r.accuracy_mean, r.accuracy_std) for r in setting_rows},
                          [_span([r.repetitions for r in setting_rows])]))
        out += ["", *_pivot(["run", "strategy", "variant"], ["reps"], lines)]
    return out


def _pseudo_cell(r: Row) -> str:
    """'766 (90.0%)': the mean number of pseudo-labels and, when known, their mean accuracy."""
    if r.n_pseudo_mean is None:
        return ""
    correct = "" if r.pseudo_accuracy_mean is None else f" ({r.pseudo_accuracy_mean:.1f}%)"
    return f"{_count(r.n_pseudo_mean)}{correct}"


def _pseudo_table(rows: list[Row]) -> list[str]:
    """The pseudo-label section: a line per setting that trains on any pseudo-labels; empty when none does."""
    with_pseudo = {(r.run, r.setting) for r in rows if (r.n_pseudo_mean or 0) > 0}
    if not with_pseudo:
        return []
    out = ["", "Pseudo-labels: mean number of pseudo-labeled images trained on over repetitions (in brackets: mean %"
           " correct where the true labels are known; label propagation's over every propagated label); columns:"
           " number of labeled images:"]
    for run, group in _grouped([r for r in rows if (r.run, r.setting) in with_pseudo], lambda r: r.run).items():
        lines = []
        for setting_rows in _grouped(group, lambda r: r.setting).values():
            r0 = setting_rows[0]
            lines.append(([run, f"{r0.strategy}{_extra(r0)}", r0.variant],
                          {r.n_labeled: _pseudo_cell(r) for r in setting_rows}, []))
        out += ["", *_pivot(["run", "strategy", "variant"], [], lines)]
    return out


def render_markdown(figs: Figures, long: bool = False) -> str:
    """The accuracy table (wide: a line per strategy x variant and a column per number of labels; long=True: a
    line per setting and cycle), then the best variant, AUC, labels saved, paired differences and pseudo-labels."""
    out = _long_table(figs.rows, figs.metric) if long else _wide_table(figs.rows, figs.metric)
    if figs.winners:
        out += ["", "Best variant at each number of labels (highest mean accuracy):", "",
                f"| run | strategy | cycle | labels | best variant | {_METRIC_NAMES[figs.metric]} (%) | ahead of |"
                " by (points) |",
                "|---|---|---:|---:|---|---:|---|---:|"]
        out += [f"| {w.run} | {w.strategy} | {w.cycle} | {w.n_labeled} | {w.variant} | {w.accuracy_mean:.2f} |"
                f" {w.runner_up} | {w.margin:.2f} |" for w in figs.winners]
    if figs.auc:
        out += ["", f"Area under the budget curve: trapezoidal mean {_METRIC_NAMES[figs.metric]} (%) over the labels"
                " range, per repetition;"
                " mean ± std over repetitions:", "",
                "| run | strategy | variant | labels | cycles | AUC (%) | reps |", "|---|---|---|---|---:|---:|---:|"]
        out += [f"| {a.run} | {a.strategy}{_extra(a)} | {a.variant} | {a.labels_min}–{a.labels_max} | {a.cycles} |"
                f" {a.auc_mean:.2f} ± {a.auc_std:.2f} | {a.repetitions} |" for a in figs.auc]
    if figs.auc_paired:
        out += ["", "Paired AUC differences (points, setting - reference): per repetition the difference of the two"
                " areas over the cycles both have; mean ± half-width of its 95% t-interval (none with fewer than 2"
                " pairs):", "", "| run | strategy | variant | against | labels | cycles | AUC difference | pairs |",
                "|---|---|---|---|---|---:|---:|---:|"]
        out += [f"| {a.run} | {a.strategy}{_extra(a)} | {a.variant} | {a.reference_strategy} {a.reference_variant} |"
                f" {a.labels_min}–{a.labels_max} | {a.cycles} | {a.difference_mean:+.2f}"
                + ("" if a.ci_high is None else f" ± {a.ci_high - a.difference_mean:.2f}") + f" | {a.pairs} |"
                for a in figs.auc_paired]
    if figs.labels_saved:
        out += ["", "Labels saved against Random of the same variant and settings (in brackets: the labels Random"
                " needs to reach the same mean accuracy, linear interpolation of its mean curve; > : not within its"
                " range); columns: number of labeled images:"]
        sign = {"=": "", "<=": "≤ ", ">": "> "}
        for run, group in _grouped(figs.labels_saved, lambda s: s.run).items():
            lines = []
            for items in _grouped(group, lambda s: s.setting).values():
                s0 = items[0]
                lines.append(([run, f"{s0.strategy}{_extra(s0)}", s0.variant],
                              {s.n_labeled: f"{sign[s.relation]}{_count(s.saved)} ({sign[s.relation]}"
                                            f"{_count(s.random_labels)})" for s in items}, []))
            out += ["", *_pivot(["run", "strategy", "variant"], [], lines)]
    if figs.paired:
        out += ["", "Paired differences at the same number of labels (points, setting - reference): mean of the"
                " per-repetition differences ± half-width of its 95% t-interval (none with fewer than 2 pairs);"
                " columns: number of labeled images:"]
        for run, group in _grouped(figs.paired, lambda p: p.run).items():
            lines = []
            for items in _grouped(group, lambda p: (p.setting, p.against)).values():
                p0 = items[0]
                cells = {p.n_labeled: f"{p.difference_mean:+.2f}"
                         + ("" if p.ci_high is None else f" ± {p.ci_high - p.difference_mean:.2f}") for p in items}
                lines.append(([run, f"{p0.strategy}{_extra(p0)}", p0.variant,
                               f"{p0.reference_strategy} {p0.reference_variant}"], cells,
                              [_span([p.pairs for p in items])]))
            out += ["", *_pivot(["run", "strategy", "variant", "against"], ["pairs"], lines)]
    out += _pseudo_table(figs.rows)
    out += _rarest_table(figs)
    out += _time_ratio_table(figs.rows)
    return "\n".join(out)


def _rarest_table(figs: Figures) -> list[str]:
    """Labeled images of the pool's rarest class per setting and number of labels, for the settings whose pool is
    skewed (their classes' pool counts known and far apart); empty when none is."""
    rows = [r for r in figs.rows if (r.run, r.setting) in figs.rarest]
    if not rows:
        return []
    out = ["", "Labeled images of the pool's rarest class (mean over repetitions); columns: number of labeled"
           " images:"]
    for run, group in _grouped(rows, lambda r: r.run).items():
        lines = []
        for setting_rows in _grouped(group, lambda r: r.setting).values():
            r0 = setting_rows[0]
            c, n = figs.rarest[run, r0.setting]
            lines.append(([run, f"{r0.strategy}{_extra(r0)}", r0.variant, f"{c} ({n} in the pool)"],
                          {r.n_labeled: "" if r.rarest_labeled_mean is None else f"{r.rarest_labeled_mean:.1f}"
                           for r in setting_rows}, []))
        out += ["", *_pivot(["run", "strategy", "variant", "class"], [], lines)]
    return out


def _time_ratio_table(rows: list[Row]) -> list[str]:
    """Training time per cycle (training + propagation) of each +SEMI setting other than label propagation next
    to label propagation's (the same setting with semi=lp, as `points._present` finds it in the run), and their
    ratio; empty when there is no such pair."""
    by = {(r.run, r.setting, r.n_labeled): r for r in rows}
    present = _settings_by_run((r.run, r.setting) for r in rows)
    lines = []
    for run, group in _grouped([r for r in rows if _semi(r.setting) not in ("none", "lp")], lambda r: r.run).items():
        for setting_rows in _grouped(group, lambda r: r.setting).values():
            r0 = setting_rows[0]
            cells = {}
            for r in setting_rows:
                ref = by.get((run, _present(_with(r.setting, semi="lp"), present[run]), r.n_labeled))
                if ref is None or r.train_seconds_mean is None or not ref.train_seconds_mean:
                    continue
                cells[r.n_labeled] = (f"{r.train_seconds_mean:.1f} / {ref.train_seconds_mean:.1f}"
                                      f" ({r.train_seconds_mean / ref.train_seconds_mean:.2f}x)")
            if cells:
                lines.append(([run, f"{r0.strategy}{_extra(r0)}", r0.variant], cells, []))
    if not lines:
        return []
    return ["", "Training time per cycle (s, training + propagation, mean over repetitions) against label"
            " propagation's, and their ratio; columns: number of labeled images:", "",
            *_pivot(["run", "strategy", "variant"], [], lines)]


def _record(item: object) -> dict:
    """A dataclass as a dict, NaN as None."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(item).items()}


def render_csv(figs: Figures) -> str:
    """CSV with one header: `table` (rows | auc | auc_paired | labels_saved | paired | winners), then the union of
    the tables' fields; a field a table lacks is empty."""
    columns = ["table"]
    for cls in TABLES.values():
        columns += [f.name for f in fields(cls) if f.name not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for name in TABLES:
        for item in getattr(figs, name):
            writer.writerow({"table": name, **asdict(item)})
    return buf.getvalue()


def render_json(figs: Figures) -> str:
    """JSON object {"rows": [...], "auc": [...], "auc_paired": [...], "labels_saved": [...], "paired": [...],
    "winners": [...]}; NaN and missing intervals are null."""
    return json.dumps({"metric": figs.metric, **{name: [_record(item) for item in getattr(figs, name)]
                                                 for name in TABLES}}, indent=2)


def plot(rows: list[Row], path: Path, metric: str = "accuracy") -> None:
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
        ax.set_ylabel(f"test {_METRIC_NAMES[metric]} (%)")
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


def report(run_dir: Path | None, fmt: str, plot_path: Path | None = None,
           long: bool = False, metric: str = "accuracy") -> tuple[str, list[str]]:
    """(report text over one run directory, or every run under ./runs when None; lines naming unfinished tasks).
    long: the markdown accuracy table a line per setting and cycle instead of the wide one; metric: the test
    figure every table, AUC, labels saved and paired difference uses (accuracy, balanced_accuracy, macro_f1)."""
    if metric not in METRICS:
        raise UserError(f"--metric: {terminal(str(metric), limit=40)} is not one of {', '.join(METRICS)}")
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
    figs = figures(read_points(runs, metric=metric), metric)
    missing = unfinished_lines(runs)
    if not figs.rows:
        detail = f"; {len(missing)} tasks not finished" if missing else ""
        raise UserError(f"{', '.join(map(str, runs))}: no finished task yet{detail}")
    if plot_path is not None:
        plot(figs.rows, plot_path, metric)
    if fmt == "markdown":
        return render_markdown(figs, long=long), missing
    renderers = {"csv": render_csv, "json": render_json}
    return renderers[fmt](figs), missing
