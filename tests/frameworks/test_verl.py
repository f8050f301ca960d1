"""verl target: export, import, round trips and the space of expressible plans."""

import itertools
import math
from pathlib import Path

import pytest
import yaml

from costmodel.simulator import simulate
from planner.domain.cluster import cluster_preset
from planner.domain.errors import InputError
from planner.domain.layout import Execution
from planner.domain.modelspec import PRESETS
from planner.domain.plan import Plan, Provenance, load_plan
from planner.domain.workflow_file import builtin_workflow
from planner.frameworks.engine_batching import engine_batching, kv_pool_rows_of
from planner.frameworks.hydra_overrides import MISSING, command_in_script, raw_value
from planner.frameworks.model_reference import hub_id_for, preset_name_of_hub_id
from planner.frameworks.target import Unexpressible, target_module
from planner.frameworks.verl_keys import DEFAULTS

DATA = Path(__file__).parent / "data" / "verl"
REPO = Path(__file__).parents[2]
EXAMPLE = DATA / "run_qwen2_5-7b_math_megatron_diff_tp.sh"
COPIES = {"ppo_trainer.yaml": DATA / "_generated_ppo_trainer.yaml",
          "ppo_megatron_trainer.yaml": DATA / "_generated_ppo_megatron_trainer.yaml"}
verl = target_module("verl")


def _copy(name):
    return yaml.safe_load(COPIES[name].read_text())


def _plan_fields(ex: Execution):
    return (ex.devices, ex.dp, ex.tp, ex.pp, ex.micro_batches, ex.shard_parameters_over_dp)


def _train_policy(ex: Execution):
    return ex.recompute, ex.shard_optimizer_over_dp


def _import_text(tmp_path, text, cluster, name="run.sh"):
    path = tmp_path / name
    path.write_text(text)
    return verl.import_config(path, cluster)


def test_defaults_match_verls_published_configs():
    for strategy, name in (("fsdp", "ppo_trainer.yaml"), ("megatron",
                                                          "ppo_megatron_trainer.yaml")):
        config = _copy(name)
        wrong = {k: (v, raw_value(config, k)) for k, v in DEFAULTS[strategy].items()
                 if raw_value(config, k) != v}
        assert not wrong


def test_default_plan_is_refused_with_a_reason_per_feature():
    plan = load_plan(REPO / "plans" / "ppo-h100x8.yaml")
    with pytest.raises(Unexpressible) as err:
        verl.export_config(plan.workflow, plan.cluster, plan.executions)
    # actor_gen's 4 and rew_inf's 16 micro-batches are expressible (max_num_seqs 32)
    assert err.value.reasons == [
        ("executions.rew_inf: devices 0-3: verl's reward pool is the global pool or the next 4 "
         "GPUs after it (none fits)"),
        ("executions.ref_inf: devices 4-7: verl keeps actor, rollout, ref and critic on one "
         "pool (the hybrid engine), actor_train's devices 0-7"),
        ("executions.actor_gen: pp 2: verl's vLLM / SGLang engines (rollout, reward loop) run "
         "pipeline_model_parallel_size 1"),
        ("executions.rew_inf: pp 4: verl's vLLM / SGLang engines (rollout, reward loop) run "
         "pipeline_model_parallel_size 1"),
        ("executions.critic_inf: d2t1p4m256 differs from critic_train's d1t1p8m32: verl's "
         "critic is one worker with one layout")]


def test_rollout_micro_batches_round_trip_through_max_num_seqs(tmp_path):
    workflow, cluster = builtin_workflow("ppo"), cluster_preset("h100x8")
    by_micro = {}
    for plan in verl.target_plans(workflow, cluster):
        by_micro.setdefault(plan["actor_gen"].micro_batches, plan)
    # one micro-batch would hold all of an engine's rows, more than the KV pool of verl's
    # default gpu_memory_utilization 0.5 holds on any layout (llama-7b, 2048-token rows)
    assert set(by_micro) == {2, 4, 8, 16}
    for executions in by_micro.values():
        gen = executions["actor_gen"]
        rows = kv_pool_rows_of(workflow, "actor_gen", cluster, gen.devices, gen.dp, gen.tp, 0.5)
        assert math.ceil(512 / gen.dp / gen.micro_batches) <= rows
    for micro, executions in by_micro.items():
        gen = executions["actor_gen"]
        text = verl.export_config(workflow, cluster, executions).text
        assert f"actor_rollout_ref.rollout.max_num_seqs={512 // gen.dp // micro} " in text
        back = _import_text(tmp_path, text, cluster, f"micro{micro}.sh")
        assert back.executions["actor_gen"] == gen
        assert any(f"as {micro} static micro-batch(es)" in n for n in back.notes)


