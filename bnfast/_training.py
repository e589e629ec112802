# TEMPORARY stand-in: replaced by the kernel branch at merge
"""The two halves of the batch-norm backward, for gradients summed over several processes.

``backward_sums`` gives the per-channel sums a rank contributes; once they are summed over the
ranks, ``backward_input`` turns the global sums into this rank's ``dx``. This stand-in computes
both in float64 NumPy; the compiled kernels replace it.
"""
from typing import Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._validation import (
    as_array,
    channel_shape,
    channel_vector,
    check_n_threads,
    check_out,
    dtype_policy,
)

__all__ = ["backward_sums", "backward_input"]


def _views(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, invstd: ArrayLike, axis: Optional[int]):
    a = as_array(x, "x")
    g = as_array(dy, "dy")
    if g.shape != a.shape:
        raise ValueError(f"dy: expected the shape of x {a.shape}, got shape {g.shape}")
    outer, C, inner = channel_shape(a, axis)
    if mean is None or invstd is None:
        raise ValueError(f"mean, invstd: expected arrays of shape ({C},), got None")
    mu = channel_vector(mean, C, "mean")
    inv = channel_vector(invstd, C, "invstd")
    shape3 = (outer, C, inner)
    x3 = np.asarray(a, dtype=np.float64).reshape(shape3)
    dy3 = np.asarray(g, dtype=np.float64).reshape(shape3)
    xhat = (x3 - mu[:, None]) * inv[:, None]
    return a, g, C, dy3, xhat


def backward_sums(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, invstd: ArrayLike, *,
                  axis: Optional[int] = 1,
                  n_threads: Optional[int] = None) -> Tuple[NDArray[np.float64],
                                                            NDArray[np.float64]]:
    """This process's ``(dgamma, dbeta) = (sum(dy * xhat), sum(dy))`` per channel (float64)."""
    check_n_threads(n_threads)
    _, _, _, dy3, xhat = _views(dy, x, mean, invstd, axis)
    return (dy3 * xhat).sum(axis=(0, 2)), dy3.sum(axis=(0, 2))


def backward_input(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                   gamma: Optional[ArrayLike], dgamma: ArrayLike, dbeta: ArrayLike,
                   count: float, *, axis: Optional[int] = 1, out: Optional[NDArray] = None,
                   n_threads: Optional[int] = None) -> NDArray:
    """``dx = gamma * invstd / count * (count * dy - dbeta - xhat * dgamma)``.

    ``dgamma``, ``dbeta`` and ``count`` (elements per channel) are the global batch's.
    """
    check_n_threads(n_threads)
    a, g, C, dy3, xhat = _views(dy, x, mean, invstd, axis)
    _, odt = dtype_policy(np.result_type(a.dtype, g.dtype))
    gam = channel_vector(gamma, C, "gamma")
    dg = channel_vector(dgamma, C, "dgamma")
    db = channel_vector(dbeta, C, "dbeta")
    inv = channel_vector(invstd, C, "invstd")
    if out is not None:
        check_out(out, a.shape, odt)
    m = float(count)
    scale = inv if gam is None else gam * inv
    with np.errstate(divide="ignore", invalid="ignore"):
        dx3 = (scale / m)[:, None] * (m * dy3 - db[:, None] - xhat * dg[:, None])
    dx = dx3.reshape(a.shape)
    if out is not None:
        np.copyto(out, dx, casting="unsafe")
        return out
    return dx.astype(odt)
