"""Label Studio (labelstud.io): tasks of a selection with the model's guesses, the labeling config, image references
Label Studio can serve, its JSON / JSON_MIN exports read back as labels, and a small REST client (plain HTTP).

Tasks and labeling config agree on three names: the image is the data key `image` shown by the Image tag `image`,
the class is the single choice of the Choices tag `label`, and every task's data holds the image's `sample_id`,
the identity `alctl label` reads back (never a position). A prediction is the model's top class with its softmax
probability as the score, under model_version `<run>/<task key>/cycle <c>`.

The REST client authenticates with a legacy token (`Authorization: Token ...`) or a personal access token (a JWT,
exchanged at /api/token/refresh/ for a short-lived `Bearer` access token), read from LABEL_STUDIO_API_KEY. The key
goes only to the origin (scheme, host, port) of the URL the user gave: a redirect elsewhere is refused, never
followed. Every reply is read up to a limit (EXPORT_LIMIT for a project's export, REPLY_LIMIT for the rest).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np

from alctl.data.classes import class_index
from alctl.errors import AlctlError, UserError
from alctl.annotate.labels import (
    JSON_LIMIT, MIB, Answer, Unimported, check_answers, parse_sample_id, read_bounded, read_labels_text, size_text,
)
from alctl.safe_text import redact_url, refuse_control, terminal, xml_text

IMAGE = "image"  # the data key of a task's image and the name of the Image tag
FROM_NAME = "label"  # the name of the Choices tag (a prediction's and an annotation's from_name)
LOCAL_FILES = "/data/local-files/?d="  # Label Studio's URL of a file under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT
API_KEY_ENV = "LABEL_STUDIO_API_KEY"
TITLE_LIMIT = 50  # characters of a project title
EXPORT_LIMIT = JSON_LIMIT  # bytes of a project's JSON export (60,000 annotated tasks are ~120 MB)
REPLY_LIMIT = 16 * MIB  # bytes of any other reply (a project, a task count, storages: a few KB)
DETAIL_LIMIT = 64 * 1024  # bytes of an error reply read for its one-line detail


def choice_value(name: str) -> str:
    """The value Label Studio shows and answers for class `name`: the name as an XML attribute carries it (the
    characters XML 1.0 cannot hold, such as most control characters, dropped)."""
    return str(ElementTree.fromstring(f'<c v="{xml_text(name)}"/>').get("v"))


def _by_choice(classes: Sequence[str]) -> dict[str, str]:
    """Class names by their Label Studio choice value, for the classes whose value differs from the name."""
    return {choice_value(c): c for c in classes if choice_value(c) != c}


def label_config(classes: Sequence[str]) -> str:
    """The labeling config: the image and one single choice among the classes, in class index order (each name
    escaped for XML; UserError when two classes would show as the same choice)."""
    seen: dict[str, str] = {}
    for c in map(str, classes):
        other = seen.setdefault(choice_value(c), c)
        if other != c:
            raise UserError(f"dataset.classes: {terminal(repr(other))} and {terminal(repr(c))} are the same choice in"
                            " Label Studio (XML cannot hold their control characters); rename one of them")
    choices = "".join(f'    <Choice value="{xml_text(c)}"/>\n' for c in map(str, classes))
    return (f'<View>\n  <Image name="{IMAGE}" value="${IMAGE}"/>\n'
            f'  <Choices name="{FROM_NAME}" toName="{IMAGE}" choice="single" showInline="true">\n'
            f"{choices}  </Choices>\n</View>\n")


def check_url_prefix(prefix: str, option: str = "--image-url-prefix") -> str:
    """`prefix` when it is an http(s) URL with a host or a path starting with a single /, without control
    characters; a one-line UserError naming `option` otherwise (javascript:, data:, file:, //host, ...)."""
    refuse_control(prefix, option)
    parts = urllib.parse.urlsplit(prefix)
    if prefix.startswith("/") and not prefix.startswith("//"):
        return prefix
    if parts.scheme.lower() in ("http", "https") and parts.hostname:
        return prefix
    raise UserError(f"{option}: {terminal(prefix, limit=80)} is not an http(s) URL or a path starting with /; give"
                    " e.g. http://host:port/files or /data/images")


def relative_posix(path: Path, root: Path) -> str | None:
    """`path` relative to `root` as a POSIX path (both made absolute), None when it is not strictly under it."""
    path, root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    if path == root or root not in path.parents:
        return None
    return path.relative_to(root).as_posix()


def image_ref(relative: str, url_prefix: str | None) -> str:
    """What a task's `image` holds: `<url_prefix>/<relative>` when given, else Label Studio's local-files URL of
    `relative` (a path under its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT); the path is percent-encoded."""
    quoted = urllib.parse.quote(relative, safe="/")
    if url_prefix:
        return f"{url_prefix.rstrip('/')}/{quoted}"
    return LOCAL_FILES + quoted


def make_task(image: str, sample_id: int, extra: dict[str, Any] | None = None,
              guess: tuple[str, float] | None = None, model_version: str = "") -> dict[str, Any]:
    """One Label Studio task: data {image, sample_id, **extra} and, given the model's guess (class name,
    probability), one prediction of that class scored by that probability."""
    task: dict[str, Any] = {"data": {IMAGE: image, "sample_id": int(sample_id), **(extra or {})}}
    if guess is not None:
        task["predictions"] = [{
            "model_version": model_version, "score": float(guess[1]),
            "result": [{"from_name": FROM_NAME, "to_name": IMAGE, "type": "choices", "value": {"choices": [guess[0]]}}],
        }]
    return task


@dataclass(frozen=True)
class LabelImport:
    """Labels read from Label Studio tasks, checked against the pending selection."""

    sample_ids: np.ndarray  # [m] int64
    labels: np.ndarray  # [m] int64 class indices
    tasks: int  # tasks read
    earlier: int  # tasks of images labeled before with the same class (an earlier import), left out


def read_export(path: Path, pool_ids: np.ndarray, pending_ids: np.ndarray, classes: list[str],
                earlier: dict[int, int]) -> LabelImport:
    """The labels of a Label Studio export file (JSON or JSON_MIN), checked as `import_tasks` does."""
    path = Path(path)
    tasks = load_json(read_labels_text(path, "--labels", JSON_LIMIT), str(path))
    return import_tasks(tasks, str(path), pool_ids, pending_ids, classes, earlier)


def load_json(text: str, source: str) -> Any:
    """The JSON value of a file a person gave; a one-line UserError naming `source` when it is not JSON, nests
    deeper than Python can follow or holds a number too long to read."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{source}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); expected Label Studio's"
                        " JSON or JSON_MIN export") from None
    except RecursionError:
        raise UserError(f"{source}: JSON nested too deeply (over {sys.getrecursionlimit()} levels); expected Label"
                        " Studio's JSON or JSON_MIN export") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise UserError(f"{source}: not valid JSON ({terminal(exc, limit=120)})") from None


def _class_name(choice: str, classes: Sequence[str], by_choice: dict[str, str]) -> str:
    """The class a chosen value names: itself when it is a class name, else the class whose Label Studio choice
    value it is (a name XML could not carry whole), else itself (an index, or an unknown class)."""
    return choice if choice in classes else by_choice.get(choice, choice)


def _choices(result: Any) -> list[str]:
    """The classes chosen in an annotation's result list (its `choices` regions)."""
    out: list[str] = []
    for region in result if isinstance(result, list) else []:
        if isinstance(region, dict) and region.get("type", "choices") == "choices":
            value = region.get("value")
            picked = value.get("choices") if isinstance(value, dict) else None
            if isinstance(picked, list):
                out.extend(str(c) for c in picked)
    return out


def _min_choices(value: Any) -> list[str]:
    """The classes of a JSON_MIN row's `label` column: a string, a list, or {"choices": [...]}."""
    if isinstance(value, dict):
        value = value.get("choices")
    if isinstance(value, list):
        return [str(c) for c in value]
    return [] if value is None else [str(value)]


def _annotations(task: dict[str, Any]) -> tuple[list[tuple[Any, list[str]]], bool]:
    """(annotation id, chosen classes) of each annotation of a task that was not cancelled, and whether one was
    cancelled (skipped); a JSON_MIN row is one annotation, or none without a `label` column."""
    if "data" not in task:  # JSON_MIN: the data keys and the choices (by from_name) side by side
        return ([(task.get("annotation_id"), _min_choices(task[FROM_NAME]))] if FROM_NAME in task else []), False
    kept, cancelled = [], False
    anns = task.get("annotations")
    for ann in anns if isinstance(anns, list) else []:
        if not isinstance(ann, dict):
            continue
        if ann.get("was_cancelled"):
            cancelled = True
        else:
            kept.append((ann.get("id"), _choices(ann.get("result"))))
    return kept, cancelled


def import_tasks(tasks: Any, source: str, pool_ids: np.ndarray, pending_ids: np.ndarray, classes: list[str],
                 earlier: dict[int, int]) -> LabelImport:
    """Labels of Label Studio tasks (its JSON export: tasks with data and annotations; or JSON_MIN: one row per
    annotation, data keys and the choice side by side), all or nothing, by the rules of a labels CSV plus Label
    Studio's own: every problem is one line of a single UserError (tasks without a sample_id, skipped tasks,
    tasks with no annotation, annotations with no or several choices, then `check_answers`' unknown ids, ids not
    waiting for a label, unknown classes and conflicting duplicates). A task of an image labeled before
    (`earlier`: sample_id -> class, not pending) whose annotations all give that class was imported from the same
    project before and is left out, so that one project can hold every cycle's tasks; another class is a problem."""
    if not isinstance(tasks, list):
        raise UserError(f"{source}: expected a list of tasks (Label Studio's JSON or JSON_MIN export), got a JSON"
                        f" {type(tasks).__name__}")
    pending = set(pending_ids.tolist())
    by_choice = _by_choice(classes)
    answers: list[Answer] = []
    problems: list[str] = []
    left_out = 0
    for i, task in enumerate(tasks, start=1):
        if not isinstance(task, dict):
            problems.append(f"{source}: item {i} is not a task (a JSON object)")
            continue
        data = task.get("data", task)
        name = f"task {task.get('id', f'#{i}')}"
        if not isinstance(data, dict) or data.get("sample_id") is None:
            problems.append(f"{source}: {name}: no sample_id in its data (not a task alctl exported)")
            continue
        raw_id = str(data["sample_id"])
        sid = parse_sample_id(raw_id)
        before = sid is not None and sid in earlier and sid not in pending
        given, cancelled = _annotations(task)
        if not given:
            if before:
                left_out += 1
            else:
                why = "skipped (its annotation was cancelled)" if cancelled else "has no annotation"
                problems.append(f"{source}: {name} (sample_id {raw_id}): {why}; label it in Label Studio, or leave"
                                " it out of the export")
            continue
        mine: list[Answer] = []
        for ann_id, chosen in given:
            ref = name if ann_id is None else f"{name} annotation {ann_id}"
            if len(set(chosen)) != 1:
                what = "no class" if not chosen else f"{len(set(chosen))} classes ({', '.join(sorted(set(chosen)))})"
                problems.append(f"{source}: {ref} (sample_id {raw_id}): chooses {what}; choose exactly one")
                continue
            mine.append(Answer(f"{source}: {ref}", ref, raw_id, _class_name(chosen[0], classes, by_choice)))
        if before and sid is not None:
            old = earlier[sid]
            differ = [a for a in mine if class_index(a.raw_label, classes) != old]
            problems.extend(f"{a.where}: sample_id {sid} was labeled {classes[old]!r} before; this annotation says"
                            f" {a.raw_label!r}" for a in differ)
            left_out += int(bool(mine) and not differ)
            continue
        answers.extend(mine)
    empty = (f"{source}: no new labels: the {left_out} annotated task(s) were imported before" if left_out
             else f"{source}: no labels: no task to import")
    ids, labels = check_answers(answers, pool_ids, pending_ids, classes, problems, empty=empty)
    return LabelImport(ids, labels, len(tasks), left_out)


def unimported_annotations(tasks: Any, labeled: dict[int, int], classes: list[str], show: int = 3) -> Unimported:
    """The annotations (with a chosen class) of Label Studio tasks whose label the task does not hold already
    (`labeled`: sample_id -> class of every labeled image); those would be lost if the file were replaced. alctl's
    own tasks.json has predictions but no annotation: none."""
    by_choice = _by_choice(classes)
    count, first = 0, []
    for i, task in enumerate(tasks if isinstance(tasks, list) else [], start=1):
        if not isinstance(task, dict):
            continue
        data = task.get("data", task)
        sid = parse_sample_id(str(data.get("sample_id"))) if isinstance(data, dict) else None
        for _, chosen in _annotations(task)[0]:
            if not chosen:
                continue
            names = {class_index(_class_name(c, classes, by_choice), classes) for c in chosen}
            if sid is not None and sid in labeled and names == {labeled[sid]}:
                continue
            count += 1
            if len(first) < show:
                first.append(f"task {terminal(task.get('id', f'#{i}'), limit=40)} (sample_id {sid})")
    return Unimported(count, first)


def api_key(url: str) -> str:
    """The API key of a Label Studio server from LABEL_STUDIO_API_KEY; UserError saying where to find one."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise UserError(f"{API_KEY_ENV}: not set; export the access token of {url} (Label Studio: Account & Settings,"
                        " Personal Access Token or Legacy Token)")
    return key


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, the port filled in from the scheme; what a redirect must keep."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1  # not a port: never the same origin
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


class _SameOrigin(urllib.request.HTTPRedirectHandler):
    """Follows redirects within the origin of the server's URL only, where the API key may go; a redirect to
    another origin is a one-line UserError, and the request is not sent there."""

    def __init__(self, url: str, option: str) -> None:
        """Keep the server URL the user gave and the option it came from."""
        super().__init__()
        self.url = url
        self.option = option

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        """The request to the redirect target when it has the server's origin; UserError otherwise."""
        if _origin(newurl) != _origin(self.url):
            fp.close()
            path = urllib.parse.urlsplit(req.full_url).path
            raise UserError(f"{self.option}: {self.url} redirected {req.get_method()} {path} (HTTP {code}) to"
                            f" {terminal(redact_url(newurl), limit=120)}, another server; the API key is sent only"
                            " to the URL given: give the server's own address (scheme, host and port) instead")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class LabelStudio:
    """A Label Studio server's REST API over plain HTTP (urllib): projects, task import, JSON export, local-files
    storages, annotations. HTTP 400/401/403/404, an unreachable server and a redirect to another origin are
    UserErrors (exit 2) naming the server, other failures (a reply over its size limit included) AlctlErrors
    (exit 1)."""

    def __init__(self, url: str, key: str, timeout: float = 300.0, option: str = "--url") -> None:
        """Bind to a server root such as http://localhost:8080 with an API key (legacy token or personal access
        token); `option` names the command-line option the URL came from, in error lines."""
        refuse_control(url, option)
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UserError(f"{option}: {url!r} is not a Label Studio URL; expected http(s)://host:port")
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self.option = option
        self._access: str | None = None
        self._opener = urllib.request.build_opener(_SameOrigin(self.url, option))

    def _authorization(self) -> str:
        """The Authorization header: `Token <key>` for a legacy token, `Bearer <access>` for a personal access
        token (a JWT, exchanged once for an access token)."""
        if self.key.count(".") != 2:
            return f"Token {self.key}"
        if self._access is None:
            reply = self.request("POST", "/api/token/refresh/", {"refresh": self.key}, auth=False)
            self._access = str(reply.get("access", "")) if isinstance(reply, dict) else ""
            if not self._access:
                raise UserError(f"{API_KEY_ENV}: {self.url} gave no access token for this personal access token")
        return f"Bearer {self._access}"

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
                auth: bool = True, limit: int = REPLY_LIMIT) -> Any:
        """One request to an API path such as /api/projects (a JSON body, query parameters); the decoded JSON
        reply (at most `limit` bytes), None when empty."""
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = self._authorization()
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:  # noqa: S310 - http(s) only
                raw = read_bounded(response, limit)
        except urllib.error.HTTPError as exc:
            detail = _detail(exc)
            if exc.code in (401, 403):
                raise UserError(f"{API_KEY_ENV}: {self.url} refused the API key (HTTP {exc.code}: {detail}); set it"
                                " to an access token of that server (a legacy token needs legacy tokens enabled for"
                                " the organization)") from None
            if exc.code in (400, 404):
                raise UserError(f"{self.option}: {method} {path} on {self.url}: HTTP {exc.code}: {detail}") from None
            raise AlctlError(f"{self.option}: {method} {path} on {self.url}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(f"{self.option}: cannot reach Label Studio at {self.url} ({reason}); is it"
                            " running?") from None
        if raw is None:
            raise AlctlError(f"{self.option}: {method} {path} on {self.url}: the reply is larger than"
                             f" {size_text(limit)}, the most alctl reads of it")
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, nested too deeply, a number too long
            raise AlctlError(f"{self.option}: {method} {path} on {self.url}: the reply is not JSON") from None

    def project(self, project: int) -> dict[str, Any]:
        """A project's settings (title, label_config, ...); UserError when there is no such project."""
        try:
            return self.request("GET", f"/api/projects/{int(project)}")
        except UserError as exc:
            if "HTTP 404" in exc.problems[0]:
                raise UserError(f"--project: {self.url} has no project {project}") from None
            raise

    def create_project(self, title: str, config: str) -> dict[str, Any]:
        """A new project with this title (cut to Label Studio's 50 characters) and labeling config."""
        title = title if len(title) <= TITLE_LIMIT else title[: TITLE_LIMIT - 1] + "\u2026"
        return self.request("POST", "/api/projects", {"title": title, "label_config": config})

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> int:
        """Add tasks (with their predictions) to a project; the number Label Studio created."""
        reply = self.request("POST", f"/api/projects/{int(project)}/import", tasks)
        return int(reply.get("task_count", len(tasks))) if isinstance(reply, dict) else len(tasks)

    def export(self, project: int, all_tasks: bool = True) -> list[dict[str, Any]]:
        """A project's tasks in Label Studio's JSON export format (every task, or only those with annotations)."""
        self.project(project)  # a missing project: one clear line
        reply = self.request("GET", f"/api/projects/{int(project)}/export",
                           query={"exportType": "JSON", "download_all_tasks": str(all_tasks).lower()},
                           limit=EXPORT_LIMIT)
        if not isinstance(reply, list):
            raise AlctlError(f"{self.option}: the export of project {project} on {self.url} is not a list of tasks")
        return reply

    def local_storages(self, project: int) -> list[dict[str, Any]]:
        """A project's local-files source storages."""
        reply = self.request("GET", "/api/storages/localfiles", query={"project": int(project)})
        return reply if isinstance(reply, list) else []

    def add_local_storage(self, project: int, path: Path, title: str = "alctl images") -> dict[str, Any]:
        """A local-files source storage of `path` (absolute, strictly under the server's document root), which lets
        the server serve the files under it to the project; never synced, so it adds no task."""
        return self.request("POST", "/api/storages/localfiles",
                          {"project": int(project), "path": os.path.abspath(path), "title": title,
                           "use_blob_urls": True})

    def annotate(self, task: int, choice: str, cancelled: bool = False) -> dict[str, Any]:
        """Record an annotation of a task: the class `choice`, or a skip (cancelled, no result)."""
        result = [] if cancelled else [
            {"from_name": FROM_NAME, "to_name": IMAGE, "type": "choices", "value": {"choices": [choice]}}]
        return self.request("POST", f"/api/tasks/{int(task)}/annotations",
                          {"result": result, "was_cancelled": cancelled})


def _detail(exc: urllib.error.HTTPError) -> str:
    """A short one-line description of an HTTP error reply (Label Studio's `detail` and validation errors)."""
    try:
        raw = read_bounded(exc, DETAIL_LIMIT)  # type: ignore[arg-type]
        body = json.loads(raw or b"{}") if raw is not None else None
    except (OSError, ValueError, RecursionError):
        body = None
    if body is None:
        return terminal(exc.reason, limit=200) if isinstance(exc.reason, str) else "error"
    if not isinstance(body, dict):
        return terminal(str(body), limit=200)
    text = str(body.get("detail") or exc.reason)
    errors = body.get("validation_errors")
    if errors:
        text += f" {json.dumps(errors)[:300]}"
    return " ".join(text.split())
