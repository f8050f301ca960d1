"""The two sequential rules of the transfer schedules, compiled (numba) over arrays.

planner.sharding.transfer_schedule states the rules and lays out the arrays; these kernels
only run them. Each is sequential by nature (a choice depends on the loads or the steps
the earlier choices left), so it is a loop, compiled: a 70B model's reallocation on 1,024
devices is ~740,000 pieces, which took 2-3 s a schedule as Python objects (issue 13).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def pick_sources(target: np.ndarray, elements: np.ndarray, group: np.ndarray,
                 group_start: np.ndarray, node_start: np.ndarray, members: np.ndarray,
                 device_node: np.ndarray, num_devices: int) -> np.ndarray:
    """Per request i, in order, the device serving `elements[i]` to `target[i]` among the
    members of replica group `group[i]`: the target itself when it is a member; else the
    least loaded member on the target's node; else the least loaded member (ties: lowest
    device id). The load of a device is the elements it was chosen to send so far.

    Layout: group g's members are members[group_start[g]:group_start[g + 1]], sorted by
    (node, device id); those on node n are members[node_start[g, n]:node_start[g, n + 1]].
    """
    load = np.zeros(num_devices, np.int64)
    source = np.empty(len(target), np.int64)
    for i in range(len(target)):
        dst, g = target[i], group[i]
        node = device_node[dst]
        lo, hi = node_start[g, node], node_start[g, node + 1]
        if lo == hi:
            lo, hi = group_start[g], group_start[g + 1]
        best = members[lo]
        for k in range(lo, hi):
            candidate = members[k]
            if candidate == dst:
                best = dst
                break
            if load[candidate] < load[best] or (load[candidate] == load[best]
                                                and candidate < best):
                best = candidate
        if best != dst:
            load[best] += elements[i]
        source[i] = best
    return source


@numba.njit(cache=True)
def first_fit_steps(sender: np.ndarray, receiver: np.ndarray, num_senders: int,
                    num_receivers: int) -> np.ndarray:
    """The step of each message, taken in order: the first step in which its sender sends
    nothing and its receiver receives nothing yet. `sender` / `receiver` are dense ids
    (0 .. num_senders - 1, 0 .. num_receivers - 1)."""
    sends = np.zeros(num_senders, np.int64)
    receives = np.zeros(num_receivers, np.int64)
    for i in range(len(sender)):
        sends[sender[i]] += 1
        receives[receiver[i]] += 1
    # A message's step is below the busy steps of its two ends together.
    capacity = (sends.max() + receives.max() + 1) if len(sender) else 1
    busy_send = np.zeros((num_senders, capacity), np.bool_)
    busy_receive = np.zeros((num_receivers, capacity), np.bool_)
    step = np.empty(len(sender), np.int64)
    for i in range(len(sender)):
        s, r = sender[i], receiver[i]
        index = 0
        while busy_send[s, index] or busy_receive[r, index]:
            index += 1
        busy_send[s, index] = True
        busy_receive[r, index] = True
        step[i] = index
    return step
