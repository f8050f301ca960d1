"""Hydra command-line overrides: read them out of a shell script, apply them onto a nested
mapping, read keys of the result (following OmegaConf interpolations), and write them back.

verl's examples (volcengine/verl, examples/grpo_trainer/*.sh, v0.7.0) start training with
    python3 -m verl.trainer.main_ppo --config-path=config --config-name='x.yaml' \\
        algorithm.adv_estimator=grpo \\
        data.train_batch_size=1024 \\
        ... $@
Hydra's override grammar (hydra.cc, "Override grammar", Hydra 1.3) has `key=value` (change
a key), `+key=value` (add a key that is not there), `++key=value` (add or change) and
`~key` (delete). Values are read as Hydra reads them: integers, floats (also `1e-6`),
booleans (`true` / `True`), `null`, `[...]` lists and `{...}` dicts (YAML flow syntax), and
anything else as a string.

The script is read the way the shell would run it, within limits: `#` comment lines are
skipped, a trailing backslash joins lines, `NAME=value` / `export NAME=value` lines set
variables that `$NAME` / `${NAME}` in later lines expand to (also inside single quotes, a
simplification that verl's examples do not hit); variables the script does not set
(`$HOME`) stay as written, and `$@` (the script's own arguments) is dropped with a note.
Anything else on the command line (an unknown `--flag`, a token that is no override) is
refused with one line naming the script, the line and the token.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from planner.domain.errors import InputError

OverrideOp = Literal["set", "add", "force", "delete"]
_KEY = r"[A-Za-z_][\w\-]*(?:\.[A-Za-z_0-9][\w\-]*)*"
_OVERRIDE = re.compile(rf"^(?P<prefix>\+\+|\+|~)?(?P<key>{_KEY})(?:=(?P<value>.*))?$", re.DOTALL)
_ASSIGNMENT = re.compile(r"^(?:export\s+)?(?P<name>[A-Za-z_]\w*)=(?P<value>.*)$", re.DOTALL)
_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_]\w*)\}|(?P<plain>[A-Za-z_]\w*))")
_SHELL_END = {"|", "||", "&&", ";", "&"}
_REDIRECT = re.compile(r"^\d*[<>]")
_HYDRA_OPTIONS = ("--config-path", "--config-name")
_INTERPOLATION = re.compile(r"^\$\{(?P<body>[^{}]*(?:\{[^{}]*\}[^{}]*)*)\}$")


@dataclass(frozen=True)
class Override:
    """One Hydra override: `op` on dotted `key` with the parsed `value` (None to delete)."""

    key: str
    value: Any
    op: OverrideOp
    line: int


@dataclass(frozen=True)
class HydraCommand:
    """The training command of a script: its Hydra options and overrides, and notes."""

    config_path: str | None
    config_name: str | None
    overrides: tuple[Override, ...]
    notes: list[str] = field(default_factory=list)


def parse_value(text: str) -> Any:
    """A Hydra override value as Python data (module docstring)."""
    stripped = text.strip()
    if re.fullmatch(r"[+-]?\d+", stripped):
        return int(stripped)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)", stripped):
        return float(stripped)
    lowered = stripped.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    if stripped[:1] in "[{":
        try:
            return yaml.safe_load(stripped)
        except yaml.YAMLError:
            return stripped
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
        return stripped[1:-1]
    return stripped


def parse_override(token: str, source: str, line: int) -> Override:
    """One `key=value` / `+key=value` / `++key=value` / `~key` token; InputError otherwise."""
    match = _OVERRIDE.match(token)
    if not match or (match["value"] is None and match["prefix"] != "~"):
        raise InputError(f"{source}: line {line}: {token!r} is not a Hydra override; "
                         f"expected key=value, +key=value, ++key=value or ~key")
    op: OverrideOp = {"+": "add", "++": "force", "~": "delete", None: "set"}[match["prefix"]]
    value = None if match["value"] is None else parse_value(match["value"])
    return Override(key=match["key"], value=value, op=op, line=line)


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each command, backslash continuations joined."""
    result, pending, start = [], "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending and raw.lstrip().startswith("#"):
            continue
        if not pending:
            start = number
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        result.append((start, pending + raw))
        pending = ""
    if pending.strip():
        result.append((start, pending))
    return result


