"""BatchNormScaler's statistics: the Welford state of a batch and of the fitted scaler, merged
(``merge_moments``, the kernels' Chan merge) or averaged, and turned into ``mean_``, ``var_``
and ``scale_``, also where the squares overflow float64.

A state here is ``(count, mean, m2, exp)`` per feature: the Welford state of the feature's
values divided by ``2**exp``. ``exp`` is 0 except for features whose sum of squares overflows
float64 (values from about 1e154): their statistics are taken on the values scaled by a
power of two, which is exact, so that ``mean_`` and ``scale_`` stay exact and finite wherever
the standard deviation is representable; ``var_`` then overflows to inf, as StandardScaler's
does. Features without overflow get exactly the bits they would get without this.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from ._functional import merge_moments, moments_state
from ._scaler_sparse import batch_state as sparse_batch_state
from ._scaler_sparse import columns as sparse_columns
from ._scaler_sparse import is_sparse

_F64_EPS = np.finfo(np.float64).eps


class State(NamedTuple):
    """Per-feature Welford state of the values divided by 2**exp (float64; exp int64); n is
    the count (the weight of the values counted)."""
    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    exp: np.ndarray


def all_finite(*arrays: np.ndarray) -> np.ndarray:
    ok = np.isfinite(arrays[0])
    for a in arrays[1:]:
        ok &= np.isfinite(a)
    return ok


def _exponent(magnitude: np.ndarray) -> np.ndarray:
    """exp with magnitude / 2**exp in [0.5, 1) (0 for 0)."""
    return np.frexp(magnitude)[1].astype(np.int64)


def batch_state(X: Any, w: np.ndarray | None, n_threads: int | None,
                check_finite: Callable[[], Any]) -> State:
    """The state of a batch: a float NumPy array or a CSR / CSC matrix, NaN skipped, rows
    weighted by w. check_finite() raises scikit-learn's error when X holds an infinity: it
    runs only when some feature's statistics came out non-finite, so finite data take one
    pass (two for sparse)."""
    sparse = is_sparse(X)
    if sparse:
        count, mean, m2 = sparse_batch_state(X, w, n_threads)
    elif w is None:
        # The plain kernel is the fast path; a NaN or an inf makes its feature's
        # statistics non-finite, and only those features are redone below.
        count, mean, m2 = moments_state(X, n_threads=n_threads)
    else:
        count, mean, m2 = moments_state(X, sample_weight=w, skipna=True, n_threads=n_threads)
    exp = np.zeros(count.shape[0], np.int64)
    bad = ~all_finite(mean, m2)
    if not bad.any():
        return State(count, mean, m2, exp)
    check_finite()  # infinity: scikit-learn's error; else NaN, or squares beyond float64
    if not sparse and w is None:
        cols = np.flatnonzero(bad)
        part = moments_state(X[:, cols], skipna=True, n_threads=n_threads)
        for full, values in zip((count, mean, m2), part):
            full[cols] = values
    over = np.flatnonzero(~all_finite(mean, m2) & (count > 0))
    if over.size:
        # Scaled by a power of two below the largest |value|: the sums of squares fit.
        values = sparse_columns(X, over) if sparse else np.asarray(X[:, over], np.float64)
        exp[over] = _exponent(np.nanmax(np.abs(values), axis=0))
        part = moments_state(np.ldexp(values, -exp[over]), skipna=True, sample_weight=w,
                             n_threads=n_threads)
        for full, values in zip((count, mean, m2), part):
            full[over] = values
    return State(count, mean, m2, exp)


def fitted_state(mean_: Any, var_: Any, scale_: Any, n_samples_seen_: Any,
                 n_features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fitted statistics as (count, mean, var, exp) in the same scaled terms (features
    never seen: zeros). var_ of inf, or var_ * count beyond float64, comes back scaled, from
    scale_ where var_ overflowed."""
    count = np.broadcast_to(np.asarray(n_samples_seen_, np.float64), (n_features,)).copy()
    seen = count > 0
    mean = np.zeros(n_features) if mean_ is None else np.where(seen, mean_, 0.0)
    var = np.zeros(n_features) if var_ is None else np.where(seen, var_, 0.0)
    exp = np.zeros(n_features, np.int64)
    with np.errstate(over="ignore", invalid="ignore"):
        over = seen & ~np.isfinite(var * count)
    if over.any():
        std = np.where(np.isfinite(var), np.sqrt(var), scale_)[over]
        exp[over] = _exponent(np.maximum(np.abs(mean[over]), std))
        mean[over] = np.ldexp(mean[over], -exp[over])
        var[over] = np.ldexp(std, -exp[over]) ** 2
    return count, mean, var, exp


