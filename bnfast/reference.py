"""Slow, obviously-correct float64 NumPy reference for batch normalization.

This module is the oracle: the tests and the self-check of ``python -m bnfast``
compare the fast kernels against it. It never takes part in the fast path and
imports nothing from the rest of bnfast.

Every function casts its inputs to float64, moves the channel axis to the end
and reshapes to a 2-D ``(m, C)`` array (``m`` elements per channel), so each
column is one channel. A 1-D input is a single channel. Mean and variance are
computed in two passes (mean first, then the mean of squared deviations).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "moments",
    "batch_norm_forward",
    "batch_norm_inference",
    "batch_norm_backward",
    "batch_renorm_forward",
    "batch_renorm_backward",
    "ghost_batch_norm_forward",
    "ghost_batch_norm_backward",
    "relu_residual",
    "batch_norm_backward_relu",
]

_ACCEPTED_KINDS = "biuf"

F64Array = NDArray[np.float64]


def _to_float64(a: ArrayLike, name: str) -> F64Array:
    a = np.asarray(a)
    if a.dtype.kind not in _ACCEPTED_KINDS:
        raise TypeError(f"{name} must have a real numeric dtype, got {a.dtype}")
    return a.astype(np.float64)


def _channels_last(x: ArrayLike, axis: Any
                   ) -> tuple[F64Array, Callable[[F64Array], F64Array]]:
    """Return ``(x2, restore)``: x2 is a new float64 ``(m, C)`` array and
    ``restore(y2)`` maps an ``(m, C)`` array back to x's shape and axis order."""
    x = _to_float64(x, "x")
    if x.ndim == 0:
        raise ValueError("x must have at least 1 dimension, got a 0-d array")
    if x.ndim == 1:
        if axis not in (None, 0, -1, 1):
            raise np.exceptions.AxisError(axis, 1, "axis")
        shape = x.shape
        return x.reshape(-1, 1), lambda y2: y2.reshape(shape)
    axis = _normalize_axis(axis, x.ndim)
    moved = np.moveaxis(x, axis, -1)
    moved_shape = moved.shape
    channels = moved_shape[-1]
    m = int(np.prod(moved_shape[:-1], dtype=np.int64))
    x2 = moved.reshape(m, channels)

    def restore(y2: F64Array) -> F64Array:
        return np.moveaxis(y2.reshape(moved_shape), -1, axis)

    return x2, restore


def _normalize_axis(axis: Any, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise np.exceptions.AxisError(axis, ndim, "axis")
    return axis % ndim


def _per_channel(a: ArrayLike | None, channels: int, name: str,
                 default: float | None) -> F64Array:
    if a is None:
        if default is None:
            raise ValueError(f"{name} is required: an array of shape ({channels},)")
        return np.full(channels, default, dtype=np.float64)
    a = _to_float64(a, name)
    if a.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},), got {a.shape}")
    return a


def _column_sums(a2: F64Array) -> F64Array:
    # Sum each column of an (m, C) array along a contiguous row of a (C, m)
    # copy, so NumPy uses pairwise summation.
    return np.ascontiguousarray(a2.T).sum(axis=1)


def _mean_and_m2(x2: F64Array) -> tuple[F64Array, F64Array]:
    m = x2.shape[0]
    mean = _column_sums(x2) / m
    m2 = _column_sums((x2 - mean) ** 2)
    return mean, m2


def moments(x: ArrayLike, axis: int | None = 1, ddof: float = 0
            ) -> tuple[F64Array, F64Array]:
    """Per-channel mean and variance.

    Parameters
    ----------
    x : array_like
        Input of a real numeric dtype; a 1-D input is one channel.
    axis : int, optional
        The channel axis.
    ddof : int, optional
        Delta degrees of freedom: the variance is ``M2 / (m - ddof)``.

    Returns
    -------
    mean, var : ndarray
        float64 arrays of shape ``(C,)``. As in NumPy, an empty channel or
        ``m - ddof <= 0`` gives NaN or inf with a RuntimeWarning.
    """
    x2, _ = _channels_last(x, axis)
    mean, m2 = _mean_and_m2(x2)
    var = m2 / max(x2.shape[0] - ddof, 0)
    return mean, var


