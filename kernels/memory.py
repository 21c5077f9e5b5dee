"""Peak memory of torch tensors allocated inside a region, on any device (CPU included).

CUDA has ``torch.cuda.max_memory_allocated``; the CPU allocator keeps no such statistic. This
`TorchDispatchMode` sees every tensor an operator returns (forward, and backward when autograd
runs on the calling thread, as it does for CPU tensors), counts each new storage once, and
subtracts it when the last tensor using it is freed. The peak of that running sum is the
high-water mark of memory allocated in the region, excluding tensors that existed before it.
The mode adds per-operator overhead, so never time code while it is active.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakMemory(TorchDispatchMode):
    """``with PeakMemory() as pm: ...`` then ``pm.peak`` (bytes)."""

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._refs: dict[int, int] = {}  # storage address -> live tensors that use it
        self._sizes: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes():
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        key = t.untyped_storage().data_ptr()
        if key not in self._refs:
            self._refs[key] = 0
            self._sizes[key] = t.untyped_storage().nbytes()
            self.current += self._sizes[key]
            self.peak = max(self.peak, self.current)
        self._refs[key] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.current -= self._sizes.pop(key)
