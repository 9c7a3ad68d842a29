"""Reading a manifest: YAML without surprises (unique keys, bounded aliases), `extends:`, and the validation of
every sweep point."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from alctl.errors import ManifestError
from alctl.safe_text import terminal
from alctl.config.schema import Manifest
from alctl.config.values import EXTENDS_ANYWHERE, MAX_YAML_NODES, SHOWN_LIMIT, shown
from alctl.config.messages import Origins, _RUN_LEVEL, _format_validation, _known_path, _origin, hidden_note
from alctl.config.sweeps import EXCLUDE, grid_problem, resolve_point, sweep_axes, sweep_points


def parse(data: Any, source: str = "manifest", origins: Origins | None = None) -> Manifest:
    """Validate a mapping (already parsed YAML) into a Manifest, checking every sweep point; `origins` marks the
    values an extended file set (errors about them never show them)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: the manifest must be a mapping of sections, got {type(data).__name__}")
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as err:
        raise ManifestError(*_format_validation(err, origins=origins)) from None
    sweep_source = _origin(origins, ("sweep",))
    problems: list[str] = []
    for path, values in sweep_axes(manifest).items():
        where = f"sweep.{terminal(path, limit=SHOWN_LIMIT)}"
        if not _known_path(path):
            problems.append(f"{where}: not a manifest field (use a dotted path such as active.strategy)")
        elif path.split(".")[0] in _RUN_LEVEL:
            problems.append(f"{where}: set once per run, cannot vary between its tasks")
        elif not values:
            problems.append(f"{where}: needs at least one value")
        else:  # values may be unhashable (mappings): compare with the earlier ones
            twice = [v for i, v in enumerate(values) if v in values[:i]]
            if twice:
                problems.append(f"{where}: value {shown(twice[0])} given twice (tasks would share one directory)")
    if not problems:
        problems = _exclude_problems(manifest)
    if not problems and (too_large := grid_problem(manifest)) is not None:
        problems = [too_large]
    if problems and sweep_source is not None:
        raise ManifestError(f"sweep: {len(problems)} problem(s) in the sweep {hidden_note(sweep_source)}")
    if problems:
        raise ManifestError(*problems)
    for point in sweep_points(manifest):
        resolve_point(manifest, point, sweep_source)
    return manifest


def _exclude_problems(m: Manifest) -> list[str]:
    """Problems of sweep.exclude: each entry a non-empty {swept path: one of its values}; the grid not emptied."""
    axes = sweep_axes(m)
    entries = m.sweep.get(EXCLUDE, [])
    problems: list[str] = []
    for i, entry in enumerate(entries):
        where = f"sweep.exclude[{i}]"
        if not isinstance(entry, dict) or not entry:
            problems.append(f"{where}: expected a mapping of swept paths to values, e.g. {{active.strategy: ceal}}")
            continue
        for path, value in entry.items():
            if path not in axes:
                swept = ", ".join(terminal(a, limit=SHOWN_LIMIT) for a in axes) or "nothing"
                problems.append(f"{where}.{terminal(path, limit=SHOWN_LIMIT)}: not swept (swept: {swept})")
            elif value not in axes[path]:
                problems.append(f"{where}.{path}: {shown(value)} is not one of the swept values"
                                f" {shown(axes[path], limit=2 * SHOWN_LIMIT)}")
    if not problems and entries and grid_problem(m) is None and not sweep_points(m):
        problems.append("sweep.exclude: leaves no task in the grid")
    return problems


class _ExpansionError(yaml.YAMLError):
    """A document whose aliases expand past MAX_YAML_NODES values, or refer to themselves."""

    def __init__(self, problem: str, mark: Any) -> None:
        """Keep the problem and where the document (or the alias) starts."""
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


def expanded_nodes(root: yaml.Node, limit: int = MAX_YAML_NODES) -> int:
    """How many values a composed YAML document holds once every alias is expanded (each shared node counted at
    each use, without expanding anything: a node's count is computed once); _ExpansionError past `limit` or for
    an alias that contains itself."""
    counts: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        if children_done:
            on_path.discard(key)
            counts[key] = 1 + sum(counts[id(c)] for c in children)
            if counts[key] > limit:
                raise _ExpansionError(
                    f"more than {limit:,} values once its YAML aliases (*name) are expanded, where a manifest needs"
                    " a few hundred; alias fewer and smaller sections", root.start_mark)
            continue
        if key in counts:
            continue
        if key in on_path:
            raise _ExpansionError("a YAML alias (*name) refers to a section that contains it; a manifest cannot"
                                  " hold a recursive structure", node.start_mark)
        on_path.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in on_path:
                raise _ExpansionError("a YAML alias (*name) refers to a section that contains it; a manifest"
                                      " cannot hold a recursive structure", child.start_mark)
            if id(child) not in counts:
                stack.append((child, False))
    return counts[id(root)]


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last silently) and a
    document whose aliases expand past MAX_YAML_NODES values (a "billion laughs")."""

    def get_single_data(self) -> Any:
        """The document's data, once its expanded size is known to be bounded."""
        node = self.get_single_node()
        if node is None:
            return None
        expanded_nodes(node)
        return self.construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """The mapping, after checking its keys are distinct."""
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {shown(key)} given twice in one section", key_node.start_mark
                    )
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                break
        return super().construct_mapping(node, deep=deep)


