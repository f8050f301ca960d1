"""Phases of generate and inference calls, from a StageTimer.

- generate: prefill (pp + m - 1) x (stage prefill + send), then decoding in waves of pp
  micro-batches (ceil(m / pp) waves, so a device holds the KV cache of min(m, pp)
  micro-batches); within a wave the micro-batches rotate through the stages, each round
  advancing every one of them by a token in pp x (stage decode + send). gen_len rounds per
  wave, the context growing from prompt_len + 1 to prompt_len + gen_len. When the call
  outputs `logprobs`, the runtime recomputes them with one forward pass of the generated
  sequences (runtime/executor/calls.py run_generate): phase "logprobs", priced as inference.
- inference: one forward, (pp + m - 1) x (stage forward + send).
"""

from __future__ import annotations

import numpy as np

from costmodel.stage_timer import StageTimer
from planner.domain.workflow import BatchSpec


def generate_phases_s(st: StageTimer, b: int, batch: BatchSpec) -> dict[str, float]:
    ex = st.ex
    prefill = (ex.pp + ex.micro_batches - 1) * (st.max_stage_s("prefill", b, batch.prompt_len)
                                                 + st.send_s(b, batch.prompt_len))
    contexts = batch.prompt_len + np.arange(1, batch.gen_len + 1, dtype=float)
    waves = -(-ex.micro_batches // ex.pp)
    rounds = waves * ex.pp * (st.max_stage_s("decode", b, contexts) + st.send_s(b, 1))
    phases = {"prefill": float(prefill), "decode": float(np.sum(rounds))}
    if "logprobs" in st.call_outputs:
        phases["logprobs"] = inference_phases_s(st, b, batch)["forward"]
    return phases


def inference_phases_s(st: StageTimer, b: int, batch: BatchSpec) -> dict[str, float]:
    ex = st.ex
    step = st.max_stage_s("forward", b, batch.seq_len) + st.send_s(b, batch.seq_len)
    return {"forward": float((ex.pp + ex.micro_batches - 1) * step)}
