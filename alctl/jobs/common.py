"""What the job renderers share: scheduler resolution, packing, time warnings and header-comment checks."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from alctl import config as mf
from alctl import plan
from alctl.config import memory_parts, time_seconds
from alctl.errors import UserError
from alctl.safe_text import refuse_control, terminal

PREEMPTED_EXIT_CODE = 3

# CLI option names for scheduler fields (error messages name what the user typed).
OPTION_NAMES: dict[str, str] = {
    "partition": "--partition",
    "time": "--time",
    "gpus": "--gpus",
    "cpus": "--cpus",
    "memory": "--memory",
    "image": "--image",
    "max_parallel": "--parallel",
    "namespace": "--namespace",
    "images_per_second": "--images-per-second",
    "tasks_per_gpu": "--tasks-per-gpu",
}


def _where(field: str, overridden: set[str]) -> str:
    """Name a scheduler field as the user set it: the CLI option when overridden, else scheduler.<field>."""
    return OPTION_NAMES.get(field, f"scheduler.{field}") if field in overridden else f"scheduler.{field}"


def resolve_scheduler(m: mf.Manifest, overrides: Mapping[str, Any] | None = None) -> mf.SchedulerConfig:
    """The manifest's scheduler section with non-None overrides applied and validated (options win)."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - set(mf.SchedulerConfig.model_fields))
    if unknown:
        raise UserError(*(f"scheduler.{k}: not a scheduler setting" for k in unknown))
    data = m.scheduler.model_dump()
    data.update(given)
    problems: list[str] = []
    reported: set[str] = set()  # fields already named by a problem: the schema's own check is not repeated
    for field, value in data.items():  # every text field ends up in a spec: no newline, escape, ... in any
        if isinstance(value, str):
            try:
                refuse_control(value, _where(field, set(given)))
            except UserError as e:
                problems.extend(e.problems)
                reported.add(field)
    for field, check in (("time", time_seconds), ("memory", memory_parts)):
        if isinstance(data.get(field), str) and field not in reported:
            try:
                check(data[field], _where(field, set(given)))
            except UserError as e:
                problems.extend(e.problems)
                reported.add(field)
    try:
        sched = mf.SchedulerConfig.model_validate(data)
    except ValidationError as err:
        sched = None
        for e in err.errors():
            field = str(e["loc"][0]) if e["loc"] else ""
            if field in reported or (not field and problems):  # said above, naming the option or field
                continue
            where = _where(field, set(given)) if field else "scheduler"
            problems.append(f"{where}: {e['msg']} (got {terminal(repr(e.get('input')), limit=80)})")
    if problems or sched is None:
        raise UserError(*problems)
    return sched


def _host_path(path: str, workdir: str) -> str:
    """The absolute path of a manifest path on the submitting machine."""
    return posixpath.normpath(path if posixpath.isabs(path) else posixpath.join(workdir, path))


def _comment(text: str, what: str) -> str:
    """Text for a header comment line (Slurm script or YAML): `text` unchanged; control characters (a newline
    would end the comment and start a command or a YAML document) are a UserError naming `what`."""
    return refuse_control(str(text), what)


def packing(n_tasks: int, sched: mf.SchedulerConfig) -> tuple[int, list[str]]:
    """(scheduler indexes, extra `alctl cycle` arguments) for n_tasks packed scheduler.tasks_per_gpu per index."""
    per = sched.tasks_per_gpu
    if per <= 1:
        return n_tasks, []
    return -(-n_tasks // per), ["--jobs", str(per), "--tasks-per-index", str(per)]


def _packed_parallel(sched: mf.SchedulerConfig) -> int | None:
    """Indexes running at once: max_parallel counts tasks, so max(1, max_parallel // tasks_per_gpu) indexes."""
    return None if sched.max_parallel is None else max(1, sched.max_parallel // sched.tasks_per_gpu)


def time_warnings(m: mf.Manifest, sched: mf.SchedulerConfig) -> tuple[str, ...]:
    """A warning when scheduler.time is shorter than the longest task's estimate at scheduler.images_per_second."""
    limit = time_seconds(sched.time)
    if sched.images_per_second is None or limit is None:
        return ()
    estimate = plan.estimate(m, sched.images_per_second)
    if estimate is None or estimate[0] <= limit:
        return ()
    hours = estimate[0] / 3600
    return (f"scheduler.time {sched.time} is shorter than the longest task's estimate of {hours:.1f} h at"
            f" {sched.images_per_second:g} images/s (its DeepCluster pre-training included where it has one); a task killed at the limit"
            " resumes from its checkpoint when resubmitted, or raise --time",)
