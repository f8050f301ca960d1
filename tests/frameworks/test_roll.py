"""ROLL target: export, import, round trips, device_mapping strings and the space of
expressible plans."""

import math
from pathlib import Path

import pytest
import yaml

from costmodel.simulator import simulate
from planner.domain.builtin_workflows import builtin_calls_without
from planner.domain.cluster import cluster_preset
from planner.domain.errors import InputError
from planner.domain.layout import Execution
from planner.domain.modelspec import PRESETS
from planner.domain.plan import Plan, Provenance, load_plan
from planner.domain.workflow_file import builtin_workflow
from planner.frameworks.roll_devices import device_mapping_text, parse_device_mapping
from planner.frameworks.target import Unexpressible, target_module

DATA = Path(__file__).parent / "data" / "roll"
REPO = Path(__file__).parents[2]
COPIES = ("rlvr_config_8gpus.yaml", "example_ppo.yaml", "qwen3_30b_rlvr_fsdp2.yaml",
          "log_probs_fsdp_config.yaml")
ENGINE = "actor_infer.strategy_args.strategy_config"
ROLES = ("actor_train", "actor_infer", "reference", "critic")
roll = target_module("roll")


def _fields(ex: Execution):
    return (ex.devices, ex.dp, ex.tp, ex.pp, ex.micro_batches, ex.shard_parameters_over_dp)


