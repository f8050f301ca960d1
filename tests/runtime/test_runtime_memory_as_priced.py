"""The engine keeps alive what the cost model prices (costmodel/memory.py), on one rank:
generation holds the KV caches of one wave of min(micro-batches, pp) micro-batches, the
prefill runs the LM head on each prompt's last token only, and inference holds one
micro-batch's logits at a time."""

from __future__ import annotations

import weakref

import numpy as np
import torch

from planner.domain.modelspec import PRESETS
from planner.domain.placement import Placement
from planner.sharding.rank_groups import placement_coordinate
from runtime import inference as inference_module
from runtime.batch import MicroBatch
from runtime.device import CPU_FP32
from runtime.generate import GenerationConfig, generate
from runtime.inference import inference
from runtime.model import ParallelModel
from runtime.parallel_context import Group, ParallelContext

TINY = PRESETS["llama-tiny"]
ONE_RANK = Group(handle=None, ranks=(0,))


def _one_rank_model() -> ParallelModel:
    layout = Placement(devices=(0,), dp=1, tp=1, pp=1)
    ctx = ParallelContext(layout=layout, global_rank=0, coord=placement_coordinate(layout, 0),
                          tp_group=ONE_RANK, dp_group=ONE_RANK, pp_group=ONE_RANK)
    return ParallelModel.from_seed(TINY, "lm", ctx, 5, CPU_FP32)


def _prompts(count: int, length: int = 6) -> list[MicroBatch]:
    generator = torch.Generator().manual_seed(1)
    return [MicroBatch(torch.randint(0, TINY.vocab_size, (2, length), generator=generator),
                       torch.ones(2, length, dtype=torch.long)) for _ in range(count)]


def test_generation_keeps_one_wave_of_kv_caches(monkeypatch):
    model = _one_rank_model()
    alive, most = [], [0]
    new_caches = ParallelModel.new_caches

    def counted(self, batch, slots):
        caches = new_caches(self, batch, slots)
        alive[:] = [ref for ref in alive if ref() is not None]
        alive.append(weakref.ref(caches[0].k))
        most[0] = max(most[0], len(alive))
        return caches

    monkeypatch.setattr(ParallelModel, "new_caches", counted)
    config = GenerationConfig(max_new_tokens=4, pad_token_id=0)
    generate(model, _prompts(4), config)
    assert most[0] == 1            # pp 1: one micro-batch's cache at a time, of four


def test_prefill_logits_are_the_last_prompt_token_only(monkeypatch):
    model = _one_rank_model()
    shapes = []
    head = ParallelModel._head

    def recorded(self, x):
        shapes.append(tuple(x.shape))
        return head(self, x)

    monkeypatch.setattr(ParallelModel, "_head", recorded)
    generate(model, _prompts(1, length=6), GenerationConfig(max_new_tokens=3, pad_token_id=0))
    assert shapes[0] == (2, 1, TINY.hidden_size) and len(shapes) == 3


def test_waves_and_the_last_token_head_give_the_same_tokens_as_one_batch():
    """Splitting into micro-batches (waves) changes nothing in greedy decoding."""
    model = _one_rank_model()
    config = GenerationConfig(max_new_tokens=5, pad_token_id=0)
    prompts = _prompts(3)
    split = torch.cat([g.tokens for g in generate(model, prompts, config)])
    whole = generate(model, [MicroBatch(torch.cat([p.input_ids for p in prompts]),
                                        torch.cat([p.attention_mask for p in prompts]))],
                     config)[0].tokens
    assert torch.equal(split, whole)


def test_inference_holds_one_micro_batch_of_logits(monkeypatch):
    model = _one_rank_model()
    alive, most = [], [0]
    reduce_calls = []
    run_stages = inference_module.run_stages

    def watched(model_, micro_batches, reduce):
        def tracking(out, mb):
            alive[:] = [ref for ref in alive if ref() is not None]
            alive.append(weakref.ref(out))
            most[0] = max(most[0], len(alive))
            reduce_calls.append(tuple(out.shape))
            return reduce(out, mb)
        return run_stages(model_, micro_batches, tracking)

    monkeypatch.setattr(inference_module, "run_stages", watched)
    outputs = inference(model, _prompts(4, length=8))
    assert len(outputs) == 4 and outputs[0].logprobs.shape == (2, 7)
    assert len(reduce_calls) == 4 and most[0] == 1


def _adam_bytes(adam) -> int:
    """Bytes the optimizer owns beside the weights and their gradient buffer."""
    owned = [adam.m, adam.v]
    if adam.master.data_ptr() != adam.flat_params.data_ptr():
        owned.append(adam.master)
    return sum(t.numel() * t.element_size() for t in owned)