def batch_norm_forward(x: ArrayLike, gamma: ArrayLike | None = None,
                       beta: ArrayLike | None = None, axis: int | None = 1, eps: float = 1e-5,
                       running_mean: ArrayLike | None = None,
                       running_var: ArrayLike | None = None, momentum: float = 0.1
                       ) -> tuple[F64Array, F64Array, F64Array,
                                  F64Array | None, F64Array | None]:
    """Training-mode batch normalization.

    Parameters
    ----------
    x : array_like
        Input; a 1-D input is one channel.
    gamma, beta : array_like of shape (C,), optional
        Scale and shift; None means ones and zeros.
    axis : int, optional
        The channel axis.
    eps : float, optional
        Added to the biased variance inside the square root.
    running_mean, running_var : array_like of shape (C,), optional
        Running statistics; they are not modified: the updated values are
        returned as new arrays.
    momentum : float, optional
        Weight of the batch statistics in the running statistics update.

    Returns
    -------
    y : ndarray
        float64 output with x's shape.
    mean, invstd : ndarray
        float64 ``(C,)``: batch mean and ``1 / sqrt(var + eps)`` with the
        biased variance.
    new_running_mean, new_running_var : ndarray or None
        The updated running statistics (unbiased variance), or None where the
        corresponding argument was None.

    Raises
    ------
    ValueError
        If a channel has fewer than 2 values.
    """
    x2, restore = _channels_last(x, axis)
    m, channels = x2.shape
    if m <= 1:
        raise ValueError(
            "Expected more than 1 value per channel when training, "
            f"got input size {np.shape(x)}")
    gamma = _per_channel(gamma, channels, "gamma", 1.0)
    beta = _per_channel(beta, channels, "beta", 0.0)
    mean, m2 = _mean_and_m2(x2)
    var = m2 / m
    invstd = 1.0 / np.sqrt(var + eps)
    y = restore((x2 - mean) * invstd * gamma + beta)

    new_running_mean = None
    if running_mean is not None:
        running_mean = _per_channel(running_mean, channels, "running_mean", 0.0)
        new_running_mean = (1.0 - momentum) * running_mean + momentum * mean
    new_running_var = None
    if running_var is not None:
        running_var = _per_channel(running_var, channels, "running_var", 1.0)
        unbiased = m2 / (m - 1)
        new_running_var = (1.0 - momentum) * running_var + momentum * unbiased
    return y, mean, invstd, new_running_mean, new_running_var


def batch_norm_inference(x: ArrayLike, running_mean: ArrayLike, running_var: ArrayLike,
                         gamma: ArrayLike | None = None, beta: ArrayLike | None = None,
                         axis: int | None = 1, eps: float = 1e-5) -> F64Array:
    """Inference-mode batch normalization with given statistics.

    Parameters
    ----------
    x : array_like
        Input; a 1-D input is one channel.
    running_mean, running_var : array_like of shape (C,)
        Statistics to normalize with.
    gamma, beta : array_like of shape (C,), optional
        Scale and shift; None means ones and zeros.
    axis : int, optional
        The channel axis.
    eps : float, optional
        Added to running_var inside the square root.

    Returns
    -------
    y : ndarray
        float64 ``(x - running_mean) / sqrt(running_var + eps) * gamma + beta``
        with x's shape (empty for an empty x).
    """
    x2, restore = _channels_last(x, axis)
    channels = x2.shape[1]
    running_mean = _per_channel(running_mean, channels, "running_mean", None)
    running_var = _per_channel(running_var, channels, "running_var", None)
    gamma = _per_channel(gamma, channels, "gamma", 1.0)
    beta = _per_channel(beta, channels, "beta", 0.0)
    invstd = 1.0 / np.sqrt(running_var + eps)
    return restore((x2 - running_mean) * invstd * gamma + beta)


