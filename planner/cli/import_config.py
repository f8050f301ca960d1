"""`plan import`: a user's verl, AReaL, ROLL or OpenRLHF config as a priced plan."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from costmodel.plan_cost import PlanCosts
from costmodel.simulator import simulate
from planner.cli.estimate import estimate_as_mapping, estimate_as_text
from planner.cli.plan_output import priced_plan
from planner.domain.cluster import resolve_cluster
from planner.domain.errors import InputError
from planner.domain.output_files import check_writable_path
from planner.domain.plan import Plan, Provenance, save_plan
from planner.frameworks.target import TARGET_NAMES, target_module

# as `plan search` writes (.gitignore lists *.plan.yaml); not imported from planner.cli.search,
# which loads the search and numba
DEFAULT_OUT_SUFFIX = ".plan.yaml"


def default_out_path(config: Path, target: str) -> Path:
    """`<config stem>-<target>.plan.yaml` in the current directory."""
    return Path(f"{config.stem}-{target}{DEFAULT_OUT_SUFFIX}")


def run(args: argparse.Namespace) -> int:
    config = Path(args.config)
    out = Path(args.out) if args.out else default_out_path(config, args.from_)
    check_writable_path(out, "--out")
    cluster = resolve_cluster(args.cluster)
    module = target_module(args.from_)
    imported = module.import_config(config, cluster)
    workflow, executions = imported.workflow, imported.executions
    created_by = f"plan import --from {args.from_} {config.name}"
    problems = Plan(workflow=workflow, cluster=cluster, executions=executions,
                    provenance=Provenance(created_by=created_by),
                    staleness=imported.staleness).problems()
    if problems:
        raise InputError(f"{config}: the {module.TARGET_VERSION} config implies a plan we "
                         f"cannot run on {cluster.describe()}: {problems[0]}")
    estimate = simulate(workflow, cluster, executions, costs=PlanCosts(workflow, cluster),
                        staleness=imported.staleness)
    plan = priced_plan(workflow, cluster, executions, estimate, created_by)
    save_plan(plan, out)
    if args.json:
        data = estimate_as_mapping(plan, estimate)
        data["source"] = {"config": str(config), "target": args.from_,
                          "version": module.TARGET_VERSION}
        data["notes"] = list(imported.notes)
        data["plan_path"] = str(out)
        print(json.dumps(data, indent=2))
    else:
        print(f"read {config} as a {module.TARGET_VERSION} config")
        for note in imported.notes:
            print(f"  note: {note}")
        print(estimate_as_text(plan, estimate))
        print(f"wrote {out}" + ("" if estimate.feasible else
                                " (it does not fit; compare it anyway with "
                                "`plan search --baseline`)"))
    return 0 if estimate.feasible else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import", help="price a verl, AReaL, ROLL or OpenRLHF config as a plan",
        description="Read a framework config you run today (verl, AReaL, ROLL: its YAML "
                    "file; OpenRLHF: its command line saved as a text file or shell "
                    "script), build the plan it implies on the cluster (which devices each "
                    "model and call gets, each layout, the batch and lengths), price it "
                    "with the cost model of `plan estimate`, print the estimate and every "
                    "assumption made while reading (notes), and write the plan. A key we "
                    "cannot read or a value we do not model is one line naming the file "
                    "and key, exit 2. A config that does not fit in device memory is still "
                    "written, and reported infeasible with the reason, exit 1. Compare it "
                    "with the best plan: plan search --baseline PLAN.yaml. JSON keys: those "
                    "of `plan estimate --json`, plus source (config, target, version), "
                    "notes and plan_path.")
    parser.add_argument("config", metavar="CONFIG",
                        help="the framework's config file (YAML, or OpenRLHF's command line)")
    parser.add_argument("--from", dest="from_", required=True, choices=TARGET_NAMES,
                        help="which framework the config is for")
    parser.add_argument("--cluster", required=True, metavar="NAME|FILE",
                        help="cluster preset or YAML file the config runs on")
    parser.add_argument("--out", metavar="PLAN.yaml",
                        help=f"plan file to write (default <config>-<framework>"
                             f"{DEFAULT_OUT_SUFFIX} in the current directory)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=run)
