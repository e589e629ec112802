"""The functional API: validate once, make the (outer, C, inner) view, call one kernel."""
import warnings

import numpy as np

from . import _kernels
from ._validation import (
    as_array,
    channel_shape,
    channel_vector,
    check_bool,
    check_eps,
    check_momentum,
    check_n_threads,
    check_out,
    contiguous,
    direct_out,
    dtype_policy,
    running_buffer,
    running_stats,
)

__all__ = ["moments", "moments_state", "merge_moments", "batch_norm_forward",
           "batch_norm_inference", "batch_norm_backward"]


def _buffers(a, shape3, work, out, inputs):
    """(x3, y3, direct): the kernel's view of ``a``, the buffer it writes, and whether that
    buffer is ``out`` itself.

    When the kernel can write straight into ``out`` and ``a`` must be copied anyway (strided,
    byte-swapped, another dtype), the copy is made into ``out`` and the kernel runs in place,
    so no temporary the size of the input is made.
    """
    if out is not None and direct_out(out, inputs, work):
        y3 = out.reshape(shape3)
        if a.dtype == work and a.flags.c_contiguous:
            return a.reshape(shape3), y3, True
        if not any(np.may_share_memory(out, i) for i in inputs):
            np.copyto(out, a, casting="unsafe")
            return y3, y3, True
        return contiguous(a, work, shape3), y3, True
    return contiguous(a, work, shape3), np.empty(shape3, dtype=work), False


def _finish(y3, shape, odt, out, direct):
    """The user's result from the kernel's buffer: ``out`` itself when given."""
    if out is not None:
        if not direct:
            np.copyto(out, y3.reshape(shape), casting="unsafe")
        return out
    y = y3.reshape(shape)
    return y if y.dtype == odt else y.astype(odt)


def _check_training_size(m, C, shape):
    if C > 0 and m <= 1:
        if m == 0:
            raise ValueError(f"Expected a non-empty batch when training, got input size {shape}")
        raise ValueError("Expected more than 1 value per channel when training, "
                         f"got input size {shape}")


def moments(x, axis=1, ddof=0, *, n_threads=None):
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
        Threads to use; None is the OpenMP default (OMP_NUM_THREADS, threadpoolctl).

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
    nt = check_n_threads(n_threads)
    if isinstance(ddof, bool) or not isinstance(ddof, (int, float, np.integer, np.floating)):
        raise ValueError(f"ddof: expected a real number, got {ddof!r}")
    try:  # a float: m - ddof on an unsigned NumPy integer would wrap around
        ddof = float(ddof)
    except OverflowError:
        raise ValueError(f"ddof: expected a real number within float64's range, "
                         f"got {ddof!r:.40}") from None
    m = outer * inner
    mean = np.empty(C)
    m2 = np.empty(C)
    if C == 0:
        return mean, m2
    if m == 0:
        warnings.warn("Mean of empty slice", RuntimeWarning, stacklevel=2)
        mean.fill(np.nan)
        m2.fill(np.nan)
        return mean, m2
    _kernels.moments(contiguous(a, work, (outer, C, inner)), mean, m2, nt)
    dof = m - ddof
    if dof <= 0:
        warnings.warn("Degrees of freedom <= 0 for slice", RuntimeWarning, stacklevel=2)
        with np.errstate(divide="ignore", invalid="ignore"):
            return mean, m2 / 0.0
    m2 /= dof
    return mean, m2


