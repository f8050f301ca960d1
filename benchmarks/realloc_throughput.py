"""Reallocation throughput vs the measured point-to-point bandwidth (4 local gloo processes).

Measures, in one run: (1) point-to-point bandwidth between two processes (rank 0 -> rank 2,
64 MiB fp32, best of REPEATS); (2) reallocating llama-small's parameters (fp32) from tp 2 on
ranks {0, 1} to dp 2 on ranks {2, 3} (a disjoint move: both destinations receive the whole
model) by runtime.executor.realloc executing planner.sharding.transfer_schedule.param_schedule,
best of REPEATS. Prints one line: bytes moved, seconds, bytes/s, and the fraction of the
point-to-point bandwidth (each receiver has one incoming link; two receive at once, so the
ideal is 2 x p2p when links do not share the two cores).

    .venv/bin/python benchmarks/realloc_throughput.py
"""

from __future__ import annotations

import time

REPEATS = 3
P2P_BYTES = 64 * 2 ** 20


def _worker(rank: int, world_size: int) -> dict:
    import torch
    import torch.distributed as dist

    from planner.domain.modelspec import PRESETS
    from planner.domain.placement import Placement
    from planner.sharding.transfer_schedule import param_schedule
    from runtime.device import CPU_FP32
    from runtime.executor.realloc import empty_shards, holding, reallocate
    from runtime.params import init_params

    buffer = torch.ones(P2P_BYTES // 4)
    p2p = []
    for _ in range(REPEATS):
        dist.barrier()
        start = time.perf_counter()
        if rank == 0:
            dist.send(buffer, dst=2)
        elif rank == 2:
            dist.recv(buffer, src=0)
        dist.barrier()
        p2p.append(time.perf_counter() - start)
    spec = PRESETS["llama-small"]
    src, dst = Placement((0, 1), 1, 2, 1), Placement((2, 3), 2, 1, 1)
    schedule = param_schedule(spec, "lm", src, dst, (0, 0, 0, 0))
    mine_src = holding(src, rank)
    params = (init_params(spec, "lm", mine_src.tp_rank, 2, 0, 1, 0, CPU_FP32)
              if mine_src else None)
    mine_dst = holding(dst, rank)
    target = (empty_shards(spec, "lm", dst, mine_dst, torch.float32, torch.device("cpu"))
              if mine_dst else None)
    times, sent = [], 0
    for _ in range(REPEATS):
        dist.barrier()
        start = time.perf_counter()
        sent = reallocate(schedule, spec, "lm", rank, (src, params) if params else None,
                          (dst, target) if target else None)
        dist.barrier()
        times.append(time.perf_counter() - start)
    total = torch.tensor([float(sent)])
    dist.all_reduce(total)
    return {"p2p_s": min(p2p), "realloc_s": min(times), "bytes": float(total)}


def main() -> None:
    from runtime.launch import run_distributed

    result = run_distributed(_worker, 4, timeout_s=600)[0]
    p2p_bw = P2P_BYTES / result["p2p_s"]
    realloc_bw = result["bytes"] / result["realloc_s"]
    print(f"realloc llama-small tp2{{0,1}} -> dp2{{2,3}}: {result['bytes'] / 1e6:.1f} MB in "
          f"{result['realloc_s']:.3f} s = {realloc_bw / 1e9:.2f} GB/s; p2p 64 MiB "
          f"{p2p_bw / 1e9:.2f} GB/s; realloc / p2p = {realloc_bw / p2p_bw:.2f}")


if __name__ == "__main__":
    main()
