"""Autograd and vmap rules of the ``torch.ops.bnfast`` operators (defined in ``_ops``).

Autograd: each differentiable operator gets a kernel for the ``Autograd`` dispatch key that
records an ``autograd.Function`` node, as aten's C++ autograd kernels do, when an input
requires a gradient. The node's backward calls ``bnfast::batch_norm_backward``, whose own node
gives the exact second (and every higher) order: the vector-Jacobian product of
``_grad.backward_formula`` (``_grad.formula_vjp``). The node is applied as a single-level
function: the kernel runs inside a torch.func transform level already (the dispatcher got
there), so it must record on that level's tensors instead of going back through torch.func's
handling of ``autograd.Function`` (which ``torch.library.custom_op``'s generated registration
does, and which fails there).

vmap: the vmapped dimension B joins the channel dimension, (N, C, ...) per sample becoming
(N, B * C, ...), since batch norm treats channels independently; per-channel tensors are
stacked (or repeated when not vmapped) alike, and the results are split back.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch._functorch.utils import enable_single_level_autograd_function

from . import _ops
from ._grad import BackwardSpec, formula_vjp

ops = torch.ops.bnfast
Opt = Optional[Tensor]


def _register_autograd(name: str, setup: Callable[..., None],
                       backward: Callable[..., Tuple[Any, ...]]) -> None:
    op = getattr(ops, name).default

    def forward(ctx: Any, *args: Any) -> Any:
        # Grad mode back on below autograd: under torch.func the call goes on to the next
        # transform level, whose autograd must record it.
        with torch.enable_grad(), torch._C._AutoDispatchBelowAutograd():
            out = op(*args)
        setup(ctx, args, out)
        return out

    title = "".join(part.title() for part in name.split("_"))
    node = type(title, (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward)})
    apply = super(torch.autograd.Function, node).apply  # type: ignore[misc]
    below = torch._C._after_autograd_keyset

    def kernel(keyset: Any, *args: Any) -> Any:
        if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
            with enable_single_level_autograd_function():
                return apply(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & below, *args)

    _ops.LIB.impl(name, kernel, "Autograd", with_keyset=True)


# ---- Autograd --------------------------------------------------------------------------------

def _save(ctx: Any, input: Tensor, weight: Opt, bias: Opt, residual: Opt, mean: Tensor,
          invstd: Tensor, y: Opt, training: bool, eps: float, r: Opt = None,
          d: Opt = None, k: int = 0) -> None:
    ctx.save_for_backward(input, weight, mean, invstd, y, r, d)
    ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
    ctx.has_residual = residual is not None
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.training, ctx.eps, ctx.k = training, eps, k


def _call_backward(ctx: Any, grad_out: Tensor, needs: Sequence[bool]
                   ) -> Tuple[Optional[Tensor], ...]:
    """(dx, dweight, dbias, dresidual) by ``batch_norm_backward``; None where not needed."""
    input, weight, mean, invstd, y, r, d = ctx.saved_tensors
    mask = [bool(needs[0]), bool(needs[1] and ctx.has_weight), bool(needs[2] and ctx.has_bias),
            bool(needs[3] and ctx.has_residual)]
    if not any(mask):
        return None, None, None, None
    grads = ops.batch_norm_backward(grad_out, input, weight, mean, invstd, y, r, d,
                                    ctx.training, ctx.k, ctx.eps, mask)
    dx, dw, db, dres = (g if m else None for g, m in zip(grads, mask))
    if db is not None and db.dtype != ctx.bias_dtype:
        db = db.to(ctx.bias_dtype)
    return dx, dw, db, dres


def _train_setup(ctx: Any, inputs: Tuple[Any, ...], output: Any) -> None:
    input, weight, bias, _, _, residual, _, eps, relu = inputs
    out, mean, invstd, new_rm, new_rv = output
    ctx.mark_non_differentiable(mean, invstd, new_rm, new_rv)
    _save(ctx, input, weight, bias, residual, mean, invstd, out if relu else None, True, eps)


def _train_backward(ctx: Any, grad_out: Tensor, *_: Any) -> Tuple[Optional[Tensor], ...]:
    n = ctx.needs_input_grad
    dx, dw, db, dres = _call_backward(ctx, grad_out, (n[0], n[1], n[2], n[5]))
    return dx, dw, db, None, None, dres, None, None, None


def _infer_setup(ctx: Any, inputs: Tuple[Any, ...], output: Tensor) -> None:
    input, running_mean, running_var, weight, bias, residual, eps, relu = inputs
    sd = _ops.stat_dtype(input)
    # Copies: the buffers may change before the backward runs.
    mean = running_mean.detach().to(sd, copy=True)
    invstd = torch.rsqrt(running_var.detach().to(sd) + eps)
    _save(ctx, input, weight, bias, residual, mean, invstd, output if relu else None, False,
          eps)


def _infer_backward(ctx: Any, grad_out: Tensor) -> Tuple[Optional[Tensor], ...]:
    n = ctx.needs_input_grad
    dx, dw, db, dres = _call_backward(ctx, grad_out, (n[0], n[3], n[4], n[5]))
    return dx, None, None, dw, db, dres, None, None


def _ghost_setup(ctx: Any, inputs: Tuple[Any, ...], output: Any) -> None:
    input, weight, bias, _, _, k, _, eps = inputs
    out, mean, invstd, new_rm, new_rv = output
    ctx.mark_non_differentiable(mean, invstd, new_rm, new_rv)
    _save(ctx, input, weight, bias, None, mean, invstd, None, True, eps, k=k)


def _ghost_backward(ctx: Any, grad_out: Tensor, *_: Any) -> Tuple[Optional[Tensor], ...]:
    n = ctx.needs_input_grad
    dx, dw, db, _unused = _call_backward(ctx, grad_out, (n[0], n[1], n[2], False))
    return dx, dw, db, None, None, None, None, None


def _renorm_setup(ctx: Any, inputs: Tuple[Any, ...], output: Any) -> None:
    input, weight, bias, _, _, _, _, _, eps = inputs
    out, mean, invstd, r, d, new_rm, new_rv = output
    ctx.mark_non_differentiable(mean, invstd, r, d, new_rm, new_rv)
    _save(ctx, input, weight, bias, None, mean, invstd, None, True, eps, r, d)


def _renorm_backward(ctx: Any, grad_out: Tensor, *_: Any) -> Tuple[Optional[Tensor], ...]:
    n = ctx.needs_input_grad
    dx, dw, db, _unused = _call_backward(ctx, grad_out, (n[0], n[1], n[2], False))
    return dx, dw, db, None, None, None, None, None, None


def _backward_setup(ctx: Any, inputs: Tuple[Any, ...], output: Any) -> None:
    (grad_output, input, weight, save_mean, save_invstd, out, r, d, training, k, eps,
     mask) = inputs
    ctx.save_for_backward(grad_output, input, weight, save_mean, save_invstd, out, r, d)
    ctx.training, ctx.k, ctx.eps, ctx.mask = training, k, eps, tuple(bool(m) for m in mask)


def _backward_backward(ctx: Any, *grads: Tensor) -> Tuple[Optional[Tensor], ...]:
    """The second order: the vector-Jacobian product of ``_grad.backward_formula``."""
    grad_output, input, weight, mean, invstd, out, r, d = ctx.saved_tensors
    spec = BackwardSpec(mean, invstd, ctx.eps, ctx.training, relu=out is not None,
                        residual=ctx.mask[3], virtual_batch_size=ctx.k or None,
                        renorm=None if r is None else (r, d))
    wanted = tuple(i for i in range(3) if ctx.needs_input_grad[i])
    got = formula_vjp((grad_output, input, weight), out, spec, ctx.mask, wanted,
                      [g if m else None for g, m in zip(grads, ctx.mask)])
    return (*got, None, None, None, None, None, None, None, None, None)


_register_autograd("batch_norm_train", _train_setup, _train_backward)
_register_autograd("batch_norm_infer", _infer_setup, _infer_backward)
_register_autograd("ghost_batch_norm_train", _ghost_setup, _ghost_backward)
_register_autograd("batch_renorm_train", _renorm_setup, _renorm_backward)
_register_autograd("batch_norm_backward", _backward_setup, _backward_backward)


# ---- vmap ------------------------------------------------------------------------------------

def _fold(t: Opt, bdim: Optional[int], B: int) -> Opt:
    """A tensor of the input's shape (N, C, ...) per sample as (N, B * C, ...)."""
    if t is None:
        return None
    if bdim is None:
        return t.unsqueeze(1).expand(t.shape[0], B, *t.shape[1:]).flatten(1, 2)
    return t.movedim(bdim, 1).flatten(1, 2)


