"""ROLL's `device_mapping` strings, read without evaluating them, and written back.

ROLL 0.3.0 (alibaba/ROLL, roll/configs/worker_config.py, WorkerConfig.__post_init__) runs
`eval(device_mapping)` on the string a role's config gives, e.g. `list(range(0,8))` or
`"[6, 7]"` (its examples), and takes the result as the role's global GPU ids (GPU r is
GPU r % num_gpus_per_node of node r // num_gpus_per_node, roll/distributed/scheduler/
resource_manager.py). We never evaluate it: the text is parsed by Python's `ast` (which
runs nothing) and only these forms are accepted, joined with `+`:
    list(range(stop)), list(range(start, stop)), list(range(start, stop, step)),
    [id, id, ...]            with whole-number literals.
Anything else (names, attribute access, other calls) is refused with one line.
"""

from __future__ import annotations

import ast

from planner.domain.errors import InputError

SUPPORTED_FORMS = "list(range(a,b[,step])), [i, j, ...], or a sum of them"


def _ints(nodes: list[ast.expr]) -> list[int] | None:
    values = [n.value for n in nodes if isinstance(n, ast.Constant)]
    if len(values) != len(nodes) or not all(type(v) is int for v in values):
        return None
    return values


def _ids(node: ast.expr) -> list[int] | None:
    """The ids of one accepted form (module docstring), or None."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _ids(node.left), _ids(node.right)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.List):
        return _ints(node.elts)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "list"
            and len(node.args) == 1 and not node.keywords):
        inner = node.args[0]
        if (isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name)
                and inner.func.id == "range" and 1 <= len(inner.args) <= 3
                and not inner.keywords):
            bounds = _ints(inner.args)
            if bounds is not None and (len(bounds) < 3 or bounds[2] != 0):
                return list(range(*bounds))
    return None


def parse_device_mapping(text: object, where: str) -> tuple[int, ...]:
    """Global GPU ids of a device_mapping value; InputError naming `where` (file: key)."""
    if not isinstance(text, str):
        raise InputError(f"{where}: {text!r}: ROLL evaluates a string here; write it as "
                         f"{SUPPORTED_FORMS}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        tree = None
    ids = _ids(tree.body) if tree is not None else None
    if ids is None:
        raise InputError(f"{where}: {text!r}: not read (it is not evaluated); supported: "
                         f"{SUPPORTED_FORMS}")
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise InputError(f"{where}: {text!r}: gives {ids}; expected distinct GPU ids >= 0")
    return tuple(ids)


def device_mapping_text(devices: tuple[int, ...]) -> str:
    """The string ROLL's examples write for `devices`: list(range(a,b)) for a run of
    consecutive ids, else a list literal."""
    first, last = devices[0], devices[-1]
    if devices == tuple(range(first, last + 1)):
        return f"list(range({first},{last + 1}))"
    return "[" + ", ".join(map(str, devices)) + "]"
