"""bnfast's batch norm as PyTorch operators: ``torch.ops.bnfast.*``.

Functional operators (no input is mutated; the running statistics come back as new tensors,
as in aten's ``_native_batch_norm_legit_functional``, and the layers copy them into their
buffers), so that torch.compile, torch.export, FX and torch.func see what they are:

- ``batch_norm_train(input, weight, bias, running_mean, running_var, residual, momentum,
  eps, relu) -> (out, save_mean, save_invstd, new_running_mean, new_running_var)``: the
  training forward, ``out = relu(bn(input) + residual)`` with the fused options.
- ``batch_norm_infer(input, running_mean, running_var, weight, bias, residual, eps, relu)
  -> out``: the inference forward.
- ``ghost_batch_norm_train(..., virtual_batch_size, momentum, eps)``: statistics per group
  of ``virtual_batch_size`` samples (save_mean, save_invstd of shape (G, C)).
- ``batch_renorm_train(..., r_max, d_max, momentum, eps) -> (out, save_mean, save_invstd,
  r, d, new_running_mean, new_running_var)``: batch renormalization.
- ``batch_norm_backward(grad_output, input, weight, save_mean, save_invstd, out, r, d,
  training, virtual_batch_size, eps, output_mask) -> (grad_input, grad_weight, grad_bias,
  grad_residual)``: the backward of all of them (``out`` given for the fused ReLU's mask).

A running statistic passed as None comes back as an empty tensor, and so does an output
that ``output_mask`` does not ask for. ``save_mean`` and ``save_invstd`` are float64 on the
CPU (float32 elsewhere unless the input is float64).

Each operator has a fake (meta) implementation here, and (``_op_rules``) an autograd
registration whose backward is ``batch_norm_backward`` (whose own autograd gives every
higher order through ``_grad.formula_vjp``) and a vmap rule (the vmapped dimension joins the
channels). ``store_running_stats`` copies new running statistics into the buffers. The
implementation runs bnfast's kernels for what they serve on the CPU and hands the rest (other
devices, dtypes the kernels do not compute, and the sizes where PyTorch's kernel is faster,
``_policy.torch_is_faster``) to aten's batch norm, so the graph shows bnfast either way.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple, TypeVar

import torch
from torch import Tensor

from . import _compute
from ._arrays import from_kernel, kernel_dtype, vector
from ._grad import BackwardSpec, backward_formula
from ._policy import served, torch_is_faster

Opt = Optional[Tensor]
Fn = TypeVar("Fn", bound=Callable[..., Any])

# Defined with explicit schemas rather than torch.library.custom_op, whose generated autograd
# registration does not work under torch.func transforms (_op_rules registers one that does).
LIB = torch.library.Library("bnfast", "FRAGMENT")


def _define(schema: str) -> Callable[[Fn], Fn]:
    """Define ``bnfast::<schema>`` with the decorated function as its implementation for
    every device (it hands what the kernels do not serve to aten itself)."""
    name = schema[:schema.index("(")]

    def register(impl: Fn) -> Fn:
        LIB.define(schema, tags=(torch.Tag.pt2_compliant_tag,))
        LIB.impl(name, impl, "CompositeExplicitAutograd")
        return impl
    return register


def _fake(name: str) -> Callable[[Fn], Fn]:
    return torch.library.register_fake(f"bnfast::{name}", lib=LIB)  # type: ignore[return-value]


def stat_dtype(input: Tensor) -> torch.dtype:
    return torch.float64 if input.device.type == "cpu" or input.dtype == torch.float64 \
        else torch.float32


def _like_input(out: Tensor, input: Tensor) -> Tensor:
    """``out`` with the strides ``torch.empty_like(input)`` has (what the fakes promise)."""
    if out.stride() == input.stride():
        return out
    ref = torch.empty_like(input, dtype=out.dtype)
    return out if ref.stride() == out.stride() else ref.copy_(out)


def _nothing(input: Tensor) -> Tensor:
    return input.new_empty(0)


def _stats(input: Tensor, mean: Any, invstd: Any) -> Tuple[Tensor, Tensor]:
    if isinstance(mean, Tensor):  # aten's
        sd = stat_dtype(input)
        return mean.to(sd), invstd.to(sd)
    return torch.from_numpy(mean), torch.from_numpy(invstd)


def _kernels_serve(input: Tensor, momentum: float, *others: Opt) -> bool:
    return served(input, *others) and 0.0 <= momentum <= 1.0


# ---- Forward operators -----------------------------------------------------------------------

@_define("batch_norm_train(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean, "
         "Tensor? running_var, Tensor? residual, float momentum, float eps, bool relu) -> "
         "(Tensor out, Tensor save_mean, Tensor save_invstd, Tensor new_running_mean, "
         "Tensor new_running_var)")
def batch_norm_train(input: Tensor, weight: Opt, bias: Opt, running_mean: Opt, running_var: Opt,
                     residual: Opt, momentum: float, eps: float, relu: bool
                     ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    rm = None if running_mean is None else running_mean.clone()
    rv = None if running_var is None else running_var.clone()
    if (_kernels_serve(input, momentum, weight, bias, rm, rv, residual)
            and not torch_is_faster(input, True)):
        xk, y, mean, invstd = _compute.forward_train(input, weight, bias, rm, rv, momentum,
                                                     eps, residual, relu)
        out = _like_input(from_kernel(y, xk.axis, input.dtype), input)
    else:
        out, mean, invstd = torch.ops.aten.native_batch_norm(input, weight, bias, rm, rv, True,
                                                             momentum, eps)
        out = _epilogue(out, residual, relu)
    return (out, *_stats(input, mean, invstd), _nothing(input) if rm is None else rm,
            _nothing(input) if rv is None else rv)


def _epilogue(out: Tensor, residual: Opt, relu: bool) -> Tensor:
    if residual is not None:
        out = out + residual
    return torch.relu(out) if relu else out


@_fake("batch_norm_train")
def _(input: Tensor, weight: Opt, bias: Opt, running_mean: Opt, running_var: Opt,
      residual: Opt, momentum: float, eps: float, relu: bool) -> Tuple[Tensor, ...]:
    C = input.shape[1]
    sd = stat_dtype(input)
    return (torch.empty_like(input), input.new_empty((C,), dtype=sd),
            input.new_empty((C,), dtype=sd), _fake_running(input, running_mean),
            _fake_running(input, running_var))


def _fake_running(input: Tensor, t: Opt) -> Tensor:
    return _nothing(input) if t is None else torch.empty_like(t)


@_define("batch_norm_infer(Tensor input, Tensor running_mean, Tensor running_var, "
         "Tensor? weight, Tensor? bias, Tensor? residual, float eps, bool relu) -> Tensor")
def batch_norm_infer(input: Tensor, running_mean: Tensor, running_var: Tensor, weight: Opt,
                     bias: Opt, residual: Opt, eps: float, relu: bool) -> Tensor:
    if served(input, running_mean, running_var, weight, bias, residual) and not (
            torch_is_faster(input, False)):
        xk, y = _compute.forward_infer(input, running_mean, running_var, weight, bias, eps,
                                       residual, relu)
        return _like_input(from_kernel(y, xk.axis, input.dtype), input)
    out = torch.ops.aten.native_batch_norm(input, weight, bias, running_mean, running_var,
                                           False, 0.0, eps)[0]
    return _epilogue(out, residual, relu)


@_fake("batch_norm_infer")
def _(input: Tensor, running_mean: Tensor, running_var: Tensor, weight: Opt, bias: Opt,
      residual: Opt, eps: float, relu: bool) -> Tensor:
    return torch.empty_like(input)


def _variant_device(input: Tensor, what: str, *others: Opt) -> None:
    if not served(input, *others):
        raise NotImplementedError(
            f"{what} is computed by bnfast's CPU kernels only: this input ({input.device.type} "
            f"{input.dtype}, {tuple(input.shape)}) or its parameters are not served by them")


@_define("ghost_batch_norm_train(Tensor input, Tensor? weight, Tensor? bias, "
         "Tensor? running_mean, Tensor? running_var, int virtual_batch_size, float momentum, "
         "float eps) -> (Tensor out, Tensor save_mean, Tensor save_invstd, "
         "Tensor new_running_mean, Tensor new_running_var)")
def ghost_batch_norm_train(input: Tensor, weight: Opt, bias: Opt, running_mean: Opt,
                           running_var: Opt, virtual_batch_size: int, momentum: float,
                           eps: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    rm = None if running_mean is None else running_mean.clone()
    rv = None if running_var is None else running_var.clone()
    _variant_device(input, "virtual_batch_size", weight, bias, rm, rv)
    xk, y, mean, invstd = _compute.forward_ghost(input, weight, bias, rm, rv,
                                                 virtual_batch_size, momentum, eps)
    return (_like_input(from_kernel(y, xk.axis, input.dtype), input),
            *_stats(input, mean, invstd),
            _nothing(input) if rm is None else rm, _nothing(input) if rv is None else rv)


@_fake("ghost_batch_norm_train")
def _(input: Tensor, weight: Opt, bias: Opt, running_mean: Opt, running_var: Opt,
      virtual_batch_size: int, momentum: float, eps: float) -> Tuple[Tensor, ...]:
    shape = (input.shape[0] // virtual_batch_size, input.shape[1])
    sd = stat_dtype(input)
    return (torch.empty_like(input), input.new_empty(shape, dtype=sd),
            input.new_empty(shape, dtype=sd), _fake_running(input, running_mean),
            _fake_running(input, running_var))


@_define("batch_renorm_train(Tensor input, Tensor? weight, Tensor? bias, Tensor running_mean, "
         "Tensor running_var, float r_max, float d_max, float momentum, float eps) -> "
         "(Tensor out, Tensor save_mean, Tensor save_invstd, Tensor r, Tensor d, "
         "Tensor new_running_mean, Tensor new_running_var)")
def batch_renorm_train(input: Tensor, weight: Opt, bias: Opt, running_mean: Tensor,
                       running_var: Tensor, r_max: float, d_max: float, momentum: float,
                       eps: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                            Tensor]:
    rm, rv = running_mean.clone(), running_var.clone()
    _variant_device(input, "renorm", weight, bias, rm, rv)
    xk, y, mean, invstd, r, d = _compute.forward_renorm(input, weight, bias, rm, rv, r_max,
                                                        d_max, momentum, eps)
    return (_like_input(from_kernel(y, xk.axis, input.dtype), input),
            *_stats(input, mean, invstd),
            *_stats(input, r, d), rm, rv)


@_fake("batch_renorm_train")
def _(input: Tensor, weight: Opt, bias: Opt, running_mean: Tensor, running_var: Tensor,
      r_max: float, d_max: float, momentum: float, eps: float) -> Tuple[Tensor, ...]:
    C = input.shape[1]
    sd = stat_dtype(input)
    return (torch.empty_like(input), *(input.new_empty((C,), dtype=sd) for _ in range(4)),
            torch.empty_like(running_mean), torch.empty_like(running_var))


# ---- The backward operator -------------------------------------------------------------------

@_define("batch_norm_backward(Tensor grad_output, Tensor input, Tensor? weight, "
         "Tensor save_mean, Tensor save_invstd, Tensor? out, Tensor? r, Tensor? d, "
         "bool training, int virtual_batch_size, float eps, bool[4] output_mask) -> "
         "(Tensor grad_input, Tensor grad_weight, Tensor grad_bias, Tensor grad_residual)")
def batch_norm_backward(grad_output: Tensor, input: Tensor, weight: Opt, save_mean: Tensor,
                        save_invstd: Tensor, out: Opt, r: Opt, d: Opt, training: bool,
                        virtual_batch_size: int, eps: float, output_mask: List[bool]
                        ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    mask = tuple(bool(m) for m in output_mask)
    k = virtual_batch_size if virtual_batch_size > 0 else None
    variant = k is not None or r is not None
    # The hand-off covers the training backward: aten's eval-mode backward wants the running
    # variance, which this operator does not take (the kernels compute that one).
    if (served(input, weight, out) and grad_output.shape == input.shape
            and not (not variant and training and torch_is_faster(input, training))):
        xk = _compute.Input(input)
        renorm = None if r is None or d is None else (_vec64(r), _vec64(d))
        ya = None if out is None else xk.like(out)
        dx, dgamma, dbeta, dres = _compute.backward(
            grad_output, xk, weight, _vec64(save_mean), _vec64(save_invstd), training, mask,
            ya, k, renorm)
        pdtype = _param_dtype(input, weight)
        grads = [None if dx is None else _like_input(from_kernel(dx, xk.axis, input.dtype),
                                                     input),
                 _compute.param_grad(dgamma, pdtype), _compute.param_grad(dbeta, pdtype),
                 None if dres is None else _like_input(from_kernel(dres, xk.axis, input.dtype),
                                                       input)]
        if grads[3] is not None and grads[3].data_ptr() == grad_output.data_ptr():
            grads[3] = grads[3].clone()  # an operator's output never aliases an input
    elif not variant and training:
        # aten's backward of the batch norm, after the ReLU's mask (y > 0, as the kernels).
        g = grad_output if out is None else torch.where(out > 0, grad_output, 0)
        sd = _aten_stat(input)
        grads = list(torch.ops.aten.native_batch_norm_backward(
            g, input, weight, None, None, save_mean.to(sd), save_invstd.to(sd), True, eps,
            list(mask[:3])))
        grads.append((g.clone() if g is grad_output else g) if mask[3] else None)
    else:
        spec = BackwardSpec(save_mean, save_invstd, eps, training, relu=out is not None,
                            residual=mask[3], virtual_batch_size=k,
                            renorm=None if r is None or d is None else (r, d))
        outs = backward_formula(grad_output, input, weight, out, spec)
        dtypes = (input.dtype, _param_dtype(input, weight), _param_dtype(input, weight),
                  input.dtype)
        grads = [o.to(dt) if m and o is not None else None
                 for o, dt, m in zip(outs, dtypes, mask)]
    return tuple(g if m and g is not None else _nothing(input)  # type: ignore[return-value]
                 for g, m in zip(grads, mask))


def _vec64(t: Tensor) -> Any:
    return vector(t.to(torch.float64))


def _param_dtype(input: Tensor, weight: Opt) -> torch.dtype:
    return kernel_dtype(input.dtype) if weight is None else weight.dtype


def _aten_stat(input: Tensor) -> torch.dtype:
    """The dtype of the statistics aten's batch norm saves for ``input``."""
    return torch.float64 if input.dtype == torch.float64 else torch.float32


