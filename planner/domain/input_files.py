"""Reading input files safely: what every YAML and JSON input goes through.

`read_input_text` refuses anything that is not a regular file before opening it (a FIFO
would block for ever, /dev/urandom would never end), files above MAX_INPUT_FILE_BYTES,
binary files and files that are not UTF-8. No input may hold NaN or infinity anywhere
(`refuse_non_finite`): no input of ours has a use for them, and one would otherwise turn
into a silently wrong estimate. `load_json_input` is the one JSON reader (HF config.json,
traces); YAML is read by planner/domain/yamlio.py on top of `read_input_text`.
"""

from __future__ import annotations

import json
import math
import os
import stat
import sys
from pathlib import Path
from typing import Any, Iterator

from planner.domain.errors import InputError

MIB = 1024**2
# Our largest inputs (profile tables of fine grids, traces of long runs, plans of large
# clusters) are a few MiB. A file ten times that is the wrong file, and reading it whole
# and parsing it into Python objects (about ten times its size) would eat the memory.
MAX_INPUT_FILE_BYTES = 64 * MIB


def _not_a_regular_file(mode: int) -> str | None:
    """What a non-regular file is, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory"
    if stat.S_ISFIFO(mode):
        return "is a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device"
    if stat.S_ISSOCK(mode):
        return "is a socket"
    return "is a special file"


def _refuse_unless_regular(path: Path, mode: int, kind: str) -> None:
    problem = _not_a_regular_file(mode)
    if problem:
        raise InputError(f"{path}: {problem}, not a file; give a {kind} file")


def _refuse_if_too_large(path: Path, size_bytes: int) -> None:
    if size_bytes > MAX_INPUT_FILE_BYTES:
        raise InputError(f"{path}: {size_bytes:,} bytes, more than the "
                         f"{MAX_INPUT_FILE_BYTES // MIB} MiB an input file may have; is it the "
                         f"right file?")


def read_input_bytes(path: Path, kind: str) -> bytes:
    """The bytes of the regular file `path` (at most MAX_INPUT_FILE_BYTES); InputError naming
    the file otherwise. `kind` ("YAML", "JSON") names what was expected in messages.

    The file type is checked with stat before opening (opening a FIFO blocks until a writer
    comes) and again on the open descriptor, opened non-blocking, in case the path was
    replaced in between.
    """
    path = Path(path)
    try:
        status = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"{path}: file not found") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    _refuse_unless_regular(path, status.st_mode, kind)
    _refuse_if_too_large(path, status.st_size)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        _refuse_unless_regular(path, os.fstat(fd).st_mode, kind)
        data = handle.read(MAX_INPUT_FILE_BYTES + 1)
    _refuse_if_too_large(path, len(data))
    return data


def read_input_text(path: Path, kind: str) -> str:
    """The UTF-8 text of an input file (a leading byte-order mark dropped); InputError for a
    binary or non-UTF-8 file, and everything `read_input_bytes` refuses."""
    data = read_input_bytes(path, kind)
    if b"\0" in data:
        raise InputError(f"{path}: binary data (NUL bytes at offset {data.index(0)}); "
                         f"expected a {kind} text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text (byte {data[err.start]:#04x} at offset "
                         f"{err.start}); expected a {kind} file saved as UTF-8") from None


def _children(value: Any, where: str) -> Iterator[tuple[Any, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield item, f"{where}.{key}" if where else str(key)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield item, f"{where}[{index}]"


def first_non_finite(data: Any) -> tuple[str, float] | None:
    """(field path, value) of the first NaN or infinite number in nested data, or None.

    Iterative, so data nested as deep as the parsers allow is walked without recursion.
    """
    stack = [(data, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return where or "(top level)", value
        stack.extend(reversed(list(_children(value, where))))
    return None


def refuse_non_finite(path: Path, data: Any) -> None:
    found = first_non_finite(data)
    if found:
        where, value = found
        raise InputError(f"{path}: {where}: got {value}; give a finite number (NaN and "
                         f"infinity are not valid in our inputs)")


class JSONSyntaxError(InputError):
    """A JSON input that does not parse; `where` is "<message> at line L, column C", for a
    caller that words the error its own way."""

    def __init__(self, path: Path, where: str):
        super().__init__(f"{path}: not valid JSON ({where})")
        self.where = where


def load_json_input(path: Path) -> Any:
    """Parse a JSON input file; InputError naming the file (and the field for NaN/inf),
    JSONSyntaxError when it does not parse.

    Python's json reads `NaN`, `Infinity` and numbers like 1e400 (as inf) that JSON itself
    does not allow; they are refused here.
    """
    text = read_input_text(path, "JSON")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise JSONSyntaxError(path, f"{err.msg} at line {err.lineno}, column {err.colno}"
                              ) from None
    except RecursionError:
        raise InputError(f"{path}: nested too deeply to read (thousands of levels); our JSON "
                         f"inputs nest a few levels") from None
    except ValueError:    # an integer beyond Python's digit limit (str -> int is quadratic)
        raise InputError(f"{path}: an integer has more than {sys.get_int_max_str_digits():,} "
                         f"digits; give a number of sane size") from None
    refuse_non_finite(path, data)
    return data
