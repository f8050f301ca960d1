"""Mixture-of-experts specs: configs of qwen2_moe / qwen3_moe / mixtral written by transformers
read back as the expected ModelSpec; parameter counts equal transformers' own models (tiny
sizes) and the published totals and active counts of the presets; what a MoE config says and
we do not run is refused with one line naming the file and the field."""

from __future__ import annotations

import json

import pytest

from planner.domain.model_files import REQUIRED_KEYS, resolve_model, spec_from_hf_config
from planner.domain.modelspec import PRESETS, ModelSpec, MoeSpec
from planner.frameworks.model_reference import hub_id_for, preset_name_of_hub_id

transformers = pytest.importorskip("transformers")

TINY = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 128, "intermediate_size": 96,
        "max_position_embeddings": 256}


def _saved(tmp_path, config) -> ModelSpec:
    """`config` (a transformers config object) saved with save_pretrained and read back."""
    folder = tmp_path / "model"
    config.save_pretrained(folder)
    return spec_from_hf_config(folder / "config.json")


def _read(tmp_path, config: dict) -> ModelSpec:
    path = tmp_path / "model" / "config.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(config))
    return spec_from_hf_config(path)


def _tiny_configs():
    """One tiny config of each family, with the fields that distinguish it set off-default."""
    return {
        "qwen3_moe": transformers.Qwen3MoeConfig(
            **TINY, head_dim=48, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
            norm_topk_prob=True, tie_word_embeddings=True),
        "qwen2_moe": transformers.Qwen2MoeConfig(
            **TINY, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
            shared_expert_intermediate_size=80),
        "mixtral": transformers.MixtralConfig(**TINY, num_local_experts=4, num_experts_per_tok=2),
    }


EXPECTED = {
    "qwen3_moe": ModelSpec(
        name="model", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
        intermediate_size=96, vocab_size=128, max_positions=256, head_dim=48, norm_eps=1e-6,
        qk_norm=True, tie_embeddings=True,
        moe=MoeSpec(family="qwen3_moe", num_experts=8, experts_per_token=2,
                    expert_intermediate_size=32, normalize_top_k=True)),
    "qwen2_moe": ModelSpec(
        name="model", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
        intermediate_size=96, vocab_size=128, max_positions=256, norm_eps=1e-6,
        attention_bias=True,
        moe=MoeSpec(family="qwen2_moe", num_experts=4, experts_per_token=2,
                    expert_intermediate_size=32, shared_expert_intermediate_size=80,
                    normalize_top_k=False)),
    "mixtral": ModelSpec(
        name="model", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
        intermediate_size=96, vocab_size=128, max_positions=256, rope_theta=1e6,
        moe=MoeSpec(family="mixtral", num_experts=4, experts_per_token=2,
                    expert_intermediate_size=96, normalize_top_k=True)),
}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_a_saved_tiny_config_reads_back_as_its_spec(tmp_path, family):
    assert _saved(tmp_path, _tiny_configs()[family]) == EXPECTED[family]


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_total_parameters_equal_the_transformers_model(family):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_tiny_configs()[family])
    # parameters() yields a tied embedding once, as num_params counts it
    assert EXPECTED[family].num_params() == sum(p.numel() for p in model.parameters())


def test_active_parameters_by_hand():
    """h 64, 2 layers, vocab 128; q 4 x 48, kv 2 x 48 (qwen3_moe) or 2 x 16."""
    embed = 128 * 64
    # qwen3_moe: q/o 64 x 192, k/v 64 x 96, q/k norms 48; router 8 x 64; 2 of 8 experts of
    # 3 x 64 x 32; two norms; final norm; tied head.
    block = 2 * 64 * 192 + 2 * 64 * 96 + 2 * 48 + 8 * 64 + 2 * 3 * 64 * 32 + 2 * 64
    assert EXPECTED["qwen3_moe"].active_params() == embed + 2 * block + 64
    # qwen2_moe: q/o 64 x 64, k/v 64 x 32, q/k/v biases 64 + 2 x 32; router 4 x 64 and the
    # shared expert's gate 64; 2 experts of 3 x 64 x 32; shared expert 3 x 64 x 80; untied.
    block = (2 * 64 * 64 + 2 * 64 * 32 + 128 + 4 * 64 + 64 + 2 * 3 * 64 * 32 + 3 * 64 * 80
             + 2 * 64)
    assert EXPECTED["qwen2_moe"].active_params() == 2 * embed + 2 * block + 64
    # mixtral: 2 of 4 experts of 3 x 64 x 96; no biases, no q/k norms.
    block = 2 * 64 * 64 + 2 * 64 * 32 + 4 * 64 + 2 * 3 * 64 * 96 + 2 * 64
    assert EXPECTED["mixtral"].active_params() == 2 * embed + 2 * block + 64
    # a value head replaces the LM head with h + 1
    assert EXPECTED["mixtral"].active_params("value") == embed + 2 * block + 64 + 65


