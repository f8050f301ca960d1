"""Placement: where a model's parameters, and a call's data rows, live.

A placement is the ordered devices of a mesh and the data x tensor x pipeline degrees laid
on them (planner.sharding.rank_groups says which device has which coordinate), plus, for
mixture-of-experts models, the expert-parallel degree ep: the routed experts of every block
split over ep consecutive data-parallel ranks (ep divides dp), each expert tensor-parallel
over the tp group as a dense MLP is. This is Megatron-LM's arrangement before "parallel
folding" (expert_model_parallel_size inside the data-parallel group, expert tensor
parallelism equal to tp; megatron/core/parallel_state.py), which verl's Megatron backend
runs; dense models have ep 1. It is what
decides parameter and data movement: two calls of a model with equal placements share the
parameters with no reallocation, whatever their micro-batches or run policy, and a data
edge between unequal placements needs a transfer (rows live with their data-parallel
replica, so a new dp/tp/pp split on the same devices moves rows too).

The cost model (reallocation and transfer schedules), the search (placement ids), the
executor (process groups and model copies per placement) and the runtime's parallel
contexts all use this one type.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    """Ordered mesh devices (global device ids = runtime ranks), dp / tp / pp degrees and the
    expert-parallel degree ep (module docstring)."""

    devices: tuple[int, ...]
    dp: int
    tp: int
    pp: int
    ep: int = 1

    def __post_init__(self) -> None:
        if min(self.dp, self.tp, self.pp, self.ep) < 1:
            raise ValueError(f"dp {self.dp}, tp {self.tp}, pp {self.pp}, ep {self.ep} must "
                             f"all be >= 1")
        if self.dp % self.ep:
            raise ValueError(f"ep {self.ep} must divide dp {self.dp}: experts are split over "
                             f"data-parallel ranks")
        if len(self.devices) != self.dp * self.tp * self.pp:
            raise ValueError(f"dp {self.dp} x tp {self.tp} x pp {self.pp} = "
                             f"{self.dp * self.tp * self.pp}, mesh has {len(self.devices)} "
                             f"devices")
        if len(set(self.devices)) != len(self.devices):
            raise ValueError(f"mesh {list(self.devices)} repeats a device")

    @property
    def num_devices(self) -> int:
        return len(self.devices)
