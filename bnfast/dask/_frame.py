"""bnfast.dask on dask DataFrames and Series: partition states in the workers, lazy outputs.

Each partition becomes a NumPy array where it lives (a view of the partition's block when
its columns share one float dtype), the kernels compute its Welford state, and a tree of
``merge_moments`` tasks merges the states: only O(C) numbers per partition travel, and the
driver receives one state. Outputs are ``map_partitions`` of the inference kernel, with the
frame's columns, index and divisions. Imported only when a DataFrame or Series is given.
"""
from __future__ import annotations

import numbers
import operator
from typing import Any, Callable, Sequence, Union

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
from dask.dataframe.utils import meta_nonempty
from numpy.typing import ArrayLike

from .._functional import batch_norm_inference as _inference
from .._training import training_stats_from_state
from .._validation import (
    as_array,
    channel_shape,
    channel_vector,
    check_bool,
    check_eps,
    check_momentum,
    check_real_dtype,
    check_sample_weight,
    dtype_policy,
    is_dask_array,
    is_dask_frame,
    is_float_dtype,
    kernel_threads,
    running_buffer,
    running_stats,
)
from ._array import STATE_DTYPE, F64Array, _merge_state, _pack, block_state

Frame = Union[dd.DataFrame, dd.Series]

# Partition states merged per task: the fan-in of the merge tree (dask's own default for
# DataFrame reductions).
SPLIT_EVERY = 8


# -- columns, dtypes, channels ----------------------------------------------------------------

def _column_numpy_dtype(dtype: Any) -> np.dtype[Any] | None:
    """The NumPy dtype a numeric pandas column converts to; None for a non-numeric one."""
    if isinstance(dtype, pd.CategoricalDtype):  # numeric categories convert to their values
        dtype = dtype.categories.dtype
    if not (pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype)):
        return None
    # nullable (masked) and pyarrow-backed dtypes name their NumPy equivalent
    numpy_dtype = np.dtype(getattr(dtype, "numpy_dtype", dtype))
    return numpy_dtype if numpy_dtype.kind in "biuf" else None


def frame_dtype(x: Frame, name: str = "x", error: type[Exception] = TypeError) -> np.dtype[Any]:
    """The float dtype the partitions of ``x`` are read as: the columns' common float dtype,
    else float64 (integers, bool, mixed). ``error`` names the first non-numeric column."""
    meta = x._meta
    columns = meta.dtypes.items() if isinstance(meta, pd.DataFrame) else [(meta.name, meta.dtype)]
    dtypes = []
    for column, dtype in columns:
        numpy_dtype = _column_numpy_dtype(dtype)
        if numpy_dtype is None:
            what = f"column {column!r}" if isinstance(meta, pd.DataFrame) else "the Series"
            raise error(f"{name}: {what} has dtype {dtype}; expected real numbers (float, "
                        f"integer or bool columns)")
        dtypes.append(numpy_dtype)
    common = np.result_type(*dtypes) if dtypes else np.dtype(np.float64)
    return common if is_float_dtype(common) else np.dtype(np.float64)


def frame_channels(x: Frame, axis: int | None) -> tuple[int | None, int]:
    """(channel axis of a partition's array, number of channels): a DataFrame's channels are
    its columns (axis 1 or -1), or all its values one channel (axis None); a Series is one
    channel, as 1-D arrays are."""
    if isinstance(x, dd.Series):
        channel_shape(np.empty(0), axis)  # the 1-D rules and errors of the arrays
        return None, 1
    C = len(x.columns)
    channel_shape(np.empty((0, C)), axis)
    if axis is None:
        return None, 1
    if operator.index(axis) % 2 != 1:
        raise ValueError(f"axis: a dask DataFrame's channels are its columns (axis=1 or -1) or "
                         f"all its values (axis=None), got axis={axis}")
    return 1, C


def _partition_array(part: Any, dtype: np.dtype[Any]) -> np.ndarray:
    """A partition as a NumPy array of ``dtype``: (n, C) for a DataFrame, (n,) for a Series.

    A view of the partition's block when the columns are one block of ``dtype`` (pandas
    stores it (C, n): the view is F-ordered)."""
    dtypes = part.dtypes if isinstance(part, pd.DataFrame) else [part.dtype]
    if all(isinstance(dt, np.dtype) for dt in dtypes):
        return part.to_numpy(dtype=dtype)
    return part.to_numpy(dtype=dtype, na_value=np.nan)  # pd.NA of nullable columns: NaN


