"""Model specs by name or from a local HF `config.json`, each field mapped explicitly.

A config is read for what our engine runs: the LLaMA architecture (RMSNorm, rotary
positions, SwiGLU MLP, grouped-query attention) of `LlamaForCausalLM`, `Qwen2ForCausalLM`,
`Qwen3ForCausalLM` (q/k RMSNorm per head) and `MistralForCausalLM`, with any `head_dim` and
the rotary scalings "llama3", "linear" and "yarn" (planner.domain.modelspec). Everything else
a config can say and we do not run is refused with one line naming the file, the field and
what is supported, never read as something else (the transformers docs of LlamaConfig,
Qwen2Config, Qwen3Config and MistralConfig give the fields and their defaults):
- `hidden_act` other than silu; `mlp_bias`; Llama/Mistral/Qwen3 `attention_bias` (it adds an
  o_proj bias too, which our blocks do not have; Qwen2 always has q/k/v biases and no o_proj
  bias, which we run);
- rotary types other than default, llama3, linear and yarn (dynamic, longrope, ...), a field
  of the rope object its type does not use, and `partial_rotary_factor` other than 1;
- a sliding window shorter than the positions (Mistral `sliding_window`, Qwen2/Qwen3 with
  `use_sliding_window`, `layer_types` naming sliding attention), and quantized checkpoints
  (`quantization_config`).
The rope object is `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5,
which also holds `rope_theta`); transformers 5 reads `rope_scaling` in preference, and a
config giving both with different contents is refused. As in transformers'
standardize_rope_params, llama3 and yarn take `original_max_position_embeddings` from the top
level if there, else from the rope object, else `max_position_embeddings`; yarn without a
factor takes max_position_embeddings / original_max_position_embeddings.
Defaults where a key is absent are transformers' own: `rms_norm_eps` 1e-6,
`num_key_value_heads` = `num_attention_heads`, `hidden_act` silu, no rope scaling, `head_dim`
hidden_size / num_attention_heads (Qwen3Config: 128), `rope_theta` 10000 (MixtralConfig: 1e6).

Mixture-of-experts configs (transformers 5.24's Qwen2MoeConfig, Qwen3MoeConfig, MixtralConfig
and their modeling files) are read into `ModelSpec.moe` with the attention of their dense
relatives: `qwen2_moe` as Qwen2 with q/k/v biases by `qkv_bias` (default true), `qwen3_moe` as
Qwen3 (q/k norms, `attention_bias` refused) but with head_dim hidden / heads when absent, and
`mixtral` as Mistral. The block: `num_experts` (Qwen3-MoE and Mixtral also spell it
`num_local_experts`, which transformers 5 writes; a config giving both differently is
refused), `num_experts_per_tok`, `moe_intermediate_size` (Mixtral: `intermediate_size`, its
one MLP width), Qwen2-MoE's `shared_expert_intermediate_size` (0 refused: transformers would
still build the expert's gate), `norm_topk_prob` (Mixtral always renormalises); absent keys
take transformers' defaults (HF_MOE_DEFAULTS). Refused: dense blocks (`mlp_only_layers`
non-empty, `decoder_sparse_step` other than 1), `output_router_logits: true` (the router's
load-balancing loss is not run), Mixtral `router_jitter_noise` above 0 (input noise in
training), `attention_dropout` other than 0, and every other MoE model type, naming what is
missing (UNSUPPORTED_MOE_TYPES; others by their expert-count key). Ignored as irrelevant to
what we compute: `router_aux_loss_coef` (scales the refused load-balancing loss),
`max_window_layers` (only with a sliding window), Qwen-MoE's `intermediate_size` (only dense
blocks use it), keys the family's transformers model does not read (`use_qk_norm`,
`qkv_bias` and `shared_expert_intermediate_size` of qwen3_moe, `norm_topk_prob` of mixtral,
`attention_bias` of qwen2_moe), and, as for dense configs, `initializer_range`, `use_cache`,
the token ids, dtypes and versions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from planner.domain.errors import InputError, describe_validation_error
from planner.domain.input_files import load_json_input
from planner.domain.modelspec import PRESETS, ModelSpec, MoeFamily, MoeSpec

DENSE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
MOE_MODEL_TYPES: tuple[str, ...] = get_args(MoeFamily)    # the model types are the families
SUPPORTED_MODEL_TYPES = DENSE_MODEL_TYPES + MOE_MODEL_TYPES
REQUIRED_KEYS = {"num_hidden_layers": "num_layers", "hidden_size": "hidden_size",
                 "num_attention_heads": "num_heads", "intermediate_size": "intermediate_size",
                 "vocab_size": "vocab_size", "max_position_embeddings": "max_positions"}
HF_RMS_NORM_EPS_DEFAULT = 1e-6     # LlamaConfig / Qwen2Config / MistralConfig default
HF_HEAD_DIM_DEFAULT = {"qwen3": 128}   # Qwen3Config.head_dim; the others: hidden / heads
HF_ROPE_THETA_DEFAULT = {"mixtral": 1e6}   # MixtralConfig.default_theta; the others: 1e4
DEFAULT_ROPE_TYPES = (None, "default")
BOOLEAN_KEYS = ("attention_bias", "mlp_bias", "tie_word_embeddings", "use_sliding_window",
                "qkv_bias", "norm_topk_prob", "output_router_logits")
# Fields of each rope type, HF name -> RopeScaling field (transformers ROPE_INIT_FUNCTIONS).
ROPE_FIELDS = {
    "default": {},
    "linear": {"factor": "factor"},
    "llama3": {"factor": "factor", "low_freq_factor": "low_freq_factor",
               "high_freq_factor": "high_freq_factor",
               "original_max_position_embeddings": "original_max_positions"},
    "yarn": {"factor": "factor", "original_max_position_embeddings": "original_max_positions",
             "beta_fast": "beta_fast", "beta_slow": "beta_slow",
             "attention_factor": "attention_factor", "mscale": "mscale",
             "mscale_all_dim": "mscale_all_dim", "truncate": "truncate"},
}
# Keys any rope object may hold besides its type's fields.
ROPE_COMMON_KEYS = ("rope_type", "type", "rope_theta", "partial_rotary_factor")
# Qwen3Config (and transformers 5's Qwen2Config) attention kinds per layer.
FULL_ATTENTION = "full_attention"
# Model types whose q/k/v biases come without an attention_bias key (Qwen2 always has them,
# Qwen2-MoE by its qkv_bias).
QKV_BIAS_TYPES = ("qwen2", "qwen2_moe")
# Model types whose sliding_window applies only with use_sliding_window (their configs'
# __post_init__ clears it otherwise).
WINDOW_FLAG_TYPES = ("qwen2", "qwen2_moe", "qwen3_moe")
QK_NORM_TYPES = ("qwen3", "qwen3_moe")

# The HF keys of each MoeSpec field (Qwen3MoeConfig and MixtralConfig alias num_experts and
# num_local_experts through attribute_map; Qwen2MoeConfig knows num_experts only).
EXPERT_COUNT_KEYS = {"qwen2_moe": ("num_experts",),
                     "qwen3_moe": ("num_experts", "num_local_experts"),
                     "mixtral": ("num_local_experts", "num_experts")}
MOE_KEYS = {
    "qwen2_moe": {"experts_per_token": "num_experts_per_tok",
                  "expert_intermediate_size": "moe_intermediate_size",
                  "shared_expert_intermediate_size": "shared_expert_intermediate_size",
                  "normalize_top_k": "norm_topk_prob"},
    "qwen3_moe": {"experts_per_token": "num_experts_per_tok",
                  "expert_intermediate_size": "moe_intermediate_size",
                  "normalize_top_k": "norm_topk_prob"},
    "mixtral": {"experts_per_token": "num_experts_per_tok",
                "expert_intermediate_size": "intermediate_size"},
}
# Transformers 5.24's defaults of those keys (the config classes' field defaults; the expert
# count under its first key above).
HF_MOE_DEFAULTS = {
    "qwen2_moe": {"num_experts": 60, "num_experts_per_tok": 4, "moe_intermediate_size": 1408,
                  "shared_expert_intermediate_size": 5632, "norm_topk_prob": False},
    "qwen3_moe": {"num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768,
                  "norm_topk_prob": False},
    "mixtral": {"num_local_experts": 8, "num_experts_per_tok": 2},
}
# MoE model types transformers has whose blocks we do not run, and what is missing.
_LATENT_ATTENTION = ("multi-head latent attention (kv_lora_rank, q_lora_rank, "
                     "qk_rope_head_dim: low-rank q/kv projections with a decoupled rotary "
                     "head) is not an attention we run")
_LINEAR_ATTENTION = ("gated DeltaNet linear-attention layers (linear_* fields) and "
                     "output-gated attention are not blocks we run")
UNSUPPORTED_MOE_TYPES = {
    "deepseek_v2": _LATENT_ATTENTION,
    "deepseek_v3": _LATENT_ATTENTION + ", and neither is its group-limited sigmoid routing",
    "deepseek_v32": _LATENT_ATTENTION + ", and neither is its sparse attention",
    "qwen3_next": _LINEAR_ATTENTION,
    "qwen3_5_moe": _LINEAR_ATTENTION,
}
# Keys by which a config of any other model type shows it is a mixture of experts.
EXPERT_COUNT_HINTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def _refusal(config: dict[str, Any], model_type: str) -> str | None:
    """`field: what is wrong; what is supported` for the first thing we do not run, or None."""
    for key in BOOLEAN_KEYS:
        if key in config and not isinstance(config[key], bool):
            return f"{key}: got {config[key]!r}; give true or false"
    act = config.get("hidden_act", "silu")
    if act != "silu":
        return f"hidden_act: {act!r} is not run; supported: 'silu' (SwiGLU)"
    if config.get("mlp_bias"):
        return "mlp_bias: true is not run; supported: MLP projections without biases"
    if model_type not in QKV_BIAS_TYPES and config.get("attention_bias"):
        return ("attention_bias: true (q, k, v and o_proj biases) is not run for "
                f"{model_type}; supported: no biases, or Qwen2's q/k/v biases")
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        return (f"partial_rotary_factor: {config['partial_rotary_factor']!r} is not run; "
                f"supported: 1 (rotary over the whole head)")
    window = _active_sliding_window(config, model_type)
    positions = config.get("max_position_embeddings")
    if window is not None and isinstance(positions, int) and window < positions:
        return (f"sliding_window: attention over the last {window} tokens is not run "
                f"(max_position_embeddings is {positions}); supported: full causal attention")
    layer_types = config.get("layer_types")
    if layer_types is not None and (not isinstance(layer_types, list) or any(
            kind != FULL_ATTENTION for kind in layer_types)):
        return (f"layer_types: {layer_types!r} is not run; supported: "
                f"{FULL_ATTENTION!r} for every layer")
    if config.get("quantization_config") is not None:
        return "quantization_config: quantized checkpoints are not run; supported: bf16/fp32"
    return None


def _active_sliding_window(config: dict[str, Any], model_type: str) -> int | None:
    """The sliding window the model uses, or None (Qwen2 and Qwen-MoE use it only when asked
    to)."""
    if model_type in WINDOW_FLAG_TYPES and not config.get("use_sliding_window", False):
        return None
    window = config.get("sliding_window")
    return window if isinstance(window, int) else None


def _model_type_problem(config: dict[str, Any]) -> str | None:
    """Why the config's model_type is not one we read (naming what an MoE type lacks), or
    None."""
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in SUPPORTED_MODEL_TYPES:
        return None
    supported = (f"supported: dense {list(DENSE_MODEL_TYPES)}, mixture-of-experts "
                 f"{list(MOE_MODEL_TYPES)}")
    if not isinstance(model_type, str):
        return f"model_type: got {model_type!r}; valid: {list(SUPPORTED_MODEL_TYPES)}"
    if model_type in UNSUPPORTED_MOE_TYPES:
        return f"model_type {model_type!r}: {UNSUPPORTED_MOE_TYPES[model_type]}; {supported}"
    hint = next((key for key in EXPERT_COUNT_HINTS if key in config), None)
    if hint is not None:
        return (f"model_type {model_type!r}: a mixture of experts ({hint}) whose block and "
                f"routing are not ones we run; {supported}")
    return f"model_type {model_type!r} is not supported; valid: {list(SUPPORTED_MODEL_TYPES)}"


def _moe_refusal(config: dict[str, Any], model_type: str) -> str | None:
    """`field: what is wrong; what is supported` for the first thing of a MoE config we do
    not run (module docstring), or None."""
    given = {key: config[key] for key in EXPERT_COUNT_KEYS[model_type] if key in config}
    if len(set(map(repr, given.values()))) > 1:
        first, second = given
        return (f"{first}: {given[first]!r} but {second} is {given[second]!r}; they name the "
                f"same expert count: give one")
    dense = config.get("mlp_only_layers")     # Qwen-MoE's; MixtralConfig has neither key
    if model_type != "mixtral" and dense is not None and dense != []:
        return (f"mlp_only_layers: {dense!r} (dense blocks) is not run; supported: [] (every "
                f"block a mixture of experts)")
    step = config.get("decoder_sparse_step", 1)
    if model_type != "mixtral" and (step != 1 or isinstance(step, bool)):
        return (f"decoder_sparse_step: {step!r} (dense blocks between the sparse ones) is not "
                f"run; supported: 1 (every block a mixture of experts)")
    if config.get("output_router_logits"):
        return ("output_router_logits: true (the router's load-balancing loss added to the "
                "loss) is not run; supported: false")
    jitter = config.get("router_jitter_noise", 0.0)
    if model_type == "mixtral" and (not isinstance(jitter, (int, float)) or
                                    isinstance(jitter, bool) or jitter > 0):
        return (f"router_jitter_noise: {jitter!r} (noise on the block's input in training) is "
                f"not run; supported: 0")
    dropout = config.get("attention_dropout", 0.0)
    if dropout != 0 or isinstance(dropout, bool):
        return f"attention_dropout: {dropout!r} is not run; supported: 0"
    if model_type == "qwen2_moe" and config.get("shared_expert_intermediate_size") == 0:
        return ("shared_expert_intermediate_size: 0 is not run (transformers still builds the "
                "shared expert's gate); supported: a positive width, or qwen3_moe for a block "
                "without a shared expert")
    return None


def _moe_spec(config: dict[str, Any], model_type: str, config_path: Path) -> MoeSpec:
    """The MoeSpec of a MoE config that passed _moe_refusal; ValueError naming the HF key."""
    defaults = HF_MOE_DEFAULTS[model_type]
    count_key = next((key for key in EXPERT_COUNT_KEYS[model_type] if key in config),
                     EXPERT_COUNT_KEYS[model_type][0])
    hf_keys = {"num_experts": count_key, **MOE_KEYS[model_type]}
    fields: dict[str, Any] = {name: config.get(key, defaults.get(key))
                              for name, key in hf_keys.items()}
    if model_type == "mixtral":
        fields["normalize_top_k"] = True     # MixtralTopKRouter always renormalises
    try:
        return MoeSpec(family=model_type, **fields)
    except ValidationError as err:
        first = err.errors()[0]
        location = first.get("loc", ())
        key = hf_keys.get(location[0], location[0]) if location else "num_experts_per_tok"
        message = first.get("msg", "invalid").removeprefix("Value error, ")
        raise ValueError(f"{config_path}: {key}: {message}") from None


def _rope_object(config: dict[str, Any]) -> tuple[str, dict[str, Any]] | str:
    """(field name, rope object) as transformers 5 reads it (module docstring), or a problem."""
    objects = {}
    for key in ("rope_scaling", "rope_parameters"):
        value = config.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            return f"{key}: got {value!r}; expected an object"
        objects[key] = value
    if len(objects) == 2:
        scaling, parameters = objects["rope_scaling"], objects["rope_parameters"]
        differ = [k for k in scaling.keys() | parameters.keys()
                  if k != "rope_theta" and scaling.get(k) != parameters.get(k)]
        if differ:
            return (f"rope_scaling: differs from rope_parameters in {sorted(differ)}; give "
                    f"one of them")
    if "rope_scaling" in objects:
        return "rope_scaling", objects["rope_scaling"]
    return "rope_parameters", objects.get("rope_parameters", {})


def _rope_theta(config: dict[str, Any]) -> tuple[float | None, str | None]:
    """(rope_theta, problem): top-level, or inside transformers 5's rope_parameters."""
    top = config.get("rope_theta")
    nested = (config.get("rope_parameters") or {}).get("rope_theta")
    if top is not None and nested is not None and top != nested:
        return None, (f"rope_theta: {top} at the top level but {nested} in rope_parameters; "
                      f"give one")
    return (top if top is not None else nested), None


