"""A person's labels and annotation files are handled safely (issue 25): the Label Studio API key never follows a
redirect to another server, an export never overwrites labels a task does not hold, label_config.xml stays XML
and to_label.csv cells never start a formula whatever the class names, sample ids are plain decimal integers,
deep JSON and oversized files / replies are one-line refusals, and image URL prefixes are http(s) or a path."""

from __future__ import annotations

import csv
import http.server
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import tracemalloc
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from alctl.annotate import labelstudio as ls
from alctl import config as mf
from alctl.cli import app
from alctl.errors import AlctlError, UserError
from alctl.annotate.labels import read_labels
from tests.checks import digits_human_manifest, pool_table, single_task_dir

runner = CliRunner()
DIGITS = [str(d) for d in range(10)]


# ---------------------------------------------------------------- a digits run waiting for 10 labels


def _digits_manifest(folder: Path, name: str = "safe") -> Path:
    """A one-task digits manifest (human oracle, 2 cycles, tiny training) writing under `folder`."""
    return digits_human_manifest(folder, name)


@pytest.fixture(scope="module")
def waiting_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits run after its cycle 0, waiting for the labels of 10 selected images (made once per module)."""
    folder = tmp_path_factory.mktemp("safe")
    res = runner.invoke(app, ["cycle", str(_digits_manifest(folder))])
    assert res.exit_code == 0 and "waiting for labels: 10 images" in res.output, res.output
    return folder


@pytest.fixture
def waiting(waiting_template: Path, workdir: Path) -> Path:
    """A private copy of the waiting run in the working directory; the manifest's path."""
    shutil.copytree(waiting_template / "runs", workdir / "runs")
    return _digits_manifest(workdir)


_task_dir = single_task_dir
_pool = pool_table


def _pending(manifest: Path) -> list[int]:
    pool = _pool(manifest)
    return [sid for sid, src in zip(pool["sample_id"], pool["label_source"]) if src == "pending"]


def _snapshot(manifest: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in _task_dir(manifest).glob("*.parquet")}


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


# ---------------------------------------------------------------- (5) the API key and redirects