@pytest.mark.parametrize("name,family", [("moe-tiny", "qwen3_moe"),
                                         ("moe-tiny-shared", "qwen2_moe")])
def test_the_tiny_presets_are_what_transformers_builds_from_their_config(tmp_path, name,
                                                                          family):
    torch = pytest.importorskip("torch")
    spec = PRESETS[name]
    fields = {"num_hidden_layers": spec.num_layers, "hidden_size": spec.hidden_size,
              "num_attention_heads": spec.num_heads, "num_key_value_heads": spec.num_kv_heads,
              "intermediate_size": spec.intermediate_size, "vocab_size": spec.vocab_size,
              "max_position_embeddings": spec.max_positions,
              "num_experts": spec.moe.num_experts,
              "num_experts_per_tok": spec.moe.experts_per_token,
              "moe_intermediate_size": spec.moe.expert_intermediate_size,
              "norm_topk_prob": spec.moe.normalize_top_k}
    if family == "qwen2_moe":
        config = transformers.Qwen2MoeConfig(
            **fields, shared_expert_intermediate_size=spec.moe.shared_expert_intermediate_size)
    else:
        config = transformers.Qwen3MoeConfig(**fields)
    assert _saved(tmp_path, config) == spec.model_copy(update={"name": "model"})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    assert spec.num_params() == sum(p.numel() for p in model.parameters())


# The published config.json of each preset's checkpoint (architecture keys and the keys we
# ignore as they stand there; token ids and dtype left out).
QWEN3_MOE_PUBLISHED = {
    "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False,
    "attention_dropout": 0.0, "decoder_sparse_step": 1, "hidden_act": "silu",
    "initializer_range": 0.02, "mlp_only_layers": [], "model_type": "qwen3_moe",
    "norm_topk_prob": True, "num_experts": 128, "num_experts_per_tok": 8,
    "output_router_logits": False, "rms_norm_eps": 1e-06, "rope_scaling": None,
    "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001, "sliding_window": None,
    "tie_word_embeddings": False, "use_cache": True, "use_sliding_window": False,
    "vocab_size": 151936, "head_dim": 128, "max_position_embeddings": 40960,
}
PUBLISHED_CONFIGS = {
    "qwen3-30b-a3b": {**QWEN3_MOE_PUBLISHED, "hidden_size": 2048, "intermediate_size": 6144,
                      "max_window_layers": 48, "moe_intermediate_size": 768,
                      "num_attention_heads": 32, "num_hidden_layers": 48,
                      "num_key_value_heads": 4},
    "qwen3-235b-a22b": {**QWEN3_MOE_PUBLISHED, "hidden_size": 4096, "intermediate_size": 12288,
                        "max_window_layers": 94, "moe_intermediate_size": 1536,
                        "num_attention_heads": 64, "num_hidden_layers": 94,
                        "num_key_value_heads": 4},
    "mixtral-8x7b": {
        "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0,
        "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
        "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mixtral",
        "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32,
        "num_key_value_heads": 8, "num_local_experts": 8, "output_router_logits": False,
        "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02,
        "sliding_window": None, "tie_word_embeddings": False, "use_cache": True,
        "vocab_size": 32000},
}
# Model cards: (total, activated, non-embedding) parameters in billions and the digits given
# after the point. The Qwen3 cards do not round consistently (3,353,032,704 activated is
# given as 3.3B, 233.85B non-embedding as 234B), so a count must lie within one unit of the
# last digit given.
PUBLISHED_BILLIONS = {
    "qwen3-30b-a3b": ((30.5, 1), (3.3, 1), (29.9, 1)),      # Qwen/Qwen3-30B-A3B
    "qwen3-235b-a22b": ((235, 0), (22, 0), (234, 0)),      # Qwen/Qwen3-235B-A22B
    "mixtral-8x7b": ((46.7, 1), (12.9, 1), None),          # mistralai/Mixtral-8x7B-v0.1
}