def moments_state(x, axis=1, *, skipna=False, sample_weight=None, n_threads=None):
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
    nt = check_n_threads(n_threads)
    skipna = check_bool(skipna, "skipna")
    w = None
    if sample_weight is not None:
        if a.ndim != 2 or inner != 1:
            raise ValueError("sample_weight: only for 2-D x (samples, channels) with axis=1")
        w = as_array(sample_weight, "sample_weight")
        if w.shape != (outer,):
            raise ValueError(f"sample_weight: expected shape ({outer},), got shape {w.shape}")
        w = np.ascontiguousarray(w, dtype=np.float64)
    count = np.empty(C)
    mean = np.empty(C)
    m2 = np.empty(C)
    if not skipna and w is None:
        count.fill(outer * inner)
        if outer * inner == 0:
            mean.fill(0.0)
            m2.fill(0.0)
        elif C:
            _kernels.moments(contiguous(a, work, (outer, C, inner)), mean, m2, nt)
        return count, mean, m2
    if inner == 1:
        rows = contiguous(a, work, (outer, C))
    else:
        # Samples of one channel are spread out: gather them as (outer * inner, C) rows.
        rows = np.ascontiguousarray(
            np.moveaxis(a.reshape(outer, C, inner), 1, 2).reshape(outer * inner, C), dtype=work)
    _kernels.moments_masked(rows, w, count, mean, m2, nt)
    if not skipna:
        # Without skipna a NaN poisons its channel, as in the other kernels.
        poisoned = np.isnan(rows).any(axis=0)
        if poisoned.any():
            count[poisoned] = outer * inner if w is None else w.sum()
            mean[poisoned] = np.nan
            m2[poisoned] = np.nan
    return count, mean, m2


def merge_moments(states):
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
    merged = None
    for i, state in enumerate(states):
        try:
            count, mean, m2 = state
        except (TypeError, ValueError):
            raise ValueError(f"states[{i}]: expected a (count, mean, m2) triple") from None
        if count is None or mean is None or m2 is None:
            raise ValueError(f"states[{i}]: expected a (count, mean, m2) triple of arrays, "
                             f"got None")
        try:
            mean = np.array(mean, dtype=np.float64, ndmin=1)
            count = np.asarray(count, np.float64)
        except OverflowError:  # a Python int beyond float64
            raise ValueError(f"states[{i}]: expected real numbers within float64's range") \
                from None
        C = mean.shape[0]
        if mean.ndim != 1:
            raise ValueError(f"states[{i}]: expected mean of shape (C,), got {mean.shape}")
        count = np.ascontiguousarray(np.broadcast_to(count, (C,)))
        m2 = channel_vector(m2, C, f"states[{i}] m2")
        if merged is None:
            merged = (count.copy(), mean.copy(), m2.copy())
            continue
        if C != merged[1].shape[0]:
            raise ValueError(f"states[{i}]: expected {merged[1].shape[0]} channels, got {C}")
        _kernels.merge_states(*merged, count, mean, m2)
    if merged is None:
        raise ValueError("states: expected at least one (count, mean, m2) state")
    return merged


