"""Batch norm of tensors by the kernels: what the eager autograd functions and the
operators' CPU implementations both run.

The callers have checked the call (a CPU tensor of a dtype the kernels serve, parameters of
shape (C,), at least one channel and enough values per channel): each function turns the
tensors into the kernels' arrays (``_arrays.to_kernel``), calls the compiled entry point of
``bnfast._kernels`` directly, and falls back to the validated NumPy API (which computes or
raises a clear error) only if the entry point declines the arrays. Results are arrays of the
input's kernel layout (``_arrays.from_kernel`` makes them tensors) and float64 statistics.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from .. import _kernels, _training
from .._functional import batch_norm_backward, batch_norm_forward, batch_norm_inference
from .._variants import batch_renorm_forward
from .._dtypes import BFLOAT16_BITS
from ._arrays import RunningBuffer, n_threads, to_kernel, vector

F64 = NDArray[np.float64]
Array = NDArray[Any]


class Input:
    """A forward's input as the kernels read it: ``tensor`` (x, or its converted copy), its
    NumPy view ``array`` and the channel ``axis`` of that view (``_arrays.to_kernel``)."""

    __slots__ = ("tensor", "array", "axis", "view")

    def __init__(self, x: Tensor) -> None:
        self.view = to_kernel(x)
        self.tensor, self.array, self.axis = self.view

    def like(self, t: Tensor) -> Array:
        """``t`` (x's shape: a gradient, a residual, an output) as an array of this layout."""
        return to_kernel(t, self.view)[1]


def _relu_masked(dya: Array, ya: Array) -> Array:
    """``dy`` where ``y > 0``, else +0 (the ReLU's gradient), for every kernel dtype: the
    bits of a bfloat16 ``y`` (BFLOAT16_BITS) are positive and at most +infinity's."""
    if ya.dtype == BFLOAT16_BITS:
        bits = ya.view(np.uint16)
        keep = (bits > 0) & (bits <= 0x7F80)
        return np.where(keep, dya.view(np.uint16), np.uint16(0)).view(BFLOAT16_BITS)
    return np.where(ya > 0, dya, dya.dtype.type(0))


def forward_train(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                  running_mean: Optional[Tensor], running_var: Optional[Tensor],
                  momentum: float, eps: float, residual: Optional[Tensor] = None,
                  relu: bool = False) -> Tuple[Input, Array, F64, F64]:
    """``(xk, y, mean, invstd)``: the training forward (``y = relu(bn(x) + residual)`` with
    the options); ``running_mean``/``running_var`` (when given) are updated in place.

    ``xk`` is ``x`` as the kernels read it (kept for the backward); ``y`` is an array of its
    kernel layout.
    """
    xk = Input(x)
    xa, axis = xk.array, xk.axis
    ra = None if residual is None else xk.like(residual)
    g, b = vector(weight), vector(bias)
    rm, rv = RunningBuffer(running_mean), RunningBuffer(running_var)
    act = "relu" if relu else None
    nt = n_threads()
    try:
        # out=None: the kernel allocates y, cheaper than an empty tensor and its view.
        res = _kernels.forward_train(xa, g, b, axis, eps, rm.array, rv.array, momentum, None,
                                     nt, act, ra)
        if res is None:  # not expected: the validated path computes, or says what is wrong
            res = batch_norm_forward(xa, g, b, axis=axis, eps=eps, running_mean=rm.array,
                                     running_var=rv.array, momentum=momentum, n_threads=nt,
                                     activation=act, residual=ra)
    finally:
        rm.write_back()
        rv.write_back()
    return xk, res[0], res[1], res[2]


def forward_infer(x: Tensor, running_mean: Tensor, running_var: Tensor,
                  weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                  residual: Optional[Tensor] = None, relu: bool = False
                  ) -> Tuple[Input, Array]:
    """``(xk, y)``: the inference forward with the given statistics (and the options)."""
    xk = Input(x)
    xa, axis = xk.array, xk.axis
    ra = None if residual is None else xk.like(residual)
    rm, rv, g, b = vector(running_mean), vector(running_var), vector(weight), vector(bias)
    assert rm is not None and rv is not None
    act = "relu" if relu else None
    nt = n_threads()
    ya = _kernels.forward_infer(xa, rm, rv, g, b, axis, eps, None, nt, act, ra)
    if ya is None:
        ya = batch_norm_inference(xa, rm, rv, g, b, axis=axis, eps=eps, n_threads=nt,
                                  activation=act, residual=ra)
    return xk, ya


def running_invstd(running_var: Tensor, eps: float) -> F64:
    """``1 / sqrt(running_var + eps)`` in float64: what eval mode normalizes with."""
    v = vector(running_var)
    assert v is not None
    return np.float64(1.0) / np.sqrt(v.astype(np.float64) + eps)


def running_mean64(running_mean: Tensor) -> F64:
    v = vector(running_mean)
    assert v is not None
    return v.astype(np.float64)


def forward_ghost(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                  running_mean: Optional[Tensor], running_var: Optional[Tensor],
                  virtual_batch_size: int, momentum: float, eps: float
                  ) -> Tuple[Input, Array, F64, F64]:
    """``(xk, y, mean, invstd)`` of ghost batch norm: statistics of shape (G, C)."""
    xk = Input(x)
    rm, rv = RunningBuffer(running_mean), RunningBuffer(running_var)
    try:
        ya, mean, invstd = batch_norm_forward(
            xk.array, vector(weight), vector(bias), axis=xk.axis, eps=eps,
            running_mean=rm.array, running_var=rv.array, momentum=momentum,
            n_threads=n_threads(), virtual_batch_size=virtual_batch_size)
    finally:
        rm.write_back()
        rv.write_back()
    return xk, ya, mean, invstd


def forward_renorm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                   running_mean: Tensor, running_var: Tensor, r_max: float, d_max: float,
                   momentum: float, eps: float) -> Tuple[Input, Array, F64, F64, F64, F64]:
    """``(xk, y, mean, invstd, r, d)`` of batch renormalization."""
    xk = Input(x)
    rm, rv = RunningBuffer(running_mean), RunningBuffer(running_var)
    assert rm.array is not None and rv.array is not None
    try:
        ya, mean, invstd, r, d = batch_renorm_forward(
            xk.array, rm.array, rv.array, vector(weight), vector(bias), r_max=r_max,
            d_max=d_max, axis=xk.axis, eps=eps, momentum=momentum, n_threads=n_threads())
    finally:
        rm.write_back()
        rv.write_back()
    return xk, ya, mean, invstd, r, d


