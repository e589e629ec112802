"""The scikit-learn side of BatchNormScaler: optional imports and StandardScaler's checks.

scikit-learn is optional: this module imports without it (``_SKLEARN_IMPORT_ERROR`` is then
the ImportError, and ``_BASES`` a stand-in base class whose constructor raises it). Version
differences (``validate_data``, ``ensure_all_finite``, the callback API) are bridged here.
"""
from __future__ import annotations

import contextlib
import functools
import numbers
from typing import Any, Callable, Iterator, TypeVar

import numpy as np

from ._scaler_sparse import is_sparse

_F = TypeVar("_F", bound=Callable[..., Any])

_SKLEARN_IMPORT_ERROR: ImportError | None
_BASES: tuple[type, ...]
_sk_validate_data: Callable[..., Any] | None = None
_sk_check_sample_weight: Callable[..., Any] | None = None
_sk_output_config: Callable[..., Any] | None = None
_PARAMETER_CONSTRAINTS: dict[str, list[Any]] = {}


def _no_callbacks(method: _F) -> _F:
    return method


_with_callbacks: Callable[[_F], _F] = _no_callbacks

try:
    from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
    from sklearn.utils.validation import check_array, check_is_fitted
except ImportError as exc:  # scikit-learn is an optional dependency
    _SKLEARN_IMPORT_ERROR = exc

    class _SklearnMissing:
        def __new__(cls, *args, **kwargs):
            raise ImportError(
                f"{cls.__name__} needs scikit-learn, which is not installed: "
                "pip install scikit-learn (or install bnfast with its `test` extra: "
                "pip install 'bnfast[test]')") from _SKLEARN_IMPORT_ERROR

    _BASES = (_SklearnMissing,)
    # Never called (the scaler cannot be constructed), but importable.
    check_array = check_is_fitted = None  # type: ignore[assignment]
else:
    _SKLEARN_IMPORT_ERROR = None
    _BASES = (OneToOneFeatureMixin, TransformerMixin, BaseEstimator)
    try:
        from sklearn.utils.validation import validate_data
    except ImportError:  # scikit-learn < 1.6
        pass
    else:
        _sk_validate_data = validate_data
    try:  # private, but StandardScaler's own check: the same messages
        from sklearn.utils.validation import _check_sample_weight
    except ImportError:
        pass
    else:
        _sk_check_sample_weight = _check_sample_weight
    try:  # StandardScaler's parameter checks: InvalidParameterError (ValueError, TypeError)
        from sklearn.utils._param_validation import Interval
    except ImportError:  # scikit-learn < 1.2: bnfast's own checks below (ValueError)
        pass
    else:
        _PARAMETER_CONSTRAINTS = {
            "eps": [Interval(numbers.Real, 0, None, closed="left")],
            "momentum": [Interval(numbers.Real, 0, 1, closed="both"), None],
            "with_mean": ["boolean"],
            "with_std": ["boolean"],
            "copy": ["boolean"],
            "n_threads": [Interval(numbers.Integral, 1, None, closed="left"), None],
        }
    try:  # the output configuration set_output reads (scikit-learn >= 1.2)
        from sklearn.utils._set_output import _get_output_config
    except ImportError:
        pass
    else:
        _sk_output_config = _get_output_config
    try:  # the callback API (scikit-learn 1.9): detected by feature, not by version
        from sklearn.callback import CallbackSupportMixin, with_callbacks
    except ImportError:
        pass
    else:
        _BASES = (CallbackSupportMixin, *_BASES)
        _with_callbacks = with_callbacks

# The dtypes kept as they are (StandardScaler's: float16 too); anything else becomes float64.
_FLOAT_DTYPES = (np.float64, np.float32, np.float16)


class _OutOfRangeError(ValueError, OverflowError):
    """A number beyond float64's range: a ValueError (bnfast's convention for bad input) that
    is also the OverflowError scikit-learn's checks let through."""


@functools.lru_cache(maxsize=None)
def _counts_in_float() -> bool:
    """Whether StandardScaler counts unweighted samples in float64 (scikit-learn 1.9) or in
    int64 (earlier versions): asked of StandardScaler itself, once."""
    from sklearn.preprocessing import StandardScaler

    counts = StandardScaler().fit(np.zeros((2, 1))).n_samples_seen_
    return bool(np.asarray(counts).dtype.kind == "f")


def _old_sklearn_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    # scikit-learn < 1.6 spells ensure_all_finite force_all_finite and has no force_writeable.
    if "ensure_all_finite" in kwargs:
        kwargs["force_all_finite"] = kwargs.pop("ensure_all_finite")
    kwargs.pop("force_writeable", None)
    return kwargs


def _validate_data(estimator: Any, X: Any, **kwargs: Any) -> Any:
    with _overflow_as_value_error(kwargs.get("input_name") or "X"):
        if _sk_validate_data is not None:
            return _sk_validate_data(estimator, X, **kwargs)
        return estimator._validate_data(X, **_old_sklearn_kwargs(kwargs))


def _check_array(X: Any, **kwargs: Any) -> Any:
    if _sk_validate_data is None:
        kwargs = _old_sklearn_kwargs(kwargs)
    with _overflow_as_value_error(kwargs.get("input_name") or "X"):
        return check_array(X, **kwargs)


@contextlib.contextmanager
def _overflow_as_value_error(name: str) -> Iterator[None]:
    """scikit-learn's checks let NumPy's OverflowError (a Python int beyond float64) through."""
    try:
        yield
    except _OutOfRangeError:
        raise
    except OverflowError as exc:
        raise _OutOfRangeError(
            f"{name}: expected real numbers within float64's range ({exc})") from exc


@contextlib.contextmanager
def _unchanged_on_error(estimator: Any) -> Iterator[None]:
    """A fit that raises (KeyboardInterrupt included) leaves the estimator as it was.

    Fitting rebinds its attributes to new objects, never changes them in place, so a shallow
    copy of ``vars(estimator)`` is enough to put everything back.
    """
    saved = dict(vars(estimator))
    try:
        yield
    except BaseException:
        vars(estimator).clear()
        vars(estimator).update(saved)
        raise


def _owned_copy(X: Any, X_in: Any) -> bool:
    """True when validation made ``X`` a fresh array or sparse matrix (CSC converted to CSR,
    say), which may then be written in place."""
    if X is X_in:
        return False
    if is_sparse(X):
        return not (is_sparse(X_in) and np.may_share_memory(X.data, X_in.data))
    return isinstance(X_in, np.ndarray) and not np.may_share_memory(X, X_in)


def lazy_frames_stay_lazy(method: _F, is_frame: Callable[[Any], bool]) -> _F:
    """``transform`` / ``fit_transform`` as scikit-learn's set_output wrapped them, except
    that a dask DataFrame's output (``is_frame(X)``) stays a lazy dask DataFrame (the wrapper would compute it
    into pandas): it is the output for "default" and "pandas"; "polars" raises before fitting.
    """
    unwrapped = getattr(method, "__wrapped__", None)  # functools.wraps of sklearn's wrapper
    output_config = _sk_output_config
    if unwrapped is None or output_config is None:
        return method

    @functools.wraps(method)
    def dispatch(self: Any, X: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_frame(X):
            return method(self, X, *args, **kwargs)
        dense = output_config("transform", self)["dense"]
        if dense not in ("default", "pandas"):
            raise ValueError(f"set_output(transform={dense!r}): the output of a dask "
                             f"DataFrame is a lazy dask DataFrame; use 'default' or 'pandas' "
                             f"(or compute X first)")
        return unwrapped(self, X, *args, **kwargs)

    return dispatch  # type: ignore[return-value]
