"""bnfast.dask's functions, and their dask-array side: chunk states merged in a
``dask.array.reduction`` tree, outputs built with ``map_blocks``. DataFrames and Series are
handed to bnfast/dask/_frame.py."""
from __future__ import annotations

import operator
from functools import partial
from typing import TYPE_CHECKING, Any, Union, cast, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

import dask  # bnfast/dask/__init__.py says what to install when it is missing
import dask.array as da

from .._functional import batch_norm_inference as _inference
from .._functional import merge_moments as _merge_moments
from .._functional import moments_state as _moments_state
from .._training import check_training_size, training_stats_from_state
from .._validation import (
    as_array,
    channel_shape,
    channel_vector,
    check_bool,
    check_ddof,
    check_eps,
    check_momentum,
    check_real_dtype,
    check_sample_weight,
    dtype_policy,
    is_dask_frame,
    kernel_threads,
    running_buffer,
    running_stats,
)

if TYPE_CHECKING:  # dask.dataframe (and pandas) only where a frame is given
    from typing import TypeVar

    import dask.dataframe as dd

    FrameT = TypeVar("FrameT", dd.DataFrame, dd.Series)

__all__ = ["moments", "moments_state", "batch_norm_forward", "batch_norm_inference"]

F64Array = NDArray[np.float64]
# What the functions take as x: a dask array, or anything NumPy takes (one chunk); the
# statistics also take a dask DataFrame or Series (bnfast/dask/_frame.py).
DaskArrayLike = Union[da.Array, ArrayLike]
DaskInput = Union[DaskArrayLike, "dd.DataFrame", "dd.Series"]

# One chunk's Welford state per channel, as one record: it travels through the reduction tree
# as a single NumPy array, concatenated and split like any other.
STATE_DTYPE = np.dtype([("count", np.float64), ("mean", np.float64), ("m2", np.float64)])


# -- argument handling ------------------------------------------------------------------------

def _as_dask(x: DaskArrayLike) -> da.Array:
    """``x`` as a dask array of a real dtype (NumPy arrays and lists become one chunk)."""
    if not isinstance(x, da.Array):
        return da.asarray(as_array(x))
    check_real_dtype(x.dtype)  # the TypeError of the in-memory API for non-real dtypes
    return x


def _channel_axis(x: da.Array, axis: int | None) -> int | None:
    """The channel axis of ``x`` as a non-negative index, or None when it is a single channel.

    The same rules and exceptions as the in-memory functions (1-D input and ``axis=None``:
    one channel).
    """
    channel_shape(cast(np.ndarray, x), axis)  # it reads only ndim, shape and size
    if axis is None or x.ndim == 1:
        return None
    return operator.index(axis) % x.ndim


def _n_channels(x: da.Array, ch: int | None) -> int:
    if ch is None:
        return 1
    C = x.shape[ch]
    if C != C:  # NaN: unknown chunk sizes
        raise ValueError("x: the size of the channel axis is unknown; call "
                         "x.compute_chunk_sizes() first")
    return int(C)


def _keepdims_shape(ndim: int, ch: int | None, C: int) -> tuple[int, ...]:
    return tuple(C if i == ch else 1 for i in range(ndim))


def _block_channel_axis(ndim: int, reduced: tuple[int, ...]) -> int | None:
    rest = [i for i in range(ndim) if i not in reduced]
    return rest[0] if rest else None


# -- the reduction: kernel state per chunk, merge_moments to combine --------------------------

def _pack(state: tuple[F64Array, F64Array, F64Array], shape: tuple[int, ...]) -> np.ndarray:
    count, mean, m2 = state
    packed = np.empty(mean.shape, STATE_DTYPE)
    packed["count"], packed["mean"], packed["m2"] = count, mean, m2
    return packed.reshape(shape)


