"""Phases of a train call, from a StageTimer.

Per minibatch: 1F1B (pp + m - 1) x (stage forward + backward [+ the blocks' recomputed
forward when Execution.recompute_activations] + 2 sends), then the DP gradient sync and the
optimizer step. With Execution.shard_optimizer_over_dp (ZeRO-1): reduce-scatter of
gradients + all-gather of weights over the dp group (compute dtype), the optimizer step on
1/dp of the stage's shard; without, an all-reduce of the gradients and the whole step on
every replica. Not overlapped with compute.
"""

from __future__ import annotations

import numpy as np

from costmodel import comm
from costmodel.memory import optimizer_shards
from costmodel.stage_timer import StageTimer
from planner.domain.workflow import BatchSpec


def train_phases_s(st: StageTimer, b: int, batch: BatchSpec, spec_elements: np.ndarray
             ) -> dict[str, float]:
    ex, s = st.ex, batch.seq_len
    stage_steps = []
    for stage in range(ex.pp):
        step = st.stage_s(stage, "forward", b, s) + st.stage_s(stage, "backward", b, s)
        if ex.recompute_activations:
            step = step + st.recompute_s(stage, b, s)
        stage_steps.append(step)
    pipeline = (ex.pp + ex.micro_batches - 1) * (max(stage_steps) + 2 * st.send_s(b, s))
    sync, optimizer = 0.0, 0.0
    for stage in range(ex.pp):
        dtype = st.timers[stage][0].hardware.compute_dtype_bytes
        local_bytes = float(spec_elements[stage].max()) * dtype
        link = st.knobs.link(st.geo.dp_link[stage])
        if ex.shard_optimizer_over_dp:
            stage_sync = comm.reduce_scatter_time_s(local_bytes, ex.dp, link) + \
                comm.allgather_time_s(local_bytes, ex.dp, link)
        else:
            stage_sync = comm.allreduce_time_s(local_bytes, ex.dp, link)
        shards = optimizer_shards(ex)
        sync = max(sync, stage_sync)
        stage_opt = 0.0
        for timer in st.timers[stage]:
            parts = [("block", st.geo.stage_layers[stage])]
            parts += [("embedding", 1)] if stage == 0 else []
            parts += [(st.head_part, 1)] if stage == ex.pp - 1 else []
            t = sum(n * float(timer.time_s("optimizer", p, ex.tp, 1, 1)) for p, n in parts)
            stage_opt = max(stage_opt, t * st.knobs.compute_scale / shards)
        optimizer = max(optimizer, stage_opt)
    k = batch.ppo_minibatches
    return {"forward_backward": float(k * pipeline), "dp_sync": k * sync,
            "optimizer": k * optimizer}
