"""OpenRLHF target: export of shipped and searched plans, round trips, import of the README
command line (tests/frameworks/data/openrlhf/README.md says where each file is from)."""

import itertools
import json
import math
import shutil
from pathlib import Path

import pytest

from costmodel.simulator import simulate
from planner.domain.cluster import cluster_preset
from planner.domain.errors import InputError
from planner.domain.layout import Execution, execution_problem
from planner.domain.plan import load_plan
from planner.domain.workflow_file import builtin_workflow
from planner.frameworks.openrlhf_cmdline import parse_flags
from planner.frameworks.target import Unexpressible, target_module
from tests.frameworks.test_openrlhf_flags import defined_flags

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data" / "openrlhf"
openrlhf = target_module("openrlhf")
# Llama-3-8B's published config.json (meta-llama/Meta-Llama-3-8B), what the README's
# OpenRLHF/Llama-3-8b-* checkpoints are fine-tuned from.
LLAMA3_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 32,
    "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
    "intermediate_size": 14336, "vocab_size": 128256, "max_position_embeddings": 8192,
    "rope_theta": 500000.0, "rms_norm_eps": 1e-05, "tie_word_embeddings": False,
    "hidden_act": "silu"}


def readme_command(tmp_path: Path, name: str = "readme_ppo_example_v0.11.sh") -> Path:
    """The README command in tmp_path, beside local copies of its models' config.json (the
    hub ids are then local directories, as after downloading their configs)."""
    target = tmp_path / name
    shutil.copy(DATA / name, target)
    for model in ("OpenRLHF/Llama-3-8b-sft-mixture", "OpenRLHF/Llama-3-8b-rm-700k"):
        (tmp_path / model).mkdir(parents=True)
        (tmp_path / model / "config.json").write_text(json.dumps(LLAMA3_8B_CONFIG))
    return target


def assert_same_layouts(got: dict[str, Execution], want: dict[str, Execution]):
    assert set(got) == set(want)
    for name, ex in want.items():
        assert got[name] == ex, name


def test_shipped_plan_is_refused_for_pipeline_stages_and_mixed_settings():
    plan = load_plan(ROOT / "plans" / "ppo-h100x8.yaml")
    reasons = openrlhf.unexpressible(plan.workflow, plan.cluster, plan.executions)
    pipelined = sorted(r.split(":")[0] for r in reasons if "no pipeline parallelism" in r)
    assert pipelined == sorted(["actor_gen", "rew_inf", "ref_inf", "critic_inf",
                                "actor_train", "critic_train"])
    assert any(r.startswith("critic_train: recompute selective") for r in reasons)
    assert any("one gradient checkpointing switch" in r for r in reasons)
    # 128 rows an engine; the KV pool of 0.95 x 79.6 GiB less 12.55 GiB of weights holds 63
    assert any(r.startswith("actor_gen: micro_batches 4; OpenRLHF v0.11.0 sets no max_num_seqs "
                            "for its vLLM engines (no flag): 4 engines run micro_batches 3 (")
               for r in reasons)
    with pytest.raises(Unexpressible) as err:
        openrlhf.export_config(plan.workflow, plan.cluster, plan.executions)
    assert err.value.reasons == reasons


