"""No name, image, path or option value can rewrite a rendered Slurm script or Kubernetes YAML (issue 25)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from alctl import jobs
from alctl import config as mf
from alctl.cli import app
from alctl.errors import UserError

runner = CliRunner()
WORKDIR = "/srv/alctl"
EXE = ["/opt/alctl/.venv/bin/alctl"]
POD_ATTACK = "x\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: evil\n  namespace: kube-system\n"
# Every character YAML or a shell reads as a line break.
LINE_BREAKS = ["\n", "\r", "\x85", "\u2028", "\u2029"]
INJECTED = "rm -rf ~"


def write(path: Path, data: dict[str, Any]) -> Path:
    """A tiny digits manifest (`data` merged in) at `path`."""
    base: dict[str, Any] = {"name": "demo", "dataset": {"name": "digits"},
                            "active": {"initial": 10, "budget": 10, "cycles": 2}}
    for key, value in data.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    path.write_text(yaml.safe_dump(base, allow_unicode=True))
    return path


def error_lines(output: str) -> list[str]:
    """The non-empty lines a command printed."""
    return [line for line in output.splitlines() if line.strip()]


def files_under(root: Path) -> dict[str, bytes]:
    """Every file below `root` (relative path -> bytes)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- Kubernetes: the name cannot add documents


def test_k8s_name_with_a_yaml_document_is_refused_and_nothing_is_written(workdir: Path) -> None:
    path = write(workdir / "exp.yaml", {"name": POD_ATTACK, "scheduler": {"image": "site/alctl:1"}})
    out = workdir / "k8s.yaml"
    out.write_bytes(b"previous spec\n")
    before = files_under(workdir)
    res = runner.invoke(app, ["submit", str(path), "--to", "k8s", "--out", str(out)])
    assert res.exit_code == 2, res.output
    lines = error_lines(res.output)
    assert len(lines) == 1 and lines[0].startswith("error: name") and "control characters" in lines[0], lines
    assert files_under(workdir) == before


