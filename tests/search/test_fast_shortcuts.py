"""The fast evaluator's shortcuts give the numbers of the rules they shorten, bit for bit,
along a random walk of one-call changes (kept, or undone by applying the old candidate):
- the list schedule's "shares a device with every node type" path (`share_count`) against
  the schedule that tests every share (`_devices_free_s`), and `share_count` against a
  count of the shares matrix after each `apply_call`;
- the memory rule's list of transient copies (`_memory_terms`) against the definition
  over all calls (`_is_transient_copy`, `_copy_lifetime`, modulo the priority order);
- a reallocation's held peak read from its call's (`_held_peak_during`) against the one
  computed for the reallocation (`_held_peak_bytes`);
- the memory bounds of the search's step (`_memory_bounds`, memory_bounds) against the
  memory rule: the upper bound never shows a plan that overflows to fit (taken: plans it
  shows to fit; passed by: plans that fit although it does not show it), and the lower
  bound is never above the rule's overflow (and is above 0 on some plans).
Each shortcut must be taken and must be passed by on these walks (counted), so the test
fails if a walk stops reaching one side."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from test_fast_incremental import random_walk

from planner.domain.cluster import cluster_preset
from planner.domain.workflow_file import builtin_workflow
from planner.search import fast_evaluator as fe
from planner.search import kernel_cache
from planner.search.builder import full_tables, pruned_tables

# The walks below compile in fast_evaluator's kernels: recompile them when it changes.
kernel_cache.depends_on(__file__, fe.__file__)

STEPS = 2000
NUM_COUNTS = 7          # what `_check_step` counts


@numba.njit(cache=True)
def _copies_by_definition(x, device, kt, scratch):
    """Bytes of the transient copies alive on `device` while node type x runs, from the
    definition: every call, in call order."""
    num_types = kt.order.shape[0]
    total = 0.0
    for j in range(kt.memory_role.shape[0]):
        if scratch.lo1[j] <= device < scratch.hi1[j] and \
                fe._is_transient_copy(j, scratch, kt.memory_role, kt.train_call_of):
            first, span = fe._copy_lifetime(j, kt)
            if (kt.position[x] - first) % num_types <= span:
                total += scratch.weights[j]
    return total


@numba.njit(cache=True)
def _check_step(kt, scratch, counts):
    """Compare each shortcut with its rule on the plan `scratch` holds; False on the first
    difference. counts: [all-share rows, other rows, held peaks read, held peaks computed,
    plans the upper memory bound shows to fit, plans that fit where it does not, plans
    whose lower bound overflows]."""
    num_types = scratch.duration.shape[0]
    for x in range(num_types):
        if scratch.share_count[x] != scratch.shares_devices[x].sum():
            return False
        counts[0 if scratch.share_count[x] == num_types else 1] += 1
    fast_s = fe._list_schedule(kt, scratch)
    saved = scratch.share_count.copy()
    scratch.share_count[:] = -1                 # no row takes the shortcut
    every_share_s = fe._list_schedule(kt, scratch)
    scratch.share_count[:] = saved
    if fast_s != every_share_s:
        return False
    count, num_copies = fe._memory_terms(kt, scratch)
    overflow = fe._memory_overflow(kt, scratch, count, num_copies)
    num_calls = scratch.placement.shape[0]
    for x in range(num_types):
        for k in range(num_calls):
            for device in (scratch.lo1[k], scratch.hi1[k] - 1):
                if fe._copies_at(x, device, num_copies, kt, scratch) != \
                        _copies_by_definition(x, device, kt, scratch):
                    return False
    for p in range(kt.pair_src.shape[0]):
        x = num_calls + p
        for k in (kt.pair_src[p], kt.pair_dst[p]):
            computed = fe._held_peak_bytes(x, k, count, num_copies, kt, scratch)
            if fe._held_peak_during(x, k, count, num_copies, kt, scratch) != computed:
                return False
            counts[2 if computed == scratch.held_peak[k] else 3] += 1
    # last: the bounds take the start levels as work space
    fits, lower = fe._memory_bounds(kt, scratch, count, num_copies)
    if lower > overflow or (fits and overflow > 0.0):
        return False
    counts[4] += fits
    counts[5] += not fits and overflow <= 0.0
    counts[6] += lower > 0.0
    return True


@numba.njit(cache=True)
def _walk(start, kt, calls, candidates, keep, counts):
    """Change call calls[s] to global candidate candidates[s] at step s, check the
    shortcuts, undo the change unless keep[s]; the first step that differs, or -1."""
    scratch = fe.new_scratch(kt)
    plan = start.copy()
    fe.evaluate_plan(plan, kt, scratch)
    for s in range(calls.shape[0]):
        k, old = calls[s], plan[calls[s]]
        plan[k] = candidates[s]
        fe.apply_call(k, plan[k], kt, scratch)
        if not _check_step(kt, scratch, counts):
            return s
        if not keep[s]:
            plan[k] = old
            fe.apply_call(k, old, kt, scratch)
    return -1


@pytest.mark.parametrize("algorithm,cluster_name", [("ppo", "h100x16"), ("grpo", "h100x8")])
def test_shortcuts_equal_their_rules(algorithm, cluster_name):
    tables, _ = pruned_tables(full_tables(builtin_workflow(algorithm),
                                          cluster_preset(cluster_name)), {})
    evaluator = fe.FastEvaluator(tables)
    start, calls, candidates, keep = random_walk(tables, evaluator, STEPS, 11)
    counts = np.zeros(NUM_COUNTS, dtype=np.int64)
    assert _walk(start, evaluator.kernel, calls, candidates, keep, counts) == -1
    assert (counts > 0).all(), counts            # both sides of each shortcut were reached
