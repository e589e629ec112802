"""Second-order gradients of bnfast.torch's batch norm.

The first-order backward is computed by the kernels (the eager autograd functions of
``_autograd`` and the ``bnfast::batch_norm_backward`` operator of ``_ops``); when autograd
records a graph of it (``create_graph=True``, ``torch.func.grad`` of a gradient, gradient
penalties, Hessian-vector products) its derivative is the vector-Jacobian product of
``backward_formula`` (``formula_vjp``): the batch norm backward written in differentiable
PyTorch operations. In eager mode that runs inside ``BackwardFunction``, an
``autograd.Function`` whose forward is the kernel backward (the same bits); the operator's
autograd registration calls ``formula_vjp`` itself. Every order above the first is thus the
derivative of the exact formula, in float64, at the batch's statistics.

Paths with no formula here (SyncBatchNorm's collective backward) go through
``NotTwiceDifferentiable``, which raises when a gradient of the gradient is asked for: never
a wrong or missing gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

Grads = Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], Optional[Tensor]]


@dataclass(frozen=True)
class BackwardSpec:
    """What the first-order backward of one call needs besides the tensors.

    ``mean`` and ``invstd`` are the statistics that normalized (the batch's in training mode,
    shape (C,) or (G, C) for ghost batch norm; the running ones in eval mode), as arrays or
    tensors; ``eps`` is the forward's (used in training mode only). ``relu``: the output went through the fused ReLU (``y`` is then a tensor
    argument); ``residual``: a residual was added (its gradient is asked for);
    ``virtual_batch_size`` and ``renorm`` (r, d) as in the NumPy API.
    """

    mean: Any
    invstd: Any
    eps: float
    training: bool
    relu: bool = False
    residual: bool = False
    virtual_batch_size: Optional[int] = None
    renorm: Optional[Tuple[Any, Any]] = None


def _per_channel(v: Any, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    if isinstance(v, Tensor):
        return v.detach().to(dtype).reshape(shape)
    return torch.as_tensor(np.asarray(v), dtype=dtype).reshape(shape)


def backward_formula(grad_output: Tensor, input: Tensor, weight: Optional[Tensor],
                     y: Optional[Tensor], spec: BackwardSpec) -> Grads:
    """(dx, dweight, dbias, dresidual) of batch norm in differentiable operations (float64).

    In training mode the statistics are recomputed from ``input`` so that their dependence
    on it is part of the graph; in eval mode (and for renorm's r and d) the fixed values of
    ``spec`` are constants. The ReLU mask ``y > 0`` is a constant, as in PyTorch's
    ``threshold_backward``.
    """
    f64 = torch.float64
    x = input.to(f64)
    g = grad_output.to(f64)
    if spec.relu:
        assert y is not None
        g = torch.where(y > 0, g, torch.zeros((), dtype=f64))
    dres = g
    k = spec.virtual_batch_size
    cdim = 1
    if spec.training and k is not None:
        groups = x.shape[0] // k
        x = x.unflatten(0, (groups, k))
        g = g.unflatten(0, (groups, k))
        cdim = 2
    C = x.shape[cdim]
    dims = [d for d in range(x.dim()) if d != cdim and not (cdim == 2 and d == 0)]
    stat_shape = [1] * x.dim()
    stat_shape[cdim] = C
    if cdim == 2:
        stat_shape[0] = x.shape[0]
    chan_shape = [1] * x.dim()
    chan_shape[cdim] = C
    if spec.training:
        m = 1
        for dim in dims:
            m *= x.shape[dim]
        mean = x.mean(dims, keepdim=True)
        invstd = torch.rsqrt(((x - mean) ** 2).mean(dims, keepdim=True) + spec.eps)
    else:
        mean = _per_channel(spec.mean, stat_shape, f64)
        invstd = _per_channel(spec.invstd, stat_shape, f64)
    xhat = (x - mean) * invstd
    w = None if weight is None else weight.to(f64).reshape(chan_shape)
    if spec.renorm is not None:
        r = _per_channel(spec.renorm[0], chan_shape, f64)
        shift = _per_channel(spec.renorm[1], chan_shape, f64)
        w = r if w is None else w * r
    scale = invstd if w is None else w * invstd
    sum_g = g.sum(dims, keepdim=True)
    sum_gx = (g * xhat).sum(dims, keepdim=True)
    if spec.training:
        dx = scale * (g - sum_g / m - xhat * (sum_gx / m))
    else:
        dx = g * scale
    dbeta = sum_g.reshape(-1, C).sum(0)
    dgamma = sum_gx.reshape(-1, C).sum(0)
    if spec.renorm is not None:
        dgamma = r.reshape(C) * dgamma + shift.reshape(C) * dbeta
    if cdim == 2:
        dx = dx.flatten(0, 1)
    return dx, dgamma, dbeta, dres


class BackwardFunction(torch.autograd.Function):
    """The first-order backward as a differentiable function of (dy, x, weight).

    ``forward`` runs ``first_order`` (the kernels); ``backward`` is the vector-Jacobian
    product of ``backward_formula``, itself differentiable, so every further order is right.
    Outputs are (dx, dweight, dbias, dresidual), each None where it is not wanted.
    """

    @staticmethod
    def forward(ctx: Any, grad_output: Tensor, input: Tensor, weight: Optional[Tensor],
                y: Optional[Tensor], spec: BackwardSpec,
                first_order: Callable[[], Grads]) -> Grads:  # type: ignore[override]
        ctx.save_for_backward(grad_output, input, weight, y)
        ctx.spec = spec
        grads = first_order()
        ctx.present = tuple(t is not None for t in grads)
        return grads

    @staticmethod
    def backward(ctx: Any, *grads: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
        grad_output, input, weight, y = ctx.saved_tensors
        wanted = tuple(i for i in range(3) if ctx.needs_input_grad[i])
        got = formula_vjp((grad_output, input, weight), y, ctx.spec, ctx.present, wanted,
                          grads)
        return (*got, None, None, None)


def formula_vjp(tensors: Tuple[Tensor, Tensor, Optional[Tensor]], y: Optional[Tensor],
                spec: BackwardSpec, present: Sequence[bool], wanted: Sequence[int],
                grads: Sequence[Optional[Tensor]]) -> Tuple[Optional[Tensor], ...]:
    """The gradients with respect to ``tensors = (grad_output, input, weight)`` (those whose
    index is in ``wanted``, None for the others) of the first-order backward's outputs
    ``(dx, dweight, dbias, dresidual)`` against the cotangents ``grads`` (None or a tensor
    each; ``present`` says which outputs exist).

    Partial derivatives (every other argument held fixed), taken by torch.func.vjp on the
    tensors themselves: with create_graph the result is recorded as a function of their
    histories, so the third order is right too.
    """
    result: list = [None, None, None]
    if not wanted:
        return tuple(result)
    y_fixed = None if y is None else y.detach()

    def formula(*args: Tensor) -> Grads:
        full = list(tensors)
        for i, t in zip(wanted, args):
            full[i] = t
        assert full[0] is not None and full[1] is not None
        outs = backward_formula(full[0], full[1], full[2], y_fixed, spec)
        return tuple(o if p else torch.zeros(()) for o, p in zip(outs, present))  # type: ignore

    pulled = torch.func.vjp(formula, *[tensors[i] for i in wanted])
    outs, vjp = pulled[0], pulled[1]
    cotangents = tuple(torch.zeros_like(o) if g is None or not p else g.to(o.dtype)
                       for o, g, p in zip(outs, grads, present))
    got = vjp(cotangents)
    for i, g in zip(wanted, got):
        t = tensors[i]
        assert t is not None
        result[i] = None if g is None else g.to(t.dtype)
    return tuple(result)


class NotTwiceDifferentiable(torch.autograd.Function):
    """A first-order backward with no formula for the next order: its outputs depend on
    ``tensors`` (so autograd records them) and differentiating them raises RuntimeError."""

    @staticmethod
    def forward(ctx: Any, what: str, first_order: Callable[[], Grads],
                *tensors: Optional[Tensor]) -> Grads:  # type: ignore[override]
        ctx.what = what
        return first_order()

    @staticmethod
    def backward(ctx: Any, *grads: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
        raise RuntimeError(f"{ctx.what}: double backward (the gradient of a gradient) is not "
                           "supported; use bnfast.torch.BatchNorm*d or torch's own layers "
                           "for second-order gradients")


def records_graph(*tensors: Optional[Tensor]) -> bool:
    """True when a backward running now is itself being recorded (``create_graph=True``)
    and its result depends on a tensor that requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