def sample_plans(workflow, cluster, count):
    plans = list(itertools.islice(openrlhf.target_plans(workflow, cluster), 20000))
    step = max(1, len(plans) // count)
    return plans[::step][:count]


@pytest.mark.parametrize("algorithm, cluster_name", [("ppo", "h100x8"), ("grpo", "h100x8"),
                                                     ("rloo", "h100x16")])
def test_target_plans_round_trip_through_the_command_line(tmp_path, algorithm, cluster_name):
    workflow = builtin_workflow(algorithm)
    cluster = cluster_preset(cluster_name)
    defined = set(defined_flags())
    for i, executions in enumerate(sample_plans(workflow, cluster, 6)):
        for name, ex in executions.items():
            call = workflow.call_by_name[name]
            assert execution_problem(ex, workflow.models[call.model].spec, cluster, call,
                                     workflow.batch) is None
        exported = openrlhf.export_config(workflow, cluster, executions)
        assert exported.file_suffix == ".sh"
        assert exported.text.splitlines()[1].startswith("# OpenRLHF v0.11.0")
        assert set(parse_flags(exported.text, "exported.sh")) <= defined
        path = tmp_path / f"plan{i}.sh"
        path.write_text(exported.text)
        imported = openrlhf.import_config(path, cluster)
        assert imported.workflow.algorithm == algorithm
        assert imported.workflow.batch == workflow.batch
        assert_same_layouts(imported.executions, executions)


def test_rollout_micro_batches_follow_vllms_default_and_round_trip(tmp_path):
    workflow, cluster = builtin_workflow("ppo"), cluster_preset("h100x8")
    by_engines = {}
    for executions in openrlhf.target_plans(workflow, cluster):
        by_engines.setdefault((executions["actor_gen"].dp, executions["actor_gen"].tp),
                              executions)
    # 512 samples of 2048 tokens (llama-7b: 1 GiB of KV cache a row on one GPU); the KV pool
    # of 0.95 x 79.6 GiB less the engine rank's weights: 63 rows at tp 1 (13 GiB of
    # weights), more than vLLM's max_num_seqs 128 at tp 2 and above
    micro = {engines: ex["actor_gen"].micro_batches for engines, ex in by_engines.items()}
    assert {k: v for k, v in micro.items() if k[1] == 1} == {(1, 1): 9, (2, 1): 5,
                                                           (4, 1): 3, (8, 1): 2}
    assert {k: v for k, v in micro.items() if k[1] == 2} == {(1, 2): 4, (2, 2): 2,
                                                           (4, 2): 1}
    for (dp, tp), executions in by_engines.items():
        path = tmp_path / f"engines{dp}x{tp}.sh"
        path.write_text(openrlhf.export_config(workflow, cluster, executions).text)
        assert_same_layouts(openrlhf.import_config(path, cluster).executions, executions)


def test_default_workflow_has_a_plan_that_fits_on_h100x8():
    workflow, cluster = builtin_workflow("ppo"), cluster_preset("h100x8")
    plans = list(openrlhf.target_plans(workflow, cluster))
    reasons = []
    for executions in plans[:: max(1, len(plans) // 300)]:
        estimate = simulate(workflow, cluster, executions)
        if estimate.feasible:
            assert openrlhf.unexpressible(workflow, cluster, executions) == []
            return
        reasons.append(estimate.reason)
    pytest.fail(f"no sampled plan fits: {reasons[:3]}")


def test_target_space_offers_colocation_and_separate_pools():
    workflow = builtin_workflow("ppo")
    cluster = cluster_preset("h100x8")
    everything = tuple(range(8))
    seen = {"colocated": False, "separate": False, "zero3": False, "vllm_tp": set()}
    for executions in openrlhf.target_plans(workflow, cluster):
        gen = executions["actor_gen"]
        seen["colocated"] |= gen.devices == executions["actor_train"].devices == everything
        seen["separate"] |= not set(gen.devices) & set(executions["actor_train"].devices)
        seen["zero3"] |= executions["ref_inf"].shard_parameters_over_dp
        seen["vllm_tp"].add(gen.tp)
        assert all(ex.pp == 1 for ex in executions.values())
    assert seen["colocated"] and seen["separate"] and seen["zero3"]
    assert seen["vllm_tp"] == {1, 2, 4, 8}


def test_readme_command_verbatim_is_refused_for_its_old_length_flags(tmp_path):
    with pytest.raises(InputError) as err:
        openrlhf.import_config(readme_command(tmp_path, "readme_ppo_example.sh"),
                               cluster_preset("h100x8"))
    assert "readme_ppo_example.sh:26: --prompt_max_len is not a flag of OpenRLHF v0.11.0" \
        in str(err.value)


def test_readme_command_imports_as_colocated_zero3_ppo_and_prices(tmp_path):
    cluster = cluster_preset("h100x8")
    imported = openrlhf.import_config(readme_command(tmp_path), cluster)
    workflow, executions = imported.workflow, imported.executions
    assert workflow.algorithm == "ppo"
    assert workflow.models["actor"].spec.num_kv_heads == 8
    batch = workflow.batch
    assert (batch.n_seqs, batch.prompt_len, batch.gen_len, batch.ppo_minibatches) == \
        (1024, 1024, 1024, 8)
    gen = executions["actor_gen"]
    assert (gen.devices, gen.dp, gen.tp, gen.pp) == (tuple(range(8)), 4, 2, 1)
    # dynamic batch: 16192 tokens hold 7 sequences of 2048; 16 a step per GPU -> 3
    # micro-batches; the rollout's ceil(1024 / 7) = 147 rounded down to 8 ranks -> 18 each.
    assert executions["actor_train"].micro_batches == 3
    # 1024 samples / 4 engines = 256 each: 2 micro-batches of vLLM's default 128, which
    # binds: the KV pool (0.5 x 79.6 GiB - 7.48 GiB of tp-2 weights) holds 258 rows of 128 MiB
    assert gen.micro_batches == 2
    gen_note = next(n for n in imported.notes if "actor_gen: an engine holds" in n)
    assert "at most 128 rows at once" in gen_note and "KV pool 258 rows" in gen_note
    assert "its 256 rows priced as 2 static micro-batch(es)" in gen_note
    assert executions["ref_inf"].micro_batches == 18
    for name, ex in executions.items():
        call = workflow.call_by_name[name]
        assert execution_problem(ex, workflow.models[call.model].spec, cluster, call,
                                 batch) is None
        if call.kind != "generate":
            assert ex.devices == tuple(range(8)) and ex.shard_parameters_over_dp
    assert executions["critic_train"].recompute == "full"
    assert any("--ds.zero_stage 3" in note for note in imported.notes)
    estimate = simulate(workflow, cluster, executions)
    assert math.isfinite(estimate.iteration_s) and estimate.iteration_s > 0
    # the rollout, with one micro-batch's KV cache beside the colocated models, fits
    assert estimate.call_peak_memory_bytes["actor_gen"] < cluster.usable_memory_bytes(0)


def test_kv_pool_sets_generation_micro_batches_where_it_binds(tmp_path):
    # --vllm.gpu_memory_utilization 0.2: 0.2 x 79.6 GiB - 7.48 GiB = 8.44 GiB, 67 rows of
    # 128 MiB < max_num_seqs 128: an engine's 256 rows run as ceil(256 / 67) = 4
    path = edited_command(tmp_path, {"--vllm.gpu_memory_utilization 0.5":
                                     "--vllm.gpu_memory_utilization 0.2"})
    cluster = cluster_preset("h100x8")
    imported = openrlhf.import_config(path, cluster)
    gen = imported.executions["actor_gen"]
    assert gen.micro_batches == 4
    gen_note = next(n for n in imported.notes if "actor_gen: an engine holds" in n)
    assert "at most 67 rows at once" in gen_note and "the KV pool binds" in gen_note
    estimate = simulate(imported.workflow, cluster, imported.executions)
    parts = {kind: b for kind, _, b in estimate.memory.call_parts["actor_gen"]}
    assert parts["kv_cache"] <= 67 * 128 * 2 ** 20
    assert estimate.call_peak_memory_bytes["actor_gen"] < cluster.usable_memory_bytes(0)


def edited_command(tmp_path: Path, replace: dict[str, str]) -> Path:
    path = readme_command(tmp_path)
    text = path.read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    path.write_text(text)
    return path


@pytest.mark.parametrize("replace, message", [
    ({"--train.max_epochs 1": "--train.max_epochs 2"},
     ":25: --train.max_epochs 2; supported: 1"),
    ({"--ds.zero_stage 3": "--ds.zero_stage three"},
     "--ds.zero_stage 'three' is not an integer"),
    ({"--ds.zero_stage 3": "--ds.ring_attn_size 2"},
     "--ds.ring_attn_size 2; supported: 1"),
    ({"--ds.zero_stage 3": "--algo.advantage.estimator reinforce_baseline"},
     "--algo.advantage.estimator reinforce_baseline; supported: gae (ppo)"),
    ({"--ds.zero_stage 3": "--algo.advantage.estimator group_norm"},
     "--rollout.n_samples_per_prompt 1; supported: > 1"),
    ({"--rollout.max_new_tokens 1024": "--data.max_samples 1"},
     "--rollout.max_new_tokens is not given"),
    ({"--vllm.num_engines 4": "--vllm.num_engines 3"},
     ("--train.colocate_all needs vllm.num_engines x vllm.tensor_parallel_size (3 x 2) = "
      "actor GPUs (8)")),
])
def test_bad_or_unsupported_flags_are_one_line_errors(tmp_path, replace, message):
    with pytest.raises(InputError) as err:
        openrlhf.import_config(edited_command(tmp_path, replace), cluster_preset("h100x8"))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_import_refuses_a_cluster_with_too_few_devices(tmp_path):
    path = edited_command(tmp_path, {"--train.colocate_all": "--train.colocate_actor_ref"})
    with pytest.raises(InputError) as err:   # vLLM 8 + actor/ref 8 + critic 8 + reward 8
        openrlhf.import_config(path, cluster_preset("h100x16"))
    assert "the roles need 32 GPUs, the cluster h100x16 has 16" in str(err.value)
    imported = openrlhf.import_config(path, cluster_preset("h100x64"))
    ranges = {n: (ex.devices[0], ex.devices[-1]) for n, ex in imported.executions.items()}
    assert ranges["actor_train"] == ranges["ref_inf"]
    assert len({ranges["actor_gen"], ranges["actor_train"], ranges["critic_train"],
                ranges["rew_inf"]}) == 4


def test_128_gpu_plans_export_or_are_refused_with_reasons():
    workflow = builtin_workflow("ppo")
    cluster = cluster_preset("h100x128")
    executions = next(iter(openrlhf.target_plans(workflow, cluster)))
    text = openrlhf.export_config(workflow, cluster, executions).text
    actor_nodes = len(executions["actor_train"].devices) // 8
    assert f"--actor.num_nodes {actor_nodes}" in text
    assert "--actor.num_gpus_per_node 8" in text
    pipelined = {**executions, "actor_train": executions["actor_train"].model_copy(
        update={"dp": 32, "pp": 4})}
    reasons = openrlhf.unexpressible(workflow, cluster, pipelined)
    assert any(r.startswith("actor_train: pp 4; OpenRLHF has no pipeline") for r in reasons)
