"""scikit-learn transformer: ``BatchNormScaler``, StandardScaler on bnfast's Welford kernels.

scikit-learn is optional: this module imports without it, and constructing the scaler then
raises an ImportError that says what to install. Dask arrays and DataFrames are fitted
through their scheduler and transformed lazily (``bnfast.dask``); dask is imported only when
given one.
scipy.sparse CSR / CSC input goes through the sparse kernels (``_scaler_sparse``), arrays of
other namespaces under ``array_api_dispatch`` through ``_scaler_xp``; the statistics and
their merges are ``_scaler_stats``'s, the scikit-learn glue ``_sklearn_compat``'s.

Where scikit-learn has the callback API (``set_callbacks``, scikit-learn 1.9), the scaler
takes part in it as StandardScaler does: one fit task per ``fit`` / ``partial_fit`` /
``fit_transform``.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _scaler_stats as stats
from . import _scaler_xp as xpapi
from ._functional import batch_norm_inference
from ._scaler_sparse import CENTER_ERROR, UNCENTER_ERROR, is_sparse, scale_columns
from ._sklearn_compat import (
    _BASES,
    _SKLEARN_IMPORT_ERROR,
    _FLOAT_DTYPES,
    _PARAMETER_CONSTRAINTS,
    _check_array,
    _counts_in_float,
    _overflow_as_value_error,
    _owned_copy,
    _sk_check_sample_weight,
    _unchanged_on_error,
    _validate_data,
    _with_callbacks,
    check_is_fitted,
    lazy_frames_stay_lazy,
)
from ._validation import (
    check_bool,
    check_eps,
    check_momentum,
    check_n_threads,
    check_sample_weight,
    is_dask_array,
    is_dask_frame,
    is_real_dtype,
)

__all__ = ["BatchNormScaler"]


# The page of bnfast's documentation that describes the scaler: the HTML repr (notebooks)
# links to it, as StandardScaler's links to scikit-learn's.
DOCS_URL = "https://github.com/bnfast/bnfast/blob/main/docs/scaler.md"


class BatchNormScaler(*_BASES):  # type: ignore[misc]
    """Standardize features with batch-norm statistics: ``(x - mean_) / sqrt(var_ + eps)``.

    A scikit-learn transformer (fit / partial_fit / transform / inverse_transform /
    fit_transform, ``set_output``, ``get_feature_names_out``) whose statistics come from
    bnfast's Welford/Chan kernels: one pass over the data for the statistics, one for the
    transform. With ``eps=0`` it reproduces ``sklearn.preprocessing.StandardScaler``.

    Parameters
    ----------
    eps : float, default 1e-5
        Added to the variance: ``scale_ = sqrt(var_ + eps)``. With ``eps=0``, features
        that are constant up to rounding get ``scale_ = 1`` (StandardScaler's rule), so they
        transform to 0 instead of dividing by zero.
    momentum : float in [0, 1] or None, default None
        How ``partial_fit`` combines batches. None: exactly, as if all the data had been
        seen at once (Chan et al.'s merge of Welford states; ``partial_fit`` over chunks
        equals ``fit`` on all of them). A float m: an exponential moving average. The
        first batch (per feature: the first that has a value for it) sets ``mean_`` and
        ``var_``; each later batch updates ``mean_ = (1 - m) * mean_ + m * batch_mean`` and
        ``var_ = (1 - m) * var_ + m * batch_var``, where ``batch_var`` is the batch's
        biased (population) variance, unlike the unbiased one BatchNorm's running variance
        receives. ``fit`` is a single batch either way.
    with_mean : bool, default True
        Center the data (else ``mean_`` is still computed when ``with_std``, as in
        StandardScaler, but not subtracted).
    with_std : bool, default True
        Scale the data to unit variance (else ``var_`` and ``scale_`` are None).
    copy : bool, default True
        False lets ``transform`` / ``inverse_transform`` work in place on a float16, float32
        or float64 NumPy array, a CSR matrix's stored values, or a CPU array of another
        namespace (see Notes).
    n_threads : int or None, default None
        Threads for the kernels; None is the OpenMP default. Results do not depend on it.

    Attributes
    ----------
    mean_ : ndarray of float64, shape (n_features,) or None
        None when ``with_mean=False`` and ``with_std=False``.
    var_ : ndarray of float64, shape (n_features,) or None
        Biased variance; None when ``with_std=False``.
    scale_ : ndarray of float64, shape (n_features,) or None
        ``sqrt(var_ + eps)`` (see ``eps``); None when ``with_std=False``.
    n_samples_seen_ : numpy float64 or int64, or ndarray of shape (n_features,)
        Values counted per feature (NaN excluded): a scalar when every feature counted the
        same, else an array, as in StandardScaler, and of its dtype: float64 (int64 before
        scikit-learn 1.9), int64 when ``with_mean=False, with_std=False``; float64 sums of
        the weights once ``sample_weight`` has been used.
    n_features_in_ : int
    feature_names_in_ : ndarray of str, shape (n_features,)
        Only when fitted on data with string column names (e.g. a DataFrame).

    Notes
    -----
    - NaN values are ignored by ``fit`` / ``partial_fit`` (each feature's statistics use its
      non-NaN values; a feature with none gets NaN statistics) and kept by ``transform``.
      Infinite values raise ValueError, as in StandardScaler.
    - ``sample_weight`` weights the samples; ``n_samples_seen_`` then sums the weights.
    - float32 and float16 input give output of the same dtype; other inputs are converted
      to float64, as in StandardScaler. The fitted statistics are float64 whatever the
      input.
    - With scikit-learn's callback API (scikit-learn 1.9), ``set_callbacks`` works as on
      StandardScaler: ``fit``, ``partial_fit`` and ``fit_transform`` each run one fit task
      (``on_fit_task_begin`` with the validated X, ``on_fit_task_end`` with a fitted copy
      of the scaler), also as a step of a Pipeline.
    - scipy.sparse CSR and CSC input (matrix or array), with ``with_mean=False`` as in
      StandardScaler (``with_mean=True`` raises its ValueError): the statistics count the
      implicit zeros (compiled kernels, bit-identical for any thread count); transform and
      inverse_transform scale the stored values and return CSR (CSC input is converted, as
      StandardScaler does), float32 kept. Duplicate entries are summed first (scipy's
      meaning of them) where StandardScaler counts them as separate values.
    - The array API: with ``sklearn.set_config(array_api_dispatch=True)``, PyTorch tensors,
      array-api-strict arrays and other array-API arrays are accepted; outputs and fitted
      attributes come back in the input's namespace and on its device, as StandardScaler's.
      Arrays in CPU memory are computed on by the kernels in place (DLPack, no copy); arrays
      elsewhere (a GPU) by the same algorithm in their own namespace on their device.
    - Features around 1e200 and beyond, whose variance overflows float64: ``var_`` is inf
      (as StandardScaler's), but ``mean_`` and ``scale_`` are exact and finite wherever the
      standard deviation is representable, so they transform to unit variance. (Where
      StandardScaler gives ``scale_ = 1``, and its output stays unscaled.)
    - Dask arrays: ``fit`` / ``partial_fit`` compute the statistics through the dask
      scheduler (a ``dask.distributed`` cluster when a Client is active): each chunk's
      Welford state from the kernels, merged with ``bnfast.merge_moments``, exactly as
      ``fit`` on the whole array in memory up to rounding. ``transform``,
      ``inverse_transform`` and ``fit_transform`` return lazy dask arrays. ``sample_weight``
      may be a NumPy or a dask array. ``copy`` has no effect (dask arrays are immutable).
    - Dask DataFrames: each partition's state is computed and merged on the workers (only
      O(n_features) numbers reach the driver); the transforms return lazy dask DataFrames
      with the frame's columns, index and divisions, also under ``set_output("pandas")``.
      Names, dtypes and errors are StandardScaler's, checked on the frame's metadata.
      ``sample_weight``: a dask Series aligned with the frame, an array or a scalar.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1.0, 10.0], [2.0, 10.0], [3.0, 10.0], [np.nan, 10.0]])
    >>> scaler = BatchNormScaler(eps=0).fit(X)
    >>> scaler.mean_.tolist(), scaler.scale_.round(6).tolist()
    ([2.0, 10.0], [0.816497, 1.0])
    >>> scaler.n_samples_seen_.astype(int).tolist()  # float64 (scikit-learn 1.9) or int64
    [3, 4]
    >>> scaler.transform(X).round(4).tolist()
    [[-1.2247, 0.0], [0.0, 0.0], [1.2247, 0.0], [nan, 0.0]]

    Sparse input keeps its zeros (and StandardScaler's ``with_mean=False`` rule):

    >>> from scipy import sparse
    >>> S = sparse.csr_array([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0], [2.0, 0.0]])
    >>> sparse_scaler = BatchNormScaler(eps=0, with_mean=False).fit(S)
    >>> sparse_scaler.mean_.tolist(), sparse_scaler.var_.tolist()
    ([1.0, 1.0], [1.0, 1.5])
    >>> sparse_scaler.transform(S).toarray().round(4).tolist()
    [[0.0, 0.8165], [2.0, 0.0], [0.0, 2.4495], [2.0, 0.0]]

    A dask DataFrame is fitted where its partitions are, and transformed lazily:

    >>> import dask.dataframe as dd, pandas as pd
    >>> df = dd.from_pandas(pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [0, 0, 1, 1]}),
    ...                     npartitions=2)
    >>> scaler = BatchNormScaler(eps=0).fit(df)
    >>> scaler.mean_.tolist(), scaler.var_.tolist(), scaler.feature_names_in_.tolist()
    ([2.5, 0.5], [1.25, 0.25], ['a', 'b'])
    >>> out = scaler.transform(df)
    >>> type(out).__name__, out.divisions == df.divisions, out.compute()["b"].tolist()
    ('DataFrame', True, [-1.0, -1.0, 1.0, 1.0])
    """

    # The HTML repr (notebooks) links to bnfast's page for the scaler, not scikit-learn's.
    _doc_link_module = "bnfast"
    _doc_link_template = DOCS_URL

    _parameter_constraints: dict[str, list[Any]] = _PARAMETER_CONSTRAINTS

    mean_: NDArray[np.float64] | None
    var_: NDArray[np.float64] | None
    scale_: NDArray[np.float64] | None
    n_samples_seen_: Any
    n_features_in_: int

    def __init__(self, *, eps: float = 1e-5, momentum: float | None = None,
                 with_mean: bool = True, with_std: bool = True, copy: bool = True,
                 n_threads: int | None = None) -> None:
        self.eps = eps
        self.momentum = momentum
        self.with_mean = with_mean
        self.with_std = with_std
        self.copy = copy
        self.n_threads = n_threads

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()  # type: ignore[misc]
        tags.input_tags.allow_nan = True
        tags.input_tags.sparse = not self.with_mean  # as StandardScaler: with_mean=False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        tags.array_api_support = xpapi.AVAILABLE
        return tags

    # -- fitting ----------------------------------------------------------------------------

    def _reset(self) -> None:
        for name in ("mean_", "var_", "scale_", "n_samples_seen_"):
            if hasattr(self, name):
                delattr(self, name)

    def fit(self, X: ArrayLike, y: object = None,
            sample_weight: ArrayLike | None = None) -> BatchNormScaler:
        """Compute the per-feature mean and variance of X (NaN ignored).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored.
        sample_weight : array-like of shape (n_samples,), optional

        Returns
        -------
        self
        """
        with _unchanged_on_error(self):
            self._reset()
            self._partial_fit(X, y, sample_weight)
        return self

    def partial_fit(self, X: ArrayLike, y: object = None,
                    sample_weight: ArrayLike | None = None) -> BatchNormScaler:
        """Update the statistics with one more batch of samples (see ``momentum``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored.
        sample_weight : array-like of shape (n_samples,), optional

        Returns
        -------
        self
        """
        with _unchanged_on_error(self):
            self._partial_fit(X, y, sample_weight)
        return self

    def fit_transform(self, X: ArrayLike, y: object = None,  # type: ignore[override]
                      sample_weight: ArrayLike | None = None) -> Any:
        """``fit(X).transform(X)``, validating X once (two passes over the data in all).

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features)
            float32 or float16 for input of that dtype, else float64 (a DataFrame with
            ``set_output(transform="pandas")``).
        """
        with _unchanged_on_error(self):
            self._reset()
            Xv = self._partial_fit(X, y, sample_weight)
            copy = check_bool(self.copy, "copy")
            ns = xpapi.namespace(Xv)
            if ns is not None:
                return self._transform_xp(Xv, ns, copy and not xpapi.fresh(Xv, X))
            if is_sparse(Xv) and Xv.format != "csr":
                Xv = Xv.tocsr()  # a new matrix: StandardScaler's transform returns CSR
            return self._transform_array(Xv, copy and not _owned_copy(Xv, X))

    def _sample_weight(self, sample_weight: Any, X: Any) -> NDArray[np.float64] | None:
        """sample_weight as float64 of shape (n_samples,); StandardScaler's checks for NumPy X."""
        if sample_weight is None:
            return None
        sample_weight = xpapi.to_host(sample_weight)  # an array of another namespace
        n_samples = X.shape[0]
        if _sk_check_sample_weight is not None and not is_dask_array(X):
            with _overflow_as_value_error("sample_weight"):
                # In X's namespace and on its device when X is another namespace's (its
                # float dtype): then to the host.
                dtype = np.float64 if xpapi.namespace(X) is None else None
                w = xpapi.to_host(_sk_check_sample_weight(sample_weight, X, dtype=dtype))
        elif isinstance(sample_weight, numbers.Real):
            with _overflow_as_value_error("sample_weight"):
                w = np.full(n_samples, float(sample_weight))
        else:
            w = _check_array(sample_weight, ensure_2d=False, dtype=np.float64, order="C",
                             input_name="sample_weight")
        w = check_sample_weight(w, n_samples)
        if not w.any():
            raise ValueError("sample_weight: expected at least one non-zero weight, "
                             "got all zero weights")
        return w

    def _batch_state(self, X: Any, w: Any, n_threads: int | None) -> stats.State:
        """Welford state of one batch (NumPy, sparse or another namespace's array), NaN
        skipped, infinity rejected with scikit-learn's error."""
        ns = xpapi.namespace(X)
        if ns is not None:
            host = xpapi.host_view(X)
            if host is None:  # not in CPU memory: the namespace's own arithmetic
                count, mean, m2 = xpapi.plain_state(X, w, ns)
                state = stats.State(count, mean, m2, np.zeros(count.shape[0], np.int64))
                if stats.all_finite(mean, m2)[count > 0].all():
                    return state
                X = xpapi.to_host(X)  # rare: squares beyond float64, on the host
            else:
                X = host

        def check_finite() -> None:
            _check_array(X, accept_sparse=("csr", "csc"), ensure_all_finite="allow-nan",
                         dtype=None, copy=False, input_name="X", estimator=self)

        return stats.batch_state(X, w, n_threads, check_finite)

    def _check_dask(self, X: Any, reset: bool) -> Any:
        """A dask X checked as validate_data checks arrays (without computing it), as float."""
        if X.ndim != 2:
            raise ValueError(f"Expected 2D array, got {X.ndim}D array instead")
        if not is_real_dtype(X.dtype):
            raise ValueError(f"X: expected real numbers, got a dask array of dtype {X.dtype}")
        n_samples, n_features = X.shape
        if n_features != n_features:
            raise ValueError("X: the number of features is unknown; call "
                             "X.compute_chunk_sizes() first")
        if n_samples == 0 or n_features == 0:
            raise ValueError(f"Found array with shape {X.shape} while a minimum of 1 sample "
                             f"and 1 feature is required by {type(self).__name__}.")
        if reset:
            self.n_features_in_ = n_features
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        elif n_features != self.n_features_in_:
            raise ValueError(f"X has {n_features} features, but {type(self).__name__} is "
                             f"expecting {self.n_features_in_} features as input.")
        return X if X.dtype in _FLOAT_DTYPES else X.astype(np.float64)

    @staticmethod
    def _check_frame(X: Any, check: Callable[[Any], Any]) -> Any:
        """A dask DataFrame checked by ``check`` on a two-row pandas stand-in (names, number
        of features, dtype), without computing it: ``bnfast.dask``'s ``scaler_frame``."""
        from .dask._frame import scaler_frame
        return scaler_frame(X, check)

    def _dask_batch_state(self, X: Any, sample_weight: Any, n_threads: int | None) -> Any:
        """Welford state of a dask X, computed through its scheduler (NaN skipped)."""
        import dask

        from .dask import moments_state as dask_moments_state

        w = sample_weight
        if w is not None and not is_dask_array(w):
            w = self._sample_weight(w, X)
        state = dask_moments_state(X, skipna=True, sample_weight=w, n_threads=n_threads)
        any_weight = True if w is None or not is_dask_array(w) else (w != 0).any()
        count, mean, m2, any_weight = dask.compute(*state, any_weight)
        if not any_weight:
            raise ValueError("sample_weight: expected at least one non-zero weight, "
                             "got all zero weights")
        if not (np.isfinite(mean) & np.isfinite(m2))[count > 0].all():
            # NaN are skipped, so only infinity (or overflow) leaves non-finite statistics.
            raise ValueError("Input X contains infinity or a value too large for "
                             "dtype('float64').")
        return count, mean, m2

    @_with_callbacks
    def _partial_fit(self, X: Any, y: object, sample_weight: Any) -> Any:
        """Fit one batch; return X as validated (for fit_transform).

        As in StandardScaler, the callbacks' fit task begins once X is validated and ends
        with the statistics set; ``_with_callbacks`` tears the callbacks down however the
        fit ends. (It runs inside ``_unchanged_on_error``, which must not undo the callback
        bookkeeping before the teardown.)
        """
        if self._parameter_constraints:  # as StandardScaler; bnfast's checks still follow
            self._validate_params()  # type: ignore[attr-defined]
        eps = check_eps(self.eps)
        momentum = None if self.momentum is None else check_momentum(self.momentum)
        with_mean = check_bool(self.with_mean, "with_mean")
        with_std = check_bool(self.with_std, "with_std")
        check_bool(self.copy, "copy")
        n_threads = check_n_threads(self.n_threads) or None
        first_call = not hasattr(self, "n_samples_seen_")
        frame_input = is_dask_frame(X)
        dask_input = is_dask_array(X)
        ns = None if dask_input or frame_input else xpapi.namespace(X)
        if frame_input:
            X = self._check_frame(X, lambda meta: _validate_data(
                self, meta, dtype=_FLOAT_DTYPES, ensure_all_finite=False, reset=first_call))
        elif dask_input:
            X = self._check_dask(X, reset=first_call)
        else:
            # Infinity is rejected from the statistics (see _batch_state): no extra pass here.
            X = _validate_data(self, X, accept_sparse=("csr", "csc"), ensure_all_finite=False,
                               dtype=_FLOAT_DTYPES if ns is None else xpapi.float_dtypes(ns),
                               reset=first_call)
        sparse_input = is_sparse(X)
        if sparse_input and with_mean:
            raise ValueError(CENTER_ERROR)
        callback_ctx = None
        if hasattr(self, "_init_callback_context"):  # scikit-learn's callback API
            callback_ctx = self._init_callback_context()
            callback_ctx.call_on_fit_task_begin(
                estimator=self, X=X, y=y, metadata={"sample_weight": sample_weight})
        w = sample_weight
        if frame_input:
            from .dask._frame import scaler_state
            count, mean, m2 = scaler_state(X, sample_weight, n_threads)
            batch = stats.State(count, mean, m2, np.zeros(X.shape[1], np.int64))
        elif dask_input:
            count, mean, m2 = self._dask_batch_state(X, sample_weight, n_threads)
            batch = stats.State(count, mean, m2, np.zeros(X.shape[1], np.int64))
        else:
            w = self._sample_weight(sample_weight, X)
            batch = self._batch_state(X, w, n_threads)
        self._set_statistics(batch, first_call, momentum, eps, with_mean, with_std,
                             weighted=sample_weight is not None, sparse_input=sparse_input)
        if ns is not None:  # fitted attributes in X's namespace, on its device
            for name in ("mean_", "var_", "scale_", "n_samples_seen_"):
                setattr(self, name, xpapi.to_namespace(getattr(self, name), ns))
        if callback_ctx is not None:
            callback_ctx.call_on_fit_task_end(
                estimator=self, X=X, y=y, metadata={"sample_weight": w},
                reconstruction_attributes={})
        return X

    def _set_statistics(self, batch: stats.State, first_call: bool, momentum: float | None,
                        eps: float, with_mean: bool, with_std: bool, weighted: bool,
                        sparse_input: bool) -> None:
        """mean_, var_, scale_ and n_samples_seen_ from the batch and what was fitted."""
        # StandardScaler counts weights in float64; unweighted samples in int64 when it
        # computes no statistics, else in float64 in scikit-learn 1.9 and int64 before (in
        # float, always, for sparse input with with_std).
        with_stats = with_std if sparse_input else (with_mean or with_std) and _counts_in_float()
        prev = None
        if not first_call:
            prev = stats.fitted_state(xpapi.to_host(self.mean_), xpapi.to_host(self.var_),
                                      xpapi.to_host(self.scale_),
                                      xpapi.to_host(self.n_samples_seen_), batch.n.shape[0])
        as_float = weighted or with_stats or (
            prev is not None and np.asarray(xpapi.to_host(self.n_samples_seen_)).dtype.kind
            == "f")
        with np.errstate(invalid="ignore", divide="ignore"):
            if prev is None:
                total, mean, exp = batch.n, batch.mean, batch.exp
                var = batch.m2 / batch.n
            elif momentum is None:
                count, mean, var, exp = prev
                total, mean, m2, exp = stats.merge(stats.State(count, mean, var * count, exp),
                                                   batch)
                var = m2 / total
            else:
                total, mean, var, exp = stats.moving_average(prev, batch, momentum)
            mean, var, scale = stats.attributes(total, mean, var, exp, eps, with_std)
        counts = (total.astype(np.float64) if as_float else np.rint(total).astype(np.int64))
        self.n_samples_seen_ = counts[0] if counts.min() == counts.max() else counts
        self.mean_ = mean if (with_mean or with_std) else None
        self.var_ = var if with_std else None
        self.scale_ = scale

    # -- transforming -----------------------------------------------------------------------

    def _transform_array(self, X: Any, copy: bool, inverse: bool = False) -> Any:
        """The (inverse) transform of a validated float array, by one inference-kernel pass."""
        with_mean = check_bool(self.with_mean, "with_mean")
        with_std = check_bool(self.with_std, "with_std")
        n_threads = check_n_threads(self.n_threads) or None
        scale: Any = xpapi.to_host(self.scale_)  # fitted on another namespace: as NumPy
        if is_sparse(X):
            if with_mean:
                raise ValueError(UNCENTER_ERROR if inverse else CENTER_ERROR)
            factors = None if not with_std else (scale if inverse else 1.0 / scale)
            return scale_columns(X, factors, copy, n_threads)
        dask_input = is_dask_array(X) or is_dask_frame(X)
        if not dask_input:
            copy = copy or not X.flags.writeable  # read-only input: a new array, never an error
        if not with_mean and not with_std:
            return X.copy() if copy else X
        n_features = X.shape[1]
        zeros, ones = np.zeros(n_features), np.ones(n_features)
        mean = xpapi.to_host(self.mean_) if with_mean else None
        center: Any
        gamma: Any
        beta: Any
        if inverse:  # x * scale_ + mean_
            center, gamma, beta = zeros, scale if with_std else None, mean
        else:        # (x - mean_) * (1 / scale_)
            center = zeros if mean is None else mean
            gamma, beta = (1.0 / scale if with_std else None), None
        if dask_input:  # lazy: one map_blocks (map_partitions) of the same kernel
            from .dask import batch_norm_inference as dask_batch_norm_inference
            return dask_batch_norm_inference(X, center, ones, gamma, beta, axis=1, eps=0.0,
                                             n_threads=n_threads)
        return batch_norm_inference(X, center, ones, gamma, beta, axis=1, eps=0.0,
                                    out=None if copy else X, n_threads=n_threads)

    def transform(self, X: ArrayLike, copy: bool | None = None) -> Any:
        """Standardize X: ``(X - mean_) / scale_`` (NaN stays NaN).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        copy : bool or None, default None
            Overrides the ``copy`` parameter for this call.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features)
            float32 or float16 for input of that dtype, else float64 (a DataFrame with
            ``set_output(transform="pandas")``).
        """
        check_is_fitted(self)
        copy = check_bool(self.copy if copy is None else copy, "copy")
        if is_dask_array(X):
            return self._transform_array(self._check_dask(X, reset=False), copy)
        if is_dask_frame(X):
            return self._transform_array(self._check_frame(X, lambda meta: _validate_data(
                self, meta, reset=False, dtype=_FLOAT_DTYPES, ensure_all_finite="allow-nan")),
                copy)
        xpapi.check_fitted_namespace(X, self, "transform")
        ns = xpapi.namespace(X)
        Xv = _validate_data(self, X, reset=False, accept_sparse="csr", copy=False,
                            dtype=_FLOAT_DTYPES if ns is None else xpapi.float_dtypes(ns),
                            force_writeable=not copy, ensure_all_finite="allow-nan")
        if ns is not None:
            return self._transform_xp(Xv, ns, copy and not xpapi.fresh(Xv, X))
        return self._transform_array(Xv, copy and not _owned_copy(Xv, X))

    def inverse_transform(self, X: ArrayLike, copy: bool | None = None) -> Any:
        """Undo ``transform``: ``X * scale_ + mean_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        copy : bool or None, default None
            Overrides the ``copy`` parameter for this call.

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self)
        copy = check_bool(self.copy if copy is None else copy, "copy")
        if is_dask_array(X):
            return self._transform_array(self._check_dask(X, reset=False), copy,
                                         inverse=True)
        ns = None if is_dask_frame(X) else xpapi.namespace(X)

        def check(X: Any) -> Any:
            Xv = _check_array(X, accept_sparse="csr", copy=False, force_writeable=not copy,
                              dtype=_FLOAT_DTYPES if ns is None else xpapi.float_dtypes(ns),
                              ensure_all_finite="allow-nan", estimator=self)
            if Xv.shape[1] != self.n_features_in_:
                raise ValueError(f"X has {Xv.shape[1]} features, but {type(self).__name__} "
                                 f"is expecting {self.n_features_in_} features as input")
            return Xv

        if is_dask_frame(X):
            return self._transform_array(self._check_frame(X, check), copy, inverse=True)
        xpapi.check_fitted_namespace(X, self, "inverse_transform")
        Xv = check(X)
        if ns is not None:
            return self._transform_xp(Xv, ns, copy and not xpapi.fresh(Xv, X), inverse=True)
        return self._transform_array(Xv, copy and not _owned_copy(Xv, X), inverse=True)

    def _transform_xp(self, X: Any, ns: xpapi.Namespace, copy: bool,
                      inverse: bool = False) -> Any:
        """The (inverse) transform of a validated array of another namespace, in it."""
        host = xpapi.host_view(X)
        if host is not None:  # CPU memory: the kernel, on X's own buffer with copy=False
            out = self._transform_array(host, copy, inverse)
            return X if out is host else xpapi.to_namespace(out, ns)
        with_mean = check_bool(self.with_mean, "with_mean")
        scale = xpapi.to_host(self.scale_) if check_bool(self.with_std, "with_std") else None
        mean = xpapi.to_host(self.mean_) if with_mean else None
        return xpapi.plain_transform(X, mean, scale, inverse, ns)


if _SKLEARN_IMPORT_ERROR is None:
    # after the class: scikit-learn wraps the methods as the class is created
    BatchNormScaler.transform = (  # type: ignore[method-assign]
        lazy_frames_stay_lazy(BatchNormScaler.transform, is_dask_frame))
    BatchNormScaler.fit_transform = (  # type: ignore[method-assign]
        lazy_frames_stay_lazy(BatchNormScaler.fit_transform, is_dask_frame))
