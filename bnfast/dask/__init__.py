"""Batch normalization over dask arrays, DataFrames and Series: exact statistics from a
cluster, lazy outputs.

Each chunk's (or partition's) Welford state ``(count, mean, m2)`` is computed by the kernels
(``bnfast.moments_state``) where the chunk lives, and the states are merged with
``bnfast.merge_moments`` in a tree of tasks: only O(C) numbers per chunk travel, the driver
never holds the data, and the result equals the in-memory statistics up to rounding whatever
the chunking (along the batch, spatial or channel axes). Outputs (``y``) are built with
``map_blocks`` / ``map_partitions`` and stay lazy. Computations run on the current dask
scheduler: a ``dask.distributed.Client``'s cluster when one is active.

What is lazy and what is computed:

- ``moments`` and ``moments_state`` are lazy: they return dask arrays of float64 of shape
  (C,), chunked like the channel axis; ``dask.compute(*moments(x))`` runs the reduction once.
- ``batch_norm_forward`` computes the statistics at once (it returns them as NumPy arrays and
  updates the running statistics in place) and returns ``y`` lazily.
- ``batch_norm_inference`` is lazy.

DataFrames and Series: a DataFrame's channels are its columns (``axis=1``, the default, or
-1; ``axis=None`` makes all its values one channel), a Series is one channel. Columns may be
float, integer, bool (nullable ones too: ``pd.NA`` counts as NaN) or categorical with numeric
categories; any other column raises TypeError naming it. Each partition is read as one NumPy
array of the columns' common float dtype (float64 for integers, bool or a mix), without a
copy when the columns are one float block. ``y`` is a lazy DataFrame (Series) with the same
columns, index and divisions, in that dtype. ``sample_weight`` may be a dask Series with the
frame's partitions and index (a column of the frame, say), a dask array or an array_like
(cut by the partitions' lengths, which costs one pass over the frame unless it is persisted).

Needs dask (``pip install 'bnfast[dask]'``, that is ``dask[array,dataframe,distributed]``;
DataFrames need ``dask[dataframe]``, which brings pandas).

Examples
--------
>>> import dask, dask.array as da, numpy as np
>>> import bnfast.dask
>>> x = da.from_array(np.arange(12.0).reshape(6, 2), chunks=(4, 1))
>>> mean, var = dask.compute(*bnfast.dask.moments(x))
>>> mean.tolist(), var.round(6).tolist()
([5.0, 6.0], [11.666667, 11.666667])
>>> y, mean, invstd = bnfast.dask.batch_norm_forward(x, eps=0)
>>> type(y).__name__, np.round(y.compute()[:, 0], 4).tolist()
('Array', [-1.4639, -0.8783, -0.2928, 0.2928, 0.8783, 1.4639])

A DataFrame in two partitions:

>>> import dask.dataframe as dd, pandas as pd
>>> df = dd.from_pandas(pd.DataFrame({"a": [1.0, 4.0, 6.0, 8.0], "b": [1, 2, 3, 4]}),
...                     npartitions=2)
>>> mean, var = dask.compute(*bnfast.dask.moments(df))
>>> mean.tolist(), var.tolist()
([4.75, 2.5], [6.6875, 1.25])
>>> y = bnfast.dask.batch_norm_inference(df, mean, var, eps=0)
>>> type(y).__name__, y.columns.tolist(), y.divisions
('DataFrame', ['a', 'b'], (0, 2, 3))
"""
try:
    import dask  # noqa: F401
    import dask.array  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by the import-without-dask test
    raise ImportError(
        "bnfast.dask needs dask, which is not installed: pip install "
        "'dask[array,dataframe,distributed]' (or install bnfast with its `dask` extra: "
        "pip install 'bnfast[dask]')") from exc

from ._array import batch_norm_forward, batch_norm_inference, moments, moments_state

__all__ = ["moments", "moments_state", "batch_norm_forward", "batch_norm_inference"]