def _expand(text: str, variables: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        name = match["braced"] or match["plain"]
        return variables.get(name, match[0])
    return _VARIABLE.sub(replace, text)


def split_shell_line(text: str, source: str, line: int) -> list[str]:
    """The shell words of one logical line (shlex, `#` comments dropped); InputError on
    unbalanced quotes."""
    try:
        return shlex.split(text, comments=True)
    except ValueError as err:
        raise InputError(f"{source}: line {line}: cannot split the shell line ({err}); "
                         f"check its quotes") from None


def _command_start(tokens: list[str], entry_module: str) -> int | None:
    """Index after `python -m <entry_module>` in tokens, or None."""
    for i in range(len(tokens) - 1):
        if tokens[i] == "-m" and tokens[i + 1] == entry_module and i >= 1 \
                and re.fullmatch(r"(.*/)?python[\d.]*", tokens[i - 1]):
            return i + 2
    return None


def _read_command(tokens: list[str], source: str, line: int) -> HydraCommand:
    options: dict[str, str] = {}
    overrides, notes = [], []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in _SHELL_END or _REDIRECT.match(token):
            break
        if token == "$@":
            notes.append(f"{source}: line {line}: $@ (arguments given to the script when it "
                         f"is run) is not seen here; add them to the file to import them")
        elif token.startswith("--"):
            name, _, value = token.partition("=")
            if name not in _HYDRA_OPTIONS:
                raise InputError(f"{source}: line {line}: option {name!r} is not read; "
                                 f"supported: {', '.join(_HYDRA_OPTIONS)} and overrides")
            if not value:
                i += 1
                if i == len(tokens):
                    raise InputError(f"{source}: line {line}: {name} needs a value")
                value = tokens[i]
            options[name] = value
        else:
            overrides.append(parse_override(token, source, line))
        i += 1
    return HydraCommand(config_path=options.get("--config-path"),
                        config_name=options.get("--config-name"),
                        overrides=tuple(overrides), notes=notes)


def command_in_script(text: str, source: str, entry_module: str) -> HydraCommand:
    """The one `python -m <entry_module> ...` command of a shell script (module docstring);
    InputError when there is none or more than one."""
    variables: dict[str, str] = {}
    commands = []
    for line, logical in logical_lines(text):
        expanded = _expand(logical, variables)
        assignment = _ASSIGNMENT.match(expanded.strip())
        if assignment and " " not in assignment["name"]:
            parts = split_shell_line(assignment["value"], source, line)
            if len(parts) <= 1:
                variables[assignment["name"]] = parts[0] if parts else ""
                continue
        tokens = split_shell_line(expanded, source, line)
        start = _command_start(tokens, entry_module)
        if start is not None:
            commands.append(_read_command(tokens[start:], source, line))
    if len(commands) != 1:
        raise InputError(f"{source}: found {len(commands)} `python3 -m {entry_module}` "
                         f"commands; give a script that runs it once")
    return commands[0]


def apply_overrides(config: dict[str, Any], overrides: tuple[Override, ...] | list[Override],
                    source: str, known_keys: frozenset[str] | None = None) -> dict[str, Any]:
    """A copy of nested `config` with `overrides` applied in order, as Hydra does: `key=v`
    changes a key (one outside `config` is refused when `known_keys`, the full key set, says
    it does not exist either), `+key=v` adds one that is not there, `++` adds or changes,
    `~key` deletes."""
    result = _deep_copy(config)
    for item in overrides:
        parent, leaf = _parent_of(result, item.key, create=item.op != "delete")
        present = parent is not None and leaf in parent
        where = f"{source}: line {item.line}: {item.key}"
        if item.op == "add" and (present or (known_keys and item.key in known_keys)):
            raise InputError(f"{where}: +{item.key} adds a key that is already in the config; "
                             f"write {item.key}=... to change it")
        if item.op == "set" and not present and known_keys is not None \
                and item.key not in known_keys:
            raise InputError(f"{where}: not a key of the config; Hydra needs +{item.key}=... "
                             f"to add one (check the spelling)")
        if item.op == "delete":
            if present:
                del parent[leaf]
            continue
        parent[leaf] = item.value
    return result


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _parent_of(config: dict, key: str, create: bool) -> tuple[dict | None, str]:
    *path, leaf = key.split(".")
    node = config
    for part in path:
        child = node.get(part)
        if not isinstance(child, dict):
            if not create:
                return None, leaf
            child = node[part] = {}
        node = child
    return node, leaf


MISSING = object()   # raw_value's answer for a key that is not in the config


def raw_value(config: dict, key: str) -> Any:
    """The value at dotted `key` as written (interpolations not followed), or MISSING."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def lookup(config: dict, key: str, source: str, depth: int = 0) -> Any:
    """The value of dotted `key`, following the OmegaConf interpolations verl's configs use
    (`${a.b}`, `${.sibling}`, `${oc.select:a.b,default}`); InputError when `key` is missing
    or an interpolation cannot be followed."""
    value = raw_value(config, key)
    if value is MISSING:
        raise InputError(f"{source}: {key}: missing from the config")
    match = _INTERPOLATION.match(value) if isinstance(value, str) else None
    if not match or depth > 16:
        if match:
            raise InputError(f"{source}: {key}: interpolation {value!r} loops")
        return value
    body = match["body"].strip()
    default: Any = MISSING
    if body.startswith("oc.select:"):
        target, _, fallback = body[len("oc.select:"):].partition(",")
        if _:
            default = parse_value(fallback)
    elif ":" in body:
        raise InputError(f"{source}: {key}: resolver {body.split(':')[0]!r} in {value!r} is "
                         f"not read; give the value itself")
    else:
        target = body
    target = target.strip()
    if target.startswith("."):
        target = key.rsplit(".", 1)[0] + target if "." in key else target[1:]
    if raw_value(config, target) is MISSING:
        if default is MISSING:
            raise InputError(f"{source}: {key}: {value!r} names {target}, which is not set")
        return default
    return lookup(config, target, source, depth + 1)


def render_value(value: Any) -> str:
    """A value as a shell line of overrides writes it: what parse_value reads back."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    assert isinstance(value, str) and parse_value(value) == value, value
    return shlex.quote(value)
