"""Untrusted text into an output format: one function per format (terminal, shell, YAML, XML, CSV, URL).

Names, paths, class names, image references and URLs come from manifests, file names, label files and servers;
none may change the structure of what they are written into. Each function here either escapes the text for its
format or refuses it with a UserError naming `what` (the field or option the text came from).
"""

from __future__ import annotations

import json
import re
import shlex
import urllib.parse
from xml.sax.saxutils import escape as _xml_escape

from alctl.errors import UserError

# C0 controls (but not tab), DEL, C1 controls, and the Unicode line / paragraph separators and bidi overrides
# that reorder or break what a terminal, an editor or a YAML/shell parser shows.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROL_OR_TAB = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# XML 1.0 allows tab, LF, CR and everything from U+0020 except surrogates, U+FFFE and U+FFFF.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def has_control(text: str) -> bool:
    """True when `text` holds a control character (newline, escape, NUL, ...; tab included)."""
    return _CONTROL_OR_TAB.search(text) is not None


def refuse_control(text: str, what: str) -> str:
    """`text` unchanged, or a UserError naming `what` when it holds a control character (newline, NUL, ...)."""
    found = _CONTROL_OR_TAB.search(text)
    if found is not None:
        raise UserError(f"{what}: must not contain control characters (found {ascii(found.group())} in "
                        f"{terminal(text, limit=80)})")
    return text


def terminal(text: object, limit: int | None = None) -> str:
    """`text` safe to print on a terminal: control characters shown as escapes (\\n, \\x1b, \\u202e), never
    interpreted; at most `limit` characters, then "...". """
    s = str(text)
    if limit is not None and len(s) > limit:
        s = s[:limit] + "..."
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], s)


def shell_word(text: str, what: str) -> str:
    """One POSIX shell word for `text` (single-quoted when needed); control characters refused, since a newline
    inside a script line would still end a comment or an #SBATCH directive."""
    return shlex.quote(refuse_control(str(text), what))


def yaml_string(text: str) -> str:
    """A YAML double-quoted scalar holding exactly `text` (JSON string syntax, which YAML 1.2 reads as is)."""
    return json.dumps(str(text), ensure_ascii=True)


def xml_text(text: str) -> str:
    """`text` for XML character data or a double- or single-quoted attribute: markup escaped, characters XML 1.0
    forbids removed."""
    cleaned = _XML_INVALID.sub("", str(text))
    return _xml_escape(cleaned, {'"': "&quot;", "'": "&apos;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})


def _needs_quote(s: str) -> bool:
    """Whether `csv_cell` quotes `s`: it starts with a formula character, or with quotes before one (so that
    `csv_value` can tell the quote it added from one that belongs to the text)."""
    return s.lstrip("'").startswith(_FORMULA_START)


def csv_cell(text: str) -> str:
    """`text` as a CSV cell a spreadsheet shows as text: a leading =, +, -, @, tab or CR (a formula), also after
    leading quotes, gets one more quote in front; `csv_value` undoes it."""
    s = str(text)
    return "'" + s if _needs_quote(s) else s


def csv_value(cell: str) -> str:
    """The text `csv_cell` wrote as `cell`: its leading quote removed only where `csv_cell` added one."""
    return cell[1:] if cell.startswith("'") and _needs_quote(cell[1:]) else cell


def redact_url(url: str) -> str:
    """`url` with the password of its user-info replaced by ***: safe to print and to store."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def http_url(text: str, what: str) -> str:
    """`text` when it is an http(s) URL with a host and no control characters; a UserError naming `what` else."""
    refuse_control(text, what)
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"{what}: must be an http:// or https:// URL with a host, got {terminal(text, limit=80)}")
    return text
