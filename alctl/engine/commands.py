"""One function per CLI command: plan the tasks, call the engine, say what was done."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np
import torch

from alctl import config as mf
from alctl import runtime, store, tracking
from alctl.annotate import labelstudio as ls
from alctl.console import Ui
from alctl.data import DatasetSplits
from alctl.engine import checkpoint, parallel, settings
from alctl.engine.annotation import (
    export_label_studio, guard_export, labeled_classes, push_label_studio, top_predictions,
)
from alctl.engine.cycle import new_model, run_task, say_pool_changes
from alctl.engine.pretraining import ensure_pretrained, pretrain_key, pretrain_paths
from alctl.engine.steps import PropagationOutcome, acquire, pool_features, propagate_pool
from alctl.engine.tables import TaskTables
from alctl.engine.workspace import (
    check_oracle, dataset_for, known_hashes, one_task, plan, select_task, task_dir, task_lock, write_run_manifest,
)
from alctl.errors import UserError
from alctl.annotate.labels import read_labels
from alctl.models import ConvLarge
from alctl.pretrain import PROBE_K
from alctl.safe_text import csv_cell
from alctl.annotate.sheet import contact_sheet


def cycle_command(manifest_path: str | Path, task: int | None, cycles: int | None, ui: Ui, jobs: int = 1,
                  per_index: int = 1) -> int:
    """`alctl cycle`: run or resume the chosen tasks (`jobs` of them at once, each in its own process, when > 1;
    `per_index` tasks per --task / scheduler index); returns the number of cycles run."""
    m, all_tasks = plan(manifest_path)
    chosen = select_task(all_tasks, task, per_index)
    for t in chosen:  # fail early (exit 2) on missing data, a missing MLflow or a precision the device lacks
        tracking.require(t.config)
        check_oracle(t.config, dataset_for(t.config))
        settings.compute(t.config.train, runtime.choose_device(t.config.train.device))
    write_run_manifest(m)
    if jobs > 1 and len(chosen) > 1:
        return _cycle_parallel(manifest_path, m, chosen, cycles, ui, jobs)
    ran = 0
    with runtime.Preemption() as stop:
        for t in chosen:
            ran += run_task(t, ui, manifest_path, cycles, stop)
    if ran == 0 and len(chosen) > 1:
        ui.line(f"run {mf.run_dir(m)}: no cycle left to run for its {len(chosen)} tasks, nothing to do")
    return ran


def _cycle_parallel(manifest_path: str | Path, m: mf.Manifest, chosen: list[mf.Task], cycles: int | None, ui: Ui,
                    jobs: int) -> int:
    """`alctl cycle --jobs N`: the chosen tasks as N processes at a time (`engine.parallel`); the number of cycles
    they ran, read from their metrics tables; raises the error its worst child exit code calls for."""
    def finished(t: mf.Task) -> int:
        return TaskTables(task_dir(t), dataset_for(t.config)).finished_cycles()

    before = {t.index: finished(t) for t in chosen}
    with runtime.Preemption() as stop:
        codes = parallel.run_parallel(manifest_path, chosen, jobs, cycles, ui, stop, lambda: stop.requested,
                                      ui.quiet)
    ran = sum(finished(t) - before[t.index] for t in chosen)
    error = parallel.exit_error(codes, len(chosen))
    if error is not None:
        raise error
    if ran == 0:
        ui.line(f"run {mf.run_dir(m)}: no cycle left to run for its {len(chosen)} tasks, nothing to do")
    return ran


def pretrain_command(manifest_path: str | Path, ui: Ui) -> int:
    """`alctl pretrain`: train every distinct encoder the manifest's tasks need (+PRE, or a cold start on the
    encoder's features); returns how many were trained."""
    m, all_tasks = plan(manifest_path)
    seen: set[str] = set()
    trained = 0
    needing = [t for t in all_tasks if mf.uses_encoder(t.config) and t.config.pretrain.weights is None]
    for t in needing:  # fail early (exit 2) on missing data or device, before anything is written
        dataset_for(t.config)
        runtime.choose_device(t.config.train.device)
    if needing:
        write_run_manifest(m)
    with runtime.Preemption() as stop:
        for t in all_tasks:
            if not mf.uses_encoder(t.config) or t.config.pretrain.weights is not None:
                continue
            ds = dataset_for(t.config)
            key = pretrain_key(t.config, ds)
            if key in seen:
                continue
            seen.add(key)
            path = pretrain_paths(t.config, key)["weights"]
            if path.is_file():
                ui.line(f"pre-training {key}: already done ({path})")
                continue
            device = runtime.choose_device(t.config.train.device)
            _, seconds = ensure_pretrained(t.config, ds, device, ui, stop)
            trained += 1
            last = store.read_table(pretrain_paths(t.config, key)["metrics"], "pretrain").to_pylist()[-1]
            quality = "" if last["nmi_labels"] is None else f", final NMI to labels {last['nmi_labels']:.3f}"
            if last["knn_accuracy"] is not None:
                quality += f", {PROBE_K}-NN test accuracy {100 * last['knn_accuracy']:.2f}%"
            ui.line(f"pre-training {key}: wrote {path} in {seconds:.1f}s{quality}")
    if not seen:
        raise UserError("pretrain.method: no task of this manifest uses deepcluster (set pretrain.method or sweep it, or"
                        " active.initial_features: encoder with a typiclust / probcover active.initial_strategy)")
    return trained