@pytest.mark.parametrize("brk", LINE_BREAKS, ids=ascii)
def test_k8s_renderer_is_exactly_a_configmap_and_a_job_whatever_the_name(
    brk: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name that got past the schema (model_copy skips validation; the task list is fixed, since expanding it
    validates again) cannot add a Pod to the stream."""
    manifest = mf.Manifest.model_validate({"name": "demo", "dataset": {"name": "digits"},
                                           "scheduler": {"image": "site/alctl:1"}})
    fixed = mf.tasks(manifest)
    monkeypatch.setattr(mf, "tasks", lambda m: fixed)
    attacked = manifest.model_copy(update={"name": POD_ATTACK.replace("\n", brk)})
    with pytest.raises(UserError) as caught:
        jobs.render_k8s(attacked, WORKDIR)
    assert caught.value.problems[0].startswith("name: must not contain control characters")
    # The same text without line breaks is only a name: one ConfigMap and one Job, labels made from it.
    flat = manifest.model_copy(update={"name": POD_ATTACK.replace("\n", " ") + "' \" # {a: b} & *x !!python:object"})
    docs = list(yaml.safe_load_all(jobs.render_k8s(flat, WORKDIR)))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Job"]
    assert all(d["metadata"]["namespace"] == "default" for d in docs)
    assert re.fullmatch(r"alctl-[a-z0-9-]+", docs[1]["metadata"]["name"])


def test_configmap_key_is_never_a_file_name_with_a_trailing_newline(workdir: Path) -> None:
    path = write(workdir / "m.yaml\n", {"scheduler": {"image": "site/alctl:1"}})
    res = runner.invoke(app, ["submit", str(path), "--to", "k8s", "--out", "k8s.yaml"])
    assert res.exit_code == 0, res.output
    docs = list(yaml.safe_load_all((workdir / "k8s.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Job"]
    (key,) = docs[0]["data"]
    assert re.fullmatch(r"[-._a-zA-Z0-9]+", key), repr(key)
    args = docs[1]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["cycle", f"/etc/alctl/{key}", "--quiet"]


def test_k8s_values_round_trip_through_yaml(workdir: Path) -> None:
    """Namespace, claims, image and paths are data in the YAML, never structure (and a newline is refused)."""
    odd = "a: b # c\n---\nkind: Pod"
    manifest = mf.Manifest.model_validate({"name": "demo", "dataset": {"name": "digits", "root": "d'a\"ta"},
                                           "output": "r: {x}"})
    sched = manifest.scheduler.model_copy(update={"image": "img: [1]", "namespace": "ns: 'q'",
                                                  "runs_claim": "c&*x", "data_claim": odd})
    docs = list(yaml.safe_load_all(jobs.render_k8s(manifest, WORKDIR, sched)))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Job"]
    pod = docs[1]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "img: [1]" and docs[1]["metadata"]["namespace"] == "ns: 'q'"
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
    assert claims == {"manifest": None, "runs": "c&*x", "data": odd}
    # Through `alctl submit`, a control character in any of them is refused, naming where it came from.
    path = write(workdir / "exp.yaml", {"scheduler": {"image": "site/alctl:1"}})
    res = runner.invoke(app, ["submit", str(path), "--to", "k8s", "--namespace", "ml\x1b[2J"])
    assert res.exit_code == 2, res.output
    lines = error_lines(res.output)
    assert len(lines) == 1 and lines[0].startswith("error: --namespace: must not contain control characters"), lines
    assert not (workdir / "runs").exists()


# ---------------------------------------------------------------- Slurm: no value becomes a shell line


def no_injected_line(text: str) -> None:
    """`bash -n` accepts the script and no line of it starts with the injected command."""
    check = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    assert not any(line.lstrip().startswith(INJECTED) for line in re.split("[\n\r\x85\u2028\u2029]", text))


@pytest.mark.parametrize("where", ["manifest", "option"])
def test_slurm_image_with_a_newline_is_refused_naming_it(workdir: Path, where: str) -> None:
    image = f"site/alctl:1\n{INJECTED}\n#"
    path = write(workdir / "exp.yaml", {"scheduler": {"image": image if where == "manifest" else "site/alctl:1"}})
    out = workdir / "job.sbatch"
    out.write_bytes(b"#!/bin/bash\necho previous\n")
    before = files_under(workdir)
    args = ["submit", str(path), "--to", "slurm", "--out", str(out)] + (["--image", image] if where == "option" else [])
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    named = "scheduler.image" if where == "manifest" else "--image"
    lines = error_lines(res.output)
    assert len(lines) == 1 and lines[0].startswith(f"error: {named}: must not contain control characters"), lines
    assert files_under(workdir) == before


@pytest.mark.parametrize("brk", LINE_BREAKS, ids=ascii)
def test_slurm_renderer_refuses_an_image_with_a_line_break(brk: str) -> None:
    """Whatever reaches the renderer (the scheduler section copied without validation)."""
    manifest = mf.Manifest.model_validate({"name": "demo", "dataset": {"name": "digits"}})
    sched = manifest.scheduler.model_copy(update={"image": f"img{brk}{INJECTED}{brk}"})
    with pytest.raises(UserError) as caught:
        jobs.render_slurm(manifest, "exp.yaml", EXE, WORKDIR, sched)
    assert caught.value.problems[0].startswith("scheduler.image: must not contain control characters")


def test_manifest_file_named_with_a_newline_never_becomes_a_command(workdir: Path) -> None:
    path = write(workdir / f"x\n{INJECTED}\n.yaml", {"scheduler": {"image": "site/alctl:1"}})
    res = runner.invoke(app, ["submit", path.name, "--to", "slurm", "--out", "job.sbatch"])
    script = workdir / "job.sbatch"
    if res.exit_code == 0:  # held as one quoted word
        no_injected_line(script.read_text())
    else:
        lines = error_lines(res.output)
        assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: manifest file"), lines
        assert not script.exists()


@pytest.mark.parametrize(
    "odd",
    ["my exp", "it's", 'say "hi"', "$(touch pwned)", "`touch pwned`", "a;touch pwned", "${HOME}", "a\nrm -rf ~\nb"],
)
def test_a_value_with_spaces_quotes_or_substitutions_is_one_inert_word(
    workdir: Path, odd: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script runs (with stand-ins for alctl and apptainer): each value arrives as exactly one argument."""
    bindir = workdir / "bin"
    bindir.mkdir()
    for tool in ("apptainer", "alctl"):
        (bindir / tool).write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done > "$ARGS_FILE"\n')
        (bindir / tool).chmod(0o755)
    monkeypatch.setattr(jobs.submit, "default_executable", lambda: [str(bindir / "alctl")])
    manifest_name = f"{odd}.yaml"
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "ARGS_FILE": str(workdir / "args"), "HOME": str(workdir)}
    for image in (None, f"site/{odd}"):
        path = write(workdir / manifest_name, {"scheduler": {"image": image, "gpus": 0}})
        res = runner.invoke(app, ["submit", path.name, "--to", "slurm", "--out", "job.sbatch"])
        if "\n" in odd:  # refused (exit 2, one line), or written and inert
            if res.exit_code == 2:
                assert len(error_lines(res.output)) == 1 and not (workdir / "job.sbatch").exists()
                return
        assert res.exit_code == 0, res.output
        text = (workdir / "job.sbatch").read_text()
        no_injected_line(text)
        assert f"{bindir / 'alctl'} cycle " in text or image is not None  # never the real alctl
        subprocess.run(["bash", "-c", text], cwd=workdir, env=env, check=True, timeout=30)
        got = (workdir / "args").read_bytes().split(b"\0")[:-1]
        tail = [b"cycle", manifest_name.encode(), b"--quiet"]
        if image is None:
            assert got == tail
        else:
            assert got == [b"exec", b"--bind", str(workdir).encode(), b"--pwd", str(workdir).encode(),
                           f"docker://{image}".encode(), b"alctl", *tail]
        assert not (workdir / "pwned").exists()
        (workdir / "args").unlink()