def batch_norm_forward(x, gamma=None, beta=None, *, axis=1, eps=1e-5, running_mean=None,
                       running_var=None, momentum=0.1, out=None, n_threads=None):
    """Batch normalization in training mode: normalize with the batch's own statistics.

    ``y = (x - mean) / sqrt(var + eps) * gamma + beta`` per channel, where ``mean`` and the
    biased ``var`` are taken over every axis but ``axis``.

    Parameters
    ----------
    x : array_like
        Real input: float32 and float64 natively, float16 computed in float32, integers and
        bool in float64. 1-D input is a single channel.
    gamma, beta : array_like of shape (C,), optional
        Per-channel scale and shift (default 1 and 0).
    axis : int or None, default 1
        The channel axis (``-1`` for channels-last layouts).
    eps : float, default 1e-5
        Added to the variance, inside the square root.
    running_mean, running_var : ndarray of shape (C,), optional
        Float buffers updated in place, as PyTorch does:
        ``running_mean = (1 - momentum) * running_mean + momentum * mean`` and
        ``running_var = (1 - momentum) * running_var + momentum * var * m / (m - 1)``
        (the unbiased variance), m being the number of elements per channel.
    momentum : float in [0, 1], default 0.1
    out : ndarray, optional
        Where to write y: the shape of ``x`` and the output dtype; ``out=x`` is in place.
    n_threads : int or None, default None
        Threads to use; None is the OpenMP default. Results do not depend on it.

    Returns
    -------
    y : ndarray
        Of x's dtype (float64 for integer input); ``out`` when given.
    mean, invstd : ndarray of float64, shape (C,)
        The batch mean and ``1 / sqrt(var + eps)``, as ``batch_norm_backward`` takes them.

    Raises
    ------
    ValueError
        With one value per channel ("Expected more than 1 value per channel when
        training"), an empty batch, arguments of the wrong shape or dtype kind, ``eps < 0``,
        ``momentum`` outside [0, 1], or a bad ``out``. Nothing is modified then.
    TypeError
        For complex, object, string or datetime input.

    Examples
    --------
    >>> y, mean, invstd = batch_norm_forward([1, 4, 6, 8, 10, 9])
    >>> round(float(y.mean()), 12), round(float(y.var()), 4)
    (0.0, 1.0)
    """
    fast = _kernels.forward_train_fast(x, gamma, beta, axis, eps, running_mean, running_var,
                                       momentum, out, n_threads)
    if fast is not None:  # the plain case, recognized and computed without Python between
        return fast
    a = as_array(x)
    outer, C, inner = channel_shape(a, axis)
    work, odt = dtype_policy(a.dtype)
    eps = check_eps(eps)
    momentum = check_momentum(momentum)
    nt = check_n_threads(n_threads)
    g = channel_vector(gamma, C, "gamma")
    b = channel_vector(beta, C, "beta")
    rm, rm_back = running_buffer(running_mean, C, "running_mean")
    rv, rv_back = running_buffer(running_var, C, "running_var")
    if out is not None:
        check_out(out, a.shape, odt)
    _check_training_size(outer * inner, C, a.shape)
    mean = np.empty(C)
    invstd = np.empty(C)
    x3, y3, direct = _buffers(a, (outer, C, inner), work, out, (a,))
    try:
        _kernels.forward_train(x3, y3, g, b, eps, mean, invstd, rm, rv, momentum, nt)
    finally:
        # Also when KeyboardInterrupt is raised as the kernel returns: running statistics
        # kept in a float64 copy are then updated whole, like those the kernel writes itself.
        if rm_back:
            running_mean[...] = rm
        if rv_back:
            running_var[...] = rv
    return _finish(y3, a.shape, odt, out, direct), mean, invstd


