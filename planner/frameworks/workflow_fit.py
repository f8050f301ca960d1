"""Whether a workflow's calls are those a framework runs: its built-in algorithm's calls
(planner.domain.builtin_workflows), less the ones the framework can leave out, each with
the built-in call's model, kind and greediness. The targets' workflow_problems use it.
"""

from __future__ import annotations

from planner.domain.builtin_workflows import BUILTIN_CALLS
from planner.domain.workflow import Workflow


def builtin_call_problems(workflow: Workflow, framework: str,
                          optional: tuple[str, ...]) -> list[str]:
    """One line per way the calls of `workflow` (whose algorithm is a built-in one) are not
    the built-in calls of its algorithm, less any of `optional`."""
    builtin = {c.name: c for c in BUILTIN_CALLS[workflow.algorithm]}
    names = set(workflow.call_by_name)
    problems = []
    if not names <= set(builtin) or not set(builtin) - names <= set(optional):
        less = f", less any of {', '.join(optional)}" if optional else ""
        problems.append(f"workflow: calls {sorted(names)}: {framework} runs the "
                        f"{workflow.algorithm} calls {sorted(builtin)}{less}")
    for name in sorted(names & set(builtin)):
        ours, theirs = workflow.call_by_name[name], builtin[name]
        if (ours.model, ours.kind, ours.greedy) != (theirs.model, theirs.kind, theirs.greedy):
            problems.append(f"workflow: call {name} is not {framework}'s ({theirs.model} "
                            f"{theirs.kind})")
    return problems


def reference_problem(workflow: Workflow, framework: str, key: str) -> list[str]:
    """A line when the reference model differs from the actor's, which frameworks that
    load the reference from the actor's checkpoint (`key`) cannot express."""
    models = workflow.models
    if "ref" in models and models["ref"].spec != models["actor"].spec:
        return [(f"models.ref: {framework}'s reference is {key}, the actor's model; a "
                 f"different reference model is not expressible")]
    return []
