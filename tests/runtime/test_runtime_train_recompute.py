"""One-rank train step: each recomputation mode (Execution.recompute) changes memory and
time, not the result."""

from __future__ import annotations

import pytest
import torch

from planner.domain.modelspec import PRESETS
from planner.domain.placement import Placement
from planner.sharding.rank_groups import placement_coordinate
from runtime.batch import MicroBatch
from runtime.device import CPU_FP32
from runtime.model import ParallelModel
from runtime.optimizer import Adam, AdamConfig
from runtime.parallel_context import Group, ParallelContext
from runtime.train import train_step

TINY = PRESETS["llama-tiny"]
ONE_RANK = Group(handle=None, ranks=(0,))
NUM_SEQS, SEQ_LEN, MICRO_SEQS, NUM_MINIBATCHES = 4, 12, 2, 2


def _one_rank_model() -> ParallelModel:
    layout = Placement(devices=(0,), dp=1, tp=1, pp=1)
    ctx = ParallelContext(layout=layout, global_rank=0, coord=placement_coordinate(layout, 0),
                          tp_group=ONE_RANK, dp_group=ONE_RANK, pp_group=ONE_RANK)
    return ParallelModel.from_seed(TINY, "lm", ctx, 5, CPU_FP32)


def _micro_batches() -> list[MicroBatch]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, TINY.vocab_size, (NUM_SEQS, SEQ_LEN), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding on one row
    loss_mask = (mask[:, 1:] * mask[:, :-1]).float()
    return [MicroBatch(ids[i:i + MICRO_SEQS], mask[i:i + MICRO_SEQS],
                       loss_mask[i:i + MICRO_SEQS]) for i in range(0, NUM_SEQS, MICRO_SEQS)]


def _nll(outputs, mb: MicroBatch) -> torch.Tensor:
    return (-outputs.logprobs * mb.loss_mask).sum()


def _train(recompute: str):
    """Losses of two steps of NUM_MINIBATCHES updates each, the weights after them, and the
    bytes autograd was given to keep for backward."""
    model = _one_rank_model()
    optimizer = Adam(model.params, AdamConfig(lr=1e-2), model.ctx)
    losses, saved = [], []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    for _ in range(2):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            stats = train_step(model, optimizer, _micro_batches(), _nll, NUM_MINIBATCHES,
                               recompute=recompute)
        losses += [s.loss for s in stats]
    return losses, {n: p.detach().clone() for n, p in model.params.items()}, sum(saved)


@pytest.mark.parametrize("recompute", ["full", "selective"])
def test_train_step_under_each_mode_gives_the_same_losses_and_weights_as_none(recompute):
    losses, weights, kept = _train(recompute)
    losses_plain, weights_plain, kept_plain = _train("none")
    # the mode reaches the model: autograd is given less to keep outside the checkpoints
    assert kept < kept_plain, (kept, kept_plain)
    assert len(losses) == 2 * NUM_MINIBATCHES
    assert losses[-1] < losses[0], "the updates did not train"
    torch.testing.assert_close(torch.tensor(losses_plain), torch.tensor(losses), rtol=0,
                               atol=1e-6)
    initial = {n: p.detach() for n, p in _one_rank_model().params.items()}
    for name, value in weights.items():
        assert not torch.equal(value, initial[name]), f"{name} was not updated"
        torch.testing.assert_close(weights_plain[name], value, rtol=0, atol=1e-6)
