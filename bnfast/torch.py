"""bnfast inside PyTorch models on the CPU: batch norm layers, a functional and SyncBatchNorm.

``import bnfast`` never imports PyTorch; ``import bnfast.torch`` does.

- ``batch_norm``: ``torch.nn.functional.batch_norm`` computed by bnfast's kernels, with
  autograd.
- ``BatchNorm1d``, ``BatchNorm2d``, ``BatchNorm3d``: subclasses of torch's layers (the same
  constructor, parameters, buffers and ``state_dict``) whose forward calls ``batch_norm``.
  Keyword-only options after torch's arguments (plain attributes, not in the ``state_dict``):
  ``activation=None | "relu"`` with ``forward(input, residual=None)`` giving
  ``relu(bn(input) + residual)`` in one fused pass (training and eval mode);
  ``virtual_batch_size=k`` (ghost batch norm) and ``renorm=True, r_max=3.0, d_max=5.0``
  (batch renormalization, r and d held constant in the backward), both in training mode
  only (eval mode is plain batch norm). The activation combines with neither variant, nor
  the variants with each other; renorm needs ``track_running_stats``; a residual has the
  input's shape, dtype and device, and is not taken with a variant in training mode.
- ``SyncBatchNorm``: torch's ``SyncBatchNorm`` for CPU tensors over ``torch.distributed``
  (gloo): the statistics and the input gradient are those of the whole batch over the ranks.
- ``convert(module)`` swaps torch's batch norm layers of a model for these;
  ``convert_sync_batchnorm(module, process_group)`` swaps them for ``SyncBatchNorm``.

What runs where. CPU tensors of float32 and float64 are handed to the kernels without a copy:
contiguous tensors as they are, channels-last tensors (any tensor whose channel dimension is
the innermost, e.g. ``torch.channels_last``) as (N, ..., C) arrays, and the output keeps the
input's memory format. float16 and bfloat16 are computed in float32 (converted, computed,
converted back); any other strided tensor is made contiguous first. Everything bnfast does
not compute is passed to PyTorch's own batch norm unchanged, so it behaves (and raises)
exactly as PyTorch: non-CPU tensors, tensor subclasses with ``__torch_function__``, empty
batches, inputs of fewer than 2 dimensions, dtype mixes PyTorch rejects, momentum outside
[0, 1], and JIT tracing. The kernels run on ``torch.get_num_threads()`` threads; their
results do not depend on that number.

The fused activation and residual on non-CPU tensors (or anything else bnfast passes to
PyTorch) run as PyTorch's batch norm followed by ``+ residual`` and ``relu``: the same math.
``virtual_batch_size`` and ``renorm`` are computed by bnfast's CPU kernels only and raise
NotImplementedError for input they do not serve (non-CPU tensors, for instance).

Higher-order gradients (``create_graph=True``: gradient penalties, Hessian-vector
products) are exact: the first-order backward still runs on the kernels, and its own
derivative is that of the batch norm backward formula in float64 PyTorch operations
(``bnfast._torch_grad``). SyncBatchNorm's backward has no such derivative and raises
RuntimeError when one is asked for. The layers cannot be scripted with TorchScript.
"""
from __future__ import annotations

import numbers
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from . import _training
from ._torch_grad import (
    BackwardFunction,
    BackwardSpec,
    NotTwiceDifferentiable,
    records_graph,
)
from ._functional import batch_norm_backward, batch_norm_forward, batch_norm_inference
from ._validation import check_activation, check_bool, check_int
from ._variants import batch_renorm_forward, check_renorm_limits
from .distributed import (
    sync_batch_norm_backward,
    sync_batch_norm_forward,
    torch_all_gather,
    torch_all_reduce,
)

__all__ = ["batch_norm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm",
           "convert", "convert_sync_batchnorm"]

_NATIVE = (torch.float32, torch.float64)
_HALF = (torch.float16, torch.bfloat16)


# ---- Tensors as arrays -----------------------------------------------------------------------

