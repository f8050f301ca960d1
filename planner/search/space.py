"""The search space: candidate executions of each call (design.md section 4).

For every allowed mesh of the cluster (power-of-two aligned slices inside a node, including
1- and 2-device slices, and ranges of whole nodes) every layout dp x tp x pp of the mesh size
with tp a power of two that the model can be split over (planner.domain.layout
parallel_degrees_problem: tp divides the attention heads, and divides the kv heads or is a
multiple of them, each rank then holding a replica of one kv head), tp inside a node, pp at
most the layer count, and micro-batch counts from
{1, 2, 4, 8, 16, pp, 2pp, 4pp} that the batch allows, plus, for large batches, those that
make micro-batches of 8, 4, 2 or 1 rows (micro_batch_options); a train call also tries each
activation recomputation mode (Execution.recompute: none, selective, full), which trades
the memory of kept activations against a forward rerun in backward. A mixture-of-experts
model also tries every expert-parallel degree ep that divides both dp and its expert count
(expert_degree_options; planner.domain.placement says where the experts then live): more ep
holds fewer experts per device and reads fewer weights per token, at the price of
all-to-alls over the ep group. With a staleness bound (workflow max_staleness k >= 1) a
generate call also tries continuous batching (Execution.decode_batching "continuous":
decode_batching_options), which refills a finished row's slot with the next prompt; with
k = 0 the space is today's, static decoding only. Candidates that do not fit in device
memory even alone are dropped later, once the cost model has priced them.
"""

from __future__ import annotations

from planner.domain.cluster import ClusterSpec
from planner.domain.layout import (
    DECODE_BATCHINGS,
    RECOMPUTE_MODES,
    Execution,
    layout_problem,
    sequences_per_micro_batch_step,
)
from planner.domain.mesh import allowed_meshes
from planner.domain.modelspec import ModelSpec
from planner.domain.workflow import BatchSpec, ModelFunctionCall


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


MICRO_BATCH_COUNTS = (1, 2, 4, 8, 16)
# Rows per micro-batch tried where the fixed counts leave micro-batches larger than these:
# large batches (GRPO's 512 prompts x 8 samples: 512 rows per replica at dp 8) need many
# small micro-batches for their activations, logits and KV caches to fit.
SMALL_MICRO_BATCH_ROWS = (8, 4, 2, 1)


def micro_batch_options(pp: int, rows_per_replica: int | None = None) -> list[int]:
    """Micro-batch counts tried for a pipeline of `pp` stages: a few fixed counts (fewer,
    larger micro-batches run faster; more, smaller ones need less activation memory),
    pp, 2pp, 4pp (which fill the pipeline) and, given the rows each dp replica processes
    per step, the counts that make micro-batches of SMALL_MICRO_BATCH_ROWS rows where the
    largest of the others leaves micro-batches of more rows than those."""
    counts = set(MICRO_BATCH_COUNTS) | {pp, 2 * pp, 4 * pp}
    if rows_per_replica and rows_per_replica / max(counts) > max(SMALL_MICRO_BATCH_ROWS):
        counts |= {-(-rows_per_replica // rows) for rows in SMALL_MICRO_BATCH_ROWS}
    return sorted(counts)


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


def decode_batching_options(call: ModelFunctionCall, pp: int, micro_batches: int,
                            max_staleness: int) -> tuple[str, ...]:
    """Decode batching modes tried for `call` at `pp` stages and `micro_batches`: static
    only, except for a generate call of a workflow with max_staleness >= 1 (the issue's
    "the search chooses the mode per plan, only where k >= 1"), which also tries
    continuous where it differs from static: with micro_batches <= pp every micro-batch
    is in the first wave and no slot is ever refilled, so continuous runs and is priced as
    static (costmodel/generate_cost.py), a duplicate candidate."""
    default = Execution.model_fields["decode_batching"].default
    if call.kind != "generate" or max_staleness < 1 or micro_batches <= pp:
        return (default,)
    return DECODE_BATCHINGS


def expert_degree_options(spec: ModelSpec, dp: int) -> list[int]:
    """Expert-parallel degrees tried at data-parallel degree `dp`: 1 for a dense model, else
    every divisor of dp that divides the expert count (module docstring)."""
    if spec.moe is None:
        return [1]
    return [ep for ep in divisors(dp) if spec.moe.num_experts % ep == 0]


def candidate_executions(call: ModelFunctionCall, spec: ModelSpec, cluster: ClusterSpec,
                         batch: BatchSpec,
                         meshes: list[tuple[int, ...]] | None = None,
                         max_staleness: int = 0) -> list[Execution]:
    """Every valid execution of `call` (memory not yet considered); `max_staleness` is the
    workflow's bound (decode_batching_options). The recomputation and decode batching
    modes offered are those layout_problem accepts for the call's kind, so whether a
    layout can run is checked once per (mesh, dp, tp, pp, ep, micro-batches), on its first
    mode, and holds for the others."""
    result = []
    for mesh in meshes if meshes is not None else allowed_meshes(cluster):
        for dp, tp, pp in layouts_for_mesh(len(mesh)):
            rows = sequences_per_micro_batch_step(call, batch) // dp
            for ep in expert_degree_options(spec, dp):
                for micro_batches in micro_batch_options(pp, rows):
                    runs: bool | None = None
                    for recompute in recompute_options(call):
                        for decode in decode_batching_options(call, pp, micro_batches,
                                                              max_staleness):
                            execution = Execution(devices=mesh, dp=dp, tp=tp, pp=pp, ep=ep,
                                                  micro_batches=micro_batches,
                                                  recompute=recompute, decode_batching=decode)
                            if runs is None:
                                runs = layout_problem(execution, spec, cluster, call,
                                                      batch) is None
                            if runs:
                                result.append(execution)
    return result
