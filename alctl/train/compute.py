"""How forward passes run (`Compute`): autocast precision, channels-last memory format, torch.compile.

Whatever a `Compute` says, probabilities and features come back float32 and the weights stay float32.
`COMPILE_BACKEND` is read here at call time (patch `alctl.train.compute.COMPILE_BACKEND` to change it).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn


PRECISIONS = ("fp32", "bf16", "fp16")  # resolved precisions (the manifest's auto picks one of them)
_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_BACKEND = "inductor"  # torch.compile's backend (tests use a lighter one)
_COMPILED_ATTR = "_alctl_compiled"  # where Compute.forward keeps a model's compiled wrapper


@dataclass(frozen=True)
class Compute:
    """How forward passes run: the autocast precision (fp32 = no autocast), channels-last memory format of the
    network and its input batches, and torch.compile. The default is plain float32 NCHW eager PyTorch."""

    precision: str = "fp32"  # one of PRECISIONS
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        """Reject an unknown precision (ValueError)."""
        if self.precision not in PRECISIONS:
            raise ValueError(f"Compute: precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for fp32 (no autocast)."""
        return _DTYPES[self.precision]

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[object]:
        """A context running the forward pass (and loss) on `device` in this precision; a no-op for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model in this memory format (in place; parameters keep their identity): channels-last when on."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """A float batch [n, C, H, W] in this memory format (the same tensor when channels-last is off)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, model: nn.Module) -> nn.Module:
        """What to call for a forward pass: the model, or (compile) its torch.compile'd wrapper, made once per
        model and kept in the model's own __dict__ (not a submodule: no state-dict key; freed with the model), which
        shares the model's parameters and modes."""
        if not self.compile:
            return model
        compiled = model.__dict__.get(_COMPILED_ATTR)
        if compiled is None:
            compiled = torch.compile(model, backend=COMPILE_BACKEND)
            model.__dict__[_COMPILED_ATTR] = compiled
        return compiled


FP32 = Compute()
