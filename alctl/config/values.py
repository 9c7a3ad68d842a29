"""Values a manifest holds, as the schema reads and shows them: bounded echoes for messages, Slurm times and
memory sizes, plain strings and paths, a layer's channels at a width."""

from __future__ import annotations

import re
import reprlib
from typing import Any

from alctl.errors import UserError
from alctl.safe_text import has_control, terminal


_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_MEMORY_RE = re.compile(r"^(\d+)\s*(?:([KMGT])i?B?)?$", re.IGNORECASE)
SHOWN_LIMIT = 80  # characters of a value from the manifest echoed in a message
MAX_YAML_NODES = 100_000  # values of a manifest file once its aliases are expanded (the shipped ones hold < 200)
MAX_TASKS = 10_000  # sweep grid x repetitions (the paper's full grid is 90 tasks; see `grid_problem`)
EXTENDS_ANYWHERE = "ALCTL_EXTENDS_ANYWHERE"  # =1: `extends:` may name a file anywhere (see `_read_data`)

_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxtuple, _SHOWN.maxdict, _SHOWN.maxset = 3, 8, 8, 8, 8
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = SHOWN_LIMIT, SHOWN_LIMIT, SHOWN_LIMIT


def shown(value: Any, limit: int = SHOWN_LIMIT) -> str:
    """A value from a manifest as a message shows it: its repr, bounded however large or deeply aliased the value
    is (reprlib never walks more than a few elements), control characters escaped, at most `limit` characters."""
    return terminal(_SHOWN.repr(value), limit=limit)


def time_seconds(value: str, where: str = "scheduler.time") -> int | None:
    """Seconds of a Slurm time limit (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S); None for UNLIMITED/INFINITE."""
    text = value.strip()
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    match = _TIME_RE.match(text)
    if not match:
        raise UserError(f"{where}: {shown(value)} is not a time limit; use HH:MM:SS, MM, MM:SS or D-HH[:MM[:SS]]")
    days, a, b, c = match.groups()
    nums = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:
        hours, minutes, seconds = (nums + [0, 0])[:3]
        total = int(days) * 86400 + hours * 3600 + minutes * 60 + seconds
    elif len(nums) == 3:
        total = nums[0] * 3600 + nums[1] * 60 + nums[2]
    elif len(nums) == 2:
        total = nums[0] * 60 + nums[1]
    else:
        total = nums[0] * 60
    if total <= 0:
        raise UserError(f"{where}: {shown(value)} is zero; give a positive time limit")
    return total


def memory_parts(value: str, where: str = "scheduler.memory") -> tuple[int, str]:
    """Amount and unit (K, M, G or T; Slurm's default unit is M) of a memory size such as 16G or 16Gi."""
    match = _MEMORY_RE.match(value.strip())
    if not match or int(match.group(1)) <= 0:
        raise UserError(f"{where}: {shown(value)} is not a memory size; use a positive integer with K, M, G or T,"
                        " e.g. 16G")
    return int(match.group(1)), (match.group(2) or "M").upper()


def no_control(value: str, where: str, what: str) -> str:
    """`value`, or a ValueError naming `where` when it holds a control character (NUL, newline, escape, ...)."""
    if has_control(value):
        found = next(ch for ch in value if has_control(ch))
        raise ValueError(f"{where}: must be {what} without control characters (found {ascii(found)} in"
                         f" {shown(value)})")
    return value


def no_nul(value: str | None, where: str) -> str | None:
    """`value`, or a ValueError naming `where` when it holds a NUL character, which no file path can hold."""
    if value is not None and "\0" in value:
        raise ValueError(f"{where}: a path cannot contain a NUL character (got {shown(value)})")
    return value


def layer_channels(base: int, width: float) -> int:
    """Channels of a CNN layer with `base` channels at the paper's width 1.0, at a width multiplier (at least 8)."""
    return max(8, int(round(base * width)))
