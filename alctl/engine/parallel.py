"""`alctl cycle --jobs N`: run N tasks at once, each in its own `alctl cycle MANIFEST --task I` process.

Each child holds its task's lock as a sequential run would (a task locked by another live process fails in its
child with exit 2, the others go on). Its output lines reach this process's stdout / stderr as they come, each
prefixed with its task (`[task I] `) unless the line already names it. Preemption (SIGTERM / SIGUSR1) is
forwarded to every running child, which checkpoints and exits 3; no task starts after it. A child inherits
OMP_NUM_THREADS when set, else gets cpu_count // N threads, so that N processes share the CPU cores instead of
each taking all of them. Results do not depend on N: every task draws from its own seeded generators.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from alctl import config as mf
from alctl.console import Ui
from alctl.errors import AlctlError, Preempted, UserError

POLL_SECONDS = 0.2  # how often the parent looks at its children
SCHEDULER_VARS = ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")  # a child's task comes from --task alone


def child_command(manifest_path: str | Path, task: int, cycles: int | None, quiet: bool) -> list[str]:
    """The argv of the child process running one task (this Python, `-m alctl.cli`)."""
    cmd = [sys.executable, "-m", "alctl.cli", "cycle", str(manifest_path), "--task", str(task)]
    if cycles is not None:
        cmd += ["--cycles", str(cycles)]
    if quiet:
        cmd.append("--quiet")
    return cmd


def child_env(jobs: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: the parent's, without the scheduler's task index, with unbuffered Python output
    and OMP_NUM_THREADS = cpu_count // jobs (at least 1) unless already set."""
    env = dict(os.environ if environ is None else environ)
    for var in SCHEDULER_VARS:
        env.pop(var, None)
    env["PYTHONUNBUFFERED"] = "1"
    if not env.get("OMP_NUM_THREADS"):
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, jobs)))
    return env


def prefixed(task: int, line: str) -> str:
    """A child's output line tagged with its task: `[task I] line`, unless it already starts with `[task I `."""
    return line if line.startswith((f"[task {task} ", f"[task {task}]")) else f"[task {task}] {line}"


@dataclass
class _Child:
    """One running task process and the threads copying its output."""

    task: mf.Task
    proc: subprocess.Popen[str]
    readers: list[threading.Thread] = field(default_factory=list)
    signalled: bool = False


class _Printer:
    """Writes whole lines from several threads, one at a time: stdout lines through the Ui's console (so that they
    mix with its progress bar), stderr lines to sys.stderr."""

    def __init__(self, ui: Ui) -> None:
        """Bind to the console of `ui`."""
        self.ui = ui
        self.lock = threading.Lock()

    def out(self, text: str) -> None:
        """One stdout line (shown even with --quiet: a quiet child prints only what must be seen)."""
        with self.lock:
            self.ui.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def err(self, text: str) -> None:
        """One stderr line."""
        with self.lock:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()


def _pump(stream: IO[str], task: int, write: Callable[[str], None]) -> None:
    """Copy a child's stream line by line, prefixed, until it closes."""
    for line in iter(stream.readline, ""):
        write(prefixed(task, line.rstrip("\n")))
    stream.close()


def _start(task: mf.Task, argv: list[str], env: dict[str, str], printer: _Printer) -> _Child:
    """Start one child and the two threads copying its stdout and stderr."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, env=env)
    child = _Child(task, proc)
    for stream, write in ((proc.stdout, printer.out), (proc.stderr, printer.err)):
        assert stream is not None
        thread = threading.Thread(target=_pump, args=(stream, task.index, write), daemon=True)
        thread.start()
        child.readers.append(thread)
    return child


def exit_error(codes: dict[int, int], total: int) -> AlctlError | None:
    """The error the parent ends with, given each task's exit code: None when all were 0; else a runtime failure
    (1) when any child failed with another code than 2 or 3, a user error (2) when any had bad input (a locked
    task included), else Preempted (3). Its one line lists the tasks that did not finish well."""
    bad = {t: c for t, c in sorted(codes.items()) if c != 0}
    if not bad:
        return None
    listed = ", ".join(f"task {t} (exit {c})" for t, c in bad.items())
    if any(c not in (2, 3) for c in bad.values()):
        return AlctlError(f"--jobs: {len(bad)} of {total} tasks did not finish: {listed}; see their lines above")
    if any(c == 2 for c in bad.values()):
        return UserError(f"--jobs: {len(bad)} of {total} tasks did not finish: {listed}; see their lines above")
    return Preempted(f"--jobs: {listed} stopped on a preemption signal after a checkpoint; rerun to resume")


def run_parallel(
    manifest_path: str | Path,
    tasks: Sequence[mf.Task],
    jobs: int,
    cycles: int | None,
    ui: Ui,
    stop: Callable[[], bool],
    signal_name: Callable[[], str | None] = lambda: None,
    quiet: bool = False,
) -> dict[int, int]:
    """Run `tasks` as child processes, at most `jobs` at a time, in plan order; returns {task index: exit code}.

    `stop()` turning true (a preemption signal) forwards `signal_name()` (default SIGTERM) to the running children
    and starts no further task (those get exit code 3 without running)."""
    if jobs < 1:
        raise UserError(f"--jobs: must be at least 1, got {jobs}")
    env = child_env(jobs)
    printer = _Printer(ui)
    waiting = list(tasks)
    running: list[_Child] = []
    codes: dict[int, int] = {}
    with ui.progress() as prog:
        bar = prog.add_task(f"{len(tasks)} tasks, {jobs} at a time", total=len(tasks))
        try:
            while waiting or running:
                if stop():
                    name = signal_name() or "SIGTERM"
                    for child in running:
                        if not child.signalled and child.proc.poll() is None:
                            child.proc.send_signal(getattr(signal, name, signal.SIGTERM))
                            child.signalled = True
                    for task in waiting:
                        codes[task.index] = Preempted.exit_code
                    waiting = []
                while waiting and len(running) < jobs:
                    task = waiting.pop(0)
                    running.append(_start(task, child_command(manifest_path, task.index, cycles, quiet), env, printer))
                for child in [c for c in running if c.proc.poll() is not None]:
                    for thread in child.readers:
                        thread.join()
                    codes[child.task.index] = int(child.proc.returncode)
                    running.remove(child)
                    prog.advance(bar)
                if running:
                    time.sleep(POLL_SECONDS)
        finally:  # an exception here (KeyboardInterrupt): stop the children as a preemption would, then wait
            for child in running:
                if child.proc.poll() is None:
                    child.proc.send_signal(signal.SIGTERM)
            for child in running:
                child.proc.wait()
                for thread in child.readers:
                    thread.join()
                codes.setdefault(child.task.index, int(child.proc.returncode))
    return codes
