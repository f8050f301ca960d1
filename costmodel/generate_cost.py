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


def prefill_s(st: StageTimer, b: int, batch: BatchSpec) -> float:
    prompts = batch.prompt_lengths
    widths = prompts.support.astype(float)
    step = st.max_stage_s("prefill", b, widths) + st.send_s(b, widths)
    expected = float(np.dot(prompts.longest_pmf(b), np.broadcast_to(step, widths.shape)))
    return (st.ex.pp + st.ex.micro_batches - 1) * expected


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


def decode_running(st: StageTimer, b: int, batch: BatchSpec) -> np.ndarray:
    """P(step s runs) of each decode wave (module docstring): array [waves, gen_len - 1]."""
    steps = np.arange(1, batch.gen_len)
    interval = stop_check_interval_steps(st.timers[-1][0].hardware.kind)
    done = batch.gen_lengths.cdf(steps // interval * interval)   # F(0) = 0: no check yet
    # the waves but the last have equal rows: each distinct count's powers once
    rows, wave_of = np.unique(wave_rows(st.ex, b), return_inverse=True)
    return (1.0 - done[None, :] ** rows.astype(float)[:, None])[wave_of]


def decode_s(st: StageTimer, b: int, batch: BatchSpec, sampled: bool) -> float:
    steps = np.arange(1, batch.gen_len)
    contexts = float(batch.prompt_lengths.expected_longest(b)) + steps
    noise = sampling_noise_s(st, b) if sampled else 0.0
    round_s = st.ex.pp * (st.max_stage_s("decode", b, contexts, last_stage_extra_s=noise)
                          + st.send_s(b, 1))
    running = decode_running(st, b, batch)
    return float(np.sum(running @ np.broadcast_to(round_s, steps.shape)))


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
    rounds = float(np.sum(decode_running(st, b, batch)))
    decode_s = rounds * ex.pp * float(st.max_all_to_all_s(("decode",), b, 1.0))
    return prefill_s + decode_s


def generate_phases_s(st: StageTimer, b: int, batch: BatchSpec, sampled: bool
                      ) -> dict[str, float]:
    """Phases of a generate call; `sampled` (not greedy) adds the noise of every sampled step
    (the first token's with the prefill, each decode round's on its last stage)."""
    first_noise = (st.ex.pp + st.ex.micro_batches - 1) * sampling_noise_s(st, b) \
        if sampled else 0.0
    phases = {"prefill": prefill_s(st, b, batch) + first_noise,
              "decode": decode_s(st, b, batch, sampled)}
    if "logprobs" in st.call_outputs:
        phases["logprobs"] = inference_phases_s(st, b, batch)["forward"]
    if st.role.spec.moe is not None:
        logprobs = inference_all_to_all_s(st, b, batch) if "logprobs" in st.call_outputs \
            else 0.0
        phases["all_to_all"] = generate_all_to_all_s(st, b, batch) + logprobs
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
