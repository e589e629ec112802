"""Batch renormalization and ghost batch norm, on top of the plain passes (``_plain``).

Neither has kernels of its own: batch renormalization is the batch's statistics
(``moments_state``) followed by one inference pass with folded coefficients, and ghost batch
norm is the training forward / backward called once per group of samples. The public entry
points are ``batch_renorm_forward`` and the ``virtual_batch_size=`` / ``renorm=`` keywords of
``batch_norm_forward`` and ``batch_norm_backward``, which dispatch here.

Every check runs before anything is written, so a call that raises leaves the running
statistics, ``out`` and the inputs as they were.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _kernels
from ._plain import backward, batch_norm_inference, forward_train, moments_state
from ._training import check_training_size
from ._validation import (
    as_array,
    as_float,
    channel_shape,
    channel_vector,
    check_int,
    check_n_threads,
    check_out,
    direct_out,
    dtype_policy,
    finish_output,
    kernel_result,
    plain,
    running_buffer,
    training_arguments,
)

__all__ = ["batch_renorm_forward"]

_F64 = np.dtype(np.float64)
_Stats = npt.NDArray[np.float64]
_Grads = tuple[np.ndarray, _Stats, _Stats]  # dx, dgamma, dbeta


# --- shared helpers ------------------------------------------------------------------------

def _update_running(running: np.ndarray | None, value: np.ndarray, momentum: float,
                    factor: float = 1.0) -> None:
    """``running = (1 - momentum) * running + momentum * (factor * value)`` in place.

    The one place the variants update running statistics: the kernels' own update (float64,
    then stored in the buffer's dtype), the arithmetic of ``batch_norm_forward``. Any float
    buffer (float16, strided) goes through a float64 copy written back.
    """
    if running is None:
        return
    buf, back = running_buffer(running, value.shape[0], "running statistic")
    kernel_result(_kernels.update_running(buf, plain(value, _F64), momentum, float(factor)),
                  "update_running")
    if back:
        running[...] = buf


# --- batch renormalization ----------------------------------------------------------------

def check_renorm_limits(r_max: Any, d_max: Any) -> tuple[float, float]:
    """``r_max`` (a finite real >= 1) and ``d_max`` (a finite real >= 0) as floats."""
    out = []
    for value, name, low in ((r_max, "r_max", 1.0), (d_max, "d_max", 0.0)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise ValueError(f"{name}: expected a finite real number >= {low:g}, got {value!r}")
        f = as_float(value, name)
        if not (low <= f < math.inf):
            raise ValueError(f"{name}: expected a finite real number >= {low:g}, got {value!r}")
        out.append(f)
    return out[0], out[1]


def batch_renorm_forward(
    x: npt.ArrayLike,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    gamma: npt.ArrayLike | None = None,
    beta: npt.ArrayLike | None = None,
    *,
    r_max: float,
    d_max: float,
    axis: int | None = 1,
    eps: float = 1e-5,
    momentum: float = 0.1,
    out: np.ndarray | None = None,
    n_threads: int | None = None,
) -> tuple[np.ndarray, npt.NDArray[np.float64], npt.NDArray[np.float64],
           npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Batch renormalization (Ioffe, 2017) in training mode.

    Per channel, with the batch's mean and biased variance ``var_B``,
    ``sigma_B = sqrt(var_B + eps)`` and ``sigma = sqrt(running_var + eps)`` (the running
    statistics as they were before the call)::

        r = clip(sigma_B / sigma, 1 / r_max, r_max)
        d = clip((mean_B - running_mean) / sigma, -d_max, d_max)
        y = ((x - mean_B) / sigma_B * r + d) * gamma + beta

    then the running statistics are updated as by ``batch_norm_forward`` (the running
    variance receives the unbiased batch variance). ``r_max=1, d_max=0`` is plain batch norm.
    In inference, use ``batch_norm_inference`` with the running statistics.

    Parameters
    ----------
    x : array_like
        Real input (dtypes as in ``batch_norm_forward``).
    running_mean, running_var : ndarray of shape (C,)
        Required: writeable float buffers, read for r and d, then updated in place.
        ``running_var + eps`` must be > 0.
    gamma, beta : array_like of shape (C,), optional
        Per-channel scale and shift (default 1 and 0).
    r_max : float >= 1
    d_max : float >= 0
        The clipping limits (keyword-only, required; finite). The paper's schedule (start
        at 1 and 0 and relax them during training) is up to the caller.
    axis : int or None, default 1
    eps : float, default 1e-5
    momentum : float in [0, 1], default 0.1
    out : ndarray, optional
        Where to write y: the shape of ``x`` and the output dtype; ``out=x`` is in place.
    n_threads : int or None, default None
        Threads to use; results do not depend on it.

    Returns
    -------
    y : ndarray
        Of x's dtype (float64 for integer input); ``out`` when given.
    mean, invstd : ndarray of float64, shape (C,)
        The batch mean and ``1 / sigma_B``, bit-identical to ``batch_norm_forward``'s.
    r, d : ndarray of float64, shape (C,)
        The correction; pass ``renorm=(r, d)`` to ``batch_norm_backward`` (r and d are
        constants there, as in the paper and Keras).

    Raises
    ------
    ValueError
        As ``batch_norm_forward``, and for missing running statistics, ``running_var + eps
        <= 0``, ``r_max < 1`` or ``d_max < 0``. Nothing is modified then.

    Examples
    --------
    >>> import numpy as np
    >>> rm, rv = np.zeros(1), np.ones(1)
    >>> y, mean, invstd, r, d = batch_renorm_forward([1.0, 2.0, 3.0, 4.0], rm, rv,
    ...                                              r_max=3.0, d_max=5.0, eps=0.0)
    >>> round(float(r[0]), 6), float(d[0]), float(rm[0])
    (1.118034, 2.5, 0.25)
    """
    a = as_array(x)
    outer, C, inner = channel_shape(a, axis)
    work, odt = dtype_policy(a.dtype)
    r_max, d_max = check_renorm_limits(r_max, d_max)
    t = training_arguments(C, gamma, beta, eps, momentum, running_mean, running_var,
                           n_threads, out, a.shape, odt, running_required=True)
    eps, momentum, g, b = t.eps, t.momentum, t.gamma, t.beta
    rm_buf, rv_buf = running_mean, running_var
    rm = rm_buf.astype(np.float64)  # copies: the values before the update
    rv = rv_buf.astype(np.float64)
    if not np.all(rv + eps > 0):  # also rejects NaN
        raise ValueError("running_var: expected running_var + eps > 0 in every channel")
    m = outer * inner
    check_training_size(m, C, a.shape)
    # Everything is checked: from here on nothing raises for bad input.
    xw = np.ascontiguousarray(a, dtype=work)  # one conversion (if any), for both passes
    _, mean, m2 = moments_state(xw, axis, n_threads=n_threads)
    var = m2 / float(m)  # the arithmetic of the forward kernel: same bits
    sigma_b = np.sqrt(var + eps)
    with np.errstate(divide="ignore"):
        invstd = 1.0 / sigma_b
    sigma = np.sqrt(rv + eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.clip(sigma_b / sigma, 1.0 / r_max, r_max)
        d = np.clip((mean - rm) / sigma, -d_max, d_max)
    # y = (x - mean) * (invstd * r * gamma) + (d * gamma + beta): the inference kernel with
    # running_var = 1 and eps = 0 has the scale 1 / sqrt(1) * gamma' = gamma' exactly.
    scale = invstd * r if g is None else invstd * r * g
    shift = d if g is None else d * g
    if b is not None:
        shift = shift + b
    # float16: y in float32, then rounded once to float16 (as batch_norm_forward does).
    y = batch_norm_inference(xw, mean, np.ones(C), scale, shift, axis=axis, eps=0.0,
                             out=out if odt == work else None, n_threads=n_threads)
    y = finish_output(y, a.shape, odt, out, y is out)
    _update_running(rm_buf, mean, momentum)
    # m > 1 unless there are no channels (C == 0: nothing to update).
    _update_running(rv_buf, m2, momentum, 1.0 / (m - 1.0) if m > 1 else 0.0)
    return y, mean, invstd, r, d


def _renorm_backward(dy: Any, x: Any, mean: Any, invstd: Any, gamma: Any, renorm: Any,
                     axis: int | None, out: np.ndarray | None,
                     n_threads: int | None) -> _Grads:
    """``batch_norm_backward(..., renorm=(r, d))``: the plain backward with gamma * r for dx,
    ``dgamma = r * sum(dy * xhat) + d * sum(dy)``, ``dbeta = sum(dy)``."""
    try:
        r, d = renorm
    except (TypeError, ValueError):
        raise ValueError("renorm: expected a pair (r, d) of arrays of shape (C,), as "
                         "returned by batch_renorm_forward") from None
    a = as_array(x, "x")
    _, C, _ = channel_shape(a, axis)
    if r is None or d is None:
        raise ValueError(f"renorm: expected a pair (r, d) of arrays of shape ({C},), got None")
    rv = channel_vector(r, C, "renorm r")
    dv = channel_vector(d, C, "renorm d")
    assert rv is not None and dv is not None  # neither is None (checked above)
    g = channel_vector(gamma, C, "gamma")
    g_eff = rv if g is None else g * rv
    dx, sum_dy_xhat, dbeta = backward(dy, a, mean, invstd, g_eff, axis, out, n_threads)
    # The kernel's dgamma was taken with g_eff as gamma, but it is sum(dy * xhat) whatever
    # gamma is: the renormalized dgamma follows from it and sum(dy).
    return dx, rv * sum_dy_xhat + dv * dbeta, dbeta


# --- ghost batch norm ---------------------------------------------------------------------

def _ghost_layout(a: np.ndarray, axis: Any,
                  virtual_batch_size: Any) -> tuple[int, int, int, int, int]:
    """(outer, C, inner, k, G) for ghost batch norm, or a clear error."""
    outer, C, inner = channel_shape(a, axis)
    if a.ndim >= 2 and axis is not None and axis % a.ndim == 0:
        raise ValueError("virtual_batch_size: groups are taken along axis 0, so the channel "
                         f"axis must not be 0 (got axis={axis} for input shape {a.shape})")
    k = check_int(virtual_batch_size, "virtual_batch_size", minimum=1)
    n = a.shape[0]
    if n % k:
        raise ValueError(f"virtual_batch_size: {k} does not divide the batch size {n} "
                         f"(x.shape[0]); expected a divisor of {n}")
    return outer, C, inner, k, (n // k if k else 0)


def ghost_batch_norm_forward(x: Any, gamma: Any, beta: Any, virtual_batch_size: Any, *,
                             axis: int | None, eps: Any, running_mean: Any, running_var: Any,
                             momentum: Any, out: np.ndarray | None,
                             n_threads: Any) -> tuple[np.ndarray, _Stats, _Stats]:
    """``batch_norm_forward(..., virtual_batch_size=k)``: the training forward per group of
    k samples along axis 0; running statistics updated once from the groups' averages."""
    a = as_array(x)
    outer, C, inner, k, G = _ghost_layout(a, axis, virtual_batch_size)
    work, odt = dtype_policy(a.dtype)
    t = training_arguments(C, gamma, beta, eps, momentum, running_mean, running_var,
                           n_threads, out, a.shape, odt)
    eps, momentum, g, b = t.eps, t.momentum, t.gamma, t.beta
    rm_buf, rv_buf = running_mean, running_var
    m_group = (outer * inner) // G if G else 0  # values per channel in one group
    # An empty batch is an error even without channels, as in batch_norm_forward.
    check_training_size(m_group, C if G else 1, a.shape, f" in each virtual batch of {k}")
    # Everything is checked: from here on nothing raises for bad input.
    xw = np.ascontiguousarray(a, dtype=work)  # once; a group of it is then contiguous
    if out is not None and direct_out(out, (a,), work):
        yw = out
    else:
        yw = np.empty(a.shape, dtype=work)
    mean = np.empty((G, C))
    invstd = np.empty((G, C))
    # Zeroed float64 buffers and momentum 1 give each group's mean and unbiased variance
    # straight from the kernel (0 * 0 + 1 * value is exact), with no extra pass over x.
    group_mean = np.zeros((G, C))
    group_var = np.zeros((G, C))
    for i in range(G):
        s = slice(i * k, (i + 1) * k)
        _, mean[i], invstd[i] = forward_train(xw[s], g, b, axis, eps, group_mean[i],
                                              group_var[i], 1.0, yw[s], n_threads)
    y = finish_output(yw, a.shape, odt, out, yw is out)
    _update_running(rm_buf, group_mean.mean(axis=0), momentum)
    _update_running(rv_buf, group_var.mean(axis=0), momentum)
    return y, mean, invstd


def _group_stats(v: Any, G: int, C: int, name: str) -> np.ndarray:
    if v is None:
        raise ValueError(f"{name}: expected an array of shape ({G}, {C}) (one row per virtual "
                         "batch), got None")
    arr = np.asarray(v)
    if arr.dtype.kind not in "fiub" or (arr.dtype.kind == "f" and arr.dtype.itemsize > 8):
        raise ValueError(f"{name}: expected real numbers of shape ({G}, {C}), "
                         f"got dtype {arr.dtype}")
    if arr.shape != (G, C):
        raise ValueError(f"{name}: expected shape ({G}, {C}) (one row per virtual batch), "
                         f"got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=_F64)


def ghost_batch_norm_backward(dy: Any, x: Any, mean: Any, invstd: Any, gamma: Any,
                              virtual_batch_size: Any, *, axis: int | None,
                              out: np.ndarray | None, n_threads: Any) -> _Grads:
    """``batch_norm_backward(..., virtual_batch_size=k)``: dx per group, dgamma and dbeta
    summed over the groups."""
    a = as_array(x, "x")
    g_in = as_array(dy, "dy")
    if g_in.shape != a.shape:
        raise ValueError(f"dy: expected the shape of x {a.shape}, got shape {g_in.shape}")
    outer, C, inner, k, G = _ghost_layout(a, axis, virtual_batch_size)
    work, odt = dtype_policy(np.result_type(a.dtype, g_in.dtype))
    check_n_threads(n_threads)
    mu = _group_stats(mean, G, C, "mean")
    inv = _group_stats(invstd, G, C, "invstd")
    g = channel_vector(gamma, C, "gamma")
    if out is not None:
        check_out(out, a.shape, odt)
    # Everything is checked: from here on nothing raises for bad input.
    xw = np.ascontiguousarray(a, dtype=work)
    dyw = np.ascontiguousarray(g_in, dtype=work)
    if out is not None and direct_out(out, (a, g_in), work):
        dxw = out
    else:
        dxw = np.empty(a.shape, dtype=work)
    dgamma = np.empty((G, C))
    dbeta = np.empty((G, C))
    for i in range(G):
        s = slice(i * k, (i + 1) * k)
        _, dgamma[i], dbeta[i] = backward(dyw[s], xw[s], mu[i], inv[i], g, axis, dxw[s],
                                          n_threads)
    dx = finish_output(dxw, a.shape, odt, out, dxw is out)
    return dx, dgamma.sum(axis=0), dbeta.sum(axis=0)


def variant_backward(dy: Any, x: Any, mean: Any, invstd: Any, gamma: Any, *, axis: Any,
                     out: Any, n_threads: Any, virtual_batch_size: Any,
                     renorm: Any) -> _Grads:
    """The dispatch of ``batch_norm_backward``'s ``virtual_batch_size=`` and ``renorm=``."""
    if virtual_batch_size is not None and renorm is not None:
        raise ValueError("virtual_batch_size and renorm: expected at most one of them "
                         "(batch renormalization of virtual batches is not supported)")
    if renorm is not None:
        return _renorm_backward(dy, x, mean, invstd, gamma, renorm, axis, out, n_threads)
    return ghost_batch_norm_backward(dy, x, mean, invstd, gamma, virtual_batch_size,
                                     axis=axis, out=out, n_threads=n_threads)
