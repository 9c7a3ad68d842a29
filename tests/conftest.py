"""Shared fixtures: tiny manifests on scikit-learn's digits, run in a temporary working directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import os
import time

import pytest
import torch
import yaml

torch.set_num_threads(1)

BUDGET_ENV = "ALCTL_TEST_BUDGET_S"  # set (seconds) by `make test-fast`: a session that takes longer fails
_STARTED = time.monotonic()


def over_budget(elapsed: float, budget: str | None) -> str | None:
    """The one-line failure of a session that took `elapsed` seconds against the budget `budget` (the value of
    ALCTL_TEST_BUDGET_S, or None: no budget), or None when within it."""
    if not budget:
        return None
    limit = float(budget)
    if elapsed <= limit:
        return None
    return (f"the session took {elapsed:.0f} s, over its budget of {limit:.0f} s ({BUDGET_ENV}): find the slow"
            " tests with --durations=20 and mark end-to-end ones `slow`")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session (exit status 1) when it ran past ALCTL_TEST_BUDGET_S seconds; xdist workers leave this to
    the controller, which times the whole run."""
    if hasattr(session.config, "workerinput"):
        return
    problem = over_budget(time.monotonic() - _STARTED, os.environ.get(BUDGET_ENV))
    if problem is not None:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"FAILED budget: {problem}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

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
