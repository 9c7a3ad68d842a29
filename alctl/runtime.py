"""Seeding, device and precision choice, scheduler environment: the only place randomness is created."""

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


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a manifest's train.precision means on `device`: auto = bf16 on a CUDA device that supports it
    (torch.cuda.is_bf16_supported), else fp32; fp32 / bf16 / fp16 as given where the device runs them (UserError
    naming train.precision otherwise: fp16 off CUDA, bf16 on a GPU without it)."""
    from alctl.errors import UserError

    cuda = device.type == "cuda"
    if precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and not cuda:
        raise UserError(f"train.precision: fp16 needs a CUDA device, but training runs on {device.type} (torch's CPU"
                        " autocast is meant for bf16); use auto, fp32 or bf16")
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError("train.precision: bf16 is not supported by this GPU (torch.cuda.is_bf16_supported() is"
                        " False); use auto, fp32 or fp16")
    if precision not in ("fp32", "bf16", "fp16"):
        raise UserError(f"train.precision: expected auto, fp32, bf16 or fp16, got {precision!r}")
    return precision


def resolve_channels_last(channels_last: str | bool, device: torch.device) -> bool:
    """Whether the network runs in channels-last memory format: auto = on CUDA only; true / false as given."""
    return device.type == "cuda" if channels_last == "auto" else bool(channels_last)


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