def _server(handle: Callable[[http.server.BaseHTTPRequestHandler], None]) -> tuple[http.server.HTTPServer, str]:
    """A local HTTP server on 127.0.0.1 answering every GET and POST with `handle(request)`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            handle(self)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            handle(self)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _reply(req: http.server.BaseHTTPRequestHandler, code: int, body: Any = None,
           headers: dict[str, str] | None = None) -> None:
    data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req.send_response(code)
    for k, v in (headers or {}).items():
        req.send_header(k, v)
    req.send_header("Content-Type", "application/json")
    req.send_header("Content-Length", str(len(data)))
    req.end_headers()
    req.wfile.write(data)


@pytest.fixture
def servers() -> Iterator[list[http.server.HTTPServer]]:
    """Servers a test started, shut down after it."""
    started: list[http.server.HTTPServer] = []
    yield started
    for s in started:
        s.shutdown()
        s.server_close()


def test_api_key_is_never_sent_to_the_server_a_redirect_names(
        waiting: Path, servers: list[http.server.HTTPServer]) -> None:
    seen: list[tuple[str, str, str | None]] = []

    def other(req: http.server.BaseHTTPRequestHandler) -> None:  # records what reaches it, answers like Label Studio
        seen.append((req.command, req.path, req.headers.get("Authorization")))
        _reply(req, 200, [] if "/export" in req.path else {"id": 1, "title": "p", "label_config": ""})

    server_b, url_b = _server(other)
    servers.append(server_b)

    def redirecting(req: http.server.BaseHTTPRequestHandler) -> None:
        _reply(req, 302, headers={"Location": url_b + req.path})

    server_a, url_a = _server(redirecting)
    servers.append(server_a)
    res = runner.invoke(app, ["label", str(waiting), "--from-label-studio", url_a, "--project", "1"],
                        env={"LABEL_STUDIO_API_KEY": "secret-legacy-token"})
    assert not [s for s in seen if s[2] is not None], seen  # the key never reached the other server
    assert res.exit_code == 2 and len(_errors(res.output)) == 1, res.output
    assert f"--from-label-studio: {url_a} redirected GET /api/projects/1" in res.output
    assert f"to {url_b}/api/projects/1" in res.output and "another server" in res.output
    # a personal access token's exchange (its body holds the key) is not sent there either
    with pytest.raises(UserError, match="another server"):
        ls.LabelStudio(url_a, "a.b.c").project(1)
    assert seen == []

    # a redirect within the same server is followed, with the key
    def same(req: http.server.BaseHTTPRequestHandler) -> None:
        if req.path == "/api/projects/1":
            _reply(req, 301, headers={"Location": "/api/projects/1/"})
        elif req.headers.get("Authorization") == "Token k":
            _reply(req, 200, {"id": 1, "title": "moved"})
        else:
            _reply(req, 401, {"detail": "Invalid token."})

    server_c, url_c = _server(same)
    servers.append(server_c)
    assert ls.LabelStudio(url_c, "k").project(1)["title"] == "moved"


def test_label_studio_replies_are_size_bounded_and_deep_json_is_one_line(
        servers: list[http.server.HTTPServer]) -> None:
    def huge(req: http.server.BaseHTTPRequestHandler) -> None:
        if req.path == "/api/projects/1":  # 20 MiB of JSON, streamed without a length
            req.send_response(200)
            req.send_header("Content-Type", "application/json")
            req.end_headers()
            try:
                req.wfile.write(b'{"title": "')
                for _ in range(20):
                    req.wfile.write(b"x" * (1 << 20))
                req.wfile.write(b'"}')
            except OSError:  # the client stopped reading
                pass
            req.close_connection = True
        else:  # nested deeper than Python's recursion limit
            _reply(req, 200, b"[" * 100_000 + b"]" * 100_000)

    server, url = _server(huge)
    servers.append(server)
    with pytest.raises(AlctlError, match=r"GET /api/projects/1 on .*: the reply is larger than 16 MiB") as caught:
        ls.LabelStudio(url, "k").project(1)
    assert caught.value.exit_code == 1 and len(caught.value.problems) == 1
    with pytest.raises(AlctlError, match="GET /api/storages/localfiles on .*: the reply is not JSON"):
        ls.LabelStudio(url, "k").local_storages(1)


# ---------------------------------------------------------------- (8) an export never overwrites a person's work


def test_export_never_overwrites_labels_the_task_does_not_hold(waiting: Path, workdir: Path) -> None:
    res = runner.invoke(app, ["select", str(waiting), "--export", "out"])
    assert res.exit_code == 0, res.output
    sheet = workdir / "out" / "to_label.csv"
    first = sheet.read_bytes()
    # an identical re-export of the same selection is fine
    res = runner.invoke(app, ["select", str(waiting), "--export", "out"])
    assert res.exit_code == 0 and sheet.read_bytes() == first, res.output
    # another task's sheet in the same folder: filled labels of other images
    pool = _pool(waiting)
    others = [s for s, c in zip(pool["sample_id"], pool["labeled_cycle"]) if c < 0][:3]
    theirs = "sample_id,path,score,label\n" + "".join(f"{s},,0.5,{i}\n" for i, s in enumerate(others)) + "99,,0.1,\n"
    sheet.write_text(theirs)
    res = runner.invoke(app, ["select", str(waiting), "--export", "out"])
    assert res.exit_code == 2 and len(_errors(res.output)) == 1, res.output
    assert "out/to_label.csv already holds 3 filled-in label(s) not imported into this task" in res.output
    assert f"line 2 (sample_id {others[0]})" in res.output and "alctl label" in res.output
    assert "--export another folder" in res.output
    assert sheet.read_text() == theirs
    # a Label Studio export saved as tasks.json holds a person's annotations: not overwritten either
    tasks = [{"id": 7, "data": {"image": "x", "sample_id": others[0]},
              "annotations": [{"id": 3, "result": [{"type": "choices", "value": {"choices": ["4"]}}]}]}]
    (workdir / "ls").mkdir()
    (workdir / "ls" / "tasks.json").write_text(json.dumps(tasks))
    res = runner.invoke(app, ["select", str(waiting), "--export", "ls", "-f", "label-studio",
                              "--local-files-root", str(workdir)])
    assert res.exit_code == 2 and len(_errors(res.output)) == 1, res.output
    assert "tasks.json already holds 1 annotation(s) not imported into this task (task 7" in res.output
    assert json.loads((workdir / "ls" / "tasks.json").read_text()) == tasks
    assert not (workdir / "ls" / "label_config.xml").exists() and not (workdir / "ls" / "images").exists()
    # labels the task holds already (imported, same class) are not lost by replacing the sheet
    pending = _pending(waiting)
    sheet.write_text("sample_id,label\n" + f"{pending[0]},3\n")
    assert runner.invoke(app, ["label", str(waiting), "--labels", str(sheet)]).exit_code == 0
    res = runner.invoke(app, ["select", str(waiting), "--export", "out"])
    assert res.exit_code == 0 and len(sheet.read_text().splitlines()) == 1 + 9, res.output


# ---------------------------------------------------------------- class names: XML and spreadsheet formulas

FORMULA_CLASSES = ["=1+1", "@SUM(A1)", "-neg", "+plus", "'=quoted", "\x1b[31mred"]
# what a spreadsheet-safe cell holds for each class (a quote before a formula, one more before quotes + formula)
CELLS = {"=1+1": "'=1+1", "@SUM(A1)": "'@SUM(A1)", "-neg": "'-neg", "+plus": "'+plus", "'=quoted": "''=quoted",
         "\x1b[31mred": "\x1b[31mred"}


def _folder_manifest(folder: Path) -> Path:
    """An image folder whose pool folder and class names look like spreadsheet formulas; human oracle."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(36):
        path = folder / "images" / "=pool" / f"img{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.rint(digits.images[i] * 255 / 16).astype(np.uint8)).save(path)
    manifest = folder / "formula.yaml"
    manifest.write_text(yaml.safe_dump({
        "name": "formula", "repetitions": 1, "output": str(folder / "runs"),
        "dataset": {"name": "imagefolder", "root": str(folder / "images"), "pool": "=pool", "image_size": 8,
                    "channels": 1, "classes": FORMULA_CLASSES},
        "model": {"width": 0.125},
        "train": {"epochs": 1, "batch_size": 8, "min_steps": 2, "device": "cpu"},
        "active": {"initial": 6, "budget": 6, "cycles": 3, "strategy": "uncertainty", "oracle": "human"}}))
    return manifest


