"""A real Label Studio as the annotator (slow): a digits run with a human oracle exports each selection, Label Studio
holds it (tasks, predictions, images served as local files), true labels are posted through its REST API, its
export is imported, and the final pool equals the simulated oracle's.

Label Studio runs from its own virtual environment (it pins its own Django, pydantic, ...): ALCTL_LABEL_STUDIO names
the `label-studio` executable or that environment's folder (default: .venv-ls beside this repository, which
`make label-studio` creates); without one the test is skipped, saying so.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from alctl.annotate import labelstudio as ls
from alctl import config as mf
from alctl.cli import app
from tests.conftest import TINY, deep_update

pytestmark = pytest.mark.slow
runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
TOKEN = "alctl0test0token0000000000000000000000000"  # a legacy token (40+ characters) given to the first user
START_TIMEOUT = 600  # seconds: the first start migrates a fresh SQLite database (about 1.5 min on 2 loaded cores)


def _executable() -> Path | None:
    """The label-studio executable: ALCTL_LABEL_STUDIO (the executable or its virtual environment), else
    .venv-ls/bin/label-studio beside the repository; None when there is none."""
    given = os.environ.get("ALCTL_LABEL_STUDIO")
    path = Path(given) if given else REPO / ".venv-ls"
    if path.is_dir():
        path = path / "bin" / "label-studio"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running Label Studio: its URL, the API client, the local-files document root."""

    url: str
    client: ls.LabelStudio
    files: Path
    started_in: float


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Label Studio on a free port with a fresh data directory, local files served from a temporary root, one
    user with a known legacy token; stopped (its process group) at the end."""
    exe = _executable()
    if exe is None:
        pytest.skip("Label Studio is not installed: `make label-studio` (or set ALCTL_LABEL_STUDIO to its"
                    " label-studio executable or virtual environment)")
    base = tmp_path_factory.mktemp("labelstudio")
    files = base / "files"
    files.mkdir()
    port = _free_port()
    env = {**os.environ, "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files), "LATEST_VERSION_CHECK": "false",
           "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "", "PYTHONUNBUFFERED": "1"}
    log = (base / "label-studio.log").open("wb")
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(base / "data"), "--username", "alctl@example.org", "--password", "alctl-test-pw",
         "--user-token", TOKEN, "--enable-legacy-api-token", "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=base, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"label-studio exited ({proc.returncode}):\n"
                            f"{(base / 'label-studio.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.perf_counter() - started > START_TIMEOUT:
                pytest.fail(f"label-studio not up after {START_TIMEOUT}s:\n"
                            f"{(base / 'label-studio.log').read_text()[-3000:]}")
            time.sleep(1)
        print(f"\nLabel Studio {url} up in {time.perf_counter() - started:.0f}s")
        yield Server(url, ls.LabelStudio(url, TOKEN), files, time.perf_counter() - started)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _manifest(folder: Path, oracle: str) -> Path:
    """A one-task digits run: 10 initial labels, 3 selections of 10 by uncertainty, tiny training."""
    data = deep_update(TINY, {"name": oracle, "repetitions": 1, "seed": 4,
                              "train": {"epochs": 3, "min_steps": 4, "rampdown_epochs": 4},
                              # the same label-free initial draw for both oracles (auto would balance the simulated one)
                              "active": {"cycles": 4, "strategy": "uncertainty", "oracle": oracle,
                                         "initial_strategy": "random"}})
    path = folder / f"{oracle}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _pool(path: Path):
    m = mf.load(path)
    return pq.read_table(mf.run_dir(m) / "tasks" / mf.tasks(m)[0].key / "pool.parquet")


def _truth() -> dict[int, str]:
    """sample_id -> the true digit, as Label Studio's choice (a class name)."""
    from sklearn.datasets import load_digits

    return {i: str(y) for i, y in enumerate(load_digits().target.tolist())}


def _annotate(client: ls.LabelStudio, project: int, truth: dict[int, str], skip: int | None = None) -> int:
    """Post the true class of every task of the project that has no annotation yet (a skip for sample `skip`);
    the number posted."""
    posted = 0
    for task in client.export(project):
        if task["annotations"]:
            continue
        sid = task["data"]["sample_id"]
        client.annotate(task["id"], truth[sid], cancelled=sid == skip)
        posted += 1
    return posted


