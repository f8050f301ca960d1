"""The inputs `plan search` and `plan baseline` share: workflow, cluster, memory headroom
and an optional calibrated profile (options and their resolution)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from costmodel.calibration import Calibration, load_calibration
from planner.cli.arguments import non_negative_gib
from planner.cli.estimate import add_profile_option
from planner.domain.cluster import ClusterSpec, resolve_cluster, with_memory_headroom
from planner.domain.workflow import Workflow
from planner.domain.workflow_file import resolve_workflow

DEFAULT_CLUSTER = "h100x8"
DEFAULT_WORKFLOW = "ppo"


@dataclass(frozen=True)
class PlanningInputs:
    workflow: Workflow
    cluster: ClusterSpec
    calibration: Calibration | None


def add_planning_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", default=DEFAULT_CLUSTER, metavar="NAME|FILE",
                        help=f"cluster preset or YAML file (default {DEFAULT_CLUSTER})")
    parser.add_argument("--workflow", default=DEFAULT_WORKFLOW, metavar="NAME|FILE",
                        help=f"built-in workflow or YAML file (default {DEFAULT_WORKFLOW})")
    add_profile_option(parser)
    parser.add_argument("--memory-headroom", type=non_negative_gib, metavar="GIB",
                        help="keep this much memory free on every device (allocator "
                             "fragmentation, other processes); default: the cluster file's "
                             "memory_headroom_gib, else 0")


def resolve_planning_inputs(args: argparse.Namespace) -> PlanningInputs:
    """The options of `add_planning_options`, read and validated (InputError on bad input)."""
    workflow = resolve_workflow(args.workflow)
    cluster = resolve_cluster(args.cluster)
    if args.memory_headroom is not None:
        cluster = with_memory_headroom(cluster, args.memory_headroom, "--memory-headroom")
    calibration = load_calibration(Path(args.profile)) if args.profile else None
    return PlanningInputs(workflow, cluster, calibration)
