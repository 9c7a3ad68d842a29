"""The Kubernetes ConfigMap + Indexed Job for a manifest: pure (manifest -> YAML text), built by a YAML dumper."""

from __future__ import annotations

import posixpath
import re
from typing import Any

import yaml

from alctl import config as mf
from alctl.config import memory_parts, time_seconds
from alctl.errors import UserError
from alctl.jobs.common import PREEMPTED_EXIT_CODE, _comment, _host_path, _packed_parallel, packing

POD_WORKDIR = "/work"
POD_MANIFEST_DIR = "/etc/alctl"
POD_MANIFEST_KEY = "manifest.yaml"
CONTAINER_NAME = "alctl"


def k8s_name(name: str, limit: int = 40) -> str:
    """A DNS-1123 label made from a run name: lowercase alphanumerics and '-', at most `limit` characters."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:limit].strip("-")
    return label or "run"


def _pod_path(path: str) -> str:
    """Where a manifest path (output, dataset.root) lives inside the pod: absolute as is, else under /work."""
    return posixpath.normpath(path if posixpath.isabs(path) else posixpath.join(POD_WORKDIR, path))


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