def test_label_studio_round_trip_equals_simulated_oracle(server: Server, workdir: Path) -> None:
    truth = _truth()
    human = _manifest(workdir, "human")
    env = {"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(server.files), "LABEL_STUDIO_API_KEY": TOKEN}
    export = server.files / "alctl"  # strictly under the document root: Label Studio serves the PNGs from there
    client = server.client
    key = mf.tasks(mf.load(human))[0].key

    # selection 1: files. tasks.json into a project made through the REST API, its JSON export back in
    res = runner.invoke(app, ["cycle", str(human)])
    assert res.exit_code == 0 and "waiting for labels: 10 images selected for cycle 1" in res.output, res.output
    res = runner.invoke(app, ["select", str(human), "--export", str(export), "--format", "label-studio"], env=env)
    assert res.exit_code == 0 and f"local storage of {export / 'images'}" in res.output, res.output
    tasks = json.loads((export / "tasks.json").read_text())
    config = (export / "label_config.xml").read_text()
    project = int(client.create_project("alctl digits", config)["id"])
    client.add_local_storage(project, export / "images")
    assert client.import_tasks(project, tasks) == 10
    held = client.export(project)
    assert len(held) == 10
    first = held[0]
    image = urllib.request.Request(server.url + first["data"]["image"], headers={"Authorization": f"Token {TOKEN}"})
    with urllib.request.urlopen(image, timeout=30) as reply:  # Label Studio serves the exported PNG
        assert reply.headers["Content-Type"] == "image/png" and reply.read()[:4] == b"\x89PNG"
    (prediction,) = client.request("GET", "/api/predictions", query={"task": first["id"]})
    assert prediction["model_version"] == f"human/{key}/cycle 0" and 0 < prediction["score"] <= 1
    assert _annotate(client, project, truth) == 10
    (workdir / "export1.json").write_text(json.dumps(client.export(project)))
    res = runner.invoke(app, ["label", str(human), "--labels", str(workdir / "export1.json")])
    assert res.exit_code == 0 and "imported 10 labels" in res.output and "selection is complete" in res.output

    # selection 2: push to the same project, a skipped task refused, then pulled
    res = runner.invoke(app, ["cycle", str(human)])
    assert res.exit_code == 0 and "waiting for labels: 10 images selected for cycle 2" in res.output, res.output
    other = int(client.create_project("not for alctl", '<View><Text name="t" value="$text"/></View>')["id"])
    res = runner.invoke(app, ["select", str(human), "--export", str(export), "--to-label-studio", server.url,
                              "--project", str(other)], env=env)
    assert res.exit_code == 2 and f"project {other}'s labeling config lacks an Image of $image" in res.output
    res = runner.invoke(app, ["select", str(human), "--export", str(export), "--to-label-studio", server.url,
                              "--project", str(project)], env=env)
    assert res.exit_code == 0 and f"pushed 10 tasks to {server.url}/projects/{project};" in res.output, res.output
    assert "added a local storage" not in res.output  # the project's storage covers the images already
    pending = [sid for sid, src in zip(_pool(human)["sample_id"].to_pylist(), _pool(human)["label_source"].to_pylist())
               if src == "pending"]
    res = runner.invoke(app, ["select", str(human), "--export", str(export), "--to-label-studio", server.url,
                              "--project", str(project)], env=env)
    assert res.exit_code == 0 and "pushed 0 tasks" in res.output and "10 were there already" in res.output
    assert _annotate(client, project, truth, skip=pending[0]) == 10
    before = _pool(human)
    res = runner.invoke(app, ["label", str(human), "--from-label-studio", server.url, "--project", str(project)],
                        env=env)
    assert res.exit_code == 2 and res.output.count("error:") == 1, res.output
    assert f"(sample_id {pending[0]}): skipped (its annotation was cancelled)" in res.output
    assert _pool(human).equals(before)
    skipped = next(t for t in client.export(project) if t["data"]["sample_id"] == pending[0])
    client.annotate(skipped["id"], truth[pending[0]])
    res = runner.invoke(app, ["label", str(human), "--from-label-studio", server.url, "--project", str(project)],
                        env=env)
    assert res.exit_code == 0 and "imported 10 labels" in res.output, res.output
    assert "(10 tasks of images labeled before left out)" in res.output

    # selection 3: push to a new project (alctl creates it with the labeling config and the storage), pull
    res = runner.invoke(app, ["cycle", str(human)])
    assert res.exit_code == 0 and "waiting for labels: 10 images selected for cycle 3" in res.output, res.output
    res = runner.invoke(app, ["select", str(human), "--export", str(export), "--to-label-studio", server.url],
                        env=env)
    assert res.exit_code == 0 and "(a new project)" in res.output, res.output
    assert f"added a local storage of {export / 'images'}" in res.output
    new = int(res.output.split(f"{server.url}/projects/")[1].split()[0].rstrip(";"))
    assert new != project and client.project(new)["label_config"].count("<Choice ") == 10
    assert _annotate(client, new, truth) == 10
    res = runner.invoke(app, ["label", str(human), "--from-label-studio", server.url, "--project", str(new)], env=env)
    assert res.exit_code == 0 and "imported 10 labels" in res.output, res.output
    res = runner.invoke(app, ["cycle", str(human)])
    assert res.exit_code == 0 and "cycle 3: 40 labels" in res.output and "waiting" not in res.output, res.output

    simulated = _manifest(workdir, "simulated")
    assert runner.invoke(app, ["cycle", str(simulated)]).exit_code == 0
    a, b = _pool(human), _pool(simulated)
    for column in ("sample_id", "label", "labeled_cycle"):
        assert a[column].equals(b[column]), column
    assert a["label_source"].to_pylist().count("human") == 30
