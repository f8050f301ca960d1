"""HF configs are read field by field: what we run is read (both rope styles, rope scaling,
head_dim, Qwen3's q/k norms, the transformers defaults), and everything else a config can
say is refused with one line naming the file and the field, never read as something else."""

from __future__ import annotations

import json

import pytest

from planner.domain.model_files import spec_from_hf_config
from planner.domain.modelspec import (
    LinearRopeScaling,
    Llama3RopeScaling,
    YarnRopeScaling,
)

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 256,
         "intermediate_size": 688, "num_attention_heads": 8, "num_key_value_heads": 4,
         "num_hidden_layers": 4, "vocab_size": 1024, "max_position_embeddings": 512,
         "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu"}


def _read(tmp_path, config: dict):
    path = tmp_path / "model" / "config.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(config))
    return spec_from_hf_config(path)


def test_rope_theta_is_read_in_both_styles(tmp_path):
    assert _read(tmp_path, LLAMA).rope_theta == 500000.0
    transformers5 = {k: v for k, v in LLAMA.items() if k != "rope_theta"}
    transformers5["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    assert _read(tmp_path, transformers5).rope_theta == 500000.0


def test_absent_keys_take_the_transformers_defaults(tmp_path):
    bare = {k: v for k, v in LLAMA.items()
            if k not in ("rms_norm_eps", "num_key_value_heads", "hidden_act")}
    spec = _read(tmp_path, bare)
    assert spec.norm_eps == 1e-6 and spec.num_kv_heads == 8 and not spec.attention_bias


def test_qwen2_has_qkv_biases_and_its_unused_window_is_no_window(tmp_path):
    qwen = {**LLAMA, "model_type": "qwen2", "sliding_window": 64, "use_sliding_window": False,
            "tie_word_embeddings": True}
    spec = _read(tmp_path, qwen)
    assert spec.attention_bias and spec.tie_embeddings


@pytest.mark.parametrize("change,field", [
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"attention_bias": True}, "attention_bias"),
    ({"attention_bias": "no"}, "attention_bias"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope_scaling.rope_type"),
    ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 500000.0}},
     "rope_parameters.rope_type"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0, "beta_fast": 32}}, "beta_fast"),
    ({"rope_scaling": {"type": "linear", "factor": -2.0}}, "factor"),
    ({"rope_scaling": {"type": "linear", "factor": "two"}}, "factor"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                          "high_freq_factor": 1.0}}, "high_freq_factor"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0, "beta_slow": 0}}, "beta_slow"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0},
      "rope_parameters": {"rope_type": "linear", "factor": 4.0}}, "rope_scaling"),
    ({"rope_scaling": [8.0]}, "rope_scaling"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}, "rope_theta"),
    ({"rope_parameters": [500000.0]}, "rope_parameters"),
    ({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}},
     "partial_rotary_factor"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"model_type": "qwen3", "attention_bias": True}, "attention_bias"),
    ({"model_type": "qwen3", "layer_types": ["full_attention", "sliding_attention"] * 2},
     "layer_types"),
    ({"head_dim": 33}, "head_dim"),
    ({"head_dim": 0}, "head_dim"),
    ({"hidden_size": 250, "head_dim": None}, "num_heads"),
    ({"model_type": "mistral", "sliding_window": 128}, "sliding_window"),
    ({"model_type": "qwen2", "sliding_window": 128, "use_sliding_window": True},
     "sliding_window"),
    ({"quantization_config": {"quant_method": "awq"}}, "quantization_config"),
    ({"model_type": "deepseek_v3"}, "model_type"),
])
def test_what_we_do_not_run_is_refused_naming_the_field(tmp_path, change, field):
    with pytest.raises(ValueError) as refused:
        _read(tmp_path, {**LLAMA, **change})
    message = str(refused.value)
    assert "config.json" in message and field in message and "\n" not in message, message


def test_a_window_as_long_as_the_positions_is_full_attention(tmp_path):
    mistral = {**LLAMA, "model_type": "mistral", "sliding_window": 512}
    assert _read(tmp_path, mistral).max_positions == 512


LLAMA31_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 128, "rope_type": "llama3"}