def _fill(sheet: Path, label_of: Callable[[dict[str, str]], str]) -> Path:
    """The sheet with its label column filled by `label_of(row)`, written beside it as answered.csv."""
    rows = list(csv.DictReader(io.StringIO(sheet.read_text(), newline="")))
    for row in rows:
        row["label"] = label_of(row)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    answered = sheet.with_name("answered.csv")
    answered.write_text(out.getvalue())
    return answered


def test_class_names_stay_text_in_to_label_csv_and_xml_in_label_config(workdir: Path) -> None:
    manifest = _folder_manifest(workdir)
    res = runner.invoke(app, ["cycle", str(manifest)])
    assert res.exit_code == 0 and "waiting for labels: 6 images" in res.output, res.output
    # the initial set: paths start with "=" (the pool folder), written as text
    assert runner.invoke(app, ["select", str(manifest), "--export", "first"]).exit_code == 0
    rows = list(csv.DictReader(io.StringIO((workdir / "first" / "to_label.csv").read_text(), newline="")))
    assert rows and all(r["path"].startswith("'=pool/") for r in rows), rows
    # the person writes each class as the sheet shows it; the import reads back the class itself
    wanted = {int(r["sample_id"]): FORMULA_CLASSES[i % len(FORMULA_CLASSES)] for i, r in enumerate(rows)}
    answered = _fill(workdir / "first" / "to_label.csv", lambda r: CELLS[wanted[int(r["sample_id"])]])
    res = runner.invoke(app, ["label", str(manifest), "--labels", str(answered)])
    assert res.exit_code == 0 and "imported 6 labels" in res.output, res.output
    m = mf.load(manifest)
    pool = pq.read_table(mf.run_dir(m) / "tasks" / mf.tasks(m)[0].key / "pool.parquet").to_pydict()
    got = {s: lab for s, lab in zip(pool["sample_id"], pool["label"]) if s in wanted}
    assert got == {s: FORMULA_CLASSES.index(c) for s, c in wanted.items()}
    # after training: the model's guesses (class names) in the sheet are text too, and copy back exactly
    res = runner.invoke(app, ["cycle", str(manifest)])
    assert res.exit_code == 0 and "waiting for labels: 6 images" in res.output, res.output
    assert runner.invoke(app, ["select", str(manifest), "--export", "next"]).exit_code == 0
    rows = list(csv.DictReader(io.StringIO((workdir / "next" / "to_label.csv").read_text(), newline="")))
    for r in rows:
        for column in ("path", "top1", "top2", "top3"):
            assert not r[column].startswith(("=", "+", "-", "@")), (column, r)
        assert r["top1"] in CELLS.values()
    guessed = {int(r["sample_id"]): next(c for c, cell in CELLS.items() if cell == r["top1"]) for r in rows}
    res = runner.invoke(app, ["label", str(manifest), "--labels",
                              str(_fill(workdir / "next" / "to_label.csv", lambda r: r["top1"]))])
    assert res.exit_code == 0 and "imported 6 labels" in res.output, res.output
    pool = pq.read_table(mf.run_dir(m) / "tasks" / mf.tasks(m)[0].key / "pool.parquet").to_pydict()
    assert {s: lab for s, lab in zip(pool["sample_id"], pool["label"]) if s in guessed} == {
        s: FORMULA_CLASSES.index(c) for s, c in guessed.items()}
    # label_config.xml parses, every class is a Choice (what XML can hold of it: the escape character dropped)
    res = runner.invoke(app, ["cycle", str(manifest)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["select", str(manifest), "--export", "ls", "-f", "label-studio",
                              "--local-files-root", str(workdir)])
    assert res.exit_code == 0, res.output
    shown = [c.replace("\x1b", "") for c in FORMULA_CLASSES]
    config = ET.parse(workdir / "ls" / "label_config.xml").getroot()
    assert [c.attrib["value"] for c in config.iter("Choice")] == shown
    tasks = json.loads((workdir / "ls" / "tasks.json").read_text())
    assert tasks and all(t["predictions"][0]["result"][0]["value"]["choices"][0] in shown for t in tasks)
    # Label Studio answers with the choice value: it maps back to the class
    export = [{"id": i, "data": t["data"], "annotations": [{"id": i, "result": [
        {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["[31mred"]}}]}]}
        for i, t in enumerate(tasks, start=1)]
    (workdir / "export.json").write_text(json.dumps(export))
    res = runner.invoke(app, ["label", str(manifest), "--labels", "export.json"])
    assert res.exit_code == 0 and f"imported {len(tasks)} labels" in res.output, res.output
    pool = pq.read_table(mf.run_dir(m) / "tasks" / mf.tasks(m)[0].key / "pool.parquet").to_pydict()
    red = FORMULA_CLASSES.index("\x1b[31mred")
    ids = {t["data"]["sample_id"] for t in tasks}
    assert {lab for s, lab in zip(pool["sample_id"], pool["label"]) if s in ids} == {red}


