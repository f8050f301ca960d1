"""Reading a framework's nested config (verl's merged Hydra config, AReaL's experiment
config) key by key: dotted keys, OmegaConf interpolations followed
(planner.frameworks.hydra_overrides.lookup), and one-line refusals naming the file, the
key, its value and what is supported.
"""

from __future__ import annotations

from typing import Any

from planner.domain.errors import InputError
from planner.frameworks.hydra_overrides import Override, lookup


class ConfigReader:
    """A merged nested config and the file it came from, read key by key; `overridden`
    lists the keys the user's file set."""

    def __init__(self, data: dict[str, Any], source: str, overridden: list[str]):
        self.data, self.source, self.overridden = data, source, overridden

    def get(self, key: str) -> Any:
        return lookup(self.data, key, self.source)

    def refuse(self, key: str, what: str) -> InputError:
        return InputError(f"{self.source}: {key}: {self.get(key)!r}: {what}")

    def require(self, key: str, allowed: tuple, what: str) -> Any:
        value = self.get(key)
        if value not in allowed:
            raise self.refuse(key, f"{what}; supported: {', '.join(map(repr, allowed))}")
        return value

    def count(self, key: str, minimum: int = 1) -> int:
        value = self.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.refuse(key, f"expected a whole number of at least {minimum}")
        return value

    def number(self, key: str, low: float, high: float) -> float:
        """A real number in [low, high] (a fraction such as gpu_memory_utilization)."""
        value = self.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not low <= value <= high:
            raise self.refuse(key, f"expected a number from {low} to {high}")
        return float(value)


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys as a nested mapping."""
    result: dict[str, Any] = {}
    for key, value in flat.items():
        node = result
        *path, leaf = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return result


def flat_overrides(data: dict[str, Any], prefix: str = "") -> list[Override]:
    """A nested mapping as `++key=value` overrides of its leaves (an empty mapping is a
    leaf), to apply a YAML file onto defaults as Hydra merges it."""
    items = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items.extend(flat_overrides(value, dotted + "."))
        else:
            items.append(Override(key=dotted, value=value, op="force", line=0))
    return items