def _fold_c(t: Opt, bdim: Optional[int], B: int) -> Opt:
    """A per-channel tensor, (C,) or (G, C) per sample, as (B * C,) or (G, B * C)."""
    if t is None:
        return None
    if bdim is None:
        return t.repeat(B) if t.dim() == 1 else t.repeat(1, B)
    return t.movedim(bdim, t.dim() - 2).flatten(-2)


def _split(t: Tensor, B: int) -> Tuple[Tensor, int]:
    return t.unflatten(1, (B, -1)), 1


def _split_c(t: Tensor, B: int) -> Tuple[Tensor, int]:
    t = t.unflatten(-1, (B, -1))
    return t, t.dim() - 2


def _results(pairs: Sequence[Tuple[Tensor, Optional[int]]]) -> Tuple[Tuple[Tensor, ...],
                                                                        Tuple[Any, ...]]:
    return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


def _train_vmap(info: Any, in_dims: Sequence[Optional[int]], input: Tensor, weight: Opt,
                bias: Opt, running_mean: Opt, running_var: Opt, residual: Opt,
                momentum: float, eps: float, relu: bool) -> Any:
    B = info.batch_size
    xd, wd, bd, md, vd, rd = in_dims[:6]
    res = ops.batch_norm_train(
        _fold(input, xd, B), _fold_c(weight, wd, B), _fold_c(bias, bd, B),
        _fold_c(running_mean, md, B), _fold_c(running_var, vd, B), _fold(residual, rd, B),
        momentum, eps, relu)
    return _results([_split(res[0], B), _split_c(res[1], B), _split_c(res[2], B),
                     _split_c(res[3], B) if running_mean is not None else (res[3], None),
                     _split_c(res[4], B) if running_var is not None else (res[4], None)])