def _channels_last(t: Tensor) -> bool:
    """True when ``t`` is laid out (N, ..., C) in memory but not (N, C, ...)."""
    return t.dim() >= 3 and not t.is_contiguous() and t.movedim(1, -1).is_contiguous()


def _compute_layout(t: Tensor) -> Tensor:
    """``t`` (detached) in float32/float64 and in a layout the kernels read without a copy."""
    t = t.detach()
    if t.dtype in _HALF:
        t = t.float()  # keeps a dense tensor's strides (memory format)
    if t.is_neg():
        t = t.resolve_neg()
    if not (t.is_contiguous() or _channels_last(t)):
        t = t.contiguous()
    return t


def _array(t: Tensor) -> Tuple[NDArray[Any], int]:
    """The C-contiguous NumPy view of a tensor from ``_compute_layout``, and its channel axis."""
    if _channels_last(t):
        return t.movedim(1, -1).numpy(), -1
    return t.numpy(), 1


def _like(g: Tensor, x: Tensor) -> Tensor:
    """The gradient ``g`` in the dtype and memory layout of ``x`` (a copy only if needed)."""
    g = g.detach()
    if g.is_neg():
        g = g.resolve_neg()
    if g.dtype == x.dtype and (g.is_contiguous() if x.is_contiguous()
                               else g.movedim(1, -1).is_contiguous()):
        return g
    return torch.empty_like(x).copy_(g)


def _vector(t: Optional[Tensor]) -> Optional[NDArray[Any]]:
    """A per-channel parameter as a NumPy array (a view for float32/float64 tensors)."""
    if t is None:
        return None
    t = t.detach()
    if t.dtype not in _NATIVE or t.is_neg():
        t = t.to(torch.float64)
    return t.numpy()


class _RunningBuffer:
    """A running statistic as a NumPy array the kernels update in place.

    A view of the tensor itself for float32 and float64; for float16 and bfloat16 a float32
    copy, written back by ``write_back``.
    """

    def __init__(self, t: Optional[Tensor]) -> None:
        self.tensor = t
        self.copy: Optional[Tensor] = None
        if t is None:
            self.array: Optional[NDArray[Any]] = None
        elif t.dtype in _NATIVE and not t.is_neg():
            self.array = t.detach().numpy()
        else:
            self.copy = t.detach().float()
            self.array = self.copy.numpy()

    def write_back(self) -> None:
        if self.copy is not None and self.tensor is not None:
            with torch.no_grad():
                self.tensor.copy_(self.copy)


def _n_threads() -> int:
    return max(1, torch.get_num_threads())


def _from_array(a: NDArray[Any], axis: int) -> Tensor:
    """A NumPy result of ``_array``'s layout as an (N, C, ...) tensor, without a copy."""
    t = torch.from_numpy(a)
    return t.movedim(-1, 1) if axis == -1 else t


# ---- When bnfast computes --------------------------------------------------------------------

def _is_unit_real(value: object) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and 0.0 <= float(value) <= 1.0)


def _handled(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
             weight: Optional[Tensor], bias: Optional[Tensor], training: bool,
             momentum: object) -> bool:
    """True when bnfast computes this call as PyTorch would; False hands it to PyTorch."""
    if type(input) is not torch.Tensor or input.device.type != "cpu":
        return False
    dtype = input.dtype
    if dtype not in _NATIVE and dtype not in _HALF:
        return False
    if input.dim() < 2 or input.numel() == 0 or torch.jit.is_tracing():
        return False
    if (running_mean is None) != (running_var is None):
        return False
    if not training and running_mean is None:
        return False
    if not isinstance(momentum, numbers.Real) or isinstance(momentum, bool):
        return False
    if training and running_mean is not None and not _is_unit_real(momentum):
        return False
    C = input.shape[1]
    others = [t for t in (running_mean, running_var, weight, bias) if t is not None]
    for t in others:
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or t.shape != (C,):
            return False
    dtypes = {t.dtype for t in others}
    # PyTorch's rule: one dtype throughout, or half-precision input with float32 parameters.
    return dtypes <= {dtype} or (dtype in _HALF and dtypes <= {torch.float32})