Grads = Tuple[Optional[Array], Optional[F64], Optional[F64], Optional[Array]]


def backward(grad_output: Tensor, xk: Input, weight: Optional[Tensor], mean: F64,
             invstd: F64, training: bool, needs: Sequence[bool], ya: Optional[Array] = None,
             virtual_batch_size: Optional[int] = None,
             renorm: Optional[Tuple[F64, F64]] = None) -> Grads:
    """``(dx, dweight, dbias, dresidual)`` by the kernels, each None where ``needs`` (four
    flags) does not ask for it.

    ``xk`` is the forward's input as the kernels read it; ``dx`` and ``dresidual`` are
    arrays of its kernel layout, ``dweight`` and ``dbias`` float64 arrays. ``ya`` is the
    forward's output (an array of the kernel layout) when it went through the fused ReLU;
    the residual's gradient is the gradient reaching ``bn(x) + residual``.
    """
    xa, axis = xk.array, xk.axis
    dya = xk.like(grad_output)
    gamma = vector(weight)
    nt = n_threads()
    act = None if ya is None else "relu"
    dx: Optional[Array] = None
    dres: Optional[Array] = None
    if training and (virtual_batch_size is not None or renorm is not None):
        variant = batch_norm_backward(dya, xa, mean, invstd, gamma, axis=axis, n_threads=nt,
                                      virtual_batch_size=virtual_batch_size, renorm=renorm)
        dx, dgamma, dbeta = variant[0], variant[1], variant[2]
    elif training and (needs[0] or needs[3]):
        want_dres = bool(needs[3])
        res: Any = _kernels.backward(dya, xa, mean, invstd, gamma, axis, None, nt, act, ya,
                                     want_dres)
        if res is None:
            res = batch_norm_backward(dya, xa, mean, invstd, gamma, axis=axis, n_threads=nt,
                                      activation=act, y=ya, return_dresidual=want_dres)
        dx, dgamma, dbeta = res[0], res[1], res[2]
        if want_dres:
            dres = res[3]
    elif training:
        dgamma, dbeta = _sums(dya, xa, mean, invstd, axis, nt, act, ya)
    else:
        # Fixed statistics: g = dy * (y > 0), dx = g * gamma * invstd (the inference kernel
        # with a scale only), dgamma = sum(g * xhat), dbeta = sum(g).
        if ya is not None:
            dya = _relu_masked(dya, ya)
        dgamma, dbeta = _sums(dya, xa, mean, invstd, axis, nt, None, None)
        if needs[0]:
            scale = invstd if gamma is None else invstd * gamma
            C = scale.shape[0]
            zeros, ones = np.zeros(C), np.ones(C)
            dxa = _kernels.forward_infer(dya, zeros, ones, scale, None, axis, 0.0, None, nt)
            if dxa is None:
                dxa = batch_norm_inference(dya, zeros, ones, scale, axis=axis, eps=0.0,
                                           n_threads=nt)
            dx = dxa
        if needs[3]:
            dres = dya
    return (dx if needs[0] else None, dgamma if needs[1] else None,
            dbeta if needs[2] else None, dres if needs[3] else None)


def _sums(dya: NDArray[Any], xa: NDArray[Any], mean: F64, invstd: F64, axis: int, nt: int,
          act: Optional[str], ya: Optional[NDArray[Any]]) -> Tuple[F64, F64]:
    res = _kernels.backward_sums(dya, xa, mean, invstd, axis, nt, act, ya)
    if res is None:
        res = _training.backward_sums(dya, xa, mean, invstd, axis=axis, n_threads=nt,
                                      activation=act, y=ya)
    return res[0], res[1]


def param_grad(g: Optional[F64], dtype: Optional[torch.dtype]) -> Optional[Tensor]:
    """A float64 gradient array as a tensor of ``dtype`` (None when either is None)."""
    if g is None or dtype is None:
        return None
    if dtype == torch.float64:
        return torch.from_numpy(g)
    if dtype == torch.float32:
        return torch.from_numpy(g.astype(np.float32))
    return torch.from_numpy(g).to(dtype)
