"""bnfast.BatchNormScaler: the scikit-learn transformer (scikit-learn is optional)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import bnfast

try:
    import sklearn  # noqa: F401
    from sklearn.preprocessing import StandardScaler
    from sklearn.utils.estimator_checks import parametrize_with_checks
except ImportError:
    HAVE_SKLEARN = False
else:
    HAVE_SKLEARN = True

needs_sklearn = pytest.mark.skipif(not HAVE_SKLEARN, reason="scikit-learn is not installed")

F64 = np.float64


def _data(rng, n=200, p=6, dtype=F64, nan_frac=0.0, constant_col=None):
    """Features with different offsets and spreads, optionally a constant column and NaN."""
    X = rng.standard_normal((n, p)) * rng.uniform(0.5, 4, p) + rng.uniform(-10, 10, p)
    if constant_col is not None:
        X[:, constant_col] = rng.uniform(-5, 5)
    if nan_frac:
        X[rng.random(X.shape) < nan_frac] = np.nan
    return X.astype(dtype)


def _ref_stats(X, w=None):
    """float64 NumPy weighted mean / biased variance / count per feature, NaN skipped."""
    X = np.asarray(X, F64)
    w = np.ones(X.shape[0]) if w is None else np.asarray(w, F64)
    ok = ~np.isnan(X)
    W = w[:, None] * ok
    count = W.sum(axis=0)
    Xz = np.where(ok, X, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (W * Xz).sum(axis=0) / count
        var = (W * np.where(ok, X - mean, 0.0) ** 2).sum(axis=0) / count
    return count, mean, var


if HAVE_SKLEARN:
    @parametrize_with_checks([
        bnfast.BatchNormScaler(),
        bnfast.BatchNormScaler(eps=0.0, momentum=0.3, with_mean=False),
        bnfast.BatchNormScaler(with_std=False),
    ])
    def test_sklearn_estimator_checks(estimator, check):
        """scikit-learn's own estimator checks, with no expected failures."""
        check(estimator)


@needs_sklearn
@pytest.mark.parametrize("dtype", [np.float32, F64])
@pytest.mark.parametrize("with_mean, with_std", [(True, True), (True, False), (False, True),
                                                 (False, False)])
@pytest.mark.parametrize("nan_frac", [0.0, 0.1], ids=["no-nan", "nan"])
def test_eps0_reproduces_standard_scaler(rng, dtype, with_mean, with_std, nan_frac):
    X = _data(rng, dtype=dtype, nan_frac=nan_frac, constant_col=2)
    ours = bnfast.BatchNormScaler(eps=0, with_mean=with_mean, with_std=with_std)
    theirs = StandardScaler(with_mean=with_mean, with_std=with_std)
    Y, Y_ref = ours.fit_transform(X), theirs.fit_transform(X)
    assert Y.dtype == dtype
    rtol = 2e-6 if dtype == np.float32 else 1e-12
    assert np.array_equal(np.isnan(Y), np.isnan(X))
    np.testing.assert_allclose(Y, Y_ref, rtol=rtol, atol=rtol * 10)
    np.testing.assert_allclose(ours.transform(X), Y, rtol=rtol, atol=rtol * 10)
    if with_std:
        assert ours.scale_[2] == 1.0  # the constant column is left unscaled
    if with_mean:
        # 0 up to the rounding of the mean (the NaN-skipping kernel's mean of a constant
        # is within a few ulps of it)
        np.testing.assert_allclose(Y[:, 2][~np.isnan(X[:, 2])], 0.0, atol=1e-12)
    for attr in ("mean_", "var_", "scale_"):
        got, want = getattr(ours, attr), getattr(theirs, attr)
        if want is None:
            assert got is None, attr
        else:
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, err_msg=attr)
    np.testing.assert_array_equal(ours.n_samples_seen_, theirs.n_samples_seen_)
    np.testing.assert_allclose(ours.inverse_transform(Y), X, rtol=rtol * 10,
                               atol=rtol * 10 * np.nanmax(np.abs(X)))


