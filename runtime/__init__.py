"""Runtime: torch.distributed engine of plans (LLaMA-family model under dp x tp x pp).

What the executor calls (every rank of the world, the same calls in the same order):

    ctxs = parallel_context.create_contexts([Placement(devices, dp, tp, pp), ...])  # all ranks
    model = ParallelModel.from_seed(spec, "lm" | "value", ctx, seed, device)
    model = ParallelModel.from_hf(directory, spec, head, ctx, device)
    generate(model, prompts: list[MicroBatch], GenerationConfig) -> list[Generation]
    inference(model, micro_batches, with_entropy=False) -> list[ModelOutputs]
    optimizer = Adam(model.params, AdamConfig(...), ctx, shard_over_dp=False,
                     num_kv_heads=spec.num_kv_heads)
    train_step(model, optimizer, micro_batches, loss_fn, num_minibatches,
               recompute) -> list[TrainStats]
        (the execution's policy: what the decoder blocks rerun in backward, as priced)

`model.params` maps HF names to this rank's shards; `planner.sharding.param_shards` (pure, no torch,
shared with the cost model) says which slice of which full tensor each (tp_rank, pp_stage)
holds, and `planner.sharding.transfer_schedule` which device sends what in a reallocation. `launch.run_distributed` runs a function on N local gloo
processes for tests and benchmarks.
"""