def _rope_scaling(config: dict[str, Any], key: str, rope: dict[str, Any]
                  ) -> tuple[dict[str, Any] | None, str | None]:
    """(ModelSpec.rope_scaling fields or None for no scaling, problem) of the rope object."""
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ROPE_FIELDS:
        return None, (f"{key}.rope_type: {kind!r} is not run; supported: "
                      f"{sorted(ROPE_FIELDS)}")
    fields = ROPE_FIELDS[kind]
    extra = sorted(k for k in rope if k not in fields and k not in ROPE_COMMON_KEYS)
    if extra:
        return None, (f"{key}: {extra} are not fields of rope type {kind!r}; valid: "
                      f"{sorted(fields)}")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        return None, (f"{key}.partial_rotary_factor: {rope['partial_rotary_factor']!r} is not "
                      f"run; supported: 1 (rotary over the whole head)")
    if kind == "default":
        return None, None
    scaling = {name: rope[hf] for hf, name in fields.items() if rope.get(hf) is not None}
    if "original_max_position_embeddings" in fields:
        top = config.get("original_max_position_embeddings")
        scaling["original_max_positions"] = top if top is not None else rope.get(
            "original_max_position_embeddings", config.get("max_position_embeddings"))
    original, positions = scaling.get("original_max_positions"), config.get(
        "max_position_embeddings")
    if kind == "yarn" and "factor" not in scaling and isinstance(original, (int, float)) and \
            original > 0 and isinstance(positions, (int, float)):
        scaling["factor"] = positions / original
    return {"type": kind, **scaling}, None