@needs_sklearn
def test_n_samples_seen_convention(rng):
    X = _data(rng, n=30, p=3)
    s = bnfast.BatchNormScaler().fit(X)
    assert np.ndim(s.n_samples_seen_) == 0 and s.n_samples_seen_ == 30
    assert np.issubdtype(np.asarray(s.n_samples_seen_).dtype, np.integer)
    X[[0, 1], 1] = np.nan
    s.fit(X)
    assert s.n_samples_seen_.dtype == np.int64
    assert s.n_samples_seen_.tolist() == [30, 28, 30]
    w = rng.uniform(0.5, 2, 30)
    s.fit(X[:, [0, 2]], sample_weight=w)
    assert np.asarray(s.n_samples_seen_).dtype.kind == "f"
    np.testing.assert_allclose(s.n_samples_seen_, w.sum(), rtol=1e-12)


@needs_sklearn
@pytest.mark.parametrize("eps", [0.0, 1e-3])
@pytest.mark.parametrize("weighted", [False, True])
def test_eps_transform_is_batch_norm_with_the_fitted_statistics(rng, eps, weighted):
    X = _data(rng, nan_frac=0.05)
    w = rng.uniform(0.1, 3, X.shape[0]) if weighted else None
    s = bnfast.BatchNormScaler(eps=eps).fit(X, sample_weight=w)
    count, mean, var = _ref_stats(X, w)
    np.testing.assert_allclose(s.mean_, mean, rtol=1e-12)
    np.testing.assert_allclose(s.var_, var, rtol=1e-11)
    np.testing.assert_allclose(s.scale_, np.sqrt(var + eps), rtol=1e-12)
    np.testing.assert_allclose(s.n_samples_seen_, count, rtol=1e-12)
    X_new = _data(rng, n=40, nan_frac=0.05)
    Y = s.transform(X_new)
    np.testing.assert_allclose(Y, (X_new - mean) / np.sqrt(var + eps), rtol=1e-11, atol=1e-12)
    assert np.array_equal(np.isnan(Y), np.isnan(X_new))
    if weighted:
        ref = StandardScaler().fit(X, sample_weight=w)
        np.testing.assert_allclose(s.mean_, ref.mean_, rtol=1e-10)
        np.testing.assert_allclose(s.var_, ref.var_, rtol=1e-9)


@needs_sklearn
def test_large_offset_float32_is_accurate(rng):
    """1e4 + N(0, 1) in float32: statistics within float64 rounding of the exact ones."""
    X = (1e4 + rng.standard_normal((5000, 4))).astype(np.float32)
    s = bnfast.BatchNormScaler(eps=0).fit(X)
    _, mean, var = _ref_stats(X)
    np.testing.assert_allclose(s.mean_, mean, rtol=1e-12)
    np.testing.assert_allclose(s.var_, var, rtol=1e-9)


@needs_sklearn
@pytest.mark.parametrize("weighted", [False, True])
def test_partial_fit_chunks_equal_fit(rng, weighted):
    """momentum=None: partial_fit over uneven chunks == fit on everything (exact merge)."""
    X = _data(rng, n=301, p=5, nan_frac=0.08)
    X[:120, 3] = np.nan  # a feature first seen in a later chunk
    w = rng.uniform(0.2, 2, X.shape[0]) if weighted else None
    whole = bnfast.BatchNormScaler().fit(X, sample_weight=w)
    parts = bnfast.BatchNormScaler()
    for lo, hi in [(0, 1), (1, 50), (50, 51), (51, 200), (200, 301)]:
        parts.partial_fit(X[lo:hi], sample_weight=None if w is None else w[lo:hi])
    np.testing.assert_allclose(parts.mean_, whole.mean_, rtol=1e-12)
    np.testing.assert_allclose(parts.var_, whole.var_, rtol=1e-11)
    np.testing.assert_allclose(parts.scale_, whole.scale_, rtol=1e-11)
    np.testing.assert_allclose(parts.n_samples_seen_, whole.n_samples_seen_, rtol=1e-12)
    _, mean, var = _ref_stats(X, w)
    np.testing.assert_allclose(parts.mean_, mean, rtol=1e-12)
    np.testing.assert_allclose(parts.var_, var, rtol=1e-11)


