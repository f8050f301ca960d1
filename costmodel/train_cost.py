"""Phases of a train call, from a StageTimer: what runtime/train.py and runtime/optimizer.py run.

Per minibatch, on stage s of pp with m micro-batches of b sequences:

forward_backward: 1F1B, (pp + m - 1) x (F_s + B_s + 2 sends) of the slowest stage, where
F_s is the stage's forward and B_s its backward plus what the execution's recomputation
mode reruns in it (StageTimer.recompute_s, 0 for "none").

dp_sync: the exposed part of the DP gradient reduction. The runtime (runtime/grad_buckets.py,
as Megatron-LM's overlap_grad_reduce) cuts the stage's flat gradient buffer of N elements
into the buckets of planner.sharding.grad_buckets (GRAD_BUCKET_BYTES each, from the end,
the last the remainder) and launches each, during the backward of the minibatch's last
micro-batch, as soon as backward has finished its gradients: an all-reduce, or under ZeRO-1
(Execution.shard_optimizer_over_dp) a reduce-scatter (an all-reduce on gloo:
comm.zero1_gradient_reduce_time_s). Derivation:
- Ready times. Backward finishes the buffer from its end (head, then the blocks from the
  last, then on stage 0 the embedding). Its time is taken proportional to the parameters it
  passes (a weight's input and weight gradients cost 2 x 2 x tokens x its elements, the 6NT
  accounting of Kaplan et al. 2020 / Narayanan et al. 2021), except the embedding, whose
  gradient (a scatter-add, E elements on stage 0, E = V h / tp, else 0) is final only when
  backward ends. A bucket [lo, hi) is ready when its lowest element is final:
      ready_k = B_s x clip((N - lo_k) / (N - E), 0, 1).
- The collectives of one DP group run one after another in launch order (one NCCL
  communicator's stream; gloo in issue order), bucket k taking c_k = the comm.py time of its
  bytes over dp ranks: it starts at max(ready_k, end_{k-1}), so (unrolling) the last ends at
      end = max_k (ready_k + sum_{j >= k} c_j).
- Stage s's last backward ends D_s = s x (max_s B_s + send) before the pipeline's end (the
  last micro-batch's backward passes from stage pp - 1 down to stage 0, one backward and one
  send per stage), and the step waits for every stage (the norm's all-reduce over pp), so
      dp_sync = max_s max(0, end_s - B_s - D_s).
- On CPU (gloo) nothing overlaps (overlaps_backward): dp_sync = sum_k c_k of the slowest
  stage.
- Limits: a fast network (each c_k within the time backward takes for the next bucket)
  exposes only the buckets ready when backward ends: the last one, plus the embedding's
  buckets on stage 0 (D_0 = 0); a slow one (sum c_k > B_s) exposes
  sum c_k - B_s (1 - S / (N - E)), S the first bucket's elements: all of the sync but the
  backward after the first bucket's gradients.

dp_gather: under ZeRO-1, the all-gather of the updated weights after the step, bucket by
bucket (sum over buckets of allgather times), not overlapped: the runtime does not overlap
it with the next forward (Megatron's overlap_param_gather). 0 without ZeRO-1.

kv_sync: with tp above the kv heads (planner.sharding.param_shards kv_replicas r = tp / kv
> 1), the all-reduce of the replicated kv heads' gradients over the r ranks sharing each,
after the DP reduction and before the norm (runtime/optimizer.py): one collective of the
stage's k/v rows on a rank, L_s x 2 (K, V) x head_dim x (h + 1 with biases) elements in the
compute dtype, 1/dp of them under ZeRO-1 (each rank sums its piece), priced by
comm.allreduce_time_s over r ranks of the TP group's link (the sharing ranks are r
consecutive ranks of the TP group, inside its node; the link's fabric is the TP group's);
the step waits for every stage, so the slowest stage's counts. 0 when r = 1.

optimizer: the Adam step of the stage's parts, on 1/dp of them under ZeRO-1.

Mixture-of-experts models (costmodel/moe_cost.py): the routed experts' gradients are a
second flat buffer of the rank's ep shard, cut into buckets like the dense one and reduced
over the expert-dp group (dp / ep ranks, its own link; under ZeRO-1 reduce-scattered and
the updated experts all-gathered over it). Assumption: the runtime launches those buckets
as backward finishes them, like the dense ones (ready as backward passes the blocks, no
embedding term); the two buffers' buckets are priced as one in-order chain by ready time
(they share the links), so dp_sync and dp_gather cover both. Without ZeRO-1 dp_sync adds
the all-reduce of the experts' squared gradient norm over the ep group. The experts' Adam
step runs on their shard, 1 / (dp / ep) of it under ZeRO-1. Phase "all_to_all": per minibatch
(pp + m - 1) x the slowest stage's all-to-alls of one micro-batch (forward, backward and the
recomputed forward's), priced apart from forward_backward (an upper bound of the joint
slowest stage when the stages' compute and all-to-alls peak on different stages).

Under FSDP / ZeRO-3 (Execution.shard_parameters_over_dp, pp 1; sharded_train_phases_s):
forward_backward is the same compute, m x (F + B) per minibatch; fsdp_forward and
fsdp_backward are the per-layer all-gathers and gradient reduce-scatters of every
micro-batch that compute does not hide (costmodel/fsdp_cost.py, its sources); dp_sync and
dp_gather are 0 (the reduce-scatters are those of fsdp_backward, and the updated shards stay
sharded: nothing is gathered after the step); kv_sync and optimizer as above, on 1/dp.
"""

