"""Statistics and the plain passes: the compiled entry points behind the functional API
(the kernel contract, docs/design.md §4), with no variant (ghost batch norm, renorm) on top.

Each operation first hands the caller's arguments to its compiled entry point, which computes
the plain case (contiguous native float arrays, plain vectors, ...) with no Python in
between, or returns None. The validated path (``_*_validated``) then checks every argument,
makes the plain (outer, C, inner) view with axis=1, and calls the same entry point.

The layering: ``_validation`` < ``_training`` < this module < ``_variants`` (built on these
passes) < ``_functional`` (the public entry points, which dispatch to a variant or here).
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable

import numpy as np
import numpy.typing as npt

from . import _kernels
from ._training import backward_arguments, check_training_size, relu_arguments
from ._validation import (
    as_array,
    channel_shape,
    channel_vector,
    check_activation,
    check_bool,
    check_ddof,
    check_eps,
    check_out,
    check_sample_weight,
    contiguous,
    dtype_policy,
    finish_output,
    kernel_result,
    kernel_threads,
    output_buffers,
    plain,
    running_stats,
    same_shape_input,
    training_arguments,
)

__all__ = ["moments", "moments_state", "merge_moments", "batch_norm_inference",
           "forward_train", "backward"]

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
F64Array = npt.NDArray[np.float64]


def moments(x: npt.ArrayLike, axis: int | None = 1, ddof: float = 0, *,
            n_threads: int | None = None) -> tuple[F64Array, F64Array]:
    """Per-channel mean and variance.

    Parameters
    ----------
    x : array_like
        Real input. 1-D input is a single channel.
    axis : int or None, default 1
        The channel axis; the statistics are taken over all other axes. ``None`` treats the
        whole array as one channel.
    ddof : int or float, default 0
        Delta degrees of freedom: the variance divides by ``m - ddof`` where ``m`` is the
        number of elements per channel (0: the biased variance batch norm normalizes with).
    n_threads : int or None, default None
        Threads to use; None is the default count (OMP_NUM_THREADS, threadpoolctl, else the
        process's CPU share: docs/design.md §3).

    Returns
    -------
    mean, var : ndarray of float64, shape (C,)

    Notes
    -----
    Computed by blocked Welford/Chan reductions with float64 accumulators; the result is
    bit-identical for every ``n_threads``. As in NumPy, an empty channel or ``m - ddof <= 0``
    gives NaN or inf with a RuntimeWarning.

    Examples
    --------
    >>> mean, var = moments([1, 4, 6, 8, 10, 9])
    >>> float(mean[0]), round(float(var[0]), 6)
    (6.333333333333333, 9.555556)
    """
    a = as_array(x)
    outer, C, inner = channel_shape(a, axis)
    work, _ = dtype_policy(a.dtype)
    nt = kernel_threads(n_threads)
    dof = outer * inner - check_ddof(ddof)
    if C == 0:
        return np.empty(0), np.empty(0)
    if outer * inner == 0:
        warnings.warn("Mean of empty slice", RuntimeWarning, stacklevel=2)
        return np.full(C, np.nan), np.full(C, np.nan)
    mean, m2 = kernel_result(_kernels.moments(contiguous(a, work, (outer, C, inner)), 1, nt),
                             "moments")
    if dof <= 0:
        warnings.warn("Degrees of freedom <= 0 for slice", RuntimeWarning, stacklevel=2)
        with np.errstate(divide="ignore", invalid="ignore"):
            return mean, m2 / 0.0
    m2 /= dof
    return mean, m2


def moments_state(x: npt.ArrayLike, axis: int | None = 1, *, skipna: bool = False,
                  sample_weight: npt.ArrayLike | None = None,
                  n_threads: int | None = None) -> tuple[F64Array, F64Array, F64Array]:
    """Per-channel Welford state ``(count, mean, m2)``, mergeable with ``merge_moments``.

    ``m2`` is the sum of squared deviations from ``mean``, so the variance is
    ``m2 / count`` (biased) or ``m2 / (count - 1)``. States of disjoint pieces of data merge
    exactly (Chan et al.), in any order up to rounding: that is how ``partial_fit``, Dask
    arrays and several processes get the statistics of data no single call sees.

    Parameters
    ----------
    x : array_like
        Real input; the statistics are per channel along ``axis``.
    axis : int or None, default 1
    skipna : bool, default False
        Ignore NaN values: each channel counts only its non-NaN values.
    sample_weight : array_like of shape (x.shape[0],), optional
        Weights of the samples (rows) of a 2-D ``x`` with ``axis=1`` (or -1); ``count`` is then
        the sum of the weights of the values counted.
    n_threads : int or None, default None

    Returns
    -------
    count, mean, m2 : ndarray of float64, shape (C,)

    Notes
    -----
    Channels with nothing counted get count 0, mean 0 and m2 0.

    Examples
    --------
    >>> count, mean, m2 = moments_state([[1.0, 2.0], [3.0, float("nan")]], skipna=True)
    >>> count.tolist(), mean.tolist(), m2.tolist()
    ([2.0, 1.0], [2.0, 2.0], [2.0, 0.0])
    """
    a = as_array(x)
    outer, C, inner = channel_shape(a, axis)
    work, _ = dtype_policy(a.dtype)
    nt = kernel_threads(n_threads)
    skipna = check_bool(skipna, "skipna")
    w = None
    if sample_weight is not None:
        w = plain(check_sample_weight(sample_weight, outer, a.ndim == 2 and inner == 1), _F64)
    m = outer * inner
    if C == 0 or m == 0:
        return np.full(C, float(m) if w is None else 0.0), np.zeros(C), np.zeros(C)
    if not skipna and w is None:
        mean, m2 = kernel_result(_kernels.moments(contiguous(a, work, (outer, C, inner)), 1, nt),
                                 "moments")
        return np.full(C, float(m)), mean, m2
    if work.itemsize == 2:
        work = _F32  # the weighted NaN-skipping statistics take float32 and float64 only
    if inner == 1:
        rows = contiguous(a, work, (outer, C))
    else:
        # Samples of one channel are spread out: gather them as (outer * inner, C) rows.
        rows = plain(np.moveaxis(a.reshape(outer, C, inner), 1, 2).reshape(m, C), work)
    count, mean, m2 = kernel_result(_kernels.moments_masked(rows, w, nt), "moments_masked")
    if not skipna:
        # Without skipna a NaN poisons its channel, as in the other kernels.
        poisoned = np.isnan(rows).any(axis=0)
        if poisoned.any():
            count[poisoned] = m if w is None else w.sum()
            mean[poisoned] = np.nan
            m2[poisoned] = np.nan
    return count, mean, m2


def merge_moments(
    states: Iterable[tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike]],
) -> tuple[F64Array, F64Array, F64Array]:
    """Merge Welford states ``(count, mean, m2)`` into one, exactly (Chan et al.'s formula).

    Parameters
    ----------
    states : iterable of (count, mean, m2)
        Each as returned by ``moments_state``: arrays of shape (C,) (a scalar count is
        broadcast). Merged left to right; the result does not depend on the order up to
        rounding.

    Returns
    -------
    count, mean, m2 : ndarray of float64, shape (C,)

    Examples
    --------
    >>> s1 = moments_state([1.0, 4.0, 6.0])
    >>> s2 = moments_state([8.0, 10.0, 9.0])
    >>> count, mean, m2 = merge_moments([s1, s2])
    >>> float(count[0]), round(float(mean[0]), 12), round(float(m2[0] / count[0]), 6)
    (6.0, 6.333333333333, 9.555556)
    """
    merged: tuple[F64Array, F64Array, F64Array] | None = None
    for i, state in enumerate(states):
        try:
            count_in, mean_in, m2_in = state
        except (TypeError, ValueError):
            raise ValueError(f"states[{i}]: expected a (count, mean, m2) triple") from None
        if count_in is None or mean_in is None or m2_in is None:
            raise ValueError(f"states[{i}]: expected a (count, mean, m2) triple of arrays, "
                             f"got None")
        try:
            mean = np.array(mean_in, dtype=np.float64, ndmin=1)
            count = np.asarray(count_in, np.float64)
        except OverflowError:  # a Python int beyond float64
            raise ValueError(f"states[{i}]: expected real numbers within float64's range") \
                from None
        C = mean.shape[0]
        if mean.ndim != 1:
            raise ValueError(f"states[{i}]: expected mean of shape (C,), got {mean.shape}")
        count = plain(np.broadcast_to(count, (C,)), _F64)
        m2 = channel_vector(m2_in, C, f"states[{i}] m2")
        assert m2 is not None
        if merged is None:
            merged = (count.copy(), mean.copy(), m2.copy())
            continue
        if C != merged[1].shape[0]:
            raise ValueError(f"states[{i}]: expected {merged[1].shape[0]} channels, got {C}")
        kernel_result(_kernels.merge_states(*merged, count, mean, m2), "merge_states")
    if merged is None:
        raise ValueError("states: expected at least one (count, mean, m2) state")
    return merged


def batch_norm_inference(
    x: npt.ArrayLike, running_mean: npt.ArrayLike, running_var: npt.ArrayLike,
    gamma: npt.ArrayLike | None = None, beta: npt.ArrayLike | None = None, *,
    axis: int | None = 1, eps: float = 1e-5, out: np.ndarray | None = None,
    n_threads: int | None = None, activation: str | None = None,
    residual: npt.ArrayLike | None = None,
) -> np.ndarray:
    """Batch normalization in inference mode: normalize with given (running) statistics.

    ``y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta`` per channel; then,
    in the same pass, ``y = relu(y + residual)`` with ``activation`` and ``residual`` (as in
    ``batch_norm_forward``, with the same rounding).

    Parameters
    ----------
    x : array_like
        Real input (dtypes as in ``batch_norm_forward``). An empty batch gives an empty y.
    running_mean, running_var : array_like of shape (C,)
        The statistics to normalize with (read only).
    gamma, beta : array_like of shape (C,), optional
    axis : int or None, default 1
    eps : float, default 1e-5
    out : ndarray, optional
        Where to write y; ``out=x`` and ``out=residual`` are in place.
    n_threads : int or None, default None
    activation : None or "relu", default None
    residual : array_like of x's shape, optional
        As in ``batch_norm_forward``.

    Returns
    -------
    y : ndarray
        Of x's dtype (float64 for integer input); ``out`` when given.

    Examples
    --------
    >>> y = batch_norm_inference([[1.0, 2.0], [3.0, 4.0]], [2.0, 3.0], [1.0, 1.0], eps=0)
    >>> y.tolist()
    [[-1.0, -1.0], [1.0, 1.0]]
    """
    fast = _kernels.forward_infer(x, running_mean, running_var, gamma, beta, axis, eps, out,
                                  n_threads, activation, residual)
    if fast is not None:  # the plain case, recognized and computed without Python between
        return fast
    return _forward_infer_validated(x, running_mean, running_var, gamma, beta, axis, eps, out,
                                    n_threads, activation, residual)


def _forward_infer_validated(x: Any, running_mean: Any, running_var: Any, gamma: Any,
                             beta: Any, axis: Any, eps: Any, out: Any, n_threads: Any,
                             activation: Any = None, residual: Any = None) -> np.ndarray:
    """batch_norm_inference on checked, normalized arguments (every error is raised here)."""
    a = as_array(x)
    outer, C, inner = channel_shape(a, axis)
    work, odt = dtype_policy(a.dtype)
    eps = check_eps(eps)
    nt = kernel_threads(n_threads)
    act = check_activation(activation)
    rm, rv = running_stats(running_mean, running_var, C)
    g = channel_vector(gamma, C, "gamma")
    b = channel_vector(beta, C, "beta")
    if out is not None:
        check_out(out, a.shape, odt)
    r3 = None if residual is None else same_shape_input(
        residual, a.shape, work, (outer, C, inner), "residual", out)
    if C == 0 or outer * inner == 0:
        return out if out is not None else np.empty(a.shape, odt)
    x3, y3, direct = output_buffers(a, (outer, C, inner), work, out, (a,))
    kernel_result(_kernels.forward_infer(x3, rm, rv, g, b, 1, eps, y3, nt, act, r3),
                  "forward_infer")
    return finish_output(y3, a.shape, odt, out, direct)


def forward_train(x: Any, gamma: Any, beta: Any, axis: Any, eps: Any, running_mean: Any,
                  running_var: Any, momentum: Any, out: Any, n_threads: Any,
                  activation: Any = None, residual: Any = None
                  ) -> tuple[np.ndarray, F64Array, F64Array]:
    """The plain training forward (``batch_norm_forward`` without a variant)."""
    fast = _kernels.forward_train(x, gamma, beta, axis, eps, running_mean, running_var,
                                  momentum, out, n_threads, activation, residual)
    if fast is not None:  # the plain case, recognized and computed without Python between
        return fast
    return _forward_train_validated(x, gamma, beta, axis, eps, running_mean, running_var,
                                    momentum, out, n_threads, activation, residual)


def _forward_train_validated(x: Any, gamma: Any, beta: Any, axis: Any, eps: Any,
                             running_mean: Any, running_var: Any, momentum: Any, out: Any,
                             n_threads: Any, activation: Any = None,
                             residual: Any = None) -> tuple[np.ndarray, F64Array, F64Array]:
    """batch_norm_forward on checked, normalized arguments (every error is raised here)."""
    a = as_array(x)
    outer, C, inner = channel_shape(a, axis)
    work, odt = dtype_policy(a.dtype)
    t = training_arguments(C, gamma, beta, eps, momentum, running_mean, running_var,
                           n_threads, out, a.shape, odt)
    eps, momentum, nt, g, b = t.eps, t.momentum, t.n_threads, t.gamma, t.beta
    (rm, rm_back), (rv, rv_back) = t.running_mean, t.running_var
    act = check_activation(activation)
    r3 = None if residual is None else same_shape_input(
        residual, a.shape, work, (outer, C, inner), "residual", out)
    check_training_size(outer * inner, C, a.shape)
    if C == 0:
        if outer * inner < 2:  # what the kernels have always answered here
            raise ValueError("training needs more than 1 value per channel")
        return (out if out is not None else np.empty(a.shape, odt)), np.empty(0), np.empty(0)
    x3, y3, direct = output_buffers(a, (outer, C, inner), work, out, (a,))
    try:
        res = _kernels.forward_train(x3, g, b, 1, eps, rm, rv, momentum, y3, nt, act, r3)
    finally:
        # Also when KeyboardInterrupt is raised as the kernel returns: running statistics
        # kept in a float64 copy are then updated whole, like those the kernel writes itself.
        if rm_back:
            running_mean[...] = rm
        if rv_back:
            running_var[...] = rv
    _, mean, invstd = kernel_result(res, "forward_train")
    return finish_output(y3, a.shape, odt, out, direct), mean, invstd


def backward(dy: Any, x: Any, mean: Any, invstd: Any, gamma: Any, axis: Any, out: Any,
             n_threads: Any, activation: Any = None, y: Any = None,
             return_dresidual: Any = False) -> tuple[np.ndarray, ...]:
    """The plain backward (``batch_norm_backward`` without a variant)."""
    fast = _kernels.backward(dy, x, mean, invstd, gamma, axis, out, n_threads, activation, y,
                             return_dresidual)
    if fast is not None:  # the plain case, recognized and computed without Python between
        return fast
    return _backward_validated(dy, x, mean, invstd, gamma, axis, out, n_threads, activation,
                               y, return_dresidual)


def _backward_validated(dy: Any, x: Any, mean: Any, invstd: Any, gamma: Any, axis: Any,
                        out: Any, n_threads: Any, activation: Any = None, y: Any = None,
                        return_dresidual: Any = False) -> tuple[np.ndarray, ...]:
    """batch_norm_backward on checked, normalized arguments (every error is raised here)."""
    b = backward_arguments(dy, x, mean, invstd, axis, n_threads)
    C = b.shape3[1]
    g = channel_vector(gamma, C, "gamma")
    want_dres = check_bool(return_dresidual, "return_dresidual")
    if out is not None:
        check_out(out, b.x.shape, b.odt)
    act, y3 = relu_arguments(activation, y, b, out)
    if b.empty:
        dx = out if out is not None else np.empty(b.x.shape, b.odt)
        if want_dres:
            return dx, np.zeros(C), np.zeros(C), np.empty(b.x.shape, b.odt)
        return dx, np.zeros(C), np.zeros(C)
    x3 = contiguous(b.x, b.work, b.shape3)
    dy3, dx3, direct = output_buffers(b.dy, b.shape3, b.work, out, (b.x, b.dy))
    res = kernel_result(_kernels.backward(dy3, x3, b.mean, b.invstd, g, 1, dx3, b.n_threads,
                                          act, y3, want_dres), "backward")
    dx = finish_output(dx3, b.x.shape, b.odt, out, direct)
    if want_dres:
        return dx, res[1], res[2], res[3].reshape(b.x.shape).astype(b.odt, copy=False)
    return dx, res[1], res[2]
