"""Model specs reproduce published parameter counts (HF model cards / safetensors totals)."""

from __future__ import annotations

import pytest

from planner.domain.modelspec import PRESETS

# (preset, published count, source). Tolerance 0.5% as the figures are rounded.
PUBLISHED = [
    ("llama-7b", 6.74e9, "LLaMA-2 paper table 1 / HF Llama-2-7b-hf"),
    ("llama-13b", 13.0e9, "LLaMA-2 paper / HF Llama-2-13b-hf"),
    ("llama-70b", 69.0e9, "LLaMA-2 paper / HF Llama-2-70b-hf"),
    ("llama3-8b", 8.03e9, "HF Meta-Llama-3-8B model card"),
    ("qwen2.5-7b", 7.62e9, "Qwen2.5 technical report (7.61B; HF card 7.62B)"),
]

# Exact totals of the HF checkpoints (sum of safetensors shapes).
EXACT = {
    "llama-7b": 6_738_415_616,
    "llama-13b": 13_015_864_320,
    "llama-70b": 68_976_648_192,
    "llama3-8b": 8_030_261_248,
    "qwen2.5-7b": 7_615_616_512,
}


@pytest.mark.parametrize("name,published,source", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_parameter_count_matches_published_figure(name, published, source):
    count = PRESETS[name].num_params()
    assert abs(count - published) / published < 0.005, (name, count, published, source)


@pytest.mark.parametrize("name", sorted(EXACT))
def test_parameter_count_matches_checkpoint_exactly(name):
    assert PRESETS[name].num_params() == EXACT[name]


def test_llama_tiny_has_a_few_million_parameters():
    count = PRESETS["llama-tiny"].num_params()
    assert 1_000_000 <= count <= 10_000_000, count


@pytest.mark.parametrize("name", sorted(EXACT))
def test_value_head_replaces_the_lm_head(name):
    spec = PRESETS[name]
    lm_head = 0 if spec.tie_embeddings else spec.vocab_size * spec.hidden_size
    assert spec.num_params("value") == spec.num_params("lm") - lm_head + spec.hidden_size + 1


def test_grouped_query_attention_shrinks_kv_projections():
    llama2_70b, llama3_70b = PRESETS["llama-70b"], PRESETS["llama3-70b"]
    assert llama2_70b.kv_dim == 8 * 128
    # Same blocks, only the vocabulary differs (32000 vs 128256).
    assert llama3_70b.params_per_layer() == llama2_70b.params_per_layer()
    assert llama3_70b.num_params() - llama2_70b.num_params() == 2 * (128256 - 32000) * 8192
