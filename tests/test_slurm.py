"""A real one-node Slurm on this machine: `alctl submit --to slurm --run` runs every task of a tiny sweep, and a
task warned of its time limit checkpoints, requeues itself and resumes.

The module fixture installs slurm-wlm and munge with apt-get when slurmctld is absent, configures them as
shared/notes/slurm-localhost.md describes (slurm.conf in a temporary directory, SLURM_CONF for the clients),
starts munged (unless one already answers), slurmctld and slurmd, and stops exactly the daemons it started by
the pids in their pid files. It skips only when it cannot be root; any other failure fails loudly with logs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from alctl import config as mf

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[1]
ALCTL = Path(os.path.abspath(sys.executable)).parent / "alctl"
MUNGE_DIRS = ("/etc/munge", "/var/log/munge", "/run/munge", "/var/lib/munge")
MUNGE_PID = Path("/run/munge/munged.pid")
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
JOB_TIMEOUT_S = 600


def _run(argv: list[str], timeout: float = 120, env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output, never raising on a non-zero exit."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False, **kw)


def _tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file (or why there are none)."""
    if not path.is_file():
        return f"--- {path}: absent"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- {path} (last {len(text)} lines)\n" + "\n".join(text)


def _free_port() -> int:
    """A TCP port free right now on this machine (keeps clear of another Slurm on the default ports)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    """True while a process exists (and is not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _stop(pidfile: Path) -> None:
    """Stop the daemon whose pid is in `pidfile`: SIGTERM, then SIGKILL after 15 s."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _install() -> None:
    """apt-get install slurm-wlm and munge (noninteractive); fails the test with apt's output on error."""
    env = {**os.environ, **APT_ENV}
    update = _run(["apt-get", "update"], timeout=600, env=env)
    install = _run(["apt-get", "install", "-y", "--no-install-recommends", "slurm-wlm", "munge"], timeout=900, env=env)
    if install.returncode != 0 or shutil.which("slurmctld") is None:
        pytest.fail(
            "could not install slurm-wlm and munge with apt-get:\n"
            + (update.stdout + update.stderr)[-2000:] + "\n" + (install.stdout + install.stderr)[-4000:]
        )


def _munge_works() -> bool:
    """True when a running munged answers (munge -n | unmunge)."""
    cred = _run(["munge", "-n"], timeout=20)
    return cred.returncode == 0 and _run(["unmunge"], timeout=20, input=cred.stdout).returncode == 0


def _start_munge(logs: Path) -> bool:
    """Start munged as the notes describe unless one already answers; True when this fixture started it."""
    if _munge_works():
        return False
    for d in MUNGE_DIRS:
        Path(d).mkdir(parents=True, exist_ok=True)
    key = Path("/etc/munge/munge.key")
    if not key.is_file():
        made = _run(["mungekey", "-c"], timeout=60)
        if made.returncode != 0:
            pytest.fail(f"mungekey -c failed: {made.stderr.strip()}")
    _run(["chown", "-R", "munge:munge", *MUNGE_DIRS])
    key.chmod(0o400)
    with open(logs / "munged.start.log", "w") as out:
        started = subprocess.run(["munged", "--force"], stdout=out, stderr=subprocess.STDOUT, timeout=60, check=False)
    deadline = time.monotonic() + 20
    while not _munge_works():
        if time.monotonic() > deadline:
            pytest.fail(f"munged did not start (exit {started.returncode})\n{_tail(logs / 'munged.start.log')}\n"
                        f"{_tail(Path('/var/log/munge/munged.log'))}")
        time.sleep(0.3)
    return True


def _slurm_conf(root: Path) -> str:
    """The one-node slurm.conf of the notes, every path under `root`, on free ports."""
    host = socket.gethostname().split(".")[0]
    total_mib = next(int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal:"))
    return "\n".join([
        "ClusterName=local",
        f"SlurmctldHost={host}",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        # a requeued job waits cred_expire + 1 s before it may start again (default 120 s); 20 s keeps the
        # requeue test short without forcing an early start, which can race the old credential's revocation
        "AuthInfo=cred_expire=20",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/log/slurmctld.log",
        f"SlurmdLogFile={root}/log/slurmd.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "ReturnToService=2",
        "MpiDefault=none",
        f"NodeName={host} CPUs={os.cpu_count() or 1} RealMemory={int(total_mib * 0.9)} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def _daemon_logs(root: Path) -> str:
    """slurmctld / slurmd / munged logs for a failure message."""
    return "\n".join(_tail(p) for p in (root / "log/slurmctld.log", root / "log/slurmd.log",
                                        root / "log/slurmctld.start.log", root / "log/slurmd.start.log",
                                        Path("/var/log/munge/munged.log")))


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A running one-node Slurm; yields the environment (SLURM_CONF set) for client commands and alctl."""
    if os.geteuid() != 0:
        pytest.skip("the real Slurm test needs root (to install and start munged, slurmctld and slurmd)")
    started = time.monotonic()
    if shutil.which("slurmctld") is None:
        _install()
    install_s = time.monotonic() - started
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir()
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root))
    env = {**os.environ, "SLURM_CONF": str(conf), "OMP_NUM_THREADS": "1"}
    our_munge = False
    try:
        our_munge = _start_munge(root / "log")
        for daemon in ("slurmctld", "slurmd"):
            with open(root / "log" / f"{daemon}.start.log", "w") as out:
                res = subprocess.run([daemon, "-f", str(conf)], stdout=out, stderr=subprocess.STDOUT, env=env,
                                     timeout=60, check=False)
            if res.returncode != 0:
                pytest.fail(f"{daemon} -f {conf} exited {res.returncode}\n{_daemon_logs(root)}")
        deadline = time.monotonic() + 90
        state = ""
        while state != "idle":
            info = _run(["sinfo", "-h", "-N", "-o", "%t"], timeout=30, env=env)
            state = info.stdout.strip()
            if time.monotonic() > deadline:
                pytest.fail(f"the node never became idle (sinfo: {state or info.stderr.strip()!r})\n{_daemon_logs(root)}")
            time.sleep(0.5)
        print(f"\nslurm: install {install_s:.0f} s, up after {time.monotonic() - started:.0f} s", file=sys.stderr)
        yield {**env, "ALCTL_TEST_SLURM_ROOT": str(root)}
    finally:
        _stop(root / "slurmd.pid")
        _stop(root / "slurmctld.pid")
        if our_munge:
            _stop(MUNGE_PID)


def _submit(manifest: Path, slurm: dict[str, str], cwd: Path) -> str:
    """`alctl submit MANIFEST --to slurm --run`; returns the job id it printed."""
    res = _run([str(ALCTL), "submit", str(manifest), "--to", "slurm", "--run"], env=slurm, cwd=cwd)
    root = Path(slurm["ALCTL_TEST_SLURM_ROOT"])
    assert res.returncode == 0, f"alctl submit failed:\n{res.stdout}{res.stderr}\n{_daemon_logs(root)}"
    found = re.search(r"submitted Slurm job (\d+)", res.stdout)
    assert found, res.stdout
    return found.group(1)


def _wait_until_done(job: str, slurm: dict[str, str], deadline: float, log: Path | None = None) -> None:
    """Poll squeue until the job has left the queue (cancelling it and failing with the logs past the deadline)."""
    while True:
        queue = _run(["squeue", "-h", "-j", job, "-o", "%T %r"], timeout=30, env=slurm)
        if (queue.returncode == 0 and not queue.stdout.strip()) or "Invalid job id" in queue.stderr:
            return  # done (or already purged from the controller)
        if time.monotonic() > deadline:
            _run(["scancel", job], timeout=30, env=slurm)
            root = Path(slurm["ALCTL_TEST_SLURM_ROOT"])
            pytest.fail(f"job {job} still queued at the deadline:\n{queue.stdout}{queue.stderr}\n"
                        f"{_tail(log) if log else ''}\n{_daemon_logs(root)}")
        time.sleep(1)


def tiny_manifest(tmp: Path) -> Path:
    """manifests/mnist5k.yaml shrunk to seconds per task: 2 strategies x 2 repetitions = 4 tasks of 2 cycles."""
    data = yaml.safe_load((REPO / "manifests" / "mnist5k.yaml").read_text())
    data.update(name="slurm-e2e", output=str(tmp / "runs"), repetitions=2,
                sweep={"active.strategy": ["random", "uncertainty"]})
    data["model"]["width"] = 0.125
    data["train"].update(epochs=2, min_steps=2, rampdown_epochs=3, device="cpu")
    data["active"].update(initial=10, budget=10, cycles=2)
    data["scheduler"] = {"gpus": 0, "cpus": 1, "memory": "2G", "time": "00:15:00"}
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_submit_runs_every_task_on_a_real_slurm(slurm: dict[str, str], tmp_path: Path) -> None:
    root = Path(slurm["ALCTL_TEST_SLURM_ROOT"])
    manifest = tiny_manifest(tmp_path)
    m = mf.load(manifest)
    tasks = mf.tasks(m)
    assert len(tasks) == 4

    job = _submit(manifest, slurm, tmp_path)
    _wait_until_done(job, slurm, time.monotonic() + JOB_TIMEOUT_S)

    run = mf.run_dir(m)
    logs = run / "logs"
    missing = [t for t in tasks if not (run / "tasks" / t.key / "metrics.parquet").is_file()]
    if missing:
        detail = "\n".join(_tail(logs / f"{job}_{t.index}.out", 60) for t in missing)
        pytest.fail(f"array tasks {[t.index for t in missing]} wrote no metrics.parquet:\n{detail}\n{_daemon_logs(root)}")

    report = _run([str(ALCTL), "report", str(run), "--format", "json"], env=slurm, cwd=tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
    rows = json.loads(report.stdout)["rows"]
    settings = {t.key.rsplit("/rep=", 1)[0] for t in tasks}
    got = {(r["setting"], r["cycle"]): r["repetitions"] for r in rows}
    expected = {(s, c): m.repetitions for s in settings for c in range(m.active.cycles)}
    assert got == expected, f"report rows {got} != {expected}"


def test_time_limit_warning_checkpoints_requeues_and_the_task_resumes(slurm: dict[str, str], tmp_path: Path) -> None:
    """SIGUSR1 to the batch shell (what `--signal=B:USR1@S` sends before the time limit): alctl checkpoints and
    exits 3, the script requeues its own array task, and the requeued task resumes and finishes the run."""
    root = Path(slurm["ALCTL_TEST_SLURM_ROOT"])
    manifest = tiny_manifest(tmp_path)
    data = yaml.safe_load(manifest.read_text())
    data.update(name="slurm-requeue", repetitions=1)
    del data["sweep"]
    data["train"].update(epochs=150, rampdown_epochs=151)  # long enough to be signalled mid-training
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    m = mf.load(manifest)
    (task,) = mf.tasks(m)
    tdir = mf.run_dir(m) / "tasks" / task.key

    job = _submit(manifest, slurm, tmp_path)
    log = mf.run_dir(m) / "logs" / f"{job}_0.out"

    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (tdir / "checkpoints" / "train.pt").is_file():  # an epoch of cycle 0 is done: training is under way
        if time.monotonic() > deadline:
            _run(["scancel", job], timeout=30, env=slurm)
            pytest.fail(f"task never checkpointed an epoch\n{_tail(log)}\n{_daemon_logs(root)}")
        time.sleep(0.2)
    sig = _run(["scancel", "--signal=USR1", "--batch", job], timeout=30, env=slurm)
    assert sig.returncode == 0, sig.stderr
    signalled = time.monotonic()

    _wait_until_done(job, slurm, deadline, log=log)
    print(f"\nrequeued task done {time.monotonic() - signalled:.0f} s after the signal", file=sys.stderr)

    text = log.read_text(errors="replace")
    assert "checkpoint saved" in text, _tail(log)  # the first run's exit-3 message, kept by --open-mode=append
    show = _run(["scontrol", "show", "job", job], timeout=30, env=slurm)
    assert re.search(r"\bRestarts=1\b", show.stdout), show.stdout + show.stderr
    metrics = tdir / "metrics.parquet"
    assert metrics.is_file(), f"{_tail(log)}\n{_daemon_logs(root)}"
    report = _run([str(ALCTL), "report", str(mf.run_dir(m)), "--format", "json"], env=slurm, cwd=tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
    rows = json.loads(report.stdout)["rows"]
    assert [r["cycle"] for r in rows] == list(range(m.active.cycles)), rows