def _infer_vmap(info: Any, in_dims: Sequence[Optional[int]], input: Tensor,
                running_mean: Tensor, running_var: Tensor, weight: Opt, bias: Opt,
                residual: Opt, eps: float, relu: bool) -> Any:
    B = info.batch_size
    xd, md, vd, wd, bd, rd = in_dims[:6]
    out = ops.batch_norm_infer(
        _fold(input, xd, B), _fold_c(running_mean, md, B), _fold_c(running_var, vd, B),
        _fold_c(weight, wd, B), _fold_c(bias, bd, B), _fold(residual, rd, B), eps, relu)
    return _split(out, B)


def _ghost_vmap(info: Any, in_dims: Sequence[Optional[int]], input: Tensor, weight: Opt,
                bias: Opt, running_mean: Opt, running_var: Opt, k: int, momentum: float,
                eps: float) -> Any:
    B = info.batch_size
    xd, wd, bd, md, vd = in_dims[:5]
    res = ops.ghost_batch_norm_train(
        _fold(input, xd, B), _fold_c(weight, wd, B), _fold_c(bias, bd, B),
        _fold_c(running_mean, md, B), _fold_c(running_var, vd, B), k, momentum, eps)
    return _results([_split(res[0], B), _split_c(res[1], B), _split_c(res[2], B),
                     _split_c(res[3], B) if running_mean is not None else (res[3], None),
                     _split_c(res[4], B) if running_var is not None else (res[4], None)])


def _renorm_vmap(info: Any, in_dims: Sequence[Optional[int]], input: Tensor, weight: Opt,
                 bias: Opt, running_mean: Tensor, running_var: Tensor, r_max: float,
                 d_max: float, momentum: float, eps: float) -> Any:
    B = info.batch_size
    xd, wd, bd, md, vd = in_dims[:5]
    res = ops.batch_renorm_train(
        _fold(input, xd, B), _fold_c(weight, wd, B), _fold_c(bias, bd, B),
        _fold_c(running_mean, md, B), _fold_c(running_var, vd, B), r_max, d_max, momentum,
        eps)
    return _results([_split(res[0], B)] + [_split_c(t, B) for t in res[1:]])


def _backward_vmap(info: Any, in_dims: Sequence[Optional[int]], grad_output: Tensor,
                   input: Tensor, weight: Opt, save_mean: Tensor, save_invstd: Tensor,
                   out: Opt, r: Opt, d: Opt, training: bool, k: int, eps: float,
                   output_mask: Sequence[bool]) -> Any:
    B = info.batch_size
    gd, xd, wd, md, sd, od, rd, dd = in_dims[:8]
    res = ops.batch_norm_backward(
        _fold(grad_output, gd, B), _fold(input, xd, B), _fold_c(weight, wd, B),
        _fold_c(save_mean, md, B), _fold_c(save_invstd, sd, B), _fold(out, od, B),
        _fold_c(r, rd, B), _fold_c(d, dd, B), training, k, eps, output_mask)
    split = (_split, _split_c, _split_c, _split)
    return _results([f(t, B) if m else (t, None) for f, t, m in zip(split, res, output_mask)])


def _store_vmap(info: Any, in_dims: Sequence[Optional[int]], running_mean: Tensor,
                running_var: Tensor, new_mean: Tensor, new_var: Tensor) -> Any:
    md, vd, nmd, nvd = in_dims
    if (md is None and nmd is not None) or (vd is None and nvd is not None):
        raise RuntimeError(
            "Batch norm got a batched tensor as input while the running_mean or running_var, "
            "which will be updated in place, were not batched. If you do not need eval mode, "
            "set track_running_stats=False, or call "
            "torch.func.replace_all_batch_norm_modules_(model) first.")

    def front(t: Tensor, bdim: Optional[int]) -> Tensor:
        return t if bdim is None else t.movedim(bdim, 0)

    ops.store_running_stats(front(running_mean, md), front(running_var, vd),
                            front(new_mean, nmd), front(new_var, nvd))
    return None, None


for _name, _rule in (("batch_norm_train", _train_vmap), ("batch_norm_infer", _infer_vmap),
                     ("ghost_batch_norm_train", _ghost_vmap),
                     ("batch_renorm_train", _renorm_vmap),
                     ("batch_norm_backward", _backward_vmap),
                     ("store_running_stats", _store_vmap)):
    torch.library.register_vmap(f"bnfast::{_name}", _rule, lib=_ops.LIB)