def spec_from_hf_config(config_path: Path) -> ModelSpec:
    """A ModelSpec from a local HF `config.json` (module docstring). ValueError with the
    file and field when the config cannot be read (not a regular file, not UTF-8 JSON, NaN
    or infinite numbers), is of an unsupported type, or says something we do not run."""
    try:
        config = load_json_input(config_path)
    except InputError as err:
        raise ValueError(str(err)) from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: (top level): expected an HF config object, got "
                         f"{type(config).__name__}")
    problem = _model_type_problem(config)
    if problem:
        raise ValueError(f"{config_path}: {problem}")
    model_type = config["model_type"]
    problem = _refusal(config, model_type) or (
        _moe_refusal(config, model_type) if model_type in MOE_MODEL_TYPES else None)
    if problem:
        raise ValueError(f"{config_path}: {problem}")
    rope = _rope_object(config)
    if isinstance(rope, str):
        raise ValueError(f"{config_path}: {rope}")
    rope_theta, problem = _rope_theta(config)    # rope_parameters is an object by now
    if problem:
        raise ValueError(f"{config_path}: {problem}")
    rope_scaling, problem = _rope_scaling(config, *rope)
    if problem:
        raise ValueError(f"{config_path}: {problem}")
    missing = [key for key in REQUIRED_KEYS if config.get(key) is None]
    if missing:
        raise ValueError(f"{config_path}: missing field(s) {missing}")
    fields: dict[str, Any] = {name: config[key] for key, name in REQUIRED_KEYS.items()}
    fields["name"] = config_path.parent.name
    fields["num_kv_heads"] = config.get("num_key_value_heads") or fields["num_heads"]
    fields["norm_eps"] = config.get("rms_norm_eps", HF_RMS_NORM_EPS_DEFAULT)
    fields["tie_embeddings"] = config.get("tie_word_embeddings", False)
    fields["attention_bias"] = model_type == "qwen2" or (
        model_type == "qwen2_moe" and config.get("qkv_bias", True))
    fields["qk_norm"] = model_type in QK_NORM_TYPES
    fields["head_dim"] = config.get("head_dim", HF_HEAD_DIM_DEFAULT.get(model_type))
    fields["rope_scaling"] = rope_scaling
    if rope_theta is None:
        rope_theta = HF_ROPE_THETA_DEFAULT.get(model_type)
    if rope_theta is not None:
        fields["rope_theta"] = rope_theta
    if model_type in MOE_MODEL_TYPES:
        fields["moe"] = _moe_spec(config, model_type, config_path)
    try:
        return ModelSpec(**fields)
    except ValidationError as err:
        # A plain ValueError with one line, not pydantic's multi-line report.
        raise ValueError(str(describe_validation_error(err, config_path))) from None


def resolve_model(name_or_path: str, base_dir: Path | None = None) -> ModelSpec:
    """A preset by name, or a directory holding an HF `config.json` (relative to base_dir)."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    path = Path(name_or_path)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    config = path / "config.json"
    # exists(), not is_file(): a FIFO or a folder named config.json is refused by the reader
    # with its reason rather than reported as an unknown model.
    if path.is_dir() and config.exists():
        return spec_from_hf_config(config)
    raise ValueError(f"unknown model {name_or_path!r}; valid: {sorted(PRESETS)} "
                     f"or a directory with an HF config.json")