def _chunk_state(block: np.ndarray, weights: np.ndarray | None = None,
                 axis: tuple[int, ...] = (), keepdims: bool = True, skipna: bool = False,
                 n_threads: int | None = None, computing_meta: bool = False) -> np.ndarray:
    """The Welford state of one chunk, shaped with the reduced axes kept (size 1)."""
    if computing_meta:
        return np.empty((0,) * block.ndim, STATE_DTYPE)
    ch = _block_channel_axis(block.ndim, axis)
    C = 1 if ch is None else block.shape[ch]
    w = None
    if weights is not None:  # (rows, channels) broadcast of the sample weights
        w = np.ascontiguousarray(weights[:, 0]) if C else np.zeros(block.shape[0])
    state = block_state(block, ch, w, skipna, n_threads)
    return _pack(state, _keepdims_shape(block.ndim, ch, C))


def block_state(block: np.ndarray, ch: int | None, w: np.ndarray | None, skipna: bool,
                n_threads: int | None) -> tuple[F64Array, F64Array, F64Array]:
    """The Welford state of one NumPy block (a chunk, a partition) by the kernels."""
    if skipna and w is None:
        # The plain kernel is several times faster than the NaN-skipping one, and a chunk
        # without NaN gets finite statistics from it; only other chunks are redone.
        state = _moments_state(block, axis=ch, n_threads=n_threads)
        if np.isfinite(state[1]).all() and np.isfinite(state[2]).all():
            return state
    return _moments_state(block, axis=ch, skipna=skipna, sample_weight=w, n_threads=n_threads)


def _merge_state(states: np.ndarray, axis: tuple[int, ...] = (), keepdims: bool = True,
                 computing_meta: bool = False) -> np.ndarray:
    """Merge the states concatenated along the reduced axes, with ``merge_moments``."""
    ch = _block_channel_axis(states.ndim, axis)
    C = 1 if ch is None else states.shape[ch]
    shape = _keepdims_shape(states.ndim, ch, C) if keepdims else ((C,) if ch is not None else ())
    if computing_meta or states.size == 0:
        return np.empty(tuple(0 for _ in shape), STATE_DTYPE)
    rows = (states if ch is None else np.moveaxis(states, ch, -1)).reshape(-1, C)
    merged = _merge_moments((r["count"], r["mean"], r["m2"]) for r in rows)
    return _pack(merged, shape)


def _state_array(x: DaskInput, axis: int | None, skipna: bool = False,
                 sample_weight: DaskInput | None = None,
                 split_every: int | dict[int, int] | None = None,
                 n_threads: int | None = None) -> da.Array:
    """The lazy per-channel state of ``x``: a dask array of STATE_DTYPE, shape (C,)."""
    if is_dask_frame(x):
        from ._frame import frame_state_array
        return frame_state_array(cast("dd.DataFrame | dd.Series", x), axis, skipna,
                                 sample_weight, split_every, n_threads)
    x = _as_dask(x)
    ch = _channel_axis(x, axis)
    _n_channels(x, ch)
    n_threads = kernel_threads(n_threads)
    skipna = check_bool(skipna, "skipna")
    weights = None
    if sample_weight is not None:
        samples_by_channels = x.ndim == 2 and ch == 1
        if samples_by_channels and any(c != c for c in x.chunks[0]):
            raise ValueError("x: unknown chunk sizes along the samples axis; call "
                             "x.compute_chunk_sizes() first")
        w = da.asarray(check_sample_weight(sample_weight, x.shape[0], samples_by_channels))
        # Row chunks of x, so that the weights never make dask rechunk x itself.
        weights = da.broadcast_to(w.astype(np.float64).rechunk((x.chunks[0],))[:, None],
                                  x.shape, chunks=x.chunks)
    reduced = tuple(i for i in range(x.ndim) if i != ch)
    state = da.reduction(
        x, partial(_chunk_state, skipna=skipna, n_threads=n_threads), _merge_state,
        combine=_merge_state, axis=reduced, keepdims=False, dtype=STATE_DTYPE,
        split_every=split_every, concatenate=True, weights=weights,
        meta=np.empty((0,) * (x.ndim - len(reduced)), STATE_DTYPE),
        name="bnfast-moments-state")
    return state if ch is not None else state.reshape((1,))


# -- public API -------------------------------------------------------------------------------

