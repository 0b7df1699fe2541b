"""Reusing a fake-quantizer's weight-sized output memory across training steps.

Every forward of a fake-quantized layer makes a new weight-sized tensor. On CPU a fresh tensor of a
few MiB is fresh memory from the operating system, and touching it page by page costs about as much
as the quantizer's arithmetic itself (resnet18: about half of the quantizer's time). A
:class:`WeightBuffer` keeps that memory between steps and hands it out again, but only when nothing
can still read the previous contents: not the autograd graph of an earlier forward that has not run
backward yet, not a weight the caller kept (``w = layer.weight``), not a view of either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# The reference count of a storage: how many tensors (views included) share its memory. A torch
# build without it never reuses memory, which is slower but still correct.
_use_count: Callable[[int], int] | None = getattr(torch._C, "_storage_Use_Count", None)


class WeightBuffer:
    """One reusable weight-sized memory block for a quantizer's output.

    :meth:`take` returns a tensor of the requested shape, dtype and device whose contents are
    undefined (the caller overwrites all of it). It is a new tensor object each call (its own
    autograd history and version counter) backed by the kept memory when every tensor handed out
    before has been released; otherwise (a graph still holds the last one, the caller kept it, or
    the shape, dtype or device changed) it is freshly allocated memory, which is then kept instead.
    So a value computed into it is never seen by anyone holding an earlier one: reuse gives
    bit-identical results to allocating each time, only faster.

    Not in ``state_dict``; dropped on copy and pickle (a copy starts empty).

    >>> import torch
    >>> from fq_quant import WeightBuffer
    >>> buf = WeightBuffer()
    >>> a = buf.take((2, 3), torch.float32, torch.device("cpu"))
    >>> b = buf.take((2, 3), torch.float32, torch.device("cpu"))  # a is alive: new memory
    >>> a.data_ptr() == b.data_ptr()
    False
    >>> ptr = b.data_ptr(); del a, b
    >>> buf.take((2, 3), torch.float32, torch.device("cpu")).data_ptr() == ptr  # released: reused
    True
    """

    def __init__(self) -> None:
        self._storage: torch.UntypedStorage | None = None
        self._shape: tuple[int, ...] = ()
        self._dtype: torch.dtype | None = None
        self.reused = 0  # how many takes were served from the kept memory (for tests and benches)

    def _free(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> bool:
        st = self._storage
        return (
            st is not None
            and _use_count is not None
            and self._shape == shape
            and self._dtype == dtype
            and st.device == device
            and _use_count(st._cdata) == 1  # only self._storage refers to the memory
        )

    def take(
        self, shape: torch.Size | tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """A contiguous tensor of ``shape``, ``dtype`` on ``device`` with undefined contents."""
        shape = tuple(int(d) for d in shape)
        st = self._storage
        if st is not None and self._free(shape, dtype, device):
            self.reused += 1
            stride, step = [0] * len(shape), 1
            for i in range(len(shape) - 1, -1, -1):
                stride[i], step = step, step * max(shape[i], 1)
            with torch.no_grad():
                return torch.empty((0,), dtype=dtype, device=device).set_(st, 0, shape, stride)
        fresh = torch.empty(shape, dtype=dtype, device=device)
        self._storage, self._shape, self._dtype = fresh.untyped_storage(), shape, dtype
        return fresh

    def clear(self) -> None:
        """Drop the kept memory (it is freed once no handed-out tensor uses it)."""
        self._storage, self._shape, self._dtype = None, (), None

    def __deepcopy__(self, memo: dict[int, Any]) -> WeightBuffer:
        return WeightBuffer()

    def __getstate__(self) -> dict[str, Any]:
        return {"reused": 0}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._storage, self._shape, self._dtype, self.reused = None, (), None, 0
