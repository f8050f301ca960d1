"""The shipped llama-tiny CPU profile table against a fresh measurement on this machine, now.

For a few grid points of profiles/cpu/<llama-tiny shape>.yaml (block forward, backward and
decode at tp 1 and 2, at batch x length 1 x 32, 4 x 128 and 16 x 512; decode's length is the
cached context) the time is measured again with the profiler's own protocol (one thread,
warm-up, then the median of swept runs: runtime.profiling.profiler.time_trials_s on
GRIDS["cpu"]). Prints one line per point: the shipped ms, the fresh ms, their ratio
(fresh / shipped) and the 1-minute load average when the point was measured, then the
geometric mean and range of the ratios.

Ratios near 1 on an idle machine say the table still describes this machine; ratios well
away from 1 there say re-run `plan profile --model llama-tiny`. On a busy machine the
one-thread times stretch with the load, which is why this comparison is a benchmark and not
a test.

    .venv/bin/python benchmarks/profile_agreement.py
"""

from __future__ import annotations

import math
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from costmodel.profile_table import load_profile, model_shape_key  # noqa: E402
from planner.domain.modelspec import PRESETS  # noqa: E402
from planner.domain.paths import PROFILES_DIR  # noqa: E402
from runtime.profiling.parts import ShardBench  # noqa: E402
from runtime.profiling.profiler import (  # noqa: E402
    CPU_THREADS,
    GRIDS,
    cpu_threads,
    device_setup,
    time_trials_s,
)

MODEL = "llama-tiny"
TP_DEGREES = (1, 2)
OPS = ("forward", "backward", "decode")
PART = "block"
POINTS = ((1, 32), (4, 128), (16, 512))  # (batch, length), grid points of the shipped table


def load_average_1min() -> float:
    return os.getloadavg()[0]


def measure_points(spec, tp: int, op: str, setup) -> list[tuple[float, float]]:
    """(fresh seconds, load average after it) of each point of POINTS for one tp and op,
    swept together as the profiler sweeps one entry's points."""
    bench = ShardBench(spec, tp, setup.config)
    trials = [bench.trial(PART, op, batch, length) for batch, length in POINTS]
    with cpu_threads(CPU_THREADS):
        fresh = time_trials_s(trials, GRIDS["cpu"], setup.sync)
    load = load_average_1min()
    return [(seconds, load) for seconds in fresh]


def main() -> None:
    spec = PRESETS[MODEL]
    path = PROFILES_DIR / "cpu" / f"{model_shape_key(spec)}.yaml"
    lookup = load_profile(path)
    setup = device_setup("cpu")
    print(f"{path.name}: recorded {lookup.table.recorded} on {lookup.table.host!r}; "
          f"measuring on {socket.gethostname()!r} ({os.cpu_count()} CPUs), "
          f"load average {load_average_1min():.2f} at start")
    print(f"{'point':<30} {'shipped ms':>11} {'fresh ms':>10} {'ratio':>7} {'load 1m':>8}")
    ratios = []
    for tp in TP_DEGREES:
        for op in OPS:
            measured = measure_points(spec, tp, op, setup)
            for (batch, length), (fresh_s, load) in zip(POINTS, measured):
                shipped_s = float(lookup.time_s(op, PART, tp, batch, length))
                ratio = fresh_s / shipped_s
                ratios.append(ratio)
                label = f"{PART} {op} tp {tp} b{batch} l{length}"
                print(f"{label:<30} {shipped_s * 1e3:>11.3f} {fresh_s * 1e3:>10.3f} "
                      f"{ratio:>7.2f} {load:>8.2f}")
    geometric_mean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"ratio fresh / shipped: geometric mean {geometric_mean:.2f}, "
          f"range {min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} points; "
          f"load average {load_average_1min():.2f} at end")


if __name__ == "__main__":
    main()