def batch_norm_backward(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                        gamma: ArrayLike | None = None, axis: int | None = 1
                        ) -> tuple[F64Array, F64Array, F64Array]:
    """Gradients of training-mode batch normalization.

    Parameters
    ----------
    dy : array_like
        Upstream gradient, with x's shape.
    x : array_like
        The forward input.
    mean, invstd : array_like of shape (C,)
        Saved batch statistics from the forward pass.
    gamma : array_like of shape (C,), optional
        Scale; None means ones.
    axis : int, optional
        The channel axis.

    Returns
    -------
    dx : ndarray
        float64 gradient with x's shape.
    dgamma, dbeta : ndarray
        float64 ``(C,)`` gradients of gamma and beta.
    """
    if np.shape(dy) != np.shape(x):
        raise ValueError(
            f"dy must have the shape of x {np.shape(x)}, got {np.shape(dy)}")
    x2, restore = _channels_last(x, axis)
    dy2, _ = _channels_last(dy, axis)
    m, channels = x2.shape
    mean = _per_channel(mean, channels, "mean", None)
    invstd = _per_channel(invstd, channels, "invstd", None)
    gamma = _per_channel(gamma, channels, "gamma", 1.0)
    xhat = (x2 - mean) * invstd
    dbeta = _column_sums(dy2)
    dgamma = _column_sums(dy2 * xhat)
    with np.errstate(divide="ignore", invalid="ignore"):
        dx2 = gamma * invstd / m * (m * dy2 - dbeta - xhat * dgamma)
    return restore(dx2), dgamma, dbeta


def batch_renorm_forward(x: ArrayLike, running_mean: ArrayLike, running_var: ArrayLike,
                         gamma: ArrayLike | None = None, beta: ArrayLike | None = None,
                         r_max: float = 3.0, d_max: float = 5.0, axis: int | None = 1,
                         eps: float = 1e-5, momentum: float = 0.1
                         ) -> tuple[F64Array, F64Array, F64Array, F64Array, F64Array,
                                    F64Array, F64Array]:
    """Batch renormalization (Ioffe, 2017) in training mode.

    Parameters
    ----------
    x : array_like
        Input; a 1-D input is one channel.
    running_mean, running_var : array_like of shape (C,)
        Running statistics before the call; not modified.
    gamma, beta : array_like of shape (C,), optional
        Scale and shift; None means ones and zeros.
    r_max, d_max : float
        Clipping limits of r and d.
    axis, eps, momentum
        As in ``batch_norm_forward``.

    Returns
    -------
    y : ndarray
        float64 ``((x - mean) / sigma_B * r + d) * gamma + beta``.
    mean, invstd : ndarray
        float64 ``(C,)``: batch mean and ``1 / sigma_B``, ``sigma_B = sqrt(var + eps)``
        with the biased variance.
    r, d : ndarray
        float64 ``(C,)``: ``clip(sigma_B / sigma, 1 / r_max, r_max)`` and
        ``clip((mean - running_mean) / sigma, -d_max, d_max)``,
        ``sigma = sqrt(running_var + eps)``.
    new_running_mean, new_running_var : ndarray
        The updated running statistics (unbiased variance).
    """
    x2, restore = _channels_last(x, axis)
    m, channels = x2.shape
    if m <= 1:
        raise ValueError(
            "Expected more than 1 value per channel when training, "
            f"got input size {np.shape(x)}")
    running_mean = _per_channel(running_mean, channels, "running_mean", None)
    running_var = _per_channel(running_var, channels, "running_var", None)
    gamma = _per_channel(gamma, channels, "gamma", 1.0)
    beta = _per_channel(beta, channels, "beta", 0.0)
    mean, m2 = _mean_and_m2(x2)
    sigma_batch = np.sqrt(m2 / m + eps)
    sigma_running = np.sqrt(running_var + eps)
    r = np.minimum(np.maximum(sigma_batch / sigma_running, 1.0 / r_max), r_max)
    d = np.minimum(np.maximum((mean - running_mean) / sigma_running, -d_max), d_max)
    xhat = (x2 - mean) / sigma_batch
    y = restore((xhat * r + d) * gamma + beta)
    new_running_mean = (1.0 - momentum) * running_mean + momentum * mean
    new_running_var = (1.0 - momentum) * running_var + momentum * (m2 / (m - 1))
    return y, mean, 1.0 / sigma_batch, r, d, new_running_mean, new_running_var


