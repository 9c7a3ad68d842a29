"""`alctl submit`: render a job spec, write it atomically and, with --run, hand it to sbatch / kubectl."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alctl import config as mf
from alctl.errors import AlctlError, UserError
from alctl.safe_text import terminal
from alctl.store import atomic_write_bytes
from alctl.jobs.common import resolve_scheduler, time_warnings
from alctl.jobs.k8s import render_k8s
from alctl.jobs.slurm import render_slurm

TARGETS = ("slurm", "k8s")
SUBMIT_TIMEOUT_S = 120


@dataclass(frozen=True)
class SubmitResult:
    """What `submit_command` did: the spec written and, with --run, the scheduler's answer."""

    target: str
    path: Path
    tasks: int
    job_id: str | None = None
    applied: str | None = None
    warnings: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """Human-readable report lines for the CLI."""
        kind = "Slurm job array" if self.target == "slurm" else "Kubernetes Indexed Job"
        out = [f"wrote {terminal(self.path)}: {kind} of {self.tasks} task{'s' if self.tasks != 1 else ''}"]
        if self.job_id is not None:
            out.append(f"submitted Slurm job {self.job_id}")
        if self.applied:
            out.extend(terminal(line) for line in self.applied.splitlines() if line.strip())
        return out


def default_executable() -> list[str]:
    """The alctl command the user is running: the venv's bin/alctl beside this Python, else PATH, else `python -m`."""
    beside = Path(os.path.abspath(sys.executable)).parent / "alctl"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("alctl")
    if found:
        return [os.path.abspath(found)]
    return [os.path.abspath(sys.executable), "-m", "alctl.cli"]


def _one_line(text: str, limit: int = 400) -> str:
    """Collapse a tool's output to one line (for an error message)."""
    line = "; ".join(part.strip() for part in text.splitlines() if part.strip()) or "no output"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _manifest_in_workdir(path: Path, workdir: Path) -> str:
    """The manifest path as the job should name it: relative to the working directory when inside it."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(os.path.abspath(workdir)).as_posix()
    except ValueError:
        return absolute.as_posix()


def _run_tool(argv: list[str], workdir: Path, tool: str) -> str:
    """Run a scheduler client; its failure is a user error quoting its stderr on one line."""
    try:
        proc = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=SUBMIT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise AlctlError(f"{tool}: no answer within {SUBMIT_TIMEOUT_S} s ({shlex.join(argv)})") from None
    if proc.returncode != 0:
        raise UserError(f"{tool} failed (exit {proc.returncode}): {_one_line(proc.stderr or proc.stdout)}")
    return proc.stdout


def submit_command(
    manifest_path: str | Path,
    to: str | None,
    *,
    run: bool = False,
    out: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    workdir: Path | None = None,
    executable: Sequence[str] | None = None,
) -> SubmitResult:
    """`alctl submit`: render the job spec, write it atomically and, with `run`, hand it to sbatch / kubectl."""
    if to not in TARGETS:
        shown = "missing" if to is None else repr(to)
        raise UserError(f"--to: {shown}; choose one of {', '.join(TARGETS)}")
    m = mf.load(manifest_path)
    sched = resolve_scheduler(m, overrides)
    workdir = Path(os.path.abspath(workdir or Path.cwd()))
    run_path = mf.run_dir(m)
    if to == "slurm":
        text = render_slurm(
            m, _manifest_in_workdir(Path(manifest_path), workdir), executable or default_executable(),
            workdir.as_posix(), sched,
        )
        path = out or run_path / "jobs" / "slurm.sbatch"
        mode = 0o755
    else:
        manifest_file = Path(manifest_path)
        text = render_k8s(m, workdir.as_posix(), sched, (manifest_file.name, mf.to_yaml(m)))  # resolved: no extends
        path = out or run_path / "jobs" / "k8s.yaml"
        mode = 0o644
    target = path if path.is_absolute() else workdir / path
    if target.is_dir():
        raise UserError(f"--out: {path} is a directory; give a file name")
    atomic_write_bytes(target, text.encode())
    os.chmod(target, mode)
    n = len(mf.tasks(m))
    warnings = time_warnings(m, sched)
    if to == "slurm":
        (workdir / run_path / "logs").mkdir(parents=True, exist_ok=True)  # Slurm does not create log directories
    if not run:
        return SubmitResult(to, path, n, warnings=warnings)
    if to == "slurm":
        sbatch = shutil.which("sbatch")
        if sbatch is None:
            raise UserError(f"--run: sbatch not found on PATH; the script is at {path}: run `sbatch {path}` on a Slurm login node")
        answer = _run_tool([sbatch, "--parsable", str(target)], workdir, "sbatch").strip()
        job_id = answer.split(";")[0].strip()
        if not job_id:
            raise AlctlError(f"sbatch printed no job id for {path}")
        return SubmitResult(to, path, n, job_id=job_id, warnings=warnings)
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise UserError(f"--run: kubectl not found on PATH; the spec is at {path}: run `kubectl apply -f {path}`")
    applied = _run_tool([kubectl, "apply", "-f", str(target)], workdir, "kubectl apply")
    return SubmitResult(to, path, n, applied=applied, warnings=warnings)