def moments_state(
    x: DaskInput, axis: int | None = 1, *, skipna: bool = False,
    sample_weight: DaskInput | None = None, split_every: int | dict[int, int] | None = None,
    n_threads: int | None = None,
) -> tuple[da.Array, da.Array, da.Array]:
    """Per-channel Welford state ``(count, mean, m2)`` of a dask array, DataFrame or Series,
    lazily.

    The kernels compute each chunk's (partition's) state (``bnfast.moments_state``) and
    ``bnfast.merge_moments`` merges them in a tree of tasks (``dask.array.reduction`` for
    arrays), so the result equals the in-memory state up to rounding, whatever the chunks.

    Parameters
    ----------
    x : dask array, dask DataFrame or Series, or array_like
        Real input, chunked any way (along the channel axis too). NumPy input becomes a
        single chunk. A DataFrame's channels are its columns (numeric ones only: TypeError
        names another), a Series is one channel; ``pd.NA`` counts as NaN.
    axis : int or None, default 1
        The channel axis; None or 1-D input: a single channel. A DataFrame takes 1 or -1
        (columns) or None (all its values).
    skipna : bool, default False
        Ignore NaN: each channel counts only its non-NaN values.
    sample_weight : dask array, dask Series or array_like of shape (n_samples,), optional
        Sample weights, for 2-D ``x`` (samples, channels) with ``axis=1``. For a DataFrame:
        a dask Series with its partitions and index (a column of it, say; ValueError when a
        partition does not line up), or weights by position, cut by the partitions' lengths
        (one extra pass over the frame unless it is persisted).
    split_every : int or dict, optional
        Fan-in of the merge tree (``dask.array.reduction``'s parameter; for a DataFrame, the
        number of partition states merged per task, 8 by default).
    n_threads : int or None, default None
        Kernel threads per chunk task. None: the OpenMP default where the task runs
        (dask.distributed's workers set OMP_NUM_THREADS=1 unless configured otherwise).

    Returns
    -------
    count, mean, m2 : dask arrays of float64, shape (C,)
        Lazy; they share one graph, so ``dask.compute(count, mean, m2)`` reduces once.
    """
    state = _state_array(x, axis, skipna, sample_weight, split_every, n_threads)
    return state["count"], state["mean"], state["m2"]


def _mean_block(state: np.ndarray) -> F64Array:
    return np.where(state["count"] > 0, state["mean"], np.nan)


def _var_block(state: np.ndarray, ddof: float) -> F64Array:
    count, m2 = state["count"], state["m2"]
    dof = count - ddof
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where(dof > 0, m2 / np.where(dof > 0, dof, 1.0), m2 / 0.0)
    return np.where(count > 0, var, np.nan)


def moments(
    x: DaskInput, axis: int | None = 1, ddof: float = 0, *,
    split_every: int | dict[int, int] | None = None, n_threads: int | None = None,
) -> tuple[da.Array, da.Array]:
    """Per-channel mean and variance of a dask array, DataFrame or Series, lazily (see
    ``bnfast.moments``).

    Parameters
    ----------
    x : dask array, dask DataFrame or Series, or array_like
        Real input, chunked any way (along the channel axis too); a DataFrame's channels are
        its columns (see ``moments_state``).
    axis : int or None, default 1
        The channel axis.
    ddof : int or float, default 0
        The variance divides by ``count - ddof``.
    split_every : int or dict, optional
        Fan-in of the merge tree.
    n_threads : int or None, default None
        Kernel threads per chunk task (see ``moments_state``).

    Returns
    -------
    mean, var : dask arrays of float64, shape (C,)
        Lazy; ``dask.compute(mean, var)`` reduces once. As in ``bnfast.moments``, empty
        channels give NaN and ``count - ddof <= 0`` gives inf or NaN (without a warning:
        the division happens on the workers).
    """
    ddof = check_ddof(ddof)
    state = _state_array(x, axis, split_every=split_every, n_threads=n_threads)
    # da.map_blocks, which Array.map_blocks calls (whose wrapper mypy cannot see through)
    mean = da.map_blocks(_mean_block, state, dtype=np.float64, meta=np.empty((0,), np.float64))
    var = da.map_blocks(_var_block, state, ddof, dtype=np.float64,
                        meta=np.empty((0,), np.float64))
    return mean, var


