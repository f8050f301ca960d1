"""Measured plans for the calibration: a plan with its `plan run` trace, read and checked,
the features each call's time is linear in, and the (calibrated) estimate of a plan.

Features of one call (costmodel/calibration.py gives the model they feed):
    compute_s     compute seconds of the call, oversubscription included (compute_scale 1)
    latency_steps collective steps and sends on the call's critical path (seconds per 1 s
                  of step latency)
    bandwidth_s   the bytes-over-bandwidth part of its communication, uncalibrated
    bandwidth_shares_cores  whether that part is slowed as the compute is (CPU devices:
                  calibration.communicates_on_cores)
    oversubscription, co_running (the calibration's terms), decode_steps
They are read off call_cost by probing its knobs: with compute scale 0 and latency 0 only
the bandwidth part is left; the rest are differences. (Stage maxima make the model only
piecewise linear in the knobs; the probes measure it at the knob values of interest.)
`profiles_dir` is where the compute times come from (the profile tables under
<dir>/<device>/, default profiles/): a calibration is fitted to, and only valid with, the
tables it was fitted with.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from costmodel.calibration import Calibration, communicates_on_cores, decode_steps
from costmodel.call_cost import call_time_with_knobs
from costmodel.call_geometry import CostKnobs
from costmodel.plan_cost import PlanCosts
from costmodel.simulator import Estimate, simulate
from planner.domain.errors import InputError
from planner.domain.input_files import JSONSyntaxError, load_json_input
from planner.domain.paths import PROFILES_DIR
from planner.domain.plan import Plan, load_plan

# A measured call or iteration of a week is a broken trace (or a unit slip), not a time to
# fit factors to.
MAX_MEASURED_SECONDS = 604_800.0


@dataclass(frozen=True)
class MeasuredPlan:
    """One plan and what `plan run` measured for it."""

    name: str
    plan: Plan
    iteration_s: float
    call_times_s: dict[str, float]
    move_times_s: dict[str, float]  # reallocation and transfer names as in the estimate


@dataclass(frozen=True)
class CallFeatures:
    plan: str
    call: str
    kind: str
    measured_s: float
    compute_s: float
    latency_steps: float
    bandwidth_s: float
    oversubscription: float
    co_running: int
    decode_steps: float
    bandwidth_shares_cores: bool = False

    def bandwidth_time_s(self, process_slowdown: float) -> float:
        """The calibrated bytes-over-bandwidth seconds under `process_slowdown`
        (costmodel/calibration.py: x the call's slowdown where it shares the cores)."""
        if not self.bandwidth_shares_cores:
            return self.bandwidth_s
        return self.bandwidth_s * self.oversubscription * (1.0 + process_slowdown
                                                           * self.co_running)


def _positive_seconds(value, where: str) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not 0 < value <= MAX_MEASURED_SECONDS):
        raise InputError(f"{where}: got {value!r}; expected positive seconds, at most "
                         f"{MAX_MEASURED_SECONDS:,.0f}")
    return float(value)


def _non_negative_seconds(value: float, where: str) -> float:
    """A measured move time: a fast move may read 0 s, so only negative or absurd ones are
    refused."""
    return 0.0 if value == 0 else _positive_seconds(value, where)


def load_trace(path: Path) -> dict:
    """The trace JSON as a mapping; InputError for a missing, non-JSON or non-finite file
    (input_files.load_json_input)."""
    try:
        data = load_json_input(Path(path))
    except JSONSyntaxError as err:
        raise InputError(f"{path}: not JSON ({err.where}); expected a trace written by plan "
                         "run --trace") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: top level is {type(data).__name__}; expected a trace "
                         "mapping written by plan run --trace")
    return data


def measured_plan(plan: Plan, trace: dict, source: str, name: str = "") -> MeasuredPlan:
    """Check the trace against the plan (same calls, positive times); InputError if not."""
    iteration_s = _positive_seconds(trace.get("iteration_s"), f"{source}: iteration_s")
    calls = trace.get("calls")
    if not isinstance(calls, list):
        raise InputError(f"{source}: calls: missing or not a list; expected the calls of "
                         "plan run --trace")
    times = {}
    for i, entry in enumerate(calls):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InputError(f"{source}: calls[{i}]: expected a mapping with a name (text) "
                             "and time_s")
        times[entry["name"]] = _positive_seconds(entry.get("time_s"),
                                                 f"{source}: calls[{i}].time_s")
    expected = list(plan.workflow.call_order)
    if sorted(times) != sorted(expected):
        raise InputError(f"{source}: calls: has {sorted(times)}, the plan has {sorted(expected)} "
                         "(a trace of another plan?)")
    for call in calls:
        ex = plan.executions[call["name"]]
        layout = (call.get("dp"), call.get("tp"), call.get("pp"), call.get("micro_batches"))
        if layout != (ex.dp, ex.tp, ex.pp, ex.micro_batches):
            raise InputError(f"{source}: calls: {call['name']} ran d{layout[0]}t{layout[1]}"
                             f"p{layout[2]}m{layout[3]}, the plan says {ex.layout_text()} "
                             "(a trace of another plan?)")
    return MeasuredPlan(name or source, plan, iteration_s, times, _move_times(trace, source))


