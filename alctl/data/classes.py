"""A label as a person writes it in a CSV: a class name or a class index."""

from __future__ import annotations

from typing import Sequence


def class_index(text: str, classes: Sequence[str]) -> int | None:
    """Class index (0 <= i < len(classes)) of a label given as a class name (tried first) or an integer index.

    `text` is matched as given (callers strip it): a name matches exactly (case-sensitive; the first index
    if a name is listed twice); else `int(text)` within 0..len(classes)-1. None when it is neither: an unknown
    name, an index out of range (negative included) or another number ("3.0").
    """
    try:
        return classes.index(text)
    except ValueError:
        pass
    try:
        index = int(text)
    except ValueError:
        return None
    return index if 0 <= index < len(classes) else None