def _check_batch_size(input: Tensor) -> None:
    size = input.size()
    values = size[0]
    for s in size[2:]:
        values *= s
    if values == 1:
        raise ValueError("Expected more than 1 value per channel when training, "
                         f"got input size {size}")


def _check_eps(eps: float, training: bool) -> None:
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")


def _weight_grads(dgamma: NDArray[np.float64], dbeta: NDArray[np.float64],
                  weight: Optional[Tensor], bias: Optional[Tensor],
                  needs: Sequence[bool]) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    gw = (torch.from_numpy(dgamma).to(weight.dtype)
          if needs[1] and weight is not None else None)
    gb = torch.from_numpy(dbeta).to(bias.dtype) if needs[2] and bias is not None else None
    return gw, gb


# ---- Autograd functions ----------------------------------------------------------------------

class _BatchNormFunction(torch.autograd.Function):
    """Batch norm by the kernels; saves the batch (or running) ``mean`` and ``invstd``."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                running_mean: Optional[Tensor], running_var: Optional[Tensor], training: bool,
                momentum: float, eps: float) -> Tensor:
        x = _compute_layout(input)
        xa, axis = _array(x)
        y = torch.empty_like(x)
        ya, _ = _array(y)
        gamma, beta = _vector(weight), _vector(bias)
        rm, rv = _RunningBuffer(running_mean), _RunningBuffer(running_var)
        n = _n_threads()
        if training:
            try:
                _, mean, invstd = batch_norm_forward(
                    xa, gamma, beta, axis=axis, eps=eps, running_mean=rm.array,
                    running_var=rv.array, momentum=float(momentum), out=ya, n_threads=n)
            finally:
                rm.write_back()
                rv.write_back()
        else:
            assert rm.array is not None and rv.array is not None
            batch_norm_inference(xa, rm.array, rv.array, gamma, beta, axis=axis, eps=eps,
                                 out=ya, n_threads=n)
            mean = rm.array.astype(np.float64)
            invstd = 1.0 / np.sqrt(rv.array.astype(np.float64) + eps)
        # input itself is saved (in-place changes are detected, and a recorded backward
        # connects to its history); x, its compute layout, is kept for the kernels.
        ctx.save_for_backward(input, weight, bias)
        ctx.x = x
        ctx.mean, ctx.invstd, ctx.training, ctx.eps = mean, invstd, training, eps
        ctx.input_dtype = input.dtype
        return y if y.dtype == input.dtype else y.to(input.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tuple[Optional[Tensor], ...]:
        input, weight, bias = ctx.saved_tensors
        needs = ctx.needs_input_grad

        def first_order() -> Tuple[Optional[Tensor], ...]:
            return _BatchNormFunction.kernel_backward(ctx, grad_output, weight, bias, needs)

        if records_graph(grad_output, input, weight):
            spec = BackwardSpec(ctx.mean, ctx.invstd, ctx.eps, ctx.training)
            dx, gw, gb, _ = BackwardFunction.apply(grad_output, input, weight, None, spec,
                                                   first_order)
        else:
            dx, gw, gb, _ = first_order()
        return dx, gw, gb, None, None, None, None, None

    @staticmethod
    def kernel_backward(ctx: Any, grad_output: Tensor, weight: Optional[Tensor],
                        bias: Optional[Tensor], needs: Sequence[bool]
                        ) -> Tuple[Optional[Tensor], ...]:
        """(dx, dweight, dbias, None) by the kernels."""
        x = ctx.x
        dy = _like(grad_output, x)
        xa, axis = _array(x)
        dya, _ = _array(dy)
        gamma = _vector(weight)
        n = _n_threads()
        dx: Optional[Tensor] = None
        if ctx.training and needs[0]:
            dx = torch.empty_like(x)
            _, dgamma, dbeta = batch_norm_backward(dya, xa, ctx.mean, ctx.invstd, gamma,
                                                   axis=axis, out=_array(dx)[0], n_threads=n)
        elif needs[1] or needs[2]:
            dgamma, dbeta = _training.backward_sums(dya, xa, ctx.mean, ctx.invstd, axis=axis,
                                                    n_threads=n)
        else:
            dgamma = dbeta = np.zeros(0)
        if not ctx.training and needs[0]:
            # Fixed statistics: dx = dy * gamma * invstd, the inference kernel with scale only.
            scale = ctx.invstd if gamma is None else ctx.invstd * gamma
            C = scale.shape[0]
            dx = torch.empty_like(x)
            batch_norm_inference(dya, np.zeros(C), np.ones(C), scale, axis=axis, eps=0.0,
                                 out=_array(dx)[0], n_threads=n)
        if dx is not None and dx.dtype != ctx.input_dtype:
            dx = dx.to(ctx.input_dtype)
        gw, gb = _weight_grads(dgamma, dbeta, weight, bias, needs)
        return dx, gw, gb, None


class _SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm with statistics and gradient sums over a process group."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                running_mean: Optional[Tensor], running_var: Optional[Tensor], eps: float,
                momentum: float, process_group: Any) -> Tensor:
        x = _compute_layout(input)
        xa, axis = _array(x)
        rm, rv = _RunningBuffer(running_mean), _RunningBuffer(running_var)
        try:
            ya, mean, invstd = sync_batch_norm_forward(
                xa, _vector(weight), _vector(bias), all_gather=torch_all_gather(process_group),
                axis=axis, eps=eps, running_mean=rm.array, running_var=rv.array,
                momentum=float(momentum), n_threads=_n_threads())
        finally:
            rm.write_back()
            rv.write_back()
        y = _from_array(ya, axis)
        ctx.save_for_backward(input, weight, bias)
        ctx.x = x
        ctx.mean, ctx.invstd = mean, invstd
        ctx.process_group, ctx.input_dtype = process_group, input.dtype
        return y if y.dtype == input.dtype else y.to(input.dtype)

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
                        bias: Optional[Tensor], needs: Sequence[bool]
                        ) -> Tuple[Optional[Tensor], ...]:
        """(dx, dweight, dbias, None) by the kernels and the group's all-reduce."""
        x = ctx.x
        dy = _like(grad_output, x)
        xa, axis = _array(x)
        dya, _ = _array(dy)
        n = _n_threads()
        dx: Optional[Tensor] = None
        if needs[0]:
            # Every rank's input needs its gradient alike, so every rank joins the all-reduce.
            dx = torch.empty_like(x)
            _, dgamma, dbeta = sync_batch_norm_backward(
                dya, xa, ctx.mean, ctx.invstd, _vector(weight),
                all_reduce=torch_all_reduce(ctx.process_group), axis=axis,
                out=_array(dx)[0], n_threads=n)
            if dx.dtype != ctx.input_dtype:
                dx = dx.to(ctx.input_dtype)
        elif x.numel() == 0:
            C = x.shape[1]
            dgamma, dbeta = np.zeros(C), np.zeros(C)
        else:
            dgamma, dbeta = _training.backward_sums(dya, xa, ctx.mean, ctx.invstd, axis=axis,
                                                    n_threads=n)
        gw, gb = _weight_grads(dgamma, dbeta, weight, bias, needs)
        return dx, gw, gb, None


