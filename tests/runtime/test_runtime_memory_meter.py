"""Memory as priced: the live tensor bytes the runtime holds in each call, on each device, are
the estimate's peak for that call and device.

Measured (the trace's calls[].peak_memory_by_device, runtime/executor/measure.py): on CPU the
peak of live tensor storage on the rank during the call (runtime.memory_meter.LiveBytes):
every model copy, gradient buffer and optimizer state the rank holds, the data kept between
calls, and what the call makes. Priced (costmodel.plan_memory, rule 6, at that device during
that call): the resident parts of every model on the device, the call's working parts
(activations, KV cache, logits, optimizer step) and any transient weights copy, less the
workspace (kernel scratch, not tensors on CPU).

Plans: llama-small PPO and GRPO over dp, tp (ZeRO-1 with dp 2), pp and a mixed placement, one
iteration each, every placement of a trained model its train call's (a copy placed otherwise
lives in the runtime from its reallocation in to its reallocation out, which the estimate
does not price; see the MEMTRACE report).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from costmodel.simulator import estimate_plan
from planner.domain.cluster import cluster_preset
from planner.domain.hardware import GIB
from planner.domain.layout import Execution
from planner.domain.plan import Plan, Provenance
from planner.domain.workflow_file import builtin_workflow
from runtime.executor.config import RunConfig
from runtime.executor.launcher import run_plan
from runtime.memory_meter import LiveBytes

TOLERANCE = 0.10
REALLOC_TOLERANCE = 0.01
NOT_TENSORS = {"workspace"}
BATCH = {"n_seqs": 8, "prompt_len": 16, "gen_len": 8, "ppo_minibatches": 2}
GRPO_BATCH = {**BATCH, "group_size": 4}

# name: (algorithm, cluster, batch, {call or "*": (devices, dp, tp, pp, micro_batches)})
PLANS = {
    "ppo-cpu1": ("ppo", "cpu1", BATCH, {"*": ((0,), 1, 1, 1, 1)}),
    "grpo-cpu2-tp2": ("grpo", "cpu2", GRPO_BATCH, {"*": ((0, 1), 1, 2, 1, 1)}),
    "ppo-cpu2-pp2": ("ppo", "cpu2", BATCH, {"*": ((0, 1), 1, 1, 2, 2)}),
    "ppo-cpu4-dp2-tp2": ("ppo", "cpu4", BATCH, {"*": ((0, 1, 2, 3), 2, 2, 1, 1)}),
    "grpo-cpu4-mixed": ("grpo", "cpu4", GRPO_BATCH, {
        "*": ((0, 1, 2, 3), 1, 2, 2, 2), "rew_inf": ((0, 1), 2, 1, 1, 1),
        "ref_inf": ((2, 3), 1, 2, 1, 1)}),
}


def build_plan(name: str) -> Plan:
    algorithm, cluster, batch, layouts = PLANS[name]
    workflow = builtin_workflow(algorithm, "llama-small", batch)
    executions = {}
    for call in workflow.call_order:
        devices, dp, tp, pp, m = layouts.get(call, layouts["*"])
        executions[call] = Execution(devices=devices, dp=dp, tp=tp, pp=pp, micro_batches=m)
    return Plan(workflow=workflow, cluster=cluster_preset(cluster), executions=executions,
                provenance=Provenance(created_by="tests/runtime/test_runtime_memory_meter"))


def priced_bytes(est, call: str, device: int) -> dict[str, float]:
    """{kind: bytes} of the estimate at `device` during `call`, workspace left out."""
    memory = est.memory
    node = next(n for n in memory.nodes if n.name == call)
    position = int(np.flatnonzero(node.devices == device)[0])
    parts: dict[str, float] = {}
    for kind, _, amount in memory.resident_items(device) + node.items_at(position):
        if kind not in NOT_TENSORS:
            parts[kind] = parts.get(kind, 0.0) + amount
    return parts


def test_live_bytes_counts_what_is_there_at_entry_and_what_the_region_makes():
    resident = torch.zeros(1000)                     # 4000 bytes, there before
    views = [resident[:10], resident[10:]]           # the same storage: counted once
    with LiveBytes(scan=True) as meter:
        made = torch.ones(2000)                      # 8000 bytes, alive to the end
        doubled = made * 2                           # 8000 more for a moment
        del doubled
        del views
    entry = meter.entry_bytes
    assert entry >= resident.nbytes
    assert meter.peak_bytes == entry + 2 * made.nbytes
    assert meter.live_bytes() == entry + made.nbytes


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PLANS))
def test_each_call_holds_its_priced_bytes_on_each_device(name):
    plan = build_plan(name)
    est = estimate_plan(plan, 2)
    trace, _ = run_plan(plan, RunConfig(iterations=1), emit=lambda line: None)
    assert trace["memory_source"] == "cpu_live_tensor_bytes"
    rows = []
    for call in trace["calls"]:
        assert [d["device"] for d in call["peak_memory_by_device"]] == call["devices"]
        for d in call["peak_memory_by_device"]:
            priced = sum(priced_bytes(est, call["name"], d["device"]).values())
            rows.append((call["name"], d["device"], d["gib"] * GIB, priced))
    off = [f"{c} device {d}: measured {m / 2**20:.1f} MiB, priced {p / 2**20:.1f} MiB"
           for c, d, m, p in rows if abs(m / p - 1) > TOLERANCE]
    assert not off, off


def realloc_plan() -> Plan:
    """llama-small PPO on 2 processes whose actor generates at dp 2 and critic infers at pp
    2, both trained at tp 2: reallocations with local pieces only (actor) and with messages
    that both devices send and receive (critic)."""
    workflow = builtin_workflow("ppo", "llama-small", BATCH)
    tp2 = Execution(devices=(0, 1), dp=1, tp=2, pp=1)
    executions = {c: tp2 for c in workflow.call_order}
    executions["actor_gen"] = Execution(devices=(0, 1), dp=2, tp=1, pp=1)
    executions["critic_inf"] = Execution(devices=(0, 1), dp=1, tp=1, pp=2)
    return Plan(workflow=workflow, cluster=cluster_preset("cpu2"), executions=executions,
                provenance=Provenance(created_by="tests/runtime/test_runtime_memory_meter"))


@pytest.mark.slow
def test_each_reallocation_holds_its_priced_bytes_on_each_device():
    """A reallocation step's live bytes on each device are its priced node: the resident
    models, the transient copies alive, and its message buffers (each step's packed sends
    plus its staged receive: costmodel/realloc_cost.py), within REALLOC_TOLERANCE;
    measured 1.000 on every device of both reallocations. Pricing the receive alone, as
    before, came out 4% low on the critic's: the tolerance is tighter than that (live tensor
    bytes on CPU are counted, not sampled: the same on every run)."""
    plan = realloc_plan()
    est = estimate_plan(plan, 2)
    trace, _ = run_plan(plan, RunConfig(iterations=1), emit=lambda line: None)
    moved = {r["name"]: r for r in trace["reallocations"]}
    assert moved["realloc:critic:critic_inf->critic_train"]["bytes"] > 0
    nodes = {n.name: n for n in est.memory.nodes}
    checked, off = 0, []
    for name, run in moved.items():
        node = nodes[name]
        buffers = dict(zip(node.devices.tolist(), next(
            a for kind, _, a in node.parts if kind == "message_buffers")))
        for d in run["peak_memory_by_device"]:
            device = d["device"]
            i = node.devices.tolist().index(device)
            priced = float(est.memory.persistent_bytes[device]) + sum(
                float(amounts[i]) for _, _, amounts in node.parts)
            checked += buffers[device] > 0
            if abs(d["gib"] * GIB / priced - 1) > REALLOC_TOLERANCE:
                off.append(f"{name} device {device}: measured {d['gib'] * 1024:.1f} MiB, "
                           f"priced {priced / 2**20:.1f} MiB")
    assert not off, off
    assert checked == 2, "no device held message buffers: the check is vacuous"
