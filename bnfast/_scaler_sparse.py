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
    """The (data, indices, indptr) of a CSR or CSC matrix, checked to be well formed.

    The kernels read the structure as given (src/sparse.pxi), so it is checked here: indptr
    from 0 to nnz without going back, indices within the columns (rows for CSC). Cheap for the
    canonical format scipy keeps (sorted indices, known to it): the ends of each row bound
    its indices, O(rows); otherwise one pass over the indices.
    """
    csr = X.format == "csr"
    n_major, n_minor = X.shape if csr else X.shape[::-1]
    indptr = X.indptr
    nnz = int(indptr[-1]) if indptr.shape == (n_major + 1,) else -1
    ok = nnz >= 0 and indptr[0] == 0 and nnz <= min(X.indices.shape[0], X.data.shape[0])
    ok = ok and (n_major < 2 or bool(np.all(indptr[1:] >= indptr[:-1])))
    indices = X.indices[:nnz] if ok else X.indices
    if ok and nnz:
        if X.has_canonical_format:
            rows = np.flatnonzero(indptr[1:] > indptr[:-1])
            lo, hi = indices[indptr[rows]].min(), indices[indptr[rows + 1] - 1].max()
        else:
            lo, hi = indices.min(), indices.max()
        ok = 0 <= lo and hi < n_minor
    if not ok:
        raise ValueError(f"X: malformed sparse {X.format.upper()} structure (indptr must run "
                         f"from 0 to the number of stored values without decreasing, and "
                         f"indices lie in [0, {n_minor})); X.check_format() says where")
    index = np.int64 if (indptr.dtype == np.int64 or indices.dtype == np.int64) else np.int32
    return (plain(X.data[:nnz], X.data.dtype), plain(indices, np.dtype(index)),
            plain(indptr, np.dtype(index)))


def batch_state(X: Any, w: np.ndarray | None,
                n_threads: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column (count, mean, m2) of a CSR or CSC X: implicit zeros counted, NaN skipped.

    Duplicate entries are summed first (scipy's meaning of them), on a copy.
    """
    data, indices, indptr = _structure(X)
    if not X.has_canonical_format:
        X = X.copy()
        X.sum_duplicates()
        data, indices, indptr = _structure(X)
    return kernel_result(_kernels.sparse_moments(data, indices, indptr, X.shape,
                                                 X.format == "csr", w, n_threads),
                         "sparse_moments")


def scale_columns(X: Any, factors: np.ndarray | None, copy: bool, n_threads: int | None) -> Any:
    """A CSR X with each stored value multiplied by its column's factor: a new matrix of X's
    type with copy, else X itself, changed in place. factors None: a copy or X unchanged."""
    if factors is None:
        return X.copy() if copy else X
    data, indices, indptr = _structure(X)
    factors = plain(factors, np.dtype(np.float64))
    if copy:
        scaled = kernel_result(_kernels.sparse_scale(data, indices, factors, None, n_threads),
                               "sparse_scale")
        Y = type(X)((scaled, X.indices[:data.shape[0]].copy(), X.indptr.copy()), shape=X.shape)
        if X.has_canonical_format:  # known (_structure asked): spares scipy a pass to find out
            Y.has_canonical_format = True
        return Y
    if np.shares_memory(data, X.data) and data.flags.writeable:
        kernel_result(_kernels.sparse_scale(data, indices, factors, data, n_threads),
                      "sparse_scale")
    else:  # X.data is not as the kernel takes it (byte order, say): scaled into a copy
        X.data[:data.shape[0]] = kernel_result(
            _kernels.sparse_scale(data, indices, factors, None, n_threads), "sparse_scale")
    return X


def columns(X: Any, cols: np.ndarray) -> np.ndarray:
    """The columns cols of a sparse X as a dense float64 array (the rare overflow path)."""
    return np.asarray(X[:, cols].toarray(), dtype=np.float64)
