"""Slurm / Kubernetes job specs from a manifest: pure renderers (manifest -> text) and `alctl submit`. One
scheduler index runs one task (or `scheduler.tasks_per_gpu` of them); no value from a manifest, an option or a
file name can change a spec's structure (`_comment`, `_directive`, `_word`, the YAML dumper). How the specs
work: docs/internals.md, Slurm and Kubernetes job specs."""

from __future__ import annotations

import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from alctl import manifest as mf
from alctl import plan
from alctl.manifest import memory_parts, time_seconds
from alctl.errors import AlctlError, UserError
from alctl.safe_text import refuse_control, shell_word, terminal
from alctl.store import atomic_write_bytes

TARGETS = ("slurm", "k8s")
POD_WORKDIR = "/work"
POD_MANIFEST_DIR = "/etc/alctl"
POD_MANIFEST_KEY = "manifest.yaml"
CONTAINER_NAME = "alctl"
PREEMPTED_EXIT_CODE = 3
SUBMIT_TIMEOUT_S = 120

# CLI option names for scheduler fields (error messages name what the user typed).
OPTION_NAMES: dict[str, str] = {
    "partition": "--partition",
    "time": "--time",
    "gpus": "--gpus",
    "cpus": "--cpus",
    "memory": "--memory",
    "image": "--image",
    "max_parallel": "--parallel",
    "namespace": "--namespace",
    "images_per_second": "--images-per-second",
    "tasks_per_gpu": "--tasks-per-gpu",
}



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


def _where(field: str, overridden: set[str]) -> str:
    """Name a scheduler field as the user set it: the CLI option when overridden, else scheduler.<field>."""
    return OPTION_NAMES.get(field, f"scheduler.{field}") if field in overridden else f"scheduler.{field}"


def resolve_scheduler(m: mf.Manifest, overrides: Mapping[str, Any] | None = None) -> mf.SchedulerConfig:
    """The manifest's scheduler section with non-None overrides applied and validated (options win)."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - set(mf.SchedulerConfig.model_fields))
    if unknown:
        raise UserError(*(f"scheduler.{k}: not a scheduler setting" for k in unknown))
    data = m.scheduler.model_dump()
    data.update(given)
    problems: list[str] = []
    reported: set[str] = set()  # fields already named by a problem: the schema's own check is not repeated
    for field, value in data.items():  # every text field ends up in a spec: no newline, escape, ... in any
        if isinstance(value, str):
            try:
                refuse_control(value, _where(field, set(given)))
            except UserError as e:
                problems.extend(e.problems)
                reported.add(field)
    for field, check in (("time", time_seconds), ("memory", memory_parts)):
        if isinstance(data.get(field), str) and field not in reported:
            try:
                check(data[field], _where(field, set(given)))
            except UserError as e:
                problems.extend(e.problems)
                reported.add(field)
    try:
        sched = mf.SchedulerConfig.model_validate(data)
    except ValidationError as err:
        sched = None
        for e in err.errors():
            field = str(e["loc"][0]) if e["loc"] else ""
            if field in reported or (not field and problems):  # said above, naming the option or field
                continue
            where = _where(field, set(given)) if field else "scheduler"
            problems.append(f"{where}: {e['msg']} (got {terminal(repr(e.get('input')), limit=80)})")
    if problems or sched is None:
        raise UserError(*problems)
    return sched


def k8s_name(name: str, limit: int = 40) -> str:
    """A DNS-1123 label made from a run name: lowercase alphanumerics and '-', at most `limit` characters."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:limit].strip("-")
    return label or "run"


def _pod_path(path: str) -> str:
    """Where a manifest path (output, dataset.root) lives inside the pod: absolute as is, else under /work."""
    return posixpath.normpath(path if posixpath.isabs(path) else posixpath.join(POD_WORKDIR, path))


def _host_path(path: str, workdir: str) -> str:
    """The absolute path of a manifest path on the submitting machine."""
    return posixpath.normpath(path if posixpath.isabs(path) else posixpath.join(workdir, path))


def _comment(text: str, what: str) -> str:
    """Text for a header comment line (Slurm script or YAML): `text` unchanged; control characters (a newline
    would end the comment and start a command or a YAML document) are a UserError naming `what`."""
    return refuse_control(str(text), what)


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