def _hf_counts(config: dict) -> tuple[int, int]:
    """(total, active) parameters of the transformers model of `config`, counted from its
    keys as the modeling files build the modules (checked against transformers itself on tiny
    sizes below)."""
    h, heads = config["hidden_size"], config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    kind = config["model_type"]
    attention = 2 * h * heads * head_dim + 2 * h * kv * head_dim
    if kind == "qwen2_moe" and config.get("qkv_bias", True):
        attention += heads * head_dim + 2 * kv * head_dim
    if kind == "qwen3_moe":
        attention += 2 * head_dim
    experts = config.get("num_experts") or config.get("num_local_experts")
    width = config["intermediate_size" if kind == "mixtral" else "moe_intermediate_size"]
    shared = config.get("shared_expert_intermediate_size", 0) if kind == "qwen2_moe" else 0
    fixed = attention + 2 * h + h * experts + (3 * h * shared + h if shared else 0)
    layers = config["num_hidden_layers"]
    ends = config["vocab_size"] * h * (1 if config.get("tie_word_embeddings") else 2) + h
    total = ends + layers * (fixed + experts * 3 * h * width)
    active = ends + layers * (fixed + config["num_experts_per_tok"] * 3 * h * width)
    return total, active


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_the_analytic_count_is_transformers_own(tmp_path, family):
    torch = pytest.importorskip("torch")
    config = _tiny_configs()[family]
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    assert _hf_counts(saved)[0] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PUBLISHED_CONFIGS))
def test_presets_are_their_published_config_and_counts(tmp_path, name):
    spec = PRESETS[name]
    assert _read(tmp_path, PUBLISHED_CONFIGS[name]) == spec.model_copy(update={"name": "model"})
    assert (spec.num_params(), spec.active_params()) == _hf_counts(PUBLISHED_CONFIGS[name])
    body = spec.num_params() - spec.embedding_params() - spec.vocab_size * spec.hidden_size
    for count, published in zip((spec.num_params(), spec.active_params(), body),
                                PUBLISHED_BILLIONS[name]):
        if published is not None:
            billions, digits = published
            assert abs(count / 1e9 - billions) < 10.0 ** -digits, (count, published)


@pytest.mark.parametrize("name", sorted(PUBLISHED_CONFIGS))
def test_presets_resolve_by_name_and_hub_id(name):
    assert resolve_model(name) == PRESETS[name]
    assert hub_id_for(PRESETS[name]) is not None
    assert preset_name_of_hub_id(hub_id_for(PRESETS[name])) == name
    assert preset_name_of_hub_id("mistralai/Mixtral-8x7B-Instruct-v0.1") == "mixtral-8x7b"


QWEN3_MOE = {**TINY, "model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 2,
             "moe_intermediate_size": 32, "head_dim": 16}
