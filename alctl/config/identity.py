"""What identifies a task's results and an encoder: the resolved settings that differ from their defaults.

One rule instead of lists of exceptions: a task's identity is its resolved manifest without the sections that
cannot change a result (`DROPPED`), flattened to dotted paths, keeping only the values that differ from the
schema's defaults, hashed with `VERSION`. A field added with a default that keeps the old behaviour leaves every
identity unchanged; changing a default changes the meaning of manifests that relied on it, so it must bump
`VERSION` (tests/golden/defaults.json pins every default and fails until it is regenerated). An encoder's identity
is the same rule over the fields its pre-training reads (`encoder_fields`).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Any

from alctl import config as mf

VERSION = 3  # 1: the hash of the resolved manifest with hand-listed omissions (before this rule); 2: this rule;
# 3: active.initial_strategy's random draws without labels (balanced is the paper's draw), default auto
DROPPED = ("name", "output", "sweep", "repetitions", "scheduler", "tracking")  # cannot change a result


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections as {dotted path: leaf value}; a leaf is anything but a non-empty dict."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _kept(path: str) -> bool:
    """Whether a dotted path lies outside the dropped sections."""
    return path.split(".", 1)[0] not in DROPPED


@lru_cache(maxsize=1)
def _defaults_json() -> str:
    return json.dumps(flatten(mf.Manifest().model_dump(mode="json")), sort_keys=True)


def defaults() -> dict[str, Any]:
    """Every field's default as {dotted path: value} (the dropped sections included: the golden snapshot pins all)."""
    return json.loads(_defaults_json())


def task_fields(config: mf.Manifest) -> dict[str, Any]:
    """The task's identity: {dotted path: value} of its resolved settings that differ from their defaults, outside
    the dropped sections."""
    base = defaults()
    return {path: value for path, value in flatten(config.model_dump(mode="json")).items()
            if _kept(path) and (path not in base or base[path] != value)}


def digest(fields: dict[str, Any]) -> str:
    """sha256 (first 16 hex) of the identity version and the fields, canonical JSON."""
    text = json.dumps({"identity": VERSION, "fields": fields}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def task_hash(config: mf.Manifest) -> str:
    """The hash of a task's identity (`task_fields`)."""
    return digest(task_fields(config))


def migrate(data: dict[str, Any], version: int) -> dict[str, Any]:
    """A configuration recorded by an alctl whose identity version was `version` (a resolved manifest as a
    mapping), rewritten to mean the same under today's schema: before 3, initial_strategy random was the balanced
    draw where the labels were known, today's auto (the set is drawn once, at cycle 0)."""
    out = json.loads(json.dumps(data))
    active = out.get("active")
    if version < 3 and isinstance(active, dict) and active.get("initial_strategy") == "random":
        active["initial_strategy"] = "auto"
    return out


HEADER = f"# alctl identity {VERSION}\n"  # the first line of a task.yaml: which version recorded it


def recorded_version(text: str) -> int:
    """The identity version a task.yaml's first line names; 2 when it names none (written before version 3)."""
    first = text.split("\n", 1)[0]
    prefix = "# alctl identity "
    return int(first[len(prefix):]) if first.startswith(prefix) and first[len(prefix):].isdigit() else 2


def differences(old: dict[str, Any], new: dict[str, Any], limit: int = 8) -> list[str]:
    """'path: old -> new' for each field whose value differs between two identities (a missing field is at its
    default), sorted by path; at most `limit` lines, then '... and N more'."""
    base = defaults()
    lines = []
    for path in sorted(set(old) | set(new)):
        a, b = old.get(path, base.get(path)), new.get(path, base.get(path))
        if a != b:
            lines.append(f"{path}: {json.dumps(a)} -> {json.dumps(b)}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more"]
    return lines


def encoder_fields(config: mf.Manifest) -> dict[str, Any]:
    """An encoder's identity: its method and the non-default values of the fields its pre-training reads (the
    dataset, the network without its classifier head, the augmentation, the method's section, the seed)."""
    method = mf.encoder_method(config)
    if method == "simclr":
        reads = ("dataset.", "model.", "train.flip", "pretrain.simclr.", "seed")
        skip = ("model.l2_features",)
    else:  # DeepCluster: the pretrain section's own fields; the rethinking recipe trains the cosine head too
        reads = ("dataset.", "model.", "train.translate", "train.flip", "pretrain.", "seed")
        skip = ("pretrain.method", "pretrain.weights", "pretrain.simclr.")
        if config.pretrain.recipe != "rethinking":
            skip += ("model.l2_features",)
    fields = {path: value for path, value in task_fields(config).items()
              if path.startswith(reads) and not path.startswith(skip)}
    return {"method": method, **fields}