def test_adam_keeps_the_priced_bytes_and_gradients_live_in_one_buffer():
    from costmodel.memory import optimizer_state_bytes_per_device
    from runtime.optimizer import Adam, AdamConfig

    model = _one_rank_model()
    numel = sum(p.numel() for p in model.params.values())
    adam = Adam(model.params, AdamConfig(lr=1e-3), model.ctx)
    priced = float(optimizer_state_bytes_per_device(TINY, "lm", 1, 1, 1, 4).sum())
    assert _adam_bytes(adam) == priced == 8 * numel     # fp32: the weights are the master
    grads = [p.grad for p in model.params.values()]
    assert all(g.data_ptr() >= adam.flat_grads.data_ptr() for g in grads)
    assert adam.flat_grads.numel() * adam.flat_grads.element_size() == 4 * numel


def test_adam_with_bf16_weights_keeps_an_fp32_master_of_twelve_bytes_in_all():
    from costmodel.memory import optimizer_state_bytes_per_device
    from runtime.optimizer import Adam, AdamConfig

    model = _one_rank_model()
    params = {n: p.detach().to(torch.bfloat16) for n, p in model.params.items()}
    numel = sum(p.numel() for p in params.values())
    adam = Adam(params, AdamConfig(lr=1e-3), model.ctx)
    priced = float(optimizer_state_bytes_per_device(TINY, "lm", 1, 1, 1, 2).sum())
    assert _adam_bytes(adam) == priced == 12 * numel
    before = adam.master.clone()
    for p in params.values():
        p.grad.fill_(1e-3)
    adam.step()
    assert not torch.equal(adam.master, before)           # the fp32 master moved, and the
    assert torch.equal(adam.flat_params, adam.master.to(torch.bfloat16))   # weights follow it


def _stepped(params: dict[str, torch.Tensor], chunk: int, monkeypatch) -> tuple:
    """Weights after two Adam steps with gradients of a fixed seed, the step done in chunks
    of `chunk` elements, and the live bytes the second step added (runtime/memory_meter.py)."""
    from runtime import optimizer as optimizer_module
    from runtime.memory_meter import LiveBytes

    monkeypatch.setattr(optimizer_module, "OPTIMIZER_CHUNK_ELEMENTS", chunk)
    params = {n: p.detach().clone() for n, p in params.items()}
    adam = optimizer_module.Adam(params, optimizer_module.AdamConfig(
        lr=1e-2, weight_decay=0.1, max_grad_norm=None), _one_rank_model().ctx)
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):
        for p in params.values():
            p.grad.copy_(torch.randn(p.shape, generator=generator))
        with LiveBytes(scan=True) as meter:
            norm = adam.step()
    return adam.flat_params.clone(), norm, meter.peak_bytes - meter.entry_bytes


def test_the_optimizer_step_in_chunks_updates_alike_and_holds_one_chunk(monkeypatch):
    """Chunking the step (planner.sharding.grad_buckets.OPTIMIZER_CHUNK_ELEMENTS) changes
    no weight (no clipping here: the norm, a sum of per-chunk sums, differs in its last
    bits) and bounds its fp32 temporaries by the chunk, as costmodel/memory.py prices."""
    from costmodel import memory as memory_module
    from costmodel.efficiency import ADAM_STEP_FP32_TEMPORARIES, ADAM_STEP_TEMPORARY_BYTES

    fp32 = dict(_one_rank_model().params)
    numel = sum(p.numel() for p in fp32.values())
    chunk = 1 << 15
    for params in (fp32, {n: p.to(torch.bfloat16) for n, p in fp32.items()}):
        whole, whole_norm, whole_rise = _stepped(params, numel, monkeypatch)
        parts, parts_norm, parts_rise = _stepped(params, chunk, monkeypatch)
        assert torch.equal(whole, parts)
        assert abs(whole_norm - parts_norm) <= 1e-6 * whole_norm   # sums of partial sums
        one = ADAM_STEP_FP32_TEMPORARIES * ADAM_STEP_TEMPORARY_BYTES
        assert whole_rise <= one * numel * 1.01 and parts_rise <= one * chunk * 1.01
        assert parts_rise < whole_rise / 50
    monkeypatch.setattr(memory_module, "OPTIMIZER_CHUNK_ELEMENTS", chunk)
    priced = memory_module.optimizer_step_bytes_per_device(
        TINY, "lm", 1, 1, np.ones(1), np.zeros(1, dtype=bool), 4)
    assert float(priced.max()) == one * chunk