@_fake("batch_norm_backward")
def _(grad_output: Tensor, input: Tensor, weight: Opt, save_mean: Tensor, save_invstd: Tensor,
      out: Opt, r: Opt, d: Opt, training: bool, virtual_batch_size: int, eps: float,
      output_mask: List[bool]) -> Tuple[Tensor, ...]:
    C = input.shape[1]
    pdtype = _param_dtype(input, weight)
    shapes = (torch.empty_like(input), input.new_empty((C,), dtype=pdtype),
              input.new_empty((C,), dtype=pdtype), torch.empty_like(input))
    return tuple(t if m else _nothing(input) for t, m in zip(shapes, output_mask))




# ---- The running statistics ------------------------------------------------------------------

@torch.library.custom_op("bnfast::store_running_stats",
                         mutates_args=("running_mean", "running_var"))
def store_running_stats(running_mean: Tensor, running_var: Tensor, new_mean: Tensor,
                        new_var: Tensor) -> None:
    """Copy the forward operators' new running statistics into the buffers.

    A mutating operator of its own (what it mutates is in its schema), so that the forward
    operators stay functional and differentiable, and so that the copy also works under
    ``torch.func.grad``, which refuses an in-place ``copy_`` into a captured buffer.
    """
    running_mean.copy_(new_mean)
    running_var.copy_(new_var)


@store_running_stats.register_fake
def _(running_mean: Tensor, running_var: Tensor, new_mean: Tensor, new_var: Tensor) -> None:
    return None
