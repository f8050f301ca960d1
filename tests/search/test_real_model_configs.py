"""Real model configs never crash the search: the layouts a model can run are decided by one
rule (planner.domain.layout.parallel_degrees_problem), which the space, the cost model and the
runtime share, so `plan search` gives a plan (exit 0) or a reason (exit 1), never a
traceback."""

from __future__ import annotations

import json

import pytest

from planner.cli.main import main
from planner.domain.layout import parallel_degrees_problem
from planner.domain.model_files import spec_from_hf_config
from planner.domain.plan import load_plan

# Qwen2.5-0.5B's published config.json (the fields we read): tied embeddings, 14 attention
# heads, so only tp 1 and 2 split it evenly (its 2 kv heads would be replicated above tp 2),
# and pp must be 1.
QWEN2_5_0_5B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                "hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
                "num_hidden_layers": 24, "num_key_value_heads": 2, "vocab_size": 151936,
                "max_position_embeddings": 32768, "rope_theta": 1000000.0,
                "rms_norm_eps": 1e-06, "tie_word_embeddings": True, "hidden_act": "silu"}


def _workflow(tmp_path, config: dict) -> str:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    path = tmp_path / "workflow.yaml"
    path.write_text("algorithm: ppo\n"
                    "models: {actor: model, critic: model, ref: model, reward: model}\n"
                    "batch: {n_seqs: 64, prompt_len: 256, gen_len: 256, ppo_minibatches: 2}\n")
    return str(path)


@pytest.mark.parametrize("change,valid_tp", [
    ({}, {1, 2}),
    ({"intermediate_size": 4863}, {1}),        # an odd MLP width: no tensor split is even
])
def test_search_on_a_real_config_gives_a_plan_with_runnable_layouts(tmp_path, capsys, change,
                                                                      valid_tp):
    config = {**QWEN2_5_0_5B, **change}
    out = tmp_path / "plan.yaml"
    code = main(["search", "--workflow", _workflow(tmp_path, config), "--cluster", "h100x4",
                 "--time-limit", "5", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    plan = load_plan(out)
    spec = spec_from_hf_config(tmp_path / "model" / "config.json")
    assert {ex.tp for ex in plan.executions.values()} <= valid_tp
    assert {ex.pp for ex in plan.executions.values()} == {1}      # tied embeddings
    for ex in plan.executions.values():
        assert parallel_degrees_problem(spec, ex.tp, ex.pp) is None


def test_the_rule_names_every_uneven_split(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN2_5_0_5B))
    spec = spec_from_hf_config(tmp_path / "config.json")
    problem = parallel_degrees_problem(spec, 4, 1)
    assert "14 attention heads" in problem and "kv heads" not in problem
    assert "valid tp: [1, 2]" in problem
    assert "needs pp 1" in parallel_degrees_problem(spec, 1, 2)
