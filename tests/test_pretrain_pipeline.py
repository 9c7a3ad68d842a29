"""+PRE in the pipeline: pre-training once per key, shared by tasks, resumed after SIGTERM, checked on load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from alctl import config as mf
from alctl.cli import app
from tests.checks import kept_and_direct_propagation

runner = CliRunner()
PRE = {
    "repetitions": 2,
    "train": {"epochs": 3, "rampdown_epochs": 4},
    "active": {"cycles": 2},
    "pretrain": {"epochs": 2, "clusters_per_class": 2, "batch_size": 64},
    "sweep": {"pretrain.method": ["none", "deepcluster"]},
}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _alctl(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "alctl.cli", *args], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_cycle_pretrains_once_and_every_pre_task_starts_from_the_encoder(write_manifest, workdir: Path) -> None:
    path = write_manifest(PRE)
    res = runner.invoke(app, ["cycle", str(path)])
    assert res.exit_code == 0, res.output
    pre_dir = workdir / "runs" / "tiny" / "pretrain"
    weights = list(pre_dir.glob("*.pt"))
    assert len(weights) == 1 and not list(pre_dir.glob("*.ckpt.pt"))  # one key, checkpoint removed when done
    epochs = pq.read_table(weights[0].with_suffix(".parquet")).to_pydict()
    assert epochs["epoch"] == [0, 1] and all(0 < v <= 1 for v in epochs["nmi_labels"])
    payload = torch.load(weights[0], weights_only=True)
    assert payload["settings"]["dataset"] == "digits" and not any(k.startswith("classifier") for k in payload["encoder"])
    m = mf.load(path)
    seconds = {}
    for t in mf.tasks(m):
        rows = pq.read_table(mf.run_dir(m) / "tasks" / t.key / "metrics.parquet").to_pydict()
        seconds[t.index] = rows["seconds_pretrain"][0]
        assert rows["variant"][0] == ("+PRE" if t.config.pretrain.method == "deepcluster" else "plain")
    assert seconds[0] == seconds[1] == 0.0 and seconds[2] > 0.0 and seconds[3] == 0.0  # trained once, by task 2
    res = runner.invoke(app, ["report", "--format", "markdown", "--long"])
    assert "| tiny | random | +PRE | 1 | 20 |" in res.output and "| tiny | random | plain | 1 | 20 |" in res.output
    res = runner.invoke(app, ["pretrain", str(path)])
    assert res.exit_code == 0 and "already done" in res.output


@pytest.mark.slow
def test_concurrent_tasks_wait_for_one_pretraining(write_manifest, workdir: Path) -> None:
    path = write_manifest({**PRE, "pretrain": {**PRE["pretrain"], "epochs": 3}})
    procs = [_alctl("cycle", str(path), "--task", str(i), "--cycles", "1", cwd=workdir) for i in (2, 3)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("waiting for it" in o for o in outs) == 1, outs
    metrics = list((workdir / "runs" / "tiny" / "pretrain").glob("*.parquet"))
    assert len(metrics) == 1 and pq.read_table(metrics[0])["epoch"].to_pylist() == [0, 1, 2]  # not duplicated


@pytest.mark.slow
def test_interrupted_pretraining_resumes_from_its_last_epoch(write_manifest, workdir: Path) -> None:
    path = write_manifest({**PRE, "pretrain": {**PRE["pretrain"], "epochs": 40}})
    proc = _alctl("pretrain", str(path), cwd=workdir)
    pre_dir = workdir / "runs" / "tiny" / "pretrain"
    end = time.monotonic() + 120
    while not list(pre_dir.glob("*.ckpt.pt")) and time.monotonic() < end and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 3 and "rerun to resume" in out, out
    done = pq.read_table(next(pre_dir.glob("*.parquet")))["epoch"].to_pylist()
    assert 1 <= len(done) < 40 and done == list(range(len(done)))
    res = runner.invoke(app, ["pretrain", str(path)])
    assert res.exit_code == 0 and f"resuming after epoch {len(done)}/40" in res.output, res.output
    assert pq.read_table(next(pre_dir.glob("*.parquet")))["epoch"].to_pylist() == list(range(40))


def test_encoder_of_another_width_is_an_error_naming_both(write_manifest, workdir: Path) -> None:
    from alctl.models import build_model
    from alctl.pretrain import encoder_state

    enc = workdir / "other.pt"
    torch.save({"encoder": encoder_state(build_model(1, 10, width=0.25)),
                "settings": {"dataset": "digits", "input": [1, 8, 8], "width": 0.25}}, enc)
    path = write_manifest({"repetitions": 1, "active": {"cycles": 1},
                           "pretrain": {"method": "deepcluster", "weights": str(enc)}})
    res = runner.invoke(app, ["cycle", str(path)])
    assert res.exit_code == 2, res.output
    assert "pre-trained with width 0.25, this task has 0.125" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_semi_on_encoder_features_propagates_once_a_cycle_over_the_encoder(write_manifest, workdir: Path) -> None:
    from alctl.engine.cycle import new_model
    from alctl.engine.pretraining import load_encoder_file
    from alctl.engine.steps import pool_features

    path = write_manifest({**PRE, "repetitions": 1, "active": {"cycles": 1}, "sweep": {},
                           "pretrain": {**PRE["pretrain"], "method": "deepcluster"},
                           "semi": {"method": "label-propagation", "features": "encoder", "k": 10, "every": 1,
                                    "phase2_epochs": 3, "batch_size": 32, "labeled_per_batch": 8}})
    res = runner.invoke(app, ["cycle", str(path)])
    assert res.exit_code == 0, res.output

    def encoder_features(task: mf.Task, ds: object) -> torch.Tensor:
        encoder = load_encoder_file(next((workdir / "runs" / "tiny" / "pretrain").glob("*[!t].pt")), task.config, ds)
        model = new_model(task.config, ds, 0, 0, torch.device("cpu"), encoder)
        return pool_features(task.config, ds, model, ds.train_images)

    kept, direct, pseudo = kept_and_direct_propagation(path, encoder_features)
    assert set(pseudo["epoch"]) == {5}  # the last refresh (phase 2's epochs 3-5) is the one kept
    assert kept == direct  # the encoder's graph, not the model's
