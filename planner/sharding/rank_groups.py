"""Rank groups of a 3D layout on a device mesh: one of the shared pure functions.

The cost model and the runtime both call this, so what we price is what we run.

Order (as in ReaLHF's pipe-data-model topology and Megatron's default): tensor parallel is
innermost (adjacent mesh positions, so a TP group sits inside one node), then data parallel,
then pipeline parallel outermost:

    mesh position = pp_rank * (dp * tp) + dp_rank * tp + tp_rank

Worked example, dp=2, tp=2, pp=2 on mesh devices [0..7]:
    tp groups: [0,1] [2,3] [4,5] [6,7]
    dp groups: [0,2] [1,3] [4,6] [5,7]
    pp groups: [0,4] [1,5] [2,6] [3,7]
Stage 0 holds devices 0-3, stage 1 holds 4-7.

Expert parallelism (mixture-of-experts models, planner.domain.placement): ep consecutive dp
ranks of one (tp rank, stage) form an expert-parallel group, which exchanges tokens by
all-to-all; dp rank r holds the routed experts of expert rank r mod ep, so the dp ranks with
the same expert rank (r mod ep equal) form an expert-data-parallel group of dp / ep ranks,
over which those experts' gradients are reduced. With dp=4, tp=1, pp=1, ep=2 on [0..3]:
    ep groups: [0,1] [2,3]      expert-dp groups: [0,2] [1,3]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from planner.domain.placement import Placement


@dataclass(frozen=True)
class Coordinate:
    """Where one device sits in a layout: its data, tensor and pipeline rank."""

    dp_rank: int
    tp_rank: int
    pp_rank: int


@dataclass(frozen=True)
class RankGroups:
    """All groups of one layout, each a tuple of device ids in rank order."""

    dp_groups: tuple[tuple[int, ...], ...]
    tp_groups: tuple[tuple[int, ...], ...]
    pp_groups: tuple[tuple[int, ...], ...]
    # expert parallelism (module docstring); single-rank groups when ep is 1 / ep is dp
    ep_groups: tuple[tuple[int, ...], ...] = ()
    expert_dp_groups: tuple[tuple[int, ...], ...] = ()


def expert_rank(dp_rank: int, ep: int) -> int:
    """Which slice of the experts data-parallel rank `dp_rank` holds (module docstring)."""
    return dp_rank % ep


def mesh_position(dp_rank: int, tp_rank: int, pp_rank: int, dp: int, tp: int) -> int:
    """Index into the mesh's device list of the device at (dp_rank, tp_rank, pp_rank)."""
    return pp_rank * (dp * tp) + dp_rank * tp + tp_rank


def coordinate_of(position: int, dp: int, tp: int, pp: int) -> Coordinate:
    """Inverse of `mesh_position`: the layout coordinate of a mesh position."""
    assert 0 <= position < dp * tp * pp, (position, dp, tp, pp)
    pp_rank, rest = divmod(position, dp * tp)
    dp_rank, tp_rank = divmod(rest, tp)
    return Coordinate(dp_rank=dp_rank, tp_rank=tp_rank, pp_rank=pp_rank)


def device_at(device_ids: Sequence[int], dp: int, tp: int, pp: int,
              dp_rank: int, tp_rank: int, pp_rank: int) -> int:
    """Device id at a layout coordinate on a mesh given by its ordered device ids."""
    assert len(device_ids) == dp * tp * pp, (len(device_ids), dp, tp, pp)
    return device_ids[mesh_position(dp_rank, tp_rank, pp_rank, dp, tp)]


def placement_device(placement: Placement, dp_rank: int, tp_rank: int, pp_rank: int) -> int:
    """Device id at a layout coordinate of a placement."""
    return placement.devices[mesh_position(dp_rank, tp_rank, pp_rank, placement.dp, placement.tp)]


def placement_coordinate(placement: Placement, device: int) -> Coordinate:
    """Layout coordinate of a member device of a placement."""
    return coordinate_of(placement.devices.index(device), placement.dp, placement.tp,
                         placement.pp)


def rank_groups(device_ids: Sequence[int], dp: int, tp: int, pp: int, ep: int = 1
                ) -> RankGroups:
    """The DP, TP, PP, EP and expert-DP groups of layout (dp, tp, pp, ep) on the ordered mesh
    `device_ids`."""
    assert len(device_ids) == dp * tp * pp and dp % ep == 0, (len(device_ids), dp, tp, pp, ep)
    # mesh_position as strides: a tp group is tp adjacent positions, a dp group every tp-th
    # position of its stage, a pp group every (dp x tp)-th position
    ids, stage = tuple(device_ids), dp * tp
    tp_groups = tuple(ids[k * tp:(k + 1) * tp] for k in range(pp * dp))
    dp_groups = tuple(ids[p * stage + t:(p + 1) * stage:tp] for p in range(pp) for t in range(tp))
    pp_groups = tuple(ids[k::stage] for k in range(stage))
    # a dp group split into blocks of ep consecutive ranks, and its every ep-th rank
    ep_groups = tuple(group[b:b + ep] for group in dp_groups for b in range(0, dp, ep))
    expert_dp_groups = tuple(group[e::ep] for group in dp_groups for e in range(ep))
    return RankGroups(dp_groups=dp_groups, tp_groups=tp_groups, pp_groups=pp_groups,
                      ep_groups=ep_groups, expert_dp_groups=expert_dp_groups)
