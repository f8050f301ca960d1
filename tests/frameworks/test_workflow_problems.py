"""Every target says why it cannot run a workflow at all (target.py workflow_problems), and
its plan space is then empty."""

import pytest

from planner.domain.builtin_workflows import builtin_calls_without
from planner.domain.cluster import cluster_preset
from planner.domain.workflow import Workflow
from planner.domain.workflow_file import builtin_workflow
from planner.frameworks.target import TARGET_NAMES, target_module


def _without(algorithm: str, dropped: set[str]) -> Workflow:
    base = builtin_workflow(algorithm)
    calls = builtin_calls_without(algorithm, dropped)
    models = {r: m for r, m in base.models.items() if r in {c.model for c in calls}}
    return Workflow(algorithm=algorithm, models=models, batch=base.batch, inputs=base.inputs,
                    calls=calls)


@pytest.mark.parametrize("target, workflow, expected", [
    ("areal", builtin_workflow("ppo"), [("workflow: calls ['rew_inf']: AReaL computes rewards "
                                         "with a reward function inside the rollout workflow")]),
    ("areal", builtin_workflow("remax"), ["workflow: calls ['rew_greedy_inf', 'rew_inf']",
                                          "workflow: algorithm remax: AReaL's PPOTrainer"]),
    ("verl", builtin_workflow("dpo"), ["workflow: algorithm dpo: verl's main_ppo runs"]),
    ("roll", builtin_workflow("remax"), ["workflow: algorithm remax: ROLL's RLVR pipeline"]),
    ("openrlhf", builtin_workflow("remax"), ["workflow: algorithm remax: train_ppo_ray runs"]),
    ("openrlhf", _without("grpo", {"rew_inf"}),
     [("workflow: calls ['actor_gen', 'actor_train', 'ref_inf']: OpenRLHF runs the grpo calls "
       "['actor_gen', 'actor_train', 'ref_inf', 'rew_inf']")]),
    ("verl", _without("remax", {"rew_greedy_inf"}),
     [("workflow: calls ['actor_gen', 'actor_greedy_gen', 'actor_train', 'ref_inf', "
       "'rew_inf']: verl's reward model runs all of ['rew_inf', 'rew_greedy_inf'] or none")]),
])
def test_a_workflow_the_target_cannot_run_says_why_and_has_no_plans(target, workflow,
                                                                    expected):
    module = target_module(target)
    problems = module.workflow_problems(workflow)
    assert len(problems) == len(expected)
    for line, start in zip(problems, expected):
        assert line.startswith(start), line
    assert next(iter(module.target_plans(workflow, cluster_preset("h100x8"))), None) is None


@pytest.mark.parametrize("target", TARGET_NAMES)
def test_a_workflow_the_target_runs_has_no_problems(target):
    workflow = builtin_workflow("grpo")
    if target in ("areal", "roll", "verl"):   # rule-based rewards: no reward model call
        workflow = _without("grpo", {"rew_inf"})
    assert target_module(target).workflow_problems(workflow) == []
