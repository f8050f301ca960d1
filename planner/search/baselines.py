"""Baseline plans built the way users build them today, as choices over the search tables.

All are priced by the same cost model as the search:
- `symmetric`: Megatron-style, one layout dXtYpZmW for every call on all devices (the best
  such layout that fits);
- `colocated`: verl-style, every model on all devices, each call with its own fastest layout
  there (generation and training of the actor differ; the actor is resharded between them);
- `separate`: OpenRLHF-style pools: generation engines, actor training, the critic, the
  reference and the reward model each get their own devices, sized by parameters (training
  pools weigh 3x, generation 2x, inference 1x), each call with its fastest layout in its pool;
- `realhf-heuristic`: the trained models' calls on all devices with their fastest layouts
  (parameter reallocation), the inference calls side by side on equal slices.
Train calls recompute activations as the baseline's framework can (BASELINE_RECOMPUTE), the
mode tried like a layout. A baseline is None when it cannot be built or does not fit on the
cluster.

Asynchronous baselines (ASYNC_BASELINES; only for a workflow with max_staleness k >= 1),
as AReaL users run today: the rollout models' generate calls on the first share of the
devices, every other call on the rest, each call with its fastest layouts there
(best_combination), at staleness k (the loosest bound the user allowed, AReaL's
max_head_offpolicyness):
- `async-75/25`: the split issue 14 names as AReaL's hand-set default (AReaL writes it
  in `allocation_mode`, inference devices first: `sglang.dXtYpZ+dUtVpW`);
- `async-50/50`: half and half (AReaL's documentation example `sglang.d2t2p1+d1t4p1`
  gives inference 4 of 8 GPUs).
Device counts (async_split): on several nodes whole nodes, the generation share of the
node count rounded half up and kept within 1 and nodes - 1 (75/25 of 8 nodes: 6 + 2; of 2
nodes: 1 + 1); inside one node the two parts must be aligned power-of-two slices, so only
halves exist and 75/25 cannot be built there (None).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from planner.domain.cluster import ClusterSpec
from planner.domain.layout import RECOMPUTE_MODES, Execution
from planner.domain.mesh import mesh_problem
from planner.domain.workflow import Workflow
from planner.search.deadline import Deadline
from planner.search.fast_evaluator import FastEvaluator
from planner.search.tables import RECOMPUTE_CODE, CallTable, SearchTables

POOL_WEIGHT = {"train": 3.0, "generate": 2.0, "inference": 1.0}
MAX_COMBINATIONS = 200_000

# Activation recomputation modes (Execution.recompute) each baseline's framework offers its
# train calls. Megatron-LM (symmetric) has --recompute-granularity selective | full, or
# none; verl runs layouts with pipeline stages (as colocated does) on its Megatron backend,
# which passes the same setting through (override_transformer_config). OpenRLHF (separate:
# HF models under DeepSpeed) and ReaLHF (realhf-heuristic) have one gradient-checkpointing
# switch that checkpoints whole decoder layers (--gradient_checkpointing;
# gradient_checkpointing in ReaLHF's model config): none or full.
LAYER_CHECKPOINTING = ("none", "full")
# AReaL (async) trains HF models under FSDP or Megatron; its FSDP engine has the same one
# switch (gradient_checkpointing in its TrainEngineConfig): none or full.
BASELINE_RECOMPUTE = {"symmetric": RECOMPUTE_MODES, "colocated": RECOMPUTE_MODES,
                      "separate": LAYER_CHECKPOINTING, "realhf-heuristic": LAYER_CHECKPOINTING,
                      "async": LAYER_CHECKPOINTING}


def layout_options(table: CallTable, devices: tuple[int, ...], count: int,
                   recompute_modes: tuple[str, ...]) -> list[int]:
    """Up to `count` candidates on exactly `devices` that fit alone, recomputing (train calls)
    in one of `recompute_modes`, from the fastest to the leanest: points spread along the
    time / memory Pareto front, as a user trading speed for memory would try them."""
    memory = table.alone_peak_bytes
    found = table.executions.rows_on(devices)
    allowed = np.array([RECOMPUTE_CODE[m] for m in recompute_modes], dtype=np.int64)
    found = found[(memory[found] <= table.capacity_bytes[found])
                  & ((table.kind != "train") | np.isin(table.recompute[found], allowed))
                  # generation engines (vLLM, SGLang) use tensor and data parallelism only
                  & ~((table.kind == "generate") & (table.pp[found] != 1))]
    front, lowest = [], np.inf
    for i in found[np.lexsort((memory[found], table.time_s[found]))]:
        if memory[i] < lowest:
            front.append(int(i))
            lowest = memory[i]
    if len(front) <= count:
        return front
    picks = np.unique(np.round(np.linspace(0, len(front) - 1, count)).astype(int))
    return [front[p] for p in picks]


def best_combination(tables: SearchTables, judge: "BaselineJudge",
                     mesh_of: Callable[[str], tuple[int, ...]],
                     recompute_modes: tuple[str, ...]) -> np.ndarray | None:
    """The best plan that puts each call on its given mesh with one of its fastest layouts.

    This is the hand-tuning users do: try a few layouts of each call, from the fastest to the
    leanest, and keep the best combination that fits. The number tried per call shrinks with the number of calls
    so that at most MAX_COMBINATIONS plans are evaluated.
    """
    per_call = max(1, int(MAX_COMBINATIONS ** (1.0 / len(tables.calls))))
    options = [layout_options(t, mesh_of(t.name), per_call, recompute_modes)
               for t in tables.calls]
    if any(not o for o in options):
        return None
    grid = np.stack(np.meshgrid(*[np.array(o) for o in options], indexing="ij"), axis=-1)
    return judge.best_of(grid.reshape(-1, len(options)))


def symmetric(tables: SearchTables, judge: "BaselineJudge", cluster: ClusterSpec,
              workflow: Workflow) -> np.ndarray | None:
    everything = tuple(range(cluster.num_devices))
    first = tables.calls[0].executions
    layouts = sorted({(e.dp, e.tp, e.pp, e.micro_batches)
                      for e in (first[int(i)] for i in first.rows_on(everything))})
    default = Execution.model_fields["recompute"].default
    choices = set()
    for dp, tp, pp, m in layouts:
        for mode in BASELINE_RECOMPUTE["symmetric"]:   # one setting for all train calls
            train = Execution(devices=everything, dp=dp, tp=tp, pp=pp, micro_batches=m,
                              recompute=mode)
            other = train.model_copy(update={"recompute": default})
            try:
                choices.add(tuple(table.index_of(train if table.kind == "train" else other)
                                  for table in tables.calls))
            except ValueError:
                continue
    return judge.best_of(np.array(sorted(choices), dtype=np.int64))


def colocated(tables: SearchTables, judge: "BaselineJudge", cluster: ClusterSpec,
              workflow: Workflow) -> np.ndarray | None:
    everything = tuple(range(cluster.num_devices))
    return best_combination(tables, judge, lambda name: everything,
                            BASELINE_RECOMPUTE["colocated"])


def pool_groups(workflow: Workflow) -> list[list[str]]:
    """Calls sharing a pool: generation alone, each model's other calls together."""
    groups: dict[str, list[str]] = {}
    for name in workflow.call_order:
        call = workflow.call_by_name[name]
        key = f"{call.model}:generate" if call.kind == "generate" else call.model
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def pool_weight(workflow: Workflow, group: list[str]) -> float:
    calls = [workflow.call_by_name[n] for n in group]
    params = workflow.models[calls[0].model].spec.num_params()
    return params * max(POOL_WEIGHT[c.kind] for c in calls)


