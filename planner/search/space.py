"""The search space: candidate executions of each call (design.md section 4).

For every allowed mesh of the cluster (power-of-two aligned slices inside a node, including
1- and 2-device slices, and ranges of whole nodes) every layout dp x tp x pp of the mesh size
with tp a power of two that the model can be split over (planner.domain.layout
parallel_degrees_problem: tp divides the attention heads, and divides the kv heads or is a
multiple of them, each rank then holding a replica of one kv head), tp inside a node, pp at
most the layer count, and micro-batch counts from
{1, 2, 4, 8, 16, pp, 2pp, 4pp} that the batch allows; a train call also tries each
activation recomputation mode (Execution.recompute: none, selective, full), which trades
the memory of kept activations against a forward rerun in backward. Candidates that do not
fit in device memory even alone are dropped later, once the cost model has priced them.
"""

from __future__ import annotations

from planner.domain.cluster import ClusterSpec
from planner.domain.layout import RECOMPUTE_MODES, Execution, layout_problem
from planner.domain.mesh import allowed_meshes
from planner.domain.modelspec import ModelSpec
from planner.domain.workflow import BatchSpec, ModelFunctionCall


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


MICRO_BATCH_COUNTS = (1, 2, 4, 8, 16)


def micro_batch_options(pp: int) -> list[int]:
    """Micro-batch counts tried for a pipeline of `pp` stages: a few fixed counts (fewer,
    larger micro-batches run faster; more, smaller ones need less activation memory) and
    pp, 2pp, 4pp (which fill the pipeline)."""
    return sorted(set(MICRO_BATCH_COUNTS) | {pp, 2 * pp, 4 * pp})


def layouts_for_mesh(mesh_size: int) -> list[tuple[int, int, int]]:
    """(dp, tp, pp) with dp * tp * pp = mesh_size and tp a power of two."""
    result = []
    for tp in divisors(mesh_size):
        if tp & (tp - 1):
            continue
        for pp in divisors(mesh_size // tp):
            result.append((mesh_size // (tp * pp), tp, pp))
    return result


def recompute_options(call: ModelFunctionCall) -> tuple[str, ...]:
    """Recomputation modes tried for `call`: every mode for a train call; the default for
    the others, which keep no activations for a backward."""
    if call.kind == "train":
        return RECOMPUTE_MODES
    return (Execution.model_fields["recompute"].default,)


def candidate_executions(call: ModelFunctionCall, spec: ModelSpec, cluster: ClusterSpec,
                         batch: BatchSpec,
                         meshes: list[tuple[int, ...]] | None = None) -> list[Execution]:
    """Every valid execution of `call` (memory not yet considered)."""
    result = []
    for mesh in meshes if meshes is not None else allowed_meshes(cluster):
        for dp, tp, pp in layouts_for_mesh(len(mesh)):
            for micro_batches in micro_batch_options(pp):
                for recompute in recompute_options(call):
                    execution = Execution(devices=mesh, dp=dp, tp=tp, pp=pp,
                                          micro_batches=micro_batches, recompute=recompute)
                    if layout_problem(execution, spec, cluster, call, batch) is None:
                        result.append(execution)
    return result