def _channels_first(a: np.ndarray, ch: int | None) -> tuple[np.ndarray, int | None]:
    """An F-ordered (n, C) array as its C-ordered (C, n) transpose, channel axis 0, so that
    the kernels read it in place (``a`` as it is otherwise)."""
    if a.ndim == 2 and a.flags.f_contiguous and not a.flags.c_contiguous:
        return a.T, (None if ch is None else 0)
    return a, ch


def _columns_apart(a: np.ndarray, ch: int | None) -> bool:
    """Whether the channels of ``a`` are its columns, each contiguous, but not one block:
    a row slice of a pandas block (``dd.from_pandas`` cuts a frame so). The kernels then take
    it column by column rather than copy it."""
    return (ch == 1 and a.ndim == 2 and a.shape[1] > 1 and a.strides[0] == a.itemsize
            and not a.flags.f_contiguous)


# -- sample weights, partition by partition ---------------------------------------------------

def partition_weights(x: Frame, ch: int | None, sample_weight: Any,
                      scalar: bool = False) -> list[Any]:
    """One item per partition of ``x`` for ``_weights_of``: None, a float (``scalar``), a
    (lazy) NumPy piece of the partition's length, or a dask Series partition."""
    n = x.npartitions
    if sample_weight is None:
        return [None] * n
    if not (isinstance(x, dd.DataFrame) and ch == 1):
        raise ValueError("sample_weight: only for a DataFrame (samples, channels) with axis=1")
    if (scalar and isinstance(sample_weight, numbers.Real)
            and not isinstance(sample_weight, bool)):
        return [float(sample_weight)] * n
    if is_dask_frame(sample_weight):
        if not isinstance(sample_weight, dd.Series):
            raise ValueError("sample_weight: expected a dask Series (one weight per row), "
                             "got a dask DataFrame")
        frame_dtype(sample_weight, "sample_weight")  # TypeError unless numeric
        if sample_weight.npartitions != n:
            raise ValueError(
                f"sample_weight: a dask Series of {sample_weight.npartitions} partitions for a "
                f"frame of {n}; expected the frame's partitions (a column of the frame, or a "
                f"Series with the same divisions)")
        if (x.known_divisions and sample_weight.known_divisions
                and tuple(x.divisions) != tuple(sample_weight.divisions)):
            raise ValueError("sample_weight: the dask Series' divisions differ from the "
                             "frame's; expected the frame's partitions")
        return list(sample_weight.to_delayed())
    if is_dask_array(sample_weight):
        check_real_dtype(sample_weight.dtype, "sample_weight")
        if sample_weight.ndim != 1:
            raise ValueError(f"sample_weight: expected a 1-D array, got shape "
                             f"{sample_weight.shape}")
        if any(c != c for c in sample_weight.chunks[0]):
            raise ValueError("sample_weight: unknown chunk sizes; call "
                             "sample_weight.compute_chunk_sizes() first")
        w = sample_weight
    else:
        w = as_array(sample_weight, "sample_weight")
        if w.ndim != 1:  # before the pass over the frame below
            raise ValueError(f"sample_weight: expected one weight per row (a 1-D array), got "
                             f"shape {w.shape}")
    # Weights by position: the partitions' lengths cut them (one pass over the frame, cheap
    # when it is persisted).
    lengths = tuple(int(v) for v in x.map_partitions(len).compute())
    check_sample_weight(w, sum(lengths))
    pieces: da.Array = da.asarray(w).astype(np.float64).rechunk((lengths,))
    return list(pieces.to_delayed().ravel())


def _weights_of(item: Any, part: Any, i: int, finite: bool) -> np.ndarray | None:
    """The float64 weights of partition ``i`` from its ``partition_weights`` item."""
    if item is None:
        return None
    if isinstance(item, float):
        return np.full(len(part), item)
    if isinstance(item, pd.Series):
        if len(item) != len(part) or not item.index.equals(part.index):
            raise ValueError(
                f"sample_weight: partition {i} of the dask Series does not line up with the "
                f"frame's (lengths {len(item)} and {len(part)}, or another index); expected "
                f"the frame's partitions and index")
        item = item.to_numpy(dtype=np.float64, na_value=np.nan)
    w = np.asarray(item, np.float64)
    if finite and not np.isfinite(w).all():
        raise ValueError("sample_weight: expected finite weights, got NaN or infinity")
    return w


# -- the reduction: partition states, merged in a tree ----------------------------------------

