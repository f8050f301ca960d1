"""Reading input files safely and writing files atomically.

Every YAML and JSON input goes through `read_input_text`: it refuses anything that is not a
regular file before opening it (a FIFO would block for ever, /dev/urandom would never end),
files above MAX_INPUT_FILE_BYTES, binary files and files that are not UTF-8. YAML is read
with `GuardedSafeLoader` (PyYAML's safe loader, so nothing untrusted is constructed, plus
limits on nesting and on what aliases expand to, and string-only mapping keys); JSON with
the standard json module. Neither kind of input may hold NaN or infinity anywhere
(`first_non_finite`): no input of ours has a use for them, and one would otherwise turn into
a silently wrong estimate.

Writes go to a temporary file in the destination directory and are renamed into place, so a
crash never leaves a half-written plan or profile behind; the temporary file a killed write
leaves is removed by the next write to the same path. `check_writable_path` lets a command
refuse an output path before it does its expensive work.
"""

from __future__ import annotations

import fcntl
import glob
import json
import math
import os
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from planner.domain.errors import InputError

T = TypeVar("T")

MIB = 1024**2
# Our largest inputs (profile tables of fine grids, traces of long runs, plans of large
# clusters) are a few MiB. A file ten times that is the wrong file, and reading it whole
# and parsing it into Python objects (about ten times its size) would eat the memory.
MAX_INPUT_FILE_BYTES = 64 * MIB
# Our files nest at most about eight levels (plan -> workflow -> models -> role -> spec).
# The limit leaves room for hand-written files and stays far below Python's recursion
# limit (PyYAML composes a node with about three nested calls).
MAX_NESTING_DEPTH = 100
# Values reached through aliases, counted with every alias expanded. Anchors in our files
# stand for a node group or a model entry (tens of values); a "billion laughs" file reaches
# a billion through a few dozen nested aliases, and would only blow up later (pydantic, a
# deep copy, a dump), so it is refused while composing, before anything is expanded.
MAX_ALIAS_EXPANDED_VALUES = 100_000
# A writer creates its temporary file, then locks it at once (atomic_write_bytes); an empty
# unlocked one younger than this may be in that instant, so only an older one counts as
# left by a killed write.
STALE_TEMP_GRACE_S = 5.0
_MKSTEMP_RANDOM_CHARS = 8     # tempfile names its files prefix + 8 random characters + suffix

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"   # `<<: *base` merges a mapping: a valid key
_TAG_KINDS = {"int": "an integer", "float": "a number", "bool": "a boolean (true/false/yes/"
              "no/on/off)", "null": "null", "timestamp": "a date"}


# --- reading ---------------------------------------------------------------------------------

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


def _refuse_non_finite(path: Path, data: Any) -> None:
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
    _refuse_non_finite(path, data)
    return data


class YAMLRefused(yaml.YAMLError):
    """A YAML file refused by the loader's limits (not a syntax error)."""

    def __init__(self, problem: str, mark: yaml.Mark | None):
        super().__init__(problem)
        self.problem, self.mark = problem, mark


def _key_problem(key: Node) -> str | None:
    """Why a mapping key is not a plain name, or None."""
    if isinstance(key, ScalarNode):
        if key.tag in (_STR_TAG, _MERGE_TAG):
            return None
        kind = _TAG_KINDS.get(key.tag.rsplit(":", 1)[-1], f"of type {key.tag}")
        return (f"mapping key {key.value!r} is read as {kind}, not a name; quote it "
                f"('{key.value}': ...) or rename it")
    shape = "a list" if isinstance(key, SequenceNode) else "a mapping"
    return f"a mapping key is {shape}, not a name; keys must be plain names"


class GuardedSafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the limits of the module docstring: nesting depth, values
    reached through aliases, string mapping keys, integers Python can parse."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._alias_values = 0
        self._expanded_values: dict[Node, int] = {}   # values in a node, aliases expanded

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            return self._compose_alias(parent, index)
        start = self.peek_event().start_mark
        self._depth += 1
        if self._depth > MAX_NESTING_DEPTH:
            raise YAMLRefused(f"nested more than {MAX_NESTING_DEPTH} levels deep; our files "
                              f"nest a few levels", start)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(parent, MappingNode) and index is None:    # `node` is a key
            problem = _key_problem(node)
            if problem:
                raise YAMLRefused(problem, node.start_mark)
        self._expanded_values[node] = 1 + sum(self._expanded_values[c]
                                              for c in _node_children(node))
        return node

    def _compose_alias(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        node = super().compose_node(parent, index)   # an undefined alias is a syntax error
        size = self._expanded_values.get(node)
        if size is None:
            raise YAMLRefused(f"alias *{event.anchor} is inside the node it refers to (a "
                              f"cycle); aliases must refer to a complete earlier node",
                              event.start_mark)
        self._alias_values += size
        if self._alias_values > MAX_ALIAS_EXPANDED_VALUES:
            raise YAMLRefused(f"aliases expand to more than {MAX_ALIAS_EXPANDED_VALUES:,} "
                              f"values (nested anchors, a 'billion laughs' file?); write the "
                              f"values out", event.start_mark)
        return node


def _node_children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return node.value
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _construct_int(loader: GuardedSafeLoader, node: ScalarNode) -> int:
    """PyYAML's int, refusing one beyond Python's digit limit as a YAML problem (int() would
    raise a bare ValueError)."""
    try:
        return yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)
    except ValueError:
        raise YAMLRefused(f"integer of {len(node.value):,} digits is too large",
                          node.start_mark) from None


GuardedSafeLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _where(mark: yaml.Mark | None) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def parse_yaml(text: str, path: Path) -> Any:
    """The data of a YAML text read with GuardedSafeLoader; InputError naming `path`."""
    try:
        return yaml.load(text, Loader=GuardedSafeLoader)
    except YAMLRefused as err:
        raise InputError(f"{path}: refused{_where(err.mark)}: {err.problem}") from None
    except yaml.reader.ReaderError as err:
        raise InputError(f"{path}: character {err.character:#x} at offset {err.position} "
                         f"is not allowed in YAML; expected a YAML text file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or "malformed YAML"
        raise InputError(f"{path}: malformed YAML{_where(mark)}: {problem}") from None


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    """Load a YAML file whose top level must be a mapping; InputError on any problem."""
    data = parse_yaml(read_input_text(path, "YAML"), path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: (top level): expected a mapping of keys to values, "
                         f"got {type(data).__name__}")
    _refuse_non_finite(path, data)
    return data


def resolve_preset_or_file(name_or_path: str, presets: Mapping[str, Callable[[], T]],
                           load_file: Callable[[Path], T], flag: str, kind: str) -> T:
    """A preset by name, else a YAML file (a .yaml/.yml name or an existing path); otherwise
    InputError naming the flag and the valid presets."""
    if name_or_path in presets:
        return presets[name_or_path]()
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        return load_file(path)
    raise InputError(f"{flag}: unknown {kind} {name_or_path!r}; valid: a preset "
                     f"{sorted(presets)} or a {kind} YAML file")


# --- writing ---------------------------------------------------------------------------------

class _BlockDumper(yaml.SafeDumper):
    """Safe dumper that writes short lists of scalars in flow style for readability."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = len(data) <= 16 and all(isinstance(x, (int, float, str, bool)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_BlockDumper.add_representer(list, _represent_list)
_BlockDumper.add_representer(tuple, _represent_list)


def dump_yaml(data: Any) -> str:
    """Deterministic YAML text: keys in insertion order, short scalar lists inline."""
    return yaml.dump(data, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False,
                     width=100, allow_unicode=True)


def directory_is_writable(folder: Path) -> bool:
    """Whether this process may create files in `folder` (a separate function so tests
    running as root, for whom permission bits do not apply, can stand in a refusal)."""
    return os.access(folder, os.W_OK | os.X_OK)


def _nearest_existing(path: Path) -> Path:
    """`path`'s nearest ancestor that exists (atomic writes create the missing folders)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _write_problem(path: Path) -> str | None:
    """Why a file cannot be written at `path`, or None."""
    if path.is_dir():
        return "it is a directory; give a file name"
    if path.exists() and not path.is_file():
        return "it is not a regular file (a device, FIFO or socket); give a file path"
    folder = _nearest_existing(path)
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    if not directory_is_writable(folder):
        return f"no permission to create files in {folder}"
    return None


def check_writable_path(path: str | Path | None, flag: str) -> None:
    """InputError naming `flag` unless a file can be written at `path` (missing folders are
    fine: they are created). None (a command's default path) is not checked. Call it before
    the expensive work, so a bad --out does not cost a search or a profile."""
    if path is None:
        return
    path = Path(path)
    try:
        problem = _write_problem(path)
    except OSError as err:
        problem = err.strerror or str(err)
    if problem:
        raise InputError(f"{flag}: {path}: cannot write: {problem}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temporary file and rename, creating parent folders."""
    atomic_write_bytes(path, text.encode())


def _mode_for(path: Path) -> int:
    """Keep an existing file's permissions; a new file gets 0666 less the umask (mkstemp's
    0600 would make plans and pictures unreadable to others)."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _is_abandoned(temp: Path) -> bool:
    """Whether a temporary file of an atomic write to the same target was left by a killed
    write. Its writer holds an exclusive lock from just after creating it until the rename,
    and the lock dies with the process: so an unlocked file with data is a leftover, and an
    empty one is once older than STALE_TEMP_GRACE_S. A file we cannot lock (a live writer,
    or a file system without locks) is left alone."""
    try:
        fd = os.open(temp, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return status.st_size > 0 or time.time() - status.st_mtime > STALE_TEMP_GRACE_S
    except OSError:
        return False
    finally:
        os.close(fd)


def _lock_while_writing(fd: int) -> None:
    """Mark a temporary file as a write in progress (`_is_abandoned`). Without lock support
    (some network file systems) the write goes on unmarked: cleaners cannot lock it either,
    so they leave it alone."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        pass


def remove_abandoned_temps(path: Path) -> None:
    """Delete the `.NAME.XXXXXXXX.tmp` files (mkstemp's eight random characters) that
    killed writes to `path` left beside it."""
    pattern = glob.escape(_temp_prefix(path)) + "?" * _MKSTEMP_RANDOM_CHARS + ".tmp"
    for temp in path.parent.glob(pattern):
        if _is_abandoned(temp):
            temp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file and rename, creating parent folders.

    The temporary file is locked while it is written, so a later write can tell a killed
    write's leftover (removed, `remove_abandoned_temps`) from another write in progress.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_temps(path)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            _lock_while_writing(handle.fileno())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            os.chmod(tmp_name, _mode_for(path))
            # renamed while still locked: alive, it never looks abandoned to another write
            os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
