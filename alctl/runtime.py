"""Seeding, device choice and scheduler environment: the only place randomness is created."""

from __future__ import annotations

import os
import zlib

import numpy as np
import torch


def seed_sequence(seed: int, task: int, cycle: int, stream: str) -> np.random.SeedSequence:
    """Seed sequence for one (seed, task, cycle, stream) tuple; stream names the consumer."""
    return np.random.SeedSequence([int(seed), int(task), int(cycle) + 1, zlib.crc32(stream.encode())])


def rng(seed: int, task: int, cycle: int, stream: str) -> np.random.Generator:
    """A numpy generator seeded from (seed, task, cycle, stream)."""
    return np.random.default_rng(seed_sequence(seed, task, cycle, stream))


def torch_generator(seed: int, task: int, cycle: int, stream: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator on `device` seeded from (seed, task, cycle, stream)."""
    value = int(seed_sequence(seed, task, cycle, stream).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
    gen = torch.Generator(device=device)
    gen.manual_seed(value)
    return gen


def seed_torch(seed: int, task: int, cycle: int, stream: str) -> None:
    """Seed torch's global generator (weight initialisation, dropout) from the tuple."""
    value = int(seed_sequence(seed, task, cycle, stream).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
    torch.manual_seed(value)


def choose_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when available, else CPU; `cpu`/`cuda`/`cuda:N` are taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from alctl.errors import UserError

        raise UserError(f"train.device: '{name}' requested but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def scheduler_task_index() -> tuple[int | None, str]:
    """(task index, the variable it came from) from Slurm (SLURM_ARRAY_TASK_ID) or Kubernetes
    (JOB_COMPLETION_INDEX), else (None, "")."""
    for var in ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"):
        value = os.environ.get(var)
        if value not in (None, ""):
            try:
                return int(value), var
            except ValueError:
                from alctl.errors import UserError

                raise UserError(f"{var}={value!r} is not an integer task index") from None
    return None, ""


class Preemption:
    """SIGTERM / SIGUSR1 (what Slurm and Kubernetes send before a kill) set a flag instead of killing at once.

    Use as a context manager around work that checkpoints: call it (or read `requested`) at safe points, save,
    and stop.
    """

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self) -> None:
        """Not yet installed; `requested` is False."""
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum: int, frame: object) -> None:
        """Record the signal (first one wins)."""
        import signal

        if self.requested is None:
            self.requested = signal.Signals(signum).name

    def __call__(self) -> bool:
        """True once a preemption signal arrived."""
        return self.requested is not None

    def __enter__(self) -> "Preemption":
        """Install the handlers (main thread only; elsewhere a no-op)."""
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        """Restore the previous handlers."""
        import signal

        for sig, old in self._previous.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._previous.clear()