def _partition_state(part: Any, weights: Any, i: int, ch: int | None, skipna: bool,
                     dtype: np.dtype[Any], n_threads: int | None,
                     finite_weights: bool) -> tuple[np.ndarray, int, bool]:
    """(packed state, rows, whether a weight is non-zero) of one partition, by the kernels."""
    a = _partition_array(part, dtype)
    w = _weights_of(weights, part, i, finite_weights)
    if w is None and _columns_apart(a, ch):
        columns = [block_state(a[:, j], None, None, skipna, n_threads)
                   for j in range(a.shape[1])]
        count, mean, m2 = (np.concatenate(parts) for parts in zip(*columns))
        state = count, mean, m2
    else:
        if w is None:  # the weighted kernel takes (n, C) rows, copied if need be
            a, ch = _channels_first(a, ch)
        state = block_state(a, ch, w, skipna, n_threads)
    nonzero = len(part) > 0 if w is None else bool(np.any(w != 0))
    return _pack(state, state[1].shape), len(part), nonzero


def _merge_partition_states(*states: tuple[np.ndarray, int, bool],
                            ) -> tuple[np.ndarray, int, bool]:
    packed = _merge_state(np.stack([s[0] for s in states]), axis=(0,), keepdims=False)
    return packed, sum(s[1] for s in states), any(s[2] for s in states)


def state_tree(x: Frame, ch: int | None, skipna: bool, weights: Sequence[Any],
               split_every: int | dict[int, int] | None, n_threads: int | None,
               dtype: np.dtype[Any], finite_weights: bool = False) -> Any:
    """A Delayed of (packed state of shape (C,), rows, any non-zero weight) of ``x``."""
    if isinstance(split_every, dict):  # dask.array's form: the fan-in along the rows
        split_every = split_every.get(0)
    fan_in = SPLIT_EVERY if split_every is None else operator.index(split_every)
    if fan_in < 2:
        raise ValueError(f"split_every: expected an integer >= 2, got {split_every!r}")
    state = dask.delayed(_partition_state, pure=True)
    level = [state(part, w, i, ch, skipna, dtype, n_threads, finite_weights)
             for i, (part, w) in enumerate(zip(x.to_delayed(), weights))]
    merge = dask.delayed(_merge_partition_states, pure=True)
    while len(level) > 1:
        level = [merge(*level[i:i + fan_in]) for i in range(0, len(level), fan_in)]
    return level[0]


def frame_state_array(x: Frame, axis: int | None, skipna: bool, sample_weight: Any,
                      split_every: int | dict[int, int] | None,
                      n_threads: int | None) -> da.Array:
    """The lazy per-channel state of a frame: a one-chunk dask array of STATE_DTYPE, (C,)."""
    ch, C = frame_channels(x, axis)
    dtype = frame_dtype(x)
    n_threads = kernel_threads(n_threads)
    skipna = check_bool(skipna, "skipna")
    weights = partition_weights(x, ch, sample_weight)
    root = state_tree(x, ch, skipna, weights, split_every, n_threads, dtype)
    return da.from_delayed(root[0], (C,), dtype=STATE_DTYPE,
                           meta=np.empty((0,), STATE_DTYPE))


# -- outputs ----------------------------------------------------------------------------------

def _normalize_partition(part: Any, ch: int | None, dtype: np.dtype[Any], center: np.ndarray,
                         var: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None,
                         eps: float, n_threads: int | None) -> Any:
    """The inference kernel on one partition; the result has its index and columns."""
    a = _partition_array(part, dtype)
    if _columns_apart(a, ch):  # column by column into a (C, n) block: no copy of a
        out = np.empty(a.shape[::-1], dtype_policy(dtype)[1])
        for j in range(a.shape[1]):
            pick = slice(j, j + 1)
            _inference(a[:, j], center[pick], var[pick],
                       None if gamma is None else gamma[pick],
                       None if beta is None else beta[pick], axis=None, eps=eps, out=out[j],
                       n_threads=n_threads)
        y = out.T
    else:
        a_in, ch_in = _channels_first(a, ch)
        y = _inference(a_in, center, var, gamma, beta, axis=ch_in, eps=eps,
                       n_threads=n_threads)
        if a_in is not a:  # computed on the (C, n) transpose: y is (C, n) too
            y = y.T
    if isinstance(part, pd.Series):
        return pd.Series(y, index=part.index, name=part.name, copy=False)
    return pd.DataFrame(y, index=part.index, columns=part.columns, copy=False)


def normalize_frame(x: Frame, ch: int | None, dtype: np.dtype[Any], center: np.ndarray,
                    var: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None,
                    eps: float, n_threads: int | None) -> Frame:
    """Lazy ``(x - center) / sqrt(var + eps) * gamma + beta`` per channel: the frame's
    columns, index and divisions, in the output dtype of ``dtype``."""
    meta = x._meta.astype(dtype_policy(dtype)[1])
    return x.map_partitions(_normalize_partition, ch=ch, dtype=dtype, center=center, var=var,
                            gamma=gamma, beta=beta, eps=eps, n_threads=n_threads, meta=meta,
                            token="bnfast-normalize")