@needs_sklearn
def test_partial_fit_momentum_is_an_exponential_average(rng):
    m = 0.25
    s = bnfast.BatchNormScaler(momentum=m)
    mean = var = None
    for n in (20, 35, 8, 50):
        X = _data(rng, n=n, p=4, nan_frac=0.1)
        s.partial_fit(X)
        _, bm, bv = _ref_stats(X)
        mean = bm if mean is None else (1 - m) * mean + m * bm
        var = bv if var is None else (1 - m) * var + m * bv
        np.testing.assert_allclose(s.mean_, mean, rtol=1e-12)
        np.testing.assert_allclose(s.var_, var, rtol=1e-11)
    # a feature with no values in a batch keeps its statistics
    X = _data(rng, n=10, p=4)
    X[:, 1] = np.nan
    before = s.mean_[1], s.var_[1]
    s.partial_fit(X)
    assert (s.mean_[1], s.var_[1]) == before
    # fit is a single batch whatever the momentum
    X = _data(rng, n=30, p=4)
    s.fit(X)
    np.testing.assert_allclose(s.mean_, _ref_stats(X)[1], rtol=1e-12)


@needs_sklearn
def test_integer_sample_weight_equals_repetition(rng):
    X = _data(rng, n=40, p=3, nan_frac=0.05)
    w = rng.integers(0, 4, 40)
    w[0] = 1
    a = bnfast.BatchNormScaler().fit(X, sample_weight=w)
    b = bnfast.BatchNormScaler().fit(np.repeat(X, w, axis=0))
    np.testing.assert_allclose(a.mean_, b.mean_, rtol=1e-12)
    np.testing.assert_allclose(a.var_, b.var_, rtol=1e-11)
    np.testing.assert_allclose(a.n_samples_seen_, b.n_samples_seen_)


@needs_sklearn
def test_all_nan_feature(rng):
    X = _data(rng, n=20, p=3)
    X[:, 1] = np.nan
    s = bnfast.BatchNormScaler().fit(X)
    assert np.isnan(s.mean_[1]) and np.isnan(s.var_[1]) and np.isnan(s.scale_[1])
    assert np.isfinite(s.mean_[[0, 2]]).all()
    assert s.n_samples_seen_.tolist() == [20, 0, 20]
    Y = s.transform(_data(rng, n=5, p=3))
    assert np.isnan(Y[:, 1]).all() and np.isfinite(Y[:, [0, 2]]).all()


@needs_sklearn
@pytest.mark.parametrize("where", [(0, 0), (-1, -1), (17, 2)])
def test_infinity_raises(rng, where):
    X = _data(rng, n=50, p=4, nan_frac=0.05)
    bad = X.copy()
    bad[where] = -np.inf if where[0] else np.inf
    for call in (lambda s: s.fit(bad), lambda s: s.fit_transform(bad),
                 lambda s: s.partial_fit(bad),
                 lambda s: s.fit(bad, sample_weight=np.ones(50))):
        with pytest.raises(ValueError, match="infinity"):
            call(bnfast.BatchNormScaler())
    s = bnfast.BatchNormScaler().fit(X)
    with pytest.raises(ValueError, match="infinity"):
        s.transform(bad)


