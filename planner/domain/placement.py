"""Placement: where a model's parameters, and a call's data rows, live.

A placement is the ordered devices of a mesh and the data x tensor x pipeline degrees laid
on them (planner.sharding.rank_groups says which device has which coordinate). It is what
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
    """Ordered mesh devices (global device ids = runtime ranks) and dp / tp / pp degrees."""

    devices: tuple[int, ...]
    dp: int
    tp: int
    pp: int

    def __post_init__(self) -> None:
        if min(self.dp, self.tp, self.pp) < 1:
            raise ValueError(f"dp {self.dp}, tp {self.tp}, pp {self.pp} must all be >= 1")
        if len(self.devices) != self.dp * self.tp * self.pp:
            raise ValueError(f"dp {self.dp} x tp {self.tp} x pp {self.pp} = "
                             f"{self.dp * self.tp * self.pp}, mesh has {len(self.devices)} "
                             f"devices")
        if len(set(self.devices)) != len(self.devices):
            raise ValueError(f"mesh {list(self.devices)} repeats a device")

    @property
    def num_devices(self) -> int:
        return len(self.devices)