EXTENDS = "extends"  # top-level key: a base manifest (path relative to this file) whose settings this one overrides


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` updated by `override`: mappings merge key by key, anything else (lists included) is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _leaves(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(key path, value) of every value of nested mappings that is not itself a non-empty mapping."""
    for key, value in data.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and value:
            yield from _leaves(value, path)
        else:
            yield path, value


def _at(data: Any, path: tuple[str, ...]) -> Any:
    """The value at a key path of nested mappings; a fresh object (never a value of `data`) when absent."""
    for key in path:
        found = [value for k, value in data.items() if str(k) == key] if isinstance(data, dict) else []
        if not found:
            return object()
        data = found[0]
    return data


def extends_anywhere() -> bool:
    """Whether the person running alctl allowed `extends:` outside the manifest's folder and the current directory
    (ALCTL_EXTENDS_ANYWHERE=1: the environment, never the manifest, which is the untrusted input)."""
    return os.environ.get(EXTENDS_ANYWHERE, "").strip().lower() in ("1", "true", "yes")


def _read_yaml(p: Path, base: bool) -> Any:
    """The parsed YAML of one file; the errors of an extended (`base`) file show its position, never its text."""
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ManifestError(f"{p}: not UTF-8 text (byte {err.start}: {err.reason}); save the manifest as UTF-8") from None
    except OSError as err:
        raise ManifestError(f"{p}: cannot be read ({err.strerror or type(err).__name__})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise ManifestError(f"{p}: YAML nested too deeply for a manifest") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        if isinstance(err, _ExpansionError):
            raise ManifestError(f"{where}: {err.problem}") from None
        if base:
            raise ManifestError(f"{where}: YAML syntax error in an extended file (its text is never shown; run"
                                f" `alctl validate {p}` to see the problem)") from None
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ManifestError(f"{where}: YAML syntax error: {terminal(problem, limit=4 * SHOWN_LIMIT)}") from None


def _read_data(p: Path, chain: tuple[Path, ...] = (), trees: tuple[Path, ...] = ()) -> tuple[Any, Origins]:
    """The parsed YAML of a manifest file, with its `extends:` chain merged in (base first), and which key paths
    took their value from which base file.

    Every base must resolve (symlinks followed) inside `trees`: the folder of the manifest named on the command
    line, or the current directory (the project alctl runs in, which holds runs/ and data/): the two places the
    person running alctl chose, where the manifest, the untrusted input, may not. ALCTL_EXTENDS_ANYWHERE=1 (the
    environment, never the manifest) lifts it."""
    if not p.is_file():
        if chain:
            raise ManifestError(f"{chain[-1]}: extends: {p} not found")
        raise ManifestError(f"{p}: manifest file not found")
    data = _read_yaml(p, base=bool(chain))
    if not isinstance(data, dict) or EXTENDS not in data:
        return data, {}
    data = dict(data)
    base_ref = data.pop(EXTENDS)
    if not isinstance(base_ref, str) or not base_ref.strip():
        raise ManifestError(f"{p}: extends: expected the path of a base manifest, got {shown(base_ref)}")
    if "\0" in base_ref:
        raise ManifestError(f"{p}: extends: a path cannot contain a NUL character (got {shown(base_ref)})")
    if not trees:
        cwd = Path.cwd().resolve()
        trees = (p.parent.resolve(),) + ((cwd,) if cwd != Path(cwd.anchor) else ())  # never the whole file system
    base_path = (p.parent / base_ref).resolve()
    if base_path in chain or base_path == p.resolve():
        raise ManifestError(f"{p}: extends: {terminal(base_ref)} leads back to itself")
    if not any(base_path.is_relative_to(tree) for tree in trees) and not extends_anywhere():
        raise ManifestError(
            f"{p}: extends: {shown(base_ref)} resolves to {terminal(base_path)}, outside {terminal(trees[0])} (the"
            " manifest's folder) and the current directory; move the base manifest into one of them, or set"
            f" {EXTENDS_ANYWHERE}=1 to allow bases anywhere"
        )
    base, base_origins = _read_data(base_path, (*chain, p.resolve()), trees)
    if base is None:
        base = {}
    if not isinstance(base, dict):
        raise ManifestError(f"{base_path}: the manifest must be a mapping of sections, got {type(base).__name__}")
    # a base's name names its own run; a sweep given here is this manifest's whole grid (with its exclude list)
    base = {key: value for key, value in base.items() if key != "name" and not (key == "sweep" and "sweep" in data)}
    merged = _deep_merge(base, data)
    origins: Origins = {}
    for path, value in _leaves(base):  # what the base set and this file did not override
        if _at(merged, path) is value:
            origins[path] = _origin(base_origins, path) or base_path
    if "sweep" in base and _at(merged, ("sweep",)) is base["sweep"]:
        origins[("sweep",)] = _origin(base_origins, ("sweep",)) or base_path
    return merged, origins


def load(path: str | Path) -> Manifest:
    """Read and validate a YAML manifest (merged over its `extends:` base, if any); every problem becomes a
    ManifestError line."""
    p = Path(path)
    data, origins = _read_data(p)
    manifest = parse(data, str(p), origins)
    if not manifest.name:
        manifest = manifest.model_copy(update={"name": p.stem})
    return manifest