class _OptionsFunction(torch.autograd.Function):
    """Batch norm with the layers' options, by the NumPy functional API: the fused
    ``relu(bn(x) + residual)`` (training and eval), ghost batch norm and batch
    renormalization (training only). Differentiable with respect to input, weight, bias and
    residual."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                residual: Optional[Tensor], running_mean: Optional[Tensor],
                running_var: Optional[Tensor], training: bool, momentum: float, eps: float,
                activation: Optional[str], virtual_batch_size: Optional[int],
                renorm: Optional[Tuple[float, float]]) -> Tensor:
        x = _compute_layout(input)
        xa, axis = _array(x)
        y = torch.empty_like(x)
        ya, _ = _array(y)
        res = None if residual is None else _like(residual, x)
        ra = None if res is None else _array(res)[0]
        gamma, beta = _vector(weight), _vector(bias)
        rm, rv = _RunningBuffer(running_mean), _RunningBuffer(running_var)
        n = _n_threads()
        kw: dict = {}
        if training:
            try:
                if renorm is not None:
                    assert rm.array is not None and rv.array is not None
                    _, mean, invstd, r, d = batch_renorm_forward(
                        xa, rm.array, rv.array, gamma, beta, r_max=renorm[0], d_max=renorm[1],
                        axis=axis, eps=eps, momentum=float(momentum), out=ya, n_threads=n)
                    kw = {"renorm": (r, d)}
                else:
                    _, mean, invstd = batch_norm_forward(
                        xa, gamma, beta, axis=axis, eps=eps, running_mean=rm.array,
                        running_var=rv.array, momentum=float(momentum), out=ya, n_threads=n,
                        activation=activation, residual=ra,
                        virtual_batch_size=virtual_batch_size)
                    if virtual_batch_size is not None:
                        kw = {"virtual_batch_size": virtual_batch_size}
            finally:
                rm.write_back()
                rv.write_back()
        else:
            assert rm.array is not None and rv.array is not None
            batch_norm_inference(xa, rm.array, rv.array, gamma, beta, axis=axis, eps=eps,
                                 out=ya, n_threads=n, activation=activation, residual=ra)
            mean = rm.array.astype(np.float64)
            invstd = 1.0 / np.sqrt(rv.array.astype(np.float64) + eps)
        out = y if y.dtype == input.dtype else y.to(input.dtype)
        if activation is not None and out is y:
            ctx.save_for_backward(input, weight, bias, y)  # the output: in-place changes detected
            ctx.y = None
        else:
            ctx.save_for_backward(input, weight, bias, None)
            ctx.y = y if activation is not None else None
        ctx.x = x
        ctx.mean, ctx.invstd, ctx.training, ctx.kw = mean, invstd, training, kw
        ctx.eps = eps
        ctx.activation, ctx.input_dtype = activation, input.dtype
        ctx.residual_dtype = None if residual is None else residual.dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tuple[Optional[Tensor], ...]:
        input, weight, bias, y = ctx.saved_tensors
        if y is None:
            y = ctx.y
        needs = ctx.needs_input_grad

        def first_order() -> Tuple[Optional[Tensor], ...]:
            return _OptionsFunction.kernel_backward(ctx, grad_output, weight, bias, y, needs)

        if records_graph(grad_output, input, weight):
            r = ctx.kw.get("renorm")
            spec = BackwardSpec(ctx.mean, ctx.invstd, ctx.eps, ctx.training,
                                relu=ctx.activation == "relu",
                                residual=ctx.residual_dtype is not None,
                                virtual_batch_size=ctx.kw.get("virtual_batch_size"),
                                renorm=None if r is None else (r[0], r[1]))
            dx, gw, gb, gr = BackwardFunction.apply(grad_output, input, weight, y, spec,
                                                    first_order)
        else:
            dx, gw, gb, gr = first_order()
        return dx, gw, gb, gr, None, None, None, None, None, None, None, None

    @staticmethod
    def kernel_backward(ctx: Any, grad_output: Tensor, weight: Optional[Tensor],
                        bias: Optional[Tensor], y: Optional[Tensor], needs: Sequence[bool]
                        ) -> Tuple[Optional[Tensor], ...]:
        """(dx, dweight, dbias, dresidual) by the kernels."""
        x = ctx.x
        dy = _like(grad_output, x)
        xa, axis = _array(x)
        dya, _ = _array(dy)
        ya = None if y is None else _array(y)[0]
        gamma = _vector(weight)
        n = _n_threads()
        dx: Optional[Tensor] = None
        g: Optional[Tensor] = None  # the gradient reaching bn(x) + residual
        if ctx.training:
            dx = torch.empty_like(x)
            want_g = needs[3] and not ctx.kw
            res = batch_norm_backward(dya, xa, ctx.mean, ctx.invstd, gamma, axis=axis,
                                      out=_array(dx)[0], n_threads=n,
                                      activation=ctx.activation, y=ya,
                                      return_dresidual=want_g, **ctx.kw)
            dgamma, dbeta = res[1], res[2]
            if want_g:
                g = _from_array(res[3], axis)
        else:
            # Fixed statistics: g = dy * (y > 0), dx = g * gamma * invstd (the inference
            # kernel with scale only), dgamma = sum(g * xhat), dbeta = sum(g).
            g = dy if y is None else torch.where(y > 0, dy, torch.zeros((), dtype=dy.dtype))
            ga = _array(_like(g, x))[0]
            dgamma, dbeta = _training.backward_sums(ga, xa, ctx.mean, ctx.invstd, axis=axis,
                                                    n_threads=n)
            if needs[0]:
                scale = ctx.invstd if gamma is None else ctx.invstd * gamma
                C = scale.shape[0]
                dx = torch.empty_like(x)
                batch_norm_inference(ga, np.zeros(C), np.ones(C), scale, axis=axis, eps=0.0,
                                     out=_array(dx)[0], n_threads=n)
        if dx is not None and dx.dtype != ctx.input_dtype:
            dx = dx.to(ctx.input_dtype)
        if not needs[0]:
            dx = None
        gr = None
        if needs[3] and g is not None:
            gr = g if g.dtype == ctx.residual_dtype else g.to(ctx.residual_dtype)
        gw, gb = _weight_grads(dgamma, dbeta, weight, bias, needs)
        return dx, gw, gb, gr


# ---- The functional --------------------------------------------------------------------------

def batch_norm(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """``torch.nn.functional.batch_norm`` computed by bnfast's kernels.

    The same arguments, result and errors. In training mode the batch statistics normalize
    and ``running_mean``/``running_var`` (when given) are updated in place with ``momentum``
    (running_var with the unbiased variance); otherwise the running statistics normalize.
    Differentiable with respect to ``input``, ``weight`` and ``bias``, to any order. Calls bnfast cannot serve as PyTorch would (see the module's
    docstring) go to ``torch.nn.functional.batch_norm``.

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
    if training:
        _check_batch_size(input)
    if isinstance(eps, numbers.Real):
        _check_eps(float(eps), training)
    if not (_handled(input, running_mean, running_var, weight, bias, training, momentum)
            and isinstance(eps, numbers.Real)):
        return F.batch_norm(input, running_mean, running_var, weight, bias, training,
                            momentum, eps)
    out = _BatchNormFunction.apply(input, weight, bias, running_mean, running_var,
                                   bool(training), momentum, float(eps))
    return out


