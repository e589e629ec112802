"""The element types the kernels take: float32, float64, float16 and bfloat16.

bfloat16 arrays are NumPy's user dtype of ``ml_dtypes`` (what JAX and others use). bnfast never
imports ml_dtypes: it recognizes the dtype of an array it is given (by its name, size and
kind), so the user's import is the only one, and the outputs are created with that same
dtype. ``BFLOAT16_BITS`` is a structured dtype holding the bits of bfloat16 values, with which
bnfast.torch views bfloat16 tensors (no ml_dtypes needed there either).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _kernels

__all__ = ["BFLOAT16_BITS", "is_bfloat16", "is_half"]

#: The bits of bfloat16 values, as bnfast.torch hands bfloat16 tensors to the kernels.
BFLOAT16_BITS: np.dtype[Any] = np.dtype([("bfloat16", np.uint16)])

_F16 = np.dtype(np.float16)
_seen: set[int] = set()  # type numbers of bfloat16 dtypes already told to the kernels

_kernels.set_bfloat16(None, BFLOAT16_BITS)


def is_bfloat16(dtype: np.dtype[Any]) -> bool:
    """True for ml_dtypes' bfloat16 (by its name, size and kind) and for BFLOAT16_BITS.

    The first time a bfloat16 dtype is seen the kernels learn its type number, so later calls
    with such arrays take their fast path.
    """
    if dtype.itemsize != 2 or dtype.kind != "V":
        return False
    if dtype.fields is None and dtype.name == "bfloat16":
        if dtype.num not in _seen:
            _kernels.set_bfloat16(dtype, None)
            _seen.add(dtype.num)
        return True
    return dtype == BFLOAT16_BITS


def is_half(dtype: np.dtype[Any]) -> bool:
    """float16 (native byte order) or bfloat16: stored in 16 bits, computed in float32."""
    return dtype == _F16 or is_bfloat16(dtype)
