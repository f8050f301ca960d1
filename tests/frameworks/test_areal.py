"""AReaL target: backend strings, export, import, round trips, the expressible space."""

import ast
import itertools
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
from planner.domain.workflow import Workflow
from planner.domain.workflow_file import builtin_workflow
from planner.frameworks.areal_backend import Backend, parse_backend
from planner.frameworks.areal_keys import ROLE_DEFAULTS, TOP
from planner.frameworks.target import Unexpressible, target_module

DATA = Path(__file__).parent / "data" / "areal"
REPO = Path(__file__).parents[2]
GRPO_EXAMPLE = DATA / "gsm8k_grpo_megatron.yaml"
PPO_EXAMPLE = DATA / "gsm8k_ppo_megatron.yaml"
SYNC_SCRIPT = DATA / "gsm8k_grpo_megatron_sync.sh"
SYNC = ("rollout.max_head_offpolicyness=0 actor.recompute_logprob=false "
        "actor.use_decoupled_loss=false actor.path=Qwen/Qwen2.5-7B-Instruct")
areal = target_module("areal")


# --- AReaL's own definitions (the checked-in cli_args.py), read with ast -----------------

def _classes():
    tree = ast.parse((DATA / "cli_args.py").read_text())
    return {node.name: node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}


CLASSES = _classes()
_NO_LITERAL = object()


def _fields(name):
    cls = CLASSES[name]
    fields = {}
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in CLASSES:
            fields.update(_fields(base.id))
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            fields[stmt.target.id] = (stmt.annotation, stmt.value)
    return fields


def _default(value):
    if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "field":
        value = next((k.value for k in value.keywords if k.arg == "default"), None)
        if value is None:
            return _NO_LITERAL
    try:
        return ast.literal_eval(value)
    except ValueError:
        return _NO_LITERAL


def _areal_field(key):
    """(annotation, default node) of dotted `key` in GRPOConfig, or None if no such key."""
    cls, *path, leaf = ["GRPOConfig", *key.split(".")]
    for part in path:
        fields = _fields(cls)
        if part not in fields:
            return None
        names = [n.id for n in ast.walk(fields[part][0]) if isinstance(n, ast.Name)
                 and n.id in CLASSES]
        if not names:
            return None
        cls = names[0]
    return _fields(cls).get(leaf)


def _flat(data, prefix=""):
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _areal_workflow(algorithm, with_ref=True, **kwargs):
    """A built-in workflow as AReaL runs it: no reward model (a reward function)."""
    base = builtin_workflow(algorithm, **kwargs)
    calls = builtin_calls_without(algorithm, {"rew_inf", "rew_greedy_inf"}
                                  | (set() if with_ref else {"ref_inf"}))
    models = {r: m for r, m in base.models.items() if r in {c.model for c in calls}}
    return Workflow(algorithm=algorithm, models=models, batch=base.batch, inputs=base.inputs,
                    calls=calls)


def _plan_fields(ex: Execution):
    return ex.devices, ex.dp, ex.tp, ex.pp, ex.micro_batches, ex.shard_parameters_over_dp


