"""The functional API's training forward and backward, which dispatch to batch
renormalization or ghost batch norm (``_variants``) or to the plain passes (``_plain``); and
the rest of the functional API, which ``_plain`` defines.

Each plain operation first hands the caller's arguments to its compiled entry point, which
computes the plain case with no Python in between (the kernel contract, docs/design.md §4).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ._plain import (
    F64Array,
    backward,
    batch_norm_inference,
    forward_train,
    merge_moments,
    moments,
    moments_state,
)
from ._validation import check_running_pair
from ._variants import ghost_batch_norm_forward, variant_backward

__all__ = ["moments", "moments_state", "merge_moments", "batch_norm_forward",
           "batch_norm_inference", "batch_norm_backward"]


def _plain_variant(function: str, **fused: Any) -> None:
    """ValueError when the fused activation / residual arguments come with a variant
    (virtual_batch_size=, renorm=), which computes plain batch norm only."""
    given = [name for name, value in fused.items() if value is not None and value is not False]
    if given:
        raise ValueError(f"{function}: {', '.join(given)} cannot be combined with "
                         "virtual_batch_size= or renorm= (the variants compute plain batch "
                         "norm; apply the activation and residual separately)")


def batch_norm_forward(
    x: npt.ArrayLike, gamma: npt.ArrayLike | None = None, beta: npt.ArrayLike | None = None, *,
    axis: int | None = 1, eps: float = 1e-5, running_mean: np.ndarray | None = None,
    running_var: np.ndarray | None = None, momentum: float = 0.1,
    out: np.ndarray | None = None, n_threads: int | None = None,
    activation: str | None = None, residual: npt.ArrayLike | None = None,
    virtual_batch_size: int | None = None,
) -> tuple[np.ndarray, F64Array, F64Array]:
    """Batch normalization in training mode: normalize with the batch's own statistics.

    ``y = (x - mean) / sqrt(var + eps) * gamma + beta`` per channel, where ``mean`` and the
    biased ``var`` are taken over every axis but ``axis``; then, fused into the same pass,
    ``y = relu(y + residual)`` with ``activation`` and ``residual``.

    Parameters
    ----------
    x : array_like
        Real input: float32 and float64 natively; float16 and bfloat16 (``ml_dtypes``)
        loaded and stored by the kernels, computed in float32 with float64 statistics;
        integers and bool in float64. 1-D input is a single channel.
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
        Where to write y: the shape of ``x`` and the output dtype; ``out=x`` is in place,
        and so is ``out=residual`` (a ResNet's ``y = relu(bn(x) + identity)`` into the
        identity's buffer).
    n_threads : int or None, default None
        Threads to use; None is the default count (docs/design.md §3). Results do not
        depend on it.
    activation : None or "relu", default None
        ``"relu"``: ``y = max(y, 0)`` (NaN stays NaN), after the residual.
    residual : array_like, optional
        Added to the normalized output, before the activation: exactly x's shape (no
        broadcasting), any real dtype, cast to the dtype y is computed in (float32 for
        float32 and float16 x, float64 otherwise). It may be ``x`` or ``out`` itself.
    virtual_batch_size : int, optional
        Ghost batch norm (Keras's ``virtual_batch_size``): statistics per consecutive group
        of k samples along axis 0 (k must divide ``x.shape[0]``; the channel axis must not
        be 0); ``mean``, ``invstd`` then have shape (G, C). The running statistics are
        updated once, from the mean of the group means and of the groups' unbiased variances.

    Returns
    -------
    y : ndarray
        Of x's dtype (float64 for integer input); ``out`` when given.
    mean, invstd : ndarray of float64, shape (C,)
        The batch mean and ``1 / sqrt(var + eps)``, as ``batch_norm_backward`` takes them.

    Notes
    -----
    Rounding of the fused output, in the dtype ``w`` y is computed in: ``bn(x)`` is rounded
    to ``w`` (the bits of the plain call), the residual (cast to ``w``) is added and the sum
    rounded to ``w``, then the ReLU. So ``y`` has exactly the bits of the unfused sequence
    ``y = batch_norm_forward(x, ...)[0]; y += residual; np.maximum(y, 0, out=y)`` (up to the
    sign of a zero), in one pass instead of three.

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
    check_running_pair(running_mean, running_var)  # before the fast path, which takes one
    if virtual_batch_size is not None:  # ghost batch norm (bnfast/_variants.py)
        _plain_variant("batch_norm_forward", activation=activation, residual=residual)
        return ghost_batch_norm_forward(x, gamma, beta, virtual_batch_size, axis=axis, eps=eps,
                                        running_mean=running_mean, running_var=running_var,
                                        momentum=momentum, out=out, n_threads=n_threads)
    return forward_train(x, gamma, beta, axis, eps, running_mean, running_var, momentum, out,
                         n_threads, activation, residual)


def batch_norm_backward(
    dy: npt.ArrayLike, x: npt.ArrayLike, mean: npt.ArrayLike, invstd: npt.ArrayLike,
    gamma: npt.ArrayLike | None = None, *, axis: int | None = 1,
    out: np.ndarray | None = None, n_threads: int | None = None,
    activation: str | None = None, y: npt.ArrayLike | None = None,
    return_dresidual: bool = False, virtual_batch_size: int | None = None,
    renorm: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
) -> tuple[np.ndarray, ...]:
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
        Where to write dx; ``out=dy``, ``out=x`` and ``out=y`` work in place.
    n_threads : int or None, default None
    activation : None or "relu", default None
        The forward's activation. With ``"relu"``, ``dy`` is first masked by the forward
        output, ``g = dy * (y > 0)`` (0 where y is 0 or NaN), inside the same passes, and
        dx, dgamma and dbeta are the above with g for dy.
    y : array_like of x's shape
        The forward output (``relu(bn(x) + residual)``): required with
        ``activation="relu"``, and only then.
    return_dresidual : bool, default False
        Also return the residual's gradient, g (dy itself without activation), written in
        the pass that computes dx.
    virtual_batch_size : int, optional
        Ghost batch norm, as in ``batch_norm_forward``: ``mean``, ``invstd`` of shape (G, C);
        dx per group, dgamma and dbeta summed over the groups.
    renorm : (r, d), optional
        Batch renormalization: r, d from ``batch_renorm_forward``, held constant. dx is the
        plain one with ``gamma * r``; ``dgamma = sum(dy * (xhat * r + d))``.

    Returns
    -------
    dx : ndarray
        Of the inputs' dtype (float64 for integers); ``out`` when given.
    dgamma, dbeta : ndarray of float64, shape (C,)
    dresidual : ndarray
        Only with ``return_dresidual``: of dx's dtype, a new array.

    Examples
    --------
    >>> x = [[1.0, 2.0], [3.0, 5.0]]
    >>> y, mean, invstd = batch_norm_forward(x, eps=0)
    >>> dx, dgamma, dbeta = batch_norm_backward([[1.0, 0.0], [0.0, 0.0]], x, mean, invstd)
    >>> dbeta.tolist()
    [1.0, 0.0]
    """
    if virtual_batch_size is not None or renorm is not None:  # bnfast/_variants.py
        _plain_variant("batch_norm_backward", activation=activation, y=y,
                       return_dresidual=return_dresidual)
        return variant_backward(dy, x, mean, invstd, gamma, axis=axis, out=out,
                                n_threads=n_threads, virtual_batch_size=virtual_batch_size,
                                renorm=renorm)
    return backward(dy, x, mean, invstd, gamma, axis, out, n_threads, activation, y,
                    return_dresidual)


