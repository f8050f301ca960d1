"""The search offers tensor parallelism above the kv-head count, priced as the runtime runs
it (each rank a copy of one kv head, the copies' gradients all-reduced over the ranks
sharing it), and plans real configs with it.

A Qwen2.5-3B-shaped config (16 heads, 2 kv heads) gets tp 4 and tp 8 candidates on h100x8;
Qwen2.5-7B (28 heads, 4 kv heads) cannot run tp 8: 28 heads do not split over 8 ranks (vLLM
refuses it for the same reason), so its largest tp stays 4, one kv head per rank, and the
search still finds a feasible plan."""

from __future__ import annotations

import json

import pytest

from costmodel import comm
from costmodel.call_cost import call_time
from costmodel.call_geometry import geometry
from costmodel.memory import kv_cache_bytes
from planner.cli.main import main
from planner.domain.cluster import cluster_preset
from planner.domain.layout import Execution, parallel_degrees_problem
from planner.domain.modelspec import PRESETS
from planner.domain.plan import load_plan
from planner.domain.workflow_file import load_workflow_file
from planner.search.builder import full_tables
from planner.sharding.param_shards import shard_elements

# Qwen2.5-3B's published config.json (the fields we read)
QWEN2_5_3B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
              "hidden_size": 2048, "intermediate_size": 11008, "num_attention_heads": 16,
              "num_hidden_layers": 36, "num_key_value_heads": 2, "vocab_size": 151936,
              "max_position_embeddings": 32768, "rope_theta": 1000000.0,
              "rms_norm_eps": 1e-06, "tie_word_embeddings": True, "hidden_act": "silu"}


@pytest.fixture
def workflow_path(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(QWEN2_5_3B))
    path = tmp_path / "workflow.yaml"
    path.write_text("algorithm: ppo\n"
                    "models: {actor: model, critic: model, ref: model, reward: model}\n"
                    "batch: {n_seqs: 256, prompt_len: 512, gen_len: 512, ppo_minibatches: 2}\n")
    return path


def test_the_tables_hold_tp_above_the_kv_heads_priced_with_their_sync(workflow_path):
    workflow = load_workflow_file(workflow_path)
    cluster = cluster_preset("h100x8")
    tables = full_tables(workflow, cluster)
    for table in tables.calls:
        assert {ex.tp for ex in table.executions} == {1, 2, 4, 8}, table.name
    role = workflow.models["actor"]
    spec, train = role.spec, workflow.call_by_name["actor_train"]
    phases = {tp: call_time(train, role, Execution(devices=tuple(range(8)), dp=8 // tp, tp=tp,
                                                   pp=1), workflow.batch, cluster).phases_s
              for tp in (2, 4, 8)}
    assert phases[2]["kv_sync"] == 0.0       # tp = kv heads: one head per rank, no copies
    # tp 8: 4 ranks share each kv head; ZeRO-1 over dp 1 keeps the whole k/v rows
    rows_bytes = spec.num_layers * 2 * spec.head_dim * (spec.hidden_size + 1) * 2
    # priced on the TP group's link: the sharing ranks are consecutive ranks of the TP group
    link = geometry(Execution(devices=tuple(range(8)), dp=1, tp=8, pp=1), spec.num_layers,
                    cluster).tp_link[0]
    k = workflow.batch.ppo_minibatches
    assert phases[8]["kv_sync"] == pytest.approx(
        k * comm.allreduce_time_s(rows_bytes, 4, link), rel=1e-9)
    link4 = geometry(Execution(devices=tuple(range(8)), dp=2, tp=4, pp=1), spec.num_layers,
                     cluster).tp_link[0]
    assert phases[4]["kv_sync"] == pytest.approx(
        k * comm.allreduce_time_s(rows_bytes / 2, 2, link4), rel=1e-9)   # ZeRO-1 over dp 2
    # each rank holds one kv head's K/V cache at tp 4 and 8
    assert kv_cache_bytes(spec, 8, 36, 1, 1, 2) == kv_cache_bytes(spec, 2, 36, 1, 1, 2)
    # the k/v copies are in the priced weights: one head of k and v rows on every rank
    h, d, inter, bias = spec.hidden_size, spec.head_dim, spec.intermediate_size, \
        int(spec.attention_bias)
    q = spec.num_heads * d
    block = 2 * h + (q * h + bias * q) // 8 + 2 * (d * h + bias * d) + h * q // 8 + \
        3 * inter * h // 8
    expected = spec.vocab_size * h // 8 + h + spec.num_layers * block
    assert shard_elements(spec, "lm", 8, 1).tolist() == [[expected] * 8]


def test_search_plans_a_real_config_with_replicated_kv_heads(workflow_path, tmp_path, capsys):
    out = tmp_path / "plan.yaml"
    code = main(["search", "--workflow", str(workflow_path), "--cluster", "h100x8",
                 "--time-limit", "5", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "feasible" in captured.out
    spec = load_workflow_file(workflow_path).models["actor"].spec
    for ex in load_plan(out).executions.values():
        assert parallel_degrees_problem(spec, ex.tp, ex.pp) is None


def test_qwen2_5_7b_is_searched_up_to_the_tp_its_heads_allow(tmp_path, capsys):
    spec = PRESETS["qwen2.5-7b"]
    assert parallel_degrees_problem(spec, 4, 1) is None      # 7 heads, 1 kv head per rank
    assert parallel_degrees_problem(spec, 8, 1) == (
        "tp 8 does not evenly split the 28 attention heads of qwen2.5-7b; valid tp: [1, 2, 4]")
    path = tmp_path / "workflow.yaml"
    path.write_text("algorithm: grpo\nmodels: {actor: qwen2.5-7b, ref: qwen2.5-7b, "
                    "reward: qwen2.5-7b}\n"
                    "batch: {n_seqs: 256, prompt_len: 512, gen_len: 512, ppo_minibatches: 2}\n")
    out = tmp_path / "plan.yaml"
    code = main(["search", "--workflow", str(path), "--cluster", "h100x8", "--time-limit", "5",
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "feasible" in captured.out
