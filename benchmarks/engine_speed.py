"""Runtime engine speed: tokens per second of generate, inference and train per layout.

Spawns WORLD_SIZE local gloo processes (one thread each) once and runs every layout in turn on
the first dp*tp*pp ranks (the others wait at a barrier). Per layout and operation: one warm-up
call, then REPEATS timed calls between world barriers; prints one line per layout.
Tokens counted: generate = batch x new tokens (no stop tokens, so every step runs); inference
and train = batch x sequence length. Random-init model, fp32, CPU.

    .venv/bin/python benchmarks/engine_speed.py [--model llama-tiny] [--batch 16] ...
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.launch import run_distributed  # noqa: E402

WORLD_SIZE = 4
REPEATS = 3
OPERATIONS = 3  # generate, inference, train
LAYOUTS = [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2), (2, 2, 1), (1, 2, 2), (2, 1, 2),
           (1, 4, 1), (1, 1, 4)]


def _timed(fn, world_barrier) -> float:
    fn()  # warm-up
    world_barrier()
    start = time.perf_counter()
    for _ in range(REPEATS):
        fn()
    world_barrier()
    return (time.perf_counter() - start) / REPEATS


def measure(rank: int, world_size: int, options: dict) -> list[tuple]:
    import torch
    import torch.distributed as dist

    from planner.domain.model_files import resolve_model
    from planner.domain.placement import Placement
    from runtime.batch import MicroBatch
    from runtime.device import CPU_FP32
    from runtime.generate import GenerationConfig, generate
    from runtime.inference import inference
    from runtime.model import ParallelModel
    from runtime.optimizer import Adam, AdamConfig
    from runtime.parallel_context import create_contexts
    from runtime.train import train_step

    spec = resolve_model(options["model"])
    batch, seq, new, micro = (options["batch"], options["seq_len"], options["new_tokens"],
                              options["micro_batch"])
    layouts = [Placement(tuple(range(d * t * p)), d, t, p) for d, t, p in LAYOUTS]
    contexts = create_contexts(layouts)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, spec.vocab_size, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    config = GenerationConfig(max_new_tokens=new, pad_token_id=0)

    def loss_fn(outputs, mb):
        return -(outputs.logprobs * mb.loss_mask).sum()

    lines = []
    for layout, ctx in zip(layouts, contexts):
        if ctx is None:  # match the members' two world barriers per timed operation
            for _ in range(2 * OPERATIONS):
                dist.barrier()
            continue
        rows = slice(ctx.coord.dp_rank * batch // layout.dp,
                     (ctx.coord.dp_rank + 1) * batch // layout.dp)
        mbs = [MicroBatch(ids[rows][i:i + micro], mask[rows][i:i + micro],
                          torch.ones(min(micro, batch // layout.dp - i), seq - 1))
               for i in range(0, batch // layout.dp, micro)]
        prompts = [MicroBatch(mb.input_ids[:, :options["prompt_len"]],
                              mb.attention_mask[:, :options["prompt_len"]]) for mb in mbs]
        model = ParallelModel.from_seed(spec, "lm", ctx, 0, CPU_FP32)
        optimizer = Adam(model.params, AdamConfig(lr=1e-5), ctx, num_kv_heads=spec.num_kv_heads)
        gen_s = _timed(lambda: generate(model, prompts, config), dist.barrier)
        inf_s = _timed(lambda: inference(model, mbs), dist.barrier)
        train_s = _timed(lambda: train_step(model, optimizer, mbs, loss_fn), dist.barrier)
        lines.append((layout.dp, layout.tp, layout.pp, batch * new / gen_s, batch * seq / inf_s,
                      batch * seq / train_s))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-tiny")
    parser.add_argument("--batch", type=int, default=16, help="sequences per call, all replicas")
    parser.add_argument("--micro-batch", type=int, default=4, help="sequences per micro-batch")
    parser.add_argument("--seq-len", type=int, default=128, help="inference/train length")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    options = {"model": args.model, "batch": args.batch, "micro_batch": args.micro_batch,
               "seq_len": args.seq_len, "prompt_len": args.prompt_len,
               "new_tokens": args.new_tokens}
    lines = run_distributed(measure, WORLD_SIZE, (options,), timeout_s=1800)[0]
    print(f"# {args.model}, batch {args.batch}, micro-batch {args.micro_batch}, "
          f"prompt {args.prompt_len} + {args.new_tokens} new, seq {args.seq_len}, "
          f"fp32 CPU gloo, {WORLD_SIZE} processes x 1 thread")
    for dp, tp, pp, gen, inf, train in lines:
        print(f"dp={dp} tp={tp} pp={pp}: generate {gen:8.1f} tok/s  inference {inf:8.1f} "
              f"tok/s  train {train:8.1f} tok/s")


if __name__ == "__main__":
    main()
