"""report's figures on a hand-made run directory: AUC, labels saved against Random, paired differences with
t-intervals, the wide and long markdown tables, csv and json."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from alctl import report, store
from alctl.cli import app

runner = CliRunner()

T2 = 4.302652729749462  # scipy.stats.t.ppf(0.975, 2): three pairs
T1 = 12.706204736174694  # scipy.stats.t.ppf(0.975, 1): two pairs
L2 = "/l2_features=True"

# setting -> repetition -> accuracy (fraction) at 10, 20, 30 labels
CURVES: dict[str, dict[int, list[float]]] = {
    f"strategy=random/semi=none/pretrain=none{L2}": {0: [.50, .60, .70], 1: [.52, .62, .72], 2: [.48, .58, .68]},
    f"strategy=coreset/semi=none/pretrain=none{L2}": {0: [.50, .66, .74], 1: [.52, .65, .75], 2: [.48, .67, .76]},
    f"strategy=coreset/semi=lp/pretrain=none{L2}": {0: [.60, .70, .80], 1: [.62, .74, .78]},
    f"strategy=random/semi=lp/pretrain=none{L2}": {0: [.60, .65, .70]},
    # no Random and no plain with l2_features=False: neither labels saved nor paired differences
    "strategy=coreset/semi=none/pretrain=none/l2_features=False": {0: [.40, .50, .60], 1: [.42, .52, .62]},
}


def write_run(root: Path) -> Path:
    """runs/syn/tasks/<setting>/rep=<r>/metrics.parquet with the accuracies of CURVES (no manifest: all count)."""
    run = root / "runs" / "syn"
    for task, (setting, reps) in enumerate(CURVES.items()):
        parts = dict(p.split("=", 1) for p in setting.split("/"))
        variant = "+SEMI" if parts["semi"] != "none" else "plain"
        for rep, accs in reps.items():
            rows = [{"task": task, "task_key": f"{setting}/rep={rep}", "strategy": parts["strategy"],
                     "variant": variant, "rep": rep, "cycle": c, "n_labeled": 10 * (c + 1), "accuracy": a}
                    for c, a in enumerate(accs)]
            path = run / "tasks" / setting / f"rep={rep}" / "metrics.parquet"
            path.parent.mkdir(parents=True)
            pq.write_table(pa.Table.from_pylist(rows, schema=store.METRICS), path)
    return run


@pytest.fixture
def syn(workdir: Path) -> report.Figures:
    return report.figures(report.read_points([write_run(workdir)]))


def test_area_under_curve_is_a_mean_accuracy_over_the_labels_range() -> None:
    assert report.area_under_curve(np.array([10, 20, 30]), np.array([50.0, 60.0, 70.0])) == pytest.approx(60.0)
    # uneven steps, unsorted input: (60 + 80) / 2 * 10 + (80 + 80) / 2 * 30 = 3100 over 40 labels
    assert report.area_under_curve(np.array([50, 10, 20]), np.array([80.0, 60.0, 80.0])) == pytest.approx(77.5)
    assert report.area_under_curve(np.array([20]), np.array([55.0])) == 55.0  # one cycle: its accuracy
    with pytest.raises(ValueError):
        report.area_under_curve(np.array([]), np.array([]))


def test_labels_to_reach_interpolates_the_first_crossing() -> None:
    x, y = np.array([10, 20, 30, 40]), np.array([50.0, 60.0, 55.0, 70.0])
    assert report.labels_to_reach(x, y, 56.0) == (pytest.approx(16.0), "=")  # first crossing, not 30..40's
    assert report.labels_to_reach(x, y, 60.0) == (20.0, "=")
    assert report.labels_to_reach(x, y, 62.5) == (pytest.approx(35.0), "=")  # past the dip: 30 + 7.5/15 * 10
    assert report.labels_to_reach(x, y, 50.0) == (10.0, "=")
    assert report.labels_to_reach(x, y, 45.0) == (10.0, "<=")  # already there at Random's first point
    assert report.labels_to_reach(x, y, 71.0) == (40.0, ">")  # never within its range


def test_mean_interval_is_a_student_t_interval() -> None:
    mean, half, n = report.mean_interval(np.array([6.0, 3.0, 9.0]))
    assert (mean, n) == (pytest.approx(6.0), 3) and half == pytest.approx(T2 * 3.0 / math.sqrt(3))
    assert report.mean_interval(np.array([2.5])) == (2.5, None, 1)


def test_auc_per_repetition_then_mean_and_std(syn: report.Figures) -> None:
    auc = {(a.setting.split("/")[0], a.variant, a.setting.endswith(L2)): a for a in syn.auc}
    rnd = auc["strategy=random", "plain", True]
    assert (rnd.labels_min, rnd.labels_max, rnd.cycles, rnd.repetitions) == (10, 30, 3, 3)
    assert rnd.auc_mean == pytest.approx(60.0) and rnd.auc_std == pytest.approx(2.0)  # 60, 62, 58
    core = auc["strategy=coreset", "plain", True]  # per repetition (580 + 700) / 20 = 64, 64.25, 64.5
    assert core.auc_mean == pytest.approx(64.25) and core.auc_std == pytest.approx(0.25)
    one = auc["strategy=random", "+SEMI", True]
    assert one.auc_mean == pytest.approx(65.0) and one.auc_std == 0.0 and one.repetitions == 1


def test_labels_saved_against_random_of_the_same_variant_and_settings(syn: report.Figures) -> None:
    got = {(s.setting, s.n_labeled): (s.random_labels, s.relation, s.saved) for s in syn.labels_saved}
    plain, semi = f"strategy=coreset/semi=none/pretrain=none{L2}", f"strategy=coreset/semi=lp/pretrain=none{L2}"
    assert set(got) == {(plain, n) for n in (10, 20, 30)} | {(semi, n) for n in (10, 20, 30)}
    assert got[plain, 10] == (pytest.approx(10.0), "=", pytest.approx(0.0))  # 50 = Random's 50 at 10 labels
    assert got[plain, 20] == (pytest.approx(26.0), "=", pytest.approx(6.0))  # 66: 20 + (66 - 60) / 10 * 10
    assert got[plain, 30] == (30.0, ">", 0.0)  # 75: Random tops out at 70
    # +SEMI against Random +SEMI (one repetition: 60, 65, 70); its means are 61, 72, 79
    assert got[semi, 10] == (pytest.approx(12.0), "=", pytest.approx(2.0))
    assert got[semi, 20][1:] == (">", 10.0) and got[semi, 30][1:] == (">", 0.0)
    saved = next(s for s in syn.labels_saved if (s.setting, s.n_labeled) == (plain, 20))
    assert saved.random_setting == f"strategy=random/semi=none/pretrain=none{L2}"


def test_paired_differences_match_repetitions_by_index(syn: report.Figures) -> None:
    got = {(p.setting.split("/")[0], p.variant, p.against, p.n_labeled): p for p in syn.paired}
    assert {k[:3] for k in got} == {("strategy=coreset", "plain", "random"), ("strategy=coreset", "+SEMI", "plain"),
                                    ("strategy=coreset", "+SEMI", "random"), ("strategy=random", "+SEMI", "plain")}

    def check(key: tuple, mean: float, half: float | None, pairs: int) -> None:
        p = got[key]
        assert p.difference_mean == pytest.approx(mean) and p.pairs == pairs, p
        if half is None:
            assert p.ci_low is None and p.ci_high is None
        else:
            assert (p.ci_low, p.ci_high) == (pytest.approx(mean - half), pytest.approx(mean + half))

    # coreset - random, plain: differences 0, 0, 0 | 6, 3, 9 | 4, 3, 8
    check(("strategy=coreset", "plain", "random", 10), 0.0, 0.0, 3)
    check(("strategy=coreset", "plain", "random", 20), 6.0, T2 * 3.0 / math.sqrt(3), 3)
    check(("strategy=coreset", "plain", "random", 30), 5.0, T2 * math.sqrt(7.0) / math.sqrt(3), 3)
    # coreset +SEMI - plain: repetitions 0 and 1 only (+SEMI has no repetition 2): 10, 10 | 4, 9 | 6, 3
    check(("strategy=coreset", "+SEMI", "plain", 10), 10.0, 0.0, 2)
    check(("strategy=coreset", "+SEMI", "plain", 20), 6.5, T1 * math.sqrt(12.5) / math.sqrt(2), 2)
    check(("strategy=coreset", "+SEMI", "plain", 30), 4.5, T1 * math.sqrt(4.5) / math.sqrt(2), 2)
    # against Random +SEMI, which has repetition 0 only: one pair, no interval
    check(("strategy=coreset", "+SEMI", "random", 20), 5.0, None, 1)
    check(("strategy=random", "+SEMI", "plain", 10), 10.0, None, 1)
    p = got["strategy=coreset", "+SEMI", "random", 20]
    assert (p.reference_strategy, p.reference_variant, p.cycle) == ("random", "+SEMI", 1)


def test_markdown_is_wide_by_default_and_long_with_the_flag(workdir: Path) -> None:
    write_run(workdir)
    res = runner.invoke(app, ["report", "runs/syn"])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "| run | strategy | variant | 10 | 20 | 30 | reps |\n|---|---|---|---:|---:|---:|---:|" in out
    assert "| syn | coreset (l2_features=True) | plain | 50.00 ± 2.00 | 66.00 ± 1.00 | 75.00 ± 1.00 | 3 |" in out
    assert "| syn | random (l2_features=True) | +SEMI | 60.00 ± 0.00 | 65.00 ± 0.00 | 70.00 ± 0.00 | 1 |" in out
    assert "| syn | coreset (l2_features=True) | plain | 10–30 | 3 | 64.25 ± 0.25 | 3 |" in out  # AUC
    assert "| syn | coreset (l2_features=True) | plain | 0 (10) | 6 (26) | > 0 (> 30) |" in out  # labels saved
    assert (f"| syn | coreset (l2_features=True) | plain | random plain | +0.00 ± 0.00 | +6.00 ± "
            f"{T2 * 3 / math.sqrt(3):.2f} | +5.00 ± {T2 * math.sqrt(7 / 3):.2f} | 3 |") in out
    assert "| syn | coreset (l2_features=True) | +SEMI | random +SEMI | +0.00 | +5.00 | +10.00 | 1 |" in out
    assert "Best variant at each number of labels" in out and "| syn | coreset (l2_features=True) | 1 | 20 | +SEMI |" in out
    assert "| cycle |" not in out.split("Best variant")[0]

    res = runner.invoke(app, ["report", "runs/syn", "--long"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("| run | strategy | variant | cycle | labels | accuracy (%) | reps |")
    assert "| syn | coreset (l2_features=True) | plain | 1 | 20 | 66.00 ± 1.00 | 3 |" in res.stdout
    assert "| syn | coreset (l2_features=True) | plain | 10–30 | 3 | 64.25 ± 0.25 | 3 |" in res.stdout  # same sections


def test_pseudo_labels_are_averaged_over_repetitions_and_shown_only_where_there_are_some(workdir: Path) -> None:
    run = write_run(workdir)  # as older versions wrote them: null n_pseudo and pseudo_accuracy
    figs = report.figures(report.read_points([run]))
    assert all(r.n_pseudo_mean is None and r.pseudo_accuracy_mean is None for r in figs.rows)
    assert "Pseudo-labels" not in report.render_markdown(figs)
    setting = "strategy=ceal/semi=none/pretrain=none"
    # the third repetition's truth is unknown (a human oracle): left out of the accuracy's mean, not the count's
    for rep, (n, acc) in enumerate([(700, 0.9), (800, 0.8), (900, None)]):
        rows = [{"task": 9, "task_key": f"{setting}/rep={rep}", "strategy": "ceal", "variant": "plain", "rep": rep,
                 "cycle": c, "n_labeled": 10 * (c + 1), "accuracy": 0.5, "n_pseudo": [0, n][c],
                 "pseudo_accuracy": [None, acc][c]} for c in range(2)]
        path = run / "tasks" / setting / f"rep={rep}" / "metrics.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=store.METRICS), path)
    figs = report.figures(report.read_points([run]))
    got = {r.cycle: r for r in figs.rows if r.setting == setting}
    assert (got[0].n_pseudo_mean, got[0].pseudo_accuracy_mean) == (0.0, None)
    assert got[1].n_pseudo_mean == 800.0 and got[1].pseudo_accuracy_mean == pytest.approx(85.0)
    section = report.render_markdown(figs).split("Pseudo-labels:")[1]
    assert ("| run | strategy | variant | 10 | 20 |\n|---|---|---|---:|---:|\n"
            "| syn | ceal | plain | 0 | 800 (85.0%) |") in section
    assert "coreset" not in section and "random" not in section  # only settings with pseudo-labels
    data = json.loads(report.render_json(figs))["rows"]
    assert [(r["n_pseudo_mean"], r["pseudo_accuracy_mean"]) for r in data if r["setting"] == setting] == [
        (0.0, None), (800.0, pytest.approx(85.0))]
    assert {r["n_pseudo_mean"] for r in data if r["setting"] != setting} == {None}


def _same(a: object, b: object) -> bool:
    """Equal, floats up to rounding (csv holds floats as text)."""
    if isinstance(b, float):
        return a is not None and a != "" and float(a) == pytest.approx(b)
    if b is None:
        return a in (None, "")
    return str(a) == str(b)


def test_json_and_csv_hold_every_table(workdir: Path, syn: report.Figures) -> None:
    res = runner.invoke(app, ["report", "runs/syn", "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert list(data) == ["metric", "rows", "auc", "auc_paired", "labels_saved", "paired", "winners"]
    assert data.pop("metric") == "accuracy"
    for name in data:
        expected = [asdict(x) for x in getattr(syn, name)]
        assert len(data[name]) == len(expected) > 0, name
        for got, want in zip(data[name], expected):
            assert set(got) == set(want) and all(_same(got[k], v) for k, v in want.items()), (name, got, want)
    assert any(p["ci_low"] is None for p in data["paired"])  # n = 1: null, not NaN (which is not JSON)

    res = runner.invoke(app, ["report", "runs/syn", "-f", "csv"])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0].startswith("table,run,setting,strategy,variant,cycle,n_labeled,accuracy_mean")
    lines = list(csv.DictReader(io.StringIO(res.stdout)))
    for name in data:
        mine = [line for line in lines if line["table"] == name]
        expected = [asdict(x) for x in getattr(syn, name)]
        assert len(mine) == len(expected), name
        for got, want in zip(mine, expected):
            assert all(_same(got[k], v) for k, v in want.items()), (name, got, want)
            assert all(v == "" for k, v in got.items() if k not in want and k != "table")


def _write_settings(run: Path, curves: dict[str, dict[int, list[float]]]) -> None:
    """Metrics files for settings given as task keys without the repetition, variant from the key (as cycle writes)."""
    for task, (setting, reps) in enumerate(curves.items()):
        parts = dict(p.split("=", 1) for p in setting.split("/"))
        variant = ("+PRE" if parts["pretrain"] != "none" else "") + ("+SEMI" if parts["semi"] != "none" else "")
        for rep, accs in reps.items():
            seconds = {"fm": (30.0 + rep, 0.0), "lp": (15.0, 5.0)}.get(parts["semi"], (10.0, 0.0))
            rows = [{"task": task, "task_key": f"{setting}/rep={rep}", "strategy": parts["strategy"],
                     "variant": variant or "plain", "rep": rep, "cycle": c, "n_labeled": 10 * (c + 1), "accuracy": a,
                     "seconds_train": seconds[0] * (c + 1), "seconds_propagate": seconds[1]}
                    for c, a in enumerate(accs)]
            path = run / "tasks" / setting / f"rep={rep}" / "metrics.parquet"
            path.parent.mkdir(parents=True)
            pq.write_table(pa.Table.from_pylist(rows, schema=store.METRICS), path)


def test_fixmatch_is_named_and_paired_against_label_propagation_at_every_budget_and_in_auc(workdir: Path) -> None:
    run = workdir / "runs" / "fm"
    _write_settings(run, {
        "strategy=random/semi=none/pretrain=none": {0: [.50, .60, .70], 1: [.52, .62, .72], 2: [.48, .58, .68]},
        "strategy=random/semi=lp/pretrain=none": {0: [.60, .70, .80], 1: [.62, .72, .78], 2: [.58, .70, .76]},
        "strategy=random/semi=fm/pretrain=none": {0: [.62, .74, .80], 1: [.60, .74, .82], 2: [.58, .72, .80]},
        # no label propagation for coreset: FixMatch there has no "lp" reference
        "strategy=coreset/semi=fm/pretrain=none": {0: [.62, .74, .80]},
    })
    figs = report.figures(report.read_points([run]))
    variants = {r.setting.split("/")[1]: r.variant for r in figs.rows if r.strategy == "random"}
    assert variants == {"semi=none": "plain", "semi=lp": "+SEMI", "semi=fm": "+SEMI fixmatch"}
    fm, lp = "strategy=random/semi=fm/pretrain=none", "strategy=random/semi=lp/pretrain=none"
    against_lp = {p.n_labeled: p for p in figs.paired if p.against == "lp"}
    assert {p.setting for p in figs.paired if p.against == "lp"} == {fm}  # label propagation itself has none
    # fm - lp per repetition: 2, 4, 0 | -2, 2, 4 | 0, 2, 4 points
    for n, diffs in ((10, [2.0, -2.0, 0.0]), (20, [4.0, 2.0, 2.0]), (30, [0.0, 4.0, 4.0])):
        d = np.array(diffs)
        p = against_lp[n]
        assert p.reference_setting == lp and p.reference_variant == "+SEMI" and p.pairs == 3
        assert p.difference_mean == pytest.approx(d.mean())
        assert p.ci_high - p.difference_mean == pytest.approx(T2 * d.std(ddof=1) / math.sqrt(3))
    # AUC (mean accuracy over 10..30 labels) per repetition: fm 72.5, 72.5, 70.5; lp 70, 71, 68.5
    area = {(a.setting, a.against): a for a in figs.auc_paired}
    a = area[fm, "lp"]
    d = np.array([2.5, 1.5, 2.0])
    assert (a.labels_min, a.labels_max, a.cycles, a.pairs) == (10, 30, 3, 3)
    assert a.difference_mean == pytest.approx(2.0)
    assert a.ci_low == pytest.approx(2.0 - T2 * d.std(ddof=1) / math.sqrt(3))
    assert area[lp, "plain"].difference_mean == pytest.approx(29.5 / 3)  # lp 70 / 71 / 68.5 - plain 60 / 62 / 58
    assert (fm, "lp") in area and ("strategy=coreset/semi=fm/pretrain=none", "lp") not in area
    assert area["strategy=coreset/semi=fm/pretrain=none", "random"].ci_low is None  # one pair
    out = report.render_markdown(figs)
    assert "| fm | random | +SEMI fixmatch | 60.00 ± 2.00 | 73.33 ± 1.15 | 80.67 ± 1.15 | 3 |" in out
    half = T2 * d.std(ddof=1) / math.sqrt(3)
    assert f"| fm | random | +SEMI fixmatch | random +SEMI | 10–30 | 3 | +2.00 ± {half:.2f} | 3 |" in out
    assert f"| fm | random | +SEMI fixmatch | random +SEMI | +0.00 ± {T2 * 2 / math.sqrt(3):.2f} |" in out
    # training time (training + propagation) against label propagation's: fm 31 / 62 / 93 s, lp 20 / 35 / 50 s
    section = out.split("Training time per cycle")[1]
    assert "| fm | random | +SEMI fixmatch | 31.0 / 20.0 (1.55x) | 62.0 / 35.0 (1.77x) | 93.0 / 50.0 (1.86x) |" in section
    assert "coreset" not in section  # no label propagation to compare with


def test_fixmatch_with_a_fixmatch_only_value_is_paired_with_the_run_s_label_propagation(workdir: Path) -> None:
    """A sweep of semi.fixmatch.prior_epochs excludes 15 for label propagation and none (it means nothing there):
    FixMatch at 15 is compared with the run's label propagation and plain settings, which carry 0; a swept field
    of another section (initial) must still agree."""
    run = workdir / "runs" / "fmprior"
    curves = {}
    for initial, base in (("10", .5), ("20", .6)):
        curves |= {
            f"strategy=random/semi=none/pretrain=none/initial={initial}/prior_epochs=0": {0: [base], 1: [base]},
            f"strategy=random/semi=lp/pretrain=none/initial={initial}/prior_epochs=0": {0: [base + .2], 1: [base + .1]},
            f"strategy=random/semi=fm/pretrain=none/initial={initial}/prior_epochs=0": {0: [base], 1: [base]},
            f"strategy=random/semi=fm/pretrain=none/initial={initial}/prior_epochs=15": {0: [base + .1], 1: [base + .2]},
        }
    _write_settings(run, curves)
    figs = report.figures(report.read_points([run]))
    refs = {(p.setting, p.against): p for p in figs.paired}
    for initial in ("10", "20"):
        fm15 = f"strategy=random/semi=fm/pretrain=none/initial={initial}/prior_epochs=15"
        lp = refs[fm15, "lp"]
        assert lp.reference_setting == f"strategy=random/semi=lp/pretrain=none/initial={initial}/prior_epochs=0"
        assert lp.difference_mean == pytest.approx(0.0) and lp.pairs == 2  # +10 - 20 and +20 - 10 points
        plain = refs[fm15, "plain"]
        assert plain.reference_setting == f"strategy=random/semi=none/pretrain=none/initial={initial}/prior_epochs=0"
        assert plain.difference_mean == pytest.approx(15.0)
        exact = refs[f"strategy=random/semi=fm/pretrain=none/initial={initial}/prior_epochs=0", "lp"]
        assert exact.reference_setting == lp.reference_setting and exact.difference_mean == pytest.approx(-15.0)
    assert {(a.setting, a.against) for a in figs.auc_paired} >= {(s, "lp") for s in curves if "semi=fm" in s}
    section = report.render_markdown(figs).split("Training time per cycle")[1]
    assert section.count("| fmprior | random (initial=10, prior_epochs=15) | +SEMI fixmatch |") == 1
