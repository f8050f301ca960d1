"""A tiny writer of HF-format LLaMA checkpoints (config.json + safetensors) for the tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from planner.domain.modelspec import ModelSpec


def write_hf_checkpoint(directory: Path, spec: ModelSpec, params: dict[str, np.ndarray],
                        num_files: int = 2) -> None:
    """Write `params` (full tensors by HF name) split over `num_files` files with an index."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "qwen2" if spec.attention_bias else "llama",
              "num_hidden_layers": spec.num_layers, "hidden_size": spec.hidden_size,
              "num_attention_heads": spec.num_heads, "num_key_value_heads": spec.num_kv_heads,
              "intermediate_size": spec.intermediate_size, "vocab_size": spec.vocab_size,
              "max_position_embeddings": spec.max_positions, "rope_theta": spec.rope_theta,
              "rms_norm_eps": spec.norm_eps, "tie_word_embeddings": spec.tie_embeddings,
              "attention_bias": spec.attention_bias}
    (directory / "config.json").write_text(json.dumps(config))
    names = list(params)
    weight_map = {}
    for i in range(num_files):
        file = f"model-{i + 1:05d}-of-{num_files:05d}.safetensors"
        chunk = names[i::num_files]
        save_file({n: np.ascontiguousarray(params[n]) for n in chunk}, str(directory / file))
        weight_map.update({n: file for n in chunk})
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
