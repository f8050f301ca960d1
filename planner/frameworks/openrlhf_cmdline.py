"""Reading an OpenRLHF command line (a text file or shell script holding one
`python3 -m openrlhf.cli.train_ppo_ray ...` command) into its flags.

The command may be split over lines with trailing backslashes and preceded by anything
(`ray job submit ... --`); it ends at the first line without a continuation or at a shell
operator (`;`, `&&`, `|`, ...). Words are split as the shell splits them (shlex, POSIX
rules, `#` comments). Flags are read as train_ppo_ray's argparse parser reads them
(planner/frameworks/openrlhf_flags.py): `--flag value`, `--flag=value`, switches without a
value, nargs=2 pairs; a repeated flag keeps its last value, as argparse does. Shell
variables are not expanded: a word with `$` is refused, as is an unknown flag (argparse
would refuse it too), each with one line naming the file and the line.
"""

from __future__ import annotations

import difflib
import shlex
from dataclasses import dataclass
from pathlib import Path

from planner.domain.errors import InputError
from planner.frameworks.openrlhf_flags import ALL_FLAGS, LISTS, PAIRS, SWITCHES

MODULE = "openrlhf.cli.train_ppo_ray"
SHELL_OPERATORS = frozenset({";", "&&", "||", "|", "&", ">", ">>", "<", "2>", "2>&1"})
VERSION_NAME = "OpenRLHF v0.11.0"


@dataclass(frozen=True)
class Flag:
    """The values given to one flag (empty for a switch) and the line it is on."""

    values: tuple[str, ...]
    line: int


def _logical_command(text: str, source: str) -> list[tuple[str, int]]:
    """The words of the one train_ppo_ray command after the module name, each with its
    physical line number."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if MODULE in line.split("#", 1)[0]]
    if len(starts) != 1:
        raise InputError(f"{source}: expected one `python3 -m {MODULE}` command, found "
                         f"{len(starts)}")
    # Walk back to the first line of the continued command, then forward to its end.
    first = starts[0]
    while first > 0 and lines[first - 1].rstrip().endswith("\\"):
        first -= 1
    words: list[tuple[str, int]] = []
    number = first
    while number < len(lines):
        segment = lines[number].rstrip()
        continued = segment.endswith("\\")
        try:
            parts = shlex.split(segment[:-1] if continued else segment, comments=True)
        except ValueError as err:
            raise InputError(f"{source}:{number + 1}: cannot split the line into words "
                             f"({err})") from None
        words.extend((part, number + 1) for part in parts)
        if not continued:
            break
        number += 1
    names = [w for w, _ in words]
    after = names.index(next(n for n in names if n.endswith(MODULE))) + 1
    tail = words[after:]
    end = next((i for i, (w, _) in enumerate(tail) if w in SHELL_OPERATORS), len(tail))
    return tail[:end]


def _unknown_flag(name: str, line: str) -> InputError:
    close = difflib.get_close_matches(name, sorted(ALL_FLAGS), n=2)
    hint = f"; did you mean {' or '.join('--' + c for c in close)}?" if close else ""
    renamed = ("" if "." in name else " (v0.10.2 renamed the flags to dotted names such as "
               "--actor.num_nodes)")
    return InputError(f"{line}: --{name} is not a flag of {VERSION_NAME}'s train_ppo_ray"
                      f"{renamed}{hint}")


def _values_needed(name: str) -> int | None:
    """How many words follow the flag: 0, 1, 2, or None for any number (nargs='*')."""
    if name in SWITCHES:
        return 0
    if name in PAIRS:
        return 2
    return None if name in LISTS else 1


def parse_flags(text: str, source: str) -> dict[str, Flag]:
    """The flags of the train_ppo_ray command in `text` (module docstring)."""
    words = _logical_command(text, source)
    flags: dict[str, Flag] = {}
    i = 0
    while i < len(words):
        word, number = words[i]
        where = f"{source}:{number}"
        if "$" in word:
            raise InputError(f"{where}: {word!r} uses a shell variable, which is not "
                             f"expanded here; write its value")
        if not word.startswith("--"):
            raise InputError(f"{where}: expected a --flag, got {word!r}")
        name, equals, inline = word[2:].partition("=")
        if name not in ALL_FLAGS:
            raise _unknown_flag(name, where)
        needed = _values_needed(name)
        i += 1
        if equals:
            if needed != 1:
                raise InputError(f"{where}: --{name} takes "
                                 f"{'no value' if needed == 0 else 'several values'}; "
                                 f"write it without `=`")
            values = [inline]
        else:
            values = []
            while i < len(words) and (needed is None or len(values) < needed) \
                    and not words[i][0].startswith("--"):
                values.append(words[i][0])
                i += 1
            if needed is not None and len(values) != needed:
                raise InputError(f"{where}: --{name} needs {needed} value(s), got "
                                 f"{len(values)}")
        bad = [v for v in values if "$" in v]
        if bad:
            raise InputError(f"{where}: --{name} {bad[0]!r} uses a shell variable, which is "
                             f"not expanded here; write its value")
        flags[name] = Flag(tuple(values), number)
    return flags


def read_flags(path: Path) -> dict[str, Flag]:
    """The flags of the command in file `path`; InputError when it cannot be read."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the command line ({err})") from None
    return parse_flags(text, str(path))