@pytest.mark.parametrize(
    ("option", "value"),
    [("--partition", "gpu\n#SBATCH --qos=high"), ("--time", "1:00:00\n"), ("--memory", "16G\r"),
     ("--image", "img\x00"), ("--namespace", "ml\u2028x")],
)
def test_a_control_character_in_an_option_is_one_line_naming_it(workdir: Path, option: str, value: str) -> None:
    path = write(workdir / "exp.yaml", {})
    out = workdir / "job.sbatch"
    out.write_bytes(b"#!/bin/bash\necho previous\n")
    res = runner.invoke(app, ["submit", str(path), "--to", "slurm", "--out", str(out), option, value])
    assert res.exit_code == 2, res.output
    lines = error_lines(res.output)
    assert len(lines) == 1 and lines[0].startswith(f"error: {option}: must not contain control characters"), lines
    assert out.read_bytes() == b"#!/bin/bash\necho previous\n" and not (workdir / "runs").exists()


# ---------------------------------------------------------------- a bad --time / --memory is one clear line


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--time", "abc"], "error: --time: 'abc' is not a time limit; use HH:MM:SS, MM, MM:SS or D-HH[:MM[:SS]]"),
        (["--memory", "lots"], "error: --memory: 'lots' is not a memory size; use a positive integer with K, M, G or T,"
                               " e.g. 16G"),
    ],
)
def test_a_bad_time_or_memory_option_is_one_line_exit_2(workdir: Path, args: list[str], line: str) -> None:
    path = write(workdir / "exp.yaml", {})
    res = runner.invoke(app, ["submit", str(path), "--to", "slurm", *args])
    assert res.exit_code == 2, res.output
    assert error_lines(res.output) == [line]
    assert not (workdir / "runs").exists() and os.listdir(workdir) == ["exp.yaml"]
