"""Physics: costs move in the directions the hardware says they must."""

import pytest

from costmodel.call_cost import call_time
from costmodel.comm import allreduce_time_s, group_link
from costmodel.plan_cost import PlanCosts
from costmodel.realloc_cost import realloc_cost
from planner.domain.augment import augmented_graph
from planner.domain.cluster import cluster_preset
from planner.domain.layout import Execution
from planner.domain.workflow_file import builtin_workflow

WORKFLOW = builtin_workflow("ppo")
H100X8 = cluster_preset("h100x8")
H100X16 = cluster_preset("h100x16")


def ex(devices, dp, tp, pp=1, m=1):
    return Execution(devices=tuple(devices), dp=dp, tp=tp, pp=pp, micro_batches=m)


@pytest.mark.parametrize("call_name", ["actor_gen", "ref_inf", "actor_train"])
@pytest.mark.parametrize("tp,pp,m", [(1, 1, 1), (1, 1, 4), (2, 1, 2), (1, 2, 2), (2, 2, 4)])
def test_more_data_parallel_devices_never_slow_a_call(call_name, tp, pp, m):
    call = WORKFLOW.call_by_name[call_name]
    role = WORKFLOW.models[call.model]
    times = []
    for dp in (1, 2, 4, 8):
        size = dp * tp * pp
        if size > 16:
            break
        cluster = H100X8 if size <= 8 else H100X16
        times.append(call_time(call, role, ex(range(size), dp, tp, pp, m), WORKFLOW.batch,
                               cluster).time_s)
    assert all(b <= a for a, b in zip(times, times[1:])), times


@pytest.mark.parametrize("call_name", ["ref_inf", "actor_train"])
def test_more_tensor_parallel_devices_never_slow_a_big_batch_call(call_name):
    call = WORKFLOW.call_by_name[call_name]
    role = WORKFLOW.models[call.model]
    times = [call_time(call, role, ex(range(tp), 1, tp), WORKFLOW.batch, H100X8).time_s
             for tp in (1, 2, 4, 8)]
    assert all(b <= a for a, b in zip(times, times[1:])), times


def test_tensor_parallel_across_nodes_costs_more_than_inside_one():
    """Four ranks per node drive four 50 GB/s NICs (200 GB/s) against NVLink's 370.8 GB/s
    and NVLS inside one node: NCCL's model puts it near 2x."""
    inside = group_link(range(8), H100X16)
    across = group_link([0, 1, 2, 3, 8, 9, 10, 11], H100X16)
    assert allreduce_time_s(64e6, 8, across) > 1.5 * allreduce_time_s(64e6, 8, inside)


def test_execution_change_adds_a_reallocation_with_positive_time():
    same = ex(range(8), 8, 1)
    other = ex(range(8), 1, 8)
    executions = {name: same for name in WORKFLOW.call_order}
    graph = augmented_graph(WORKFLOW, executions, 3)
    assert not [n for n, a in graph.nodes(data=True) if a["kind"] == "realloc"]
    executions["actor_train"] = other
    graph = augmented_graph(WORKFLOW, executions, 3)
    moves = [a for n, a in graph.nodes(data=True) if a["kind"] == "realloc"]
    assert moves
    costs = PlanCosts(WORKFLOW, H100X8)
    for move in moves:
        assert costs.realloc(move["model"], executions[move["src"]],
                             executions[move["dst"]]).time_s > 0
    assert costs.realloc("actor", same, same).time_s == 0.0


def test_realloc_to_another_node_costs_more_than_inside_the_node():
    spec = WORKFLOW.models["actor"].spec
    src = ex(range(0, 4), 1, 4)
    same_node = realloc_cost(spec, "lm", src, ex(range(4, 8), 1, 4), H100X16)
    other_node = realloc_cost(spec, "lm", src, ex(range(8, 12), 1, 4), H100X16)
    assert other_node.time_s > 2 * same_node.time_s > 0
    assert other_node.inter_node_bytes > 0 and same_node.inter_node_bytes == 0
