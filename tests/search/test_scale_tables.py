"""Search tables at scale (issue 13): candidates priced once per mesh shape and shared by the
alike meshes must be exactly the candidates and prices of pricing every execution alone;
pruning and the move tables computed as array code must match their definitions; the scale
presets exist."""

from __future__ import annotations

import numpy as np
import pytest

from costmodel.call_cost import call_memory, call_time
from planner.domain.cluster import NodeGroupFile, build_cluster, cluster_preset
from planner.domain.mesh import allowed_meshes
from planner.domain.modelspec import PRESETS
from planner.domain.workflow import BatchSpec
from planner.domain.workflow_file import WorkflowFile, build_workflow
from planner.search.builder import full_tables, pruned_tables, undominated
from planner.search.space import candidate_executions

BATCH = BatchSpec(n_seqs=64, prompt_len=128, gen_len=128, ppo_minibatches=2)


def mixed_cluster():
    """Two H100 nodes and two A100 nodes of 4 devices (alike meshes inside each group)."""
    return build_cluster("mixed", [NodeGroupFile(nodes=2, devices_per_node=4,
                                                 device="h100-sxm-80gb"),
                                   NodeGroupFile(nodes=2, devices_per_node=4,
                                                 device="a100-sxm-80gb")])


def ppo(actor: str = "llama-small", other: str = "llama-tiny"):
    models = {"actor": actor, "ref": actor, "critic": other, "reward": other}
    return build_workflow(WorkflowFile(algorithm="ppo", models=models, batch=BATCH), "ppo")


def test_shared_prices_are_the_prices_of_each_execution_alone():
    workflow, cluster = ppo(), mixed_cluster()
    tables = full_tables(workflow, cluster)
    meshes = allowed_meshes(cluster)
    rng = np.random.default_rng(0)
    for table in tables.calls:
        call = workflow.call_by_name[table.name]
        role = workflow.models[call.model]
        expected = candidate_executions(call, role.spec, cluster, workflow.batch, meshes)
        assert list(table.executions) == expected, table.name
        for i in rng.choice(len(table), 40, replace=False):
            ex = expected[i]
            memory = call_memory(call, role, ex, workflow.batch, cluster)
            assert table.time_s[i] == call_time(call, role, ex, workflow.batch,
                                                cluster).time_s
            assert table.activation_bytes[i] == float(memory.working_bytes.max())
            assert table.alone_peak_bytes[i] == float(memory.alone_bytes().max())
            assert table.capacity_bytes[i] == min(cluster.usable_memory_bytes(d)
                                                  for d in ex.devices)
            assert table.executions.index(ex) == i


def test_unpriced_candidates_are_exactly_those_that_cannot_fit_alone():
    workflow, cluster = ppo("llama-70b", "llama-7b"), cluster_preset("h100x16")
    lazy = full_tables(workflow, cluster, price_unfit=False)
    unfit_somewhere = False
    for table in lazy.calls:
        fits = table.fits_alone()
        unfit_somewhere |= not fits.all()
        assert np.isfinite(table.time_s[fits]).all()
        assert np.isinf(table.time_s[~fits]).all()
    assert unfit_somewhere      # a 70B actor does not fit on one device
    full = full_tables(workflow, cluster)
    for a, b in zip(pruned_tables(lazy, {})[0].calls, pruned_tables(full, {})[0].calls):
        assert list(a.executions) == list(b.executions)
        assert np.array_equal(a.time_s, b.time_s)


def brute_force_undominated(table, keep):
    mask = np.ones(len(table), dtype=bool)
    t, a = table.time_s, table.activation_bytes
    for i in range(len(table)):
        if i in keep:
            continue
        for j in range(len(table)):
            if j != i and table.placement[j] == table.placement[i] and t[j] <= t[i] \
                    and a[j] <= a[i] and (t[j] < t[i] or a[j] < a[i] or j < i):
                mask[i] = False
                break
    return mask


def test_undominated_matches_its_definition():
    tables = full_tables(ppo(), mixed_cluster())
    table = tables.calls[-1]
    keep = {3, 17, len(table) - 1}
    assert np.array_equal(undominated(table, keep), brute_force_undominated(table, keep))
    assert not undominated(table, set()).all()      # micro-batch variants get dominated


def test_placements_are_shared_across_calls_of_a_model():
    tables = full_tables(ppo(), mixed_cluster())
    gen, train = tables.calls[0], tables.calls[4]
    assert gen.model == train.model == "actor"
    for i in range(0, len(gen), 37):
        same = np.flatnonzero(train.placement == gen.placement[i])
        assert all(train.executions[int(j)].placement == gen.executions[i].placement
                   for j in same)
        if gen.executions[i].placement in {train.executions[int(j)].placement
                                           for j in range(len(train))}:
            assert len(same)


def test_llama_31_405b_has_its_published_parameter_count():
    spec = PRESETS["llama-3.1-405b"]
    assert (spec.num_layers, spec.hidden_size, spec.num_heads, spec.num_kv_heads,
            spec.intermediate_size, spec.vocab_size) == (126, 16384, 128, 8, 53248, 128256)
    assert spec.num_params() == 405_853_388_800


@pytest.mark.parametrize("name, devices", [("h100x1024", 1024), ("h100x4096", 4096),
                                           ("h100x64+a100x64", 128)])
def test_scale_presets(name, devices):
    cluster = cluster_preset(name)
    assert cluster.num_devices == devices
    if "+" in name:
        assert {hw.name for hw in cluster.node_hardware} == {"h100-sxm-80gb", "a100-sxm-80gb"}


def per_device_shape(devices, cluster):
    """builder.mesh_shape's docstring, device by device: per spanned node (in node order) its
    hardware, device count, rails used and network."""
    nodes = sorted({cluster.device_node[d] for d in devices})
    shape = []
    for n in nodes:
        on_node = [d for d in devices if cluster.device_node[d] == n]
        group = cluster.node_group_of_node[n]
        shape.append((cluster.node_hardware[n].name, len(on_node),
                      len({cluster.device_nics[d][1] for d in on_node}), group.nics_per_node,
                      group.devices_per_node, group.nic_bandwidth_gb_per_s))
    return tuple(shape)


@pytest.mark.parametrize("name", ["mixed", "h100x64+a100x64"])
def test_mesh_shapes_are_those_device_by_device(name):
    """The whole-node fast path of mesh_shape gives each allowed mesh the shape its devices
    give one by one; meshes that are not runs of ids (reversed, gapped) do too."""
    from planner.search.builder import mesh_shape
    cluster = mixed_cluster() if name == "mixed" else cluster_preset(name)
    meshes = allowed_meshes(cluster)
    rng = np.random.default_rng(0)
    odd = [tuple(reversed(meshes[-1])), tuple(meshes[-1][::2]),
           tuple(int(d) for d in rng.permutation(cluster.num_devices)[:5])]
    for mesh in meshes + odd:
        assert mesh_shape(mesh, cluster) == per_device_shape(mesh, cluster), mesh
