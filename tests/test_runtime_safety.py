"""Runtime safety: task locks taken over once, malformed locks, damaged checkpoints and encoders, diverging training,
and file names that reach the terminal."""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from alctl import store

runner = CliRunner()
CONTENDERS = 3
TRIALS = 60
WIDEN_SECONDS = 0.01  # slept after each staleness check, so contenders reliably overlap between read and take-over


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant(path: Path, raw: bytes, age: float = 60.0) -> None:
    """A lock file holding `raw`, last modified `age` seconds ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    old = time.time() - age
    os.utime(path, (old, old))


def _contender(path: str, trials: int, barrier: Any, results: Any) -> None:
    """One racing process: each trial, try once to take the planted lock; a winner holds it until every contender
    has tried. The staleness check is slowed down (in every version) to widen the read-then-take-over window."""
    from alctl import store as st

    checked = st.Lock.is_stale

    def slow_is_stale(self: st.Lock, owner: dict[str, Any]) -> bool:
        stale = checked(self, owner)
        time.sleep(WIDEN_SECONDS)
        return stale

    st.Lock.is_stale = slow_is_stale  # type: ignore[method-assign]
    for trial in range(trials):
        barrier.wait(timeout=60)  # the dead owner's lock is planted
        lock = st.Lock(Path(path), "race")
        won = lock.try_acquire() is None
        results.put((trial, os.getpid(), won))
        barrier.wait(timeout=60)  # every contender has tried
        if won:
            lock.release()
        barrier.wait(timeout=60)  # released; the next trial's lock may be planted


def test_racing_processes_take_a_dead_owners_lock_over_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "task" / ".lock"
    dead = _dead_pid()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(CONTENDERS + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=_contender, args=(str(path), TRIALS, barrier, results)) for _ in range(CONTENDERS)]
    for p in procs:
        p.start()
    winners: dict[int, list[int]] = {}
    try:
        for trial in range(TRIALS):
            path.unlink(missing_ok=True)
            _plant(path, json.dumps({"pid": dead, "host": socket.gethostname(), "since": "earlier"}).encode())
            barrier.wait(timeout=60)
            barrier.wait(timeout=60)
            for _ in range(CONTENDERS):
                t, pid, won = results.get(timeout=60)
                assert t == trial
                if won:
                    winners.setdefault(trial, []).append(pid)
            barrier.wait(timeout=60)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)
    shared = {t: w for t, w in winners.items() if len(w) > 1}
    example = next(iter(shared.items()), None)
    assert not shared, f"{len(shared)} of {TRIALS} trials had several holders at once, e.g. {example}"
    assert sorted(winners) == list(range(TRIALS))  # and every trial had one


def _malformed(host: str) -> list[bytes]:
    """Lock files no alctl process would leave but a crash, a full disk or a person might."""
    return [
        b"",  # created, never written
        b'{"pid": 12',  # cut short
        b"\xff\xfe\x00\x01binary",
        b"null",
        b"[1, 2, 3]",
        json.dumps({"pid": "abc", "host": host, "since": "x"}).encode(),
        json.dumps({"pid": 0, "host": host, "since": "x"}).encode(),  # pid 0 is a process group, never an owner
        json.dumps({"pid": -1, "host": host, "since": "x"}).encode(),
        json.dumps({"pid": 2**40, "host": host, "since": "x"}).encode(),
        json.dumps({"pid": True, "host": host, "since": "x"}).encode(),
        json.dumps({"pid": 1, "host": ["h"], "since": "x"}).encode(),
        b"[" * 100_000,
    ]


@pytest.mark.parametrize("index", range(12))
def test_an_empty_or_malformed_lock_is_taken_over(tmp_path: Path, index: int) -> None:
    path = tmp_path / ".lock"
    _plant(path, _malformed(socket.gethostname())[index])
    lock = store.Lock(path, "task 0")
    assert lock.try_acquire() is None and lock.held
    assert lock.owner() == json.loads(path.read_text()) and lock.owner()["pid"] == os.getpid()  # written whole
    lock.release()
    assert not path.exists()


def test_a_young_malformed_lock_is_waited_for_briefly_then_taken_over(tmp_path: Path) -> None:
    # an older alctl creates the file, then writes its record: a lock that fills within the grace is respected
    path = tmp_path / ".lock"
    live = {"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}
    _plant(path, b"", age=0.0)
    writer = threading.Timer(0.2, lambda: path.write_text(json.dumps(live)))
    writer.start()
    try:
        assert store.Lock(path, "task 0").try_acquire() == live
    finally:
        writer.join()
    # one that stays empty is taken over once the grace is over, not forever refused
    _plant(path, b"", age=0.0)
    lock = store.Lock(path, "task 0")
    started = time.monotonic()
    assert lock.try_acquire() is None and lock.held
    assert time.monotonic() - started < 5.0
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def test_an_empty_task_lock_does_not_block_the_cycle(write_manifest, workdir: Path) -> None:
    from alctl import config as mf

    path = write_manifest({"repetitions": 1, "train": {"epochs": 1, "rampdown_epochs": 2}, "active": {"cycles": 2}})
    m = mf.load(path)
    lock = mf.run_dir(m) / "tasks" / mf.tasks(m)[0].key / ".lock"
    _plant(lock, b"")
    res = runner.invoke(app_(), ["cycle", str(path), "--cycles", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert not lock.exists()  # taken over, released after the run
    _plant(lock, b"[1, 2]")  # `report` reads the owner of an unfinished task: a malformed lock runs nothing
    res = runner.invoke(app_(), ["report"])
    assert res.exit_code == 2 and res.output == "error: runs/tiny: no finished task yet; 1 tasks not finished\n"
    from alctl.report import task_statuses

    assert [s.state for s in task_statuses(mf.run_dir(m)) or []] == ["stopped"]


def app_() -> Any:
    """The CLI application (imported late: the lock race's processes import this module, and need only `store`)."""
    from alctl.cli import app

    return app


# ----------------------------------------------------------------------------- checkpoints and encoders

def _error_line(output: str) -> str:
    """The one line a refused command printed (exactly one, starting with error:)."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def _first_float(state: dict[str, Any]) -> str:
    """The name of the first floating-point tensor of a state dict."""
    return next(k for k, v in state.items() if v.is_floating_point())


def test_a_damaged_training_checkpoint_is_refused_naming_the_file(write_manifest, workdir: Path) -> None:
    import torch

    from alctl import config as mf
    from alctl.console import silent
    from alctl.engine.cycle import run_task
    from alctl.errors import Preempted

    path = write_manifest({"repetitions": 1, "train": {"epochs": 2, "rampdown_epochs": 3}, "active": {"cycles": 1}})
    task = mf.tasks(mf.load(path))[0]
    with pytest.raises(Preempted):  # stopped after its first step: checkpoints/train.pt of cycle 0
        run_task(task, silent(), path, stop=lambda: True)
    tdir = mf.run_dir(task.config) / "tasks" / task.key
    ckpt_path = tdir / "checkpoints" / "train.pt"
    genuine = torch.load(ckpt_path, weights_only=True)
    name = _first_float(genuine["model"])

    def missing_weight(c: dict[str, Any]) -> None:
        del c["model"][name]

    def wrong_shape(c: dict[str, Any]) -> None:
        c["model"][name] = torch.zeros(3)

    def nan_weight(c: dict[str, Any]) -> None:
        c["model"][name] = torch.full_like(c["model"][name], float("nan"))

    def no_optimizer(c: dict[str, Any]) -> None:
        del c["optimizer"]

    def bad_targets(c: dict[str, Any]) -> None:
        c["targets"] = {"labeled_pos": 3}

    cases = [
        (missing_weight, f"'model' weights do not match the model (1 missing, 0 unexpected; first missing {name!r})"),
        (wrong_shape, f"model weight {name!r} has shape (3,), the model needs"),
        (nan_weight, f"model weight {name!r} holds NaN or infinite values"),
        (no_optimizer, "(no 'optimizer' entry)"),
        (bad_targets, "an entry does not fit (AttributeError"),
    ]
    for damage, expected in cases:
        damaged = torch.load(ckpt_path, weights_only=True)
        damage(damaged)
        torch.save(damaged, ckpt_path)
        before = ckpt_path.read_bytes()
        res = runner.invoke(app_(), ["cycle", str(path), "--quiet"])
        assert res.exit_code == 2, (damage.__name__, res.output)
        line = _error_line(res.output)
        assert line.startswith(f"error: {ckpt_path}: ") and expected in line, line
        assert ckpt_path.read_bytes() == before  # nothing lost: the user decides
        assert not (tdir / "metrics.parquet").exists()
        torch.save(genuine, ckpt_path)


def test_a_damaged_model_checkpoint_is_refused_naming_the_file(write_manifest, workdir: Path) -> None:
    import torch

    path = write_manifest({"repetitions": 1, "train": {"epochs": 1, "rampdown_epochs": 2}, "active": {"cycles": 1}})
    res = runner.invoke(app_(), ["cycle", str(path), "--quiet"])
    assert res.exit_code == 0, res.output
    model_pt = next((workdir / "runs").glob("tiny/tasks/**/checkpoints/model.pt"))
    genuine = torch.load(model_pt, weights_only=True)
    name = _first_float(genuine["model"])
    for change, expected in [
        ({"model": {k: v for k, v in genuine["model"].items() if k != name}}, f"first missing {name!r}"),
        ({"model": {**genuine["model"], name: genuine["model"][name] * float("inf")}},
         f"model weight {name!r} holds NaN or infinite values"),
        ({"model": {**genuine["model"], name: "weights"}}, f"model weight {name!r} is a str, not a tensor"),
        ({"model": [1, 2]}, "its 'model' entry is a list, not a mapping of weights"),
    ]:
        torch.save({**genuine, **change}, model_pt)
        res = runner.invoke(app_(), ["select", str(path)])
        assert res.exit_code == 2, res.output
        line = _error_line(res.output)
        assert line.startswith(f"error: {model_pt.relative_to(workdir)}: not usable as an alctl model checkpoint: ")
        assert expected in line, line
    torch.save({k: v for k, v in genuine.items() if k != "cycle"}, model_pt)
    res = runner.invoke(app_(), ["select", str(path)])
    assert res.exit_code == 2 and "(no 'cycle' entry)" in _error_line(res.output), res.output


def _pretrain_manifest(write_manifest: Any, extra: dict[str, Any] | None = None) -> Path:
    """A one-task +PRE digits manifest (two DeepCluster epochs), pretrain settings overridden by `extra`."""
    return write_manifest({"repetitions": 1, "train": {"epochs": 1, "rampdown_epochs": 2}, "active": {"cycles": 1},
                           "pretrain": {"method": "deepcluster", "epochs": 2, "clusters_per_class": 2,
                                        "batch_size": 64, **(extra or {})}})


def _pretrain_paths(path: Path) -> dict[str, Path]:
    """The files of the manifest's one pre-training under runs/<name>/pretrain/."""
    from alctl import config as mf
    from alctl.engine.pretraining import pretrain_key, pretrain_paths
    from alctl.engine.workspace import dataset_for

    config = mf.tasks(mf.load(path))[0].config
    return pretrain_paths(config, pretrain_key(config, dataset_for(config)))


def test_a_damaged_encoder_file_is_refused_naming_the_file(write_manifest, workdir: Path) -> None:
    import torch

    from alctl.models import build_model
    from alctl.pretrain import encoder_state

    path = _pretrain_manifest(write_manifest)
    weights = _pretrain_paths(path)["weights"]
    weights.parent.mkdir(parents=True)
    encoder = encoder_state(build_model(1, 10, width=0.125))
    name = _first_float(encoder)
    settings = {"dataset": "digits", "input": [1, 8, 8], "width": 0.125}
    for bad, expected in [
        ({**encoder, name: torch.full_like(encoder[name], float("nan"))}, f"encoder weight {name!r} holds NaN"),
        ({k: v for k, v in encoder.items() if k != name}, f"first missing: {name!r}"),
        ({**encoder, name: 7}, f"encoder weight {name!r} is a int, not a tensor"),
    ]:
        torch.save({"encoder": bad, "settings": settings}, weights)
        before = weights.read_bytes()
        res = runner.invoke(app_(), ["cycle", str(path), "--quiet"])
        assert res.exit_code == 2, res.output
        line = _error_line(res.output)
        assert line.startswith(f"error: pretrain.weights: {weights}: not usable as an alctl"
                               " encoder file: ") and expected in line, line
        assert weights.read_bytes() == before


def test_a_damaged_pretraining_checkpoint_is_refused_naming_the_file(write_manifest, workdir: Path) -> None:
    import torch

    path = _pretrain_manifest(write_manifest)
    ckpt = _pretrain_paths(path)["checkpoint"]
    ckpt.parent.mkdir(parents=True)
    torch.save({"model": {"conv.weight": torch.zeros(2)}, "state": {}}, ckpt)
    res = runner.invoke(app_(), ["pretrain", str(path), "--quiet"])
    assert res.exit_code == 2, res.output
    line = _error_line(res.output)
    assert line.startswith(f"error: {ckpt}: not usable as an alctl pre-training checkpoint: its"
                           " 'model' weights do not match the model"), line


# ----------------------------------------------------------------------------- diverging training

def test_a_diverging_training_stops_the_task_naming_cycle_and_epoch(write_manifest, workdir: Path) -> None:
    path = write_manifest({"repetitions": 1, "train": {"epochs": 3, "rampdown_epochs": 4, "lr": 1e30},
                           "active": {"cycles": 2}})
    res = runner.invoke(app_(), ["cycle", str(path), "--quiet"])
    assert res.exit_code == 1, res.output
    line = _error_line(res.output)
    assert line.startswith("error: task 0 (") and " cycle 0: training diverged at epoch " in line, line
    assert "became NaN or infinite; lower train.lr (now 1e+30)" in line, line
    assert list((workdir / "runs").glob("tiny/tasks/**/pool.parquet"))  # the task started
    assert not list((workdir / "runs").glob("tiny/tasks/**/metrics.parquet"))  # no row for that cycle


def test_a_diverging_pretraining_stops_naming_the_epoch(write_manifest, workdir: Path) -> None:
    path = _pretrain_manifest(write_manifest, {"lr": 1e30})
    paths = _pretrain_paths(path)
    res = runner.invoke(app_(), ["pretrain", str(path), "--quiet"])
    assert res.exit_code == 1, res.output
    line = _error_line(res.output)
    assert line.startswith(f"error: pre-training {paths['weights'].stem}: training diverged at epoch 1/2: the "), line
    assert line.endswith("became NaN or infinite; lower pretrain.lr (now 1e+30)"), line
    assert not paths["weights"].exists() and not paths["checkpoint"].exists()


# ----------------------------------------------------------------------------- the terminal

def test_a_file_name_with_escape_sequences_reaches_the_terminal_escaped(workdir: Path) -> None:
    import numpy as np
    import yaml
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images, labels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8), bunch.target
    root = workdir / "images"
    for i in range(60):
        (root / "pool").mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(root / "pool" / f"img{i:03d}.png")
    for digit in range(10):
        i = 100 + int(np.flatnonzero(labels[100:] == digit)[0])
        (root / "labeled" / str(digit)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(root / "labeled" / str(digit) / f"seed{i}.png")
    hostile = "bad\x1b]0;pwned\x07\nname.png"
    (root / "pool" / hostile).write_bytes(b"")
    manifest = workdir / "folder.yaml"
    manifest.write_text(yaml.safe_dump({
        "name": "folder", "seed": 0, "repetitions": 1,
        "dataset": {"name": "imagefolder", "root": "images", "pool": "pool", "labeled": "labeled", "image_size": 8,
                    "channels": 1},
        "model": {"width": 0.125},
        "train": {"epochs": 1, "batch_size": 16, "min_steps": 2, "lr": 0.05, "rampdown_epochs": 2, "device": "cpu"},
        "active": {"budget": 5, "cycles": 2, "strategy": "random", "oracle": "human"},
    }))
    res = runner.invoke(app_(), ["cycle", str(manifest), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\x07" not in res.output, ascii(res.output)
    warnings = [line for line in res.output.splitlines() if "skipped unreadable image" in line]
    expected = "warning: skipped unreadable image pool/bad\\x1b]0;pwned\\x07\\nname.png: empty file (0 bytes)"
    assert warnings == [expected], ascii(res.output)


def test_an_error_naming_a_hostile_path_is_one_escaped_line(write_manifest, workdir: Path) -> None:
    path = write_manifest({"repetitions": 1, "active": {"cycles": 1},
                           "pretrain": {"method": "deepcluster", "weights": "enc\x1b[2J\nfake.pt"}})
    res = runner.invoke(app_(), ["cycle", str(path), "--quiet"])
    assert res.exit_code == 2, ascii(res.output)
    assert "\x1b" not in res.output, ascii(res.output)
    line = _error_line(res.output)
    assert "enc\\x1b[2J\\nfake.pt" in line, line
