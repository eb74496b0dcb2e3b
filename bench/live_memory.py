"""The peak bytes of the CPU tensors a block of code creates, counted op by op.

Why: a process's peak RSS mixes in the interpreter, the libraries, the allocator's cached
free blocks and whatever the process held before, so on a CPU it cannot check a memory
estimate of a few hundred MiB (CUDA has ``torch.cuda.max_memory_allocated`` for this). A
dispatch mode sees every tensor an aten op returns, including those inside vmap, autograd's
backward and fx-generated code; each new storage counts from its creation until Python
frees it. Views share their base's storage and count once; an op's output on the storage
of one of its inputs (a view, an in-place op) is not new, so a tensor made before the block
and used in it is not counted. Not seen: a kernel's internal scratch buffers (e.g. the
slow-path convolution's column buffer; oneDNN's convolutions, torch's default on CPU, have
none), so the peak is a lower bound of the allocator's. It slows the code it watches
(Python per op): a measurement tool for tests and benchmarks, not for the product.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorBytes(TorchDispatchMode):
    """``with LiveTensorBytes(ignore=[...]) as m: ...``; then ``m.peak`` (bytes at most alive
    at once), ``m.live`` (alive now); ``m.reset_peak()`` starts a new phase."""

    def __init__(self, ignore: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}
        self._ignored = {t.untyped_storage().data_ptr() for t in ignore}

    def reset_peak(self) -> None:
        self.peak = self.live

    def _freed(self, pointer: int) -> None:
        self.live -= self._sizes.pop(pointer, 0)

    def _count(self, tensor: torch.Tensor, inputs: set[int]) -> None:
        try:  # functorch wrappers and fake tensors have no storage of their own
            storage = tensor.untyped_storage()
            pointer, size = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):
            return
        if size == 0 or pointer in self._sizes or pointer in self._ignored or pointer in inputs:
            return
        self._sizes[pointer] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._freed, pointer)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        inputs = {_pointer(t) for t in tree_flatten((args, kwargs))[0]} - {None}
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor) and value.device.type == "cpu" and not value.is_meta:
                self._count(value, inputs)  # type: ignore[arg-type]
        return out


def _pointer(value: object) -> int | None:
    if not isinstance(value, torch.Tensor):
        return None
    try:
        return value.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