def _move_times(trace: dict, source: str) -> dict[str, float]:
    """Measured seconds of each reallocation and transfer by name (entries without a time
    are skipped: the fit uses the moves both trace and estimate have)."""
    moves = {}
    for key in ("reallocations", "transfers"):
        entries = trace.get(key) or []
        if not isinstance(entries, list):
            raise InputError(f"{source}: {key}: expected a list of {{name, time_s}} written by "
                             "plan run --trace")
        for i, entry in enumerate(entries):
            if isinstance(entry, dict) and isinstance(entry.get("time_s"), (int, float)):
                moves[str(entry.get("name"))] = _non_negative_seconds(
                    entry["time_s"], f"{source}: {key}[{i}].time_s")
    return moves


def median_plan(cases: list[MeasuredPlan], name: str) -> MeasuredPlan:
    """Repeated runs of one plan as one: the median of each time over the runs."""
    if not cases:
        raise InputError(f"{name}: no traces")

    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    moves = {k: med([c.move_times_s[k] for c in cases if k in c.move_times_s])
             for k in cases[0].move_times_s}
    return MeasuredPlan(name, cases[0].plan, med([c.iteration_s for c in cases]),
                        {k: med([c.call_times_s[k] for c in cases]) for k in cases[0].call_times_s},
                        moves)


def load_measured_plan(plan_path: Path, trace_path: Path) -> MeasuredPlan:
    plan = load_plan(Path(plan_path))
    return measured_plan(plan, load_trace(trace_path), str(trace_path),
                         Path(trace_path).name.removesuffix(".json").removesuffix(".trace"))


def plan_path_for(trace_path: Path) -> Path:
    """`plan run`'s naming: X.trace.json is the trace of X.yaml."""
    name = Path(trace_path).name
    if not name.endswith(".trace.json"):
        raise InputError(f"{trace_path}: cannot tell its plan; name traces X.trace.json next "
                         "to X.yaml (plan run's default) or give PLAN.yaml=TRACE.json")
    return Path(trace_path).with_name(name.removesuffix(".trace.json") + ".yaml")


def call_features(case: MeasuredPlan, cores_per_node: int,
                  profiles_dir: Path = PROFILES_DIR) -> list[CallFeatures]:
    """Features of every call of the plan (module docstring)."""
    plan, rows = case.plan, []
    probe = Calibration(format_version=1, kind="calibration", device="", recorded="",
                        cores_per_node=cores_per_node,
                        compute_scale={"generate": 1, "inference": 1, "train": 1},
                        call_overhead_s={"generate": 0, "inference": 0, "train": 0},
                        decode_step_s=0, move_scale=1, move_overhead_s=0)
    for name in plan.workflow.call_order:
        call = plan.workflow.call_by_name[name]
        role, ex = plan.workflow.models[call.model], plan.executions[name]
        slow = probe.oversubscription(ex, plan.cluster)

        def seconds(scale: float, latency: float) -> float:
            return call_time_with_knobs(call, role, ex, plan.workflow.batch, plan.cluster,
                                        profiles_dir, knobs=CostKnobs(scale, latency)).time_s

        bandwidth = seconds(0.0, 0.0)
        rows.append(CallFeatures(
            plan=case.name, call=name, kind=call.kind, measured_s=case.call_times_s[name],
            compute_s=seconds(slow, 0.0) - bandwidth, latency_steps=seconds(0.0, 1.0) - bandwidth,
            bandwidth_s=bandwidth, oversubscription=slow,
            co_running=probe.co_running(ex, plan.cluster),
            decode_steps=decode_steps(call, ex, plan.workflow.batch),
            bandwidth_shares_cores=communicates_on_cores(ex, plan.cluster)))
    return rows


def predict_plan(case: MeasuredPlan, calibration: Calibration | None,
                 profiles_dir: Path = PROFILES_DIR) -> Estimate:
    """The simulator's estimate of the plan, calibrated or not."""
    plan = case.plan
    costs = PlanCosts(plan.workflow, plan.cluster, profiles_dir, calibration=calibration)
    return simulate(plan.workflow, plan.cluster, plan.executions, costs=costs)


def move_rows(case: MeasuredPlan, profiles_dir: Path = PROFILES_DIR
              ) -> list[tuple[str, float, float]]:
    """(name, uncalibrated price, measured) of every reallocation both the trace and
    estimate have. Data transfers are left out: their senders post right after the source
    call (runtime/executor/data.py post_transfer_sends), so a trace's transfer time is the
    receiver's wait for data mostly sent already, not the transfer's duration (on the 12
    plans of benchmarks/estimator_accuracy.py 0-4 ms against 0.5-1.5 ms priced: fitted
    with them, move_scale fell to 0.004 while the reallocations measured 1.3-3.3x their
    price)."""
    est = predict_plan(case, None, profiles_dir)
    priced = est.realloc_times_s
    # A move measured at 0 s says nothing to a fit of relative errors (and would divide by
    # zero there).
    return [(f"{case.name}:{n}", priced[n], case.move_times_s[n])
            for n in sorted(priced)
            if n in case.move_times_s and priced[n] > 0 and case.move_times_s[n] > 0]