def batch_norm_forward(x: Frame, gamma: ArrayLike | None, beta: ArrayLike | None,
                       axis: int | None, eps: float, running_mean: np.ndarray | None,
                       running_var: np.ndarray | None, momentum: float,
                       split_every: int | dict[int, int] | None,
                       n_threads: int | None) -> tuple[Frame, F64Array, F64Array]:
    """``bnfast.dask.batch_norm_forward`` of a frame: statistics now, the output lazily."""
    ch, C = frame_channels(x, axis)
    dtype = frame_dtype(x)
    eps = check_eps(eps)
    check_momentum(momentum)  # before the cluster works (and again with the statistics)
    n_threads = kernel_threads(n_threads)
    g = channel_vector(gamma, C, "gamma")
    b = channel_vector(beta, C, "beta")
    running_buffer(running_mean, C, "running_mean")  # checked before the cluster works
    running_buffer(running_var, C, "running_var")
    root = state_tree(x, ch, False, [None] * x.npartitions, split_every, n_threads, dtype)
    packed, rows, _ = dask.compute(root)[0]
    shape = (rows,) if isinstance(x, dd.Series) else (rows, len(x.columns))
    mean, var, invstd = training_stats_from_state(
        (packed["count"], packed["mean"], packed["m2"]), eps, running_mean, running_var,
        momentum, shape)
    return normalize_frame(x, ch, dtype, mean, var, g, b, eps, n_threads), mean, invstd


def batch_norm_inference(x: Frame, running_mean: ArrayLike, running_var: ArrayLike,
                         gamma: ArrayLike | None, beta: ArrayLike | None, axis: int | None,
                         eps: float, n_threads: int | None) -> Frame:
    """``bnfast.dask.batch_norm_inference`` of a frame, lazily."""
    ch, C = frame_channels(x, axis)
    dtype = frame_dtype(x)
    eps = check_eps(eps)
    n_threads = kernel_threads(n_threads)
    rm, rv = running_stats(running_mean, running_var, C)
    g = channel_vector(gamma, C, "gamma")
    b = channel_vector(beta, C, "beta")
    return normalize_frame(x, ch, dtype, rm, rv, g, b, eps, n_threads)


# -- BatchNormScaler's fit --------------------------------------------------------------------

def scaler_frame(X: Frame, validate: Callable[[Any], np.ndarray]) -> dd.DataFrame:
    """A dask X checked as BatchNormScaler checks in-memory input, without computing it.

    A DataFrame of numeric columns (ValueError naming a column that is not); ``validate``
    is scikit-learn's validation of a two-row pandas stand-in with X's columns and dtypes
    (feature names, number of features, and the float dtype it converts to). X comes back
    converted to that dtype, lazily, when a column has another.
    """
    if isinstance(X, dd.Series):
        raise ValueError("Expected a 2D array, got a dask Series instead: use "
                         "X.to_frame() for a single feature")
    frame_dtype(X, "X", ValueError)
    dtype = validate(meta_nonempty(X._meta)).dtype
    if all(dt == dtype for dt in X._meta.dtypes):
        return X
    return X.astype(dtype)


def scaler_state(X: dd.DataFrame, sample_weight: Any,
                 n_threads: int | None) -> tuple[F64Array, F64Array, F64Array]:
    """(count, mean, m2) of a checked X (``scaler_frame``), NaN skipped, computed on the
    cluster; StandardScaler's errors for no rows, all-zero weights and infinity."""
    weights = partition_weights(X, 1, sample_weight, scalar=True)
    root = state_tree(X, 1, True, weights, None, n_threads, frame_dtype(X), True)
    packed, rows, nonzero = dask.compute(root)[0]
    if rows == 0:
        raise ValueError(f"Found array with 0 sample(s) (shape=(0, {len(X.columns)})) while "
                         f"a minimum of 1 is required.")
    if not nonzero:
        raise ValueError("sample_weight: expected at least one non-zero weight, "
                         "got all zero weights")
    count, mean, m2 = packed["count"], packed["mean"], packed["m2"]
    bad = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(m2)) & (count > 0))
    if bad.size:  # NaN are skipped, so only infinity (or overflow) leaves these
        names = ", ".join(repr(X.columns[i]) for i in bad[:5])
        raise ValueError(f"Input X contains infinity or a value too large for "
                         f"dtype('float64'): column {names}"
                         f"{' and more' if bad.size > 5 else ''}.")
    return count, mean, m2
