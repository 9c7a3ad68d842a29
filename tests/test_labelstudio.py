"""Label Studio without a server: tasks.json and label_config.xml of `alctl select --format label-studio`, image
references (local files, URL prefix), every refusal of `alctl label` on a Label Studio export, and the REST client's
error lines against a stand-in HTTP server."""

from __future__ import annotations

import csv
import http.server
import json
import shutil
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
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
from alctl.errors import UserError
from tests.checks import digits_human_manifest, pool_table, single_task_dir

runner = CliRunner()
CLASSES = [str(d) for d in range(10)]


def _digits_manifest(folder: Path, name: str = "lsd") -> Path:
    """A one-task digits manifest (human oracle, 2 cycles, tiny training) writing under `folder`."""
    return digits_human_manifest(folder, name)


@pytest.fixture(scope="module")
def waiting_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits run after its cycle 0, waiting for the labels of 10 selected images (made once per module)."""
    folder = tmp_path_factory.mktemp("lsrun")
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


def _truth() -> dict[int, int]:
    """sample_id -> true digit of the digits pool (sample ids are rows of scikit-learn's digits)."""
    from sklearn.datasets import load_digits

    return dict(enumerate(load_digits().target.tolist()))


# ---------------------------------------------------------------- export


def test_label_config_lists_every_class_in_order_and_escapes_names() -> None:
    classes = ["cat", "dog", 'say "hi" & <bye>']
    root = ET.fromstring(ls.label_config(classes))
    assert root.tag == "View"
    image, choices = list(root)
    assert image.tag == "Image" and image.attrib == {"name": "image", "value": "$image"}
    assert choices.tag == "Choices" and choices.attrib["name"] == "label" and choices.attrib["toName"] == "image"
    assert choices.attrib["choice"] == "single"
    assert [c.attrib["value"] for c in choices] == classes


def test_image_references() -> None:
    assert ls.image_ref("pool/a b/x.png", None) == "/data/local-files/?d=pool/a%20b/x.png"
    assert ls.image_ref("pool/x.png", "https://files.example.org/imgs/") == "https://files.example.org/imgs/pool/x.png"
    assert ls.relative_posix(Path("/data/a/b.png"), Path("/data")) == "a/b.png"
    assert ls.relative_posix(Path("/data"), Path("/data")) is None
    assert ls.relative_posix(Path("/other/b.png"), Path("/data")) is None


def test_digits_export_has_the_models_guesses_and_local_file_pngs(waiting: Path, workdir: Path) -> None:
    res = runner.invoke(app, ["select", str(waiting), "--export", "out", "--format", "label-studio",
                              "--local-files-root", str(workdir)])
    assert res.exit_code == 0, res.output
    assert "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=" + str(workdir) in res.output
    assert f"local storage of {workdir / 'out' / 'images'}" in res.output
    assert "--labels EXPORT.json" in res.output
    tasks = json.loads((workdir / "out" / "tasks.json").read_text())
    pending = [sid for sid, src in zip(_pool(waiting)["sample_id"], _pool(waiting)["label_source"]) if src == "pending"]
    assert sorted(t["data"]["sample_id"] for t in tasks) == sorted(pending) and len(tasks) == 10
    # the CSV export of the same selection carries the same guesses
    assert runner.invoke(app, ["select", str(waiting), "--export", "csvout"]).exit_code == 0
    rows = {int(r["sample_id"]): r for r in csv.DictReader((workdir / "csvout" / "to_label.csv").open())}
    key = mf.tasks(mf.load(waiting))[0].key
    for t in tasks:
        sid = t["data"]["sample_id"]
        assert t["data"]["image"] == f"/data/local-files/?d=out/images/{sid}.png"
        assert float(rows[sid]["score"]) == pytest.approx(t["data"]["acquisition_score"], rel=1e-4)
        (pred,) = t["predictions"]
        assert pred["model_version"] == f"lsd/{key}/cycle 0"
        assert pred["score"] == pytest.approx(float(rows[sid]["p1"]), abs=1e-4) and 0 < pred["score"] <= 1
        assert pred["result"] == [{"from_name": "label", "to_name": "image", "type": "choices",
                                   "value": {"choices": [rows[sid]["top1"]]}}]
        png = Image.open(workdir / "out" / "images" / f"{sid}.png")
        assert png.size == (128, 128) and png.mode == "L"  # 8 x 8 digits scaled up 16 times
    config = ET.fromstring((workdir / "out" / "label_config.xml").read_text())
    assert [c.attrib["value"] for c in config.iter("Choice")] == CLASSES
    # a URL prefix instead of local files
    res = runner.invoke(app, ["select", str(waiting), "--export", "out", "-f", "label-studio",
                              "--image-url-prefix", "http://host:9000/files/"])
    assert res.exit_code == 0 and "local storage" not in res.output, res.output
    tasks = json.loads((workdir / "out" / "tasks.json").read_text())
    assert all(t["data"]["image"] == f"http://host:9000/files/images/{t['data']['sample_id']}.png" for t in tasks)
    # images outside the local-files root: refused before anything is written
    (workdir / "elsewhere").mkdir()
    res = runner.invoke(app, ["select", str(waiting), "--export", "out2", "-f", "label-studio",
                              "--local-files-root", str(workdir / "elsewhere")])
    assert res.exit_code == 2 and "is not inside" in res.output and "--image-url-prefix" in res.output, res.output
    assert not (workdir / "out2").exists()


def test_image_folder_initial_set_has_no_predictions_and_file_references(workdir: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(30):
        path = workdir / "images" / "pool" / f"b{i % 2}" / f"img {i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.rint(digits.images[i] * 255 / 16).astype(np.uint8)).save(path)
    manifest = workdir / "folder.yaml"
    manifest.write_text(yaml.safe_dump({
        "name": "folder", "repetitions": 1,
        "dataset": {"name": "imagefolder", "root": "images", "pool": "pool", "image_size": 8, "channels": 1,
                    "classes": CLASSES},
        "model": {"width": 0.125}, "train": {"epochs": 1, "device": "cpu"},
        "active": {"initial": 5, "budget": 5, "cycles": 2, "oracle": "human"}}))
    res = runner.invoke(app, ["cycle", str(manifest)])
    assert res.exit_code == 0 and "waiting for labels: 5 images selected for cycle 0" in res.output, res.output
    res = runner.invoke(app, ["select", str(manifest), "--export", "out", "-f", "label-studio"],
                        env={"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(workdir)})
    assert res.exit_code == 0 and "the initial set" in res.output, res.output
    assert f"local storage of {workdir / 'images' / 'pool'}" in res.output
    tasks = json.loads((workdir / "out" / "tasks.json").read_text())
    assert len(tasks) == 5 and not (workdir / "out" / "images").exists()
    for t in tasks:
        assert "predictions" not in t and "acquisition_score" not in t["data"]
        assert t["data"]["image"] == "/data/local-files/?d=images/" + t["data"]["path"].replace(" ", "%20")
        assert t["data"]["path"].startswith("pool/b")
    res = runner.invoke(app, ["select", str(manifest), "--export", "out", "-f", "label-studio",
                              "--image-url-prefix", "https://files.example.org/my images"])
    tasks = json.loads((workdir / "out" / "tasks.json").read_text())
    assert res.exit_code == 0 and all(
        t["data"]["image"] == "https://files.example.org/my images/" + t["data"]["path"].replace(" ", "%20")
        for t in tasks)


def test_select_option_mistakes_exit_2(waiting: Path) -> None:
    for args, expected in [
        (["--project", "3"], "--project: only with --to-label-studio"),
        (["--to-label-studio", "http://localhost:1"], "--to-label-studio: give --export DIR too"),
        (["--image-url-prefix", "http://x"], "--image-url-prefix: only with --format label-studio"),
        (["--format", "label-studio"], "--format: label-studio writes files; give --export DIR"),
    ]:
        res = runner.invoke(app, ["select", str(waiting), *args])
        assert res.exit_code == 2 and expected in res.output, (args, res.output)
    res = runner.invoke(app, ["select", str(waiting), "--export", "o", "--to-label-studio", "http://localhost:1"],
                        env={"LABEL_STUDIO_API_KEY": ""})
    assert res.exit_code == 2 and "LABEL_STUDIO_API_KEY: not set" in res.output, res.output


# ---------------------------------------------------------------- import


def _export(tasks: list[dict[str, Any]], labels: dict[int, str | None], cancelled: frozenset[int] = frozenset(),
            ) -> list[dict[str, Any]]:
    """Label Studio's JSON export of tasks.json with one annotation per task (a class, or none when None;
    cancelled = skipped)."""
    out = []
    for i, t in enumerate(tasks, start=1):
        sid = t["data"]["sample_id"]
        anns = []
        if sid in cancelled:
            anns = [{"id": 100 + i, "result": [], "was_cancelled": True}]
        elif labels.get(sid) is not None:
            anns = [{"id": 100 + i, "was_cancelled": False, "result": [
                {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [labels[sid]]}}]}]
        out.append({"id": i, "data": t["data"], "annotations": anns, "predictions": []})
    return out


def _exported_tasks(waiting: Path, workdir: Path) -> list[dict[str, Any]]:
    res = runner.invoke(app, ["select", str(waiting), "--export", "out", "-f", "label-studio",
                              "--local-files-root", str(workdir)])
    assert res.exit_code == 0, res.output
    return json.loads((workdir / "out" / "tasks.json").read_text())


def test_json_and_json_min_exports_import_the_true_labels(waiting: Path, workdir: Path) -> None:
    tasks = _exported_tasks(waiting, workdir)
    truth = _truth()
    sids = [t["data"]["sample_id"] for t in tasks]
    # JSON_MIN with half the tasks: a partial import, the cycle waits for the rest
    rows = [{**t["data"], "id": i, "label": str(truth[t["data"]["sample_id"]]), "annotator": 1, "annotation_id": i}
            for i, t in enumerate(tasks[:5], start=1)]
    (workdir / "min.json").write_text(json.dumps(rows))
    res = runner.invoke(app, ["label", str(waiting), "--labels", "min.json"])
    assert res.exit_code == 0 and "imported 5 labels" in res.output and "5 selected images still wait" in res.output
    # the full JSON export of the whole project, the 5 imported ones included: they are left out
    full = _export(tasks, {sid: str(truth[sid]) for sid in sids})
    (workdir / "export.txt").write_text(json.dumps(full))  # no .json suffix: recognised by its content
    res = runner.invoke(app, ["label", str(waiting), "--labels", "export.txt"])
    assert res.exit_code == 0 and "imported 5 labels" in res.output, res.output
    assert "(5 tasks of images labeled before left out)" in res.output and "the selection is complete" in res.output
    pool = _pool(waiting)
    got = {sid: lab for sid, lab, src in zip(pool["sample_id"], pool["label"], pool["label_source"]) if sid in sids}
    assert got == {sid: truth[sid] for sid in sids}
    assert [src for sid, src in zip(pool["sample_id"], pool["label_source"]) if sid in sids] == ["human"] * 10
    # importing the same export again: nothing new, refused
    res = runner.invoke(app, ["label", str(waiting), "--labels", "export.txt"])
    assert res.exit_code == 2 and "no new labels: the 10 annotated task(s) were imported before" in res.output


def test_every_refusal_is_one_line_and_nothing_is_written(waiting: Path, workdir: Path) -> None:
    tasks = _exported_tasks(waiting, workdir)
    truth = _truth()
    sids = [t["data"]["sample_id"] for t in tasks]
    pool = _pool(waiting)
    never = next(s for s, c in zip(pool["sample_id"], pool["labeled_cycle"]) if c < 0)
    initial = next(s for s, src in zip(pool["sample_id"], pool["label_source"]) if src == "initial")
    labels: dict[int, str | None] = {sid: str(truth[sid]) for sid in sids}
    labels[sids[1]] = "eleven"  # a class not in the manifest
    labels[sids[2]] = None  # no annotation
    full = _export(tasks, labels, cancelled=frozenset({sids[3]}))
    full[4]["annotations"].append({"id": 999, "was_cancelled": False, "result": [  # two annotators disagree
        {"from_name": "label", "to_name": "image", "type": "choices",
         "value": {"choices": [str((truth[sids[4]] + 1) % 10)]}}]})
    full.append({"id": 50, "data": {"image": "x", "sample_id": 987654}, "annotations": full[0]["annotations"]})
    full.append({"id": 51, "data": {"image": "x", "sample_id": never}, "annotations": full[0]["annotations"]})
    full.append({"id": 52, "data": {"image": "x"}, "annotations": full[0]["annotations"]})
    wrong = str((truth[initial] + 1) % 10)
    full.append(_export([{"data": {"image": "x", "sample_id": initial}}], {initial: wrong})[0] | {"id": 53})
    (workdir / "bad.json").write_text(json.dumps(full))
    before = {p.name: p.read_bytes() for p in _task_dir(waiting).glob("*.parquet")}
    res = runner.invoke(app, ["label", str(waiting), "--labels", "bad.json"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    expected = [
        f"task 3 (sample_id {sids[2]}): has no annotation",
        f"task 4 (sample_id {sids[3]}): skipped (its annotation was cancelled)",
        "task 52: no sample_id in its data (not a task alctl exported)",
        f"task 53 annotation 101: sample_id {initial} was labeled '{truth[initial]}' before; this annotation says"
        f" '{wrong}'",
        "unknown class 'eleven'",
        f"task 5 annotation 999: sample_id {sids[4]} labeled",
        "task 50 annotation 101: sample_id 987654 is not in the pool",
        f"task 51 annotation 101: sample_id {never} is not waiting for a label",
    ]
    assert len(lines) == len(expected), res.output
    for text in expected:
        assert sum(text in line for line in lines) == 1, (text, res.output)
    assert all(line.startswith("error: bad.json: task ") for line in lines)
    assert {p.name: p.read_bytes() for p in _task_dir(waiting).glob("*.parquet")} == before
    for text, expected_line in [
        ("{not json", "bad2.json:1:2: not valid JSON"),
        ('{"tasks": []}', "expected a list of tasks"),
        ("[]", "no labels: no task to import"),
    ]:
        (workdir / "bad2.json").write_text(text)
        res = runner.invoke(app, ["label", str(waiting), "--labels", "bad2.json"])
        assert res.exit_code == 2 and expected_line in res.output, (text, res.output)
        assert {p.name: p.read_bytes() for p in _task_dir(waiting).glob("*.parquet")} == before


def test_label_option_mistakes_exit_2(waiting: Path) -> None:
    for args, expected in [
        ([], "--labels: give one source"),
        (["--labels", "a.csv", "--from-label-studio", "http://x"], "--labels: give one source"),
        (["--from-label-studio", "http://localhost:1"], "--project: required with --from-label-studio"),
        (["--labels", "a.csv", "--project", "2"], "--project: only with --from-label-studio"),
        (["--from-label-studio", "localhost:8080", "--project", "2"], "is not a Label Studio URL"),
    ]:
        res = runner.invoke(app, ["label", str(waiting), *args], env={"LABEL_STUDIO_API_KEY": "k"})
        assert res.exit_code == 2 and expected in res.output, (args, res.output)
        assert res.output.count("error:") == 1


def test_import_tasks_choices_rules() -> None:
    pool, pending = np.arange(10), np.array([3, 4])
    one = [{"id": 1, "data": {"sample_id": 3}, "annotations": [
        {"id": 7, "result": [{"type": "choices", "value": {"choices": ["1", "2"]}}]}]}]
    with pytest.raises(UserError, match="task 1 annotation 7 \\(sample_id 3\\): chooses 2 classes \\(1, 2\\)"):
        ls.import_tasks(one, "x", pool, pending, CLASSES, {})
    one[0]["annotations"][0]["result"] = [{"type": "rectanglelabels", "value": {}}]
    with pytest.raises(UserError, match="chooses no class; choose exactly one"):
        ls.import_tasks(one, "x", pool, pending, CLASSES, {})
    # a cancelled annotation next to a real one: the real one counts
    one[0]["annotations"] = [{"id": 8, "was_cancelled": True, "result": []},
                             {"id": 9, "result": [{"type": "choices", "value": {"choices": ["5"]}}]}]
    got = ls.import_tasks(one, "x", pool, pending, CLASSES, {})
    assert got.sample_ids.tolist() == [3] and got.labels.tolist() == [5] and got.tasks == 1 and got.earlier == 0
    # JSON_MIN: a label given as {"choices": [...]} or an index
    rows = [{"id": 1, "sample_id": 3, "label": {"choices": ["6"]}}, {"id": 2, "sample_id": 4, "label": 7}]
    got = ls.import_tasks(rows, "x", pool, pending, CLASSES, {})
    assert dict(zip(got.sample_ids.tolist(), got.labels.tolist())) == {3: 6, 4: 7}


# ---------------------------------------------------------------- the REST client against a stand-in server


class _Fake(http.server.BaseHTTPRequestHandler):
    """Answers like Label Studio: a legacy token, a personal access token exchanged for an access token."""

    seen: list[tuple[str, str, str | None]] = []

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _reply(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(("POST", self.path, self.headers.get("Authorization")))
        if self.path == "/api/token/refresh/":
            ok = body.get("refresh") == "a.b.c"
            self._reply(200 if ok else 401, {"access": "ACCESS"} if ok else {"detail": "Token is invalid"})
        else:
            self._reply(404, {"detail": "Not found."})

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        auth = self.headers.get("Authorization")
        self.seen.append(("GET", self.path, auth))
        if auth not in ("Token legacy", "Bearer ACCESS"):
            self._reply(401, {"detail": "Invalid token."})
        elif self.path == "/api/projects/1":
            self._reply(200, {"id": 1, "title": "p"})
        else:
            self._reply(404, {"detail": "No Project matches the given query."})


@pytest.fixture
def fake_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Fake.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_client_tokens_and_error_lines(fake_server: str) -> None:
    assert ls.LabelStudio(fake_server, "legacy").project(1)["title"] == "p"
    assert _Fake.seen[-1] == ("GET", "/api/projects/1", "Token legacy")
    client = ls.LabelStudio(fake_server + "/", "a.b.c")  # a personal access token (JWT): exchanged once
    client.project(1)
    client.project(1)
    assert [s[:2] for s in _Fake.seen[1:]] == [("POST", "/api/token/refresh/"), ("GET", "/api/projects/1"),
                                                ("GET", "/api/projects/1")]
    assert _Fake.seen[-1][2] == "Bearer ACCESS"
    with pytest.raises(UserError, match="refused the API key \\(HTTP 401: Invalid token.\\)"):
        ls.LabelStudio(fake_server, "wrong").project(1)
    with pytest.raises(UserError, match=f"--project: {fake_server} has no project 2"):
        ls.LabelStudio(fake_server, "legacy").project(2)
    with pytest.raises(UserError, match="cannot reach Label Studio at http://127.0.0.1:9 .*is it running"):
        ls.LabelStudio("http://127.0.0.1:9", "legacy", timeout=5).project(1)
