"""Bytes of the tensors a region of torch code creates that are alive, now and at the peak.

A TorchDispatchMode sees every op's outputs; each new storage (not one of `ignore`, e.g. the
parameters and preallocated gradients) is held by a weak reference, so a storage counts
from the op that made it until autograd or Python lets it go. CPU tensors have no allocator
statistics; this is what the tests measure activation memory with.
"""

from __future__ import annotations

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """`live_bytes()`: bytes of storages made inside the mode still alive; `peak_bytes`: the
    most alive after any op."""

    def __init__(self, ignore: list[torch.Tensor]):
        super().__init__()
        self.ignore = {t.untyped_storage().data_ptr() for t in ignore}
        self.alive: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak_bytes = 0

    def live_bytes(self) -> int:
        self.alive = {ptr: (ref, n) for ptr, (ref, n) in self.alive.items() if not ref.expired()}
        return sum(n for _, n in self.alive.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            ptr = storage.data_ptr()
            known = self.alive.get(ptr)
            if ptr not in self.ignore and (known is None or known[0].expired()):
                self.alive[ptr] = (StorageWeakRef(storage), storage.nbytes())
        self.peak_bytes = max(self.peak_bytes, self.live_bytes())
        return out