def test_micro_batches_no_max_num_seqs_gives_are_refused():
    workflow, cluster = builtin_workflow("ppo"), cluster_preset("h100x8")
    plan = next(p for p in verl.target_plans(workflow, cluster)
                if p["actor_gen"].dp == 8)
    # 64 sequences per engine: ceil(64 / 7) = 10, ceil(64 / 8) = 8; nothing gives 9
    nine = dict(plan, actor_gen=plan["actor_gen"].model_copy(update={"micro_batches": 9}))
    assert verl.unexpressible(workflow, cluster, nine) == [
        ("executions.actor_gen: micro_batches 9: no max_num_seqs splits an engine's 64 "
         "sequences into that many (verl's engines run ceil(64 / max_num_seqs))")]


def _first_feasible(workflow, cluster, plans, samples=300):
    """The first of an even spread of `plans` that simulate finds feasible, and the
    reasons of those it does not."""
    reasons = []
    for executions in plans[:: max(1, len(plans) // samples)]:
        estimate = simulate(workflow, cluster, executions)
        if estimate.feasible:
            return executions, reasons
        reasons.append(estimate.reason)
    return None, reasons


def test_default_workflow_has_a_plan_that_fits_on_h100x8():
    workflow, cluster = builtin_workflow("ppo"), cluster_preset("h100x8")
    found, reasons = _first_feasible(workflow, cluster, list(verl.target_plans(workflow,
                                                                               cluster)))
    assert found is not None, reasons[:3]
    assert verl.unexpressible(workflow, cluster, found) == []


def _some_plans(workflow_name, cluster_name, count=6):
    workflow, cluster = builtin_workflow(workflow_name), cluster_preset(cluster_name)
    plans = list(verl.target_plans(workflow, cluster))
    step = max(1, len(plans) // count)
    return workflow, cluster, plans[::step][:count] + plans[-1:]


@pytest.mark.parametrize("workflow_name,cluster_name", [("ppo", "h100x8"), ("grpo", "h100x16"),
                                                        ("remax", "h100x8")])
def test_round_trip_gives_back_every_execution(tmp_path, workflow_name, cluster_name):
    workflow, cluster, plans = _some_plans(workflow_name, cluster_name)
    assert plans
    for i, executions in enumerate(plans):
        assert verl.unexpressible(workflow, cluster, executions) == []
        exported = verl.export_config(workflow, cluster, executions)
        back = _import_text(tmp_path, exported.text, cluster, f"plan{i}{exported.file_suffix}")
        assert set(back.executions) == set(executions)
        for name, ex in executions.items():
            assert _plan_fields(back.executions[name]) == _plan_fields(ex), name
            if workflow.call_by_name[name].kind == "train":
                assert _train_policy(back.executions[name]) == _train_policy(ex), name
        assert back.workflow.batch == workflow.batch
        assert {r: m.spec for r, m in back.workflow.models.items()} == \
            {r: m.spec for r, m in workflow.models.items()}


def test_space_offers_both_strategies_and_a_reward_pool_within_bound():
    workflow, cluster = builtin_workflow("ppo"), cluster_preset("h100x8")
    plans = list(verl.target_plans(workflow, cluster))
    assert 1000 < len(plans) <= 200_000
    assert {p["actor_train"].shard_parameters_over_dp for p in plans} == {False, True}
    assert any(p["rew_inf"].devices == (4, 5, 6, 7) for p in plans)
    for plan in plans[:: len(plans) // 50]:
        assert verl.unexpressible(workflow, cluster, plan) == []
    assert list(verl.target_plans(builtin_workflow("dpo"), cluster)) == []


def test_exported_keys_exist_in_verls_default_config():
    for workflow_name in ("ppo", "grpo"):
        workflow, cluster, plans = _some_plans(workflow_name, "h100x16", count=20)
        names = set()
        for executions in plans:
            text = verl.export_config(workflow, cluster, executions).text
            command = command_in_script(text, "export.sh", "verl.trainer.main_ppo")
            names.add(command.config_name)
            config = _copy(command.config_name)
            missing = [o.key for o in command.overrides if raw_value(config, o.key) is MISSING]
            assert missing == [] and all(o.op == "set" for o in command.overrides)
        assert names == set(COPIES)


def test_grpo_example_imports_validates_and_prices():
    cluster = cluster_preset("h100x8")
    imported = verl.import_config(EXAMPLE, cluster)
    ex = imported.executions
    assert set(ex) == {"actor_gen", "ref_inf", "actor_train"}   # rule-based reward
    assert (ex["actor_gen"].dp, ex["actor_gen"].tp) == (2, 4)
    assert (ex["actor_train"].dp, ex["actor_train"].tp, ex["actor_train"].pp) == (2, 2, 2)
    # 1024 prompts x 5 samples / 4 minibatches / dp 2 / 4 per GPU
    assert ex["actor_train"].micro_batches == 160 and ex["ref_inf"].micro_batches == 640
    # 5120 sequences / 2 engines = 2560, ceil(2560 / max_num_seqs 1024) = 3
    assert ex["actor_gen"].micro_batches == 3
    # the KV pool (0.6 x 80 GiB - 3.55 GiB of weights per tp-4 rank) holds 1616 rows of
    # 2048 tokens at 28 MiB each, more than max_num_seqs: max_num_seqs binds
    gen_note = next(n for n in imported.notes if "actor_gen: an engine holds" in n)
    assert "holds at most 1024 rows at once" in gen_note and "KV pool 1616 rows" in gen_note
    assert "max_num_seqs binds" in gen_note and "as 3 static micro-batch(es)" in gen_note
    assert imported.workflow.batch.n_seqs == 5120
    assert imported.workflow.models["actor"].spec == PRESETS["qwen2.5-7b"]
    plan = Plan(workflow=imported.workflow, cluster=cluster, executions=ex,
                provenance=Provenance(created_by="test"))
    assert plan.problems() == []
    estimate = simulate(imported.workflow, cluster, ex)
    assert math.isfinite(estimate.iteration_s) and estimate.iteration_s > 0
    assert any("rule-based" in note for note in imported.notes)
    # the KV cache we price for one micro-batch (854 rows) fits the engine's KV pool ...
    gen = ex["actor_gen"]
    pool = engine_batching(imported.workflow, "actor_gen", cluster, gen.devices, gen.dp,
                           gen.tp, 1024, "max_num_seqs", 0.6, "gpu_memory_utilization")
    parts = {kind: b for kind, _, b in estimate.memory.call_parts["actor_gen"]}
    assert parts["kv_cache"] <= pool.kv_pool_bytes
    # (the rollout's whole peak does not fit 80 GiB: the cost model prefills a micro-batch's
    # prompts through a block at once, 854 x 1024 tokens, ~35 GiB of activations where
    # vLLM chunks prefill, beside the colocated actor's train state and the reference)


def test_fsdp_script_imports_sharded_layouts_and_dynamic_batches():
    cluster = cluster_preset("h100x16")
    imported = verl.import_config(DATA / "grpo_fsdp_qwen2_5_7b.sh", cluster)
    train, ref = imported.executions["actor_train"], imported.executions["ref_inf"]
    assert (train.dp, train.tp, train.pp, train.shard_parameters_over_dp) == (16, 1, 1, True)
    assert ref.shard_parameters_over_dp and train.recompute == "full"
    # 1024 sequences per step / 16 GPUs = 64 of 3072 tokens in 24576 per micro-batch
    assert train.micro_batches == 8
    assert imported.executions["actor_gen"].tp == 2
    assert any("use_dynamic_bsz" in note for note in imported.notes)


SCRIPT = ("python3 -m verl.trainer.main_ppo algorithm.adv_estimator=grpo "
          "actor_rollout_ref.model.path=Qwen/Qwen2.5-7B actor_rollout_ref.rollout.name=vllm "
          "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 "
          "actor_rollout_ref.actor.use_kl_loss=True "
          "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4 {extra}\n")


@pytest.mark.parametrize("extra,key", [
    ("algorithm.adv_estimator=dpo", "algorithm.adv_estimator"),
    ("actor_rollout_ref.actor.ppo_epochs=2", "actor_rollout_ref.actor.ppo_epochs"),
    ("actor_rollout_ref.rollout.multi_turn.enable=True", "multi_turn.enable"),
    ("actor_rollout_ref.model.lora_rank=8", "actor_rollout_ref.model.lora_rank"),
    ("trainer.nnodes=2", "trainer.nnodes"),
    ("actor_rollout_ref.actor.fsdp_config.fsdp_size=4", "fsdp_config.fsdp_size"),
    ("actor_rollout_ref.rollout.name=hf", "actor_rollout_ref.rollout.name"),
    ("data.train_batch_size==3", "data.train_batch_size"),
    ("data.train_batch_size", "line 1"),
])
def test_bad_input_is_one_line_naming_file_and_key(tmp_path, extra, key):
    with pytest.raises(InputError) as err:
        _import_text(tmp_path, SCRIPT.format(extra=extra), cluster_preset("h100x8"))
    message = str(err.value)
    assert message.startswith(str(tmp_path / "run.sh")) and key in message
    assert "\n" not in message


def test_cluster_mismatch_names_both_sizes(tmp_path):
    with pytest.raises(InputError) as err:
        _import_text(tmp_path, SCRIPT.format(extra="trainer.nnodes=2"), cluster_preset("h100x8"))
    assert "16 GPUs" in str(err.value) and "8 devices" in str(err.value)


def test_128_gpu_ppo_plans_export_or_are_refused():
    workflow, cluster = builtin_workflow("ppo"), cluster_preset("h100x128")
    colocated = next(iter(verl.target_plans(workflow, cluster)))
    text = verl.export_config(workflow, cluster, colocated).text
    assert "trainer.nnodes=16 " in text and "verl 0.7.0" in text
    everything = tuple(range(128))
    half = tuple(range(64, 128))
    split = dict(colocated, ref_inf=Execution(devices=half, dp=64, tp=1, pp=1))
    with pytest.raises(Unexpressible) as err:
        verl.export_config(workflow, cluster, split)
    assert err.value.reasons == [(
        "executions.ref_inf: devices 64-127: verl keeps actor, rollout, ref and critic on one "
        "pool (the hybrid engine), actor_train's devices 0-127")]
    assert colocated["actor_train"].devices == everything


def test_yaml_config_imports_like_its_overrides(tmp_path):
    cluster = cluster_preset("h100x8")
    from_script = verl.import_config(EXAMPLE, cluster)
    config = {"algorithm": {"adv_estimator": "grpo"},
              "data": {"train_batch_size": 1024, "max_prompt_length": 1024,
                       "max_response_length": 1024},
              "actor_rollout_ref": {
                  "model": {"path": "Qwen/Qwen2.5-7B-Instruct"},
                  "actor": {"strategy": "megatron", "ppo_mini_batch_size": 256,
                            "ppo_micro_batch_size_per_gpu": 4, "use_kl_loss": True,
                            "megatron": {"tensor_model_parallel_size": 2,
                                         "pipeline_model_parallel_size": 2}},
                  "rollout": {"name": "vllm", "n": 5, "tensor_model_parallel_size": 4,
                              "log_prob_micro_batch_size_per_gpu": 4},
                  "ref": {"log_prob_micro_batch_size_per_gpu": 4}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    from_yaml = verl.import_config(path, cluster)
    assert from_yaml.executions == from_script.executions


def test_preset_hub_ids_map_back_to_their_presets():
    for name, spec in PRESETS.items():
        hub_id = hub_id_for(spec)
        assert hub_id is None or preset_name_of_hub_id(hub_id) == name
    assert hub_id_for(PRESETS["llama-tiny"]) is None


def test_exported_script_marks_models_without_hub_id():
    workflow = builtin_workflow("grpo", model="llama-tiny",
                                batch={"n_seqs": 64, "prompt_len": 64, "gen_len": 64,
                                       "ppo_minibatches": 2, "group_size": 4})
    cluster = cluster_preset("h100x8")
    plan = next(iter(verl.target_plans(workflow, cluster)))
    text = verl.export_config(workflow, cluster, plan).text
    assert "# Note: actor: model llama-tiny has no known hub id" in text
    assert list(itertools.islice(verl.target_plans(workflow, cluster), 1))
