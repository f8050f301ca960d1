"""Property tests of the shared pure functions and the augmented graph (hypothesis)."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import networkx as nx
import pytest
import yaml
from foundation_support import make_plan
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from planner.cli.main import main
from planner.domain.augment import augmented_graph, reallocations
from planner.domain.cluster import NodeGroupFile, build_cluster, cluster_preset
from planner.domain.layout import Execution
from planner.domain.mesh import allowed_meshes, mesh_problem, mesh_text, parse_mesh_text
from planner.domain.plan import save_plan
from planner.domain.workflow_file import builtin_workflow
from planner.sharding.pipeline_partition import (
    layer_ranges,
    stage_layer_counts,
    stage_of_layer,
)
from planner.sharding.rank_groups import (
    coordinate_of,
    device_at,
    mesh_position,
    rank_groups,
)

FAST = settings(max_examples=150, deadline=None)

degrees = st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 8))


# --- rank groups ----------------------------------------------------------------------------

def _assert_partition(groups, devices, size):
    assert all(len(g) == size for g in groups)
    assert len(groups) == len(devices) // size
    assert Counter(d for g in groups for d in g) == Counter(devices)


@FAST
@given(degrees, st.integers(0, 64))
def test_rank_groups_partition_the_mesh(dims, first_device):
    dp, tp, pp = dims
    devices = tuple(range(first_device, first_device + dp * tp * pp))
    groups = rank_groups(devices, dp, tp, pp)
    _assert_partition(groups.dp_groups, devices, dp)
    _assert_partition(groups.tp_groups, devices, tp)
    _assert_partition(groups.pp_groups, devices, pp)
    # TP groups are adjacent devices (innermost), in tp-rank order.
    for group in groups.tp_groups:
        assert group == tuple(range(group[0], group[0] + tp))
    # Members of a group differ only in that group's rank.
    for group_set, varying in ((groups.dp_groups, "dp_rank"), (groups.tp_groups, "tp_rank"),
                               (groups.pp_groups, "pp_rank")):
        for group in group_set:
            coords = [coordinate_of(devices.index(d), dp, tp, pp) for d in group]
            assert [getattr(c, varying) for c in coords] == list(range(len(group)))
            fixed = {tuple(v for k, v in vars(c).items() if k != varying) for c in coords}
            assert len(fixed) == 1


@FAST
@given(degrees, st.randoms())
def test_rank_groups_follow_the_mesh_order(dims, rng):
    """On any ordering of device ids, groups pick devices by mesh position."""
    dp, tp, pp = dims
    devices = list(range(100, 100 + dp * tp * pp))
    rng.shuffle(devices)
    groups = rank_groups(devices, dp, tp, pp)
    _assert_partition(groups.tp_groups, devices, tp)
    for group in groups.tp_groups:
        start = devices.index(group[0])
        assert list(group) == devices[start:start + tp]


def test_rank_groups_worked_example():
    groups = rank_groups(range(8), 2, 2, 2)
    assert groups.tp_groups == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert groups.dp_groups == ((0, 2), (1, 3), (4, 6), (5, 7))
    assert groups.pp_groups == ((0, 4), (1, 5), (2, 6), (3, 7))


@FAST
@given(degrees, st.data())
def test_coordinate_and_position_round_trip(dims, data):
    dp, tp, pp = dims
    size = dp * tp * pp
    position = data.draw(st.integers(0, size - 1))
    coord = coordinate_of(position, dp, tp, pp)
    assert 0 <= coord.dp_rank < dp and 0 <= coord.tp_rank < tp and 0 <= coord.pp_rank < pp
    assert mesh_position(coord.dp_rank, coord.tp_rank, coord.pp_rank, dp, tp) == position
    ranks = (data.draw(st.integers(0, dp - 1)), data.draw(st.integers(0, tp - 1)),
             data.draw(st.integers(0, pp - 1)))
    back = coordinate_of(mesh_position(*ranks, dp, tp), dp, tp, pp)
    assert (back.dp_rank, back.tp_rank, back.pp_rank) == ranks
    devices = list(range(7, 7 + size))
    assert device_at(devices, dp, tp, pp, *ranks) == 7 + mesh_position(*ranks, dp, tp)


# --- pipeline partition ---------------------------------------------------------------------

@FAST
@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))))
def test_layer_ranges_cover_every_layer_once(layers_and_stages):
    num_layers, num_stages = layers_and_stages
    ranges = layer_ranges(num_layers, num_stages)
    assert len(ranges) == num_stages
    assert ranges[0][0] == 0 and ranges[-1][1] == num_layers
    for (_, end), (start, _) in zip(ranges, ranges[1:]):
        assert end == start, "contiguous"
    sizes = [end - start for start, end in ranges]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert sizes == stage_layer_counts(num_layers, num_stages)
    owner = [stage_of_layer(layer, num_layers, num_stages) for layer in range(num_layers)]
    assert owner == sorted(owner) and set(owner) == set(range(num_stages))


def test_layer_ranges_example_and_limits():
    assert layer_ranges(10, 4) == [(0, 2), (2, 5), (5, 8), (8, 10)]
    with pytest.raises(ValueError):
        layer_ranges(4, 5)
    with pytest.raises(ValueError):
        layer_ranges(4, 0)


# --- augmented graph ------------------------------------------------------------------------

H100X8_EXECUTIONS = [
    Execution(devices=tuple(range(8)), dp=8, tp=1, pp=1),
    Execution(devices=tuple(range(8)), dp=2, tp=2, pp=2),
    Execution(devices=tuple(range(8)), dp=2, tp=2, pp=2, micro_batches=4),
    Execution(devices=(0, 1, 2, 3), dp=4, tp=1, pp=1),
    Execution(devices=(4, 5, 6, 7), dp=4, tp=1, pp=1),
    Execution(devices=(4, 5), dp=1, tp=2, pp=1),
]
WORKFLOWS = {name: builtin_workflow(name) for name in ("ppo", "grpo", "remax", "dpo", "rloo")}


@st.composite
def workflow_and_executions(draw):
    workflow = WORKFLOWS[draw(st.sampled_from(sorted(WORKFLOWS)))]
    executions = {name: draw(st.sampled_from(H100X8_EXECUTIONS))
                  for name in workflow.call_order}
    return workflow, executions


def _consecutive_call_pairs(workflow, num_iterations):
    """((iteration, call), (iteration, call)) of consecutive calls of each model, unrolled."""
    pairs = []
    for role in workflow.models:
        sequence = [(i, name) for i in range(num_iterations) for name in workflow.call_order
                    if workflow.call_by_name[name].model == role]
        pairs.extend(zip(sequence, sequence[1:]))
    return pairs


@FAST
@given(workflow_and_executions(), st.integers(1, 3))
def test_reallocation_exactly_where_consecutive_placements_differ(case, num_iterations):
    workflow, executions = case
    graph = augmented_graph(workflow, executions, num_iterations)
    assert nx.is_directed_acyclic_graph(graph)
    reallocs = {n for n, kind in graph.nodes(data="kind") if kind == "realloc"}
    calls = [n for n, kind in graph.nodes(data="kind") if kind == "call"]
    assert len(calls) == num_iterations * len(workflow.calls)
    expected = 0
    for (i, a), (j, b) in _consecutive_call_pairs(workflow, num_iterations):
        src, dst = f"{i}/{a}", f"{j}/{b}"
        between = [n for n in graph.successors(src) if n in reallocs
                   and dst in graph.successors(n)]
        # Micro-batches do not move parameters: only the placement (devices, dp, tp, pp).
        if executions[a].placement == executions[b].placement:
            assert between == [], (src, dst)
            # Parameters shared by both calls: the later waits for the earlier. (A frozen
            # model with a single call has nothing to wait for across iterations.)
            role = workflow.call_by_name[a].model
            if a != b or role in workflow.trained_models():
                assert nx.has_path(graph, src, dst), (src, dst)
        else:
            expected += 1
            assert len(between) == 1, (src, dst)
            # Only data may go straight from a to b; the parameters go through the move.
            direct = graph.get_edge_data(src, dst)
            assert direct is None or direct["kind"] == "data", (src, dst, direct)
            attrs = graph.nodes[between[0]]
            assert (attrs["src"], attrs["dst"]) == (a, b)
            assert attrs["model"] == workflow.call_by_name[a].model
            assert set(attrs["devices"]) == set(executions[a].devices) | set(
                executions[b].devices)
    assert len(reallocs) == expected
    for src, dst, attrs in graph.edges(data=True):
        if attrs["kind"] == "data":
            # Rows live with their data-parallel replica: a new dp/tp/pp split moves them
            # even on the same devices.
            moved = executions[graph.nodes[src]["call"]].placement != \
                executions[graph.nodes[dst]["call"]].placement
            assert attrs["transfer"] == moved


def _moves_by_rule(workflow, executions) -> set[tuple[str, str, str, bool]]:
    """(model, a, b, wraps) of every parameter move, from the rule alone: consecutive calls
    a, b of a model in execution order, plus the wrap from its last call to its first call
    of the next iteration when it is trained or has several calls, whose devices, dp, tp or
    pp differ (micro-batches do not move parameters)."""
    trained = {c.model for c in workflow.calls if c.kind == "train"}
    moves = set()
    for role in workflow.models:
        calls = workflow.calls_of_model(role)
        pairs = [(a, b, False) for a, b in zip(calls, calls[1:])]
        if len(calls) > 1 or role in trained:
            pairs.append((calls[-1], calls[0], True))
        for a, b, wraps in pairs:
            src, dst = executions[a], executions[b]
            if (src.devices, src.dp, src.tp, src.pp) != (dst.devices, dst.dp, dst.tp, dst.pp):
                moves.add((role, a, b, wraps))
    return moves


@FAST
@given(workflow_and_executions(), st.integers(1, 3))
def test_reallocation_nodes_and_list_follow_the_rule(case, num_iterations):
    workflow, executions = case
    moves = _moves_by_rule(workflow, executions)
    assert {(r.model, r.src_call, r.dst_call, r.wraps)
            for r in reallocations(workflow, executions)} == moves
    # One node per move and iteration it leaves; a wrapping move out of the last iteration
    # has no destination in the graph.
    expected = {f"{i}/realloc:{role}:{a}->{b}": (role, a, b, i, i + wraps)
                for role, a, b, wraps in moves for i in range(num_iterations - wraps)}
    graph = augmented_graph(workflow, executions, num_iterations)
    assert {n for n, kind in graph.nodes(data="kind") if kind == "realloc"} == set(expected)
    for node, (role, a, b, i, j) in expected.items():
        attrs = graph.nodes[node]
        assert (attrs["model"], attrs["src"], attrs["dst"]) == (role, a, b)
        assert list(graph.predecessors(node)) == [f"{i}/{a}"], node
        assert list(graph.successors(node)) == [f"{j}/{b}"], node
        assert set(attrs["devices"]) == set(executions[a].devices) | set(executions[b].devices)


# --- meshes ---------------------------------------------------------------------------------

def _mixed_cluster():
    return build_cluster("mixed", [
        NodeGroupFile(nodes=1, devices_per_node=8, device="h100-sxm-80gb"),
        NodeGroupFile(nodes=2, devices_per_node=4, device="a100-sxm-80gb")])


CLUSTERS = {name: cluster_preset(name) for name in ("cpu4", "h100x8", "h100x16", "h100x64")}
CLUSTERS["mixed"] = _mixed_cluster()


@pytest.mark.parametrize("name", sorted(CLUSTERS))
def test_allowed_meshes_pass_mesh_problem_and_round_trip_as_text(name):
    cluster = CLUSTERS[name]
    meshes = allowed_meshes(cluster)
    assert len(set(meshes)) == len(meshes)
    for mesh in meshes:
        assert mesh_problem(mesh, cluster) is None, mesh
        assert parse_mesh_text(mesh_text(mesh, cluster), cluster) == mesh
    assert tuple(range(cluster.num_devices)) in meshes
    assert all((d,) in meshes for d in range(cluster.num_devices))


def _device_lists(cluster):
    n = cluster.num_devices
    ranges = st.tuples(st.integers(-2, n + 2), st.integers(0, n + 2)).map(
        lambda s: tuple(range(s[0], s[0] + s[1])))
    lists = st.lists(st.integers(-2, n + 2), max_size=n + 2).map(tuple)
    return st.one_of(ranges, lists)


@FAST
@given(st.sampled_from(sorted(CLUSTERS)).flatmap(
    lambda name: st.tuples(st.just(name), _device_lists(CLUSTERS[name]))))
def test_mesh_problem_accepts_exactly_the_allowed_meshes(case):
    name, devices = case
    cluster = CLUSTERS[name]
    allowed = set(allowed_meshes(cluster))
    problem = mesh_problem(devices, cluster)
    if devices in allowed:
        assert problem is None
    else:
        assert isinstance(problem, str) and problem, devices


# --- the CLI never crashes on a damaged plan ------------------------------------------------

def _paths(data, prefix=()):
    """Every key path of nested mappings and lists."""
    found = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += _paths(value, prefix + (index,))
    return found


@pytest.fixture(scope="module")
def valid_inputs(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """A valid plan, workflow file and cluster file: (path, data) each."""
    folder = tmp_path_factory.mktemp("fuzz")
    plan_path = folder / "plan.yaml"
    gen = Execution(devices=(0, 1, 2, 3), dp=2, tp=2, pp=1)
    save_plan(make_plan(executions={"actor_gen": gen}), plan_path)
    workflow = builtin_workflow("remax", model="llama-tiny")
    workflow_data = {"algorithm": "custom",
                     "models": {role: {"model": "llama-tiny", "head": m.head}
                                for role, m in workflow.models.items()},
                     "batch": workflow.batch.model_dump(), "inputs": ["prompts"],
                     "calls": [c.model_dump() for c in workflow.calls]}
    cluster_data = {"name": "h100x8", "inter_node_latency_us": 10.0, "node_groups": [
        {"nodes": 1, "devices_per_node": 8, "device": "h100-sxm-80gb"}]}
    return {"plan": (plan_path, yaml.safe_load(plan_path.read_text())),
            "workflow": (folder / "workflow.yaml", workflow_data),
            "cluster": (folder / "cluster.yaml", cluster_data)}


def _command(kind: str, damaged_path: Path, plan_path: Path) -> list[str]:
    if kind == "plan":
        return ["check", str(damaged_path)]
    if kind == "workflow":
        return ["graph", "--workflow", str(damaged_path), "--json"]
    return ["check", str(plan_path), "--cluster", str(damaged_path)]


junk = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.text(max_size=6),
                 st.lists(st.integers(-1, 20), max_size=5), st.just({"x": 1}), st.just([]))


@pytest.mark.parametrize("kind", ["plan", "workflow", "cluster"])
@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_cli_answers_any_damaged_file_without_a_traceback(kind, valid_inputs, tmp_path, capsys,
                                                           data):
    """Exit 2 with one line naming the file (bad input), exit 1 with the reason (valid but
    infeasible, e.g. a memory headroom that leaves too little), or exit 0 in silence."""
    path, original = valid_inputs[kind]
    damaged = copy.deepcopy(original)
    where = data.draw(st.sampled_from(_paths(damaged)))
    parent = damaged
    for key in where[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()):
        del parent[where[-1]]
    else:
        parent[where[-1]] = data.draw(junk)
    assume(damaged != original)
    damaged_path = Path(tmp_path) / f"damaged-{path.name}"
    damaged_path.write_text(yaml.safe_dump(damaged, sort_keys=False))
    capsys.readouterr()
    code = main(_command(kind, damaged_path, valid_inputs["plan"][0]))
    out, err = capsys.readouterr()
    if code == 2:
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert str(damaged_path) in err or str(valid_inputs["plan"][0]) in err, err
    elif code == 1:
        assert err == "" and out.count("\n") == 1 and ": infeasible: " in out, (out, err)
    else:
        assert (code, err) == (0, ""), (code, err)


def test_micro_batches_alone_need_no_reallocation():
    workflow = WORKFLOWS["ppo"]
    base = Execution(devices=tuple(range(8)), dp=2, tp=4, pp=1, micro_batches=1)
    executions = {name: base for name in workflow.call_order}
    executions["actor_gen"] = base.model_copy(update={"micro_batches": 4})
    graph = augmented_graph(workflow, executions, 2)
    assert not [n for n, kind in graph.nodes(data="kind") if kind == "realloc"]
    executions["actor_gen"] = base.model_copy(update={"dp": 4, "tp": 2})
    graph = augmented_graph(workflow, executions, 2)
    assert len([n for n, kind in graph.nodes(data="kind") if kind == "realloc"]) == 3
