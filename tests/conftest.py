"""Shared fixtures: tiny manifests on scikit-learn's digits, run in a temporary working directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

torch.set_num_threads(1)

TINY: dict[str, Any] = {
    "name": "tiny",
    "output": "runs",
    "seed": 0,
    "repetitions": 2,
    "dataset": {"name": "digits"},
    "model": {"width": 0.125, "l2_features": True},  # the paper's choices pinned (the defaults are auto rules)
    "train": {"epochs": 10, "batch_size": 16, "min_steps": 5, "lr": 0.05, "rampdown_epochs": 12, "translate": 1,
              "flip": False, "device": "cpu"},
    "active": {"initial": 10, "budget": 10, "cycles": 3, "strategy": "random"},
    "semi": {"features": "model"},
}


def deep_update(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge (extra wins), returning a new dict."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary current directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def write_manifest(workdir: Path):
    """Write a tiny digits manifest with overrides; returns its path."""

    def _write(extra: dict[str, Any] | None = None, name: str = "tiny.yaml") -> Path:
        path = workdir / name
        path.write_text(yaml.safe_dump(deep_update(TINY, extra or {})))
        return path

    return _write
