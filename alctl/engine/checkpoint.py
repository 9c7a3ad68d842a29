"""Checkpoints as plain dicts of tensors, numbers and strings: written atomically, read with weights_only=True.

Nothing here unpickles code: `torch.load(..., weights_only=True)` refuses any object that is not a tensor, a
number, a string, a bool, None, or a list / tuple / dict of those, so a crafted file (a planted checkpoint, a
`pretrain.weights` given by someone else) is refused before it can run anything. numpy arrays travel as tensors.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alctl.errors import UserError


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
    return payload


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