def batch_norm_inference(x, running_mean, running_var, gamma=None, beta=None, *, axis=1,
                         eps=1e-5, out=None, n_threads=None):
    """Batch normalization in inference mode: normalize with given (running) statistics.

    ``y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta`` per channel.

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
        Where to write y; ``out=x`` is in place.
    n_threads : int or None, default None

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
    fast = _kernels.forward_infer_fast(x, running_mean, running_var, gamma, beta, axis, eps,
                                       out, n_threads)
    if fast is not None:  # the plain case, recognized and computed without Python between
        return fast
    a = as_array(x)
    outer, C, inner = channel_shape(a, axis)
    work, odt = dtype_policy(a.dtype)
    eps = check_eps(eps)
    nt = check_n_threads(n_threads)
    rm, rv = running_stats(running_mean, running_var, C)
    g = channel_vector(gamma, C, "gamma")
    b = channel_vector(beta, C, "beta")
    if out is not None:
        check_out(out, a.shape, odt)
    x3, y3, direct = _buffers(a, (outer, C, inner), work, out, (a,))
    _kernels.forward_infer(x3, y3, rm, rv, g, b, eps, nt)
    return _finish(y3, a.shape, odt, out, direct)


def batch_norm_backward(dy, x, mean, invstd, gamma=None, *, axis=1, out=None, n_threads=None):
    """Gradients of training-mode batch normalization.

    With ``xhat = (x - mean) * invstd``: ``dbeta = sum(dy)``, ``dgamma = sum(dy * xhat)`` and
    ``dx = gamma * invstd / m * (m * dy - dbeta - xhat * dgamma)``, sums over all axes but
    the channel axis, m elements per channel.

    Parameters
    ----------
    dy : array_like
        Upstream gradient, the shape of ``x``.
    x : array_like
        The forward input.
    mean, invstd : array_like of shape (C,)
        As returned by ``batch_norm_forward``.
    gamma : array_like of shape (C,), optional
        The forward scale (default 1).
    axis : int or None, default 1
    out : ndarray, optional
        Where to write dx; ``out=dy`` and ``out=x`` work in place.
    n_threads : int or None, default None

    Returns
    -------
    dx : ndarray
        Of the inputs' dtype (float64 for integers); ``out`` when given.
    dgamma, dbeta : ndarray of float64, shape (C,)

    Examples
    --------
    >>> x = [[1.0, 2.0], [3.0, 5.0]]
    >>> y, mean, invstd = batch_norm_forward(x, eps=0)
    >>> dx, dgamma, dbeta = batch_norm_backward([[1.0, 0.0], [0.0, 0.0]], x, mean, invstd)
    >>> dbeta.tolist()
    [1.0, 0.0]
    """
    fast = _kernels.backward_fast(dy, x, mean, invstd, gamma, axis, out, n_threads)
    if fast is not None:  # the plain case, recognized and computed without Python between
        return fast
    a = as_array(x, "x")
    g_in = as_array(dy, "dy")
    if g_in.shape != a.shape:
        raise ValueError(f"dy: expected the shape of x {a.shape}, got shape {g_in.shape}")
    outer, C, inner = channel_shape(a, axis)
    work, odt = dtype_policy(np.result_type(a.dtype, g_in.dtype))
    nt = check_n_threads(n_threads)
    if mean is None or invstd is None:
        raise ValueError(f"mean, invstd: expected arrays of shape ({C},), got None")
    mu = channel_vector(mean, C, "mean")
    inv = channel_vector(invstd, C, "invstd")
    g = channel_vector(gamma, C, "gamma")
    if out is not None:
        check_out(out, a.shape, odt)
    shape3 = (outer, C, inner)
    x3 = contiguous(a, work, shape3)
    dy3, dx3, direct = _buffers(g_in, shape3, work, out, (a, g_in))
    dgamma = np.empty(C)
    dbeta = np.empty(C)
    _kernels.backward(dy3, x3, dx3, mu, inv, g, dgamma, dbeta, nt)
    return _finish(dx3, a.shape, odt, out, direct), dgamma, dbeta


def _training_stats_from_state(state, eps, running_mean, running_var, momentum, shape):
    """Training-mode ``(mean, var, invstd)`` of a merged Welford state ``(count, mean, m2)``.

    For statistics no single kernel call saw (dask chunks, several processes): the checks and
    the running-statistics rule of ``batch_norm_forward`` (running_var receives the unbiased
    variance), applied to the merged state. The running buffers are updated in place, and only
    once every check has passed. ``shape`` is the global input's, for the error message.
    """
    count, mean, m2 = state
    C = mean.shape[0]
    eps = check_eps(eps)
    momentum = check_momentum(momentum)
    rm, rm_back = running_buffer(running_mean, C, "running_mean")
    rv, rv_back = running_buffer(running_var, C, "running_var")
    m = float(count[0]) if C else 0.0
    _check_training_size(m, C, shape)
    var = m2 / count
    with np.errstate(divide="ignore"):  # eps=0 on a constant channel: inf, as the kernel
        invstd = 1.0 / np.sqrt(var + eps)
    # The kernel's arithmetic (float64, then stored in the buffer's dtype).
    if rm is not None:
        rm[...] = (1.0 - momentum) * rm.astype(np.float64) + momentum * mean
    if rv is not None:
        rv[...] = (1.0 - momentum) * rv.astype(np.float64) + momentum * (m2 * (1.0 / (m - 1.0)))
    if rm_back:
        running_mean[...] = rm
    if rv_back:
        running_var[...] = rv
    return mean, var, invstd