def _require_model(task: mf.Task, tables: TaskTables, manifest_path: str | Path) -> Path:
    """The path of the task's trained model; UserError (exit 2) when there is none yet."""
    path = tables.checkpoints / "model.pt"
    if not path.is_file():
        raise UserError(f"{path}: no trained model yet; run `alctl cycle {manifest_path} --task {task.index}` first")
    return path


def load_task_model(task: mf.Task, ds: DatasetSplits, tables: TaskTables, device: torch.device,
                    manifest_path: str | Path) -> tuple[ConvLarge, int]:
    """The task's current model (latest finished cycle) and that cycle; exit 2 when none is trained yet."""
    path = _require_model(task, tables, manifest_path)
    ckpt = checkpoint.load(path, "an alctl model checkpoint", device)
    if ckpt.get("task_hash") not in known_hashes(task):
        raise UserError(f"{path}: trained with another configuration (hash {ckpt.get('task_hash')}); rerun `alctl cycle`")
    model = new_model(task.config, ds, task.rep, int(ckpt["cycle"]), device)
    checkpoint.load_weights(model, ckpt["model"], path, "an alctl model checkpoint")
    return model, int(ckpt["cycle"])


EXPORT_FORMATS = ("csv", "label-studio")


def select_command(
    manifest_path: str | Path, task_index: int | None, export: Path | None, ui: Ui, *, fmt: str = "csv",
    url_prefix: str | None = None, local_root: Path | None = None, push_url: str | None = None,
    project: int | None = None,
) -> np.ndarray:
    """`alctl select`: the images to label next (the pending selection of a human-oracle task, else one acquisition
    on the current model), printed and with --export written as to_label.csv + contact_sheet.png (fmt csv) or as
    Label Studio tasks.json + label_config.xml (fmt label-studio; images/ for datasets without files), which
    --to-label-studio also adds to a project of that server; positions [b]."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"--format: {fmt!r} is not an export format; valid: {', '.join(EXPORT_FORMATS)}")
    if project is not None and push_url is None:
        raise UserError("--project: only with --to-label-studio URL (the project the tasks go to)")
    if push_url is not None:
        fmt = "label-studio"
        if export is None:
            raise UserError("--to-label-studio: give --export DIR too (tasks.json, and the images of a dataset without"
                            " image files, are written there first)")
    if url_prefix and fmt != "label-studio":
        raise UserError("--image-url-prefix: only with --format label-studio")
    if url_prefix:
        ls.check_url_prefix(url_prefix, "--image-url-prefix")
    if fmt != "csv" and export is None:
        raise UserError(f"--format: {fmt} writes files; give --export DIR")
    client = None if push_url is None else ls.LabelStudio(push_url, ls.api_key(push_url), option="--to-label-studio")
    task = one_task(manifest_path, task_index)
    if export is not None:
        _check_export_dir(export)
    config = task.config
    ds = dataset_for(config)
    device = runtime.choose_device(config.train.device)
    tables = TaskTables(task_dir(task), ds)
    pool = tables.read_pool()
    say_pool_changes(ui, f"[task {task.index} {task.key}]", tables)
    images = ds.train_images.to(device)
    pending = np.zeros(0, np.int64) if pool is None else pool.pending()
    if client is not None and not len(pending):
        raise UserError(f"--to-label-studio: task {task.index} has no selection waiting for labels (that needs"
                        f" active.oracle: human and `alctl cycle {manifest_path}` stopped for labels)")
    model: ConvLarge | None = None
    cycle: int | None = None
    if len(pending) and not (tables.checkpoints / "model.pt").is_file():  # the initial set, before any training
        chosen, score_of = pending, {}
        what = "the initial set, waiting for labels"
    elif len(pending):
        model, cycle = load_task_model(task, ds, tables, device, manifest_path)
        chosen, score_of = pending, tables.scores_of(cycle)
        what = f"selected at cycle {cycle}, waiting for labels"
    else:
        model, cycle = load_task_model(task, ds, tables, device, manifest_path)
        assert pool is not None  # a model implies a pool
        sel = acquire(config, task.rep, ds, pool, model, images, cycle)
        chosen = sel.chosen
        score_of = dict(zip(tables.ids[pool.unlabeled].tolist(), sel.scores.tolist()))
        what = f"next acquisition ({config.active.strategy}) on the cycle-{cycle} model"
    ids = tables.ids[chosen]
    ui.line(f"[task {task.index} {task.key}] {len(chosen)} images to label, {what}:")
    ui.line(" ".join(str(int(i)) for i in ids))
    simulated = ("this task's oracle is simulated (active.oracle), so `alctl cycle` labels these itself: nothing to"
                 " import")
    if export is not None:  # a person's labels the task does not hold are never overwritten
        guard_export(export, fmt, labeled_classes(tables.ids, pool), ds.classes,
                     f"alctl label {manifest_path} --task {task.index}")
    if export is not None and fmt == "csv":
        import_cmd = f"alctl label {manifest_path} --task {task.index} --labels {export / 'to_label.csv'}"
        export_selection(export, ds, model, images, chosen, score_of)
        then = simulated if config.active.oracle == "simulated" else f"fill the label column and run `{import_cmd}`"
        ui.line(f"wrote {export / 'to_label.csv'} and {export / 'contact_sheet.png'}; {then}")
    elif export is not None:
        sub = images[torch.from_numpy(chosen).to(images.device)]
        root = Path.cwd() if local_root is None else Path(local_root)
        exported = export_label_studio(export, task, ds, chosen, sub, top_predictions(model, sub, ds, 1), cycle,
                                       score_of, url_prefix, root)
        guesses = "" if model is None else f", with the cycle-{cycle} model's guesses"
        ui.line(f"wrote {export / 'tasks.json'} ({len(chosen)} tasks{guesses}) and {export / 'label_config.xml'}")
        if exported.storage_dir is not None and client is None:
            ui.line(f"images are Label Studio local files: start it with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true"
                    f" LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={exported.local_root}, and give the project a local"
                    f" storage of {exported.storage_dir} (Settings > Cloud Storage; do not sync it)")
        if client is not None:
            title = f"{config.name} task {task.index}"
            done = push_label_studio(client, exported, project, title, ls.label_config(ds.classes))
            ui.line(f"pushed {done.imported} tasks to {client.url}/projects/{done.project}"
                    + (" (a new project)" if done.created else "")
                    + (f"; {done.already} were there already" if done.already else "")
                    + (f"; added a local storage of {done.storage}" if done.storage else "")
                    + f"; label them there, then run `alctl label {manifest_path} --task {task.index}"
                      f" --from-label-studio {client.url} --project {done.project}`")
        elif config.active.oracle == "simulated":
            ui.line(simulated)
        else:
            ui.line(f"import tasks.json into a Label Studio project set up with label_config.xml, label, export the"
                    f" project as JSON and run `alctl label {manifest_path} --task {task.index} --labels"
                    f" EXPORT.json`")
    return chosen


def _check_export_dir(export: Path) -> None:
    """--export must be a directory or not exist yet (the files a person filled in there are checked by
    `annotation.guard_export` before anything is written)."""
    if export.exists() and not export.is_dir():
        raise UserError(f"--export: {export} is a file; give a directory (to_label.csv and contact_sheet.png go there)")


def export_selection(
    export: Path, ds: DatasetSplits, model: ConvLarge | None, images: torch.Tensor, chosen: np.ndarray,
    score_of: dict[int, float],
) -> None:
    """to_label.csv (sample_id, path, score, the model's top-3 predictions, empty label column) and a contact
    sheet of the chosen pool positions [b]; without a model yet (the initial set) the prediction columns are empty."""
    ids = ds.train_ids.numpy()[chosen]
    sub = images[torch.from_numpy(chosen).to(images.device)]
    k = min(3, ds.num_classes)
    guesses = top_predictions(model, sub, ds, k)
    if guesses is not None:
        top_p, top_c = guesses
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["sample_id", "path", "score"] + [f"{h}{j}" for j in range(1, k + 1) for h in ("top", "p")]
                    + ["label"])
    paths = ds.train_paths
    captions = []
    for row, (sid, pos) in enumerate(zip(ids.tolist(), chosen.tolist())):
        if guesses is None:
            preds, guess = [""] * (2 * k), ""
        else:
            preds = [v for j in range(k)
                     for v in (csv_cell(ds.classes[int(top_c[row, j])]), f"{float(top_p[row, j]):.4f}")]
            guess = f"\n{ds.classes[int(top_c[row, 0])]} {float(top_p[row, 0]):.2f}"
        score = score_of.get(int(sid))
        writer.writerow([sid, "" if paths is None else csv_cell(paths[pos]), "" if score is None else f"{score:.6g}"] + preds
                        + [""])
        captions.append(f"{sid}{guess}")
    store.atomic_write_bytes(export / "to_label.csv", buf.getvalue().encode())
    contact_sheet(sub.cpu(), captions, export / "contact_sheet.png")


def _is_json(path: Path) -> bool:
    """Whether a labels file is JSON (Label Studio's export): a .json name, or text starting with `[` or `{`."""
    if path.suffix.lower() == ".json":
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError:
        return False
    return head[:1] in (b"[", b"{")


def label_command(
    manifest_path: str | Path, task_index: int | None, labels_file: Path | None, ui: Ui, *,
    pull_url: str | None = None, project: int | None = None,
) -> int:
    """`alctl label`: import a person's labels for the pending selection from a labels CSV, a Label Studio export
    (JSON or JSON_MIN) or a Label Studio project (--from-label-studio); all-or-nothing; returns labels imported."""
    if (labels_file is None) == (pull_url is None):
        raise UserError("--labels: give one source: --labels FILE (a labels CSV, or Label Studio's JSON export) or"
                        " --from-label-studio URL --project ID")
    if pull_url is not None and project is None:
        raise UserError("--project: required with --from-label-studio (the number in the project's URL, /projects/ID)")
    if project is not None and pull_url is None:
        raise UserError("--project: only with --from-label-studio URL")
    task = one_task(manifest_path, task_index)
    ds = dataset_for(task.config)
    tables = TaskTables(task_dir(task), ds)
    pulled = None
    if pull_url is not None:
        assert project is not None
        client = ls.LabelStudio(pull_url, ls.api_key(pull_url), option="--from-label-studio")
        source = f"{client.url} project {project}"
        if tables.read_pool() is None:  # refused before the download
            raise UserError(f"--task: task {task.index} has not started; run `alctl cycle {manifest_path}` first")
        pulled = client.export(project)
    else:
        assert labels_file is not None
        source = str(labels_file)
    earlier_note = ""
    with task_lock(task):
        pool = tables.read_pool()
        if pool is None:
            raise UserError(f"--task: task {task.index} has not started; run `alctl cycle {manifest_path}` first")
        say_pool_changes(ui, f"[task {task.index} {task.key}]", tables)
        pending_ids = tables.ids[pool.pending()]
        if pulled is not None or (labels_file is not None and _is_json(labels_file)):
            known = np.flatnonzero(pool.label >= 0)
            earlier = dict(zip(tables.ids[known].tolist(), pool.label[known].tolist()))
            if pulled is not None:
                got = ls.import_tasks(pulled, source, tables.ids, pending_ids, ds.classes, earlier)
            else:
                assert labels_file is not None
                got = ls.read_export(labels_file, tables.ids, pending_ids, ds.classes, earlier)
            sample_ids, labels = got.sample_ids, got.labels
            if got.earlier:
                earlier_note = f" ({got.earlier} tasks of images labeled before left out)"
        else:
            assert labels_file is not None
            sample_ids, labels = read_labels(labels_file, tables.ids, pending_ids, ds.classes)
        pos = tables.positions(sample_ids)
        pool.apply_labels(pos, labels, "human")
        tables.write_pool(pool)
    left = len(pool.pending())
    ui.line(f"[task {task.index} {task.key}] imported {len(pos)} labels from {source}{earlier_note};"
            + (f" {left} selected images still wait for labels" if left else
               f" the selection is complete: run `alctl cycle {manifest_path}` to continue"))
    return len(pos)


def propagate_command(manifest_path: str | Path, task_index: int | None, ui: Ui) -> PropagationOutcome:
    """`alctl propagate`: label propagation with the task's current model; writes pseudo rows and pseudo accuracy."""
    task = one_task(manifest_path, task_index)
    config = task.config
    ds = dataset_for(config)
    device = runtime.choose_device(config.train.device)
    tables = TaskTables(task_dir(task), ds)
    _require_model(task, tables, manifest_path)  # refused before the lock: a refusal writes nothing
    with task_lock(task):
        model, cycle = load_task_model(task, ds, tables, device, manifest_path)  # the latest, under the lock
        pool = tables.read_pool()
        assert pool is not None
        say_pool_changes(ui, f"[task {task.index} {task.key}]", tables)
        labeled = pool.labeled_at(cycle)
        t0 = time.perf_counter()
        feats = pool_features(config, ds, model, ds.train_images.to(device))
        prop = propagate_pool(config, ds, feats, labeled, pool.label[labeled], mf.cycle_epochs(config))
        seconds = time.perf_counter() - t0
        u = prop.unlabeled
        tables.replace_propagation(cycle, prop.epoch, u, prop.labels[u], prop.weights[u])
        kept = ""
        if prop.accuracy is not None:
            # fill the cycle's pseudo-label accuracy where its training recorded none (no pseudo-labels); a +SEMI
            # task's own value, measured on the propagation its training used, and CEAL's are kept
            if tables.fill_pseudo_accuracy(cycle, prop.accuracy, prop.accuracy_top_half) is False:
                kept = "; metrics keep the accuracy already recorded for that cycle"
    acc = "" if prop.accuracy is None else (
        f"; pseudo-labels {100 * prop.accuracy:.2f}% correct, {100 * (prop.accuracy_top_half or 0):.2f}% among the"
        f" most certain half{kept}")
    ui.line(f"[task {task.index} {task.key}] cycle-{cycle} model: propagated {len(labeled)} labels to {len(u)} images"
            f" in {seconds:.1f}s{acc}; wrote {tables.path('pseudo')}")
    return prop