def test_label_config_is_xml_whatever_the_class_names() -> None:
    classes = ["a\x01b", "esc\x1b[0m", "line\nbreak", "tab\there", 'q"<&>\'', "\u202eevil"]
    root = ET.fromstring(ls.label_config(classes))
    assert [c.attrib["value"] for c in root.iter("Choice")] == [
        "ab", "esc[0m", "line\nbreak", "tab\there", 'q"<&>\'', "\u202eevil"]


# ---------------------------------------------------------------- sample ids, deep JSON


def test_sample_ids_must_be_plain_ascii_decimal_integers(waiting: Path, workdir: Path) -> None:
    pending = _pending(waiting)
    two = [s for s in pending if s >= 10][:2]
    assert len(two) == 2, pending
    underscore = f"{str(two[0])[0]}_{str(two[0])[1:]}"
    arabic = str(two[1]).translate(str.maketrans("0123456789", "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667"
                                                              "\u0668\u0669"))
    before = _snapshot(waiting)
    (workdir / "ids.csv").write_text(f"sample_id,label\n{underscore},3\n {pending[2]} ,4\n{arabic},5\n",
                                     encoding="utf-8")
    res = runner.invoke(app, ["label", str(waiting), "--labels", "ids.csv"])
    assert res.exit_code == 2 and len(_errors(res.output)) == 2, res.output
    assert f"ids.csv:2: sample_id '{underscore}' is not an integer" in res.output
    assert f"ids.csv:4: sample_id '{arabic}' is not an integer" in res.output
    assert _snapshot(waiting) == before
    # the same in a Label Studio export
    ann = [{"id": 1, "result": [{"type": "choices", "value": {"choices": ["3"]}}]}]
    (workdir / "ids.json").write_text(json.dumps([{"id": 5, "data": {"sample_id": underscore}, "annotations": ann}]))
    res = runner.invoke(app, ["label", str(waiting), "--labels", "ids.json"])
    assert res.exit_code == 2 and len(_errors(res.output)) == 1, res.output
    assert f"ids.json: task 5 annotation 1: sample_id '{underscore}' is not an integer" in res.output
    assert _snapshot(waiting) == before
    # spaces around a plain id are fine
    (workdir / "ok.csv").write_text(f"sample_id,label\n {pending[2]} ,4\n")
    res = runner.invoke(app, ["label", str(waiting), "--labels", "ok.csv"])
    assert res.exit_code == 0 and "imported 1 labels" in res.output, res.output


