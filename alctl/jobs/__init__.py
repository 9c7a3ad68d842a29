"""Slurm / Kubernetes job specs from a manifest: `common`, the renderers `slurm` and `k8s`, and `alctl submit`."""

from __future__ import annotations

from alctl.config import memory_parts, time_seconds
from alctl.jobs.common import (
    PREEMPTED_EXIT_CODE,
    OPTION_NAMES,
    resolve_scheduler,
    packing,
    time_warnings,
)
from alctl.jobs.slurm import render_slurm
from alctl.jobs.k8s import (
    POD_WORKDIR,
    POD_MANIFEST_DIR,
    POD_MANIFEST_KEY,
    CONTAINER_NAME,
    k8s_name,
    configmap_source,
    k8s_objects,
    render_k8s,
)
from alctl.jobs.submit import (
    TARGETS,
    SUBMIT_TIMEOUT_S,
    SubmitResult,
    default_executable,
    submit_command,
)

__all__ = [
    "memory_parts",
    "time_seconds",
    "PREEMPTED_EXIT_CODE",
    "OPTION_NAMES",
    "resolve_scheduler",
    "packing",
    "time_warnings",
    "render_slurm",
    "POD_WORKDIR",
    "POD_MANIFEST_DIR",
    "POD_MANIFEST_KEY",
    "CONTAINER_NAME",
    "k8s_name",
    "configmap_source",
    "k8s_objects",
    "render_k8s",
    "TARGETS",
    "SUBMIT_TIMEOUT_S",
    "SubmitResult",
    "default_executable",
    "submit_command",
]
