"""Training-mode rules shared by the in-memory, dask and multi-process faces.

- ``check_training_size``: training needs more than one value per channel.
- ``training_stats_from_state``: the batch statistics and the running-statistics update of
  ``batch_norm_forward``, from a merged Welford state (dask chunks, several processes).
- ``backward_sums`` and ``backward_input``: ``batch_norm_backward`` in two halves, for a
  synchronized backward whose per-channel sums are all-reduced between them (SyncBatchNorm):
  ``backward_input(dy, x, mean, invstd, gamma, *backward_sums(dy, x, mean, invstd), m)``
  gives exactly the bits of ``batch_norm_backward``'s dx.
- ``backward_arguments``: the argument checks of every backward.

Each function with a compiled entry point follows the kernel contract (docs/design.md §4):
the entry point is tried with the caller's arguments, then with validated ones.
"""
from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from . import _kernels
from ._validation import (
    as_array,
    channel_shape,
    channel_vector,
    check_activation,
    check_bool,
    check_eps,
    check_momentum,
    check_out,
    check_running_pair,
    contiguous,
    dtype_policy,
    finish_output,
    kernel_result,
    kernel_threads,
    output_buffers,
    plain,
    running_buffer,
    same_shape_input,
)

__all__ = ["check_training_size", "training_stats_from_state", "backward_arguments",
           "backward_sums", "backward_input"]

_F64 = np.dtype(np.float64)
F64Array = npt.NDArray[np.float64]


def check_training_size(m: float, C: int, shape: object, where: str = "") -> None:
    """ValueError (PyTorch's messages) when channels have at most one value each.

    ``m``: values per channel; ``shape``: the input's, as the message shows it; ``where``
    narrows the message (ghost batch norm: " in each virtual batch of k").
    """
    if C > 0 and m <= 1:
        if m == 0:
            raise ValueError(f"Expected a non-empty batch when training, got input size {shape}")
        raise ValueError(f"Expected more than 1 value per channel{where} when training, "
                         f"got input size {shape}")


def training_stats_from_state(
    state: tuple[np.ndarray, np.ndarray, np.ndarray],
    eps: Any,
    running_mean: np.ndarray | None,
    running_var: np.ndarray | None,
    momentum: Any,
    shape: object,
) -> tuple[F64Array, F64Array, F64Array]:
    """Training-mode ``(mean, var, invstd)`` of a merged Welford state ``(count, mean, m2)``.

    For statistics no single kernel call saw (dask chunks, several processes): the checks and
    the running-statistics rule of ``batch_norm_forward`` (running_var receives the unbiased
    variance; the kernels' own update, so the same arithmetic), applied to the merged state.
    The running buffers are updated in place, and only once every check has passed.
    ``shape`` is the global input's, for the error message.
    """
    count, mean, m2 = state
    C = mean.shape[0]
    eps = check_eps(eps)
    momentum = check_momentum(momentum)
    check_running_pair(running_mean, running_var)
    rm, rm_back = running_buffer(running_mean, C, "running_mean")
    rv, rv_back = running_buffer(running_var, C, "running_var")
    m = float(count[0]) if C else 0.0
    check_training_size(m, C, shape)
    var = m2 / count
    with np.errstate(divide="ignore"):  # eps=0 on a constant channel: inf, as the kernel
        invstd = 1.0 / np.sqrt(var + eps)
    if rm is not None:
        kernel_result(_kernels.update_running(rm, plain(mean, _F64), momentum, 1.0),
                      "update_running")
    if rv is not None:
        kernel_result(_kernels.update_running(rv, plain(m2, _F64), momentum, 1.0 / (m - 1.0)),
                      "update_running")
    if rm_back:
        running_mean[...] = rm  # type: ignore[index]
    if rv_back:
        running_var[...] = rv  # type: ignore[index]
    return mean, var, invstd


class BackwardArguments(NamedTuple):
    """Checked arguments common to every backward (see ``backward_arguments``)."""

    x: np.ndarray          # x and dy as real ndarrays of one shape
    dy: np.ndarray
    shape3: tuple[int, int, int]
    work: np.dtype[Any]    # the dtype the kernels compute in
    odt: np.dtype[Any]     # the dtype of dx
    n_threads: int | None
    mean: F64Array
    invstd: F64Array

    @property
    def empty(self) -> bool:
        """No channel, or no element per channel: nothing for a kernel to do."""
        return self.shape3[1] == 0 or self.shape3[0] * self.shape3[2] == 0


