"""``batch_norm``, the functional, and ``compute``: where every call of the layers and the
functional chooses what computes it (``_policy``)."""
from __future__ import annotations

import numbers
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _policy
from ._autograd import OptionsFunction, plain_forward


def check_batch_size(input: Tensor) -> None:
    """PyTorch's error for one value per channel in training mode."""
    size = input.size()
    values = size[0]
    for s in size[2:]:
        values *= s
    if values == 1:
        raise ValueError("Expected more than 1 value per channel when training, "
                         f"got input size {size}")


def check_eps(eps: float, training: bool) -> None:
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")


def _torch_ops(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor], bias: Optional[Tensor], training: bool,
               momentum: float, eps: float, residual: Optional[Tensor], relu: bool,
               variant: bool) -> Tensor:
    """PyTorch's batch norm, then the residual and the ReLU as separate operations."""
    if variant:
        raise NotImplementedError(
            "virtual_batch_size and renorm are computed by bnfast's CPU kernels only: this "
            f"input ({input.device.type} {input.dtype}, {type(input).__name__}) or these "
            "parameters are not served by them, or forward-mode AD or JIT tracing is active")
    y = F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    if residual is not None:
        y = y + residual
    return F.relu(y) if relu else y


def compute(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
            weight: Optional[Tensor], bias: Optional[Tensor], training: bool, momentum: float,
            eps: float, residual: Optional[Tensor] = None, relu: bool = False,
            virtual_batch_size: Optional[int] = None,
            renorm: Optional[Tuple[float, float]] = None) -> Tensor:
    """Batch norm of checked arguments, by whatever computes it best.

    ``training`` means batch statistics (the running ones, when given, are updated);
    ``residual`` and ``relu`` give ``relu(bn(input) + residual)``; ``virtual_batch_size`` and
    ``renorm=(r_max, d_max)`` the variants (training only).
    """
    variant = training and (virtual_batch_size is not None or renorm is not None)
    if _policy.eager(input) and (residual is None or type(residual) is Tensor):
        plain = residual is None and not relu and not variant
        if not variant and _policy.torch_is_faster(input, training):
            # The hand-off, checked first since it is the cheapest path: aten's batch norm
            # (with the checks F.batch_norm would repeat done already), then the residual and
            # the ReLU as separate operations.
            if plain:
                return torch.batch_norm(input, weight, bias, running_mean, running_var,
                                        training, momentum, eps, False)
            return _torch_ops(input, running_mean, running_var, weight, bias, training,
                              momentum, eps, residual, relu, False)
        if not (_policy.served(input, running_mean, running_var, weight, bias, residual)
                and (not training or running_mean is None or 0.0 <= momentum <= 1.0)):
            return _torch_ops(input, running_mean, running_var, weight, bias, training,
                              momentum, eps, residual, relu, variant)
        if plain:
            return plain_forward(input, weight, bias, running_mean, running_var, training,
                                 momentum, eps)
        out: Tensor = OptionsFunction.apply(
            input, weight, bias, residual, running_mean, running_var, training, momentum, eps,
            relu, virtual_batch_size if variant else None, renorm if variant else None)
        return out
    if not input.is_cpu or not torch.compiler.is_compiling() and (
            torch.jit.is_tracing() or _policy.forward_ad()
            or torch.overrides.has_torch_function_variadic(input, residual)):
        return _torch_ops(input, running_mean, running_var, weight, bias, training, momentum,
                          eps, residual, relu, variant)
    if (not variant and torch.compiler.is_compiling() and not torch.compiler.is_exporting()
            and _policy.inductor_is_faster(input, training)):
        # torch.compile, below the compiled crossover: aten's batch norm, which inductor
        # fuses with the ReLU and residual around it (torch.export keeps the operators).
        return _torch_ops(input, running_mean, running_var, weight, bias, training, momentum,
                          eps, residual, relu, False)
    return _operators(input, running_mean, running_var, weight, bias, training, momentum, eps,
                      residual, relu, virtual_batch_size if variant else None,
                      renorm if variant else None)


def _operators(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor], bias: Optional[Tensor], training: bool,
               momentum: float, eps: float, residual: Optional[Tensor], relu: bool,
               virtual_batch_size: Optional[int],
               renorm: Optional[Tuple[float, float]]) -> Tensor:
    """The call through ``torch.ops.bnfast`` (traced, transformed or intercepted calls)."""
    ops = torch.ops.bnfast
    if not training:
        assert running_mean is not None and running_var is not None
        out: Tensor = ops.batch_norm_infer(input, running_mean, running_var, weight, bias,
                                           residual, eps, relu)
        return out
    if renorm is not None:
        assert running_mean is not None and running_var is not None
        res = ops.batch_renorm_train(input, weight, bias, running_mean, running_var, renorm[0],
                                     renorm[1], momentum, eps)
        new_mean, new_var = res[5], res[6]
    elif virtual_batch_size is not None:
        res = ops.ghost_batch_norm_train(input, weight, bias, running_mean, running_var,
                                         virtual_batch_size, momentum, eps)
        new_mean, new_var = res[3], res[4]
    else:
        res = ops.batch_norm_train(input, weight, bias, running_mean, running_var, residual,
                                   momentum, eps, relu)
        new_mean, new_var = res[3], res[4]
    if running_mean is not None and running_var is not None:
        ops.store_running_stats(running_mean, running_var, new_mean, new_var)
    return res[0]


def batch_norm(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """``torch.nn.functional.batch_norm`` computed by bnfast's kernels.

    The same arguments, result and errors. In training mode the batch statistics normalize
    and ``running_mean``/``running_var`` (when given) are updated in place with ``momentum``
    (running_var with the unbiased variance); otherwise the running statistics normalize.
    Differentiable with respect to ``input``, ``weight`` and ``bias``, to any order.

    CPU calls run on bnfast's kernels, except the sizes where PyTorch's own kernel is faster
    (``set_torch_handoff``); under torch.compile, torch.export and torch.func the call is the
    operator ``torch.ops.bnfast.batch_norm_train`` or ``batch_norm_infer``. Everything bnfast
    does not compute (other devices, tensor subclasses with ``__torch_function__``, dtype
    mixes PyTorch rejects, forward-mode AD, JIT tracing) goes to
    ``torch.nn.functional.batch_norm``.

    Examples
    --------
    >>> import torch, bnfast.torch
    >>> x = torch.randn(8, 3, 4, 4, requires_grad=True)
    >>> rm, rv = torch.zeros(3), torch.ones(3)
    >>> y = bnfast.torch.batch_norm(x, rm, rv, training=True)
    >>> y.sum().backward()
    >>> x.grad.shape
    torch.Size([8, 3, 4, 4])
    """
    if torch.overrides.has_torch_function_variadic(input, running_mean, running_var, weight,
                                                   bias):
        return F.batch_norm(input, running_mean, running_var, weight, bias, training,
                            momentum, eps)
    if not isinstance(input, Tensor) or not isinstance(eps, numbers.Real) or (
            running_mean is None) != (running_var is None) or (
            not training and running_mean is None) or not isinstance(
            momentum, numbers.Real) or isinstance(momentum, bool):
        return F.batch_norm(input, running_mean, running_var, weight, bias, training,
                            momentum, eps)
    if training:
        check_batch_size(input)
    check_eps(float(eps), training)
    return compute(input, running_mean, running_var, weight, bias, bool(training),
                   float(momentum), float(eps))