def split_devices(weights: list[float], cluster: ClusterSpec) -> list[tuple[int, ...]] | None:
    """Contiguous allowed meshes, one per weight, sized roughly in proportion.

    On several nodes, pools are whole nodes; inside one node, power-of-two slices placed
    largest first (so they stay aligned). None when there are more pools than units.
    """
    multi_node = cluster.num_nodes >= len(weights)
    unit = cluster.node_devices_per_node[0] if multi_node else 1
    units = cluster.num_devices // unit if multi_node else cluster.node_devices_per_node[0]
    if len(weights) > units:
        return None
    share = np.array(weights) / sum(weights) * units
    sizes = np.maximum(1, np.floor(share)).astype(int)
    if not multi_node:
        sizes = np.array([1 << int(np.floor(np.log2(s))) for s in sizes])
    while sizes.sum() < units:   # give spare units to the pool that is shortest of its share
        candidates = [i for i in range(len(sizes))
                      if multi_node or sizes.sum() + sizes[i] <= units]
        if not candidates:
            break
        i = max(candidates, key=lambda j: share[j] / sizes[j])
        sizes[i] = sizes[i] + 1 if multi_node else sizes[i] * 2
    if sizes.sum() > units:
        return None
    order = np.argsort(-sizes, kind="stable")
    meshes: list[tuple[int, ...] | None] = [None] * len(weights)
    start = 0
    for i in order:
        meshes[i] = tuple(range(start * unit, (start + sizes[i]) * unit))
        start += sizes[i]
    return meshes