# ---- Layers ----------------------------------------------------------------------------------

def _layer_forward(module: _BatchNorm, input: Tensor,
                   residual: Optional[Tensor] = None) -> Tensor:
    """``_BatchNorm.forward`` with bnfast's ``batch_norm`` (the same steps, in the same order),
    and the options of ``_CPUForward`` (activation, residual, virtual_batch_size, renorm)."""
    module._check_input_dim(input)
    activation = getattr(module, "activation", None)
    k = getattr(module, "virtual_batch_size", None)
    renorm = getattr(module, "renorm", False)
    variant = module.training and (renorm or k is not None)
    if residual is not None:
        _check_residual(residual, input)
        if variant:
            raise ValueError("residual: not with renorm or virtual_batch_size in training "
                             "mode (those compute plain batch norm; add the residual after "
                             "the layer)")
    if module.training and k is not None and input.dim() >= 1 and input.shape[0] % k:
        n = input.shape[0]
        raise ValueError(f"virtual_batch_size: {k} does not divide the batch size {n} "
                         f"(input.shape[0]); expected a divisor of {n}")
    factor = 0.0 if module.momentum is None else module.momentum
    if module.training and module.track_running_stats:
        if module.num_batches_tracked is not None:
            module.num_batches_tracked.add_(1)
            if module.momentum is None:  # cumulative moving average
                factor = 1.0 / float(module.num_batches_tracked)
    if module.training:
        bn_training = True
    else:
        bn_training = module.running_mean is None and module.running_var is None
    track = not module.training or module.track_running_stats
    running_mean = module.running_mean if track else None
    running_var = module.running_var if track else None
    if activation is None and residual is None and not variant:
        return batch_norm(input, running_mean, running_var, module.weight, module.bias,
                          bn_training, factor, module.eps)
    eps = module.eps
    if bn_training:
        _check_batch_size(input)
    _check_eps(float(eps), bn_training)
    if not _handled(input, running_mean, running_var, module.weight, module.bias,
                    bn_training, factor):
        if variant:
            raise NotImplementedError(
                "virtual_batch_size and renorm are computed by bnfast's CPU kernels only: "
                f"this input ({input.device.type} {input.dtype}, {type(input).__name__}) or "
                "these parameters are not served by them")
        # Torch's batch norm, then the same epilogue in separate operations.
        y = F.batch_norm(input, running_mean, running_var, module.weight, module.bias,
                         bn_training, factor, eps)
        if residual is not None:
            y = y + residual
        return F.relu(y) if activation == "relu" else y
    limits: Optional[Tuple[float, float]] = None
    if module.training and renorm:
        limits = (getattr(module, "r_max"), getattr(module, "d_max"))  # floats (checked)
    out: Tensor = _OptionsFunction.apply(
        input, module.weight, module.bias, residual, running_mean, running_var, bn_training,
        factor, float(eps), activation, k if module.training else None, limits)
    return out


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


