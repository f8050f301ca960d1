"""Reading YAML safely and writing files atomically.

Reads use `yaml.safe_load` (nothing untrusted is constructed). Writes go to a temporary file
in the destination directory and are renamed into place, so a crash never leaves a
half-written plan or profile behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import yaml

from planner.domain.errors import InputError

T = TypeVar("T")


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    """Load a YAML file whose top level must be a mapping; InputError on any problem."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "malformed YAML"
        raise InputError(f"{path}: malformed YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: (top level): expected a mapping of keys to values, "
                         f"got {type(data).__name__}")
    return data


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


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temporary file and rename, creating parent folders."""
    atomic_write_bytes(path, text.encode())


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


def _mode_for(path: Path) -> int:
    """Keep an existing file's permissions; a new file gets 0666 less the umask (mkstemp's
    0600 would make plans and pictures unreadable to others)."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file and rename, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _mode_for(path))
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
