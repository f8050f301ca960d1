"""Mixture-of-experts blocks in the runtime, checked against transformers itself (fp32,
CPU, nothing downloaded): tiny Qwen3-MoE (q/k norms, renormalised top-k), Mixtral
(block_sparse_moe names) and Qwen2-MoE (gated shared expert, q/k/v biases, top-k not
renormalised) checkpoints built from transformers' config classes and saved with
`save_pretrained` load through runtime/params.py and give transformers' logits within
LOGIT_ATOL and its greedy tokens exactly, in this process and, on gloo processes, under
ep 2 (each dp rank its own, uneven, rows), ep 2 x tp 2, pp 2, ep 2 x pp 2 and ep 2 of dp 4.
Under ep 2 x tp 2 the gradients of each rank's loss are transformers' (experts: of the whole
ep group's rows, which the all-to-all's backward brings to them); seeded init under ep 2 x
tp 2 reassembles to the one-process init exactly; the all-to-all ledger counts the rule of
runtime.comm.AllToAllLedger.
"""

from __future__ import annotations

import moe_workers as W
import numpy as np
import pytest
import torch
import transformers
from hf_reference import randomised, saved_reference
from safetensors import safe_open

from planner.domain.placement import Placement
from planner.sharding.param_shards import model_params, shard_slice
from planner.sharding.rank_groups import placement_coordinate
from runtime.device import CPU_FP32
from runtime.launch import run_distributed
from runtime.model import ParallelModel
from runtime.parallel_context import Group, ParallelContext
from runtime.params import checkpoint_names, init_params, is_tp_replicated

LOGIT_ATOL = 1e-5
GRAD_ATOL = 1e-5
TIMEOUT_S = 300
ONE_RANK = Group(handle=None, ranks=(0,))
FP32_BYTES = 4
MODEL_CLASSES = {"qwen3_moe": "Qwen3MoeForCausalLM", "mixtral": "MixtralForCausalLM",
                 "qwen2_moe": "Qwen2MoeForCausalLM"}


def _hf_model(family: str) -> torch.nn.Module:
    """The family's tiny model, seeded, norm weights and biases away from ones and zeros."""
    config_class, kwargs = W.HF_CONFIGS[family]
    torch.manual_seed(0)
    return randomised(getattr(transformers, MODEL_CLASSES[family])(
        getattr(transformers, config_class)(**kwargs)))