@needs_sklearn
def test_dtypes_copy_and_inputs_unchanged(rng):
    X = _data(rng, dtype=np.float32)
    X_before = X.copy()
    s = bnfast.BatchNormScaler()
    Y = s.fit_transform(X)
    assert Y.dtype == np.float32 and not np.shares_memory(Y, X)
    assert s.transform(X).dtype == np.float32
    assert s.mean_.dtype == F64 and s.var_.dtype == F64
    np.testing.assert_array_equal(X, X_before)
    Xi = np.round(_data(rng)).astype(np.int64)
    assert s.fit_transform(Xi).dtype == F64
    # copy=False: float arrays are transformed in place
    s = bnfast.BatchNormScaler(copy=False).fit(X)
    Z = X.copy()
    out = s.transform(Z)
    assert out is Z
    np.testing.assert_allclose(out, Y, rtol=1e-6, atol=1e-6)
    back = s.inverse_transform(out)
    assert back is Z
    np.testing.assert_allclose(back, X_before, rtol=1e-5, atol=1e-5)
    # transform(copy=True) overrides copy=False
    Z = X.copy()
    assert not np.shares_memory(s.transform(Z, copy=True), Z)
    np.testing.assert_array_equal(Z, X)
    # Fortran-ordered and strided input give the same result
    np.testing.assert_allclose(s.transform(np.asfortranarray(X), copy=True), Y, rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(bnfast.BatchNormScaler().fit_transform(X[::2]),
                               bnfast.BatchNormScaler().fit_transform(X[::2].copy()))


@needs_sklearn
def test_sparse_input_is_rejected(rng):
    sp = pytest.importorskip("scipy.sparse")
    X = sp.random(20, 4, density=0.3, format="csr", random_state=int(rng.integers(1 << 30)))
    with pytest.raises(TypeError, match="[Ss]parse"):
        bnfast.BatchNormScaler(with_mean=False).fit(X)
    s = bnfast.BatchNormScaler().fit(X.toarray())
    with pytest.raises(TypeError, match="[Ss]parse"):
        s.transform(X)


@needs_sklearn
@pytest.mark.parametrize("params", [dict(eps=-1.0), dict(eps=float("nan")), dict(momentum=1.5),
                                    dict(with_mean="yes"), dict(n_threads=0),
                                    dict(copy=None)])
def test_bad_parameters_raise_at_fit(rng, params):
    s = bnfast.BatchNormScaler(**params)  # sklearn convention: __init__ only stores
    with pytest.raises(ValueError):
        s.fit(_data(rng, n=10, p=2))


@needs_sklearn
def test_sample_weight_errors(rng):
    X = _data(rng, n=10, p=2)
    with pytest.raises(ValueError, match="sample_weight"):
        bnfast.BatchNormScaler().fit(X, sample_weight=np.ones(9))
    with pytest.raises(ValueError, match="zero"):
        bnfast.BatchNormScaler().fit(X, sample_weight=np.zeros(10))
    a = bnfast.BatchNormScaler().fit(X, sample_weight=2.0)  # a scalar weighs every sample
    b = bnfast.BatchNormScaler().fit(X)
    np.testing.assert_allclose(a.var_, b.var_, rtol=1e-12)
    assert a.n_samples_seen_ == 20.0


@needs_sklearn
def test_pipeline_and_feature_names(rng):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    X = _data(rng, n=300, p=4)
    y = (X[:, 0] - X[:, 0].mean() + 0.1 * rng.standard_normal(300) > 0).astype(int)
    pipe = make_pipeline(bnfast.BatchNormScaler(), LogisticRegression()).fit(X, y)
    assert pipe.score(X, y) > 0.9
    s = pipe[0]
    assert s.n_features_in_ == 4
    assert s.get_feature_names_out().tolist() == ["x0", "x1", "x2", "x3"]
    assert s.set_output(transform="default") is s


def test_import_without_sklearn():
    """bnfast imports without scikit-learn (and never imports it eagerly); the scaler then
    raises an ImportError saying what to install."""
    code = textwrap.dedent("""
        import sys
        import bnfast
        assert "sklearn" not in sys.modules, "import bnfast imported scikit-learn"
        sys.modules["sklearn"] = None  # as if it were not installed
        try:
            bnfast.BatchNormScaler()
        except ImportError as exc:
            msg = str(exc)
            assert "pip install scikit-learn" in msg and "test" in msg, msg
        else:
            raise AssertionError("no ImportError")
        bn = bnfast.BatchNorm(2)  # the rest works
        bn([[1.0, 2.0], [3.0, 5.0]])
        print("ok")
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(bnfast.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