def test_deeply_nested_json_is_one_line_exit_2(waiting: Path, workdir: Path) -> None:
    before = _snapshot(waiting)
    (workdir / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    res = runner.invoke(app, ["label", str(waiting), "--labels", "deep.json"])
    assert res.exit_code == 2 and _errors(res.output) == [
        f"error: deep.json: JSON nested too deeply (over {sys.getrecursionlimit()} levels); expected Label Studio's"
        " JSON or JSON_MIN export"], res.output
    assert _snapshot(waiting) == before


# ---------------------------------------------------------------- size limits


_CHILD = """
import json, sys
from typer.testing import CliRunner
from alctl.cli import app
out = []
for args in json.loads(sys.argv[1]):
    res = CliRunner().invoke(app, args)
    out.append([res.exit_code, res.output[-2000:] + (repr(res.exception) if res.exit_code == 1 else "")])
print(json.dumps(out))
"""


def _limited_cli(calls: list[list[str]], cwd: Path) -> list[tuple[int, str]]:
    """(exit code, output) of `alctl ARGS` for each ARGS, run one after the other in a child process whose heap is
    capped at 3 GiB, so that an unbounded read fails there (exit 1, MemoryError) instead of filling this machine's
    memory."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (3 << 30, 3 << 30))

    res = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(calls)], cwd=cwd, capture_output=True, text=True,
                         timeout=300, preexec_fn=cap, env=os.environ.copy(), check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return [(code, output) for code, output in json.loads(res.stdout.splitlines()[-1])]


def test_labels_from_dev_zero_and_an_oversized_json_are_refused(waiting: Path, workdir: Path) -> None:
    before = _snapshot(waiting)
    big = workdir / "big.json"  # sparse: 256 MiB + 1 byte of zeros, no disk used
    with big.open("wb") as fh:
        fh.truncate((256 << 20) + 1)
    (zero, zero_out), (json_code, json_out) = _limited_cli(
        [["label", str(waiting), "--labels", "/dev/zero"], ["label", str(waiting), "--labels", str(big)]], workdir)
    assert zero == 2 and _errors(zero_out) == [
        "error: --labels: /dev/zero is larger than 64 MiB, the most alctl reads of a labels file; split it and"
        " import the parts one after the other"], (zero, zero_out)
    assert json_code == 2 and _errors(json_out) == [
        f"error: --labels: {big} is larger than 256 MiB, the most alctl reads of a labels file; split it and import"
        " the parts one after the other"], (json_code, json_out)
    assert _snapshot(waiting) == before


def test_a_large_legal_csv_imports_in_memory_proportionate_to_its_filled_rows(tmp_path: Path) -> None:
    pending = np.arange(100, 110)
    lines = ["sample_id,path,score,top1,p1,top2,p2,top3,p3,label"]
    i = written = 0
    while written < 5_000_000:  # ~5 MB: every row labels one of the 10 pending images, consistently
        sid = int(pending[i % 10])
        lines.append(f"{sid},pool/batch{i % 7}/some/longer/folder/img{i:07d}.png,0.{i:06d},3,0.9,5,0.05,8,0.01,"
                     f"{sid % 10}")
        written += len(lines[-1]) + 1
        i += 1
    path = tmp_path / "big.csv"
    path.write_text("\n".join(lines) + "\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        ids, labels = read_labels(path, np.arange(2000), pending, DIGITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sorted(ids.tolist()) == pending.tolist() and all(labels == ids % 10)
    assert peak < size, f"peak {peak / 1e6:.1f} MB of Python memory to import a {size / 1e6:.1f} MB CSV"


# ---------------------------------------------------------------- --image-url-prefix


@pytest.mark.parametrize("prefix", ["javascript:alert(1)//", "http://host/files\nX-Injected: 1", "//evil.example/x",
                                    "file:///etc", "data:text/html,hi"])
def test_image_url_prefix_must_be_http_or_a_path(waiting: Path, workdir: Path, prefix: str) -> None:
    res = runner.invoke(app, ["select", str(waiting), "--export", "out", "-f", "label-studio",
                              "--image-url-prefix", prefix])
    assert res.exit_code == 2 and len(_errors(res.output)) == 1, res.output
    assert _errors(res.output)[0].startswith("error: --image-url-prefix: ")
    assert not (workdir / "out").exists()


def test_image_url_prefix_accepts_a_server_path(waiting: Path, workdir: Path) -> None:
    res = runner.invoke(app, ["select", str(waiting), "--export", "out", "-f", "label-studio",
                              "--image-url-prefix", "/data/files/"])
    assert res.exit_code == 0, res.output
    tasks = json.loads((workdir / "out" / "tasks.json").read_text())
    assert all(t["data"]["image"] == f"/data/files/images/{t['data']['sample_id']}.png" for t in tasks)
    res = runner.invoke(app, ["select", str(waiting), "--export", "out", "-f", "label-studio",
                              "--image-url-prefix", "javascript:alert(1)//"])
    assert res.exit_code == 2 and "--image-url-prefix" in res.output, res.output
