"""`plan viz --kind perfetto`: the estimate (and a measured run) as Chrome trace-event JSON.

Every file is checked against the Trace Event Format (the JSON object form): each event has
ph, pid, tid and name; complete events ("X") have numeric ts >= 0 and dur >= 0 in
microseconds; metadata events ("M") name every process and thread used; each process has
one track per device. Beyond the format, the slices must say what the estimate and the trace
say: each call on exactly its mesh's devices for its estimated or measured time, and the
bytes of each reallocation and transfer. The measured run is a real one, checked in with the
plan it ran (tests/figures/data/README.md says how it was made).
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from pathlib import Path

import pytest

from costmodel.plan_cost import PlanCosts
from costmodel.simulator import DEFAULT_ITERATIONS, estimate_plan
from planner.domain.paths import PLANS_DIR
from planner.domain.plan import load_plan
from planner.figures.common import device_label
from planner.figures.perfetto import ESTIMATE_PID, MEASURED_PID

DEFAULT_PLAN = PLANS_DIR / "ppo-h100x8.yaml"
DATA = Path(__file__).parent / "data"
MEASURED_PLAN = DATA / "ppo-tiny-cpu4-realloc.yaml"
MEASURED_TRACE = DATA / "ppo-tiny-cpu4-realloc-measured.json"
METADATA_NAMES = {"process_name", "thread_name", "process_sort_index", "thread_sort_index"}
NS_US = 1e-3      # the file writes microseconds to the nanosecond


def check_trace_event_format(data: dict) -> dict[tuple[int, int], str]:
    """Assert the format rules of the module docstring; return {(pid, tid): track name}."""
    assert set(data) >= {"traceEvents"} and isinstance(data["traceEvents"], list)
    processes, threads, used = {}, {}, set()
    for event in data["traceEvents"]:
        assert {"ph", "pid", "tid", "name"} <= set(event), event
        assert isinstance(event["pid"], int) and isinstance(event["tid"], int), event
        if event["ph"] == "M":
            assert event["name"] in METADATA_NAMES, event
            if event["name"] == "process_name":
                processes[event["pid"]] = event["args"]["name"]
            elif event["name"] == "thread_name":
                threads[(event["pid"], event["tid"])] = event["args"]["name"]
            continue
        assert event["ph"] == "X", event
        for key in ("ts", "dur"):
            value = event[key]
            assert isinstance(value, (int, float)) and not isinstance(value, bool), event
            assert math.isfinite(value) and value >= 0, event
        assert isinstance(event["name"], str) and event["name"], event
        used.add((event["pid"], event["tid"]))
    assert {pid for pid, _ in used} <= set(processes), "a process without a name"
    assert used <= set(threads), f"threads without a name: {used - set(threads)}"
    return threads


def assert_tracks_never_overlap(data: dict) -> None:
    """Slices of one track follow each other: Perfetto cannot show partial overlaps."""
    by_track = defaultdict(list)
    for e in data["traceEvents"]:
        if e["ph"] == "X":
            by_track[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
    for track, spans in by_track.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end - NS_US, (track, end, start)


def device_tids(threads: dict, pid: int, plan) -> dict[int, int]:
    """{device: tid} of a process: exactly one track named for each device."""
    found = {}
    for d in range(plan.cluster.num_devices):
        name = f"device {device_label(plan.cluster, d)}"
        tids = [tid for (p, tid), n in threads.items() if p == pid and n == name]
        assert len(tids) == 1, (pid, name, tids)
        found[d] = tids[0]
    assert len(set(found.values())) == len(found)
    return found


def slices(data: dict, pid: int, category: str) -> list[dict]:
    return [e for e in data["traceEvents"]
            if e["ph"] == "X" and e["pid"] == pid and e["cat"] == category]


def write(cli, plan: Path, out: Path, *extra) -> dict:
    code, stdout, err = cli("viz", plan, "--kind", "perfetto", "--out", out, *extra)
    assert (code, err) == (0, ""), err
    assert f"wrote {out}" in stdout
    assert [p.name for p in out.parent.iterdir()] == [out.name], "temporary file left behind"
    return json.loads(out.read_text())


def test_default_plan_estimate_as_trace_events(cli, tmp_path):
    data = write(cli, DEFAULT_PLAN, tmp_path / "ppo.json")
    threads = check_trace_event_format(data)
    assert_tracks_never_overlap(data)
    plan = load_plan(DEFAULT_PLAN)
    est = estimate_plan(plan)
    tids = device_tids(threads, ESTIMATE_PID, plan)
    assert {pid for pid, _ in threads} == {ESTIMATE_PID}
    calls = slices(data, ESTIMATE_PID, "call")
    for name in plan.workflow.call_order:
        ex = plan.executions[name]
        mine = [e for e in calls if e["name"] == name]
        assert len(mine) == DEFAULT_ITERATIONS * len(ex.devices), name
        assert sorted({e["tid"] for e in mine}) == sorted(tids[d] for d in ex.devices)
        for e in mine:
            assert e["dur"] == pytest.approx(est.call_times_s[name] * 1e6, abs=NS_US)
            assert e["args"]["layout"] == ex.call_layout_text(
                plan.workflow.call_by_name[name].kind)
            assert e["args"]["devices"] == list(ex.devices)
    costs = PlanCosts(plan.workflow, plan.cluster)
    for e in slices(data, ESTIMATE_PID, "transfer"):
        src, dst = e["args"]["from"], e["args"]["to"]
        moved = costs.transfer(src, dst, plan.executions[src], plan.executions[dst])
        assert e["args"]["bytes"] == moved.intra_node_bytes + moved.inter_node_bytes > 0
        assert e["dur"] == pytest.approx(est.transfer_times_s[f"{src}->{dst}"] * 1e6,
                                         abs=NS_US)
    reallocs = slices(data, ESTIMATE_PID, "realloc")
    assert {e["name"] for e in reallocs} == {
        f"realloc {n.replace('realloc:', '').replace(':', ': ', 1)}" for n in est.realloc_times_s}
    assert any(e["args"]["bytes"] > 0 for e in reallocs)
    iterations = sorted(slices(data, ESTIMATE_PID, "iteration"), key=lambda e: e["ts"])
    assert len(iterations) == DEFAULT_ITERATIONS
    steady_us = sum(e["dur"] for e in iterations[1:]) / (DEFAULT_ITERATIONS - 1)
    assert steady_us == pytest.approx(est.iteration_s * 1e6, abs=NS_US * DEFAULT_ITERATIONS)


def test_measured_cpu_run_is_a_second_process(cli, tmp_path):
    data = write(cli, MEASURED_PLAN, tmp_path / "both.json", "--trace", MEASURED_TRACE)
    threads = check_trace_event_format(data)
    assert_tracks_never_overlap(data)
    plan = load_plan(MEASURED_PLAN)
    assert {pid for pid, _ in threads} == {ESTIMATE_PID, MEASURED_PID}
    estimate_tids = device_tids(threads, ESTIMATE_PID, plan)
    measured_tids = device_tids(threads, MEASURED_PID, plan)
    trace = json.loads(MEASURED_TRACE.read_text())
    measured = [e for e in data["traceEvents"] if e["ph"] == "X" and e["pid"] == MEASURED_PID
                and e["cat"] != "iteration"]
    # one slice per measured node and device, at its measured time
    assert len(measured) == sum(len(n["devices"]) for n in trace["nodes"])
    for node in trace["nodes"]:
        iteration = int(node["name"].split("/")[0])
        name = node["name"].split("/", 1)[1]
        label = name if ":" not in name else (
            f"transfer {name.split(':', 1)[1]}" if name.startswith("transfer:") else
            f"realloc {name.replace('realloc:', '').replace(':', ': ', 1)}")
        mine = [e for e in measured if e["name"] == label and
                e["ts"] == pytest.approx(node["start_s"] * 1e6, abs=NS_US)]
        assert len(mine) == len(node["devices"]), node
        for e in mine:
            assert e["dur"] == pytest.approx((node["end_s"] - node["start_s"]) * 1e6,
                                             abs=2 * NS_US)
            assert e["args"]["measured_devices"] == node["devices"]
            assert e["args"]["iteration"] >= iteration
            # on the device's own track, or one of its overlap tracks
            track = threads[(MEASURED_PID, e["tid"])]
            assert any(track.startswith(f"device {device_label(plan.cluster, d)}")
                       for d in node["devices"]), (track, node)
    moved = {m["name"]: m["bytes"] for m in trace["reallocations"]}
    for e in slices(data, MEASURED_PID, "realloc"):
        model, pair = e["name"].removeprefix("realloc ").split(": ")
        assert e["args"]["bytes"] == moved[f"realloc:{model}:{pair}"]
    assert any(e["args"]["bytes"] > 0 for e in slices(data, MEASURED_PID, "realloc"))
    for name in plan.workflow.call_order:   # the estimate stays on the mesh's tracks
        ex = plan.executions[name]
        tids = {e["tid"] for e in slices(data, ESTIMATE_PID, "call") if e["name"] == name}
        assert tids == {estimate_tids[d] for d in ex.devices}
    assert set(measured_tids) == set(range(plan.cluster.num_devices))
    assert data["otherData"]["measured_iteration_s"] == pytest.approx(trace["iteration_s"])


@pytest.mark.parametrize("out, words", [("trace.png", ["--out", ".json", "perfetto"]),
                                        ("trace", ["--out", ".json"])])
def test_perfetto_wants_a_json_file(cli, tmp_path, out, words):
    code, stdout, err = cli("viz", DEFAULT_PLAN, "--kind", "perfetto", "--out", tmp_path / out)
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and all(w in err for w in words), err
    assert list(tmp_path.iterdir()) == []
