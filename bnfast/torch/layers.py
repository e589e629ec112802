"""The drop-in layers: ``BatchNorm1d/2d/3d`` and their lazy forms, subclasses of torch's."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from .._validation import check_activation, check_bool, check_int
from .._variants import check_renorm_limits
from .functional import check_batch_size, check_eps, compute

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LazyBatchNorm1d", "LazyBatchNorm2d",
           "LazyBatchNorm3d"]


def _check_residual(residual: Tensor, input: Tensor) -> None:
    """The residual of ``forward(input, residual)``: a tensor of input's shape, dtype and
    device (no broadcasting, no promotion)."""
    if not isinstance(residual, torch.Tensor):
        raise TypeError(f"residual: expected a Tensor, got {type(residual).__name__}")
    if residual.shape != input.shape:
        raise ValueError(f"residual: expected the input's shape {tuple(input.shape)}, got "
                         f"{tuple(residual.shape)}")
    if residual.dtype != input.dtype or residual.device != input.device:
        raise ValueError(f"residual: expected the input's dtype and device ({input.dtype}, "
                         f"{input.device}), got ({residual.dtype}, {residual.device})")


def layer_forward(module: _BatchNorm, input: Tensor, residual: Optional[Tensor] = None,
                  activation: Optional[str] = None, k: Optional[int] = None,
                  renorm: bool = False) -> Tensor:
    """``_BatchNorm.forward`` (the same steps, in the same order) computed by
    ``functional.compute``, with the options of the layers."""
    module._check_input_dim(input)
    training = module.training
    variant = training and (renorm or k is not None)
    if residual is not None:
        _check_residual(residual, input)
        if variant:
            raise ValueError("residual: not with renorm or virtual_batch_size in training "
                             "mode (those compute plain batch norm; add the residual after "
                             "the layer)")
    if training and k is not None and input.shape[0] % k:
        n = input.shape[0]
        raise ValueError(f"virtual_batch_size: {k} does not divide the batch size {n} "
                         f"(input.shape[0]); expected a divisor of {n}")
    momentum = module.momentum
    factor = 0.0 if momentum is None else momentum
    track = module.track_running_stats
    # The parameters and buffers straight from their dicts (nn.Module.__getattr__ is slow).
    buffers, params = module._buffers, module._parameters
    if training and track:
        num_batches = buffers.get("num_batches_tracked")
        if num_batches is not None:
            num_batches.add_(1)
            if momentum is None:  # cumulative moving average
                factor = 1.0 / float(num_batches)
    running_mean, running_var = buffers.get("running_mean"), buffers.get("running_var")
    if training:
        bn_training = True
        if not track:
            running_mean = running_var = None
    else:
        bn_training = running_mean is None and running_var is None
    eps = module.eps
    if bn_training and not torch.jit.is_tracing():  # F.batch_norm checks it when tracing
        check_batch_size(input)
    check_eps(eps, bn_training)
    limits: Optional[Tuple[float, float]] = None
    if training and renorm:
        limits = (getattr(module, "r_max"), getattr(module, "d_max"))  # floats (checked)
    return compute(input, running_mean, running_var, params.get("weight"), params.get("bias"),
                   bn_training, float(factor), float(eps), residual, activation == "relu",
                   k if training else None, limits)


class _CPUForward:
    """The drop-in layers' options and forward.

    Keyword-only options after torch's constructor arguments (plain attributes, not in the
    ``state_dict``): ``activation`` (None or ``"relu"``: ``forward(input, residual)`` returns
    ``relu(bn(input) + residual)``, fused, in training and eval mode), ``virtual_batch_size``
    (ghost batch norm) and ``renorm``, ``r_max``, ``d_max`` (batch renormalization); the two
    variants apply in training mode only, eval mode being plain batch norm.
    """

    def __init__(self, *args: Any, activation: Optional[str] = None,
                 virtual_batch_size: Optional[int] = None, renorm: bool = False,
                 r_max: float = 3.0, d_max: float = 5.0, **kwargs: Any) -> None:
        activation = check_activation(activation)
        k = None if virtual_batch_size is None else check_int(virtual_batch_size,
                                                                "virtual_batch_size", 1)
        renorm = check_bool(renorm, "renorm")
        r_max, d_max = check_renorm_limits(r_max, d_max)
        if activation is not None and (renorm or k is not None):
            raise ValueError("activation: the fused activation cannot be combined with renorm "
                             "or virtual_batch_size (apply it after the layer instead)")
        if renorm and k is not None:
            raise ValueError("renorm and virtual_batch_size: expected at most one of them "
                             "(batch renormalization of virtual batches is not supported)")
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        if renorm and not self.track_running_stats:  # type: ignore[attr-defined]
            raise ValueError("renorm: batch renormalization needs the running statistics; "
                             "expected track_running_stats=True")
        self.activation = activation
        self.virtual_batch_size = k
        self.renorm = renorm
        self.r_max, self.d_max = r_max, d_max

    def extra_repr(self) -> str:
        text = super().extra_repr()  # type: ignore[misc]
        if getattr(self, "activation", None) is not None:
            text += f", activation={self.activation!r}"
        if getattr(self, "virtual_batch_size", None) is not None:
            text += f", virtual_batch_size={self.virtual_batch_size}"
        if getattr(self, "renorm", False):
            text += f", renorm=True, r_max={self.r_max}, d_max={self.d_max}"
        return str(text)

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        # getattr: a layer pickled before these options existed has none of them.
        activation = getattr(self, "activation", None)
        k = getattr(self, "virtual_batch_size", None)
        renorm = getattr(self, "renorm", False)
        if not isinstance(input, Tensor) or (
                torch.jit.is_tracing() and residual is None and activation is None
                and k is None and not renorm):
            # PyTorch's own forward: its error for a non-tensor, and under torch.jit.trace
            # its graph and warnings, no other.
            return super().forward(input)  # type: ignore[misc]
        return layer_forward(self, input, residual,  # type: ignore[arg-type]
                             activation, k, renorm)


class BatchNorm1d(_CPUForward, torch.nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` computed by bnfast on the CPU (input (N, C) or (N, C, L)).

    The same constructor, parameters, buffers, ``state_dict`` and behaviour, plus the
    keyword-only options ``activation``, ``virtual_batch_size``, ``renorm``, ``r_max`` and
    ``d_max`` (docs/torch.md); non-CPU input runs torch's own batch norm.
    """

    __module__ = "bnfast.torch"