def packing(n_tasks: int, sched: mf.SchedulerConfig) -> tuple[int, list[str]]:
    """(scheduler indexes, extra `alctl cycle` arguments) for n_tasks packed scheduler.tasks_per_gpu per index."""
    per = sched.tasks_per_gpu
    if per <= 1:
        return n_tasks, []
    return -(-n_tasks // per), ["--jobs", str(per), "--tasks-per-index", str(per)]


def _packed_parallel(sched: mf.SchedulerConfig) -> int | None:
    """Indexes running at once: max_parallel counts tasks, so max(1, max_parallel // tasks_per_gpu) indexes."""
    return None if sched.max_parallel is None else max(1, sched.max_parallel // sched.tasks_per_gpu)


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


class _LiteralDumper(yaml.SafeDumper):
    """A YAML dumper writing multi-line strings as literal blocks (readable ConfigMap data), no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        """Repeat shared values (labels) instead of writing YAML anchors."""
        return True


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    """Literal block style for multi-line strings, plain otherwise."""
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_LiteralDumper.add_representer(str, _str_representer)


_CONFIG_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")


def configmap_source(m: mf.Manifest, source: tuple[str, str] | None) -> tuple[str, str]:
    """(file name, text) for the ConfigMap: the manifest file as written when its name is a valid key.

    The pod loads the file under the same name, so a manifest without `name:` still gets the run name from
    its file stem; otherwise (no source, or a name a ConfigMap key cannot hold) the resolved manifest is used.
    """
    if source is not None:
        filename, text = source
        if _CONFIG_KEY_RE.fullmatch(filename) and filename not in (".", ".."):
            return filename, text
    return POD_MANIFEST_KEY, mf.to_yaml(m)


def k8s_objects(
    m: mf.Manifest,
    workdir: str,
    sched: mf.SchedulerConfig | None = None,
    source: tuple[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The ConfigMap (manifest file) and the Indexed Job as plain dicts; pure (`source` = file name, text)."""
    sched = sched or m.scheduler
    if not sched.image:
        raise UserError(
            "scheduler.image: a container image is required for --to k8s; set scheduler.image in the manifest or pass --image"
        )
    n, packed_args = packing(len(mf.tasks(m)), sched)  # completion indexes (tasks_per_gpu tasks each)
    per = sched.tasks_per_gpu
    base = k8s_name(m.name)
    job_name = f"alctl-{base}"
    config_name = f"{job_name}-manifest"
    labels = {"app.kubernetes.io/name": "alctl", "app.kubernetes.io/instance": base}
    amount, unit = memory_parts(sched.memory)
    memory = f"{amount * per}{unit}i"
    requests: dict[str, Any] = {"cpu": str(sched.cpus * per), "memory": memory}
    limits: dict[str, Any] = {"cpu": str(sched.cpus * per), "memory": memory}
    if sched.gpus > 0:
        limits["nvidia.com/gpu"] = sched.gpus

    key, text = configmap_source(m, source)
    manifest_file = posixpath.join(POD_MANIFEST_DIR, key)
    mounts: list[dict[str, Any]] = [{"name": "manifest", "mountPath": POD_MANIFEST_DIR, "readOnly": True}]
    volumes: list[dict[str, Any]] = [{"name": "manifest", "configMap": {"name": config_name}}]
    for vol, path, claim in (("runs", m.output, sched.runs_claim), ("data", m.dataset.root, sched.data_claim)):
        mount_path = _pod_path(path)
        if any(mt["mountPath"] == mount_path for mt in mounts):
            continue
        mounts.append({"name": vol, "mountPath": mount_path})
        if claim:
            volumes.append({"name": vol, "persistentVolumeClaim": {"claimName": claim}})
        else:
            volumes.append({"name": vol, "hostPath": {"path": _host_path(path, workdir), "type": "DirectoryOrCreate"}})

    pod_spec: dict[str, Any] = {"restartPolicy": "Never"}
    seconds = time_seconds(sched.time)
    if seconds is not None:
        pod_spec["activeDeadlineSeconds"] = seconds
    pod_spec["terminationGracePeriodSeconds"] = sched.signal_seconds
    pod_spec["containers"] = [
        {
            "name": CONTAINER_NAME,
            "image": sched.image,
            "command": ["alctl"],
            "args": ["cycle", manifest_file, "--quiet", *packed_args],
            "workingDir": POD_WORKDIR,
            "env": [{"name": "OMP_NUM_THREADS", "value": str(sched.cpus)}],
            "resources": {"requests": requests, "limits": limits},
            "volumeMounts": mounts,
        }
    ]
    pod_spec["volumes"] = volumes

    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": config_name, "namespace": sched.namespace, "labels": labels},
        "data": {key: text},
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name, "namespace": sched.namespace, "labels": labels},
        "spec": {
            "completionMode": "Indexed",
            "completions": n,
            "parallelism": min(_packed_parallel(sched) or n, n),
            "backoffLimitPerIndex": sched.backoff_limit,
            "backoffLimit": n * (sched.backoff_limit + 1),
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "Ignore",
                        "onExitCodes": {
                            "containerName": CONTAINER_NAME,
                            "operator": "In",
                            "values": [PREEMPTED_EXIT_CODE],
                        },
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                ]
            },
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
    return [configmap, job]


def render_k8s(
    m: mf.Manifest,
    workdir: str,
    sched: mf.SchedulerConfig | None = None,
    source: tuple[str, str] | None = None,
) -> str:
    """The ConfigMap + Indexed Job as one YAML stream (text); pure: the host working directory is explicit."""
    name = _comment(m.name, "name")
    objects = k8s_objects(m, workdir, sched, source)
    per = (sched or m.scheduler).tasks_per_gpu
    what = ("completion index i runs task i." if per <= 1 else
            f"completion index i runs tasks {per}i..{per}i+{per - 1} at once on one GPU.")
    header = (
        f"# Rendered by `alctl submit --to k8s` for run '{name}': {len(mf.tasks(m))} tasks,"
        f" {what}\n# Apply with: kubectl apply -f <this file>\n"
    )
    body = yaml.dump_all(objects, Dumper=_LiteralDumper, sort_keys=False, explicit_start=True, width=120, allow_unicode=True)
    return header + body


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


def time_warnings(m: mf.Manifest, sched: mf.SchedulerConfig) -> tuple[str, ...]:
    """A warning when scheduler.time is shorter than the longest task's estimate at scheduler.images_per_second."""
    limit = time_seconds(sched.time)
    if sched.images_per_second is None or limit is None:
        return ()
    estimate = plan.estimate(m, sched.images_per_second)
    if estimate is None or estimate[0] <= limit:
        return ()
    hours = estimate[0] / 3600
    return (f"scheduler.time {sched.time} is shorter than the longest task's estimate of {hours:.1f} h at"
            f" {sched.images_per_second:g} images/s (its DeepCluster pre-training included where it has one); a task killed at the limit"
            " resumes from its checkpoint when resubmitted, or raise --time",)


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
