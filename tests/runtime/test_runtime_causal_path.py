"""The right-aligned causal attention path of cache-less passes (runtime/model.py
forward_sequences, DeviceConfig.right_aligned_attention), switched on on CPU: for
left-padded batches (left pads, prompt + response, right pads) its logits at real tokens and
its training gradients are the masked path's within 1e-5 (fp32) in one process, under every
recomputation mode, and under tp 2, pp 2, dp 2 and a MoE model at ep 2; a transformers-saved
checkpoint gives transformers' logits under it, in one process and under tp 2 and pp 2. The
cuda DeviceConfig selects the path and the cpu one does not, by the same rule the cost model
prices (costmodel/roofline.py causal_attention), and SDPA then gets is_causal and no mask.
"""

from __future__ import annotations

import causal_path_workers as W
import pytest
import torch
import torch.nn.functional as F
from hf_reference import randomised
from test_runtime_hf_families import FAMILIES

from costmodel.roofline import causal_attention
from planner.domain.hardware import hardware_by_name, known_hardware
from planner.domain.model_files import resolve_model
from planner.domain.modelspec import PRESETS
from planner.domain.placement import Placement
from planner.sharding.rank_groups import placement_coordinate
from runtime.device import CPU_FP32, device_config
from runtime.launch import run_distributed
from runtime.model import (
    ParallelModel,
    gather_slots,
    inverse_slots,
    positions_from_mask,
    real_tokens_first,
)
from runtime.parallel_context import Group, ParallelContext

ATOL = 1e-5
TIMEOUT_S = 180
ONE_RANK = Group(handle=None, ranks=(0,))
HF_FAMILY = "llama31"


def _one_rank(spec, head: str, device, directory: str | None = None) -> ParallelModel:
    layout = Placement(devices=(0,), dp=1, tp=1, pp=1)
    ctx = ParallelContext(layout=layout, global_rank=0, coord=placement_coordinate(layout, 0),
                          tp_group=ONE_RANK, dp_group=ONE_RANK, pp_group=ONE_RANK)
    if directory is not None:
        return ParallelModel.from_hf(directory, spec, head, ctx, device)
    return ParallelModel.from_seed(spec, head, ctx, W.SEED, device)