def batch_renorm_backward(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                          r: ArrayLike, d: ArrayLike, gamma: ArrayLike | None = None,
                          axis: int | None = 1) -> tuple[F64Array, F64Array, F64Array]:
    """Gradients of batch renormalization, r and d held constant.

    With ``xhat = (x - mean) * invstd`` and ``y = (xhat * r + d) * gamma + beta``: the
    gradient reaching xhat is ``dy * gamma * r``, and through mean and invstd (which depend on
    x) ``dx = invstd * (g - mean(g) - xhat * mean(g * xhat))`` with ``g = dy * gamma * r``
    (means over the channel's m elements).

    Returns
    -------
    dx : ndarray
        float64 gradient with x's shape.
    dgamma, dbeta : ndarray
        float64 ``(C,)``: ``sum(dy * (xhat * r + d))`` and ``sum(dy)``.
    """
    if np.shape(dy) != np.shape(x):
        raise ValueError(
            f"dy must have the shape of x {np.shape(x)}, got {np.shape(dy)}")
    x2, restore = _channels_last(x, axis)
    dy2, _ = _channels_last(dy, axis)
    m, channels = x2.shape
    mean = _per_channel(mean, channels, "mean", None)
    invstd = _per_channel(invstd, channels, "invstd", None)
    r = _per_channel(r, channels, "r", None)
    d = _per_channel(d, channels, "d", None)
    gamma = _per_channel(gamma, channels, "gamma", 1.0)
    xhat = (x2 - mean) * invstd
    g = dy2 * gamma * r
    dx2 = invstd * (g - _column_sums(g) / m - xhat * (_column_sums(g * xhat) / m))
    dgamma = _column_sums(dy2 * (xhat * r + d))
    dbeta = _column_sums(dy2)
    return restore(dx2), dgamma, dbeta


def _groups(x: ArrayLike, virtual_batch_size: Any) -> list[slice]:
    x = np.asarray(x)
    n = x.shape[0]
    if virtual_batch_size < 1 or n % virtual_batch_size:
        raise ValueError(f"virtual_batch_size {virtual_batch_size} does not divide the "
                         f"batch size {n}")
    return [slice(i, i + virtual_batch_size) for i in range(0, n, virtual_batch_size)]


def ghost_batch_norm_forward(x: ArrayLike, gamma: ArrayLike | None = None,
                             beta: ArrayLike | None = None, virtual_batch_size: int | None = None,
                             axis: int | None = 1, eps: float = 1e-5,
                             running_mean: ArrayLike | None = None,
                             running_var: ArrayLike | None = None, momentum: float = 0.1
                             ) -> tuple[F64Array, F64Array, F64Array,
                                        F64Array | None, F64Array | None]:
    """Ghost batch norm: training-mode batch norm per group of ``virtual_batch_size``
    consecutive samples along axis 0 (the channel axis is not 0).

    Returns
    -------
    y : ndarray
        float64, x's shape, each group normalized with its own statistics.
    mean, invstd : ndarray
        float64 ``(G, C)``: per-group mean and ``1 / sqrt(var + eps)`` (biased variance).
    new_running_mean, new_running_var : ndarray or None
        ``(1 - momentum) * running + momentum * value`` with value the mean over groups of
        the group means, and of the groups' unbiased variances; None where not given.
    """
    x = _to_float64(x, "x")
    y = np.empty_like(x)
    mean_rows: list[F64Array] = []
    invstd_rows: list[F64Array] = []
    unbiased_rows: list[F64Array] = []
    for s in _groups(x, virtual_batch_size):
        x2, restore = _channels_last(x[s], axis)
        m, channels = x2.shape
        if m <= 1:
            raise ValueError("Expected more than 1 value per channel in each virtual batch "
                             f"when training, got input size {np.shape(x)}")
        g = _per_channel(gamma, channels, "gamma", 1.0)
        b = _per_channel(beta, channels, "beta", 0.0)
        mean = _column_sums(x2) / m
        dev = x2 - mean
        m2 = _column_sums(dev * dev)
        invstd = 1.0 / np.sqrt(m2 / m + eps)
        y[s] = restore(dev * invstd * g + b)
        mean_rows.append(mean)
        invstd_rows.append(invstd)
        unbiased_rows.append(m2 / (m - 1))
    means, invstds = np.array(mean_rows), np.array(invstd_rows)
    unbiased = np.array(unbiased_rows)
    channels = means.shape[1]
    new_running_mean = new_running_var = None
    if running_mean is not None:
        rm = _per_channel(running_mean, channels, "running_mean", None)
        new_running_mean = (1.0 - momentum) * rm + momentum * _column_sums(means) / len(means)
    if running_var is not None:
        rv = _per_channel(running_var, channels, "running_var", None)
        new_running_var = ((1.0 - momentum) * rv
                           + momentum * _column_sums(unbiased) / len(unbiased))
    return y, means, invstds, new_running_mean, new_running_var


