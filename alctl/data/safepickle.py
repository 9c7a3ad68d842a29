"""Unpickling of dataset files that rebuilds plain data only and refuses every other global, so no file runs code.

The CIFAR batches and the deeplearning.net MNIST pickle hold dicts, lists, tuples, strings, numbers and numpy arrays
of plain numeric dtypes. `load_plain` rebuilds exactly that: the only globals it resolves are numpy's array and
dtype reconstructors (under both the numpy.core and the numpy 2 numpy._core module names) and `_codecs.encode`
(how protocol-2 pickles written by Python 3 spell bytes), each wrapped so that it only builds numeric arrays or
bytes. Any other global (os.system, builtins.eval, a class's __reduce__, ...) is refused before it is called, with
one line naming the file and the global; object or structured arrays are refused too.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, Callable

import numpy as np

from alctl.errors import DataMissingError
from alctl.safe_text import terminal

try:  # numpy 2 keeps the implementation in numpy._core; numpy 1.x in numpy.core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy < 2 without the numpy._core alias
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

_NUMERIC_KINDS = "biufc"  # bool, signed, unsigned, float, complex: fixed-size numbers, no Python objects
_LATIN1 = ("latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1")


class _Refused(pickle.UnpicklingError):
    """A pickle asked for something `load_plain` does not build; `reason` says what, for the user's line."""

    def __init__(self, reason: str) -> None:
        """Keep the reason (already safe for a terminal)."""
        super().__init__(reason)
        self.reason = reason


def _numeric_dtype(dtype: np.dtype) -> np.dtype:
    """`dtype` itself, or _Refused when it is not a plain fixed-size number (object, structured, string, void...)."""
    if dtype.kind not in _NUMERIC_KINDS or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise _Refused(f"it holds an array of dtype {terminal(dtype.str, limit=40)} (only numeric arrays are loaded)")
    return dtype


def _dtype(spec: object, align: object = False, copy: object = False) -> np.dtype:
    """numpy.dtype as pickles call it (`dtype('u1', False, True)`), for a numeric type code given as a string only."""
    if not isinstance(spec, str):
        raise _Refused(f"it builds a numpy dtype from a {type(spec).__name__} (only type codes like 'u1' are loaded)")
    try:
        dtype = np.dtype(spec, bool(align), bool(copy))
    except TypeError as exc:
        raise pickle.UnpicklingError(f"bad numpy dtype {terminal(spec, limit=40)} ({exc})") from None
    return _numeric_dtype(dtype)


def _reconstruct(subtype: object, shape: object, dtype_code: object) -> np.ndarray:
    """numpy's array reconstructor, for a plain ndarray only (its data and dtype arrive through __setstate__)."""
    if subtype is not np.ndarray:
        raise _Refused(f"it rebuilds an array of type {terminal(getattr(subtype, '__name__', subtype), limit=60)}")
    return _np_reconstruct(np.ndarray, shape, dtype_code)


def _encode(text: object, encoding: object = "utf-8") -> bytes:
    """`_codecs.encode(str, 'latin1')`, the way Python 3 writes bytes into a protocol-2 pickle; nothing else."""
    if not isinstance(text, str) or not isinstance(encoding, str) or encoding.lower() not in _LATIN1:
        raise _Refused("it calls _codecs.encode with other than (str, 'latin1')")
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
}


class _PlainUnpickler(pickle.Unpickler):
    """An Unpickler whose only globals are those of `_ALLOWED`; no persistent ids."""

    def find_class(self, module: str, name: str) -> Any:
        """The allowed stand-in for `module.name`, or _Refused naming it."""
        found = _ALLOWED.get((module, name))
        if found is None:
            raise _Refused(f"it asks to run {terminal(f'{module}.{name}', limit=100)}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        """Persistent ids point outside the file: refused."""
        raise _Refused("it refers to a persistent object outside the file")


_PLAIN_TYPES = (str, bytes, int, float, bool, type(None))


def _check_plain(obj: Any) -> None:
    """_Refused unless `obj` is built only of dict/list/tuple/str/bytes/numbers/None and numeric numpy arrays."""
    stack = [obj]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if isinstance(item, _PLAIN_TYPES):
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        if type(item) is np.ndarray:
            _numeric_dtype(item.dtype)
        elif type(item) in (list, tuple):
            stack.extend(item)
        elif type(item) is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            raise _Refused(f"it holds a {terminal(type(item).__name__, limit=60)} (only arrays, lists, dicts, strings "
                           "and numbers are loaded)")


def load_plain(data: bytes, what: str, fix: str, field: str | None = None) -> Any:
    """Unpickle `data` (the bytes of file `what`) into plain data; py2 strings are read as latin1, as numpy needs.

    A refused global, persistent id, non-numeric array or other object is a DataMissingError:
    "[FIELD: ]refusing to load WHAT: it asks to run MODULE.NAME; FIX". A file that is merely corrupt raises what
    pickle raises (UnpicklingError, EOFError, ValueError, ...) for the caller to report as unreadable.
    """
    try:
        obj = _PlainUnpickler(io.BytesIO(data), encoding="latin1").load()
        _check_plain(obj)
    except _Refused as exc:
        lead = f"{field}: " if field else ""
        raise DataMissingError(f"{lead}refusing to load {terminal(what)}: {exc.reason}; {fix}") from None
    return obj