QWEN2_MOE = {**TINY, "model_type": "qwen2_moe", "num_experts": 8, "num_experts_per_tok": 2,
             "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64}
MIXTRAL = {**TINY, "model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2}


@pytest.mark.parametrize("base,change,field", [
    (QWEN3_MOE, {"mlp_only_layers": [1]}, "mlp_only_layers"),
    (QWEN2_MOE, {"mlp_only_layers": 0}, "mlp_only_layers"),
    (QWEN3_MOE, {"decoder_sparse_step": 2}, "decoder_sparse_step"),
    (QWEN2_MOE, {"decoder_sparse_step": 0}, "decoder_sparse_step"),
    (QWEN3_MOE, {"output_router_logits": True}, "output_router_logits"),
    (MIXTRAL, {"output_router_logits": True}, "output_router_logits"),
    (QWEN3_MOE, {"output_router_logits": "yes"}, "output_router_logits"),
    (MIXTRAL, {"router_jitter_noise": 0.01}, "router_jitter_noise"),
    (MIXTRAL, {"router_jitter_noise": "0.01"}, "router_jitter_noise"),
    (MIXTRAL, {"sliding_window": 128}, "sliding_window"),
    (QWEN3_MOE, {"use_sliding_window": True, "sliding_window": 128}, "sliding_window"),
    (QWEN2_MOE, {"use_sliding_window": True, "sliding_window": 128}, "sliding_window"),
    (QWEN3_MOE, {"attention_dropout": 0.1}, "attention_dropout"),
    (QWEN3_MOE, {"attention_bias": True}, "attention_bias"),
    (MIXTRAL, {"attention_bias": True}, "attention_bias"),
    (QWEN2_MOE, {"qkv_bias": "true"}, "qkv_bias"),
    (QWEN3_MOE, {"norm_topk_prob": 1}, "norm_topk_prob"),
    (QWEN3_MOE, {"num_local_experts": 4}, "num_local_experts"),
    (MIXTRAL, {"num_experts": 4}, "num_experts"),
    (QWEN2_MOE, {"shared_expert_intermediate_size": 0}, "shared_expert_intermediate_size"),
    (QWEN2_MOE, {"shared_expert_intermediate_size": -1}, "shared_expert_intermediate_size"),
    (QWEN3_MOE, {"num_experts": 1}, "num_experts"),
    (QWEN3_MOE, {"num_experts_per_tok": 9}, "num_experts_per_tok"),
    (QWEN3_MOE, {"num_experts_per_tok": 0}, "num_experts_per_tok"),
    (QWEN3_MOE, {"moe_intermediate_size": 0}, "moe_intermediate_size"),
    (MIXTRAL, {"num_local_experts": 10_000}, "num_local_experts"),
    (MIXTRAL, {"hidden_act": "gelu"}, "hidden_act"),
    (QWEN3_MOE, {"quantization_config": {"quant_method": "fp8"}}, "quantization_config"),
])
def test_what_a_moe_config_says_and_we_do_not_run_is_refused(tmp_path, base, change, field):
    with pytest.raises(ValueError) as refused:
        _read(tmp_path, {**base, **change})
    message = str(refused.value)
    assert "config.json" in message and field in message and "\n" not in message, message


@pytest.mark.parametrize("model_type,extra,what", [
    ("deepseek_v3", {"n_routed_experts": 256, "kv_lora_rank": 512}, "latent attention"),
    ("deepseek_v2", {"n_routed_experts": 64, "kv_lora_rank": 512}, "latent attention"),
    ("qwen3_next", {"num_experts": 512}, "linear-attention"),
    ("olmoe", {"num_experts": 64}, "num_experts"),
    ("granitemoe", {"num_local_experts": 32}, "num_local_experts"),
])
def test_other_moe_types_are_refused_naming_what_is_missing(tmp_path, model_type, extra, what):
    with pytest.raises(ValueError) as refused:
        _read(tmp_path, {**TINY, "model_type": model_type, **extra})
    message = str(refused.value)
    assert "config.json" in message and "model_type" in message and what in message
    assert "qwen3_moe" in message and "\n" not in message, message


# Every key transformers 5.24 writes for a MoE config is read, refused unless it is the
# value we run, or ignored as irrelevant to what we compute (planner.domain.model_files).
READ = set(REQUIRED_KEYS) | {
    "model_type", "num_key_value_heads", "head_dim", "rms_norm_eps", "hidden_act",
    "tie_word_embeddings", "rope_parameters", "rope_scaling", "rope_theta", "attention_bias",
    "qkv_bias", "sliding_window", "use_sliding_window", "layer_types", "num_experts",
    "num_local_experts", "num_experts_per_tok", "moe_intermediate_size",
    "shared_expert_intermediate_size", "norm_topk_prob"}
REFUSED_UNLESS_RUN = {"mlp_only_layers", "decoder_sparse_step", "output_router_logits",
                      "router_jitter_noise", "attention_dropout"}
IGNORED = {"router_aux_loss_coef": 0.5, "max_window_layers": 1, "initializer_range": 0.5,
           "use_cache": False, "bos_token_id": 7, "eos_token_id": 8, "pad_token_id": 9,
           "transformers_version": "0.0"}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_every_key_transformers_writes_is_read_refused_or_ignored(tmp_path, family):
    config = _tiny_configs()[family]
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert set(saved) - READ - REFUSED_UNLESS_RUN - set(IGNORED) == set()
    # the ignored keys change nothing we compute
    ignored = {key: value for key, value in IGNORED.items() if key in saved}
    assert _read(tmp_path, {**saved, **ignored}) == EXPECTED[family]


def test_qwen3_moe_head_dim_defaults_to_hidden_over_heads(tmp_path):
    """Unlike Qwen3Config (128), Qwen3MoeConfig has no head_dim: the attention takes
    hidden_size / heads (modeling_qwen3_moe.Qwen3MoeAttention)."""
    bare = {k: v for k, v in QWEN3_MOE.items() if k != "head_dim"}
    assert _read(tmp_path, bare).head_dim == 16


def test_absent_moe_keys_take_the_transformers_defaults(tmp_path):
    bare = {k: v for k, v in QWEN2_MOE.items()
            if k not in ("num_experts", "num_experts_per_tok", "moe_intermediate_size",
                         "shared_expert_intermediate_size")}
    default = transformers.Qwen2MoeConfig()
    moe = _read(tmp_path, {**bare, "qkv_bias": False}).moe
    assert (moe.num_experts, moe.experts_per_token, moe.expert_intermediate_size,
            moe.shared_expert_intermediate_size, moe.normalize_top_k) == (
        default.num_experts, default.num_experts_per_tok, default.moe_intermediate_size,
        default.shared_expert_intermediate_size, default.norm_topk_prob)
    assert not _read(tmp_path, {**bare, "qkv_bias": False}).attention_bias
    mixtral = _read(tmp_path, {k: v for k, v in MIXTRAL.items()
                               if k not in ("num_local_experts", "num_experts_per_tok")})
    assert (mixtral.moe.num_experts, mixtral.moe.experts_per_token) == (8, 2)


def test_a_mixtral_spec_has_one_mlp_width():
    with pytest.raises(ValueError, match="intermediate_size"):
        PRESETS["mixtral-8x7b"].model_validate(
            {**PRESETS["mixtral-8x7b"].model_dump(), "intermediate_size": 4096})