class BatchNorm2d(_CPUForward, torch.nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` computed by bnfast on the CPU (input (N, C, H, W)).

    The same constructor, parameters, buffers, ``state_dict`` and behaviour, plus the
    keyword-only options of ``BatchNorm1d``; non-CPU input runs torch's own batch norm.
    channels_last input gives channels_last output, without copies.
    """

    __module__ = "bnfast.torch"


class BatchNorm3d(_CPUForward, torch.nn.BatchNorm3d):
    """``torch.nn.BatchNorm3d`` computed by bnfast on the CPU (input (N, C, D, H, W)).

    The same constructor, parameters, buffers, ``state_dict`` and behaviour, plus the
    keyword-only options of ``BatchNorm1d``; non-CPU input runs torch's own batch norm.
    """

    __module__ = "bnfast.torch"


class LazyBatchNorm1d(_CPUForward, torch.nn.LazyBatchNorm1d):
    """``torch.nn.LazyBatchNorm1d`` computed by bnfast: ``num_features`` is inferred from the
    first input, and the layer then becomes a ``bnfast.torch.BatchNorm1d`` (its parameters
    stay the same objects, so an optimizer built before keeps working)."""

    __module__ = "bnfast.torch"
    cls_to_become = BatchNorm1d  # type: ignore[assignment]


class LazyBatchNorm2d(_CPUForward, torch.nn.LazyBatchNorm2d):
    """``torch.nn.LazyBatchNorm2d`` computed by bnfast; becomes a ``bnfast.torch.BatchNorm2d``
    at its first forward."""

    __module__ = "bnfast.torch"
    cls_to_become = BatchNorm2d  # type: ignore[assignment]


class LazyBatchNorm3d(_CPUForward, torch.nn.LazyBatchNorm3d):
    """``torch.nn.LazyBatchNorm3d`` computed by bnfast; becomes a ``bnfast.torch.BatchNorm3d``
    at its first forward."""

    __module__ = "bnfast.torch"
    cls_to_become = BatchNorm3d  # type: ignore[assignment]