def _hf_gradients(model, rows: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Gradients (by our names; experts stacked, gate and up unfused) of the rows' summed
    next-token logprobs."""
    ids = W.token_ids()[rows[0]:rows[1]]
    model.zero_grad()
    logprobs = model(ids).logits[:, :-1].log_softmax(-1)
    logprobs.gather(-1, ids[:, 1:, None]).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    prefix = W.LAYER0
    gate, up = grads[f"{prefix}mlp.experts.gate_up_proj"].chunk(2, dim=1)
    ours = {f"{prefix}mlp.experts.gate_proj": gate, f"{prefix}mlp.experts.up_proj": up}
    return {name: ours.get(name, grads.get(name)) for name in W.GRADIENT_NAMES}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, dict]:
    """{family: directory, transformers' logits and greedy tokens, and (the gradient case's
    family) its gradients of each dp rank's rows and of all rows}."""
    out = {}
    for family in W.FAMILIES:
        model = _hf_model(family)
        out[family] = saved_reference(model, tmp_path_factory.mktemp("hf") / family,
                                      W.token_ids(), W.PROMPT_LEN, W.GREEDY.max_new_tokens)
        if family == W.GRADIENT_CASE[0]:
            dp = W.GRADIENT_CASE[1][0]
            out[family]["gradients"] = {
                rows: _hf_gradients(model, rows)
                for rows in [W.row_range(r, dp) for r in range(dp)] + [(0, W.NUM_SEQS)]}
    return out


def _one_rank_model(directory: str, family: str) -> ParallelModel:
    layout = Placement(devices=(0,), dp=1, tp=1, pp=1)
    ctx = ParallelContext(layout=layout, global_rank=0, coord=placement_coordinate(layout, 0),
                          tp_group=ONE_RANK, dp_group=ONE_RANK, pp_group=ONE_RANK)
    return ParallelModel.from_hf(directory, W.spec_of(family), "lm", ctx, CPU_FP32)


def _assert_matches(result: dict, reference: dict) -> None:
    start, stop = result["rows"]
    torch.testing.assert_close(result["logits"], reference["logits"][start:stop], rtol=0,
                               atol=LOGIT_ATOL)
    assert torch.equal(result["greedy"], reference["greedy"][start:stop])


def test_checkpoints_name_each_expert_as_we_read_them(checkpoints):
    """Every tensor of each saved checkpoint is read, once (Mixtral's w1/w3/w2 included)."""
    for family in W.FAMILIES:
        spec = W.spec_of(family)
        ours = [n for p in model_params(spec, "lm", 1) for n in checkpoint_names(spec, p.name)]
        with safe_open(f"{checkpoints[family]['dir']}/model.safetensors", "pt") as f:
            assert sorted(ours) == sorted(f.keys()), family


def test_routers_are_replicated_as_param_shards_say():
    for family in W.FAMILIES:
        for param in model_params(W.spec_of(family), "lm", 1):
            assert is_tp_replicated(param.name) == (param.split == "replicated"), param.name


@pytest.mark.parametrize("family", W.FAMILIES)
def test_one_rank_matches_transformers(checkpoints, family):
    model = _one_rank_model(checkpoints[family]["dir"], family)
    result = {"rows": (0, W.NUM_SEQS), **W.engine_outputs(model, (0, W.NUM_SEQS))}
    _assert_matches(result, checkpoints[family])
    assert model.moe_traffic.bytes == 0   # one rank: no all-to-all runs


def test_one_rank_gradients_match_transformers(checkpoints):
    family = W.GRADIENT_CASE[0]
    grads = W.engine_gradients(_one_rank_model(checkpoints[family]["dir"], family),
                               (0, W.NUM_SEQS))["gradients"]
    reference = checkpoints[family]["gradients"][(0, W.NUM_SEQS)]
    for name in W.GRADIENT_NAMES:
        torch.testing.assert_close(grads[name], reference[name], rtol=0, atol=GRAD_ATOL)


@pytest.fixture(scope="module")
def distributed(checkpoints) -> list[dict]:
    dirs = {family: c["dir"] for family, c in checkpoints.items()}
    return run_distributed(W.moe_cases, W.WORLD_SIZE, (dirs,), timeout_s=TIMEOUT_S)


def _results(distributed, key) -> list[dict]:
    return [r[key] for r in distributed if key in r]


@pytest.mark.slow
def test_expert_parallel_layouts_match_transformers(checkpoints, distributed):
    for family, degrees in W.CASES:
        results = _results(distributed, (family, degrees))
        dp, tp, pp, _ = degrees
        assert len(results) == dp * tp * pp, (family, degrees)
        for result in results:
            _assert_matches(result, checkpoints[family])


@pytest.mark.slow
def test_expert_groups_are_the_rank_groups(distributed):
    """ep 2 of dp 4: ep groups [0,1] [2,3], expert-dp groups [0,2] [1,3]; ep = dp 2 x tp 2:
    the ep group is the dp group, the expert-dp group the rank alone."""
    for result in _results(distributed, ("qwen3_moe", (4, 1, 1, 2))):
        rank = result["coord"][0]
        assert result["ep_group"] == ((0, 1) if rank < 2 else (2, 3))
        assert result["expert_dp_group"] == ((0, 2) if rank % 2 == 0 else (1, 3))
        assert result["ep_rank"] == rank % 2
    for result in _results(distributed, ("mixtral", (2, 2, 1, 2))):
        dp_rank, tp_rank, _ = result["coord"]
        assert result["ep_group"] == (tp_rank, 2 + tp_rank)
        assert result["expert_dp_group"] == (dp_rank * 2 + tp_rank,)


@pytest.mark.slow
def test_all_to_all_bytes_follow_the_ledger_rule(distributed):
    """Per MoE layer each rank sends its tokens x k rows (dispatch) and returns the rows it
    received (combine), so an ep group's forward sends 2 x layers x its tokens x k rows in
    all; backward as many again, and full recomputation's rerun of the forward as many
    again. Each rank makes 2 calls per layer of its stage in a forward."""
    for family, degrees in W.CASES:
        _, _, pp, ep = degrees
        spec = W.spec_of(family)
        row_bytes = spec.hidden_size * FP32_BYTES
        k, layers = spec.moe.experts_per_token, spec.num_layers // pp
        groups: dict[tuple, list[dict]] = {}
        for result in _results(distributed, (family, degrees)):
            dp_rank, tp_rank, pp_rank = result["coord"]
            groups.setdefault((dp_rank // ep, tp_rank, pp_rank), []).append(result)
        for results in groups.values():
            tokens = sum((r["rows"][1] - r["rows"][0]) * W.SEQ_LEN for r in results)
            sent = sum(r["forward_traffic"][0] for r in results)
            assert sent == (2 * layers * tokens * k * row_bytes if ep > 1 else 0), degrees
            for r in results:
                assert r["forward_traffic"][1] == (2 * layers if ep > 1 else 0)
    spec = W.spec_of(W.GRADIENT_CASE[0])
    for recompute, passes in (("none", 2), ("full", 3)):
        results = _results(distributed, ("gradients", W.GRADIENT_CASE[1], recompute))
        for tp_rank in range(W.GRADIENT_CASE[1][1]):
            group = [r for r in results if r["coord"][1] == tp_rank]
            tokens = sum((r["rows"][1] - r["rows"][0]) * W.SEQ_LEN for r in group)
            assert sum(r["train_traffic_bytes"] for r in group) == (
                passes * 2 * spec.num_layers * tokens * spec.moe.experts_per_token
                * spec.hidden_size * FP32_BYTES), recompute


@pytest.mark.slow
@pytest.mark.parametrize("recompute", W.RECOMPUTE_MODES)
def test_expert_parallel_gradients_match_transformers(checkpoints, distributed, recompute):
    """Each rank's gradient is its shard of transformers' gradient of its rows' loss; routed
    experts' gradients cover the rows of the whole ep group (here all rows); also when the
    blocks (their all-to-alls too) rerun in backward."""
    family, degrees = W.GRADIENT_CASE
    dp, tp, _, ep = degrees
    spec = W.spec_of(family)
    infos = {p.name: p for p in model_params(spec, "lm", 1)}
    reference = checkpoints[family]["gradients"]
    results = _results(distributed, ("gradients", degrees, recompute))
    assert len(results) == dp * tp
    for result in results:
        _, tp_rank, _ = result["coord"]
        for name in W.GRADIENT_NAMES:
            info = infos[name]
            rows = (0, W.NUM_SEQS) if info.is_expert else result["rows"]
            ranges = shard_slice(spec, info, tp_rank, tp, result["ep_rank"], ep)
            expected = reference[rows][name][tuple(slice(a, b) for a, b in ranges)]
            torch.testing.assert_close(result["gradients"][name], expected, rtol=0,
                                       atol=GRAD_ATOL, msg=name)


@pytest.mark.slow
def test_seeded_init_under_ep_and_tp_is_the_one_rank_init(distributed):
    dp, tp, _, ep = W.INIT_DEGREES
    spec = W.spec_of(W.INIT_FAMILY)
    one_rank = init_params(spec, "lm", 0, 1, 0, 1, W.SEED, CPU_FP32)
    results = _results(distributed, ("init", W.INIT_DEGREES))
    assert len(results) == dp * tp
    for param in model_params(spec, "lm", 1):
        covered = np.zeros(param.shape, dtype=int)
        for result in results:
            ranges = shard_slice(spec, param, result["coord"][1], tp, result["ep_rank"], ep)
            where = tuple(slice(a, b) for a, b in ranges)
            assert torch.equal(result["params"][param.name], one_rank[param.name][where])
            covered[where] += 1
        assert covered.min() >= 1, param.name   # the shards cover the whole tensor
