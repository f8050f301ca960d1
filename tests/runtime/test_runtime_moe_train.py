"""Training a mixture-of-experts model under expert parallelism, and saving it as an HF
checkpoint (runtime/optimizer.py, runtime/checkpoint_save.py).

On four gloo processes, moe-tiny (Qwen3-MoE style, 8 experts, top 2, fp32) trained two steps
of two Adam minibatches under ep 2 (ZeRO-1 on and off), ep 4 = dp, ep 1 at dp 4, ep 2 x tp
2 and ep 2 x pp 2 must give the one-process weights within the dense layout tests' Adam
tolerance and its losses and gradient norms within their relative tolerance: the norm
checks that expert squares are summed over the ep group once (a missed or doubled sum
changes it by far more), the weights that the expert gradients are reduced over the
expert-dp group at the dense scale. Replicas holding the same slice end identical. The
optimizer keeps the experts in their own buffer reduced over the expert-dp group.

Saving: models of the three families (qwen3_moe, qwen2_moe with a shared expert, mixtral)
trained one step under ep 2 x tp 2, ep 2 x pp 2 and ep 4 are written by save_hf_checkpoint;
transformers' from_pretrained of each directory gives the engine's logits within
LOGIT_ATOL, and config.json names the family's model type and architecture.
"""

from __future__ import annotations

import json

import moe_train_workers as M
import pytest
import runtime_workers as W
import torch
import transformers

from planner.sharding.param_shards import model_params
from runtime.launch import run_distributed
from runtime.optimizer import is_expert_param
from runtime.params import init_full_param

ADAM_ATOL = 1e-4   # tests/runtime/test_runtime_layouts.py
STAT_RTOL = 1e-4   # likewise
LOGIT_ATOL = 1e-5  # tests/runtime/test_runtime_hf_families.py (fp32)
TIMEOUT_S = 400
ARCHITECTURES = {"qwen3_moe": "Qwen3MoeForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
                 "mixtral": "MixtralForCausalLM"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint_root(tmp_path_factory):
    return tmp_path_factory.mktemp("moe_checkpoints")


@pytest.fixture(scope="module")
def results(checkpoint_root) -> dict:
    """{case: [per-rank result]} from one spawn of four ranks."""
    merged: dict = {}
    for rank_results in run_distributed(M.all_cases, W.WORLD_SIZE, (str(checkpoint_root),),
                                        timeout_s=TIMEOUT_S):
        for case, value in rank_results.items():
            merged.setdefault(case, []).append(value)
    return merged


def _assembled(ranks: list[dict]) -> dict[str, torch.Tensor]:
    """Full tensors from every rank's shards; shards of one slice held by several ranks
    (replicas) must be bit-identical."""
    full: dict[str, torch.Tensor] = {}
    seen: dict[tuple, torch.Tensor] = {}
    infos = {p.name: p for p in model_params(M.SPEC, "lm", 1)}
    for r in ranks:
        for name, (ranges, tensor) in r["shards"].items():
            key = (name, ranges)
            if key in seen:
                assert torch.equal(seen[key], tensor), (name, ranges, r["coord"])
                continue
            seen[key] = tensor
            target = full.setdefault(name, torch.full(infos[name].shape, float("nan")))
            target[tuple(slice(a, b) for a, b in ranges)] = tensor
    for name, tensor in full.items():
        assert not tensor.isnan().any(), name
    return full


def test_expert_names_are_the_expert_shards():
    assert {p.name for p in model_params(M.SPEC, "lm", 1) if p.is_expert} == \
        {p.name for p in model_params(M.SPEC, "lm", 1) if is_expert_param(p.name)}
    assert not any(is_expert_param(p.name) for p in model_params(W.SPEC, "lm", 1))


def test_the_reference_moves_its_experts(results):
    """Not vacuous: two steps move every tensor, experts included, well beyond ADAM_ATOL."""
    reference = _assembled(results[("train", (1, 1, 1, 1), False)])
    initial = {p.name: init_full_param(M.SPEC, p.name, W.SEED) for p in model_params(M.SPEC, "lm", 1)}
    for name, tensor in reference.items():
        if is_expert_param(name) or name.endswith("mlp.gate.weight"):
            assert (tensor - initial[name]).abs().max() > 10 * ADAM_ATOL, name


@pytest.mark.parametrize("degrees,zero1", M.TRAIN_CASES[1:])
def test_expert_parallel_training_gives_the_one_process_weights_and_stats(
        results, degrees, zero1):
    reference_ranks = results[("train", (1, 1, 1, 1), False)]
    reference = _assembled(reference_ranks)
    ranks = results[("train", degrees, zero1)]
    assert len(ranks) == W.WORLD_SIZE
    weights = _assembled(ranks)
    assert weights.keys() == reference.keys()
    for name, value in weights.items():
        assert (value - reference[name]).abs().max() < ADAM_ATOL, name
    want = reference_ranks[0]["stats"]
    for r in ranks:
        for got_step, want_step in zip(r["stats"], want):
            for got, expected in zip(got_step, want_step):
                assert got.grad_norm == pytest.approx(expected.grad_norm, rel=STAT_RTOL)
                assert got.loss == pytest.approx(expected.loss, rel=STAT_RTOL)


@pytest.mark.parametrize("degrees,zero1", M.TRAIN_CASES)
def test_experts_have_their_own_buffer_reduced_over_expert_dp(results, degrees, zero1):
    dp, tp, pp, ep = degrees
    for r in results[("train", degrees, zero1)]:
        assert r["dense_group"] == r["dp_group"]
        assert r["expert_group"] == r["expert_dp_group"]
        assert len(r["expert_group"]) == dp // ep
        assert r["expert_sharded"] == (zero1 and dp // ep > 1)
        assert r["expert_params"] and all(is_expert_param(n) for n in r["expert_params"])
        # this rank's experts: E / ep of them, each 1 / tp of three projections
        layers = M.SPEC.num_layers // pp
        moe = M.SPEC.moe
        assert r["expert_numel"] == (layers * moe.num_experts // ep
                                     * moe.expert_params(M.SPEC.hidden_size) // tp)


@pytest.mark.parametrize("family,degrees", M.SAVE_CASES)
def test_saved_moe_checkpoint_loads_in_transformers_with_the_engine_logits(
        results, checkpoint_root, family, degrees):
    directory = checkpoint_root / family
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == family
    assert config["architectures"] == [ARCHITECTURES[family]]
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, output_loading_info=True)
    assert not any(info.values()), info   # no missing, unexpected or mismatched tensors
    model.eval()
    assert type(model).__name__ == ARCHITECTURES[family]
    ids = M.logit_ids()
    with torch.no_grad():
        expected = model(ids).logits
    for r in results[("save", family, degrees)]:
        assert (r["logits"] - expected).abs().max() < LOGIT_ATOL, r["coord"]
