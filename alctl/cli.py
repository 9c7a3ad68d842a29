"""Typer CLI: thin adapters (parse -> one engine call -> exit code 0 / 1 runtime / 2 bad input)."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console

from alctl.errors import AlctlError
from alctl.safe_text import terminal

app = typer.Typer(
    name="alctl",
    help="Deep active learning that trains on the unlabeled pool too (Siméoni et al., ICPR 2020).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)

# shared option aliases, defined once
ManifestArg = Annotated[Path, typer.Argument(help="manifest YAML file", show_default=False)]
TaskOpt = Annotated[
    int | None,
    typer.Option("--task", "-t", help="task index (default: SLURM_ARRAY_TASK_ID / JOB_COMPLETION_INDEX, else all)"),
]
OneTaskOpt = Annotated[
    int | None,
    typer.Option("--task", "-t", help="task index (default: SLURM_ARRAY_TASK_ID / JOB_COMPLETION_INDEX; needed when"
                                      " the manifest has several tasks)"),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars or per-cycle lines")]


def handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map AlctlError to its exit code with one stderr line per problem; other failures exit 1 in one line."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AlctlError as e:
            for problem in e.problems:
                err.print(f"error: {terminal(problem)}", markup=False)
            raise typer.Exit(e.exit_code) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as e:  # a runtime failure, not the user's mistake
            if os.environ.get("ALCTL_DEBUG"):
                traceback.print_exc()
            err.print(f"error: {type(e).__name__}: {terminal(e)} (set ALCTL_DEBUG=1 for a traceback)", markup=False)
            raise typer.Exit(1) from None

    return wrapper


def _ui(quiet: bool):  # noqa: ANN202 - console.Ui, imported lazily to keep `--help` fast
    """The engine's console adapter."""
    from alctl.console import Ui

    return Ui(console=Console(highlight=False), quiet=quiet)


@app.command()
@handled
def validate(
    manifest: ManifestArg,
    images_per_second: Annotated[
        float | None,
        typer.Option("--images-per-second", help="measured training throughput on the target device (images/s:"
                     " e.g. a cycle's train images in this plan over its train seconds in metrics.parquet)"),
    ] = None,
    inference_per_second: Annotated[
        float | None,
        typer.Option("--inference-images-per-second", help="measured forward-only throughput (default: 3x the"
                     " training throughput)"),
    ] = None,
) -> None:
    """Check a manifest (schema and cross-field rules); print its grid, the cost of each task and of the run."""
    from alctl.engine.validation import validate_command

    validate_command(manifest, Console(highlight=False), images_per_second, inference_per_second)


@app.command()
@handled
def cycle(
    manifest: ManifestArg,
    task: TaskOpt = None,
    cycles: Annotated[int | None, typer.Option("--cycles", "-n", min=1, help="stop once this many cycles are finished")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="tasks run at once, each in its own process"
                                      " (several small tasks fill one GPU); output lines are prefixed with the task")] = 1,
    tasks_per_index: Annotated[int, typer.Option(
        "--tasks-per-index", min=1, help="with a task index I (--task or the scheduler's), run tasks"
        " I*N .. I*N+N-1 (what `alctl submit` renders for scheduler.tasks_per_gpu)")] = 1,
    quiet: QuietOpt = False,
) -> None:
    """Run the active learning loop for one task or all; resumes where a run stopped."""
    from alctl.engine.commands import cycle_command

    cycle_command(manifest, task, cycles, _ui(quiet), jobs, tasks_per_index)


