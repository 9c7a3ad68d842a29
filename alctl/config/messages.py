"""Validation errors as one line per problem, naming the field (or the extended file that set it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from alctl.safe_text import terminal
from alctl.config.schema import Manifest
from alctl.config.values import SHOWN_LIMIT, shown


# Top-level fields of the whole run (one run directory, one task list, one job script): not sweepable.
_RUN_LEVEL = ("name", "output", "repetitions", "scheduler", "tracking")


def _section(model: type[BaseModel], field: str) -> type[BaseModel] | None:
    """The section model a field of `model` holds, None for a leaf field or an unknown name."""
    annotation = model.model_fields[field].annotation if field in model.model_fields else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _known_path(path: str) -> bool:
    """True when a dotted path names a field of the schema."""
    model: type[BaseModel] | None = Manifest
    for part in path.split("."):
        if model is None or part not in model.model_fields or part == "sweep":
            return False
        model = _section(model, part)
    return True


def _section_keys(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the manifest section at a pydantic error location (the top level for ())."""
    model: type[BaseModel] = Manifest
    for part in loc:
        inner = _section(model, str(part))
        if inner is None:
            break
        model = inner
    return list(model.model_fields)


Origins = dict[tuple[str, ...], Path]  # key path of a value -> the extended (base) file it was taken from


def _origin(origins: Origins | None, loc: tuple[Any, ...]) -> Path | None:
    """The base file a value at `loc` (or one of its parents or children) came from, None for this file's own."""
    if not origins:
        return None
    where = tuple(str(part) for part in loc)
    for path, source in origins.items():
        n = min(len(path), len(where))
        if n and path[:n] == where[:n]:
            return source
    return None


def _known_where(loc: tuple[Any, ...]) -> str:
    """The dotted path of the longest start of `loc` that names schema fields ("manifest" when none does)."""
    model: type[BaseModel] | None = Manifest
    known: list[str] = []
    for part in loc:
        if model is None or str(part) not in model.model_fields:
            break
        known.append(str(part))
        model = _section(model, str(part))
    return ".".join(known) or "manifest"


def hidden_note(source: Path) -> str:
    """What a message about an extended file says instead of its keys and values."""
    return (f"set in {terminal(source)} (the keys and values of extended files are never shown; run `alctl validate"
            f" {terminal(source)}` to see them)")


def _format_validation(err: ValidationError, prefix: str = "", origins: Origins | None = None) -> list[str]:
    """One line per pydantic error: dotted field path, message and the offending input (bounded, terminal-safe);
    an error about a value an extended file set names that file instead of the key or value."""
    lines = []
    for e in err.errors():
        source = _origin(origins, e["loc"])
        if source is not None:
            kind = "unknown key" if e["type"] == "extra_forbidden" else "invalid value"
            lines.append(f"{prefix}{_known_where(e['loc'])}: {kind} {hidden_note(source)}")
            continue
        loc = ".".join(terminal(p, limit=SHOWN_LIMIT) for p in e["loc"])
        where = prefix + loc if loc else (prefix.rstrip(".") or "manifest")
        msg = e["msg"]
        if msg.startswith("Value error, "):
            for part in msg[len("Value error, ") :].split("\n"):
                lines.append(f"{prefix}{part}" if prefix else part)
            continue
        if e["type"] == "extra_forbidden":
            msg = f"unknown key (valid here: {', '.join(_section_keys(e['loc'][:-1]))})"
        elif "input" in e and not isinstance(e["input"], dict):
            msg = f"{msg} (got {shown(e['input'])})"
        lines.append(f"{where}: {terminal(msg, limit=4 * SHOWN_LIMIT)}")
    return lines