def _normalize_block(block: np.ndarray, ch: int | None, center: np.ndarray, var: np.ndarray,
                     gamma: np.ndarray | None, beta: np.ndarray | None, eps: float,
                     n_threads: int | None, block_info: Any = None) -> np.ndarray:
    """The inference kernel on one chunk, with the statistics of the chunk's channels."""
    if ch is None:
        sl = slice(None)
    else:
        sl = slice(*block_info[0]["array-location"][ch])
    pick = (lambda v: None if v is None else v[sl])
    return _inference(block, center[sl], var[sl], pick(gamma), pick(beta), axis=ch, eps=eps,
                      n_threads=n_threads)


def _normalize(x: da.Array, ch: int | None, center: np.ndarray, var: np.ndarray,
               gamma: np.ndarray | None, beta: np.ndarray | None, eps: float,
               n_threads: int | None) -> da.Array:
    odt = dtype_policy(x.dtype)[1]
    return da.map_blocks(
        _normalize_block, x, dtype=odt, meta=np.empty((0,) * x.ndim, odt),
        token="bnfast-normalize", ch=ch, center=center, var=var, gamma=gamma, beta=beta,
        eps=eps, n_threads=n_threads)


@overload
def batch_norm_forward(  # type: ignore[overload-overlap]  # frames have __array__ too
    x: FrameT, gamma: ArrayLike | None = ..., beta: ArrayLike | None = ..., *,
    axis: int | None = ..., eps: float = ..., running_mean: np.ndarray | None = ...,
    running_var: np.ndarray | None = ..., momentum: float = ...,
    split_every: int | dict[int, int] | None = ..., n_threads: int | None = ...,
) -> tuple[FrameT, F64Array, F64Array]: ...


@overload
def batch_norm_forward(
    x: DaskArrayLike, gamma: ArrayLike | None = ..., beta: ArrayLike | None = ..., *,
    axis: int | None = ..., eps: float = ..., running_mean: np.ndarray | None = ...,
    running_var: np.ndarray | None = ..., momentum: float = ...,
    split_every: int | dict[int, int] | None = ..., n_threads: int | None = ...,
) -> tuple[da.Array, F64Array, F64Array]: ...


def batch_norm_forward(
    x: DaskInput, gamma: ArrayLike | None = None, beta: ArrayLike | None = None, *,
    axis: int | None = 1, eps: float = 1e-5, running_mean: np.ndarray | None = None,
    running_var: np.ndarray | None = None, momentum: float = 0.1,
    split_every: int | dict[int, int] | None = None, n_threads: int | None = None,
) -> tuple[Any, F64Array, F64Array]:
    """Training-mode batch normalization of a dask array, DataFrame or Series with global
    batch statistics.

    The statistics over the whole input are computed now, through the current scheduler
    (the cluster of an active ``dask.distributed.Client``): chunk states from the kernels,
    merged with ``merge_moments``. ``y`` is returned lazily: each chunk is normalized by the
    inference kernel with the global statistics when ``y`` is computed (or persisted).

    Parameters
    ----------
    x : dask array, dask DataFrame or Series, or array_like
        Real input, chunked any way (along the channel axis too); a DataFrame's channels are
        its columns (see ``moments_state``).
    gamma, beta : array_like of shape (C,), optional
    axis : int or None, default 1
    eps : float, default 1e-5
    running_mean, running_var : ndarray of shape (C,), optional
        NumPy buffers updated in place, as in ``bnfast.batch_norm_forward`` (running_var
        receives the unbiased variance).
    momentum : float in [0, 1], default 0.1
    split_every : int or dict, optional
        Fan-in of the merge tree.
    n_threads : int or None, default None
        Kernel threads per chunk task.

    Returns
    -------
    y : dask array, or dask DataFrame or Series for such ``x``
        Lazy, chunked like ``x``; x's dtype (float64 for integers, float16 stays float16).
        A frame's ``y`` has its columns, index and divisions, in the columns' common float
        dtype (float64 for integers, bool or a mix).
    mean, invstd : ndarray of float64, shape (C,)
        Computed: the global batch mean and ``1 / sqrt(var + eps)``.

    Raises
    ------
    ValueError
        As ``bnfast.batch_norm_forward`` (one value per channel, bad shapes, eps, momentum);
        the running statistics are then left as they were.
    """
    if is_dask_frame(x):
        from . import _frame
        return _frame.batch_norm_forward(cast("dd.DataFrame | dd.Series", x), gamma, beta,
                                         axis, eps, running_mean, running_var, momentum,
                                         split_every, n_threads)
    x = _as_dask(x)
    ch = _channel_axis(x, axis)
    C = _n_channels(x, ch)
    eps = check_eps(eps)
    momentum = check_momentum(momentum)
    n_threads = kernel_threads(n_threads)
    g = channel_vector(gamma, C, "gamma")
    b = channel_vector(beta, C, "beta")
    running_buffer(running_mean, C, "running_mean")  # checked before the cluster works
    running_buffer(running_var, C, "running_var")
    m = x.size // C if C else 0
    if m == m:  # known shape: fail before computing
        check_training_size(m, C, x.shape)
    state = dask.compute(_state_array(x, axis, split_every=split_every,
                                      n_threads=n_threads))[0]
    mean, var, invstd = training_stats_from_state(
        (state["count"], state["mean"], state["m2"]), eps, running_mean, running_var,
        momentum, x.shape)
    return _normalize(x, ch, mean, var, g, b, eps, n_threads), mean, invstd


