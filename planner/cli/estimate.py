"""`plan estimate`: simulate a plan and print its time per iteration, per call and memory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from costmodel.calibration import load_calibration
from costmodel.plan_cost import PlanCosts
from costmodel.simulator import DEFAULT_ITERATIONS, Estimate, estimate_plan
from costmodel.simulator import memory_problem as _memory_problem
from costmodel.simulator import simulated_iterations
from planner.cli.arguments import integer_in_range
from planner.cli.processor_check import warn_if_measured_elsewhere
from planner.domain.augment import weight_pushes
from planner.domain.errors import InputError
from planner.domain.hardware import GIB
from planner.domain.mesh import mesh_text
from planner.domain.plan import Plan, load_plan
from planner.figures.common import format_seconds

SHORT_TRANSFER_S = 1e-3     # the text output lists transfers this long or longer
# The estimate is the steady state, reached within a few iterations (the default is
# DEFAULT_ITERATIONS); more only cost simulation time, and a thousand is far beyond need.
MAX_ITERATIONS = 1_000


def memory_problem(plan: Plan) -> str | None:
    """Why the plan does not fit in device memory, or None (used by `plan check`)."""
    return _memory_problem(plan)


def estimate_as_mapping(plan: Plan, est: Estimate) -> dict:
    """The estimate as JSON-ready data (keys documented in `plan estimate --help`)."""
    calls = []
    for name in plan.workflow.call_order:
        ex = plan.executions[name]
        calls.append({"name": name, "model": plan.workflow.call_by_name[name].model,
                      "mesh": mesh_text(ex.devices, plan.cluster), "devices": list(ex.devices),
                      "dp": ex.dp, "tp": ex.tp, "pp": ex.pp, "micro_batches": ex.micro_batches,
                      "layout": ex.call_layout_text(plan.workflow.call_by_name[name].kind),
                      "time_s": est.call_times_s[name],
                      "peak_memory_gib": est.call_peak_memory_bytes[name] / GIB,
                      "peak_memory_parts": _parts_gib(est.memory.call_parts[name])})
    return {"iteration_s": est.iteration_s, "feasible": est.feasible, "reason": est.reason,
            "calls": calls,
            "reallocations": [{"name": n, "time_s": t} for n, t in est.realloc_times_s.items()],
            "transfers": [{"name": n, "time_s": t} for n, t in est.transfer_times_s.items()],
            "peak_memory_gib": max(est.peak_memory_bytes.values()) / GIB,
            "memory_by_device": memory_by_device(plan, est),
            "critical_path": est.critical_path, "compute_source": est.compute_source,
            **staleness_mapping(plan, est)}


def split_of(plan: Plan) -> list[dict]:
    """Per weight push (staleness >= 1): the rollout model, the devices of its rollout copy
    (its generate calls' placement) and of its training copy (its train call's)."""
    split = []
    for push in weight_pushes(plan.workflow, plan.staleness):
        rollout = plan.executions[push.gen_call].devices
        training = plan.executions[push.train_call].devices
        split.append({"model": push.model, "push": push.name,
                      "generation_mesh": mesh_text(rollout, plan.cluster),
                      "generation_devices": list(rollout),
                      "training_mesh": mesh_text(training, plan.cluster),
                      "training_devices": list(training),
                      "shared_devices": len(set(rollout) & set(training))})
    return split


def staleness_mapping(plan: Plan, est: Estimate) -> dict:
    """JSON keys of an asynchronous plan (staleness >= 1); none for a synchronous one."""
    if est.staleness == 0:
        return {}
    return {"staleness": est.staleness, "max_staleness": plan.workflow.max_staleness,
            "staleness_reached": est.staleness_reached,
            "weight_pushes": [{"name": n, "time_s": t} for n, t in est.push_times_s.items()],
            "split": split_of(plan)}


def staleness_lines(plan: Plan, est: Estimate) -> list[str]:
    """What `plan show` and `plan estimate` say of an asynchronous plan (none when s = 0):
    the staleness, the steady state and the staleness reached, the split and the pushes."""
    if est.staleness == 0:
        return []
    lines = [f"asynchronous: staleness {est.staleness} (workflow max_staleness "
             f"{plan.workflow.max_staleness}): generation of iteration i uses weights of "
             f"iteration i - {est.staleness} or later; steady state {est.iteration_s:.2f} s "
             f"per iteration, staleness reached {est.staleness_reached}"]
    for entry in split_of(plan):
        shared = (f", {entry['shared_devices']} device(s) shared"
                  if entry["shared_devices"] else ", disjoint")
        seconds = est.push_times_s.get(entry["push"])
        push = format_seconds(seconds) if seconds is not None else "not simulated"
        lines.append(f"  split of {entry['model']}: generation (rollout copy) on "
                     f"{entry['generation_mesh']} ({len(entry['generation_devices'])} "
                     f"devices), training (training copy) on {entry['training_mesh']} "
                     f"({len(entry['training_devices'])} devices){shared}; weight push "
                     f"{push} per iteration")
    return lines


def memory_by_device(plan: Plan, est: Estimate) -> list[dict]:
    """Per device: its peak, the node during which it occurs, and its parts (the
    simulator's breakdown, costmodel.plan_memory.PlanMemory), in GiB."""
    return [{"device": d, "mesh": mesh_text((d,), plan.cluster),
             "peak_gib": est.peak_memory_bytes[d] / GIB, "during": est.memory.peak_node(d),
             "parts": _parts_gib(est.memory.device_parts[d])}
            for d in range(plan.cluster.num_devices)]


def _parts_gib(parts) -> list[dict]:
    return [{"kind": kind, "model": model, "gib": amount / GIB} for kind, model, amount in parts]


def estimate_as_text(plan: Plan, est: Estimate) -> str:
    data = estimate_as_mapping(plan, est)
    lines = [f"workflow {plan.workflow.algorithm} on {plan.cluster.describe()}",
             f"{'call':<18} {'model':<8} {'mesh':<10} {'layout':<18} {'time s':>9} "
             f"{'peak GiB':>9}"]
    for c in data["calls"]:
        lines.append(f"{c['name']:<18} {c['model']:<8} {c['mesh']:<10} {c['layout']:<18} "
                     f"{c['time_s']:>9.2f} {c['peak_memory_gib']:>9.1f}")
    for r in data["reallocations"]:
        lines.append(f"  {r['name']}: {r['time_s']:.3f} s")
    short = [t for t in data["transfers"] if t["time_s"] < SHORT_TRANSFER_S]
    for t in data["transfers"]:
        if t["time_s"] >= SHORT_TRANSFER_S:
            lines.append(f"  transfer {t['name']}: {t['time_s']:.4f} s")
    if short:
        lines.append(f"  {len(short)} data transfer(s) under {SHORT_TRANSFER_S * 1e3:g} ms "
                     f"each (see --json)")
    for name, seconds in est.push_times_s.items():
        lines.append(f"  {name}: {seconds:.3f} s")
    lines.append(f"iteration: {est.iteration_s:.2f} s  (compute source: {est.compute_source})")
    lines.extend(staleness_lines(plan, est))
    lines.append("feasible" if est.feasible else f"infeasible: {est.reason}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    plan = load_plan(Path(args.plan))
    costs, calibration = None, None
    if getattr(args, "profile", None):
        calibration = load_calibration(Path(args.profile))
        costs = PlanCosts(plan.workflow, plan.cluster, calibration=calibration)
    warn_if_measured_elsewhere("plan estimate", plan.workflow, plan.cluster, calibration,
                               getattr(args, "profile", None))
    if args.iterations is not None and args.iterations < plan.staleness + 2:
        raise InputError(f"--iterations: got {args.iterations}; a plan of staleness "
                         f"{plan.staleness} needs at least {plan.staleness + 2} (default "
                         f"{simulated_iterations(plan.staleness)})")
    est = estimate_plan(plan, args.iterations, costs)
    if args.json:
        print(json.dumps(estimate_as_mapping(plan, est), indent=2))
    else:
        print(estimate_as_text(plan, est))
    return 0 if est.feasible else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "estimate", help="estimate a plan's time per iteration and memory",
        description="Simulate a plan over K iterations of its augmented graph and print the "
                    "steady-state seconds per iteration, each call's seconds and peak memory "
                    "per device, the reallocations and transfers, and whether it fits in "
                    "device memory. Compute times come from profiles/<device>/ tables when "
                    "present, else from a roofline of the hardware spec (the output says "
                    "which); a line on stderr says when a table or the --profile "
                    "calibration was measured on another processor than this machine's. "
                    "Exit 0 when feasible, 1 when it does not fit (reason printed), 2 on "
                    "bad input. JSON keys: iteration_s, feasible, reason, calls "
                    "(name, model, devices, dp, tp, pp, micro_batches, time_s, "
                    "peak_memory_gib, peak_memory_parts at the call's highest device), "
                    "reallocations, transfers, compute_source, memory_by_device (device, "
                    "mesh, peak_gib, during, parts: kind, model, gib); for a plan with "
                    "staleness s >= 1 (generation on weights up to s iterations old, a "
                    "rollout copy of the actor on the generation devices) also staleness, "
                    "max_staleness, staleness_reached, weight_pushes (name, time_s) and "
                    "split (model, generation and training mesh and devices, "
                    "shared_devices); the text says the same in an 'asynchronous' line.")
    parser.add_argument("plan", metavar="PLAN.yaml", help="plan file")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")
    parser.add_argument("--iterations", type=integer_in_range(2, MAX_ITERATIONS),
                        default=None, metavar="K",
                        help=f"iterations to simulate (default {DEFAULT_ITERATIONS}, plus 2 "
                             f"per unit of the plan's staleness; from 2 (staleness + 2) to "
                             f"{MAX_ITERATIONS:,})")
    add_profile_option(parser)
    parser.set_defaults(handler=run)


def add_profile_option(parser: argparse.ArgumentParser) -> None:
    """`--profile FILE`, shared by estimate, search and baseline."""
    parser.add_argument("--profile", metavar="FILE",
                        help="calibrated profile written by `plan calibrate`: its fitted "
                             "factors apply to the calls on its hardware (compute_source then "
                             "names calibration:<device>)")