def backward_arguments(dy: npt.ArrayLike, x: npt.ArrayLike, mean: npt.ArrayLike | None,
                       invstd: npt.ArrayLike | None, axis: Any,
                       n_threads: Any) -> BackwardArguments:
    """Check what every backward takes: x, dy of x's shape, axis, n_threads, mean, invstd."""
    a = as_array(x, "x")
    g_in = as_array(dy, "dy")
    if g_in.shape != a.shape:
        raise ValueError(f"dy: expected the shape of x {a.shape}, got shape {g_in.shape}")
    shape3 = channel_shape(a, axis)
    C = shape3[1]
    work, odt = dtype_policy(np.result_type(a.dtype, g_in.dtype))
    nt = kernel_threads(n_threads)
    if mean is None or invstd is None:
        raise ValueError(f"mean, invstd: expected arrays of shape ({C},), got None")
    mu = channel_vector(mean, C, "mean")
    inv = channel_vector(invstd, C, "invstd")
    assert mu is not None and inv is not None
    return BackwardArguments(a, g_in, shape3, work, odt, nt, mu, inv)


def relu_arguments(activation: Any, y: Any, b: BackwardArguments,
                   out: Any = None) -> tuple[str | None, np.ndarray | None]:
    """Check the fused ReLU's arguments of a backward: (activation, y as the kernels take it).

    ``y`` (the forward output) is required with ``activation="relu"`` and only then; it is
    copied when it may share memory with ``out``.
    """
    act = check_activation(activation)
    if act is not None and y is None:
        raise ValueError(f"y: the forward output is required with activation={act!r}")
    if act is None and y is not None:
        raise ValueError("y: only taken with activation='relu' (the mask y > 0)")
    y3 = None if y is None else same_shape_input(y, b.x.shape, b.work, b.shape3, "y", out)
    return act, y3


def backward_sums(dy: npt.ArrayLike, x: npt.ArrayLike, mean: npt.ArrayLike,
                  invstd: npt.ArrayLike, *, axis: int | None = 1,
                  n_threads: int | None = None, activation: str | None = None,
                  y: npt.ArrayLike | None = None) -> tuple[F64Array, F64Array]:
    """This process's per-channel backward sums ``(dgamma, dbeta)``.

    ``dgamma = sum(dy * xhat)`` and ``dbeta = sum(dy)`` with ``xhat = (x - mean) * invstd``,
    over every axis but ``axis``: the first half of ``batch_norm_backward``, with its bits.
    Arguments and errors as in ``batch_norm_backward``; an empty batch gives zeros. With
    ``activation="relu"`` and the forward output ``y``, dy is masked by ``y > 0`` first.

    Returns
    -------
    dgamma, dbeta : ndarray of float64, shape (C,)
    """
    fast = _kernels.backward_sums(dy, x, mean, invstd, axis, n_threads, activation, y)
    if fast is not None:
        return fast
    return _backward_sums_validated(dy, x, mean, invstd, axis, n_threads, activation, y)


def _backward_sums_validated(dy: Any, x: Any, mean: Any, invstd: Any, axis: Any,
                             n_threads: Any, activation: Any = None,
                             y: Any = None) -> tuple[F64Array, F64Array]:
    b = backward_arguments(dy, x, mean, invstd, axis, n_threads)
    act, y3 = relu_arguments(activation, y, b)
    if b.empty:
        return np.zeros(b.shape3[1]), np.zeros(b.shape3[1])
    x3 = contiguous(b.x, b.work, b.shape3)
    dy3 = contiguous(b.dy, b.work, b.shape3)
    return kernel_result(_kernels.backward_sums(dy3, x3, b.mean, b.invstd, 1, b.n_threads, act,
                                                y3), "backward_sums")


def _check_count(count: Any) -> float:
    """The number of elements per channel the sums were taken over: a real number > 0."""
    if isinstance(count, bool) or not isinstance(count, numbers.Real):
        raise ValueError(f"count: expected a real number > 0, got {count!r}")
    try:
        n = float(count)
    except OverflowError:
        raise ValueError(f"count: expected a real number > 0 within float64's range, "
                         f"got {count!r:.40}") from None
    if not 0.0 < n < np.inf:
        raise ValueError(f"count: expected a finite real number > 0, got {count!r}")
    return n


