"""The model families users run, checked against transformers itself (fp32, CPU, nothing
downloaded): tiny random models built from transformers' config classes and saved with
`save_pretrained` (a Llama-3.1-style model with llama3 rope scaling, a Qwen2 model with tied
embeddings and q/k/v biases, a Qwen3 model with q/k norms and head_dim != hidden / heads)
load through runtime/params.py load_hf_params and give transformers' logits within
LOGIT_ATOL and its greedy tokens exactly, at tp 1 in this process and under tp 2, pp 2 and
tp 2 x pp 2 on gloo processes; under tp 2 the gradients of a replicated loss (the q/k norm
weights replicated over tp included) are transformers' gradients. Our rotary inverse
frequencies (default, linear, llama3, yarn) are transformers' ROPE_INIT_FUNCTIONS'.
"""

from __future__ import annotations

import json

import hf_family_workers as W
import pytest
import torch
import transformers
from hf_reference import randomised, saved_reference
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from planner.domain.model_files import resolve_model
from planner.domain.placement import Placement
from planner.sharding.param_shards import model_params, shard_slice
from planner.sharding.rank_groups import placement_coordinate
from runtime.device import CPU_FP32
from runtime.launch import run_distributed
from runtime.model import ParallelModel
from runtime.parallel_context import Group, ParallelContext
from runtime.rope import attention_scaling, inverse_frequencies

LOGIT_ATOL = 1e-5
GRAD_ATOL = 1e-5
TIMEOUT_S = 120
ONE_RANK = Group(handle=None, ranks=(0,))
SIZES = {"intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
         "num_hidden_layers": 2, "vocab_size": W.VOCAB, "max_position_embeddings": 128,
         "initializer_range": 0.1}
FAMILIES = {
    # Llama 3.1's rope scaling with a short original context, so that head_dim 16 at theta
    # 1e4 has kept (wavelength < 16), smoothed (16 .. 64) and divided (> 64) frequencies.
    "llama31": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=64, rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0,
                                         "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 64},
        rms_norm_eps=1e-5, **SIZES)),
    "qwen2_tied": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        hidden_size=64, tie_word_embeddings=True, **SIZES)),
    # head_dim 32 x 4 heads = 128 != hidden 48
    "qwen3": lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        hidden_size=48, head_dim=32, **SIZES)),
}


def _hf_gradients(model) -> dict[str, torch.Tensor]:
    """Gradients of the summed next-token logprobs of the sequences (the workers' loss)."""
    ids = W.token_ids()
    model.zero_grad()
    logprobs = model(ids).logits[:, :-1].log_softmax(-1)
    logprobs.gather(-1, ids[:, 1:, None]).sum().backward()
    params = dict(model.named_parameters())
    return {name: params[name].grad.clone() for name in W.GRADIENT_NAMES}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, dict]:
    """{family: directory and transformers' logits, greedy tokens and gradients}."""
    out = {}
    for family, build in FAMILIES.items():
        torch.manual_seed(0)
        model = randomised(build())
        out[family] = saved_reference(model, tmp_path_factory.mktemp("hf") / family,
                                      W.token_ids(), W.PROMPT_LEN, W.GREEDY.max_new_tokens)
        out[family]["gradients"] = _hf_gradients(model) if family == "qwen3" else None
    return out


def _one_rank_model(directory: str) -> ParallelModel:
    layout = Placement(devices=(0,), dp=1, tp=1, pp=1)
    ctx = ParallelContext(layout=layout, global_rank=0, coord=placement_coordinate(layout, 0),
                          tp_group=ONE_RANK, dp_group=ONE_RANK, pp_group=ONE_RANK)
    return ParallelModel.from_hf(directory, resolve_model(directory), "lm", ctx, CPU_FP32)


def _assert_matches(result: dict, reference: dict) -> None:
    torch.testing.assert_close(result["logits"], reference["logits"], rtol=0, atol=LOGIT_ATOL)
    assert torch.equal(result["greedy"], reference["greedy"])