def _real(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x at the real tokens of every row (the only positions callers read)."""
    return x[mask.bool()]


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory) -> dict:
    """A transformers-saved Llama-3.1-style tiny model and its logits on the padded batch
    (position ids as our runtime numbers the real tokens, pads masked out)."""
    torch.manual_seed(0)
    model = randomised(FAMILIES[HF_FAMILY]())
    directory = tmp_path_factory.mktemp("hf") / HF_FAMILY
    model.save_pretrained(directory)
    ids, mask = W.padded_sequences(model.config.vocab_size)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
    return {"dir": str(directory), "logits": logits, "mask": mask}


def test_real_tokens_first_is_a_stable_partition_and_its_inverse_restores():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [0, 1, 0, 1, 1, 0],
                         [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    order = real_tokens_first(mask)
    assert order.tolist() == [[2, 3, 4, 0, 1, 5], [0, 1, 2, 3, 4, 5], [1, 3, 4, 0, 2, 5],
                              [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]]
    x = torch.randn(5, 6, 3)
    assert torch.equal(gather_slots(gather_slots(x, order), inverse_slots(order)), x)
    assert torch.equal(gather_slots(mask, order).sum(1), mask.sum(1))
    shifted = gather_slots(mask, order)
    assert torch.equal(shifted, (torch.arange(6)[None] < mask.sum(1, keepdim=True)).long())


def test_the_cuda_config_selects_the_path_and_the_cpu_one_does_not():
    assert device_config("cuda", "bf16").right_aligned_attention
    assert device_config("cuda", "fp32").right_aligned_attention
    assert not CPU_FP32.right_aligned_attention
    for name in known_hardware():       # the runtime runs what the cost model prices
        hardware = hardware_by_name(name)
        config = device_config(hardware.kind, "fp32")
        assert config.right_aligned_attention == causal_attention(hardware.kind), name


def test_sdpa_gets_is_causal_and_no_mask_only_on_the_path(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, is_causal=False, enable_gqa=False):
        calls.append((attn_mask is None, is_causal, enable_gqa, k.shape[1]))
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, enable_gqa=enable_gqa)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    spec = PRESETS["llama-tiny"]                 # 8 query heads on 4 kv heads
    ids, mask = W.padded_sequences(spec.vocab_size)
    with torch.no_grad():
        _one_rank(spec, "lm", CPU_FP32).forward_sequences(ids, mask)
        masked, calls[:] = list(calls), []
        _one_rank(spec, "lm", W.RIGHT_ALIGNED).forward_sequences(ids, mask)
    kv = spec.num_kv_heads
    assert masked == [(False, False, True, kv)] * spec.num_layers
    assert calls == [(True, True, True, kv)] * spec.num_layers   # no KV copies: kv heads


@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
@pytest.mark.parametrize("head", ["lm", "value"])
def test_one_rank_outputs_and_gradients_equal_the_masked_path(head, recompute):
    spec = PRESETS["llama-tiny"]
    ids, mask = W.padded_sequences(spec.vocab_size)
    results = []
    for device in (CPU_FP32, W.RIGHT_ALIGNED):
        model = _one_rank(spec, head, device)
        for p in model.params.values():
            p.requires_grad_(True)
        out = model.forward_sequences(ids, mask, recompute=recompute)
        weights = torch.linspace(-1, 1, out.numel()).view(out.shape) * mask.view(
            mask.shape + (1,) * (out.dim() - 2))
        (out * weights).sum().backward()
        results.append((_real(out.detach(), mask),
                        {n: p.grad for n, p in model.params.items()}))
    (out_masked, grads_masked), (out_right, grads_right) = results
    torch.testing.assert_close(out_right, out_masked, rtol=0, atol=ATOL)
    assert grads_right.keys() == grads_masked.keys()
    for name, grad in grads_masked.items():
        torch.testing.assert_close(grads_right[name], grad, rtol=0, atol=ATOL, msg=name)


def test_one_rank_matches_transformers_on_left_padded_rows(hf_checkpoint):
    directory = hf_checkpoint["dir"]
    model = _one_rank(resolve_model(directory), "lm", W.RIGHT_ALIGNED, directory)
    ids, mask = W.padded_sequences(model.spec.vocab_size)
    with torch.no_grad():
        logits = model.forward_sequences(ids, mask)
    torch.testing.assert_close(_real(logits, mask), _real(hf_checkpoint["logits"], mask),
                               rtol=0, atol=ATOL)


@pytest.mark.slow
def test_layouts_equal_the_masked_path_and_transformers(hf_checkpoint):
    per_rank = run_distributed(W.all_cases, W.WORLD_SIZE, (hf_checkpoint["dir"],),
                               timeout_s=TIMEOUT_S)
    ran = set()
    for rank_results in per_rank:
        for (case, degrees), result in rank_results.items():
            ran.add((case, degrees))
            _assert_same(case, degrees, result, hf_checkpoint)
    assert ran == {(case, degrees) for case, degrees, _ in W.CASES}


def _assert_same(case: str, degrees, result: dict, hf_checkpoint: dict) -> None:
    dp, dp_rank = degrees[0], result["coord"][0]
    _, mask = W.padded_sequences(2)
    masked, right = result["masked"], result["right_aligned"]
    for i, (m, r) in enumerate(zip(masked["outputs"], right["outputs"])):
        rows = mask[dp_rank + i * dp:dp_rank + i * dp + 1]
        torch.testing.assert_close(_real(r, rows), _real(m, rows), rtol=0, atol=ATOL,
                                   msg=f"{case} {degrees} micro-batch {i}")
        if case == "hf":
            row = dp_rank + i * dp
            reference = hf_checkpoint["logits"][row:row + 1]
            torch.testing.assert_close(_real(r, rows), _real(reference, rows), rtol=0,
                                       atol=ATOL, msg=f"transformers {degrees} row {row}")
    if case == "hf":
        return
    assert right["moved"].keys() == masked["moved"].keys()
    assert any(moved.abs().max() > 0 for moved in masked["moved"].values())  # it trained
    for name, moved in masked["moved"].items():
        torch.testing.assert_close(right["moved"][name], moved, rtol=0, atol=ATOL,
                                   msg=f"{case} {degrees} {name}")

