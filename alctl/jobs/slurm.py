"""The Slurm batch script (job array) for a manifest: pure (manifest -> text); each value one word or one directive."""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Sequence

from alctl import config as mf
from alctl.config import memory_parts, time_seconds
from alctl.errors import UserError
from alctl.safe_text import refuse_control, shell_word
from alctl.jobs.common import PREEMPTED_EXIT_CODE, _comment, _host_path, _packed_parallel, packing


def _directive(value: str, what: str) -> str:
    """A value for an #SBATCH line: no control characters and no whitespace (sbatch splits directives on it)."""
    refuse_control(value, what)
    if not value or any(ch.isspace() for ch in value):
        raise UserError(f"{what}: {value!r} contains whitespace, which an #SBATCH line cannot hold; use a value without spaces")
    return value


def _word(value: str, what: str) -> str:
    """`value` as one inert shell word (quoted when needed); control characters are a UserError naming `what`."""
    return shell_word(value, what)


def _container_ref(image: str) -> str:
    """An Apptainer image reference: docker://IMAGE unless already a URI, an absolute path or a .sif file."""
    if "://" in image or image.startswith("/") or image.endswith(".sif"):
        return image
    return f"docker://{image}"


def render_slurm(
    m: mf.Manifest,
    manifest_path: str,
    executable: Sequence[str],
    workdir: str,
    sched: mf.SchedulerConfig | None = None,
) -> str:
    """The sbatch script (text) running one task per array index (scheduler.tasks_per_gpu of them with packing);
    pure: paths are explicit arguments."""
    sched = sched or m.scheduler
    name = _comment(m.name, "name")
    shown_manifest = _comment(manifest_path, "manifest file name")
    n = len(mf.tasks(m))
    per = sched.tasks_per_gpu
    indexes, packed_args = packing(n, sched)
    run = _host_path(str(mf.run_dir(m)), workdir)
    _directive(workdir, "working directory")
    _directive(_host_path(m.output, workdir), "output")
    log = _directive(posixpath.join(run, "logs", "%A_%a.out"), "name")
    at_once = _packed_parallel(sched)
    array = f"0-{indexes - 1}" + (f"%{at_once}" if at_once else "")
    amount, unit = memory_parts(sched.memory)
    amount *= per
    seconds = time_seconds(sched.time)
    directives = [
        f"--job-name=alctl-{re.sub(r'[^A-Za-z0-9_.-]+', '-', name or 'run')}",
        f"--array={array}",
        f"--time={_directive(sched.time.strip(), 'scheduler.time') if seconds is not None else 'UNLIMITED'}",
    ]
    if sched.partition:
        directives.append(f"--partition={_directive(sched.partition, 'scheduler.partition')}")
    directives += [
        "--ntasks=1",
        f"--cpus-per-task={sched.cpus * per}",
        f"--mem={amount}{unit}",
    ]
    if sched.gpus > 0:
        directives.append(f"--gres=gpu:{sched.gpus}")
    directives += [f"--chdir={workdir}", f"--output={log}", "--open-mode=append"]
    if sched.signal_seconds > 0:
        directives.append(f"--signal=B:USR1@{sched.signal_seconds}")
    directives.append("--requeue")

    args = ["cycle", _word(manifest_path, "manifest file name"), "--quiet",
            *(_word(a, "--tasks-per-gpu") for a in packed_args)]
    if sched.image:
        binds = [workdir]
        for path, field in ((m.output, "output"), (m.dataset.root, "dataset.root")):
            host = _host_path(refuse_control(path, field), workdir)
            if not (host == workdir or host.startswith(workdir.rstrip("/") + "/")) and host not in binds:
                binds.append(host)
        runtime_lines = [
            "if command -v apptainer >/dev/null 2>&1; then container=apptainer; else container=singularity; fi",
        ]
        command = ['"$container"', "exec"] + (["--nv"] if sched.gpus > 0 else [])
        command += ["--bind", _word(",".join(binds), "output"), "--pwd", _word(workdir, "working directory")]
        command += [_word(_container_ref(sched.image), "scheduler.image"), "alctl", *args]
        run_line = " ".join(command) + " &"
        runner = _comment(f"the container {sched.image} (alctl inside it)", "scheduler.image")
    else:
        runtime_lines = []
        run_line = " ".join([*(_word(a, "alctl executable") for a in executable), *args]) + " &"
        runner = _comment(shlex.join(executable), "alctl executable")

    what = ("array index i runs task i." if per <= 1 else
            f"array index i runs tasks {per}i..{per}i+{per - 1} at once on one GPU ({indexes} indexes).")
    threads = ('export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"' if per <= 1 else
               f'export OMP_NUM_THREADS="${{OMP_NUM_THREADS:-{sched.cpus}}}"  # per task process')
    lines = [
        "#!/bin/bash",
        f"# Rendered by `alctl submit --to slurm` for run '{name}': {n} tasks, {what}",
        f"# Manifest: {shown_manifest}; runs {runner}. Submit with: sbatch <this file>",
        *(f"#SBATCH {d}" for d in directives),
        "",
        "set -u",
        f"cd {_word(workdir, 'working directory')} || exit 2",
        threads,
        "",
        "# SIGUSR1 (time limit near) and SIGTERM reach this shell: forward them so alctl checkpoints and exits "
        f"{PREEMPTED_EXIT_CODE}.",
        "warned=0",
        'child=""',
        'pending=""',
        'forward() { if [ -n "$child" ]; then kill -s "$1" "$child" 2>/dev/null; else pending="$1"; fi; }',
        "trap 'warned=1; forward USR1' USR1",
        "trap 'forward TERM' TERM",
        "",
        *runtime_lines,
        run_line,
        "child=$!",
        'if [ -n "$pending" ]; then kill -s "$pending" "$child" 2>/dev/null; fi  # signalled before $! was known',
        "while :; do",
        '  wait "$child"',
        "  status=$?",
        '  kill -0 "$child" 2>/dev/null || break  # still alive: wait was interrupted by a signal',
        "done",
        "",
        f"# Exit {PREEMPTED_EXIT_CODE} after the time-limit warning: checkpointed; requeue this array task so it resumes.",
        f'if [ "$status" -eq {PREEMPTED_EXIT_CODE} ] && [ "$warned" -eq 1 ] && [ -n "${{SLURM_ARRAY_JOB_ID:-}}" ] \\',
        "    && command -v scontrol >/dev/null 2>&1; then",
        '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" && exit 0',
        "fi",
        'exit "$status"',
        "",
    ]
    return "\n".join(lines)
