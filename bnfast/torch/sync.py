"""``SyncBatchNorm`` for CPU processes over ``torch.distributed``."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from .. import _training
from ..distributed import (
    sync_batch_norm_backward,
    sync_batch_norm_forward,
    torch_all_gather,
    torch_all_reduce,
)
from . import _compute
from ._arrays import HALF, NATIVE, RunningBuffer, from_kernel, n_threads, to_kernel, vector
from ._grad import NotTwiceDifferentiable, records_graph
from .functional import check_eps
from .layers import layer_forward

__all__ = ["SyncBatchNorm"]


class _SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm with statistics and gradient sums over a process group."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                running_mean: Optional[Tensor], running_var: Optional[Tensor], eps: float,
                momentum: float, process_group: Any) -> Tensor:
        xk = to_kernel(input)
        xa, axis = xk[1], xk[2]
        rm, rv = RunningBuffer(running_mean), RunningBuffer(running_var)
        try:
            ya, mean, invstd = sync_batch_norm_forward(
                xa, vector(weight), vector(bias), all_gather=torch_all_gather(process_group),
                axis=axis, eps=eps, running_mean=rm.array, running_var=rv.array,
                momentum=float(momentum), n_threads=n_threads())
        finally:
            rm.write_back()
            rv.write_back()
        ctx.save_for_backward(input, weight, bias)
        ctx.xk, ctx.mean, ctx.invstd = xk, mean, invstd
        ctx.process_group, ctx.input_dtype = process_group, input.dtype
        return from_kernel(ya, axis, input.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tuple[Optional[Tensor], ...]:
        input, weight, bias = ctx.saved_tensors
        needs = ctx.needs_input_grad

        def first_order() -> Tuple[Optional[Tensor], ...]:
            return _SyncBatchNormFunction.kernel_backward(ctx, grad_output, weight, bias, needs)

        if records_graph(grad_output, input, weight):
            dx, gw, gb, _ = NotTwiceDifferentiable.apply("SyncBatchNorm", first_order,
                                                         grad_output, input, weight)
        else:
            dx, gw, gb, _ = first_order()
        return dx, gw, gb, None, None, None, None, None

    @staticmethod
    def kernel_backward(ctx: Any, grad_output: Tensor, weight: Optional[Tensor],
                        bias: Optional[Tensor], needs: Tuple[bool, ...]
                        ) -> Tuple[Optional[Tensor], ...]:
        """(dx, dweight, dbias, None) by the kernels and the group's all-reduce."""
        xk = ctx.xk
        _, xa, axis = xk
        dya = to_kernel(grad_output, xk)[1]
        nt = n_threads()
        dx: Optional[Tensor] = None
        if needs[0]:
            # Every rank's input needs its gradient alike, so every rank joins the all-reduce.
            dxa, dgamma, dbeta = sync_batch_norm_backward(
                dya, xa, ctx.mean, ctx.invstd, vector(weight),
                all_reduce=torch_all_reduce(ctx.process_group), axis=axis, n_threads=nt)
            dx = from_kernel(dxa, axis, ctx.input_dtype)
        elif xa.size == 0:
            C = xk[0].shape[1]
            dgamma, dbeta = np.zeros(C), np.zeros(C)
        else:
            dgamma, dbeta = _training.backward_sums(dya, xa, ctx.mean, ctx.invstd, axis=axis,
                                                    n_threads=nt)
        gw = _compute.param_grad(dgamma if needs[1] else None,
                                 None if weight is None else weight.dtype)
        gb = _compute.param_grad(dbeta if needs[2] else None,
                                 None if bias is None else bias.dtype)
        return dx, gw, gb, None


@torch.compiler.disable
def _sync_forward(input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                  running_mean: Optional[Tensor], running_var: Optional[Tensor], eps: float,
                  momentum: float, group: Any) -> Tensor:
    """The synchronized forward, eager even inside torch.compile (a collective per call)."""
    if input.dtype not in NATIVE and input.dtype not in HALF:
        raise TypeError(f"SyncBatchNorm on the CPU: expected float16, bfloat16, float32 "
                        f"or float64 input, got {input.dtype}")
    out: Tensor = _SyncBatchNormFunction.apply(input, weight, bias, running_mean, running_var,
                                               eps, momentum, group)
    return out


class SyncBatchNorm(_BatchNorm):
    """``torch.nn.SyncBatchNorm`` for CPU tensors over ``torch.distributed`` (gloo).

    The same constructor (``num_features, eps, momentum, affine, track_running_stats,
    process_group, device, dtype, *, bias``), parameters, buffers and ``state_dict``. In
    training mode, with a process group of more than one rank, every rank normalizes its
    part of the batch with the statistics of the whole batch: the ranks all-gather their
    ``(count, mean, m2)`` states and merge them in rank order, so every rank gets the same
    bits (batch sizes may differ between ranks, and a rank may hold an empty batch). The
    backward all-reduces ``sum(dy)``, ``sum(dy * xhat)`` and the counts, so each rank's input
    gradient is its slice of the whole batch's. ``weight.grad`` and ``bias.grad`` are this
    rank's own, as with torch's SyncBatchNorm: DistributedDataParallel sums them. Every rank
    must call forward and backward together, as for any collective.

    Otherwise (eval mode, one rank, no process group) it is ``BatchNorm*d`` on bnfast, and
    non-CPU input runs torch's own SyncBatchNorm forward. Use ``convert_sync_batchnorm`` to
    convert a model. The synchronized forward stays eager under ``torch.compile`` (the rest
    of the model compiles around it).

    It is not a subclass of ``torch.nn.SyncBatchNorm``: DistributedDataParallel refuses
    those on CPU modules ("SyncBatchNorm layers only work with GPU modules").
    """

    __module__ = "bnfast.torch"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 process_group: Any = None, device: Any = None, dtype: Any = None, *,
                 bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype, bias=bias)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _check_non_zero_input_channels(self, input: Tensor) -> None:
        if input.size(1) == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")

    def _group(self) -> Any:
        """The process group to synchronize over, or None when there is nothing to sync."""
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group if self.process_group else dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def forward(self, input: Tensor) -> Tensor:
        if not isinstance(input, Tensor) or input.device.type != "cpu":
            return torch.nn.SyncBatchNorm.forward(self, input)  # type: ignore[arg-type]
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        group = self._group()
        if group is None:
            return layer_forward(self, input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            if self.num_batches_tracked is None:
                raise AssertionError("num_batches_tracked must not be None")
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        track = self.track_running_stats
        check_eps(float(self.eps), True)
        return _sync_forward(input, self.weight, self.bias,
                             self.running_mean if track else None,
                             self.running_var if track else None, float(self.eps), factor,
                             group)

    @classmethod
    def convert_sync_batchnorm(cls, module: torch.nn.Module,
                               process_group: Any = None) -> torch.nn.Module:
        """``convert_sync_batchnorm`` (the module function) as a class method, like torch's."""
        from .convert import convert_sync_batchnorm

        return convert_sync_batchnorm(module, process_group)