def _some_plans(workflow_name, cluster_name, count=8):
    workflow, cluster = builtin_workflow(workflow_name), cluster_preset(cluster_name)
    plans = list(roll.target_plans(workflow, cluster))
    step = max(1, len(plans) // count)
    return workflow, cluster, plans[::step][:count] + plans[-1:]


def _write(tmp_path, config, name="roll.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _published(name):
    return yaml.safe_load((DATA / name).read_text())


def test_default_plan_is_refused_with_a_reason_per_feature():
    plan = load_plan(REPO / "plans" / "ppo-h100x8.yaml")
    with pytest.raises(Unexpressible) as err:
        roll.export_config(plan.workflow, plan.cluster, plan.executions)
    assert err.value.reasons == [
        ("executions.actor_gen: pp 2: we write ROLL's vLLM engines with "
         "pipeline_parallel_size 1 (tensor_parallel_size only)"),
        ("executions.critic_inf: d2t1p4m256 on devices 0-7 differs from critic_train's "
         "d1t1p8m32 on 0-7: ROLL's critic is one worker group with one device_mapping and "
         "strategy")]


def test_default_plan_exports_once_generation_and_critic_follow_rolls_rules(tmp_path):
    plan = load_plan(REPO / "plans" / "ppo-h100x8.yaml")
    ex = dict(plan.executions)
    ex["actor_gen"] = Execution(devices=ex["actor_gen"].devices, dp=8, tp=1, pp=1,
                                micro_batches=4)
    ex["critic_inf"] = ex["critic_inf"].model_copy(update={"dp": 1, "pp": 8})
    exported = roll.export_config(plan.workflow, plan.cluster, ex)
    back = roll.import_config(_write(tmp_path, yaml.safe_load(exported.text)), plan.cluster)
    assert {n: _fields(e) for n, e in back.executions.items()} == \
        {n: _fields(e) for n, e in ex.items()}
    # 512 sequences / 8 engines = 64 rows in 4 micro-batches: max_num_seqs 16
    assert yaml.safe_load(exported.text)["actor_infer"]["strategy_args"]["strategy_config"][
        "max_num_seqs"] == 16
    # the reference and the reward model keep their own 4-GPU meshes (device_mapping)
    assert back.executions["ref_inf"].devices == (4, 5, 6, 7)
    assert back.executions["rew_inf"].devices == (0, 1, 2, 3)


@pytest.mark.parametrize("workflow_name,cluster_name", [("ppo", "h100x8"), ("grpo", "h100x16"),
                                                        ("ppo", "h100x16")])
def test_round_trip_gives_back_every_execution(tmp_path, workflow_name, cluster_name):
    workflow, cluster, plans = _some_plans(workflow_name, cluster_name)
    assert len(plans) > 5
    for i, executions in enumerate(plans):
        assert roll.unexpressible(workflow, cluster, executions) == []
        exported = roll.export_config(workflow, cluster, executions)
        path = tmp_path / f"plan{i}{exported.file_suffix}"
        path.write_text(exported.text)
        back = roll.import_config(path, cluster)
        assert set(back.executions) == set(executions)
        for name, ex in executions.items():
            assert _fields(back.executions[name]) == _fields(ex), name
            if workflow.call_by_name[name].kind == "train":
                got = back.executions[name]
                assert got.recompute == ex.recompute, name
                if not ex.shard_parameters_over_dp:
                    assert got.shard_optimizer_over_dp == ex.shard_optimizer_over_dp, name
        assert back.workflow.batch == workflow.batch
        assert {r: m.spec for r, m in back.workflow.models.items()} == \
            {r: m.spec for r, m in workflow.models.items()}


def test_round_trip_of_several_generation_micro_batch_counts(tmp_path):
    workflow, cluster = builtin_workflow("ppo"), cluster_preset("h100x8")
    plans = list(roll.target_plans(workflow, cluster))
    by_count = {}
    for plan in plans:
        by_count.setdefault(plan["actor_gen"].micro_batches, plan)
    assert set(by_count) == {1, 2, 4, 8, 16}
    for micro, executions in sorted(by_count.items()):
        gen = executions["actor_gen"]
        text = roll.export_config(workflow, cluster, executions).text
        written = yaml.safe_load(text)["actor_infer"]["strategy_args"]["strategy_config"]
        rows = -(-workflow.batch.n_seqs // gen.dp)
        assert written["max_num_seqs"] == -(-rows // micro)
        assert "gpu_memory_utilization" not in written   # vLLM's default 0.9
        path = tmp_path / f"micro{micro}.yaml"
        path.write_text(text)
        back = roll.import_config(path, cluster)
        assert _fields(back.executions["actor_gen"]) == _fields(gen), micro
        assert any(f"priced as {micro} static micro-batch" in n for n in back.notes)


def test_generation_micro_batches_no_max_num_seqs_gives_are_refused():
    workflow, cluster = builtin_workflow("grpo"), cluster_preset("h100x8")
    plan = next(iter(roll.target_plans(workflow, cluster)))
    # 512 sequences on 8 engines: 64 rows each; 64 / 33 -> max_num_seqs 2 -> 32 micro-batches
    gen = Execution(devices=tuple(range(8)), dp=8, tp=1, pp=1, micro_batches=33)
    assert roll.unexpressible(workflow, cluster, dict(plan, actor_gen=gen)) == [
        ("executions.actor_gen: micro_batches 33: no max_num_seqs splits an engine's 64 "
         "sequences into that many (ROLL's vLLM engines run ceil(64 / max_num_seqs))")]
    for micro in (3, 7, 22, 32, 64):   # each some max_num_seqs gives
        ok = gen.model_copy(update={"micro_batches": micro})
        assert roll.unexpressible(workflow, cluster, dict(plan, actor_gen=ok)) == [], micro
    big = workflow.model_copy(update={"batch": workflow.batch.model_copy(
        update={"n_seqs": 8 * 8200})})
    one = gen.model_copy(update={"micro_batches": 1})
    assert roll.unexpressible(big, cluster, dict(plan, actor_gen=one))[0] == (
        "executions.actor_gen: micro_batches 1: needs max_num_seqs 8200, more than ROLL's "
        "max_num_batched_tokens 8192, which vLLM refuses")


def test_round_trip_of_a_grpo_plan_without_reference_or_reward_model(tmp_path):
    workflow = builtin_workflow("grpo")
    cluster = cluster_preset("h100x8")
    full = next(iter(roll.target_plans(workflow, cluster)))
    lean = workflow.model_copy(update={"calls": builtin_calls_without("grpo", {"ref_inf", "rew_inf"}),
                                       "models": {"actor": workflow.models["actor"]}})
    executions = {n: full[n] for n in ("actor_gen", "actor_train")}
    text = roll.export_config(lean, cluster, executions).text
    assert "use_kl_loss: false" in text and "MathRuleRewardWorker" in text
    back = roll.import_config(_write(tmp_path, yaml.safe_load(text)), cluster)
    assert set(back.executions) == {"actor_gen", "actor_train"}
    assert any("not priced" in note for note in back.notes)


def _exists(copies, path):
    """`path` (keys) is in a copy, at that path or under another role (a reward domain is a
    role's worker config too): a role's keys are the same whichever role holds them."""
    for config in copies:
        heads = [path[:1]]
        if path[0] in ROLES or path[0] == "rewards":
            heads = [(role,) for role in ROLES] + [("rewards", d) for d in config.get("rewards", {})]
        rest = path[1:] if path[0] in ROLES else path[2:] if path[0] == "rewards" else path[1:]
        for head in heads:
            node = config
            for key in head + rest:
                if not isinstance(node, dict) or key not in node:
                    break
                node = node[key]
            else:
                return True
    return False


def _key_paths(node, prefix=()):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _key_paths(value, prefix + (key,))
    else:
        yield prefix


def test_exported_keys_exist_in_rolls_published_configs():
    copies = [_published(name) for name in COPIES]
    for workflow_name, cluster_name in (("ppo", "h100x16"), ("grpo", "h100x8")):
        workflow, cluster, plans = _some_plans(workflow_name, cluster_name, count=30)
        strategies = set()
        for executions in plans:
            config = yaml.safe_load(roll.export_config(workflow, cluster, executions).text)
            missing = [".".join(p) for p in _key_paths(config) if not _exists(copies, p)]
            assert missing == []
            strategies.add(config["actor_train"]["strategy_args"]["strategy_name"])
        assert strategies == {"megatron_train", "fsdp2_train"}


def test_ppo_example_imports_validates_and_prices():
    cluster = cluster_preset("h100x16")
    imported = roll.import_config(DATA / "example_ppo.yaml", cluster)
    ex = imported.executions
    assert set(ex) == {"actor_gen", "ref_inf", "critic_inf", "actor_train", "critic_train"}
    assert _fields(ex["actor_gen"]) == (tuple(range(16)), 16, 1, 1, 1, False)
    # 512 prompts x 1 sample / (dp 8 x per_device 2 x accumulation 32): one optimizer step
    assert _fields(ex["actor_train"]) == (tuple(range(8)), 8, 1, 1, 32, False)
    assert ex["actor_train"].recompute == "full" and ex["actor_train"].shard_optimizer_over_dp
    assert _fields(ex["ref_inf"]) == (tuple(range(16)), 16, 1, 1, 4, False)   # 32 / 8 per GPU
    assert _fields(ex["critic_train"]) == (tuple(range(8, 16)), 8, 1, 1, 32, True)
    assert _fields(ex["critic_inf"]) == (tuple(range(8, 16)), 8, 1, 1, 16, True)   # 64 / 4
    batch = imported.workflow.batch
    assert (batch.n_seqs, batch.prompt_len, batch.gen_len, batch.ppo_minibatches) == \
        (512, 2048, 4096, 1)
    assert imported.workflow.models["actor"].spec == PRESETS["qwen2.5-7b"]
    plan = Plan(workflow=imported.workflow, cluster=cluster, executions=ex,
                provenance=Provenance(created_by="test"))
    assert plan.problems() == []
    estimate = simulate(imported.workflow, cluster, ex)
    assert math.isfinite(estimate.iteration_s) and estimate.iteration_s > 0
    assert any("rule / API reward" in note for note in imported.notes)
    assert any("old log-probs" in note for note in imported.notes)


@pytest.mark.parametrize("keys,micro,limit", [
    # 32 rows per engine; vLLM's max_num_seqs default 128; KV pool of 0.8 x 79.6 GiB - 14.19
    # GiB weights at 6144 tokens x 28 layers x 2 x 4 heads x 128 x 2 bytes (336 MiB): 150 rows
    ({}, 1, "at most 128 rows"),
    ({"max_num_seqs": 8}, 4, "at most 8 rows"),
    # 0.3 x 79.6 - 14.19 = 9.69 GiB: 29 rows, ceil(32 / 29) = 2
    ({"gpu_memory_utilization": 0.3}, 2, "at most 29 rows"),
])
def test_ppo_example_generation_micro_batches_follow_max_num_seqs_and_kv_pool(
        tmp_path, keys, micro, limit):
    config = _published("example_ppo.yaml")
    config["actor_infer"]["strategy_args"]["strategy_config"].update(keys)
    imported = roll.import_config(_write(tmp_path, config), cluster_preset("h100x16"))
    assert imported.executions["actor_gen"].micro_batches == micro
    notes = [n for n in imported.notes if "actor_gen: an engine holds" in n]
    assert len(notes) == 1 and limit in notes[0] and f"its 32 rows priced as {micro}" in notes[0]


def test_8gpu_rlvr_example_is_refused_for_its_llm_judge_and_prices_without_it(tmp_path):
    cluster = cluster_preset("h100x8")
    with pytest.raises(InputError) as err:
        roll.import_config(DATA / "rlvr_config_8gpus.yaml", cluster)
    message = str(err.value)
    assert message.startswith(str(DATA / "rlvr_config_8gpus.yaml") +
                              ": rewards.llm_judge.device_mapping: 'list(range(6,8))': an LLM "
                              "judge on GPUs generates")
    config = _published("rlvr_config_8gpus.yaml")
    del config["rewards"]["llm_judge"]
    with pytest.raises(InputError) as err:   # vLLM on GPUs 0-5: no mesh we model
        roll.import_config(_write(tmp_path, config), cluster)
    assert "actor_infer.device_mapping: 'list(range(0,6))': not a mesh we model" in str(err.value)
    config["actor_infer"]["device_mapping"] = "list(range(0,8))"
    imported = roll.import_config(_write(tmp_path, config), cluster)
    ex = imported.executions
    assert set(ex) == {"actor_gen", "ref_inf", "actor_train"}   # rule rewards, KL (0.2 default)
    # 64 prompts x 8 / (dp 8 x 1 x 64): one step; the reference: 64 per GPU / 8
    assert ex["actor_train"].micro_batches == 64 and ex["ref_inf"].micro_batches == 8
    assert any("reinforce" in note for note in imported.notes)
    estimate = simulate(imported.workflow, cluster, ex)
    assert math.isfinite(estimate.iteration_s) and estimate.iteration_s > 0


def test_sglang_engine_needs_mem_fraction_static_and_takes_its_kv_pool(tmp_path):
    config = _published("example_ppo.yaml")
    strategy = config["actor_infer"]["strategy_args"]
    strategy["strategy_name"] = "sglang"
    path = _write(tmp_path, config)
    with pytest.raises(InputError) as err:
        roll.import_config(path, cluster_preset("h100x16"))
    assert str(err.value) == (f"{path}: {ENGINE}.mem_fraction_static: None: ROLL's SGLang "
                              f"strategy requires it (the KV pool's share of device memory)")
    strategy["strategy_config"] = {"mem_fraction_static": 0.3}   # 29 rows, as above
    imported = roll.import_config(_write(tmp_path, config), cluster_preset("h100x16"))
    assert imported.executions["actor_gen"].micro_batches == 2
    strategy["strategy_config"]["max_running_requests"] = 4
    imported = roll.import_config(_write(tmp_path, config), cluster_preset("h100x16"))
    assert imported.executions["actor_gen"].micro_batches == 8


def _bad(config, key, value):
    *path, leaf = key.split(".")
    node = config
    for part in path:
        node = node[part]
    node[leaf] = value
    return config


@pytest.mark.parametrize("key,value,expected", [
    ("critic.device_mapping", "__import__('os').system('true')",
     "critic.device_mapping: \"__import__('os').system('true')\": not read"),
    ("critic.strategy_args.strategy_name", "deepspeed_train",
     "critic.strategy_args.strategy_name: 'deepspeed_train': strategy of critic"),
    ("ppo_epochs", 2, "ppo_epochs: 2: our plans train one epoch per batch"),
    ("adv_estimator", "gigpo", "adv_estimator: 'gigpo'"),
    ("actor_train.strategy_args.strategy_config.context_parallel_size", 2,
     "context_parallel_size: 2: context parallelism"),
    ("critic.strategy_args.strategy_config.fsdp_size", 4,
     "critic.strategy_args.strategy_config.fsdp_size: 4: hybrid sharding"),
    ("actor_train.model_args.lora_rank", 8, "actor_train.model_args.lora_rank: 8: LoRA"),
    ("async_generation_ratio", 1, "async_generation_ratio: 1"),
    ("critic.training_args.gradient_accumulation_steps", 16,
     "critic.training_args.gradient_accumulation_steps: 16: gives 2 optimizer steps"),
    ("reference.infer_batch_size", 5, "reference.infer_batch_size: 5: does not divide"),
    ("init_kl_coef", "0.2", "init_kl_coef: '0.2': expected a number"),
    ("reference.model_args.dtype", "fp32", "reference.model_args.dtype: 'fp32': we price"),
    ("rewards.math_rule.device_mapping", "list(range(0,2))",
     "rewards.math_rule.worker_cls: 'roll.pipeline.rlvr.rewards.math_rule_reward_worker"),
    (f"{ENGINE}.max_num_seqs", 9000, (f"{ENGINE}.max_num_seqs: 9000: more than "
                                      f"{ENGINE}.max_num_batched_tokens 8192")),
    (f"{ENGINE}.max_num_seqs", 0, f"{ENGINE}.max_num_seqs: 0: expected a whole number"),
    (f"{ENGINE}.gpu_memory_utilization", 1.5, (f"{ENGINE}.gpu_memory_utilization: 1.5: "
                                               f"expected a fraction")),
    (f"{ENGINE}.gpu_memory_utilization", 0.1, (f"{ENGINE}.gpu_memory_utilization: 0.1: "
                                               f"{ENGINE}.gpu_memory_utilization 0.1 leaves a "
                                               f"KV pool of -6.23 GiB after the weights")),
])
def test_bad_input_is_one_line_naming_file_and_key(tmp_path, key, value, expected):
    path = _write(tmp_path, _bad(_published("example_ppo.yaml"), key, value))
    with pytest.raises(InputError) as err:
        roll.import_config(path, cluster_preset("h100x16"))
    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected in message, message
    assert "\n" not in message


def test_cluster_too_small_names_the_gpu_and_both_sizes():
    with pytest.raises(InputError) as err:
        roll.import_config(DATA / "example_ppo.yaml", cluster_preset("h100x8"))
    assert str(err.value) == (
        f"{DATA / 'example_ppo.yaml'}: actor_infer.device_mapping: 'list(range(0,16))': GPU 15 "
        f"needs 16 devices; {cluster_preset('h100x8').describe()} has 8")


def test_device_mapping_strings_are_parsed_not_evaluated():
    assert parse_device_mapping("list(range(0,8))", "f: k") == tuple(range(8))
    assert parse_device_mapping("list(range(4))", "f: k") == (0, 1, 2, 3)
    assert parse_device_mapping("list(range(0,8,2)) + [9]", "f: k") == (0, 2, 4, 6, 9)
    assert parse_device_mapping("[6, 7]", "f: k") == (6, 7)
    for text in ("__import__('os')", "list(map(int, '12'))", "[0, 0]", "range(8)", "[1.5]",
                 "list(range(0,8,0))", "[True]", [0, 1], "list(range(8)) - [1]"):
        with pytest.raises(InputError) as err:
            parse_device_mapping(text, "f: k")
        assert str(err.value).startswith("f: k: ")
    for devices in ((0, 1, 2, 3), (8, 9, 10, 11), (0, 2)):
        assert parse_device_mapping(device_mapping_text(devices), "f: k") == devices


def test_space_is_bounded_and_offers_rolls_freedom_of_placement():
    workflow, cluster = builtin_workflow("ppo"), cluster_preset("h100x8")
    plans = list(roll.target_plans(workflow, cluster))
    assert 1000 < len(plans) <= 200_000
    assert {p["actor_train"].shard_parameters_over_dp for p in plans} == {False, True}
    assert any(p["ref_inf"].devices != p["actor_train"].devices for p in plans)
    assert {p["actor_gen"].pp for p in plans} == {1}
    for plan in plans[:: len(plans) // 50]:
        assert roll.unexpressible(workflow, cluster, plan) == []
    assert list(roll.target_plans(builtin_workflow("dpo"), cluster)) == []


def test_128_gpu_ppo_plans_export_or_are_refused():
    workflow, cluster = builtin_workflow("ppo"), cluster_preset("h100x128")
    plan = next(iter(roll.target_plans(workflow, cluster)))
    text = roll.export_config(workflow, cluster, plan).text
    assert text.startswith("# ROLL 0.3.0 (alibaba/ROLL, tag v0.3.0)")
    assert "num_gpus_per_node: 8" in text
    everything = tuple(range(128))
    critic = Execution(devices=everything, dp=128, tp=1, pp=1, micro_batches=1)
    split = dict(plan, critic_inf=critic)
    with pytest.raises(Unexpressible) as err:
        roll.export_config(workflow, cluster, split)
    train = plan["critic_train"]
    assert err.value.reasons == [
        (f"executions.critic_inf: d128t1p1m1 on devices 0-127 differs from critic_train's "
         f"{train.call_layout_text('inference')} on {train.devices[0]}-{train.devices[-1]}: "
         f"ROLL's critic is one worker group with one device_mapping and strategy")]
