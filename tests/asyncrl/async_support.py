"""Helpers shared by the asynchronous-RL tests (a plain module, imported by its unique name).

`sync_snapshot` renders everything the augmented graph of a synchronous plan consists of as
plain text; tests/asyncrl/data/sync_augmented_golden.json holds its output as the code was
before staleness existed (commit 13ad9e1, regenerated only by running
`python -c "import async_support as a; a.write_golden()"` in tests/asyncrl on that code).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from planner.domain.augment import (
    augmented_graph,
    model_call_pairs,
    priority_order,
    reallocations,
    scheduled_nodes,
)
from planner.domain.layout import Execution
from planner.domain.workflow_file import builtin_workflow

GOLDEN = Path(__file__).parent / "data" / "sync_augmented_golden.json"
ALGORITHMS = ("ppo", "grpo", "remax", "dpo", "rloo")
CASES_PER_WORKFLOW = 4
SNAPSHOT_ITERATIONS = 3
# Meshes and layouts on one 8-device node: shared, disjoint and partial placements.
H100X8_EXECUTIONS = (
    Execution(devices=tuple(range(8)), dp=8, tp=1, pp=1),
    Execution(devices=tuple(range(8)), dp=2, tp=2, pp=2),
    Execution(devices=tuple(range(8)), dp=2, tp=2, pp=2, micro_batches=4),
    Execution(devices=(0, 1, 2, 3), dp=4, tp=1, pp=1),
    Execution(devices=(4, 5, 6, 7), dp=4, tp=1, pp=1),
    Execution(devices=(4, 5), dp=1, tp=2, pp=1),
)


def snapshot_cases() -> list[tuple[str, str, dict[str, int]]]:
    """(case id, algorithm, call -> index into H100X8_EXECUTIONS), seeded."""
    rng = random.Random(14)
    cases = []
    for algorithm in ALGORITHMS:
        calls = builtin_workflow(algorithm).call_order
        for k in range(CASES_PER_WORKFLOW):
            choice = {c: rng.randrange(len(H100X8_EXECUTIONS)) for c in calls}
            cases.append((f"{algorithm}/{k}", algorithm, choice))
    return cases


def sync_snapshot(workflow, executions, **staleness) -> dict:
    """Pairs, priority order, scheduled node names, reallocations, graph nodes and edges."""
    graph = augmented_graph(workflow, executions, SNAPSHOT_ITERATIONS, **staleness)
    return {
        "pairs": [list(p) for p in model_call_pairs(workflow, **staleness)],
        "priority": [[list(pair) if pair else None, call]
                     for pair, call in priority_order(workflow, **staleness)],
        "scheduled": [n.name for n in scheduled_nodes(workflow, executions,
                                                      SNAPSHOT_ITERATIONS, **staleness)],
        "reallocations": [r.name for r in reallocations(workflow, executions, **staleness)],
        "nodes": sorted(f"{n}|{d['kind']}|{d['model']}|{list(d['devices'])}"
                        for n, d in graph.nodes(data=True)),
        "edges": sorted(f"{u}>{v}|{d['kind']}|{list(d.get('keys', ()))}|{d.get('transfer')}"
                        for u, v, d in graph.edges(data=True)),
    }


def case_executions(algorithm: str, choice: dict[str, int]) -> dict[str, Execution]:
    return {call: H100X8_EXECUTIONS[k] for call, k in choice.items()}


def write_golden() -> None:
    data = {case: sync_snapshot(builtin_workflow(algorithm), case_executions(algorithm, choice))
            for case, algorithm, choice in snapshot_cases()}
    GOLDEN.write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")