def test_the_configs_are_read_as_their_families(checkpoints):
    llama = resolve_model(checkpoints["llama31"]["dir"])
    qwen2 = resolve_model(checkpoints["qwen2_tied"]["dir"])
    qwen3 = resolve_model(checkpoints["qwen3"]["dir"])
    assert llama.rope_scaling is not None and llama.rope_scaling.type == "llama3"
    assert qwen2.tie_embeddings and qwen2.attention_bias and not qwen2.qk_norm
    assert qwen3.qk_norm and qwen3.head_dim == 32 and qwen3.q_dim != qwen3.hidden_size


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_rank_matches_transformers(checkpoints, family):
    model = _one_rank_model(checkpoints[family]["dir"])
    _assert_matches(W.engine_outputs(model), checkpoints[family])


def test_one_rank_gradients_match_transformers(checkpoints):
    reference = checkpoints["qwen3"]["gradients"]
    grads = W.engine_gradients(_one_rank_model(checkpoints["qwen3"]["dir"]))
    for name in W.GRADIENT_NAMES:
        torch.testing.assert_close(grads[name], reference[name], rtol=0, atol=GRAD_ATOL)


@pytest.mark.slow
def test_tp_and_pp_layouts_match_transformers(checkpoints):
    dirs = {family: c["dir"] for family, c in checkpoints.items()}
    per_rank = run_distributed(W.family_cases, W.WORLD_SIZE, (dirs,), timeout_s=TIMEOUT_S)
    ran = set()
    for rank_results in per_rank:
        for (family, degrees), result in rank_results.items():
            _assert_matches(result, checkpoints[family])
            ran.add((family, degrees))
            if "gradients" in result:
                _assert_rank_gradients(result, checkpoints[family], degrees)
    assert ran == set(W.CASES)


def _assert_rank_gradients(result: dict, reference: dict, degrees: tuple[int, int, int]):
    """Each tp rank's gradient is its shard of transformers' (whole for replicated norms)."""
    _, tp, _ = degrees
    spec = resolve_model(reference["dir"])
    infos = {p.name: p for p in model_params(spec, "lm", 1)}
    tp_rank = result["coord"][1]
    for name in W.GRADIENT_NAMES:
        ranges = shard_slice(spec, infos[name], tp_rank, tp)
        expected = reference["gradients"][name][tuple(slice(a, b) for a, b in ranges)]
        torch.testing.assert_close(result["gradients"][name], expected, rtol=0,
                                   atol=GRAD_ATOL)


class _RopeConfig:
    """The attributes transformers' ROPE_INIT_FUNCTIONS read from a config."""

    def __init__(self, rope_parameters: dict, head_dim: int, max_positions: int):
        self.rope_parameters = rope_parameters
        self.head_dim = head_dim
        self.hidden_size = head_dim * 4
        self.num_attention_heads = 4
        self.max_position_embeddings = max_positions

    def standardize_rope_params(self) -> None:
        pass


@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8192},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
    {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096,
     "beta_fast": 16.0, "beta_slow": 2.0, "mscale": 1.0, "mscale_all_dim": 0.5,
     "truncate": False},
    {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 2048,
     "attention_factor": 0.8},
])
@pytest.mark.parametrize("theta,head_dim", [(500000.0, 128), (1e6, 64), (10000.0, 16)])
def test_inverse_frequencies_are_transformers(tmp_path, rope, theta, head_dim):
    """Ours from the spec read out of a config.json, theirs from ROPE_INIT_FUNCTIONS."""
    config = {"model_type": "llama", "hidden_size": head_dim * 4, "num_attention_heads": 4,
              "num_hidden_layers": 1, "intermediate_size": 8, "vocab_size": 8,
              "max_position_embeddings": 131072, "head_dim": head_dim,
              "rope_parameters": {**rope, "rope_theta": theta}}
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    spec = resolve_model(str(tmp_path / "m"))
    theirs, their_scaling = ROPE_INIT_FUNCTIONS[rope["rope_type"]](
        _RopeConfig({**rope, "rope_theta": theta}, head_dim, 131072), torch.device("cpu"))
    ours = inverse_frequencies(spec.head_dim, spec.rope_theta, spec.rope_scaling,
                               torch.device("cpu"))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert attention_scaling(spec.rope_scaling) == pytest.approx(their_scaling, rel=1e-12)
