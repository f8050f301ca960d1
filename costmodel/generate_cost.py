"""Phases of generate and inference calls, from a StageTimer, as the runtime runs them.

generate (runtime/generate.py, runtime/executor/calls.py run_generate):
- prefill: (pp + m - 1) x (stage prefill + send) over a micro-batch of b prompts padded to
  the longest of them, the expectation over P(longest of b prompts = l) = F(l)^b - F(l-)^b
  (planner/domain/length_distribution.py); it also makes each row's first token.
- decode: in waves of pp micro-batches (ceil(m / pp) waves, so a device holds the KV cache of
  min(m, pp) micro-batches). Within a wave the micro-batches rotate through the stages; a
  token of one micro-batch passes all pp stages and comes back before its next step, so a
  round is pp x (stage decode + send) however many of the wave's micro-batches still run,
  and a static micro-batch computes all b rows every step until its longest row ends (a
  stop token, or gen_len = max_new_tokens). Step s (1, 2, ...) makes token s + 1 over a
  context of prompt + s, so a wave whose longest response has L tokens runs L - 1 rounds.
  The call ends when its slowest dp replica does, so wave w runs until the longest of the
  n_w = dp x (micro-batches in w) x b rows of that wave over all replicas:
      decode = sum_w sum_{s >= 1} P(step s runs) x round(s),
      P(step s runs) = 1 - F_gen(c(s))^n_w, c(s) = floor(s / k) x k,
  where k is the stop check's interval (planner.domain.decode_policy: 1 on CPU, 16 on
  CUDA): step s runs unless every row had stopped at the last check before it (c = 0: no
  check yet, it runs).
  This is exact when every replica decodes one wave (m <= pp); with several waves it is an
  upper bound (replicas drift apart between waves instead of meeting at each wave's end),
  close when the waves run to gen_len anyway (long tails with large b). The context uses the
  expected longest prompt of b rows, exact where a decode step's time is linear in the
  context (the roofline's KV reads and attention FLOPs are). Under a long tail smaller
  micro-batches and more dp pay off through the cheaper round, not fewer rounds.
  When the call outputs `logprobs`, the runtime recomputes them with one forward pass of the
  generated sequences (run_generate): phase "logprobs", priced as inference.
- continuous batching (Execution.decode_batching "continuous", runtime/generate.py): G =
  min(pp, m) groups of b slots rotate like a static wave; a slot whose row has stopped
  takes the replica's next prompt at the next stop check. Phases:
  - prefill: the first fill, (pp + G - 1) x the static prefill of b prompts;
  - refill_prefill: each of the (m - G) x b later prompts is prefilled into its slot during
    the decode, pp x (stage prefill + send) of one row at its own length (the runtime
    compacts a refilled prompt to its real tokens), in the expectation over the prompt
    length, plus its first token's noise when sampled. The runtime prefills the rows
    refilled at one check together, so this is exact when rows stop at different checks
    (long tails checked every step) and an upper bound when several stop together (a
    batched prefill is cheaper, by little for prompts long enough to be compute-bound);
  - decode: the steady rounds. A row of length L holds its slot O = k ceil(L / k) rounds
    (its prefill round, L - 1 decode steps, then the wait for the next check; k the
    interval), so the (m / G - 1) x b rows after a group's first wave add
    (m / G - 1) x E[O] rounds, E[O] = k sum_{j >= 0} (1 - F(j k)). A round decodes all b
    slots; its attention reads the widest prompt of the replica's m b rows plus the
    longest live row's context (the runtime's scratch column), priced at the expected
    longest of b equilibrium ages: a slot observed at a random round holds a row of age
    >= a with probability T(a) = sum_{y >= a} P(L >= y) / E[L] (renewal theory's
    equilibrium distribution), so E[longest] = sum_{a >= 1} 1 - (1 - T(a))^b;
  - decode_drain: the last wave, the rows still running when the prompts run out, priced
    as static's wave of n = dp x G x b rows (P(step s runs) = 1 - F(c(s))^n above, the
    context growing from the widest prompt), i.e. as if the last wave's rows had started
    together. That is exact for one wave (m <= pp: continuous is static) and for
    geometric lengths, whose residual length has the length's own law (memoryless),
    which the {mean, max} form is up to its clip; for other laws it stands in for the
    expected longest residual of the running rows.
  So decode rounds = (m / G - 1) E[O] + sum_s P(step s runs) (continuous_decode_rounds).
  A refill round also decodes the other slots (the refilled slot idles in it), which is
  why a refilled row holds its slot O rounds, not O - 1.
  Fixed lengths (every row one length L, a point mass; lockstep): a group's b rows stop at
  one check, are refilled and prefilled together and run their L - 1 steps (and the padding
  steps up to the next check) together, so a group runs batches of b rows one after another
  as static runs micro-batches and the G groups rotate as a static wave's micro-batches do:
  the call runs static's prefills and ceil(m / pp) waves of static's rounds, and is priced
  with static's phases (equal to static's price). The one difference: a round's attention
  reads the widest prompt of the replica's m b rows (the slots' common prompt columns), not
  of the micro-batch's b, which is the same when prompts have one length. The steady-round
  formula above does not hold there: a refill round decodes nothing, and the lockstep ages
  average L / 2 over a wave, not the ~L the equilibrium gives (+26% over static for
  llama-7b, 512 + 2,048 fixed tokens, 64 slots on an H100).
- inference: one forward, (pp + m - 1) x (stage forward + send). The executor pads every
  sequence to prompt_len + gen_len (the maxima; runtime/executor/data.py), so inference,
  logprobs and train are priced at that length whatever the length distributions.
  Under FSDP / ZeRO-3 (Execution.shard_parameters_over_dp, pp 1: verl's ref and old-logprob
  forward) the phase "fsdp_forward" adds the per-layer all-gathers compute does not hide
  (costmodel/fsdp_cost.py inference_exposed_s).
- all_to_all (mixture-of-experts models, costmodel/moe_cost.py): the dispatch and combine
  of every block, priced apart from the phases above with their multipliers: prefill's and
  each forward's (pp + m - 1) x the slowest stage's, each decode round's pp x the slowest
  stage's over the expected rounds (generate_all_to_all_s); 0 at ep 1.
"""