from __future__ import annotations

import numpy as np

from costmodel import comm, moe_cost
from costmodel.fsdp_cost import train_exposed_s
from costmodel.memory import optimizer_shards
from costmodel.stage_timer import StageTimer
from planner.domain.workflow import BatchSpec
from planner.sharding.grad_buckets import grad_bucket_bounds
from planner.sharding.param_shards import kv_replicas


def exposed_sync_s(ready_s: np.ndarray, collective_s: np.ndarray, backward_end_s: float
                   ) -> float:
    """Seconds the in-order collectives of buckets ready at `ready_s` (launch order) run
    past `backward_end_s` (module docstring: end = max_k ready_k + sum_{j >= k} c_j)."""
    suffix_s = np.cumsum(collective_s[::-1])[::-1]
    return max(0.0, float(np.max(ready_s + suffix_s)) - backward_end_s)


# Memoised bucket times (_stage_buckets): layouts that differ only in micro-batches or
# recomputation share them. Bounded like stage_timer.STAGE_MEMO_ENTRIES.
BUCKET_MEMO_ENTRIES = 100_000
_BUCKET_MEMO: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _stage_buckets(st: StageTimer, stage: int, elements: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stage's buckets as the runtime cuts them, each array per bucket in launch order:
    ready time as a fraction of the backward, reduce seconds, (ZeRO-1) all-gather seconds.
    Memoised (_BUCKET_MEMO) on everything it reads: the stage's elements, dp, whether ZeRO-1
    shards, the compute dtype, the embedding elements on the stage, the dp link as the
    knobs set it and the comm functions that price the collectives (so that a replaced
    one, as tests do, is not answered from the memo); arrays come back read-only."""
    ex, spec = st.ex, st.role.spec
    zero1 = ex.shard_optimizer_over_dp and ex.dp > 1
    dtype = st.timers[stage][0].hardware.compute_dtype_bytes
    embedding = spec.vocab_size * spec.hidden_size // ex.tp if stage == 0 else 0
    link = st.knobs.link(st.geo.dp_link[stage])
    return _memoised_buckets(elements, ex.dp, zero1, dtype, embedding, link)


def _memoised_buckets(elements: int, ranks: int, zero1: bool, dtype: int, embedding: int,
                      link) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """_bucket_times through _BUCKET_MEMO, keyed also by the comm functions that price the
    collectives (so that a replaced one, as tests do, is not answered from the memo)."""
    key = (elements, ranks, zero1, dtype, embedding, link, comm.allreduce_time_s,
           comm.reduce_scatter_time_s, comm.zero1_gradient_reduce_time_s,
           comm.allgather_time_s)
    hit = _BUCKET_MEMO.get(key)
    if hit is None:
        if len(_BUCKET_MEMO) >= BUCKET_MEMO_ENTRIES:
            _BUCKET_MEMO.clear()
        hit = _BUCKET_MEMO[key] = _bucket_times(elements, ranks, zero1, dtype, embedding,
                                                link)
    return hit


def _bucket_times(elements: int, dp: int, zero1: bool, dtype: int, embedding: int,
                  link: comm.Link) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """_stage_buckets of its arguments."""
    padded = -(-elements // dp) * dp if zero1 else elements
    bounds = grad_bucket_bounds(padded, dtype, dp if zero1 else 1)
    ready = np.clip((elements - bounds[:, 0]) / max(elements - embedding, 1), 0.0, 1.0)
    sizes_bytes = (bounds[:, 1] - bounds[:, 0]) * float(dtype)
    reduce = comm.zero1_gradient_reduce_time_s if zero1 else comm.allreduce_time_s
    # buckets share one size but the last: two collective times priced, not one per bucket
    full_bytes, last_bytes = float(sizes_bytes[0]), float(sizes_bytes[-1])
    reduce_s = np.full(len(bounds), float(reduce(full_bytes, dp, link)))
    reduce_s[-1] = float(reduce(last_bytes, dp, link))
    gather_s = np.zeros(len(bounds))
    if zero1:
        gather_s[:] = float(comm.allgather_time_s(full_bytes, dp, link))
        gather_s[-1] = float(comm.allgather_time_s(last_bytes, dp, link))
    for values in (ready, reduce_s, gather_s):
        values.setflags(write=False)
    return ready, reduce_s, gather_s


def overlaps_backward(st: StageTimer, stage: int) -> bool:
    """Whether the stage's bucket reductions run beside its backward: on CUDA, NCCL's
    kernels run on their own stream next to the backward's; on CPU, gloo's threads need
    the cores that the runtime's processes (one compute thread each, one process per core:
    runtime/machine.py) keep busy, so a reduction takes its time from the backward and is
    priced in full after it."""
    return all(timer.hardware.kind == "cuda" for timer in st.timers[stage])


def kv_sync_s(st: StageTimer, stage: int) -> float:
    """The replicated kv gradients' all-reduce of one stage (module docstring: kv_sync)."""
    ex, spec = st.ex, st.role.spec
    replicas = kv_replicas(spec, ex.tp)
    if replicas == 1:
        return 0.0
    elements = (st.geo.stage_layers[stage] * 2 * spec.head_dim
                * (spec.hidden_size + int(spec.attention_bias)))
    dtype = st.timers[stage][0].hardware.compute_dtype_bytes
    message_bytes = elements * dtype / optimizer_shards(ex)
    link = st.knobs.link(st.geo.tp_link[stage])
    return float(comm.allreduce_time_s(message_bytes, replicas, link))