def colocation_steps(workflow: Workflow) -> list[list[list[str]]]:
    """Pool groupings from fully separate to OpenRLHF's colocation flags: first every pool
    apart; then the reference with the actor's training and the reward with the critic
    (--colocate_actor_ref, --colocate_critic_reward); then every model's non-generation calls
    in one pool (--colocate_all_models) beside the generation engines."""
    separate_pools = pool_groups(workflow)
    partner = {"ref": "actor", "reward": "critic"}
    merged: dict[str, list[str]] = {}
    for group in separate_pools:
        call = workflow.call_by_name[group[0]]
        key = "generate" if call.kind == "generate" else call.model
        if key in partner and partner[key] in workflow.models:
            key = partner[key]
        merged.setdefault(key, []).extend(group)
    generation = [n for n in workflow.call_order if workflow.call_by_name[n].kind == "generate"]
    others = [n for n in workflow.call_order if n not in generation]
    all_models = [g for g in (generation, others) if g]
    return [separate_pools, list(merged.values()), all_models]


def separate(tables: SearchTables, judge: "BaselineJudge", cluster: ClusterSpec,
             workflow: Workflow) -> np.ndarray | None:
    for groups in colocation_steps(workflow):
        meshes = split_devices([pool_weight(workflow, g) for g in groups], cluster)
        if meshes is None:
            continue
        mesh_of = {name: mesh for group, mesh in zip(groups, meshes) for name in group}
        plan = best_combination(tables, judge, mesh_of.__getitem__,
                                BASELINE_RECOMPUTE["separate"])
        if plan is not None:
            return plan
    return None


def side_by_side_calls(workflow: Workflow) -> list[str]:
    """realhf-heuristic's calls on equal slices: the inference calls and the calls of
    models that are not trained, in call order."""
    trained = workflow.trained_models()
    calls = [workflow.call_by_name[name] for name in workflow.call_order]
    return [c.name for c in calls if c.kind == "inference" or c.model not in trained]


def baseline_meshes(workflow: Workflow, cluster: ClusterSpec) -> list[tuple[int, ...]]:
    """Every mesh a baseline may put a call on: all devices, the pools of each of
    separate's colocation steps, realhf-heuristic's slices and, with max_staleness >= 1,
    the asynchronous baselines' splits (the meshes the search tables price first,
    builder.full_tables)."""
    meshes = [tuple(range(cluster.num_devices))]
    side_by_side = side_by_side_calls(workflow)
    splits = [split_devices([pool_weight(workflow, g) for g in groups], cluster)
              for groups in colocation_steps(workflow)]
    splits.append(split_devices([1.0] * len(side_by_side), cluster) if side_by_side else [])
    splits.append(async_meshes(workflow, cluster))
    for split in splits:
        meshes += [m for m in split or [] if m not in meshes]
    return meshes


# Generation's share of the devices in each asynchronous baseline (module docstring).
ASYNC_GENERATION_SHARE = {"async-75/25": 0.75, "async-50/50": 0.5}


def async_split(cluster: ClusterSpec, generation_share: float
                ) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(generation mesh, training mesh) splitting the cluster at `generation_share` (module
    docstring: whole nodes on several nodes, halves inside one); None when the split
    cannot be made of two allowed meshes."""
    if cluster.num_nodes >= 2:
        nodes = int(generation_share * cluster.num_nodes + 0.5)   # half up (positive)
        nodes = min(max(nodes, 1), cluster.num_nodes - 1)
        cut = cluster.node_first_device[nodes]
    else:
        cut = int(round(generation_share * cluster.num_devices))
    generation, training = tuple(range(cut)), tuple(range(cut, cluster.num_devices))
    if not generation or not training or mesh_problem(generation, cluster) \
            or mesh_problem(training, cluster):
        return None
    return generation, training


def async_meshes(workflow: Workflow, cluster: ClusterSpec) -> list[tuple[int, ...]]:
    """The meshes of the asynchronous baselines (none when max_staleness is 0)."""
    if workflow.max_staleness < 1:
        return []
    meshes: list[tuple[int, ...]] = []
    for share in ASYNC_GENERATION_SHARE.values():
        for mesh in async_split(cluster, share) or ():
            if mesh not in meshes:
                meshes.append(mesh)
    return meshes


def async_baseline(share: float) -> Callable:
    """The builder of the asynchronous baseline giving generation `share` of the devices;
    `judge` must price plans at the workflow's max_staleness (build_baselines)."""
    def build(tables: SearchTables, judge: "BaselineJudge", cluster: ClusterSpec,
              workflow: Workflow) -> np.ndarray | None:
        split = async_split(cluster, share)
        if split is None or workflow.max_staleness < 1:
            return None
        generation, training = split
        rollout = set(workflow.rollout_models())

        def mesh_of(name: str) -> tuple[int, ...]:
            call = workflow.call_by_name[name]
            return generation if call.kind == "generate" and call.model in rollout \
                else training
        return best_combination(tables, judge, mesh_of, BASELINE_RECOMPUTE["async"])
    return build


