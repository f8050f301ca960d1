"""Read an AReaL v1.0.4 config as plan import does: a YAML experiment config, or a launch
script that runs one with command-line overrides, merged onto AReaL's defaults.

AReaL starts training with (docs/en/tutorial/gsm8k_grpo.md, v1.0.4)
    python3 examples/math/gsm8k_rl.py --config examples/math/gsm8k_grpo.yaml \\
        scheduler.type=local actor.path=Qwen/Qwen3-1.7B ...
and reads the overrides with Hydra (areal/api/cli_args.py parse_cli_args). A script is
read for its one such command (`python* <script>.py --config FILE overrides...`, comment
lines skipped, backslash continuations joined, as planner.frameworks.hydra_overrides reads
verl's scripts); FILE is relative to the script's folder. Shell variables are not expanded:
a token with `$` other than `$@` is refused.

Defaults: planner/frameworks/areal_keys.py (AReaL's dataclass defaults); an optional engine
(ref, critic) given as a section gets the engine defaults under it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from planner.domain.errors import InputError
from planner.domain.input_files import read_input_text
from planner.domain.yamlio import parse_yaml
from planner.frameworks.areal_keys import ROLE_DEFAULTS, TOP
from planner.frameworks.config_reader import ConfigReader, flat_overrides, nested
from planner.frameworks.hydra_overrides import (
    Override,
    apply_overrides,
    logical_lines,
    parse_override,
    split_shell_line,
)

_PYTHON = re.compile(r"(.*/)?python[\d.]*")
YAML_SUFFIXES = (".yaml", ".yml")


def _yaml_config(path: Path, source: str) -> dict[str, Any]:
    data = parse_yaml(read_input_text(path, "AReaL config"), path)
    if not isinstance(data, dict):
        raise InputError(f"{source}: (top level): expected an AReaL experiment config mapping")
    return data


def _script_command(path: Path, source: str) -> tuple[Path, list[Override], list[str]]:
    """(config file, overrides, notes) of the launch script's one training command."""
    commands = []
    for line, logical in logical_lines(read_input_text(path, "AReaL launch script")):
        tokens = split_shell_line(logical, source, line)
        starts = [i for i in range(len(tokens) - 1) if _PYTHON.fullmatch(tokens[i])
                  and tokens[i + 1].endswith(".py")]
        if starts:
            commands.append((line, tokens[starts[0] + 2:]))
    if len(commands) != 1:
        raise InputError(f"{source}: found {len(commands)} `python3 <script>.py --config ...` "
                         f"commands; give a script that runs AReaL once")
    line, tokens = commands[0]
    config, overrides, notes = None, [], []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in ("|", "||", "&&", ";", "&") or re.match(r"^\d*[<>]", token):
            break
        if token == "$@":
            notes.append(f"{source}: line {line}: $@ (arguments given to the script) is not "
                         f"seen here; add them to the file to import them")
        elif token.startswith("--config"):
            _, _, value = token.partition("=")
            if not value:
                i += 1
                value = tokens[i] if i < len(tokens) else ""
            config = value
        elif "$" in token:
            raise InputError(f"{source}: line {line}: {token!r}: shell variables are not "
                             f"expanded; write the value")
        elif token.startswith("--"):
            raise InputError(f"{source}: line {line}: option {token!r} is not read; "
                             f"supported: --config FILE and key=value overrides")
        else:
            overrides.append(parse_override(token, source, line))
        i += 1
    if not config:
        raise InputError(f"{source}: line {line}: --config FILE is missing")
    return path.parent / config, overrides, notes


def _defaults_for(data: dict[str, Any], overrides: list[Override]) -> dict[str, Any]:
    """AReaL's defaults, with the engine defaults under each optional engine given."""
    base = nested(TOP)
    for role, defaults in ROLE_DEFAULTS.items():
        given = isinstance(data.get(role), dict) or any(
            o.key.startswith(f"{role}.") for o in overrides)
        if given:
            base[role] = nested(defaults)
    return base


def read_config(path: Path) -> tuple[ConfigReader, list[str]]:
    """The merged config of a YAML file or launch script, and notes from reading it."""
    source = str(path)
    if path.suffix in YAML_SUFFIXES:
        data, overrides, notes = _yaml_config(path, source), [], []
    else:
        config_path, overrides, notes = _script_command(path, source)
        data = _yaml_config(config_path, str(config_path))
    items = flat_overrides(data) + overrides
    merged = apply_overrides(_defaults_for(data, overrides), items, source)
    known = set(TOP) | {f"{role}.{key}" for role, d in ROLE_DEFAULTS.items() for key in d}
    known |= {f"{role}.backend" for role in ("actor", "ref", "critic", "rollout")}
    known |= {f"{role}.path" for role in ("ref", "critic")}
    unread = sorted({o.key for o in items} - known)
    if unread:
        notes.append(f"{source}: {len(unread)} keys not read, as they do not change what we "
                     f"price (e.g. {', '.join(unread[:5])})")
    return ConfigReader(merged, source, [o.key for o in items]), notes
