"""Model specs by name or from a local HF `config.json`, each field mapped explicitly.

A config is read for what our engine runs: the LLaMA architecture (RMSNorm, rotary
positions, SwiGLU MLP, grouped-query attention) of `LlamaForCausalLM`, `Qwen2ForCausalLM`
and `MistralForCausalLM`. Everything else a config can say and we do not run is refused
with one line naming the file, the field and what is supported, never read as something
else (the transformers docs of LlamaConfig, Qwen2Config and MistralConfig give the fields
and their defaults):
- `hidden_act` other than silu; `mlp_bias`; Llama/Mistral `attention_bias` (it adds an
  o_proj bias too, which our blocks do not have; Qwen2 always has q/k/v biases and no o_proj
  bias, which we run);
- rotary scaling (`rope_scaling`, or a `rope_parameters.rope_type` other than default:
  llama3, linear, yarn, ...); `rope_theta` is read at the top level or, as transformers 5
  writes it, inside `rope_parameters`;
- a sliding window shorter than the positions (Mistral `sliding_window`, Qwen2 with
  `use_sliding_window`), a `head_dim` other than hidden_size / num_attention_heads, and
  quantized checkpoints (`quantization_config`).
Defaults where a key is absent are transformers' own: `rms_norm_eps` 1e-6,
`num_key_value_heads` = `num_attention_heads`, `hidden_act` silu, no rope scaling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from planner.domain.errors import InputError, describe_validation_error
from planner.domain.input_files import load_json_input
from planner.domain.modelspec import PRESETS, ModelSpec

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
REQUIRED_KEYS = {"num_hidden_layers": "num_layers", "hidden_size": "hidden_size",
                 "num_attention_heads": "num_heads", "intermediate_size": "intermediate_size",
                 "vocab_size": "vocab_size", "max_position_embeddings": "max_positions"}
HF_RMS_NORM_EPS_DEFAULT = 1e-6     # LlamaConfig / Qwen2Config / MistralConfig default
DEFAULT_ROPE_TYPES = (None, "default")
BOOLEAN_KEYS = ("attention_bias", "mlp_bias", "tie_word_embeddings", "use_sliding_window")


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
    if model_type != "qwen2" and config.get("attention_bias"):
        return ("attention_bias: true (q, k, v and o_proj biases) is not run for "
                f"{model_type}; supported: no biases, or Qwen2's q/k/v biases")
    scaling = config.get("rope_scaling")
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) \
            else scaling
        if kind not in DEFAULT_ROPE_TYPES:
            return (f"rope_scaling: type {kind!r} is not run; supported: no rope scaling "
                    f"(rope_scaling null)")
    parameters = config.get("rope_parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            return f"rope_parameters: got {parameters!r}; expected an object"
        if parameters.get("rope_type") not in DEFAULT_ROPE_TYPES:
            return (f"rope_parameters.rope_type: {parameters.get('rope_type')!r} is not run; "
                    f"supported: 'default'")
    window = _active_sliding_window(config, model_type)
    positions = config.get("max_position_embeddings")
    if window is not None and isinstance(positions, int) and window < positions:
        return (f"sliding_window: attention over the last {window} tokens is not run "
                f"(max_position_embeddings is {positions}); supported: full causal attention")
    head_dim = config.get("head_dim")
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    if head_dim is not None and isinstance(hidden, int) and isinstance(heads, int) and \
            heads > 0 and head_dim != hidden // heads:
        return (f"head_dim: {head_dim} is not hidden_size / num_attention_heads = "
                f"{hidden // heads}; supported: head_dim = hidden_size / num_attention_heads")
    if config.get("quantization_config") is not None:
        return "quantization_config: quantized checkpoints are not run; supported: bf16/fp32"
    return None


def _active_sliding_window(config: dict[str, Any], model_type: str) -> int | None:
    """The sliding window the model uses, or None (Qwen2 uses it only when asked to)."""
    if model_type == "qwen2" and not config.get("use_sliding_window", False):
        return None
    window = config.get("sliding_window")
    return window if isinstance(window, int) else None


def _rope_theta(config: dict[str, Any]) -> tuple[float | None, str | None]:
    """(rope_theta, problem): top-level, or inside transformers 5's rope_parameters."""
    top = config.get("rope_theta")
    nested = (config.get("rope_parameters") or {}).get("rope_theta")
    if top is not None and nested is not None and top != nested:
        return None, (f"rope_theta: {top} at the top level but {nested} in rope_parameters; "
                      f"give one")
    return (top if top is not None else nested), None


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
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{config_path}: model_type {model_type!r} is not supported; "
                         f"valid: {list(SUPPORTED_MODEL_TYPES)}")
    problem = _refusal(config, model_type)
    if problem:
        raise ValueError(f"{config_path}: {problem}")
    rope_theta, problem = _rope_theta(config)    # rope_parameters is an object by now
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
    fields["attention_bias"] = model_type == "qwen2"
    if rope_theta is not None:
        fields["rope_theta"] = rope_theta
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