@overload
def batch_norm_inference(  # type: ignore[overload-overlap]  # frames have __array__ too
    x: FrameT, running_mean: ArrayLike, running_var: ArrayLike,
    gamma: ArrayLike | None = ..., beta: ArrayLike | None = ..., *, axis: int | None = ...,
    eps: float = ..., n_threads: int | None = ...,
) -> FrameT: ...


@overload
def batch_norm_inference(
    x: DaskArrayLike, running_mean: ArrayLike, running_var: ArrayLike,
    gamma: ArrayLike | None = ..., beta: ArrayLike | None = ..., *, axis: int | None = ...,
    eps: float = ..., n_threads: int | None = ...,
) -> da.Array: ...


def batch_norm_inference(
    x: DaskInput, running_mean: ArrayLike, running_var: ArrayLike,
    gamma: ArrayLike | None = None, beta: ArrayLike | None = None, *, axis: int | None = 1,
    eps: float = 1e-5, n_threads: int | None = None,
) -> Any:
    """Inference-mode batch normalization of a dask array, DataFrame or Series, lazily
    (``map_blocks`` / ``map_partitions``).

    ``y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta`` per channel, by the
    inference kernel on each chunk; chunks along the channel axis get their channels'
    statistics.

    Parameters
    ----------
    x : dask array, dask DataFrame or Series, or array_like
        A DataFrame's channels are its columns (see ``moments_state``).
    running_mean, running_var : array_like of shape (C,)
    gamma, beta : array_like of shape (C,), optional
    axis : int or None, default 1
    eps : float, default 1e-5
    n_threads : int or None, default None
        Kernel threads per chunk task.

    Returns
    -------
    y : dask array, or dask DataFrame or Series for such ``x``
        Lazy, chunked like ``x``; x's dtype (float64 for integers). A frame's ``y`` has its
        columns, index and divisions, in the columns' common float dtype.
    """
    if is_dask_frame(x):
        from . import _frame
        return _frame.batch_norm_inference(cast("dd.DataFrame | dd.Series", x), running_mean,
                                           running_var, gamma, beta, axis, eps, n_threads)
    x = _as_dask(x)
    ch = _channel_axis(x, axis)
    C = _n_channels(x, ch)
    eps = check_eps(eps)
    n_threads = kernel_threads(n_threads)
    rm, rv = running_stats(running_mean, running_var, C)
    g = channel_vector(gamma, C, "gamma")
    b = channel_vector(beta, C, "beta")
    return _normalize(x, ch, rm, rv, g, b, eps, n_threads)