@app.command("select")
@handled
def select_cmd(
    manifest: ManifestArg,
    task: OneTaskOpt = None,
    export: Annotated[
        Path | None, typer.Option("--export", help="directory receiving to_label.csv and contact_sheet.png (csv), or"
                                  " tasks.json, label_config.xml and images/ (label-studio)")
    ] = None,
    format: Annotated[Literal["csv", "label-studio"], typer.Option(
        "--format", "-f", help="what --export writes: csv (a sheet to fill in and a contact sheet) or label-studio"
                               " (Label Studio tasks with the model's guesses, and its labeling config)")] = "csv",
    image_url_prefix: Annotated[str | None, typer.Option(
        "--image-url-prefix", help="label-studio: reference each image as PREFIX/<path> (path relative to"
                                   " dataset.root, or images/<sample_id>.png in --export) instead of a Label Studio"
                                   " local file")] = None,
    local_files_root: Annotated[Path | None, typer.Option(
        "--local-files-root", envvar="LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT",
        help="label-studio: the LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT Label Studio serves local files from; image"
             " references are relative to it (default: that variable, else the current directory)")] = None,
    to_label_studio: Annotated[str | None, typer.Option(
        "--to-label-studio", help="also add the tasks to a project of this Label Studio server (http://host:port;"
                                  " API key in LABEL_STUDIO_API_KEY); implies --format label-studio")] = None,
    project: Annotated[int | None, typer.Option(
        "--project", help="with --to-label-studio: the project's id (default: a new project)")] = None,
    quiet: QuietOpt = False,
) -> None:
    """One acquisition step on the task's current model: print (and --export) the images to label next."""
    from alctl.engine.commands import select_command

    select_command(manifest, task, export, _ui(quiet), fmt=format, url_prefix=image_url_prefix,
                   local_root=local_files_root, push_url=to_label_studio, project=project)


@app.command()
@handled
def pretrain(manifest: ManifestArg, quiet: QuietOpt = False) -> None:
    """Pre-training (DeepCluster or SimCLR) of every encoder the manifest's tasks need (once; resumes)."""
    from alctl.engine.commands import pretrain_command

    pretrain_command(manifest, _ui(quiet))


@app.command()
@handled
def propagate(manifest: ManifestArg, task: OneTaskOpt = None, quiet: QuietOpt = False) -> None:
    """Label propagation with the task's current model: pseudo-labels (and their accuracy when known) to the store."""
    from alctl.engine.commands import propagate_command

    propagate_command(manifest, task, _ui(quiet))


