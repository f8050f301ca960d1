"""Writing files atomically, and refusing an output path before the work that fills it.

Writes go to a temporary file in the destination directory and are renamed into place, so a
crash never leaves a half-written plan, profile or picture behind; the temporary file a
killed write leaves is removed by the next write to the same path. `check_writable_path`
lets a command refuse an output path before it does its expensive work.
"""

from __future__ import annotations

import fcntl
import glob
import os
import stat
import tempfile
import time
from pathlib import Path

from planner.domain.errors import InputError

# A writer creates its temporary file, then locks it at once (atomic_write_bytes); an empty
# unlocked one younger than this may be in that instant, so only an older one counts as
# left by a killed write.
STALE_TEMP_GRACE_S = 5.0
_MKSTEMP_RANDOM_CHARS = 8     # tempfile names its files prefix + 8 random characters + suffix


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