def _both_styles(rope: dict) -> list[dict]:
    """A config with `rope` as transformers 4 writes it (rope_scaling + top-level theta) and
    as transformers 5 does (rope_parameters holding the theta)."""
    old = {**LLAMA, "rope_scaling": rope}
    new = {k: v for k, v in LLAMA.items() if k != "rope_theta"}
    new["rope_parameters"] = {**rope, "rope_theta": LLAMA["rope_theta"]}
    return [old, new]


@pytest.mark.parametrize("style", [0, 1])
def test_llama3_rope_scaling_is_read_in_both_styles(tmp_path, style):
    spec = _read(tmp_path, _both_styles(LLAMA31_SCALING)[style])
    assert spec.rope_scaling == Llama3RopeScaling(factor=8.0, low_freq_factor=1.0,
                                                  high_freq_factor=4.0,
                                                  original_max_positions=128)
    assert spec.rope_theta == 500000.0


@pytest.mark.parametrize("style", [0, 1])
def test_linear_rope_scaling_is_read_in_both_styles(tmp_path, style):
    # transformers 4 also wrote "type" instead of "rope_type"
    spec = _read(tmp_path, _both_styles({"type": "linear", "factor": 2.0})[style])
    assert spec.rope_scaling == LinearRopeScaling(factor=2.0)


@pytest.mark.parametrize("style", [0, 1])
def test_yarn_rope_scaling_is_read_in_both_styles(tmp_path, style):
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
            "beta_fast": 16, "beta_slow": 2, "mscale": 1.0, "mscale_all_dim": 0.5,
            "truncate": False}
    spec = _read(tmp_path, _both_styles(rope)[style])
    assert spec.rope_scaling == YarnRopeScaling(factor=4.0, original_max_positions=128,
                                                beta_fast=16, beta_slow=2, mscale=1.0,
                                                mscale_all_dim=0.5, truncate=False)
    # transformers: (0.1 * 1.0 * ln 4 + 1) / (0.1 * 0.5 * ln 4 + 1)
    assert spec.rope_scaling.attention_scaling == pytest.approx(1.138629 / 1.069315, rel=1e-6)


def test_yarn_defaults_are_transformers_own(tmp_path):
    """No factor: positions / original; no original: max_position_embeddings; no
    attention_factor: 0.1 ln(factor) + 1; a given attention_factor is used as is."""
    spec = _read(tmp_path, {**LLAMA, "rope_scaling": {"rope_type": "yarn",
                                                      "original_max_position_embeddings": 128}})
    assert spec.rope_scaling.factor == 4.0 and spec.rope_scaling.original_max_positions == 128
    assert spec.rope_scaling.attention_scaling == pytest.approx(0.1 * 1.3862944 + 1.0)
    spec = _read(tmp_path, {**LLAMA, "rope_scaling": {"rope_type": "yarn", "factor": 2.0,
                                                      "attention_factor": 0.9}})
    assert spec.rope_scaling.original_max_positions == 512
    assert spec.rope_scaling.attention_scaling == 0.9


def test_a_top_level_original_max_position_embeddings_wins(tmp_path):
    """As transformers' standardize_rope_params (Phi-3 style configs)."""
    config = {**LLAMA, "original_max_position_embeddings": 64, "rope_scaling": LLAMA31_SCALING}
    assert _read(tmp_path, config).rope_scaling.original_max_positions == 64


def test_qwen3_reads_head_dim_and_q_k_norms(tmp_path):
    qwen3 = {**LLAMA, "model_type": "qwen3", "head_dim": 64, "attention_bias": False,
             "layer_types": ["full_attention"] * 4, "use_sliding_window": False,
             "sliding_window": None}
    spec = _read(tmp_path, qwen3)
    assert (spec.head_dim, spec.q_dim, spec.qk_norm, spec.attention_bias) == (64, 512, True,
                                                                              False)
    bare = {k: v for k, v in qwen3.items() if k != "head_dim"}
    assert _read(tmp_path, bare).head_dim == 128     # Qwen3Config's default


def test_llama_head_dim_defaults_to_hidden_over_heads_and_may_differ(tmp_path):
    assert _read(tmp_path, LLAMA).head_dim == 32
    spec = _read(tmp_path, {**LLAMA, "head_dim": 64})
    assert spec.head_dim == 64 and spec.kv_dim == 256 and spec.q_dim == 512
