"""Tensors as the kernels' arrays, and back: the one place where that conversion happens.

``to_kernel`` gives any CPU tensor as the NumPy array the compiled kernels read
(C-contiguous, channels first or channels last), and ``from_kernel`` turns a kernel's result
array back into a tensor, both without a copy for float32, float64, float16 and bfloat16:
the kernels load and store half values themselves (widened to float32 in registers,
docs/design.md §1). float16 tensors are viewed as NumPy float16, bfloat16 tensors as
``BFLOAT16_BITS`` (their bits; NumPy has no bfloat16 of its own and bnfast never imports
ml_dtypes). ``vector`` (per-channel tensors) and ``RunningBuffer`` (running statistics the
kernels update) give half per-channel tensors as float32 copies.
"""
from __future__ import annotations

import weakref
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from .._dtypes import BFLOAT16_BITS

NATIVE = (torch.float32, torch.float64)
HALF = (torch.float16, torch.bfloat16)
_KERNEL_DTYPES = NATIVE + HALF


def kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the kernels' arrays for a tensor of ``dtype``: its own for the four float
    types (half ones are loaded and stored as they are), float32 for any other."""
    return dtype if dtype in _KERNEL_DTYPES else torch.float32


def _numpy(t: Tensor) -> NDArray[Any]:
    """The NumPy view of a dense tensor of a kernel dtype (bfloat16: as BFLOAT16_BITS)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BFLOAT16_BITS)
    return t.numpy()


def to_kernel(t: Tensor, like: Optional[Tuple[Tensor, NDArray[Any], int]] = None
              ) -> Tuple[Tensor, NDArray[Any], int]:
    """``t`` as the kernels read it: ``(tensor, array, axis)``.

    ``tensor`` holds the memory (``t`` itself when it is already float32/float64 and
    contiguous or channels-last; otherwise a converted or contiguous copy), ``array`` is its
    C-contiguous NumPy view and ``axis`` the channel axis of that view (1, or -1 for a
    channels-last tensor viewed as (N, ..., C); 0 for a vector). With ``like`` (what this
    function returned for the input x), ``t`` (a gradient, a residual: x's shape) comes in
    the dtype and layout of x's array.
    """
    t = t.data  # detached (and cheaper than detach())
    if like is not None:
        held, axis = like[0], like[2]
        if t.dtype != held.dtype or t.stride() != held.stride() or t.is_neg():
            t = torch.empty_like(held).copy_(t)
        return t, _numpy(t if axis != -1 else t.movedim(1, -1)), axis
    if t.dtype not in _KERNEL_DTYPES:
        t = t.to(torch.float32)  # keeps a dense tensor's strides (memory format)
    elif t.is_neg():
        t = t.resolve_neg()
    if t.is_contiguous():
        return t, _numpy(t), 1 if t.dim() > 1 else 0
    if t.dim() >= 3:
        last = t.movedim(1, -1)
        if last.is_contiguous():
            return t, _numpy(last), -1
    t = t.contiguous()
    return t, _numpy(t), 1


def from_kernel(a: NDArray[Any], axis: int, dtype: torch.dtype) -> Tensor:
    """The reverse of ``to_kernel``: a kernel's result ``a`` (an array of the layout
    ``to_kernel`` gave for ``axis``) as an (N, C, ...) tensor of ``dtype``, with no copy
    when ``a`` is of that dtype already."""
    if a.dtype == BFLOAT16_BITS:
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(a)
    if axis == -1:
        t = t.movedim(-1, 1)
    return t if t.dtype == dtype else t.to(dtype)


# id(tensor) -> (weak reference, data_ptr, the tensor's kernel view): parameters and buffers
# live across calls, and making their NumPy views again each call costs more than the
# kernels take on a small batch. An entry is used only for the same tensor object with the
# same storage, and goes when the tensor does.
_VIEWS: Dict[int, Tuple[Any, int, NDArray[Any]]] = {}


def _forget(key: int) -> Any:
    return lambda _: _VIEWS.pop(key, None)


def vector(t: Optional[Tensor]) -> Optional[NDArray[Any]]:
    """A per-channel tensor as the kernels read it: a view of a float32/float64 tensor
    (kept between calls, and written through by the kernels for the running statistics),
    or a float32 copy of a half one."""
    if t is None:
        return None
    key = id(t)
    hit = _VIEWS.get(key)
    if hit is not None and hit[0]() is t and hit[1] == t.data_ptr():
        return hit[2]
    if t.dtype in HALF:  # per-channel vectors of half models: float32, as PyTorch keeps them
        return t.data.float().numpy()
    held, array, _ = to_kernel(t)
    if held.data_ptr() == t.data_ptr() and held.dtype == t.dtype:
        _VIEWS[key] = (weakref.ref(t, _forget(key)), t.data_ptr(), array)
    return array


class RunningBuffer:
    """A running statistic as an array the kernels update in place: a view of the tensor
    itself for float32/float64 (``write_back`` does nothing), else a float32 copy that
    ``write_back`` copies into the tensor."""

    __slots__ = ("tensor", "copy", "array")

    def __init__(self, t: Optional[Tensor]) -> None:
        self.tensor = t
        self.copy: Optional[Tensor] = None
        self.array: Optional[NDArray[Any]] = None
        if t is not None:
            self.array = vector(t)
            if t.dtype not in NATIVE or not t.is_contiguous() or t.is_neg():
                self.copy = torch.from_numpy(self.array)

    def write_back(self) -> None:
        if self.copy is not None and self.tensor is not None:
            with torch.no_grad():
                self.tensor.copy_(self.copy)


def n_threads() -> int:
    """The thread count for the kernels: PyTorch's own (``torch.set_num_threads``)."""
    return max(1, torch.get_num_threads())