def _some_plans(workflow, cluster, count=8):
    plans = list(areal.target_plans(workflow, cluster))
    step = max(1, len(plans) // count)
    picked = plans[::step][:count] + plans[-1:]
    fsdp = next(p for p in plans if p["actor_train"].shard_parameters_over_dp)
    colocated = next(p for p in plans if p.get("ref_inf", p["actor_train"]).devices
                     == p["actor_train"].devices and p["actor_train"].pp > 1)
    return picked + [fsdp, colocated]


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


# --- backend strings ------------------------------------------------------------------

@pytest.mark.parametrize("text,inference,expected", [
    ("sglang:d4p1t1", True, Backend("sglang", 4, 1, 1)),
    ("vllm:d2p2t2", True, Backend("vllm", 2, 2, 2)),
    ("megatron:d2p2t4", False, Backend("megatron", 2, 4, 2)),
    ("fsdp:d4p1t1", False, Backend("fsdp", 4, 1, 1)),
    (" fsdp : d8 ", False, Backend("fsdp", 8, 1, 1)),
    ("megatron[actor]:t2d4", False, Backend("megatron", 4, 2, 1)),
])
def test_backend_strings_read_as_areal_reads_them(text, inference, expected):
    parsed = parse_backend(text, inference)
    assert parsed == expected
    assert parse_backend(parsed.text(), inference) == parsed


@pytest.mark.parametrize("text,inference,words", [
    ("sglang:d4p2", True, "sglang runs dimensions d, t only"),
    ("fsdp:d4p2", False, "fsdp runs dimensions d, t, c only"),
    ("megatron:d2c2", False, "context parallelism"),
    ("megatron:d2e2", False, "expert parallelism"),
    ("d4t2", False, "explicit backend prefix"),
    ("sglang:d4+fsdp:d4", True, "deprecated allocation_mode"),
    ("megatron:(attn:d4p2t2c2|ffn:d2p2t4e2)", False, "MoE"),
    ("archon:d4", False, "supported: fsdp, megatron"),
    ("megatron:d2d2", False, "given twice"),
    ("megatron:d0", False, "d/t/p/c/e<size>"),
    ("fsdp:d4", True, "supported: sglang, vllm"),
    ("sglang:d4c2", True, "not c"),
    (None, True, "expected a backend string"),
])
def test_bad_backend_strings_say_why(text, inference, words):
    assert words in parse_backend(text, inference)


# --- keys and defaults against AReaL's definitions --------------------------------------

def test_defaults_match_areals_dataclasses():
    keys = dict(TOP)
    keys.update({f"{role}.{k}": v for role, d in ROLE_DEFAULTS.items() for k, v in d.items()})
    checked = 0
    for key, value in keys.items():
        found = _areal_field(key)
        assert found is not None, key
        default = _default(found[1])
        if default is not _NO_LITERAL:
            assert default == value, key
            checked += 1
    # prox_logp_method's default is a named constant; every other default is a literal
    assert checked == len(keys) - 2


def test_exported_keys_are_areals():
    example = dict(_flat(yaml.safe_load(GRPO_EXAMPLE.read_text())))
    for workflow, cluster in ((_areal_workflow("grpo"), "h100x8"),
                              (_areal_workflow("ppo"), "h100x16")):
        for executions in _some_plans(workflow, cluster_preset(cluster)):
            text = areal.export_config(workflow, cluster_preset(cluster), executions).text
            keys = dict(_flat(yaml.safe_load(text)))
            assert [k for k in keys if _areal_field(k) is None] == []
            assert keys["rollout.max_head_offpolicyness"] == 0
    # a Megatron GRPO plan with the reference on the actor's GPUs writes the example's keys
    workflow, cluster = _areal_workflow("grpo"), cluster_preset("h100x8")
    plan = next(p for p in areal.target_plans(workflow, cluster)
                if p["ref_inf"].devices == p["actor_train"].devices
                and not p["actor_train"].shard_parameters_over_dp
                and p["actor_train"].recompute != "selective")
    keys = dict(_flat(yaml.safe_load(areal.export_config(workflow, cluster, plan).text)))
    assert set(keys) - set(example) == {"actor.megatron.ddp.use_distributed_optimizer"}
    assert keys["ref.scheduling_strategy.type"] == "colocation"


# --- export -------------------------------------------------------------------------------

def test_default_plan_is_refused_with_a_reason_per_feature():
    plan = load_plan(REPO / "plans" / "ppo-h100x8.yaml")
    with pytest.raises(Unexpressible) as err:
        areal.export_config(plan.workflow, plan.cluster, plan.executions)
    reasons = err.value.reasons
    assert [r.split(":")[0] for r in reasons] == [
        "workflow", "executions.actor_gen", "executions.ref_inf", "executions.critic_inf"]
    assert "reward function" in reasons[0] and "rew_inf" in reasons[0]
    assert "shares GPUs with actor_train" in reasons[1]
    assert reasons[2].startswith("executions.ref_inf: devices 4-7: AReaL gives the ref engine "
                                 "GPUs 8-11, past the cluster's 8")
    assert "one engine" in reasons[3]
    assert all("\n" not in r for r in reasons)


@pytest.mark.parametrize("algorithm,cluster_name", [("grpo", "h100x8"), ("ppo", "h100x8"),
                                                    ("grpo", "h100x16")])
def test_round_trip_gives_back_every_execution(tmp_path, algorithm, cluster_name):
    workflow, cluster = _areal_workflow(algorithm), cluster_preset(cluster_name)
    for i, executions in enumerate(_some_plans(workflow, cluster)):
        assert areal.unexpressible(workflow, cluster, executions) == []
        exported = areal.export_config(workflow, cluster, executions)
        assert exported.text.startswith("# AReaL v1.0.4")
        back = areal.import_config(_write(tmp_path, f"plan{i}{exported.file_suffix}",
                                          exported.text), cluster)
        assert set(back.executions) == set(executions)
        for name, ex in executions.items():
            assert _plan_fields(back.executions[name]) == _plan_fields(ex), name
            if workflow.call_by_name[name].kind == "train":
                got = back.executions[name]
                assert (got.recompute, got.shard_optimizer_over_dp) == \
                    (ex.recompute, ex.shard_optimizer_over_dp), name
        assert back.workflow.batch == workflow.batch
        assert {r: m.spec for r, m in back.workflow.models.items()} == \
            {r: m.spec for r, m in workflow.models.items()}


def test_space_is_bounded_and_offers_what_areal_runs():
    workflow, cluster = _areal_workflow("ppo"), cluster_preset("h100x8")
    plans = list(areal.target_plans(workflow, cluster))
    assert 1000 < len(plans) <= 200_000
    assert {p["actor_train"].shard_parameters_over_dp for p in plans} == {False, True}
    assert {p["critic_train"].devices == p["actor_train"].devices for p in plans} == \
        {False, True}
    assert all(not set(p["actor_gen"].devices) & set(p["actor_train"].devices) for p in plans)
    for plan in plans[:: len(plans) // 50]:
        assert areal.unexpressible(workflow, cluster, plan) == []
    assert list(areal.target_plans(builtin_workflow("grpo"), cluster)) == []   # reward model


def test_128_gpu_ppo_plans_export_or_are_refused(tmp_path):
    cluster = cluster_preset("h100x128")
    builtin = builtin_workflow("ppo")
    plan = {n: Execution(devices=tuple(range(128)), dp=128, tp=1, pp=1)
            for n in ("actor_gen", "rew_inf", "ref_inf", "critic_inf")}
    plan.update({n: Execution(devices=tuple(range(128)), dp=16, tp=8, pp=1, micro_batches=1)
                 for n in ("actor_train", "critic_train")})
    with pytest.raises(Unexpressible) as err:
        areal.export_config(builtin, cluster, plan)
    # the verl-style colocated plan: reward model, rollout on the actor's GPUs, and a
    # critic with two layouts
    assert [r.split(":")[0] for r in err.value.reasons] == [
        "workflow", "executions.actor_gen", "executions.critic_inf"]
    workflow = _areal_workflow("ppo")
    executions = next(iter(areal.target_plans(workflow, cluster)))
    text = areal.export_config(workflow, cluster, executions).text
    config = yaml.safe_load(text)
    assert config["cluster"] == {"n_nodes": 16, "n_gpus_per_node": 8}
    assert config["scheduler"]["type"] == "ray"
    back = areal.import_config(_write(tmp_path, "p128.yaml", text), cluster)
    assert {n: _plan_fields(e) for n, e in back.executions.items()} == \
        {n: _plan_fields(e) for n, e in executions.items()}


# --- import -------------------------------------------------------------------------------

def test_published_example_imports_as_asynchronous(tmp_path):
    """AReaL's GRPO example (max_head_offpolicyness 2, the decoupled loss) is a plan of
    staleness 2 with continuous generation; priced with the proximal forward."""
    script = _write(tmp_path, "run.sh", "python3 examples/math/gsm8k_rl.py --config "
                    f"{GRPO_EXAMPLE} actor.path=Qwen/Qwen2.5-7B-Instruct actor.kl_ctl=0.01\n")
    imported = areal.import_config(script, cluster_preset("h100x8"))
    assert imported.staleness == imported.workflow.max_staleness == 2
    assert imported.executions["actor_gen"].decode_batching == "continuous"
    assert any("asynchronous at staleness 2" in note for note in imported.notes)
    plan = Plan(workflow=imported.workflow, cluster=cluster_preset("h100x8"),
                executions=imported.executions, staleness=2,
                provenance=Provenance(created_by="tests"))
    assert plan.problems() == []
    estimate = simulate(plan.workflow, plan.cluster, plan.executions, staleness=2)
    assert estimate.staleness == 2 and "proximal_logprobs" in estimate.call_phases_s[
        "actor_train"]


@pytest.mark.parametrize("override,words", [
    ("actor.use_decoupled_loss=false actor.recompute_logprob=false",
     "without the decoupled loss is not modelled"),
    ("actor.prox_logp_method=loglinear", "forward-free approximation is not modelled"),
    ("rollout.max_head_offpolicyness=9", "expected a whole number from 0 to 8"),
])
def test_asynchronous_configs_we_cannot_price_are_refused(tmp_path, override, words):
    script = _write(tmp_path, "run.sh", "python3 examples/math/gsm8k_rl.py --config "
                    f"{GRPO_EXAMPLE} actor.path=Qwen/Qwen2.5-7B-Instruct {override}\n")
    with pytest.raises(InputError) as err:
        areal.import_config(script, cluster_preset("h100x8"))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_an_asynchronous_plan_exports_and_imports_back(tmp_path):
    """A plan of staleness 1 (generation continuous on its own GPUs) exports AReaL's
    decoupled PPO as our runtime runs it and imports back to the same plan; the other
    targets refuse it in one line."""
    workflow = _areal_workflow("grpo").model_copy(update={"max_staleness": 1})
    workflow = Workflow.model_validate(workflow.model_dump())
    cluster = cluster_preset("h100x8")
    executions = next(p for p in areal.target_plans(workflow, cluster)
                      if not p["actor_train"].shard_parameters_over_dp)
    executions = {**executions, "actor_gen": executions["actor_gen"].model_copy(
        update={"decode_batching": "continuous"})}
    exported = areal.export_config(workflow, cluster, executions, staleness=1)
    keys = dict(_flat(yaml.safe_load(exported.text)))
    assert [k for k in keys if _areal_field(k) is None] == []    # every key is AReaL's
    assert keys["rollout.max_head_offpolicyness"] == 1
    assert keys["actor.use_decoupled_loss"] is True and keys["actor.recompute_logprob"]
    assert keys["actor.prox_logp_method"] == "recompute"
    assert keys["actor.rejection_sampling.action"] == "clamp"
    assert keys["actor.rejection_sampling.upper"] == 5.0
    assert "# Asynchronous: rollout.max_head_offpolicyness 1" in exported.text
    back = areal.import_config(_write(tmp_path, "async.yaml", exported.text), cluster)
    assert back.staleness == 1
    for name, ex in executions.items():
        assert _plan_fields(back.executions[name]) == _plan_fields(ex), name
    assert back.executions["actor_gen"].decode_batching == "continuous"
    plan = Plan(workflow=workflow, cluster=cluster, executions=executions, staleness=1,
                provenance=Provenance(created_by="tests"))
    for other in ("verl", "roll", "openrlhf"):
        module = target_module(other)
        with pytest.raises(Unexpressible) as err:
            module.export_config(plan.workflow, plan.cluster, plan.executions, staleness=1)
        assert any(r.startswith("plan staleness 1: the ") and "synchronous" in r
                   for r in err.value.reasons), other


def test_published_example_run_synchronously_imports_validates_and_prices():
    cluster = cluster_preset("h100x8")
    imported = areal.import_config(SYNC_SCRIPT, cluster)
    ex = imported.executions
    assert set(ex) == {"actor_gen", "ref_inf", "actor_train"}
    assert ex["actor_train"].devices == ex["ref_inf"].devices == (0, 1, 2, 3)
    assert ex["actor_gen"].devices == (4, 5, 6, 7)
    # 256 prompts, 256 in flight (max_concurrent_rollouts): one wave
    assert (ex["actor_gen"].dp, ex["actor_gen"].tp, ex["actor_gen"].micro_batches) == (4, 1, 1)
    # 256 prompts x 4 samples / dp 4 = 256 sequences of 1024 + 1024 tokens in 10240 per mb
    assert ex["actor_train"].micro_batches == ex["ref_inf"].micro_batches == 52
    assert ex["actor_train"].recompute == "none"          # gradient_checkpointing: false
    assert imported.workflow.batch.n_seqs == 1024 and imported.workflow.algorithm == "grpo"
    assert imported.workflow.models["actor"].spec == PRESETS["qwen2.5-7b"]
    plan = Plan(workflow=imported.workflow, cluster=cluster, executions=ex,
                provenance=Provenance(created_by="test"))
    assert plan.problems() == []
    estimate = simulate(imported.workflow, cluster, ex)
    assert math.isfinite(estimate.iteration_s) and estimate.iteration_s > 0
    assert any("upper bound" in note for note in imported.notes)


def test_ppo_example_imports_a_colocated_critic(tmp_path):
    script = _write(tmp_path, "ppo.sh", f"python3 examples/math/gsm8k_rl.py --config "
                                        f"{PPO_EXAMPLE} {SYNC} critic.path=Qwen/Qwen2.5-7B\n")
    imported = areal.import_config(script, cluster_preset("h100x8"))
    ex = imported.executions
    assert imported.workflow.algorithm == "ppo" and "ref_inf" not in ex   # kl_ctl 0.0
    assert ex["critic_train"].devices == ex["actor_train"].devices == (0, 1, 2, 3)
    assert ex["critic_train"].recompute == "none" and ex["actor_train"].recompute == "full"
    # 256 prompts x 1 sample / dp 4 = 64 sequences of 2048 tokens in 10240 per micro-batch;
    # one minibatch, so both calls make the same count
    assert ex["critic_inf"].micro_batches == ex["critic_train"].micro_batches == 13


BASE = {"cluster": {"n_nodes": 1, "n_gpus_per_node": 8},
        "rollout": {"backend": "sglang:d4", "consumer_batch_size": 64},
        "gconfig": {"n_samples": 4, "max_new_tokens": 512},
        "train_dataset": {"batch_size": 64, "max_length": 512},
        "actor": {"backend": "megatron:d2p2t1", "path": "Qwen/Qwen2.5-7B", "kl_ctl": 0.0,
                  "ppo_n_minibatches": 2}}


@pytest.mark.parametrize("change,key", [
    ({"actor": {"backend": "megatron:d4x2"}}, "actor.backend"),
    ({"actor": {"backend": "megatron:d2c2"}}, "actor.backend"),
    # asynchronous without the decoupled loss: the loss is what we cannot price
    ({"rollout": {**BASE["rollout"], "max_head_offpolicyness": 2}},
     "actor.use_decoupled_loss"),
    ({"rollout": {**BASE["rollout"], "max_head_offpolicyness": -1}},
     "rollout.max_head_offpolicyness"),
    ({"rollout": {**BASE["rollout"], "backend": "sglang:d8"}}, "cluster.n_nodes"),
    ({"rollout": {"backend": "sglang:d4"}}, "rollout.consumer_batch_size"),
    ({"cluster": {"n_nodes": 1, "n_gpus_per_node": 4}}, "cluster.n_gpus_per_node"),
    ({"allocation_mode": "sglang:d4+megatron:d4"}, "allocation_mode"),
    ({"train_dataset": {"batch_size": 64, "max_length": None}}, "train_dataset.max_length"),
    ({"actor": {**BASE["actor"], "use_decoupled_loss": True}}, "actor.use_decoupled_loss"),
    ({"actor": {**BASE["actor"], "offload": True}}, "actor.offload"),
    ({"actor": {**BASE["actor"], "path": "no-such/model-9b"}}, "actor.path"),
    ({"rollout": {**BASE["rollout"], "scheduling_strategy": {"type": "colocation",
                                                             "target": "actor"}}},
     "rollout.scheduling_strategy.type"),
    ({"ref": {"backend": "megatron:d2", "scheduling_strategy": {"type": "colocation",
                                                                "target": "actor"}},
      "actor": {**BASE["actor"], "kl_ctl": 0.1}}, "ref.backend"),
])
def test_bad_input_is_one_line_naming_file_and_key(tmp_path, change, key):
    config = {**BASE, **change}
    path = _write(tmp_path, "config.yaml", yaml.safe_dump(config))
    with pytest.raises(InputError) as err:
        areal.import_config(path, cluster_preset("h100x8"))
    message = str(err.value)
    assert message.startswith(f"{path}: {key}") and "\n" not in message


def test_base_config_imports_and_bad_scripts_are_refused(tmp_path):
    cluster = cluster_preset("h100x8")
    path = _write(tmp_path, "config.yaml", yaml.safe_dump(BASE))
    ex = areal.import_config(path, cluster).executions
    assert ex["actor_gen"].micro_batches == 1       # all 64 prompts in flight at once
    # Megatron pp 2 makes at least 2 pp = 4 micro-batches of the 64 sequences per rank
    assert (ex["actor_train"].devices, ex["actor_train"].micro_batches) == ((0, 1, 2, 3), 4)
    for text, words in ((f"python3 train.py --config {path} --oops\n", "--oops"),
                        (f"python3 train.py --config {path} actor.path=$MODEL\n", "$MODEL"),
                        ("echo nothing\n", "found 0")):
        with pytest.raises(InputError) as err:
            areal.import_config(_write(tmp_path, "run.sh", text), cluster)
        assert words in str(err.value) and "\n" not in str(err.value)


def test_concurrent_rollouts_set_the_generation_waves(tmp_path):
    cluster = cluster_preset("h100x8")
    config = {**BASE, "rollout": {**BASE["rollout"], "max_concurrent_rollouts": 16}}
    imported = areal.import_config(_write(tmp_path, "c.yaml", yaml.safe_dump(config)), cluster)
    assert imported.executions["actor_gen"].micro_batches == 4      # 64 prompts / 16
    config["rollout"]["max_concurrent_rollouts"] = 24
    imported = areal.import_config(_write(tmp_path, "c.yaml", yaml.safe_dump(config)), cluster)
    assert imported.executions["actor_gen"].micro_batches == 3      # 64 / 24, rounded up
    assert any("the last one is partial" in note for note in imported.notes)


def test_an_asynchronous_workflows_areal_plans_run_at_its_staleness():
    """With max_staleness k AReaL's plans are asynchronous at k (exported as
    max_head_offpolicyness k), their rollout batching continuously; the synchronous
    targets' plans stay at 0."""
    sync = _areal_workflow("grpo")
    stale = Workflow.model_validate(sync.model_copy(update={"max_staleness": 2}).model_dump())
    cluster = cluster_preset("h100x8")
    assert areal.plan_staleness(sync) == 0 and areal.plan_staleness(stale) == 2
    for workflow, batching in ((sync, "static"), (stale, "continuous")):
        rollouts = {p["actor_gen"].decode_batching
                    for p in itertools.islice(areal.target_plans(workflow, cluster), 200)}
        assert rollouts == {batching}
    for other in ("verl", "roll", "openrlhf"):
        assert target_module(other).plan_staleness(stale) == 0