def realhf_heuristic(tables: SearchTables, judge: "BaselineJudge", cluster: ClusterSpec,
                     workflow: Workflow) -> np.ndarray | None:
    everything = tuple(range(cluster.num_devices))
    side_by_side = side_by_side_calls(workflow)
    slices = split_devices([1.0] * len(side_by_side), cluster) if side_by_side else []
    if slices is None:
        return None
    mesh_of = dict(zip(side_by_side, slices))
    return best_combination(tables, judge, lambda name: mesh_of.get(name, everything),
                            BASELINE_RECOMPUTE["realhf-heuristic"])


class BaselineJudge:
    """Picks the best of several candidate plans: fastest by the fast evaluator among those
    that fit, confirmed by `fits_exactly` (the exact simulator's memory rule, which also
    counts reallocation buffers) for up to `max_checks` plans.

    With a `deadline` (set by build_baselines) it confirms no further plan once the deadline
    has expired: `best_of` then returns None and sets `stopped` (the plans left unconfirmed
    may fit; build_baselines names the baseline as cut)."""

    def __init__(self, evaluator: FastEvaluator,
                 fits_exactly: Callable[[np.ndarray], bool] | None = None,
                 max_checks: int = 32):
        self.evaluator = evaluator
        self.fits_exactly = fits_exactly
        self.max_checks = max_checks
        self.deadline: Deadline | None = None
        self.stopped = False             # the last best_of quit at the deadline
        self.cut: list[str] = []         # baselines the deadline left None (build_baselines)
        # The longest one exact check took (s): what pricing a plan whose reallocations are
        # not priced yet may take (pipeline keeps time back for it).
        self.slowest_check_s = 0.0

    def best_of(self, choices: np.ndarray) -> np.ndarray | None:
        if len(choices) == 0:
            return None
        result = self.evaluator.evaluate(choices)
        feasible = np.flatnonzero(result.feasible)
        ranked = feasible[np.argsort(result.iteration_s[feasible], kind="stable")]
        for i in ranked[: self.max_checks]:
            if self.fits_exactly is None:
                return choices[i]
            if self.deadline is not None and self.deadline.expired():
                self.stopped = True
                return None
            began = time.perf_counter()
            fits = self.fits_exactly(choices[i])
            self.slowest_check_s = max(self.slowest_check_s, time.perf_counter() - began)
            if fits:
                return choices[i]
        return None


BASELINES: dict[str, Callable] = {
    "symmetric": symmetric,
    "colocated": colocated,
    "separate": separate,
    "realhf-heuristic": realhf_heuristic,
}
# Built only for max_staleness >= 1, with a judge at that staleness (build_baselines).
ASYNC_BASELINES: dict[str, Callable] = {name: async_baseline(share)
                                        for name, share in ASYNC_GENERATION_SHARE.items()}


def build_baselines(tables: SearchTables, judge: BaselineJudge, cluster: ClusterSpec,
                    workflow: Workflow, deadline: Deadline | None = None,
                    async_judge: BaselineJudge | None = None
                    ) -> dict[str, np.ndarray | None]:
    """Every baseline's choice over `tables` (None when it cannot run on the cluster):
    BASELINES with `judge` (staleness 0) and, when the workflow's max_staleness k >= 1 and
    an `async_judge` (one pricing at staleness k) is given, ASYNC_BASELINES with it.

    With a `deadline`, once some baseline has a plan (so that the search always has one to
    fall back on, as full_tables always prices a fitting candidate of each call), a
    baseline is built only while time remains and its exact memory checks stop when the
    deadline expires (BaselineJudge): a baseline not started, or stopped before a plan was
    confirmed, is None and named in `judge.cut` (in BASELINES order); the baselines built
    before keep their plans."""
    judge.cut = []
    choices: dict[str, np.ndarray | None] = {}
    builders = [(name, build, judge) for name, build in BASELINES.items()]
    if async_judge is not None and workflow.max_staleness >= 1:
        builders += [(name, build, async_judge) for name, build in ASYNC_BASELINES.items()]
    for name, build, pricer in builders:
        pricer.stopped = False
        pricer.deadline = deadline if any(c is not None for c in choices.values()) else None
        if pricer.deadline is not None and pricer.deadline.expired():
            choices[name] = None
            judge.cut.append(name)
            continue
        choices[name] = build(tables, pricer, cluster, workflow)
        if pricer.stopped and choices[name] is None:
            judge.cut.append(name)
        pricer.deadline = None
    return choices
