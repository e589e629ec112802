"""BatchNormScaler and the array API (scikit-learn's ``array_api_dispatch=True``).

Arrays of another namespace (PyTorch tensors, array-api-strict, ...) are computed on by the
kernels where their memory is the CPU's: DLPack (``np.from_dlpack``) shares it, no copy. Arrays
elsewhere (a GPU) take a plain array-API path: the statistics by the corrected two-pass
algorithm in the array's own namespace and on its device, only O(n_features) numbers coming to
the host to be merged. Outputs and fitted attributes are put in the input's namespace and on
its device, as StandardScaler's are.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

try:  # private, but what StandardScaler itself uses (scikit-learn 1.8+)
    from sklearn import get_config
    from sklearn.utils._array_api import (
        _is_numpy_namespace,
        _max_precision_float_dtype,
        check_same_namespace,
        get_namespace_and_device,
        move_to,
        supported_float_dtypes,
    )
except ImportError:  # older (or no) scikit-learn: no array API support
    AVAILABLE = False
else:
    AVAILABLE = True

# DLPack's device type of plain CPU memory (kDLCPU)
_DLPACK_CPU = 1


class Namespace(NamedTuple):
    xp: Any
    device: Any


def namespace(X: Any) -> Namespace | None:
    """X's namespace and device when dispatch is on and X is an array of a namespace other
    than NumPy; else None (X then goes NumPy's way, as before)."""
    if not AVAILABLE or isinstance(X, np.ndarray) or not get_config()["array_api_dispatch"]:
        return None
    try:
        xp, is_array_api, device = get_namespace_and_device(X)
    except TypeError:  # not an array of a known namespace: NumPy's way
        return None
    if not is_array_api or _is_numpy_namespace(xp):
        return None
    return Namespace(xp, device)


def check_fitted_namespace(X: Any, estimator: Any, method: str) -> None:
    """scikit-learn's error when X's namespace or device is not the one fitted on."""
    if AVAILABLE:
        check_same_namespace(X, estimator, attribute="n_samples_seen_", method=method)


def float_dtypes(ns: Namespace) -> tuple[Any, ...]:
    """The float dtypes X may keep (others become the first)."""
    return tuple(supported_float_dtypes(ns.xp, ns.device))


def host_view(X: Any) -> np.ndarray | None:
    """A NumPy array sharing X's memory when that memory is the CPU's (DLPack), else None."""
    try:
        if X.__dlpack_device__()[0] != _DLPACK_CPU:
            return None
        return np.from_dlpack(X)
    except (AttributeError, BufferError, TypeError, RuntimeError, ValueError):
        return None  # e.g. a tensor that requires grad: the plain path


def fresh(X: Any, X_in: Any) -> bool:
    """True when validation made X a new array (a dtype conversion, say), not sharing memory
    with X_in: it may then be written in place. Unknown (memory off the CPU): False."""
    if X is X_in:
        return False
    a, b = host_view(X), host_view(X_in)
    return a is not None and b is not None and not np.may_share_memory(a, b)


def to_host(a: Any) -> Any:
    """A NumPy array (or None, or a scalar) from any namespace; NumPy input as it is."""
    if a is None or isinstance(a, (np.ndarray, np.generic, float, int)):
        return a
    view = host_view(a)
    if view is not None:
        return view
    return move_to(a, xp=np, device="cpu")


def to_namespace(a: Any, ns: Namespace) -> Any:
    """A NumPy result (array, NumPy scalar or None) as an array of ns on its device.

    float64 stays float64 where the device has it, else becomes its widest float."""
    if a is None:
        return None
    a = np.asarray(a)
    if a.dtype == np.float64:
        widest = _max_precision_float_dtype(ns.xp, ns.device)
        return ns.xp.asarray(a, dtype=widest, device=ns.device)
    return ns.xp.asarray(a, device=ns.device)


def plain_state(X: Any, w: np.ndarray | None,
                ns: Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, mean, m2) per column of X, NaN skipped, rows weighted by w, computed in X's
    namespace on X's device (its widest float): the mean, then the corrected two-pass sums
    around it. Returned as float64 NumPy arrays."""
    xp = ns.xp
    dtype = _max_precision_float_dtype(xp, ns.device)
    Xf = xp.astype(X, dtype)
    ok = ~xp.isnan(Xf)
    weights = (xp.ones((X.shape[0], 1), dtype=dtype, device=ns.device) if w is None
               else xp.reshape(xp.asarray(w, dtype=dtype, device=ns.device), (-1, 1)))
    zero = xp.asarray(0.0, dtype=dtype, device=ns.device)
    W = xp.where(ok, weights, zero)
    count = xp.sum(W, axis=0)
    safe = xp.where(count > 0, count, xp.ones_like(count))
    k = xp.sum(W * xp.where(ok, Xf, zero), axis=0) / safe
    d = xp.where(ok, Xf - k, zero)
    s = xp.sum(W * d, axis=0)
    q = xp.sum(W * d * d, axis=0)
    mean = k + s / safe
    m2 = q - s * (s / safe)
    count, mean, m2 = (np.asarray(to_host(v), dtype=np.float64) for v in (count, mean, m2))
    return count, mean, m2


def plain_transform(X: Any, mean: np.ndarray | None, scale: np.ndarray | None,
                    inverse: bool, ns: Namespace) -> Any:
    """(X - mean) / scale, or X * scale + mean, in X's namespace and dtype on its device."""
    xp = ns.xp

    def vector(v: np.ndarray) -> Any:
        return xp.asarray(np.asarray(v), dtype=X.dtype, device=ns.device)

    Y = X
    if inverse:
        if scale is not None:
            Y = Y * vector(scale)
        if mean is not None:
            Y = Y + vector(mean)
    else:
        if mean is not None:
            Y = Y - vector(mean)
        if scale is not None:
            Y = Y / vector(scale)
    return xp.asarray(Y, copy=True) if Y is X else Y