def ghost_batch_norm_backward(dy: ArrayLike, x: ArrayLike, mean: ArrayLike,
                              invstd: ArrayLike, gamma: ArrayLike | None = None,
                              virtual_batch_size: int | None = None, axis: int | None = 1
                              ) -> tuple[F64Array, F64Array | float, F64Array | float]:
    """Gradients of ghost batch norm: per group, the batch-norm gradient with the group's
    statistics (``mean``, ``invstd`` of shape ``(G, C)``); dgamma and dbeta summed over
    the groups.

    Returns
    -------
    dx : ndarray
        float64 gradient with x's shape.
    dgamma, dbeta : ndarray
        float64 ``(C,)`` (the float 0.0 for an empty batch).
    """
    if np.shape(dy) != np.shape(x):
        raise ValueError(
            f"dy must have the shape of x {np.shape(x)}, got {np.shape(dy)}")
    x = _to_float64(x, "x")
    dy = _to_float64(dy, "dy")
    mean = _to_float64(mean, "mean")
    invstd = _to_float64(invstd, "invstd")
    dx = np.empty_like(x)
    # 0.0 until the first group adds its (C,) sums (so 0.0 for an empty batch)
    dgamma: F64Array | float = 0.0
    dbeta: F64Array | float = 0.0
    for i, s in enumerate(_groups(x, virtual_batch_size)):
        x2, restore = _channels_last(x[s], axis)
        dy2, _ = _channels_last(dy[s], axis)
        m, channels = x2.shape
        g = _per_channel(gamma, channels, "gamma", 1.0)
        xhat = (x2 - mean[i]) * invstd[i]
        # dL/dxhat = dy * gamma; through the group's mean and variance:
        gh = dy2 * g
        dx[s] = restore(invstd[i] / m * (m * gh - _column_sums(gh)
                                         - xhat * _column_sums(gh * xhat)))
        dgamma = dgamma + _column_sums(dy2 * xhat)
        dbeta = dbeta + _column_sums(dy2)
    return dx, dgamma, dbeta


def relu_residual(y: ArrayLike, residual: ArrayLike | None = None,
                  activation: str | None = None) -> F64Array:
    """The fused epilogue of the forward: ``relu(y + residual)`` in float64.

    Parameters
    ----------
    y : array_like
        A batch-norm output (of ``batch_norm_forward`` or ``batch_norm_inference``).
    residual : array_like of y's shape, optional
        Added to y (no broadcasting); None adds nothing.
    activation : None or "relu"
        ``"relu"`` takes ``max(v, 0)`` (NaN stays NaN).

    Returns
    -------
    ndarray
        float64, y's shape.
    """
    v = _to_float64(y, "y")
    if residual is not None:
        r = _to_float64(residual, "residual")
        if r.shape != v.shape:
            raise ValueError(f"residual must have the shape of y {v.shape}, got {r.shape}")
        v = v + r
    if activation == "relu":
        v = np.where(v < 0, 0.0, v)
    elif activation is not None:
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    return v


def batch_norm_backward_relu(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                             y: ArrayLike, gamma: ArrayLike | None = None, axis: int | None = 1
                             ) -> tuple[F64Array, F64Array, F64Array, F64Array]:
    """Gradients of ``relu(bn(x) + residual)`` given its output ``y``.

    The upstream gradient is masked first, ``g = dy * (y > 0)``; then ``dx``, ``dgamma`` and
    ``dbeta`` are ``batch_norm_backward``'s of g, and the residual's gradient is g.

    Returns
    -------
    dx : ndarray
        float64, x's shape.
    dgamma, dbeta : ndarray
        float64 ``(C,)``.
    dresidual : ndarray
        float64 g, x's shape.
    """
    if np.shape(y) != np.shape(x):
        raise ValueError(f"y must have the shape of x {np.shape(x)}, got {np.shape(y)}")
    g = np.where(_to_float64(y, "y") > 0, _to_float64(dy, "dy"), 0.0)
    dx, dgamma, dbeta = batch_norm_backward(g, x, mean, invstd, gamma, axis)
    return dx, dgamma, dbeta, g
