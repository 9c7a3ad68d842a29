"""Preemption and concurrency: SIGTERM checkpoints and resumes exactly, SIGKILL never corrupts a table, task locks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from alctl import config as mf
from alctl import store
from alctl.console import silent
from alctl.engine import commands

TINY_RUN = {"repetitions": 1, "train": {"epochs": 6, "rampdown_epochs": 7}, "active": {"cycles": 2}}


def _ui():  # noqa: ANN202
    return silent()


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _start(path: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "alctl.cli", "cycle", str(path), "--task", "0", "--quiet"],
                            cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _task_dir(path: Path) -> Path:
    m = mf.load(path)
    return mf.run_dir(m) / "tasks" / mf.tasks(m)[0].key


def _wait_for(predicate, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}): {proc.stdout.read()}")
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _epochs_done(ckpt: Path) -> int:
    """Epochs recorded in a training checkpoint (0 while there is none, or it is being replaced)."""
    import torch

    try:
        return int(torch.load(ckpt, weights_only=True)["epoch"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0


def _pool(path: Path):
    return pq.read_table(_task_dir(path) / "pool.parquet")


@pytest.mark.slow
def test_sigterm_checkpoints_and_the_rerun_equals_an_uninterrupted_run(write_manifest, workdir: Path) -> None:
    extra = {**TINY_RUN, "active": {"cycles": 2, "strategy": "uncertainty"}}
    straight = write_manifest({**extra, "name": "straight"}, name="straight.yaml")
    commands.cycle_command(straight, None, None, _ui())

    path = write_manifest({**extra, "name": "preempted"}, name="preempted.yaml")
    proc = _start(path, workdir)
    ckpt = _task_dir(path) / "checkpoints" / "train.pt"
    _wait_for(lambda: _epochs_done(ckpt) >= 3, proc=proc)  # half of cycle 0's training is done
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, out
    assert "checkpoint saved" in out and "rerun" in out
    assert ckpt.is_file()
    res = subprocess.run([sys.executable, "-m", "alctl.cli", "cycle", str(path), "--task", "0", "--quiet"],
                         cwd=workdir, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert _pool(path).equals(_pool(straight))
    a = pq.read_table(_task_dir(straight) / "metrics.parquet")["accuracy"].to_pylist()
    resumed = pq.read_table(_task_dir(path) / "metrics.parquet").to_pydict()
    assert a == resumed["accuracy"]
    # the resumed cycle's total includes the training done before the signal: at least the sum of its parts
    parts = zip(*(resumed[f"seconds_{p}"] for p in ("train", "propagate", "eval", "select")))
    for total, part in zip(resumed["seconds_total"], parts):
        assert total >= sum(part) > 0


@pytest.mark.slow
def test_sigkill_at_random_moments_never_corrupts_a_table(write_manifest, workdir: Path) -> None:
    extra = {**TINY_RUN, "active": {"cycles": 3, "strategy": "ceal", "ceal": {"threshold": 0.9}}}
    straight = write_manifest({**extra, "name": "straight"}, name="straight.yaml")
    commands.cycle_command(straight, None, None, _ui())
    path = write_manifest({**extra, "name": "killed"}, name="killed.yaml")
    rng = np.random.default_rng(5)
    for trial in range(4):
        proc = _start(path, workdir)
        _wait_for(lambda: (workdir / "runs" / "killed").is_dir() or proc.poll() is not None)
        time.sleep(float(rng.uniform(0.5, 4.0)))
        proc.kill()
        proc.wait()
        for table in (workdir / "runs" / "killed").rglob("*.parquet"):
            pq.read_table(table)  # raises on a torn file
    res = subprocess.run([sys.executable, "-m", "alctl.cli", "cycle", str(path), "--task", "0", "--quiet"],
                         cwd=workdir, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert pq.read_table(_task_dir(path) / "metrics.parquet")["cycle"].to_pylist() == [0, 1, 2]
    assert _pool(path).equals(_pool(straight))


@pytest.mark.slow
def test_a_second_process_on_the_same_task_exits_2_naming_the_holder(write_manifest, workdir: Path) -> None:
    # long enough that the first process is still training when the second has imported torch and started
    # (SIGTERM ends it below); 30 epochs once finished first on a fast machine
    path = write_manifest({**TINY_RUN, "train": {"epochs": 3000, "rampdown_epochs": 3001}})
    first = _start(path, workdir)
    lock = _task_dir(path) / ".lock"
    _wait_for(lock.is_file, proc=first)
    second = subprocess.run([sys.executable, "-m", "alctl.cli", "cycle", str(path), "--task", "0"],
                            cwd=workdir, env=_env(), capture_output=True, text=True, timeout=120)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"is being run by process {first.pid} on {socket.gethostname()}" in second.stderr
    assert "Traceback" not in second.stderr


def test_a_stale_lock_of_a_dead_process_is_taken_over(write_manifest, workdir: Path) -> None:
    path = write_manifest({**TINY_RUN, "train": {"epochs": 1, "rampdown_epochs": 2}, "active": {"cycles": 1}})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = _task_dir(path) / ".lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "earlier"}))
    assert commands.cycle_command(path, 0, None, _ui()) == 1
    assert not lock.exists()  # released after the run


def test_lock_of_a_live_process_on_another_host_is_respected_until_stale(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "now"}))
    lock = store.Lock(path, "task 0")
    assert lock.try_acquire() == {"pid": 1, "host": "elsewhere", "since": "now"}
    old = time.time() - store.STALE_SECONDS - 5
    os.utime(path, (old, old))  # no heartbeat for longer than STALE_SECONDS
    assert lock.try_acquire() is None and lock.held
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()
