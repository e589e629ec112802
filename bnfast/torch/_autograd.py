"""The eager path: ``autograd.Function``s over ``_compute``, for calls nothing traces.

The operators of ``_ops`` do the same work under torch.compile, torch.export and torch.func;
these functions skip the dispatcher's Python round trip (tens of microseconds per call) in
plain eager code. Their backward is the kernels' and, when autograd records it
(``create_graph=True``), runs inside ``_grad.BackwardFunction`` so that every higher order is
exact.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from . import _compute
from ._arrays import from_kernel
from ._grad import BackwardFunction, BackwardSpec, records_graph


def plain_forward(input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                  running_mean: Optional[Tensor], running_var: Optional[Tensor],
                  training: bool, momentum: float, eps: float) -> Tensor:
    """Batch norm by the kernels with autograd (no ``autograd.Function`` when nothing
    requires a gradient: inference pays for no graph)."""
    if torch.is_grad_enabled() and (input.requires_grad or (
            weight is not None and weight.requires_grad) or (
            bias is not None and bias.requires_grad)):
        # The running statistics and flags travel as one argument: apply's cost grows with
        # the argument count.
        out: Tensor = _PlainFunction.apply(input, weight, bias,
                                           (running_mean, running_var, training, momentum, eps))
        return out
    if training:
        xk, y = _compute.forward_train(input, weight, bias, running_mean, running_var,
                                       momentum, eps)[:2]
    else:
        assert running_mean is not None and running_var is not None
        xk, y = _compute.forward_infer(input, running_mean, running_var, weight, bias, eps)
    return from_kernel(y, xk.axis, input.dtype)


def _grads_out(ctx: Any, grads: _compute.Grads, weight: Optional[Tensor],
               bias: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
    dx, dgamma, dbeta, dres = grads
    axis = ctx.xk.axis
    return (None if dx is None else from_kernel(dx, axis, ctx.input_dtype),
            _compute.param_grad(dgamma, None if weight is None else weight.dtype),
            _compute.param_grad(dbeta, None if bias is None else bias.dtype),
            None if dres is None else from_kernel(dres, axis, ctx.residual_dtype))


class _PlainFunction(torch.autograd.Function):
    """Plain batch norm; saves the batch (or running) ``mean`` and ``invstd``."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                state: Tuple[Optional[Tensor], Optional[Tensor], bool, float, float]
                ) -> Tensor:
        running_mean, running_var, training, momentum, eps = state
        if training:
            xk, y, mean, invstd = _compute.forward_train(input, weight, bias, running_mean,
                                                         running_var, momentum, eps)
        else:
            assert running_mean is not None and running_var is not None
            xk, y = _compute.forward_infer(input, running_mean, running_var, weight, bias, eps)
            mean = _compute.running_mean64(running_mean)
            invstd = _compute.running_invstd(running_var, eps)
        # input itself is saved (in-place changes are detected, and a recorded backward
        # connects to its history); xk, its kernel layout, is kept for the kernels.
        ctx.save_for_backward(input, weight, bias)
        ctx.xk, ctx.mean, ctx.invstd, ctx.training, ctx.eps = xk, mean, invstd, training, eps
        ctx.input_dtype = input.dtype
        return from_kernel(y, xk.axis, input.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tuple[Optional[Tensor], ...]:
        input, weight, bias = ctx.saved_tensors
        needs = ctx.needs_input_grad

        def first_order() -> Tuple[Optional[Tensor], ...]:
            grads = _compute.backward(grad_output, ctx.xk, weight, ctx.mean, ctx.invstd,
                                      ctx.training, (needs[0], needs[1], needs[2], False))
            return _grads_out(ctx, grads, weight, bias)

        if records_graph(grad_output, input, weight):
            spec = BackwardSpec(ctx.mean, ctx.invstd, ctx.eps, ctx.training)
            dx, gw, gb, _ = BackwardFunction.apply(grad_output, input, weight, None, spec,
                                                   first_order)
        else:
            dx, gw, gb, _ = first_order()
        return dx, gw, gb, None


class OptionsFunction(torch.autograd.Function):
    """Batch norm with the layers' options: the fused ``relu(bn(x) + residual)`` (training
    and eval), ghost batch norm and batch renormalization (training only). Differentiable
    with respect to input, weight, bias and residual."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                residual: Optional[Tensor], running_mean: Optional[Tensor],
                running_var: Optional[Tensor], training: bool, momentum: float, eps: float,
                relu: bool, virtual_batch_size: Optional[int],
                renorm: Optional[Tuple[float, float]]) -> Tensor:
        kw: dict = {}
        if training and renorm is not None:
            assert running_mean is not None and running_var is not None
            xk, y, mean, invstd, r, d = _compute.forward_renorm(
                input, weight, bias, running_mean, running_var, renorm[0], renorm[1],
                momentum, eps)
            kw = {"renorm": (r, d)}
        elif training and virtual_batch_size is not None:
            xk, y, mean, invstd = _compute.forward_ghost(
                input, weight, bias, running_mean, running_var, virtual_batch_size, momentum,
                eps)
            kw = {"virtual_batch_size": virtual_batch_size}
        elif training:
            xk, y, mean, invstd = _compute.forward_train(
                input, weight, bias, running_mean, running_var, momentum, eps, residual, relu)
        else:
            assert running_mean is not None and running_var is not None
            xk, y = _compute.forward_infer(input, running_mean, running_var, weight, bias, eps,
                                           residual, relu)
            mean = _compute.running_mean64(running_mean)
            invstd = _compute.running_invstd(running_var, eps)
        out = from_kernel(y, xk.axis, input.dtype)
        # The output is saved (in-place changes to it are detected: the ReLU's mask is taken
        # from it); ya, the kernel's array of it (float32 for half input), feeds the kernels.
        ctx.save_for_backward(input, weight, bias, out if relu else None)
        ctx.ya = y if relu else None
        ctx.xk, ctx.mean, ctx.invstd, ctx.training, ctx.kw = xk, mean, invstd, training, kw
        ctx.eps, ctx.relu, ctx.input_dtype = eps, relu, input.dtype
        ctx.residual_dtype = None if residual is None else residual.dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tuple[Optional[Tensor], ...]:
        input, weight, bias, y = ctx.saved_tensors
        needs = ctx.needs_input_grad
        want = (needs[0], needs[1], needs[2], needs[3] and not ctx.kw)

        def first_order() -> Tuple[Optional[Tensor], ...]:
            grads = _compute.backward(grad_output, ctx.xk, weight, ctx.mean, ctx.invstd,
                                      ctx.training, want, ctx.ya, **ctx.kw)
            return _grads_out(ctx, grads, weight, bias)

        if records_graph(grad_output, input, weight):
            r = ctx.kw.get("renorm")
            spec = BackwardSpec(ctx.mean, ctx.invstd, ctx.eps, ctx.training, relu=ctx.relu,
                                residual=ctx.residual_dtype is not None,
                                virtual_batch_size=ctx.kw.get("virtual_batch_size"),
                                renorm=None if r is None else (r[0], r[1]))
            dx, gw, gb, gr = BackwardFunction.apply(grad_output, input, weight, y, spec,
                                                    first_order)
        else:
            dx, gw, gb, gr = first_order()
        return dx, gw, gb, gr, None, None, None, None, None, None, None, None