class _CPUForward:
    """The drop-in layers' options and forward: bnfast's kernels for CPU input, torch's own
    operations for any other device.

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
        plain = (getattr(self, "activation", None) is None and residual is None
                 and getattr(self, "virtual_batch_size", None) is None
                 and not getattr(self, "renorm", False))
        if input.device.type != "cpu" and plain:
            return super().forward(input)  # type: ignore[misc]
        return _layer_forward(self, input, residual)  # type: ignore[arg-type]


class BatchNorm1d(_CPUForward, torch.nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` computed by bnfast on the CPU (input (N, C) or (N, C, L)).

    The same constructor, parameters, buffers, ``state_dict`` and behaviour; non-CPU input
    runs torch's own forward.
    """


class BatchNorm2d(_CPUForward, torch.nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` computed by bnfast on the CPU (input (N, C, H, W)).

    The same constructor, parameters, buffers, ``state_dict`` and behaviour; non-CPU input
    runs torch's own forward. channels_last input gives channels_last output, without copies.
    """


class BatchNorm3d(_CPUForward, torch.nn.BatchNorm3d):
    """``torch.nn.BatchNorm3d`` computed by bnfast on the CPU (input (N, C, D, H, W)).

    The same constructor, parameters, buffers, ``state_dict`` and behaviour; non-CPU input
    runs torch's own forward.
    """


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
    convert a model.

    It is not a subclass of ``torch.nn.SyncBatchNorm``: DistributedDataParallel refuses
    those on CPU modules ("SyncBatchNorm layers only work with GPU modules").
    """

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

    def forward(self, input: Tensor) -> Tensor:
        if input.device.type != "cpu":
            return torch.nn.SyncBatchNorm.forward(self, input)  # type: ignore[arg-type]
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            if self.num_batches_tracked is None:
                raise AssertionError("num_batches_tracked must not be None")
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        if self.training:
            bn_training = True
        else:
            bn_training = self.running_mean is None and self.running_var is None
        track = not self.training or self.track_running_stats
        running_mean = self.running_mean if track else None
        running_var = self.running_var if track else None
        need_sync = (bn_training and self.training and dist.is_available()
                     and dist.is_initialized())
        group = None
        if need_sync:
            group = self.process_group if self.process_group else dist.group.WORLD
            need_sync = dist.get_world_size(group) > 1
        if not need_sync:
            return batch_norm(input, running_mean, running_var, self.weight, self.bias,
                              bn_training, factor, self.eps)
        _check_eps(float(self.eps), True)
        if input.dtype not in _NATIVE and input.dtype not in _HALF:
            raise TypeError(f"SyncBatchNorm on the CPU: expected float16, bfloat16, float32 "
                            f"or float64 input, got {input.dtype}")
        return _SyncBatchNormFunction.apply(input, self.weight, self.bias, running_mean,
                                            running_var, float(self.eps), factor, group)

    @classmethod
    def convert_sync_batchnorm(cls, module: torch.nn.Module,
                               process_group: Any = None) -> torch.nn.Module:
        """``convert_sync_batchnorm`` (the module function) as a class method, like torch's."""
        return convert_sync_batchnorm(module, process_group)


# ---- Converting models -----------------------------------------------------------------------

def _swap(module: _BatchNorm, new: _BatchNorm) -> _BatchNorm:
    """``new`` given ``module``'s parameters and buffers (the same tensors) and mode."""
    if module.affine:
        new.weight = module.weight
        new.bias = module.bias
    new.running_mean = module.running_mean
    new.running_var = module.running_var
    new.num_batches_tracked = module.num_batches_tracked
    new.train(module.training)
    if hasattr(module, "qconfig"):
        new.qconfig = module.qconfig
    return new


def _new_like(module: _BatchNorm, cls: type, **extra: Any) -> _BatchNorm:
    # Built on the meta device (nothing allocated): every tensor is then module's own.
    return cls(module.num_features, module.eps, module.momentum, module.affine,
               module.track_running_stats, device="meta", bias=module.bias is not None,
               **extra)


_SWAPS: dict = {torch.nn.BatchNorm1d: BatchNorm1d, torch.nn.BatchNorm2d: BatchNorm2d,
                torch.nn.BatchNorm3d: BatchNorm3d}


def convert(module: torch.nn.Module) -> torch.nn.Module:
    """Swap every ``torch.nn.BatchNorm1d/2d/3d`` (and ``SyncBatchNorm``) of a model for bnfast's.

    The new layers keep the old ones' parameters and buffers (the same tensors, so their
    values, ``requires_grad``, device, dtype and an optimizer's references stay), and their
    train/eval mode. Only layers of exactly those classes are swapped: a subclass of them
    may change their behaviour, and is left alone.

    Returns
    -------
    torch.nn.Module
        ``module`` itself with its layers swapped, or, when ``module`` is itself a batch norm
        layer, the new layer.

    Examples
    --------
    >>> import torch, bnfast.torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    >>> model = bnfast.torch.convert(model)
    >>> type(model[1]).__module__, isinstance(model[1], torch.nn.BatchNorm2d)
    ('bnfast.torch', True)
    """
    out = module
    if type(module) in _SWAPS:
        out = _swap(module, _new_like(module, _SWAPS[type(module)]))  # type: ignore[arg-type]
    elif type(module) is torch.nn.SyncBatchNorm:
        out = _swap(module, _new_like(module, SyncBatchNorm,  # type: ignore[arg-type]
                                      process_group=module.process_group))
    for name, child in module.named_children():
        out.add_module(name, convert(child))
    return out


def convert_sync_batchnorm(module: torch.nn.Module,
                           process_group: Any = None) -> torch.nn.Module:
    """Swap every batch norm layer of a model for bnfast's ``SyncBatchNorm``.

    As ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: every ``_BatchNorm`` (torch's
    ``BatchNorm1d/2d/3d``, ``SyncBatchNorm`` and bnfast's) becomes a ``SyncBatchNorm`` over
    ``process_group`` (default: the whole world) that keeps the old layer's parameters,
    buffers (the same tensors) and mode.

    Returns
    -------
    torch.nn.Module
        ``module`` with its layers swapped, or the new layer when ``module`` is one.
    """
    out = module
    if isinstance(module, _BatchNorm):
        out = _swap(module, _new_like(module, SyncBatchNorm, process_group=process_group))
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, process_group))
    return out
