"""HF configs are read field by field: what we run is read (both rope_theta styles, the
transformers defaults), and everything else a config can say is refused with one line naming
the file and the field, never read as something else."""

from __future__ import annotations

import json

import pytest

from planner.domain.model_files import spec_from_hf_config

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
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 500000.0}},
     "rope_parameters.rope_type"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}, "rope_theta"),
    ({"rope_parameters": [500000.0]}, "rope_parameters"),
    ({"model_type": "mistral", "sliding_window": 128}, "sliding_window"),
    ({"model_type": "qwen2", "sliding_window": 128, "use_sliding_window": True},
     "sliding_window"),
    ({"head_dim": 64}, "head_dim"),
    ({"quantization_config": {"quant_method": "awq"}}, "quantization_config"),
    ({"model_type": "mixtral"}, "model_type"),
])
def test_what_we_do_not_run_is_refused_naming_the_field(tmp_path, change, field):
    with pytest.raises(ValueError) as refused:
        _read(tmp_path, {**LLAMA, **change})
    message = str(refused.value)
    assert "config.json" in message and field in message and "\n" not in message, message


def test_a_window_as_long_as_the_positions_is_full_attention(tmp_path):
    mistral = {**LLAMA, "model_type": "mistral", "sliding_window": 512}
    assert _read(tmp_path, mistral).max_positions == 512
