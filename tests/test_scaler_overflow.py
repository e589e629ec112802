"""BatchNormScaler on features whose variance overflows float64 (values around 1e200): var_ is
inf, as StandardScaler's, but mean_ and scale_ are exact and finite and the output has unit
variance; features without overflow are untouched, bit for bit."""

import numpy as np
import pytest

import bnfast
from _helpers import assert_bits_equal, stat_rtol, unit_roundoff

pytest.importorskip("sklearn")

F64 = np.float64
BIG = 1e200


def _data(rng, n=400, p=5):
    """Column 0 and 2 around 1e200 (spread 1e199 to 1e200, offset up to 3e200), the rest
    ordinary; all finite."""
    X = rng.standard_normal((n, p)) * rng.uniform(0.5, 4, p) + rng.uniform(-10, 10, p)
    X[:, [0, 2]] = (rng.standard_normal((n, 2)) * rng.uniform(0.1, 1, 2)
                    + rng.uniform(-3, 3, 2)) * BIG
    return X


def _reference(X, w=None):
    """float64 mean and standard deviation of X / 1e200 (exact scaling by a power of ten is
    not needed: the reference only has to be accurate), scaled back."""
    Xs = X / BIG
    w = np.ones(len(X)) if w is None else w
    ok = ~np.isnan(Xs)
    W = w[:, None] * ok
    mean = (W * np.where(ok, Xs, 0)).sum(axis=0) / W.sum(axis=0)
    var = (W * np.where(ok, Xs - mean, 0) ** 2).sum(axis=0) / W.sum(axis=0)
    return mean * BIG, np.sqrt(var) * BIG


def _check(scaler, X, w=None, n=None):
    n = len(X) if n is None else n
    mean, std = _reference(X, w)
    big = np.nanmax(np.abs(X), axis=0)
    # the statistics of X / 2**e (exact) within stat_rtol(n) of max |x| / 2**e, scaled back;
    # the reference's own rounding of X / 1e200 adds a few more (one per value: within it)
    rtol = stat_rtol(n + 3) + 8 * unit_roundoff()
    for c in (0, 2):
        assert np.isinf(scaler.var_[c])  # StandardScaler's var_ too
        assert np.isfinite(scaler.scale_[c]) and np.isfinite(scaler.mean_[c])
        assert abs(scaler.mean_[c] - mean[c]) <= rtol * big[c]
        # sqrt: half the variance's relative error, relative to (max |x - mean|)^2 / std^2
        assert abs(scaler.scale_[c] - std[c]) <= rtol * 4 * (big[c] / std[c]) * big[c]


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("nan", [False, True], ids=["no-nan", "nan"])
@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_scale_is_finite_where_the_variance_overflows(rng, weighted, nan, eps):
    X = _data(rng)
    if nan:
        X[rng.random(X.shape) < 0.1] = np.nan
    w = rng.uniform(0, 3, len(X)) if weighted else None
    scaler = bnfast.BatchNormScaler(eps=eps).fit(X, sample_weight=w)
    _check(scaler, X, w)
    # the other features: exactly what they get without the big ones
    alone = bnfast.BatchNormScaler(eps=eps).fit(X[:, [1, 3, 4]], sample_weight=w)
    for attr in ("mean_", "var_", "scale_"):
        assert_bits_equal(getattr(scaler, attr)[[1, 3, 4]], getattr(alone, attr), attr)
    Y = scaler.transform(X)
    assert np.isfinite(Y[~np.isnan(X)]).all()
    _, y_std = _reference(Y * BIG, w)  # unit variance (up to eps / var, nothing here)
    np.testing.assert_allclose(y_std[[0, 2]] / BIG, 1.0, rtol=1e-9)
    back = scaler.inverse_transform(Y)
    np.testing.assert_allclose(back, X, rtol=0, atol=1e-12 * np.nanmax(np.abs(X)))


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_sparse_features_around_1e200(rng, fmt):
    sp = pytest.importorskip("scipy.sparse")
    X = _data(rng)
    X[rng.random(X.shape) < 0.5] = 0.0
    S = sp.csr_matrix(X).asformat(fmt)
    scaler = bnfast.BatchNormScaler(with_mean=False, eps=0).fit(S)
    _check(scaler, X)
    Y = scaler.transform(S)
    assert np.isfinite(Y.data).all()


def test_partial_fit_merges_in_scaled_terms(rng):
    """Chunks merged (Chan) where each chunk's and the merged variance overflow; also two
    constant chunks at -1e154 and 1e154, whose merge alone overflows."""
    X = _data(rng, n=600)
    scaler = bnfast.BatchNormScaler(eps=0)
    for a, b in ((0, 100), (100, 101), (101, 600)):
        scaler.partial_fit(X[a:b])
    _check(scaler, X, n=3 * len(X))
    pair = bnfast.BatchNormScaler(eps=0).partial_fit([[-1e154]]).partial_fit([[1e154]])
    assert pair.mean_[0] == 0.0 and pair.var_[0] == 1e308
    assert abs(pair.scale_[0] - 1e154) <= 4 * unit_roundoff() * 1e154


def test_momentum_average_in_scaled_terms(rng):
    X1, X2 = _data(rng), _data(rng)
    scaler = bnfast.BatchNormScaler(eps=0, momentum=0.5).partial_fit(X1).partial_fit(X2)
    m1, s1 = _reference(X1)
    m2, s2 = _reference(X2)
    want_std = np.sqrt(0.5 * (s1 / BIG) ** 2 + 0.5 * (s2 / BIG) ** 2) * BIG
    rtol = 4 * (stat_rtol(len(X1)) + 8 * unit_roundoff())
    for c in (0, 2):
        big = max(np.abs(X1[:, c]).max(), np.abs(X2[:, c]).max())
        assert np.isinf(scaler.var_[c])
        assert abs(scaler.mean_[c] - 0.5 * (m1[c] + m2[c])) <= rtol * big
        assert abs(scaler.scale_[c] - want_std[c]) <= rtol * 4 * (big / want_std[c]) * big
