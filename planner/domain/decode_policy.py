"""How often the decode loop looks at whether every row of a micro-batch has stopped.

One truth for the runtime (runtime/generate.py) and the cost model
(costmodel/generate_cost.py). Deciding to stop needs the finished flags on the host: on a
GPU that is a stream synchronisation, which stalls the kernel queue every step (the CPU
cannot queue step t+1 before step t's flags arrive). Checking every `interval` steps keeps
the queue full between checks; the price is up to interval - 1 extra steps after the last
row stops (their tokens are padding, as for rows that stopped earlier): step s runs unless
every row had stopped at the check at floor(s / interval) x interval, the rule the cost
model prices (costmodel/generate_cost.py decode_s). vLLM and TensorRT-LLM avoid the
question by scheduling rows independently; HF transformers' generate checks every step.

On CPU the flags are on the host already (no synchronisation), so every step is checked.
On CUDA 16: one check per 16 steps makes the stall per step 1/16 of a synchronisation
(~10-20 us each, far below a 7B decode step's milliseconds) while the expected padding is
about 7.5 steps per micro-batch, under 1% of a 1,024-token response.
"""

from __future__ import annotations

STOP_CHECK_INTERVAL_STEPS = {"cpu": 1, "cuda": 16}


def stop_check_interval_steps(device_kind: str) -> int:
    """Decode steps between stop checks on a device of `device_kind` (cpu | cuda)."""
    return STOP_CHECK_INTERVAL_STEPS[device_kind]