def backward_input(dy: npt.ArrayLike, x: npt.ArrayLike, mean: npt.ArrayLike,
                   invstd: npt.ArrayLike, gamma: npt.ArrayLike | None,
                   dgamma: npt.ArrayLike, dbeta: npt.ArrayLike, count: float, *,
                   axis: int | None = 1, out: np.ndarray | None = None,
                   n_threads: int | None = None, activation: str | None = None,
                   y: npt.ArrayLike | None = None,
                   return_dresidual: bool = False) -> Any:
    """The input gradient from per-channel sums that may cover more than this ``x``.

    ``dx = gamma * invstd / count * (count * dy - dbeta - xhat * dgamma)`` per channel, with
    ``xhat = (x - mean) * invstd``: the second half of ``batch_norm_backward``, where
    ``dgamma``, ``dbeta`` (as ``backward_sums`` returns them) and ``count`` (the number of
    elements per channel they were summed over) may have been all-reduced over processes.
    With this process's own sums and ``count = m``, dx has exactly the bits of
    ``batch_norm_backward``'s.

    Parameters
    ----------
    dy, x, mean, invstd, gamma, axis, out, n_threads
        As in ``batch_norm_backward`` (gamma None: 1; ``out=dy`` and ``out=x`` in place).
    dgamma, dbeta : array_like of shape (C,)
        ``sum(dy * xhat)`` and ``sum(dy)`` per channel.
    count : float
        Elements per channel behind the sums (> 0).
    activation, y, return_dresidual
        As in ``batch_norm_backward``: dy masked by ``y > 0``, and the masked dy returned too.

    Returns
    -------
    dx : ndarray
        Of the inputs' dtype (float64 for integers); ``out`` when given.
    dresidual : ndarray
        Only with ``return_dresidual`` (then the result is the pair ``(dx, dresidual)``).
    """
    fast = _kernels.backward_input(dy, x, mean, invstd, gamma, dgamma, dbeta, count, axis, out,
                                   n_threads, activation, y, return_dresidual)
    if fast is not None:
        return fast
    return _backward_input_validated(dy, x, mean, invstd, gamma, dgamma, dbeta, count, axis,
                                     out, n_threads, activation, y, return_dresidual)


def _backward_input_validated(dy: Any, x: Any, mean: Any, invstd: Any, gamma: Any,
                              dgamma: Any, dbeta: Any, count: Any, axis: Any, out: Any,
                              n_threads: Any, activation: Any = None, y: Any = None,
                              return_dresidual: Any = False) -> Any:
    b = backward_arguments(dy, x, mean, invstd, axis, n_threads)
    C = b.shape3[1]
    g = channel_vector(gamma, C, "gamma")
    if dgamma is None or dbeta is None:
        raise ValueError(f"dgamma, dbeta: expected arrays of shape ({C},), got None")
    dg = channel_vector(dgamma, C, "dgamma")
    db = channel_vector(dbeta, C, "dbeta")
    n = _check_count(count)
    want_dres = check_bool(return_dresidual, "return_dresidual")
    if out is not None:
        check_out(out, b.x.shape, b.odt)
    act, y3 = relu_arguments(activation, y, b, out)
    if b.empty:
        dx = out if out is not None else np.empty(b.x.shape, b.odt)
        return (dx, np.empty(b.x.shape, b.odt)) if want_dres else dx
    x3 = contiguous(b.x, b.work, b.shape3)
    dy3, dx3, direct = output_buffers(b.dy, b.shape3, b.work, out, (b.x, b.dy))
    res = kernel_result(_kernels.backward_input(dy3, x3, b.mean, b.invstd, g, dg, db, n, 1, dx3,
                                                b.n_threads, act, y3, want_dres),
                        "backward_input")
    dx = finish_output(dx3, b.x.shape, b.odt, out, direct)
    if want_dres:
        assert isinstance(res, tuple)
        return dx, res[1].reshape(b.x.shape).astype(b.odt, copy=False)
    return dx
