"""A task's selection for Label Studio: the export folder (tasks.json, label_config.xml, images/ of datasets that
have no image files), the push of its tasks to a server's project, and the model's guesses both formats share.

Array contracts: `chosen` pool positions [b] int64; `images` uint8 [b, C, H, W] of those positions; guesses
(top_p [b, k] float32, top_c [b, k] int64), the model's k most probable classes per image, best first.
"""

from __future__ import annotations

import io
import json
import math
import os
import xml.etree.ElementTree as ET  # noqa: N817 - the usual name
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from alctl.annotate import labelstudio as ls
from alctl import config as mf
from alctl import store
from alctl.data import DatasetSplits
from alctl.engine.tables import PoolState
from alctl.errors import UserError
from alctl.annotate.labels import JSON_LIMIT, Unimported, read_labels_text, unimported_labels
from alctl.models import ConvLarge
from alctl.train.predict import predict

MIN_SIDE = 128  # pixels: PNGs of small array images are scaled up (nearest, integer factor) to at least this side
TASKS_FILE, CONFIG_FILE, IMAGES_DIR = "tasks.json", "label_config.xml", "images"
SHEET_FILE = "to_label.csv"


def labeled_classes(ids: np.ndarray, pool: PoolState | None) -> dict[int, int]:
    """sample_id -> class of every labeled image of a task's pool (ids [N] by pool position); empty before it."""
    if pool is None:
        return {}
    known = np.flatnonzero(pool.label >= 0)
    return dict(zip(ids[known].tolist(), pool.label[known].tolist()))


def _unimported(path: Path, fmt: str, labeled: dict[int, int], classes: list[str]) -> Unimported:
    """The labels a person gave in an export file (to_label.csv, or Label Studio's tasks.json) that the task does
    not hold; UserError when the file is not one alctl writes."""
    try:
        if fmt == "csv":
            return unimported_labels(path, labeled, classes)
        tasks = ls.load_json(read_labels_text(path, "--export", JSON_LIMIT), str(path))
    except UserError as exc:
        raise UserError(f"--export: {path} exists but is not a file alctl exported ({exc.problems[0]}); move it away"
                        " or --export another folder") from None
    if not isinstance(tasks, list):
        raise UserError(f"--export: {path} exists but is not a list of Label Studio tasks; move it away or --export"
                        " another folder")
    return ls.unimported_annotations(tasks, labeled, classes)


def guard_export(export: Path, fmt: str, labeled: dict[int, int], classes: list[str], label_cmd: str) -> None:
    """Refuse (UserError, before anything is written) an export that would replace a person's work: the
    to_label.csv (fmt csv) or tasks.json (label-studio: a Label Studio export saved there holds annotations) in
    `export` when it holds a label that the task does not hold already (`labeled`, from `labeled_classes`): a
    row of another selection or another task, or one not imported yet. `label_cmd` is the task's `alctl label`
    command, without its source."""
    path = export / (SHEET_FILE if fmt == "csv" else TASKS_FILE)
    if not path.exists():
        return
    found = _unimported(path, fmt, labeled, classes)
    if not found.count:
        return
    what = "filled-in label(s)" if fmt == "csv" else "annotation(s)"
    listed = ", ".join(found.first) + (", ..." if found.count > len(found.first) else "")
    raise UserError(f"--export: {path} already holds {found.count} {what} not imported into this task ({listed});"
                    f" import them first with `{label_cmd} --labels {path}` (or with `alctl label` of the task they"
                    " were exported for), or --export another folder")


