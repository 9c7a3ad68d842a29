"""Checkpoints as plain dicts of tensors, numbers and strings: written atomically, read with weights_only=True.

Nothing here unpickles code: `torch.load(..., weights_only=True)` refuses any object that is not a tensor, a
number, a string, a bool, None, or a list / tuple / dict of those, so a crafted file (a planted checkpoint, a
`pretrain.weights` given by someone else) is refused before it can run anything. numpy arrays travel as tensors.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alctl.errors import UserError
from alctl.safe_text import terminal


def save(path: Path, payload: dict[str, Any]) -> None:
    """torch.save a plain dict to a temporary sibling, then rename: a checkpoint is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    torch.save(payload, tmp)
    tmp.replace(path)


def load(path: Path, what: str, device: torch.device | str = "cpu", field: str = "") -> dict[str, Any]:
    """A plain dict saved by `save` (or `alctl pretrain`), loaded with weights_only=True onto `device`.

    A missing file, a file that is not a torch file, or one that holds anything but tensors, numbers, strings
    and containers of them (a pickled callable, say) is a UserError naming the file (and the manifest `field`
    that gave it, when one did); the file's code never runs."""
    where = f"{field}: {path}" if field else str(path)
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{where}: not found") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError) as exc:
        reason = "it holds objects other than tensors and numbers" if isinstance(exc, pickle.UnpicklingError) else (
            type(exc).__name__)
        raise UserError(f"{where}: not {what} ({reason}); refused without running it") from None
    if not isinstance(payload, dict):
        raise UserError(f"{where}: not {what} (a {type(payload).__name__}, not a mapping)")
    return Payload(payload, where, what)


class Payload(dict[str, Any]):
    """A loaded checkpoint's dict: reading an entry it lacks is a UserError naming the file, not a KeyError."""

    def __init__(self, entries: dict[str, Any], where: str, what: str) -> None:
        """The entries of the file `where` (named in messages as holding `what`)."""
        super().__init__(entries)
        self.where, self.what = where, what

    def __missing__(self, key: str) -> Any:
        """Refuse the file: it has no entry `key`."""
        raise UserError(f"{self.where}: not {self.what} (no {key!r} entry); it is damaged or from another program")


def refusal(where: str | Path, what: str, problem: str) -> UserError:
    """The UserError refusing the file `where` as `what` because of `problem` (one line)."""
    return UserError(f"{where}: not usable as {what}: {problem}")


@contextmanager
def reading(where: str | Path, what: str) -> Iterator[None]:
    """Restore state from the file `where`: a KeyError, TypeError, ValueError, IndexError, AttributeError or
    RuntimeError while doing so (an entry of the wrong kind or shape) is a UserError naming the file."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        detail = terminal(f"{type(exc).__name__}: {first}" if first else type(exc).__name__, limit=200)
        raise refusal(where, what, f"an entry does not fit ({detail}); it is damaged or from another version") from None


def nonfinite_entry(tensors: Mapping[str, Any]) -> str | None:
    """The name of the first floating-point tensor holding NaN or an infinity among `tensors`; None when all
    are finite."""
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
            if not bool(torch.isfinite(value).all()):
                return str(name)
    return None


def weights_problem(module: nn.Module, state: object, entry: str = "model") -> str | None:
    """Why `state` (the file's `entry`) cannot be `module`'s weights: not a mapping, a missing or unexpected
    entry, a value that is not a tensor, another shape, NaN or infinite values; None when it fits."""
    if not isinstance(state, Mapping):
        return f"its {entry!r} entry is a {type(state).__name__}, not a mapping of weights"
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {terminal(repr(unexpected[0]), limit=80)}"
        return (f"its {entry!r} weights do not match the model ({len(missing)} missing, {len(unexpected)} unexpected;"
                f" first {first})")
    for key, mine in own.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            return f"{entry} weight {key!r} is a {type(value).__name__}, not a tensor"
        if tuple(value.shape) != tuple(mine.shape):
            return f"{entry} weight {key!r} has shape {tuple(value.shape)}, the model needs {tuple(mine.shape)}"
    bad = nonfinite_entry(state)
    if bad is not None:
        return f"{entry} weight {bad!r} holds NaN or infinite values"
    return None


def load_weights(module: nn.Module, state: object, where: str | Path, what: str, entry: str = "model") -> None:
    """Load `state` (the file's `entry`) into `module` strictly; a UserError naming the file and what is wrong
    (`weights_problem`) when it does not fit."""
    problem = weights_problem(module, state, entry)
    if problem is not None:
        raise refusal(where, what, problem)
    assert isinstance(state, Mapping)
    with reading(where, what):
        module.load_state_dict(state)


def arrays_to_tensors(arrays: dict[str, np.ndarray | None]) -> dict[str, torch.Tensor | None]:
    """numpy arrays (or None) as tensors for a checkpoint (bit-exact; `tensors_to_arrays` reverses it)."""
    return {k: None if v is None else torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def tensors_to_arrays(tensors: dict[str, torch.Tensor | None]) -> dict[str, np.ndarray | None]:
    """Tensors (or None) read from a checkpoint back as numpy arrays."""
    return {k: None if v is None else v.cpu().numpy() for k, v in tensors.items()}


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """Global torch RNG states (dropout) to checkpoint."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore global torch RNG states saved by `rng_states`."""
    torch.set_rng_state(states["cpu"].cpu())
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"].cpu(), device)