from __future__ import annotations

import numpy as np

from costmodel.fsdp_cost import inference_exposed_s
from costmodel.roofline import memory_time_s
from costmodel.stage_timer import StageTimer
from planner.domain.decode_policy import stop_check_interval_steps
from planner.domain.layout import Execution
from planner.domain.workflow import BatchSpec


def wave_rows(ex: Execution, b: int) -> np.ndarray:
    """Rows of each decode wave over all dp replicas: dp x (micro-batches in it) x b."""
    waves = -(-ex.micro_batches // ex.pp)
    per_wave = np.full(waves, ex.pp)
    per_wave[-1] = ex.micro_batches - (waves - 1) * ex.pp
    return ex.dp * per_wave * b


def prefill_step_s(st: StageTimer, b: int, batch: BatchSpec) -> float:
    """One stage's prefill of b prompts padded to their longest, and its send, in the
    expectation over that longest."""
    prompts = batch.prompt_lengths
    widths = prompts.support.astype(float)
    step = st.max_stage_s("prefill", b, widths) + st.send_s(b, widths)
    return float(np.dot(prompts.longest_pmf(b), np.broadcast_to(step, widths.shape)))


def prefill_s(st: StageTimer, b: int, batch: BatchSpec) -> float:
    return (st.ex.pp + st.ex.micro_batches - 1) * prefill_step_s(st, b, batch)


# Bytes per (row, token id of the rank's vocabulary slice) of the counter-based Gumbel noise
# of a sampled step (runtime/vocab_parallel.py gumbel_noise): the arange of ids, the xor with
# the row's hash, the hash's 11 ops, the 24-bit extraction (2), the float conversion and
# scaling (3) and the two log / negations (4): 21 element-wise passes, each reading and
# writing 4 bytes.
SAMPLING_NOISE_BYTES_PER_TOKEN_ID = 21 * 8


def sampling_noise_s(st: StageTimer, b: int) -> float:
    """Seconds of one sampled step's noise on the last stage: b x vocab / tp ids at the
    memory bandwidth (a streaming kernel per pass, costmodel.roofline.memory_time_s), scaled
    like every compute time of the call by a calibration (StageTimer.knobs)."""
    hardware = st.timers[-1][0].hardware
    elements = b * st.role.spec.vocab_size / st.ex.tp
    seconds = memory_time_s(elements * SAMPLING_NOISE_BYTES_PER_TOKEN_ID, hardware)
    return float(seconds) * st.knobs.compute_scale


# Memoised decode_running: the search prices thousands of layouts whose waves have the same
# rows (dp x micro-batches in the wave x b) on the same kind of hardware. Keyed by the
# identity of the response length distribution, each entry holding it so that its id names
# it while the entry lives (as stage_timer's _TIMER_PARTS), and by the waves' distinct row
# counts. Bounded by the bytes of its arrays (one row count: gen_len floats, 8 KiB at 1,024
# tokens), cleared when full.
RUNNING_MEMO_BYTES = 256 << 20
_RUNNING_MEMO: dict[tuple, tuple] = {}
_running_memo_bytes = 0


def decode_running(st: StageTimer, b: int, batch: BatchSpec) -> tuple[np.ndarray, np.ndarray]:
    """(waves, running): P(step s runs) of a decode wave (module docstring) of each
    distinct row count of the call's waves, array [distinct, gen_len - 1] (memoised;
    read-only), and how many waves have that count. The waves but the last have equal rows,
    so there are one or two."""
    global _running_memo_bytes
    lengths = batch.gen_lengths
    interval = stop_check_interval_steps(st.timers[-1][0].hardware.kind)
    rows, waves = np.unique(wave_rows(st.ex, b), return_counts=True)
    key = (id(lengths), batch.gen_len, interval, rows.tobytes())
    hit = _RUNNING_MEMO.get(key)
    if hit is not None:
        return waves, hit[1]
    if _running_memo_bytes >= RUNNING_MEMO_BYTES:
        _RUNNING_MEMO.clear()
        _running_memo_bytes = 0
    running = np.stack([drain_running(lengths, batch.gen_len, interval, int(r)) for r in rows])
    running.setflags(write=False)
    _RUNNING_MEMO[key] = (lengths, running)
    _running_memo_bytes += running.nbytes
    return waves, running


def decode_rounds(st: StageTimer, b: int, batch: BatchSpec) -> float:
    """Expected decode rounds of a static generate call: sum over its waves and steps of
    P(step s runs) (decode_running)."""
    waves, running = decode_running(st, b, batch)
    return float(waves @ running.sum(axis=1))


def decode_s(st: StageTimer, b: int, batch: BatchSpec, sampled: bool,
             prompt_rows: int | None = None) -> float:
    """Static decode (module docstring); attention over the widest prompt of `prompt_rows`
    rows (default b: the micro-batch's own)."""
    steps = np.arange(1, batch.gen_len)
    widest = batch.prompt_lengths.expected_longest(b if prompt_rows is None else prompt_rows)
    contexts = float(widest) + steps
    noise = sampling_noise_s(st, b) if sampled else 0.0
    round_s = st.ex.pp * (st.max_stage_s("decode", b, contexts, last_stage_extra_s=noise)
                          + st.send_s(b, 1))
    waves, running = decode_running(st, b, batch)
    return float(waves @ (running @ np.broadcast_to(round_s, steps.shape)))


def lockstep(lengths) -> bool:
    """Whether every row has one length (a point mass): continuous slots then refill in
    lockstep and the call runs static's schedule (module docstring)."""
    return len(lengths.support) == 1


def continuous_groups(ex: Execution) -> int:
    """Slot groups of a continuous generate call per replica: min(pp, micro-batches)."""
    return min(ex.pp, ex.micro_batches)


def refilled_rows(ex: Execution, b: int) -> int:
    """Prompts per replica prefilled into a slot during the decode: (m - G) x b."""
    return (ex.micro_batches - continuous_groups(ex)) * b


def expected_occupancy(lengths, interval: int) -> float:
    """E[O] = k sum_{j >= 0} (1 - F(j k)): rounds a row holds its slot (module docstring)."""
    checks = np.arange(0, lengths.max_len, interval)
    return float(interval * np.sum(1.0 - lengths.cdf(checks)))


def refill_forwards(lengths, ex: Execution, b: int, interval: int) -> float:
    """Expected refill prefills (forwards) of a continuous call per replica: a group's
    steady rounds, (m / G - 1) E[O], hold (m / G - 1) E[O] / k checks; at each, a slot's
    row ends with probability k / E[O] (the renewal rate of rows that hold a slot E[O]
    rounds), so some of the b slots is refilled, in one prefill, with probability
    1 - (1 - k / E[O])^b (slots independent). At most (m - G) b, one per refilled row."""
    occupancy = expected_occupancy(lengths, interval)
    rate = min(1.0, interval / occupancy)
    checks = (ex.micro_batches - continuous_groups(ex)) * occupancy / interval
    return checks * (1.0 - (1.0 - rate) ** b)


def expected_longest_age(lengths, slots: int) -> float:
    """E[longest of `slots` equilibrium ages]: sum_{a >= 1} 1 - (1 - T(a))^slots with
    T(a) = sum_{y >= a} P(L >= y) / E[L] (module docstring)."""
    survival = 1.0 - np.concatenate(([0.0], lengths.cdf_by_length[:-1]))   # P(L >= y)
    tail = np.cumsum(survival[::-1])[::-1] / survival.sum()                  # T(1), T(2)...
    return float(np.sum(1.0 - (1.0 - np.clip(tail, 0.0, 1.0)) ** slots))


def drain_running(lengths, gen_len: int, interval: int, rows: int) -> np.ndarray:
    """P(step s runs), s = 1 .. gen_len - 1, of a wave of `rows` rows (module docstring):
    step s runs unless every row had stopped at the last check before it (F(0) = 0: no
    check yet)."""
    steps = np.arange(1, gen_len)
    return 1.0 - lengths.cdf(steps // interval * interval) ** float(rows)


def continuous_decode_rounds(lengths, micro_batches: int, pp: int, dp: int, rows: int,
                             interval: int, gen_len: int | None = None) -> float:
    """Expected decode rounds of a continuous generate call (module docstring):
    (m / G - 1) E[O] + sum_s P(step s runs) over the last wave's dp x G x rows rows;
    under fixed lengths (lockstep) static's, ceil(m / pp) waves of them."""
    groups = min(pp, micro_batches)
    gen_len = lengths.max_len if gen_len is None else gen_len
    drain = float(np.sum(drain_running(lengths, gen_len, interval, dp * groups * rows)))
    if lockstep(lengths):
        return -(-micro_batches // pp) * drain
    return (micro_batches / groups - 1.0) * expected_occupancy(lengths, interval) + drain


def continuous_decode_phases_s(st: StageTimer, b: int, batch: BatchSpec, sampled: bool
                               ) -> dict[str, float]:
    """decode and decode_drain of a continuous generate call (module docstring)."""
    ex = st.ex
    groups = continuous_groups(ex)
    interval = stop_check_interval_steps(st.timers[-1][0].hardware.kind)
    noise = sampling_noise_s(st, b) if sampled else 0.0
    widest = float(batch.prompt_lengths.expected_longest(ex.micro_batches * b))

    def round_s(contexts):
        return ex.pp * (st.max_stage_s("decode", b, contexts, last_stage_extra_s=noise)
                        + st.send_s(b, 1))

    lengths = batch.gen_lengths
    steady_rounds = (ex.micro_batches / groups - 1.0) * expected_occupancy(lengths, interval)
    steady = steady_rounds * float(np.asarray(
        round_s(widest + expected_longest_age(lengths, b))))
    steps = np.arange(1, batch.gen_len)
    running = drain_running(lengths, batch.gen_len, interval, ex.dp * groups * b)
    drain = float(np.dot(running, np.broadcast_to(round_s(widest + steps), steps.shape)))
    return {"decode": steady, "decode_drain": drain}


def continuous_prefill_phases_s(st: StageTimer, b: int, batch: BatchSpec, sampled: bool
                                ) -> dict[str, float]:
    """prefill (the first fill) and refill_prefill of a continuous generate call (module
    docstring), each with its first tokens' noise when sampled."""
    ex = st.ex
    groups = continuous_groups(ex)
    first = (ex.pp + groups - 1) * (prefill_step_s(st, b, batch)
                                    + (sampling_noise_s(st, b) if sampled else 0.0))
    one_row = ex.pp * prefill_step_s(st, 1, batch) + (sampling_noise_s(st, 1) if sampled
                                                      else 0.0)
    return {"prefill": first, "refill_prefill": refilled_rows(ex, b) * one_row}


def continuous_all_to_all_s(st: StageTimer, b: int, batch: BatchSpec) -> float:
    """The all-to-alls of a continuous generate call of a mixture-of-experts model: the
    first fill's, the refills' (one row each, pp stages) and every decode round's."""
    ex = st.ex
    prompts = batch.prompt_lengths
    widths = prompts.support.astype(float)

    def prefill_a2a(rows):
        per_width = np.broadcast_to(st.max_all_to_all_s(("prefill",), rows, widths),
                                    widths.shape)
        return float(np.dot(prompts.longest_pmf(rows), per_width))

    interval = stop_check_interval_steps(st.timers[-1][0].hardware.kind)
    rounds = continuous_decode_rounds(batch.gen_lengths, ex.micro_batches, ex.pp, ex.dp, b,
                                      interval, batch.gen_len)
    groups = continuous_groups(ex)
    return ((ex.pp + groups - 1) * prefill_a2a(b)
            + refilled_rows(ex, b) * ex.pp * prefill_a2a(1)
            + rounds * ex.pp * float(st.max_all_to_all_s(("decode",), b, 1.0)))


def generate_all_to_all_s(st: StageTimer, b: int, batch: BatchSpec) -> float:
    """The all-to-alls of a generate call of a mixture-of-experts model (phase
    "all_to_all", priced apart from prefill and decode): the prefill's, in the same
    expectation over the longest prompt, and each decode round's, pp stages' worth of the
    slowest stage's (a round passes every stage; a decode all-to-all does not depend on the
    context) over the expected rounds."""
    ex = st.ex
    prompts = batch.prompt_lengths
    widths = prompts.support.astype(float)
    prefill = np.broadcast_to(st.max_all_to_all_s(("prefill",), b, widths), widths.shape)
    prefill_s = (ex.pp + ex.micro_batches - 1) * float(np.dot(prompts.longest_pmf(b),
                                                              prefill))
    rounds = decode_rounds(st, b, batch)
    decode_s = rounds * ex.pp * float(st.max_all_to_all_s(("decode",), b, 1.0))
    return prefill_s + decode_s


def generate_phases_s(st: StageTimer, b: int, batch: BatchSpec, sampled: bool
                      ) -> dict[str, float]:
    """Phases of a generate call; `sampled` (not greedy) adds the noise of every sampled step
    (the first token's with the prefill, each decode round's on its last stage)."""
    continuous = st.ex.decode_batching == "continuous" and not lockstep(batch.gen_lengths)
    if continuous:
        phases = {**continuous_prefill_phases_s(st, b, batch, sampled),
                  **continuous_decode_phases_s(st, b, batch, sampled)}
    else:   # static, or continuous in lockstep: static's schedule (module docstring)
        prompt_rows = st.ex.micro_batches * b if st.ex.decode_batching == "continuous" else b
        first_noise = (st.ex.pp + st.ex.micro_batches - 1) * sampling_noise_s(st, b) \
            if sampled else 0.0
        phases = {"prefill": prefill_s(st, b, batch) + first_noise,
                  "decode": decode_s(st, b, batch, sampled, prompt_rows)}
    if "logprobs" in st.call_outputs:
        phases["logprobs"] = inference_phases_s(st, b, batch)["forward"]
    if st.role.spec.moe is not None:
        logprobs = inference_all_to_all_s(st, b, batch) if "logprobs" in st.call_outputs \
            else 0.0
        decode = continuous_all_to_all_s if continuous else generate_all_to_all_s
        phases["all_to_all"] = decode(st, b, batch) + logprobs
    return phases


def inference_all_to_all_s(st: StageTimer, b: int, batch: BatchSpec) -> float:
    """The all-to-alls of one forward pass over the call's micro-batches (inference, a
    generate call's logprobs): (pp + m - 1) x the slowest stage's of one micro-batch."""
    ex = st.ex
    return float((ex.pp + ex.micro_batches - 1)
                 * st.max_all_to_all_s(("forward",), b, batch.seq_len))


def inference_phases_s(st: StageTimer, b: int, batch: BatchSpec) -> dict[str, float]:
    ex = st.ex
    step = st.max_stage_s("forward", b, batch.seq_len) + st.send_s(b, batch.seq_len)
    phases = {"forward": float((ex.pp + ex.micro_batches - 1) * step)}
    if ex.shard_parameters_over_dp:
        phases["fsdp_forward"] = inference_exposed_s(st, b, batch.seq_len, ex.micro_batches)
    if st.role.spec.moe is not None:
        phases["all_to_all"] = inference_all_to_all_s(st, b, batch)
    return phases