def _stage_optimizer_s(st: StageTimer, stage: int) -> float:
    ex, worst, spec = st.ex, 0.0, st.role.spec
    for timer in st.timers[stage]:
        parts = [("block", st.geo.stage_layers[stage])]
        parts += [("embedding", 1)] if stage == 0 else []
        parts += [(st.head_part, 1)] if stage == ex.pp - 1 else []
        t = sum(n * float(timer.time_s("optimizer", p, ex.tp, 1, 1)) for p, n in parts)
        seconds = t * st.knobs.compute_scale / optimizer_shards(ex)
        if spec.moe is not None:
            experts = moe_cost.routed_experts_optimizer_s(
                spec, timer.hardware, ex.tp, ex.ep, moe_cost.expert_optimizer_shards(ex))
            seconds += st.geo.stage_layers[stage] * experts * st.knobs.compute_scale
        worst = max(worst, seconds)
    return worst


def expert_buckets(st: StageTimer, stage: int, elements: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """_stage_buckets of the stage's routed experts' flat buffer (module docstring,
    mixture-of-experts): `elements` on a rank, reduced (and under ZeRO-1 gathered) over the
    expert-dp group of dp / ep ranks, ready as backward passes the blocks (no embedding)."""
    ex = st.ex
    ranks = ex.dp // ex.ep
    zero1 = ex.shard_optimizer_over_dp and ranks > 1
    dtype = st.timers[stage][0].hardware.compute_dtype_bytes
    link = st.knobs.link(st.geo.expert_dp_link[stage] if ex.ep > 1 else st.geo.dp_link[stage])
    return _memoised_buckets(elements, ranks, zero1, dtype, 0, link)


def expert_norm_s(st: StageTimer, stage: int) -> float:
    """The all-reduce of the experts' squared gradient norm over the ep group (one fp32
    scalar; the dense part's norm is alike on every dp rank); 0 at ep 1, and under ZeRO-1,
    where runtime/optimizer.py adds the expert squares to the dense ones before the one
    all-reduce over dp that ZeRO-1's pieces need anyway (the ep group lies inside dp)."""
    if st.role.spec.moe is None or st.ex.ep == 1 or st.ex.shard_optimizer_over_dp:
        return 0.0
    link = st.knobs.link(st.geo.ep_link[stage])
    return float(comm.allreduce_time_s(4.0, st.ex.ep, link))


def train_all_to_all_s(st: StageTimer, b: int, length: int) -> float:
    """One micro-batch's all-to-alls of the slowest stage: forward, backward and what the
    recomputation mode reruns (costmodel/moe_cost.py)."""
    return float(st.max_all_to_all_s(("forward", "backward", "recompute"), b, length))


def sharded_train_phases_s(st: StageTimer, b: int, batch: BatchSpec) -> dict[str, float]:
    """Phases of a train call under FSDP / ZeRO-3 (module docstring; pp is 1)."""
    ex, s, k = st.ex, batch.seq_len, batch.ppo_minibatches
    step = float(st.stage_s(0, "forward", b, s) + st.stage_s(0, "backward", b, s)
                 + st.recompute_s(0, b, s))
    forward_s, backward_s = train_exposed_s(st, b, s)
    micro = k * ex.micro_batches
    phases = {"forward_backward": micro * step, "fsdp_forward": micro * forward_s,
              "fsdp_backward": micro * backward_s, "dp_sync": 0.0, "dp_gather": 0.0,
              "kv_sync": k * kv_sync_s(st, 0), "optimizer": k * _stage_optimizer_s(st, 0)}
    if st.role.spec.moe is not None:
        phases["all_to_all"] = micro * train_all_to_all_s(st, b, s)
    return phases


def alike_stages(st: StageTimer, spec_elements: np.ndarray) -> list[int]:
    """The first stage of each class of stages that a train step times alike: alike in the
    geometry (Geometry.stage_class) and holding as many parameter elements (the largest
    over the stage's tp ranks, what its gradient buckets are cut from), ascending."""
    first: dict[tuple[int, int], int] = {}
    for stage, key in enumerate(zip(st.geo.stage_class, spec_elements.max(axis=1).tolist())):
        first.setdefault(key, stage)
    return list(first.values())


def train_phases_s(st: StageTimer, b: int, batch: BatchSpec, spec_elements: np.ndarray
                   ) -> dict[str, float]:
    """Phases of a train call (module docstring). Every phase is a maximum over the stages,
    so one stage of each class of alike stages is timed (alike_stages): its first, whose
    gradient buckets drain least after the backward and so run the longest past it."""
    if st.ex.shard_parameters_over_dp:
        return sharded_train_phases_s(st, b, batch)
    ex, s = st.ex, batch.seq_len
    stages = alike_stages(st, spec_elements)
    backward = {stage: float(st.stage_s(stage, "backward", b, s) + st.recompute_s(stage, b, s))
                for stage in stages}
    steps = [float(st.stage_s(stage, "forward", b, s)) + backward[stage] for stage in stages]
    send = float(st.send_s(b, s))
    pipeline = (ex.pp + ex.micro_batches - 1) * (max(steps) + 2 * send)
    slowest_backward = max(backward.values())
    sync = gather = optimizer = kv_sync = 0.0
    moe = st.role.spec.moe is not None
    for stage in stages:
        if moe:
            ready, reduce_s, gather_s = _moe_stage_buckets(st, stage, spec_elements)
        else:
            ready, reduce_s, gather_s = _stage_buckets(st, stage,
                                                       int(spec_elements[stage].max()))
        if overlaps_backward(st, stage):
            drain = stage * (slowest_backward + send)
            stage_sync = exposed_sync_s(ready * backward[stage], reduce_s,
                                        backward[stage] + drain)
        else:
            stage_sync = float(reduce_s.sum())
        if moe:
            stage_sync += expert_norm_s(st, stage)
        sync = max(sync, stage_sync)
        gather = max(gather, float(gather_s.sum()))
        optimizer = max(optimizer, _stage_optimizer_s(st, stage))
        kv_sync = max(kv_sync, kv_sync_s(st, stage))
    k = batch.ppo_minibatches
    phases = {"forward_backward": float(k * pipeline), "dp_sync": k * sync,
              "dp_gather": k * gather, "kv_sync": k * kv_sync, "optimizer": k * optimizer}
    if moe:
        phases["all_to_all"] = float(k * (ex.pp + ex.micro_batches - 1)
                                     * train_all_to_all_s(st, b, s))
    return phases


def _moe_stage_buckets(st: StageTimer, stage: int, spec_elements: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stage's dense and expert buckets as one in-order chain (module docstring,
    mixture-of-experts): ready fractions, reduce and gather seconds, sorted by ready time."""
    ex, spec = st.ex, st.role.spec
    experts = moe_cost.expert_shard_elements(spec, st.role.head, ex.tp, ex.pp, ex.ep)
    dense = int((spec_elements[stage] - experts[stage]).max())
    chains = [_stage_buckets(st, stage, dense),
              expert_buckets(st, stage, int(experts[stage].max()))]
    ready, reduce_s, gather_s = (np.concatenate(parts) for parts in zip(*chains))
    order = np.argsort(ready, kind="stable")
    return ready[order], reduce_s[order], gather_s[order]
