"""Helpers shared by the plan figures and `plan show` (no matplotlib): device labels, node
names, output checks."""

from __future__ import annotations

from pathlib import Path

from planner.domain.cluster import ClusterSpec
from planner.domain.errors import InputError
from planner.domain.output_files import check_writable_path
from planner.domain.plan import Plan

PICTURE_SUFFIXES = (".png", ".svg", ".pdf")
REALLOC_PREFIX = "realloc:"
TRANSFER_PREFIX = "transfer:"  # the runtime's trace names data transfers transfer:<src>-><dst>


def check_picture_path(out: Path, option: str = "--out") -> Path:
    """The output path, or InputError when its suffix is not a picture type we write or a
    file cannot be written there (output_files.check_writable_path)."""
    out = Path(out)
    if out.suffix.lower() not in PICTURE_SUFFIXES:
        raise InputError(f"{option}: {out}: unsupported picture type {out.suffix or '(none)'!r};"
                         f" valid: {', '.join(PICTURE_SUFFIXES)}")
    check_writable_path(out, option)
    return out


def device_label(cluster: ClusterSpec, device: int) -> str:
    """`node:slot` of one device, the form `plan show` uses for meshes."""
    return f"{cluster.device_node[device]}:{cluster.slot_of(device)}"


def split_node_id(node_id: str) -> tuple[int, str]:
    """`"1/actor_gen"` -> (1, "actor_gen"); ValueError when not `<iteration>/<node>`."""
    iteration, sep, name = node_id.partition("/")
    if not sep or not iteration.isdigit() or not name:
        raise ValueError(f"{node_id!r} is not of the form <iteration>/<node>, e.g. 1/actor_gen")
    return int(iteration), name


def node_model(plan: Plan, name: str) -> str | None:
    """The model role of a call name, a `realloc:<model>:<src>-><dst>` name or (the
    producer's model) a `transfer:<src>-><dst>` name; None if unknown."""
    if name.startswith(TRANSFER_PREFIX):
        src, _, dst = name[len(TRANSFER_PREFIX):].partition("->")
        calls = plan.workflow.call_by_name
        return calls[src].model if src in calls and dst in calls else None
    if name.startswith(REALLOC_PREFIX):
        model = name[len(REALLOC_PREFIX):].split(":", 1)[0]
        return model if model in plan.workflow.models else None
    call = plan.workflow.call_by_name.get(name)
    return call.model if call else None


def short_realloc(name: str) -> str:
    """`realloc:critic:critic_train->critic_inf` -> `critic: critic_train->critic_inf`."""
    return name[len(REALLOC_PREFIX):].replace(":", ": ", 1) if name.startswith(
        REALLOC_PREFIX) else name


def format_seconds(seconds: float) -> str:
    """Seconds with a precision that keeps small reallocations and transfers readable."""
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 0.1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"
