"""Reading and writing YAML: the guarded safe loader, deterministic dumps, and presets or
files by name.

YAML is read from `planner.domain.input_files.read_input_text` (regular UTF-8 files of
bounded size) with `GuardedSafeLoader`: PyYAML's safe loader, so nothing untrusted is
constructed, plus limits on nesting and on what aliases expand to, and string-only mapping
keys; the data may hold no NaN or infinity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from planner.domain.errors import InputError
from planner.domain.input_files import read_input_text, refuse_non_finite

T = TypeVar("T")

# Our files nest at most about eight levels (plan -> workflow -> models -> role -> spec).
# The limit leaves room for hand-written files and stays far below Python's recursion
# limit (PyYAML composes a node with about three nested calls).
MAX_NESTING_DEPTH = 100
# Values reached through aliases, counted with every alias expanded. Anchors in our files
# stand for a node group or a model entry (tens of values); a "billion laughs" file reaches
# a billion through a few dozen nested aliases, and would only blow up later (pydantic, a
# deep copy, a dump), so it is refused while composing, before anything is expanded.
MAX_ALIAS_EXPANDED_VALUES = 100_000

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"   # `<<: *base` merges a mapping: a valid key
_TAG_KINDS = {"int": "an integer", "float": "a number", "bool": "a boolean (true/false/yes/"
              "no/on/off)", "null": "null", "timestamp": "a date"}


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
    refuse_non_finite(path, data)
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
