"""`plan profile`: measure per-part compute times of a model shape into a profile table."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from planner.domain.errors import InputError
from planner.domain.model_files import resolve_model
from planner.domain.output_files import check_writable_path
from planner.domain.paths import PROFILES_DIR


def parse_tp_degrees(text: str) -> list[int]:
    """`1,2,4` -> [1, 2, 4] (sorted, unique); InputError on anything else."""
    try:
        degrees = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise InputError(f"--tp: {text!r} is not a comma-separated list of integers, "
                         f"e.g. 1,2,4") from None
    if not degrees:
        raise InputError("--tp: give at least one degree, e.g. 1,2,4")
    return degrees


def run(args: argparse.Namespace) -> int:
    check_writable_path(args.out, "--out")
    # torch comes with the profiler: imported here so the other commands start quickly
    from costmodel.profile_table import model_shape_key
    from runtime.profiling.profiler import (
        GRIDS,
        check_tp_degrees,
        default_tp_degrees,
        device_setup,
        measure_profile,
        save_profile,
    )

    try:
        spec = resolve_model(args.model)
    except ValueError as err:
        raise InputError(f"--model: {err}") from None
    setup = device_setup(args.device, args.hardware)
    degrees = parse_tp_degrees(args.tp) if args.tp else default_tp_degrees(spec)
    check_tp_degrees(spec, degrees)
    grid = GRIDS["quick" if args.quick else args.device]
    out = Path(args.out) if args.out else (
        PROFILES_DIR / setup.hardware / f"{model_shape_key(spec)}.yaml")
    print(f"plan profile: {spec.name} at tp {degrees} on {setup.hardware} "
          f"({setup.processor.describe()}), {setup.note}", file=sys.stderr)
    start = time.perf_counter()
    table = measure_profile(spec, degrees, setup, grid)
    save_profile(table, out)
    print(f"wrote {out} ({time.perf_counter() - start:.1f} s)")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "profile", help="measure per-layer compute times into a profile table",
        description="Time the runtime's own layers (embedding, one transformer block, lm and "
                    "value heads) with torch on this machine, at each tensor-parallel shard "
                    "shape (one process holding heads/tp, kv_heads/tp, intermediate/tp, "
                    "vocab/tp), for forward, backward, optimizer step, generation prefill and "
                    "one decode step over a grid of batch sizes and sequence (decode: cached "
                    "context) lengths; each point is the median of several runs after a "
                    "warm-up. CPU measures fp32 on one thread (torch.set_num_threads(1)), as "
                    "one gloo process per core runs; CUDA measures bf16 on GPU 0 with "
                    "synchronisation around each run. The table records the processor "
                    "(CPU model name and logical cores, or GPU name and driver); `plan "
                    "estimate` and `plan search` say when the machine at hand has another. "
                    "Writes profiles/<device>/<model-shape>.yaml (or --out), which `plan "
                    "estimate` and `plan search` then use instead of the roofline. Exit 0 "
                    "on success, 2 on bad input.")
    parser.add_argument("--model", required=True, metavar="NAME",
                        help="model preset (e.g. llama-tiny, llama-7b) or a directory with an "
                             "HF config.json")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where to measure (default cpu)")
    parser.add_argument("--tp", metavar="1,2,4",
                        help="tensor-parallel degrees to measure (default: those of 1,2,4,8 "
                             "that divide the model's heads, kv heads, intermediate size and "
                             "vocabulary)")
    parser.add_argument("--hardware", metavar="NAME",
                        help="profiles/hardware/<NAME>.yaml this machine is (default: cpu, or "
                             "guessed from the GPU's name)")
    parser.add_argument("--out", metavar="FILE",
                        help="where to write the table (default "
                             "profiles/<device>/<model-shape>.yaml)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny grid measured in seconds (tests and smoke checks)")
    parser.set_defaults(handler=run)
