"""Batch norm written as plain vectorized NumPy: the benchmark's NumPy baseline.

This is the code a NumPy user would write without bnfast, and the "NumPy" column of
``python -m bnfast bench`` times it. It is deliberately not ``bnfast.reference``, which it
resembles:

- ``bnfast.reference`` is the accuracy oracle. It converts everything to float64, moves
  the channel axis last and copies to a 2-D ``(m, C)`` array, and takes the variance in
  two explicit passes: slow on purpose, and obviously correct.
- This twin is a speed baseline. It computes in the input's dtype (float32 in, float32
  arithmetic), works on the array in place of its layout with ``keepdims`` broadcasting,
  and writes into ``out=``, like the bnfast call it is compared with. Timing the float64
  reference instead would make NumPy look several times slower than it is.

The tests check the twin against ``bnfast.reference`` (``tests/test_bench.py``), so the
baseline computes the same function. The running-statistics convention is PyTorch's
(unbiased variance). This module needs NumPy only: the asv suite loads it by file path
(``asv_bench/benchmarks/common.py``). How performance is measured: ``docs/design.md`` §6.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from numpy.typing import NDArray

__all__ = ["numpy_batch_norm_forward", "numpy_batch_norm_inference",
           "numpy_batch_norm_backward"]

Array = NDArray[np.floating]


def _reduce_axes(ndim: int, axis: int) -> Tuple[int, ...]:
    axis = axis % ndim
    return tuple(a for a in range(ndim) if a != axis)


def _channel_shape(ndim: int, axis: int, channels: int) -> Tuple[int, ...]:
    shape = [1] * ndim
    shape[axis % ndim] = channels
    return tuple(shape)


def numpy_batch_norm_forward(x: Array, gamma: Array, beta: Array, running_mean: Array,
                             running_var: Array, *, axis: int = 1, eps: float = 1e-5,
                             momentum: float = 0.1, out: Optional[Array] = None,
                             ) -> Tuple[Array, Array, Array]:
    """Training-mode batch norm in ``x.dtype``; updates the running statistics in place.

    Parameters
    ----------
    x : ndarray
        Input, at least 2-D.
    gamma, beta : ndarray, shape (C,)
        Scale and shift.
    running_mean, running_var : ndarray, shape (C,)
        Running statistics, updated in place (unbiased variance, PyTorch's convention).
    axis : int
        Channel axis.
    eps, momentum : float
    out : ndarray, optional
        Where to write y.

    Returns
    -------
    y, mean, invstd : ndarray
        ``y`` has x's shape; ``mean`` and ``invstd`` have shape (C,), in ``x.dtype``.
    """
    axes = _reduce_axes(x.ndim, axis)
    cshape = _channel_shape(x.ndim, axis, x.shape[axis])
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(var + x.dtype.type(eps))
    y = np.subtract(x, mean, out=out)
    y *= invstd * gamma.reshape(cshape)
    y += beta.reshape(cshape)
    m = x.size // x.shape[axis]
    running_mean *= 1 - momentum
    running_mean += momentum * mean.ravel()
    running_var *= 1 - momentum
    running_var += (momentum * m / (m - 1)) * var.ravel()
    return y, mean.ravel(), invstd.ravel()


def numpy_batch_norm_inference(x: Array, running_mean: Array, running_var: Array,
                               gamma: Array, beta: Array, *, axis: int = 1,
                               eps: float = 1e-5, out: Optional[Array] = None) -> Array:
    """Inference-mode batch norm in ``x.dtype``: ``(x - mean) * gamma / sqrt(var + eps) + beta``.

    Parameters
    ----------
    x : ndarray
    running_mean, running_var, gamma, beta : ndarray, shape (C,)
    axis : int
    eps : float
    out : ndarray, optional

    Returns
    -------
    y : ndarray
    """
    cshape = _channel_shape(x.ndim, axis, x.shape[axis])
    scale = (gamma / np.sqrt(running_var + eps)).astype(x.dtype, copy=False)
    y = np.subtract(x, running_mean.astype(x.dtype, copy=False).reshape(cshape), out=out)
    y *= scale.reshape(cshape)
    y += beta.reshape(cshape)
    return y


def numpy_batch_norm_backward(dy: Array, x: Array, mean: Array, invstd: Array, gamma: Array,
                              *, axis: int = 1, out: Optional[Array] = None,
                              ) -> Tuple[Array, Array, Array]:
    """Batch-norm backward in ``x.dtype`` (the closed form of ``dx``).

    Parameters
    ----------
    dy, x : ndarray
        Upstream gradient and forward input, same shape.
    mean, invstd, gamma : ndarray, shape (C,)
        Batch statistics saved by the forward pass, and the scale.
    axis : int
    out : ndarray, optional
        Where to write dx.

    Returns
    -------
    dx, dgamma, dbeta : ndarray
    """
    dtype = x.dtype
    axes = _reduce_axes(x.ndim, axis)
    cshape = _channel_shape(x.ndim, axis, x.shape[axis])
    m = x.size // x.shape[axis]
    invstd = invstd.astype(dtype, copy=False).reshape(cshape)
    xhat = (x - mean.astype(dtype, copy=False).reshape(cshape)) * invstd
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * xhat).sum(axis=axes)
    dx = np.multiply(dy, dtype.type(m), out=out)
    dx -= dbeta.reshape(cshape)
    xhat *= dgamma.reshape(cshape)
    dx -= xhat
    dx *= gamma.reshape(cshape) * invstd / dtype.type(m)
    return dx, dgamma, dbeta
