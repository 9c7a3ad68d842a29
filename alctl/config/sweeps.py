"""Sweeps: the grid of a manifest's sweep (less exclude) x repetitions as numbered tasks with stable keys."""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from alctl.errors import ManifestError
from alctl.safe_text import terminal
from alctl.config.schema import Manifest
from alctl.config.values import MAX_TASKS, SHOWN_LIMIT
from alctl.config.messages import Origins, _format_validation


@dataclass(frozen=True)
class Task:
    """One unit of work: a sweep point x a repetition."""

    index: int
    key: str
    rep: int
    config: Manifest
    point: dict[str, Any]

    @property
    def variant(self) -> str:
        """The paper's variant label: plain, +PRE, +SEMI or +PRE+SEMI."""
        return variant_label(self.config)


def variant_label(m: Manifest) -> str:
    """plain / +PRE / +SEMI / +PRE+SEMI from the pretrain and semi methods."""
    label = ("+PRE" if m.pretrain.method != "none" else "") + ("+SEMI" if m.semi.method != "none" else "")
    return label or "plain"


_SHORT = {"active.strategy": "strategy", "semi.method": "semi", "pretrain.method": "pretrain"}
_VALUE_SHORT = {"label-propagation": "lp", "fixmatch": "fm"}


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path inside nested dicts, creating sections as needed."""
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ManifestError(f"sweep.{path}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def grid_size(m: Manifest) -> int:
    """Tasks of the full sweep grid x repetitions, from the axis lengths alone (sweep.exclude not applied)."""
    return math.prod(len(values) for values in sweep_axes(m).values()) * m.repetitions


def grid_problem(m: Manifest) -> str | None:
    """The one-line problem of a grid over MAX_TASKS tasks, None otherwise. 10,000 tasks is 100 times the paper's
    full grid of 90: each is a task directory, a lock and a scheduler array index (Slurm's default MaxArraySize is
    1001), and expanding and validating 10,000 points already takes seconds; a larger study is several runs."""
    total = grid_size(m)
    if total <= MAX_TASKS:
        return None
    shape = " x ".join(f"{terminal(path, limit=SHOWN_LIMIT)} ({len(values)})" for path, values in sweep_axes(m).items())
    return (f"sweep: {shape or 'no sweep'} x {m.repetitions} repetitions = {total:,} tasks, more than the {MAX_TASKS:,}"
            " one run may plan; sweep fewer values (or split the study into several manifests)")


EXCLUDE = "exclude"  # the reserved key of `sweep` listing left-out combinations


def sweep_axes(m: Manifest) -> dict[str, list[Any]]:
    """The swept paths and their values (every key of `sweep` but `exclude`), in manifest order."""
    return {path: values for path, values in m.sweep.items() if path != EXCLUDE}


def excluded(m: Manifest, point: dict[str, Any]) -> bool:
    """True when a sweep point matches an entry of sweep.exclude (every path of the entry has the entry's value)."""
    return any(
        isinstance(entry, dict) and all(path in point and point[path] == value for path, value in entry.items())
        for entry in m.sweep.get(EXCLUDE, [])
    )


def sweep_points(m: Manifest) -> list[dict[str, Any]]:
    """The sweep grid as a list of {path: value}, in manifest order (last path varies fastest), less the points
    that sweep.exclude leaves out; ManifestError past MAX_TASKS tasks, before anything is expanded."""
    if (problem := grid_problem(m)) is not None:
        raise ManifestError(problem)
    axes = sweep_axes(m)
    paths = list(axes)
    points = [dict(zip(paths, combo)) for combo in itertools.product(*(axes[p] for p in paths))]
    return [point for point in points if not excluded(m, point)]


def resolve_point(m: Manifest, point: dict[str, Any], sweep_source: Path | None = None) -> Manifest:
    """The manifest with one sweep point applied and the sweep removed, validated; `sweep_source`: the extended
    file the sweep came from (its values are then never shown)."""
    data = m.model_dump(mode="json")
    data["sweep"] = {}
    for path, value in point.items():
        _set_path(data, path, value)
    try:
        return Manifest.model_validate(data)
    except ValidationError as err:
        if sweep_source is not None:
            origins: Origins = {tuple(path.split(".")): sweep_source for path in point}
            lines = _format_validation(err, origins=origins)
            raise ManifestError(*(f"{line} (a sweep point of {terminal(sweep_source)})" for line in lines)) from None
        where = ", ".join(f"{terminal(k, limit=SHOWN_LIMIT)}={terminal(v, limit=SHOWN_LIMIT)}" for k, v in point.items())
        raise ManifestError(*(f"{line} (sweep point {where})" for line in _format_validation(err))) from None


# Characters a task key's component may not hold as they are: path separators, the escape character itself and
# control characters; each is written as %XX (its UTF-8 bytes), so that a value is always one path component.
_KEY_UNSAFE = re.compile("[/\\%\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_KEY_COMPONENT_BYTES = 200  # file systems allow 255 bytes per name; longer components end in a hash of the whole


def key_component(field: str, value: Any) -> str:
    """One folder name `field=value` of a task key: exactly one path component whatever the value (/ \\ % and
    control characters percent-encoded), at most _KEY_COMPONENT_BYTES bytes (a longer one is cut and ends in a
    hash of the whole, so distinct values stay distinct)."""
    text = f"{field}={value}"
    text = _KEY_UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), text)
    if len(text.encode()) <= _KEY_COMPONENT_BYTES:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    cut = text.encode()[: _KEY_COMPONENT_BYTES - len(digest) - 1].decode(errors="ignore")
    return f"{cut}~{digest}"


def task_key(config: Manifest, point: dict[str, Any], rep: int) -> str:
    """Stable directory key, e.g. strategy=coreset/semi=lp/pretrain=none/rep=2: one path component per part,
    whatever the swept values (`key_component`)."""
    parts = [
        f"strategy={config.active.strategy}",
        f"semi={_VALUE_SHORT.get(config.semi.method, config.semi.method)}",
        f"pretrain={config.pretrain.method}",
    ]
    for path, value in point.items():
        if path not in _SHORT:
            parts.append(key_component(path.split(".")[-1], value))
    parts.append(f"rep={rep}")
    return "/".join(parts)


def tasks(m: Manifest) -> list[Task]:
    """Expand sweep grid x repetitions into numbered tasks (repetition varies fastest)."""
    out: list[Task] = []
    for point in sweep_points(m):
        config = resolve_point(m, point)
        for rep in range(m.repetitions):
            out.append(Task(index=len(out), key=task_key(config, point, rep), rep=rep, config=config, point=point))
    return out
