"""Pipeline partition of a model's transformer layers over stages: a shared pure function.

Layers are split into `pp` contiguous, non-empty ranges as evenly as possible. When the
layers do not divide evenly, the extra layers go first to the middle stages (1 .. pp-2),
because stage 0 also holds the embedding and the last stage the output head; only then to
the last stage and finally the first.

Example: 10 layers on 4 stages -> [0,2) [2,5) [5,8) [8,10).
"""

from __future__ import annotations


def extra_layer_order(num_stages: int) -> list[int]:
    """Stages in the order they receive one extra layer when layers do not divide evenly."""
    middle = list(range(1, num_stages - 1))
    ends = [num_stages - 1, 0] if num_stages > 1 else [0]
    return middle + ends


def stage_layer_counts(num_layers: int, num_stages: int) -> list[int]:
    """Number of layers on each stage."""
    if num_stages < 1 or num_stages > num_layers:
        raise ValueError(f"pp {num_stages} must be between 1 and the layer count {num_layers}")
    base, extra = divmod(num_layers, num_stages)
    counts = [base] * num_stages
    for stage in extra_layer_order(num_stages)[:extra]:
        counts[stage] += 1
    return counts


def layer_ranges(num_layers: int, num_stages: int) -> list[tuple[int, int]]:
    """Half-open layer index range [start, end) of each stage, in stage order."""
    ranges = []
    start = 0
    for count in stage_layer_counts(num_layers, num_stages):
        ranges.append((start, start + count))
        start += count
    return ranges


def stage_of_layer(layer: int, num_layers: int, num_stages: int) -> int:
    """The stage that holds transformer layer `layer`."""
    for stage, (start, end) in enumerate(layer_ranges(num_layers, num_stages)):
        if start <= layer < end:
            return stage
    raise ValueError(f"layer {layer} outside 0..{num_layers - 1}")
