"""Pure-logic tests of the runtime: shard spec, safetensors I/O, layouts, one-rank math."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch

from planner.domain.modelspec import PRESETS
from planner.domain.placement import Placement
from planner.sharding.param_shards import model_params, shard_slice, stage_params
from planner.sharding.rank_groups import placement_coordinate
from runtime.parallel_context import Group
from runtime.params import HFCheckpoint, check_layout_supported, is_tp_replicated
from runtime.vocab_parallel import choose_tokens, gumbel_noise, token_logprobs

TINY = PRESETS["llama-tiny"]
ONE_RANK = Group(handle=None, ranks=(0,))


@settings(max_examples=30, deadline=None)
@given(tp=st.sampled_from([1, 2, 4]), bias=st.booleans(), head=st.sampled_from(["lm", "value"]))
def test_tp_shards_tile_every_parameter_exactly_once_or_replicate(tp, bias, head):
    spec = TINY.model_copy(update={"attention_bias": bias})
    for param in model_params(spec, head, 1):
        count = np.zeros(param.shape, dtype=int)
        for rank in range(tp):
            count[tuple(slice(a, b) for a, b in shard_slice(spec, param, rank, tp))] += 1
        assert count.min() == count.max() and count.max() in (1, tp), param.name
        assert (count.max() == tp and tp > 1) <= is_tp_replicated(param.name), param.name


@settings(deadline=None)
@given(head=st.sampled_from(["lm", "value"]), bias=st.booleans(), tied=st.booleans())
def test_runtime_replication_rule_agrees_with_param_shards(head, bias, tied):
    spec = TINY.model_copy(update={"attention_bias": bias, "tie_embeddings": tied})
    for param in model_params(spec, head, 1):
        assert is_tp_replicated(param.name) == (param.split == "replicated"), param.name


@settings(deadline=None)
@given(pp=st.integers(1, 4), head=st.sampled_from(["lm", "value"]))
def test_pipeline_stages_partition_the_parameters(pp, head):
    stages = [[p.name for p in stage_params(TINY, head, s, pp)] for s in range(pp)]
    flat = [n for names in stages for n in names]
    assert sorted(flat) == sorted(p.name for p in model_params(TINY, head, 1))
    assert len(set(flat)) == len(flat)
    assert "model.embed_tokens.weight" in stages[0] and "model.norm.weight" in stages[-1]


def test_unsupported_layouts_are_refused_with_reasons():
    with pytest.raises(ValueError, match="tp 16 does not evenly split the 8 attention heads"):
        check_layout_supported(TINY, 16, 1)
    with pytest.raises(ValueError, match="tp 3 does not evenly split"):
        check_layout_supported(TINY, 3, 1)
    with pytest.raises(ValueError, match="ties its embeddings to the LM head, which needs pp 1"):
        check_layout_supported(TINY.model_copy(update={"tie_embeddings": True}), 1, 2)
    with pytest.raises(ValueError, match=r"dp 2 x tp 2 x pp 1 = 4, mesh has 3"):
        Placement((0, 1, 2), 2, 2, 1)


def test_layout_coordinates_follow_rank_groups_order():
    layout = Placement((10, 11, 12, 13, 14, 15, 16, 17), 2, 2, 2)
    c = placement_coordinate(layout, 16)
    assert (c.dp_rank, c.tp_rank, c.pp_rank) == (1, 0, 1)


def test_checkpoint_reads_slices_of_every_dtype(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((6, 4)).astype(np.float32),
               "b": rng.integers(0, 9, (3,)).astype(np.int64),
               "c": rng.standard_normal((2, 3, 5)).astype(np.float16)}
    save_numpy(tensors, str(tmp_path / "model.safetensors"))
    checkpoint = HFCheckpoint(tmp_path)
    for name, array in tensors.items():
        got = checkpoint.read(name, tuple((0, n) for n in array.shape))
        np.testing.assert_array_equal(got.numpy(), array)
    np.testing.assert_array_equal(checkpoint.read("a", ((2, 4), (1, 3))).numpy(),
                                  tensors["a"][2:4, 1:3])
    assert checkpoint.shape("c") == (2, 3, 5)


def test_checkpoint_reads_bf16_as_stored(tmp_path):
    values = torch.tensor([[1.5, -2.0], [0.25, 3.0]], dtype=torch.bfloat16)
    save_torch({"w": values}, str(tmp_path / "model.safetensors"))
    got = HFCheckpoint(tmp_path).read("w", ((1, 2), (0, 2)))
    assert got.dtype == torch.bfloat16 and torch.equal(got, values[1:2])


@pytest.mark.parametrize("file", ["../outside.safetensors", "/etc/hostname"])
def test_checkpoint_index_never_reads_outside_its_directory(tmp_path, file):
    folder = tmp_path / "model"
    folder.mkdir()
    save_numpy({"w": np.zeros(2, np.float32)}, str(tmp_path / "outside.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": file}}))
    with pytest.raises(ValueError, match="outside its directory"):
        HFCheckpoint(folder)


def test_a_corrupt_checkpoint_header_is_one_line(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(ValueError) as refused:
        HFCheckpoint(tmp_path)
    assert "not a readable safetensors file" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_logprobs_and_entropy_match_log_softmax_on_one_rank():
    logits = torch.randn(3, 5, 17, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 17, (3, 5), generator=torch.Generator().manual_seed(1))
    logprobs, entropy = token_logprobs(logits, targets, 0, ONE_RANK, with_entropy=True)
    log_softmax = logits.log_softmax(-1)
    assert torch.allclose(logprobs, log_softmax.gather(-1, targets[..., None])[..., 0], atol=1e-6)
    assert torch.allclose(entropy, -(log_softmax.exp() * log_softmax).sum(-1), atol=1e-6)


def test_gumbel_max_samples_follow_the_softmax():
    draws, temperature = 40000, 0.7
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0, 1.0]])
    noise = gumbel_noise(torch.arange(draws) + 3 * draws, 1, 0, 5)
    tokens = choose_tokens(logits.expand(draws, 5), 0, ONE_RANK, noise, temperature)
    frequencies = torch.bincount(tokens, minlength=5).float() / draws
    assert torch.allclose(frequencies, (logits[0] / temperature).softmax(-1), atol=0.01)
    assert torch.equal(choose_tokens(logits, 0, ONE_RANK, None, 1.0), torch.tensor([2]))


def test_counter_noise_of_a_token_does_not_depend_on_the_vocabulary_split():
    keys = torch.tensor([7, 2**40 + 5, -3])
    whole = gumbel_noise(keys, 4, 0, 10)
    assert torch.equal(torch.cat([gumbel_noise(keys, 4, 0, 4), gumbel_noise(keys, 4, 4, 6)],
                                 dim=-1), whole)
    assert not torch.equal(gumbel_noise(keys, 5, 0, 10), whole)     # a new step, new noise
    assert torch.isfinite(whole).all()


def _one_rank_model(seed: int = 3):
    from runtime.device import CPU_FP32
    from runtime.model import ParallelModel
    from runtime.parallel_context import ParallelContext
    layout = Placement(devices=(0,), dp=1, tp=1, pp=1)
    ctx = ParallelContext(layout=layout, global_rank=0, coord=placement_coordinate(layout, 0),
                          tp_group=ONE_RANK, dp_group=ONE_RANK, pp_group=ONE_RANK)
    return ParallelModel.from_seed(TINY, "lm", ctx, seed, CPU_FP32)


def _loss_grads_and_saved_bytes(recompute: str):
    """Loss, parameter gradients and bytes autograd keeps for backward, one forward pass."""
    model = _one_rank_model()
    for p in model.params.values():
        p.requires_grad_(True)
    ids = torch.randint(0, TINY.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding on one row
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model.forward_sequences(ids, mask, recompute=recompute)
    loss = (logits.log_softmax(-1)[..., 0] * mask).sum()
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.params.items()}, sum(saved)


def test_recomputed_train_forward_gives_the_same_gradients_and_keeps_less():
    loss, grads, kept = _loss_grads_and_saved_bytes(recompute="none")
    loss_rc, grads_rc, kept_rc = _loss_grads_and_saved_bytes(recompute="full")
    torch.testing.assert_close(loss_rc, loss)
    assert grads_rc.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(grads_rc[name], grads[name], rtol=1e-5, atol=1e-6)
    # Only each block's input (and the head's tensors) stay alive; the blocks' internals
    # (q, k, v, attention, MLP hidden) are several times the block input.
    assert kept_rc * 2 < kept, (kept_rc, kept)
