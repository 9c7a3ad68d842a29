"""Aggregation over repetitions and rendering (markdown, csv, json, png): `points` reads the runs, `figures`
computes every table from the repetitions' `Point`s (rows, auc, auc_paired, labels_saved, paired, winners),
`render` only formats them. What each table holds: docs/internals.md, Report figures."""

from __future__ import annotations

from alctl.report.points import (  # noqa: F401
    Point,
    Row,
    TaskStatus,
    task_statuses,
    find_runs,
    read_points,
    summarise,
    aggregate,
    _extra,
)
from alctl.report.figures import (  # noqa: F401
    area_under_curve,
    labels_to_reach,
    mean_interval,
    Area,
    auc_table,
    LabelsSaved,
    labels_saved,
    Paired,
    paired,
    PairedArea,
    paired_auc,
    Winner,
    winners,
    Figures,
    TABLES,
    figures,
)
from alctl.report.render import (  # noqa: F401
    render_markdown,
    render_csv,
    render_json,
    plot,
    unfinished_lines,
    report,
)