@app.command()
@handled
def label(
    manifest: ManifestArg,
    labels: Annotated[Path | None, typer.Option(
        "--labels", "-l", help="CSV with sample_id and label columns, or Label Studio's JSON / JSON_MIN export (.json)",
        show_default=False)] = None,
    from_label_studio: Annotated[str | None, typer.Option(
        "--from-label-studio", help="read the annotations of a project of this Label Studio server instead"
                                    " (http://host:port; API key in LABEL_STUDIO_API_KEY)")] = None,
    project: Annotated[int | None, typer.Option("--project", help="with --from-label-studio: the project's id")] = None,
    task: OneTaskOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Import a person's labels (by class name or index) for the task's pending selection; all or nothing."""
    from alctl.engine.commands import label_command

    label_command(manifest, task, labels, _ui(quiet), pull_url=from_label_studio, project=project)


@app.command()
@handled
def report(
    run_dir: Annotated[Path | None, typer.Argument(help="run directory (default: every run under ./runs)")] = None,
    format: Annotated[Literal["markdown", "csv", "json"], typer.Option(
        "--format", "-f", help="markdown: tables for people; json: an object {metric, rows, auc, auc_paired,"
                               " labels_saved, paired, winners}, each table a list of records (NaN and missing"
                               " intervals null); csv: one header, first column `table` (rows | auc | auc_paired |"
                               " labels_saved | paired | winners) naming the table of each line, then the union of"
                               " the tables' columns")] = "markdown",
    long: Annotated[bool, typer.Option("--long", help="markdown accuracy table with a line per strategy, variant and"
                                                      " cycle instead of a column per number of labels (csv and json"
                                                      " always hold those lines)")] = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="also draw learning curves to this file (PNG, or"
                                                           " the format its suffix names: .pdf, .svg, ...)")] = None,
    metric: Annotated[str, typer.Option("--metric", help="the test figure of every table: accuracy,"
                                                        " balanced_accuracy (mean recall over the classes) or macro_f1"
                                        )] = "accuracy",
) -> None:
    """Test accuracy (or --metric) over repetitions per strategy, variant and number of labels, and what it adds up to.

    Accuracy: mean ± std over repetitions (a row per strategy x variant, a column per number of labels). AUC: area
    under the budget curve, the trapezoidal mean accuracy over the labels range per repetition, then mean ± std.
    Labels saved: how many labels Random (same variant and settings) needs to reach each mean accuracy, by linear
    interpolation of its mean curve, minus the strategy's. Paired: against the plain variant, against Random and
    (FixMatch) against label propagation, the mean of per-repetition differences at each number of labels and of
    the AUC (repetitions share their initial sets) with a 95% t-interval.
    """
    from alctl.report import report as make_report

    text, missing = make_report(run_dir, format, plot, long=long, metric=metric)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if missing:  # on stderr, so that csv/json on stdout stay machine-readable
        err.print(f"{len(missing)} tasks not finished (not in the table):", markup=False)
        for line in missing:
            err.print(f"  {line}", markup=False)


@app.command()
@handled
def submit(
    manifest: ManifestArg,
    to: Annotated[str | None, typer.Option("--to", help="scheduler: slurm (sbatch array) or k8s (Indexed Job)")] = None,
    run: Annotated[bool, typer.Option("--run", help="also submit: sbatch (prints the job id) or kubectl apply")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="spec file (default runs/<name>/jobs/slurm.sbatch | k8s.yaml)")] = None,
    partition: Annotated[str | None, typer.Option("--partition", help="Slurm partition (scheduler.partition)")] = None,
    time: Annotated[str | None, typer.Option("--time", help="limit per task, HH:MM:SS (scheduler.time)")] = None,
    gpus: Annotated[int | None, typer.Option("--gpus", help="GPUs per task (scheduler.gpus)")] = None,
    cpus: Annotated[int | None, typer.Option("--cpus", help="CPU cores per task (scheduler.cpus)")] = None,
    memory: Annotated[str | None, typer.Option("--memory", "--mem", help="memory per task, e.g. 16G (scheduler.memory)")] = None,
    image: Annotated[str | None, typer.Option("--image", help="container image; required for k8s (scheduler.image)")] = None,
    parallel: Annotated[int | None, typer.Option("--parallel", help="tasks at once (scheduler.max_parallel)")] = None,
    tasks_per_gpu: Annotated[int | None, typer.Option(
        "--tasks-per-gpu", help="tasks packed on one array element / pod, run at once (scheduler.tasks_per_gpu)")] = None,
    namespace: Annotated[str | None, typer.Option("--namespace", help="Kubernetes namespace (scheduler.namespace)")] = None,
    images_per_second: Annotated[
        float | None,
        typer.Option("--images-per-second", help="measured training throughput per task (scheduler.images_per_second):"
                     " warns when --time is shorter than the estimate"),
    ] = None,
) -> None:
    """Write a Slurm array / Kubernetes Indexed Job (one index per task, or per --tasks-per-gpu tasks); --run submits it."""
    from alctl.jobs.submit import submit_command

    overrides = {"partition": partition, "time": time, "gpus": gpus, "cpus": cpus, "memory": memory,
                 "image": image, "max_parallel": parallel, "namespace": namespace,
                 "images_per_second": images_per_second, "tasks_per_gpu": tasks_per_gpu}
    result = submit_command(manifest, to, run=run, out=out, overrides=overrides)
    for line in result.warnings:
        err.print(f"warning: {line}", markup=False)
    for line in result.lines():
        typer.echo(line)


def main() -> None:
    """Console-script entry point: usage mistakes (bad option value, missing argument, unknown option) are one
    `error:` line naming the help to read, exit 2; no arguments at all print the help."""
    try:
        code = app(prog_name="alctl", standalone_mode=False)
    except typer.Abort:
        err.print("aborted", markup=False)
        sys.exit(1)
    except typer.TyperException as e:  # the parser's errors (typer's click exceptions)
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ != "NoArgsIsHelpError":  # that one: the help is already printed
            hint = f" (see `{ctx.command_path if ctx is not None else 'alctl'} --help`)"
            err.print(f"error: {e.format_message()}{hint}", markup=False)
        sys.exit(getattr(e, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
