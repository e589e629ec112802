"""BatchNormScaler on scipy.sparse CSR and CSC input (``with_mean=False``), as StandardScaler.

The statistics count the implicit zeros and skip NaN (``_kernels.sparse_moments``); transform
and inverse_transform scale the stored values by column (``_kernels.sparse_scale``), so the
sparsity is kept. scipy is never imported here: a matrix can only be sparse once it is loaded.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from . import _kernels
from ._validation import kernel_result, plain

CENTER_ERROR = ("Cannot center sparse matrices: pass `with_mean=False` instead. See docstring "
                "for motivation and alternatives.")
UNCENTER_ERROR = ("Cannot uncenter sparse matrices: pass `with_mean=False` instead See "
                  "docstring for motivation and alternatives.")  # StandardScaler's, verbatim


def is_sparse(X: Any) -> bool:
    """True for a scipy.sparse matrix or array (never imports scipy)."""
    sp = sys.modules.get("scipy.sparse")
    return sp is not None and bool(sp.issparse(X))


def _structure(X: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (data, indices, indptr) of a CSR or CSC matrix as the kernels take them: the first
    nnz = indptr[-1] stored values, indices and indptr of one integer dtype."""
    indptr = X.indptr
    n_major = X.shape[0] if X.format == "csr" else X.shape[1]
    if indptr.shape != (n_major + 1,) or not 0 <= indptr[-1] <= min(X.indices.shape[0],
                                                                   X.data.shape[0]):
        _malformed(X)
    nnz = int(indptr[-1])
    index = np.int64 if (indptr.dtype == np.int64 or X.indices.dtype == np.int64) else np.int32
    return (plain(X.data[:nnz], X.data.dtype), plain(X.indices[:nnz], np.dtype(index)),
            plain(indptr, np.dtype(index)))


def _malformed(X: Any) -> None:
    n_minor = X.shape[1] if X.format == "csr" else X.shape[0]
    raise ValueError(f"X: malformed sparse {X.format.upper()} structure (indptr must run "
                     f"from 0 to the number of stored values without decreasing, and indices "
                     f"lie in [0, {n_minor})); X.check_format() says where")


def batch_state(X: Any, w: np.ndarray | None,
                n_threads: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column (count, mean, m2) of a CSR or CSC X: implicit zeros counted, NaN skipped.

    Duplicate entries are summed first (scipy's meaning of them), on a copy: the kernel
    reports unsorted or repeated indices as it goes, which spares the usual canonical format
    a check of its own.
    """
    for attempt in range(2):
        data, indices, indptr = _structure(X)
        count, mean, m2, malformed, unsorted = kernel_result(
            _kernels.sparse_moments(data, indices, indptr, X.shape, X.format == "csr", w,
                                    n_threads), "sparse_moments")
        if malformed:
            _malformed(X)
        if not unsorted or attempt:
            break
        X = X.copy()
        X.sum_duplicates()  # sorted, each (row, column) once: the second call is exact
    return count, mean, m2


def scale_columns(X: Any, factors: np.ndarray | None, copy: bool, n_threads: int | None) -> Any:
    """A CSR X with each stored value multiplied by its column's factor: a new matrix of X's
    type with copy, else X itself, changed in place. factors None: a copy or X unchanged."""
    if factors is None:
        return X.copy() if copy else X
    data, indices, _ = _structure(X)
    factors = plain(factors, np.dtype(np.float64))
    in_place = not copy and np.shares_memory(data, X.data) and data.flags.writeable
    scaled, malformed = kernel_result(_kernels.sparse_scale(
        data, indices, factors, data if in_place else None, n_threads), "sparse_scale")
    if malformed:
        _malformed(X)
    if copy:
        return type(X)((scaled, X.indices[:data.shape[0]].copy(), X.indptr.copy()),
                       shape=X.shape)
    if not in_place:  # X.data is not as the kernel takes it (byte order, say)
        X.data[:data.shape[0]] = scaled
    return X


def columns(X: Any, cols: np.ndarray) -> np.ndarray:
    """The columns cols of a sparse X as a dense float64 array (the rare overflow path)."""
    return np.asarray(X[:, cols].toarray(), dtype=np.float64)