def top_predictions(model: ConvLarge | None, images: torch.Tensor, ds: DatasetSplits,
                    k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The model's k most probable classes of images [b, C, H, W]: (top_p [b, k] float32, top_c [b, k] int64);
    None without a model (the initial set)."""
    if model is None:
        return None
    probs, _ = predict(model, images, ds.mean, ds.std)
    top_p, top_c = probs.topk(min(k, ds.num_classes), dim=1)
    return top_p.cpu().numpy(), top_c.cpu().numpy().astype(np.int64)


@dataclass(frozen=True)
class LabelStudioExport:
    """What `export_label_studio` wrote: the tasks, and where Label Studio must be allowed to serve files from."""

    tasks: list[dict[str, Any]]
    storage_dir: Path | None  # absolute folder holding every referenced image (local files); None with a URL prefix
    local_root: Path | None  # the LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT the references are relative to


def _png(image: np.ndarray) -> bytes:
    """One uint8 [C, H, W] image as PNG bytes, scaled up (nearest, integer factor) to at least MIN_SIDE pixels."""
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
    pil = Image.fromarray(hwc[:, :, 0], mode="L") if hwc.shape[2] == 1 else Image.fromarray(hwc, mode="RGB")
    factor = max(1, math.ceil(MIN_SIDE / max(hwc.shape[:2])))
    if factor > 1:
        pil = pil.resize((pil.width * factor, pil.height * factor), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


def export_label_studio(
    export: Path, task: mf.Task, ds: DatasetSplits, chosen: np.ndarray, images: torch.Tensor,
    guesses: tuple[np.ndarray, np.ndarray] | None, model_cycle: int | None, score_of: dict[int, float],
    url_prefix: str | None, local_root: Path,
) -> LabelStudioExport:
    """Write export/tasks.json (one task per chosen position: image reference, sample_id, the image's path and
    acquisition score when known, the model's top class as a prediction) and export/label_config.xml; images of a
    dataset without files (digits, mnist5k, ...) go to export/images/<sample_id>.png first. An image is referenced
    as `<url_prefix>/<path>` (path relative to dataset.root, or images/<sample_id>.png relative to the export
    folder) when a prefix is given, else as a Label Studio local file relative to `local_root` (its
    LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT); UserError, before anything is written, when an image is not under it."""
    config = task.config
    if url_prefix:
        ls.check_url_prefix(url_prefix)
    ids = ds.train_ids.numpy()[chosen]
    if ds.train_paths is not None:
        relative = [ds.train_paths[int(p)] for p in chosen]
        files = [Path(config.dataset.root) / r for r in relative]
    else:
        relative = [f"{IMAGES_DIR}/{int(sid)}.png" for sid in ids]
        files = [export / r for r in relative]
    storage_dir, root = None, None
    if url_prefix:
        refs = [ls.image_ref(r, url_prefix) for r in relative]
    else:
        root = Path(os.path.abspath(local_root))
        under = [ls.relative_posix(f, root) for f in files]
        outside = [f for f, u in zip(files, under) if u is None]
        storage_dir = Path(os.path.commonpath([os.path.abspath(f.parent) for f in files])) if files else root
        if outside or ls.relative_posix(storage_dir, root) is None:
            first = outside[0] if outside else storage_dir
            raise UserError(f"--local-files-root: {first} is not inside {root} (Label Studio serves local files from a"
                            " folder strictly under its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT); give the root Label"
                            " Studio runs with, or --image-url-prefix for images served elsewhere")
        refs = [ls.image_ref(str(u), None) for u in under]
    if ds.train_paths is None:
        array = images.cpu().numpy()
        for sid, image in zip(ids.tolist(), array):
            store.atomic_write_bytes(export / IMAGES_DIR / f"{sid}.png", _png(image))
    version = f"{config.name}/{task.key}/cycle {model_cycle}"
    tasks = []
    for row, (sid, pos) in enumerate(zip(ids.tolist(), chosen.tolist())):
        extra: dict[str, Any] = {}
        if ds.train_paths is not None:
            extra["path"] = ds.train_paths[pos]
        if (score := score_of.get(int(sid))) is not None:
            extra["acquisition_score"] = round(float(score), 6)
        guess = None if guesses is None else (ls.choice_value(ds.classes[int(guesses[1][row, 0])]),
                                               float(guesses[0][row, 0]))
        tasks.append(ls.make_task(refs[row], sid, extra, guess, version))
    store.atomic_write_bytes(export / TASKS_FILE, (json.dumps(tasks, indent=1) + "\n").encode())
    store.atomic_write_bytes(export / CONFIG_FILE, ls.label_config(ds.classes).encode())
    return LabelStudioExport(tasks, storage_dir, root)


@dataclass(frozen=True)
class Pushed:
    """What `push_label_studio` did on the server."""

    project: int
    created: bool  # a new project
    imported: int  # tasks added
    already: int  # tasks whose sample_id the project held already (not added again)
    storage: Path | None  # a local-files storage added to the project for the images


def _within(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies under it (absolute paths)."""
    path, folder = os.path.normpath(path), os.path.normpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_config(config: str, project: int) -> None:
    """UserError unless a project's labeling config shows the image (an Image tag on $image) and has the Choices
    tag `label` alctl reads annotations from; a config that does not parse is left to Label Studio."""
    try:
        root = ET.fromstring(config)
    except ET.ParseError:
        return
    image = any(tag.get("value") == f"${ls.IMAGE}" for tag in root.iter("Image"))
    choices = any(tag.get("name") == ls.FROM_NAME for tag in root.iter("Choices"))
    if not (image and choices):
        raise UserError(f"--project: project {project}'s labeling config lacks"
                        f" {'an Image of $image' if not image else 'a Choices named label'}; set it to the exported"
                        f" {CONFIG_FILE} (Settings > Labeling Interface), or leave --project out for a new project")


def push_label_studio(client: ls.LabelStudio, exported: LabelStudioExport, project: int | None, title: str,
                      config_xml: str) -> Pushed:
    """Add the exported tasks to a project (a new one titled `title` with this labeling config when `project` is
    None), leaving out those whose sample_id it holds already, after giving it a local-files storage of the
    images' folder when they are local files and no storage of the project covers it."""
    created = project is None
    if project is None:
        project = int(client.create_project(title, config_xml)["id"])
        held: set[int] = set()
    else:
        _check_config(client.project(project).get("label_config", ""), project)
        held = {int(t["data"]["sample_id"]) for t in client.export(project)
                if isinstance(t.get("data"), dict) and isinstance(t["data"].get("sample_id"), int)}
    added_storage = None
    if exported.storage_dir is not None:
        folder = str(exported.storage_dir)
        if not any(_within(folder, str(s.get("path", ""))) for s in client.local_storages(project) if s.get("path")):
            client.add_local_storage(project, exported.storage_dir)
            added_storage = exported.storage_dir
    new = [t for t in exported.tasks if int(t["data"]["sample_id"]) not in held]
    imported = client.import_tasks(project, new) if new else 0
    return Pushed(project, created, imported, len(exported.tasks) - len(new), added_storage)
