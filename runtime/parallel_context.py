"""The per-rank parallel context of a placement, with explicit process groups.

A placement (planner.domain.placement: ordered mesh devices = global ranks, dp, tp, pp) is a
pure description; a `ParallelContext` is what one member rank needs to run a model under it:
its coordinate and its TP, DP and PP process groups (with their global ranks), its
expert-parallel (EP) and expert-data-parallel groups (mixture-of-experts models, placement
ep; planner.sharding.rank_groups says which ranks form them), and the
blocks of consecutive ranks of its TP group that share a replicated kv head (tp above a
model's kv heads: planner.sharding.param_shards kv_replicas), over which the optimizer sums
those heads' gradients. A placement does not know the models it runs, so every block size a
model could need is made: each proper divisor d of tp (1 < d < tp) cuts the TP group into
tp / d blocks of d ranks; a block of all tp ranks is the TP group itself. Nothing is
module-global, so one process can hold contexts of several placements at once.

Trap (see runtime-notes): every process group must be created by all ranks of the world in
the same order, members or not. `create_contexts` does that for a list of layouts: groups are
created layout by layout, TP then DP then PP groups, each in `rank_groups` order, then the
TP blocks (by size, then TP group, then block), then the EP groups and the expert-DP groups
(each in `rank_groups` order). EP and expert-DP groups are created only when they differ
from a group already there: with ep 1 an EP group is the rank alone and the expert-DP group
is the DP group; with ep = dp the EP group is the DP group and the expert-DP group the rank
alone. So a dense layout (ep 1) creates exactly the groups it did before experts existed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.distributed as dist

from planner.domain.placement import Placement
from planner.sharding.rank_groups import (
    Coordinate,
    expert_rank,
    placement_coordinate,
    rank_groups,
)


@dataclass(frozen=True)
class Group:
    """A process group with its members' global ranks (in group-rank order)."""

    handle: object  # torch ProcessGroup; None for single-rank groups (no communication)
    ranks: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.ranks)


@dataclass(frozen=True)
class ParallelContext:
    """What one member rank of a layout needs to run: coordinate and its three groups."""

    layout: Placement
    global_rank: int
    coord: Coordinate
    tp_group: Group
    dp_group: Group
    pp_group: Group  # ranks[s] is the rank of stage s with this rank's tp and dp ranks
    # (d, the block of d consecutive ranks of tp_group holding this rank) per 1 < d < tp
    tp_blocks: tuple[tuple[int, Group], ...] = field(default=())
    # the ep consecutive dp ranks exchanging tokens with this one (rank_groups.ep_groups),
    # and the dp ranks holding the same experts (expert_dp_groups); None: this rank alone
    # (ep_group) and dp_group (expert_dp_group), the ep-1 groups (set in __post_init__)
    ep_group: Group | None = None
    expert_dp_group: Group | None = None

    def __post_init__(self):
        if self.ep_group is None:
            object.__setattr__(self, "ep_group", Group(handle=None, ranks=(self.global_rank,)))
        if self.expert_dp_group is None:
            object.__setattr__(self, "expert_dp_group", self.dp_group)

    @property
    def tp(self) -> int:
        return self.layout.tp

    @property
    def pp(self) -> int:
        return self.layout.pp

    @property
    def dp(self) -> int:
        return self.layout.dp

    @property
    def ep(self) -> int:
        return self.layout.ep

    @property
    def ep_rank(self) -> int:
        """Which slice of the routed experts this rank holds (rank_groups.expert_rank)."""
        return expert_rank(self.coord.dp_rank, self.layout.ep)

    @property
    def is_first_stage(self) -> bool:
        return self.coord.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.coord.pp_rank == self.layout.pp - 1

    def kv_share_group(self, num_kv_heads: int) -> Group:
        """The ranks of this rank's TP group holding the same kv head as it: the tp / kv
        consecutive ranks from tp_rank // (tp / kv) x (tp / kv) when tp exceeds the model's
        `num_kv_heads` (param_shards.shard_slice), this rank alone otherwise."""
        share = max(1, self.tp // num_kv_heads)
        if share == 1:
            return Group(handle=None, ranks=(self.global_rank,))
        if share == self.tp:
            return self.tp_group
        return dict(self.tp_blocks)[share]

    def stage_rank(self, stage: int) -> int:
        """Global rank of pipeline stage `stage` in this rank's pipeline."""
        return self.pp_group.ranks[stage]


def _new_group(ranks: tuple[int, ...], backend: str | None) -> object:
    """Create a group on every rank (collective over the world); None when it has one rank."""
    if len(ranks) == 1:
        return None
    return dist.new_group(ranks=list(ranks), backend=backend)


def tp_block_sizes(tp: int) -> list[int]:
    """Sizes of the TP blocks a context holds (module docstring)."""
    return [d for d in range(2, tp) if tp % d == 0]


def create_contexts(layouts: list[Placement], backend: str | None = None
                    ) -> list[ParallelContext | None]:
    """Create all groups of `layouts` on every rank; this rank's context per layout.

    Must be called by every rank of the initialised world with the same `layouts` in the same
    order. Returns None for layouts this rank is not a member of.
    """
    me = dist.get_rank()
    contexts: list[ParallelContext | None] = []
    for layout in layouts:
        groups = rank_groups(layout.devices, layout.dp, layout.tp, layout.pp, layout.ep)
        mine: dict[str, Group] = {}
        for kind, members in (("tp", groups.tp_groups), ("dp", groups.dp_groups),
                              ("pp", groups.pp_groups)):
            for ranks in members:
                handle = _new_group(ranks, backend)
                if me in ranks:
                    mine[kind] = Group(handle=handle, ranks=ranks)
        blocks = []
        for size in tp_block_sizes(layout.tp):
            for ranks in groups.tp_groups:
                for start in range(0, layout.tp, size):
                    block = ranks[start:start + size]
                    handle = _new_group(block, backend)
                    if me in block:
                        blocks.append((size, Group(handle=handle, ranks=block)))
        # expert groups last (module docstring), only where they are neither the rank alone
        # nor the dp group
        expert_kinds = (("ep", groups.ep_groups), ("expert_dp", groups.expert_dp_groups))
        for kind, members in expert_kinds if 1 < layout.ep < layout.dp else ():
            for ranks in members:
                handle = _new_group(ranks, backend)
                if me in ranks:
                    mine[kind] = Group(handle=handle, ranks=ranks)
        if me in layout.devices:
            if layout.ep > 1 and layout.ep == layout.dp:
                mine["ep"], mine["expert_dp"] = mine["dp"], Group(handle=None, ranks=(me,))
            contexts.append(ParallelContext(layout=layout, global_rank=me,
                                            coord=placement_coordinate(layout, me), tp_group=mine["tp"],
                                            dp_group=mine["dp"], pp_group=mine["pp"],
                                            tp_blocks=tuple(blocks), ep_group=mine.get("ep"),
                                            expert_dp_group=mine.get("expert_dp")))
        else:
            contexts.append(None)
    return contexts