def _rescaled(state: State, exp: np.ndarray) -> State:
    """state in terms of the values divided by 2**exp (exp >= state.exp)."""
    if not (exp != state.exp).any():
        return state
    shift = state.exp - exp
    return State(state.n, np.ldexp(state.mean, shift), np.ldexp(state.m2, 2 * shift), exp)


def merge(a: State, b: State) -> State:
    """The state of the union of a's and b's values (Chan et al., through the kernels)."""
    exp = np.maximum(a.exp, b.exp)
    a, b = _rescaled(a, exp), _rescaled(b, exp)
    merged = State(*merge_moments([a[:3], b[:3]]), exp)
    over = ~all_finite(merged.mean, merged.m2) & all_finite(a.mean, a.m2, b.mean, b.m2)
    if over.any():  # the means' difference squared overflowed: merged again, scaled down
        exp = exp.copy()
        exp[over] += _exponent(np.maximum(np.abs(a.mean), np.abs(b.mean)))[over]
        a, b = _rescaled(a, exp), _rescaled(b, exp)
        again = merge_moments([a[:3], b[:3]])
        for full, part in zip(merged[:3], again):
            full[over] = part[over]
        merged = merged._replace(exp=exp)
    return merged


def moving_average(prev: tuple[np.ndarray, ...], batch: State,
                   momentum: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(count, mean, var, exp) of the exponential moving average (the ``momentum`` rule):
    the first batch with values of a feature initializes it, a batch without leaves it."""
    prev_count, prev_mean, prev_var, prev_exp = prev
    exp = np.maximum(prev_exp, batch.exp)
    shift = prev_exp - exp
    prev_mean, prev_var = np.ldexp(prev_mean, shift), np.ldexp(prev_var, 2 * shift)
    batch = _rescaled(batch, exp)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = batch.m2 / batch.n
    fresh = prev_count == 0       # first values of this feature: they initialize
    update = ~fresh & (batch.n > 0)  # a batch without values leaves it as it was
    mean = np.where(fresh, batch.mean, np.where(
        update, (1.0 - momentum) * prev_mean + momentum * batch.mean, prev_mean))
    var = np.where(fresh, var, np.where(
        update, (1.0 - momentum) * prev_var + momentum * var, prev_var))
    return prev_count + batch.n, mean, var, exp


def attributes(count: np.ndarray, mean: np.ndarray, var: np.ndarray, exp: np.ndarray,
               eps: float, with_std: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """mean_, var_ and scale_ from (count, mean, var, exp) in scaled terms.

    ``scale_ = sqrt(var_ + eps)`` is taken before scaling back, so it is finite wherever the
    standard deviation is, even where var_ overflows to inf.
    """
    # The weighted kernel's m2 of a constant feature can round to just below zero: a
    # variance is never negative (and its square root must not warn).
    var = np.maximum(var, 0.0)  # NaN (a feature without values) stays NaN
    empty = count == 0
    mean[empty] = np.nan  # StandardScaler's statistics of a feature with no values
    var[empty] = np.nan
    scaled = bool(exp.any())  # else exp is all 0: the plain arithmetic, spared the ldexp
    scale = None
    if with_std:
        scale = np.sqrt(var + (np.ldexp(eps, -2 * exp) if scaled else eps))
        if eps == 0:
            # StandardScaler's test for "constant up to rounding" (Chan, Golub, LeVeque's
            # error bound of the variance): such features are left unscaled. Both sides
            # scale alike, so the scaled terms give the same answer.
            constant = var <= count * _F64_EPS * var + (count * mean * _F64_EPS) ** 2
            scale[constant] = 1.0
            exp = np.where(constant, 0, exp)
        if scaled:
            scale = np.ldexp(scale, exp)
    if not scaled:
        return mean, var, scale
    with np.errstate(over="ignore"):
        return np.ldexp(mean, exp), np.ldexp(var, 2 * exp), scale
