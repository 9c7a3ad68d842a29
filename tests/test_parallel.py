"""`alctl cycle --jobs N` (several task processes at once) and scheduler.tasks_per_gpu in the Slurm / k8s specs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pyarrow.parquet as pq
import pytest
import yaml

from alctl import jobs
from alctl import config as mf
from alctl.console import silent
from alctl.engine import commands, parallel
from alctl.engine.workspace import select_task, task_dir
from alctl.errors import AlctlError, Preempted, UserError

# Two repetitions of a model-driven strategy, so that equal tables mean equal training, not just equal seeds.
SMALL = {"repetitions": 2, "train": {"epochs": 4, "min_steps": 3, "rampdown_epochs": 6},
         "active": {"cycles": 2, "strategy": "uncertainty"}}
REPO = Path(__file__).resolve().parents[1]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "alctl.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.mark.slow  # two task processes end to end (about 50 s on 2 cores)
def test_jobs_2_gives_the_tables_of_jobs_1(write_manifest, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the children's thread count = this process's (conftest: 1)
    one = write_manifest({**SMALL, "name": "one"}, name="one.yaml")
    two = write_manifest({**SMALL, "name": "two"}, name="two.yaml")
    assert commands.cycle_command(one, None, None, silent()) == 4
    done = _cli(["cycle", str(two), "--jobs", "2"], workdir)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and all(line.startswith(("[task 0 ", "[task 1 ")) for line in lines), lines
    assert sum("cycle 1:" in line for line in lines) == 2
    m_one, m_two = mf.load(one), mf.load(two)
    for t_one, t_two in zip(mf.tasks(m_one), mf.tasks(m_two)):
        for table in ("pool", "scores"):
            a = pq.read_table(task_dir(t_one) / f"{table}.parquet")
            b = pq.read_table(task_dir(t_two) / f"{table}.parquet")
            assert a.equals(b), (t_one.key, table)
        cols = ["task", "task_key", "cycle", "n_labeled", "n_pseudo", "accuracy", "loss", "manifest_hash"]
        a = pq.read_table(task_dir(t_one) / "metrics.parquet").select(cols)
        b = pq.read_table(task_dir(t_two) / "metrics.parquet").select(cols)
        assert a.equals(b), t_one.key
    # a second run finds nothing to do, and says so once
    assert commands.cycle_command(two, None, None, silent(), jobs=2) == 0


@pytest.mark.slow  # task processes end to end (about 30 s on 2 cores)
def test_a_task_locked_by_another_process_fails_alone_with_exit_2(write_manifest, workdir: Path) -> None:
    path = write_manifest({**SMALL, "active": {"cycles": 1, "strategy": "random"}})
    m = mf.load(path)
    locked = task_dir(mf.tasks(m)[1]) / ".lock"
    locked.parent.mkdir(parents=True)
    locked.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}))
    done = _cli(["cycle", str(path), "--jobs", "2", "--quiet"], workdir)
    assert done.returncode == 2
    err = done.stderr.splitlines()
    assert any(line.startswith("[task 1] error: task 1 ") and "is being run by process" in line for line in err), err
    assert err[-1].startswith("error: --jobs: 1 of 2 tasks did not finish: task 1 (exit 2)")
    assert pq.read_table(task_dir(mf.tasks(m)[0]) / "metrics.parquet").num_rows == 1  # task 0 ran
    assert locked.is_file()  # the other process's lock is left alone


def test_exit_code_is_the_worst_childs() -> None:
    assert parallel.exit_error({0: 0, 1: 0}, 2) is None
    assert type(parallel.exit_error({0: 0, 1: 3}, 2)) is Preempted
    assert type(parallel.exit_error({0: 2, 1: 3}, 2)) is UserError
    err = parallel.exit_error({0: 2, 1: 1, 2: -9}, 3)
    assert type(err) is AlctlError and err.exit_code == 1
    assert err.problems == ["--jobs: 3 of 3 tasks did not finish: task 0 (exit 2), task 1 (exit 1), task 2 (exit -9);"
                            " see their lines above"]


def test_child_lines_are_prefixed_with_their_task_once() -> None:
    assert parallel.prefixed(3, "error: boom") == "[task 3] error: boom"
    assert parallel.prefixed(3, "[task 3 strategy=x/rep=0] cycle 0: ...") == "[task 3 strategy=x/rep=0] cycle 0: ..."
    assert parallel.prefixed(3, "[task 31 k] x") == "[task 3] [task 31 k] x"


def test_child_environment_shares_the_cores_and_drops_the_scheduler_index() -> None:
    env = parallel.child_env(2, {"SLURM_ARRAY_TASK_ID": "4", "JOB_COMPLETION_INDEX": "1", "PATH": "/bin"})
    assert "SLURM_ARRAY_TASK_ID" not in env and "JOB_COMPLETION_INDEX" not in env and env["PATH"] == "/bin"
    assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2)) and env["PYTHONUNBUFFERED"] == "1"
    assert parallel.child_env(2, {"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"
    argv = parallel.child_command("m.yaml", 5, 2, True)
    assert argv[1:] == ["-m", "alctl.cli", "cycle", "m.yaml", "--task", "5", "--cycles", "2", "--quiet"]


# --------------------------------------------------------------------------- packing tasks on one GPU


def _packed(n_reps: int = 5, per: int = 2, **sched: object) -> mf.Manifest:
    return mf.parse({"name": "packed", "repetitions": n_reps, "dataset": {"name": "digits"},
                     "scheduler": {"tasks_per_gpu": per, "image": "ghcr.io/example/alctl:0.1.0", **sched}})


def test_a_task_index_selects_a_block_of_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = mf.tasks(_packed())
    assert [t.index for t in select_task(tasks, 0, 2)] == [0, 1]
    assert [t.index for t in select_task(tasks, 2, 2)] == [4]  # the last block may be short
    assert [t.index for t in select_task(tasks, 3, 1)] == [3]
    with pytest.raises(UserError, match=r"--task: index 3 is outside the plan \(0..2, 5 tasks in blocks of 2\)"):
        select_task(tasks, 3, 2)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert [t.index for t in select_task(tasks, None, 2)] == [2, 3]


def test_slurm_packs_tasks_per_gpu_on_each_array_element(tmp_path: Path) -> None:
    m = _packed(max_parallel=4, cpus=4, memory="16G")
    text = jobs.render_slurm(m, "m.yaml", ["/opt/alctl"], "/srv/alctl", m.scheduler.model_copy(update={"image": None}))
    assert "#SBATCH --array=0-2%2\n" in text  # 5 tasks in 3 elements; 4 tasks at once = 2 elements
    assert "#SBATCH --cpus-per-task=8\n" in text and "#SBATCH --mem=32G\n" in text and "--gres=gpu:1" in text
    assert "/opt/alctl cycle m.yaml --quiet --jobs 2 --tasks-per-index 2 &" in text
    assert 'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"' in text
    assert "array index i runs tasks 2i..2i+1 at once on one GPU (3 indexes)" in text
    script = tmp_path / "s.sbatch"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    default = jobs.render_slurm(_packed(per=1), "m.yaml", ["/opt/alctl"], "/srv/alctl")
    assert "--jobs" not in default and "#SBATCH --array=0-4\n" in default


def test_k8s_packs_tasks_per_gpu_on_each_completion_index() -> None:
    m = _packed(max_parallel=4, cpus=4, memory="16G")
    configmap, job = jobs.k8s_objects(m, "/srv/alctl")
    spec = job["spec"]
    assert spec["completions"] == 3 and spec["parallelism"] == 2
    container = spec["template"]["spec"]["containers"][0]
    assert container["args"][-5:] == ["--quiet", "--jobs", "2", "--tasks-per-index", "2"]
    assert container["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 1}
    assert {"name": "OMP_NUM_THREADS", "value": "4"} in container["env"]
    text = jobs.render_k8s(m, "/srv/alctl")
    assert "completion index i runs tasks 2i..2i+1 at once on one GPU" in text
    for obj in yaml.safe_load_all(text):
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)


def test_submit_takes_tasks_per_gpu_from_the_command_line(write_manifest, workdir: Path) -> None:
    path = write_manifest({"repetitions": 3})
    result = jobs.submit_command(path, "slurm", overrides={"tasks_per_gpu": 3}, executable=["/x/alctl"])
    text = (workdir / result.path).read_text()
    assert "#SBATCH --array=0-0\n" in text and "--jobs 3 --tasks-per-index 3" in text
    with pytest.raises(UserError, match="--tasks-per-gpu"):
        jobs.submit_command(path, "slurm", overrides={"tasks_per_gpu": 0}, executable=["/x/alctl"])
