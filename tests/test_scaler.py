"""bnfast.BatchNormScaler: the scikit-learn transformer (scikit-learn is optional)."""

import re
import textwrap

import numpy as np
import pytest

import bnfast
from _helpers import run_python, stat_rtol

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


def _assert_means_close(got, want, *Xs):
    """Per-feature means against each other or the float64 reference: both within
    stat_rtol(n) of the largest |value| of the data they come from (a mean near zero has
    no relative accuracy to check: its error is the rounding of the sums of its terms)."""
    n = max(len(X) for X in Xs)
    scale = np.max([np.nanmax(np.abs(np.asarray(X, F64)), axis=0) for X in Xs], axis=0)
    tol = stat_rtol(n) * scale
    err = np.abs(np.asarray(got, F64) - np.asarray(want, F64))
    assert np.all(err <= tol), f"means differ by {err} where the bound is {tol}"



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
    """n_samples_seen_ as StandardScaler has it: a scalar when every feature counted the same,
    its dtype (float64 whenever statistics are computed in scikit-learn 1.9, int64 before;
    int64 when none are and there are no weights), sums of weights with sample_weight."""
    X = _data(rng, n=30, p=3)
    s = bnfast.BatchNormScaler().fit(X)
    counts = np.asarray(StandardScaler().fit(X).n_samples_seen_).dtype
    assert counts in (F64, np.int64)
    assert np.ndim(s.n_samples_seen_) == 0 and s.n_samples_seen_ == 30
    assert np.asarray(s.n_samples_seen_).dtype == counts
    X[[0, 1], 1] = np.nan
    s.fit(X)
    assert s.n_samples_seen_.dtype == counts
    assert s.n_samples_seen_.tolist() == [30, 28, 30]
    s = bnfast.BatchNormScaler(with_mean=False, with_std=False).fit(X)
    assert s.n_samples_seen_.dtype == np.int64 and s.n_samples_seen_.tolist() == [30, 28, 30]
    w = rng.uniform(0.5, 2, 30)
    s.fit(X[:, [0, 2]], sample_weight=w)
    assert np.asarray(s.n_samples_seen_).dtype == F64
    # a sum of 30 weights: within 30 roundings of float64
    np.testing.assert_allclose(s.n_samples_seen_, w.sum(), rtol=30 * np.finfo(F64).eps)


@needs_sklearn
@pytest.mark.parametrize("eps", [0.0, 1e-3])
@pytest.mark.parametrize("weighted", [False, True])
def test_eps_transform_is_batch_norm_with_the_fitted_statistics(rng, eps, weighted):
    X = _data(rng, nan_frac=0.05)
    w = rng.uniform(0.1, 3, X.shape[0]) if weighted else None
    s = bnfast.BatchNormScaler(eps=eps).fit(X, sample_weight=w)
    count, mean, var = _ref_stats(X, w)
    _assert_means_close(s.mean_, mean, X)
    np.testing.assert_allclose(s.var_, var, rtol=1e-11)
    np.testing.assert_allclose(s.scale_, np.sqrt(var + eps), rtol=1e-12)
    np.testing.assert_allclose(s.n_samples_seen_, count, rtol=1e-12)
    X_new = _data(rng, n=40, nan_frac=0.05)
    Y = s.transform(X_new)
    np.testing.assert_allclose(Y, (X_new - mean) / np.sqrt(var + eps), rtol=1e-11, atol=1e-12)
    assert np.array_equal(np.isnan(Y), np.isnan(X_new))
    if weighted:
        ref = StandardScaler().fit(X, sample_weight=w)
        _assert_means_close(s.mean_, ref.mean_, X)
        np.testing.assert_allclose(s.var_, ref.var_, rtol=1e-9)


@needs_sklearn
def test_large_offset_float32_is_accurate(rng):
    """1e4 + N(0, 1) in float32: statistics within float64 rounding of the exact ones."""
    X = (1e4 + rng.standard_normal((5000, 4))).astype(np.float32)
    s = bnfast.BatchNormScaler(eps=0).fit(X)
    _, mean, var = _ref_stats(X)
    _assert_means_close(s.mean_, mean, X)
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
    _assert_means_close(parts.mean_, whole.mean_, X)
    np.testing.assert_allclose(parts.var_, whole.var_, rtol=1e-11)
    np.testing.assert_allclose(parts.scale_, whole.scale_, rtol=1e-11)
    np.testing.assert_allclose(parts.n_samples_seen_, whole.n_samples_seen_, rtol=1e-12)
    _, mean, var = _ref_stats(X, w)
    _assert_means_close(parts.mean_, mean, X)
    np.testing.assert_allclose(parts.var_, var, rtol=1e-11)


@needs_sklearn
def test_partial_fit_momentum_is_an_exponential_average(rng):
    m = 0.25
    s = bnfast.BatchNormScaler(momentum=m)
    mean = var = None
    batches = []
    for n in (20, 35, 8, 50):
        X = _data(rng, n=n, p=4, nan_frac=0.1)
        s.partial_fit(X)
        _, bm, bv = _ref_stats(X)
        mean = bm if mean is None else (1 - m) * mean + m * bm
        var = bv if var is None else (1 - m) * var + m * bv
        batches.append(X)
        _assert_means_close(s.mean_, mean, *batches)
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
    _assert_means_close(s.mean_, _ref_stats(X)[1], X)


@needs_sklearn
def test_integer_sample_weight_equals_repetition(rng):
    X = _data(rng, n=40, p=3, nan_frac=0.05)
    w = rng.integers(0, 4, 40)
    w[0] = 1
    a = bnfast.BatchNormScaler().fit(X, sample_weight=w)
    b = bnfast.BatchNormScaler().fit(np.repeat(X, w, axis=0))
    _assert_means_close(a.mean_, b.mean_, X)
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


@needs_sklearn
def test_html_repr_links_to_bnfast_docs():
    """The notebook repr links to bnfast's page for the scaler, as StandardScaler's links to
    scikit-learn's (scikit-learn's _doc_link_module / _doc_link_template)."""
    from bnfast.preprocessing import DOCS_URL
    scaler = bnfast.BatchNormScaler()
    assert scaler._get_doc_link() == DOCS_URL
    html = scaler._repr_html_()
    links = re.findall(r'href="([^"]+)"', html)
    assert links and all(link.startswith(DOCS_URL) for link in links), links
    assert DOCS_URL.endswith("docs/scaler.md")
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(bnfast.__file__)))
    if os.path.isdir(os.path.join(root, "docs")):  # a checkout: the page exists
        assert os.path.exists(os.path.join(root, "docs", "scaler.md"))


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
    out = run_python(code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# -- parity with StandardScaler on dense input ----------------------------------------------

def _assert_within(got, want, atol, err_msg=""):
    """|got - want| <= atol elementwise (atol broadcast per column), NaN where want has NaN."""
    got, want = np.asarray(got, F64), np.asarray(want, F64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=err_msg)
    err = np.where(np.isnan(want), 0.0, np.abs(got - want))
    bad = err > np.broadcast_to(atol, err.shape)
    assert not bad.any(), (f"{err_msg}: {bad.sum()} of {bad.size} beyond the bound; worst "
                           f"excess ratio {np.max(err / np.maximum(atol, 1e-300)):.3g}")


def _columns_max(a):
    """Per-column max of |a| over the non-NaN values (0 for an all-NaN column)."""
    a = np.abs(np.asarray(a, F64))
    return np.where(np.isnan(a), 0.0, a).max(axis=0)


def _parity_data(rng, dtype, nan, n=120, p=5):
    """Offsets and spreads that float16 holds (|x| < 40), a constant column, NaN if asked."""
    X = rng.standard_normal((n, p)) * rng.uniform(0.5, 3, p) + rng.uniform(-20, 20, p)
    X[:, 2] = rng.uniform(-5, 5)  # constant: StandardScaler's scale_ = 1 rule
    if np.dtype(dtype).kind in "iu":
        return np.round(X).astype(dtype)
    if nan:
        X[rng.random(X.shape) < 0.1] = np.nan
    return X.astype(dtype)


def _fit_both(make_ours, make_theirs, fit):
    """Fit both scalers the same way; return them with the warnings each raised."""
    import warnings

    pair = []
    for make in (make_ours, make_theirs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est = fit(make())
        pair.append((est, sorted(f"{w.category.__name__}: {w.message}" for w in caught)))
    return pair


def _assert_same_attributes(ours, theirs, X, w_rel):
    """Fitted attributes: None where StandardScaler has None, float64 arrays, the same
    n_samples_seen_ type and dtype, values within the rounding of float64 statistics."""
    eps64 = np.finfo(F64).eps
    n = X.shape[0]
    big = _columns_max(X)
    # Both sum n terms in float64 (different orders and methods): each statistic is within
    # ~n roundings of max|x| (mean) or max|x|^2 (variance). A relative error w_rel of
    # StandardScaler's weights or counts moves its weighted mean by up to w_rel of the
    # largest |x - mean| <= 2 max|x|, and its variance by up to w_rel of (2 max|x|)^2 (twice:
    # the mean's error enters too).
    mean_tol = 4 * n * eps64 * big + 2 * w_rel * 2 * big
    var_tol = 4 * n * eps64 * big ** 2 + 2 * w_rel * 8 * big ** 2
    for attr, tol in (("mean_", mean_tol), ("var_", var_tol)):
        got, want = getattr(ours, attr), getattr(theirs, attr)
        assert (got is None) == (want is None), attr
        if want is not None:
            assert got.dtype == want.dtype == F64, attr
            _assert_within(got, want, tol, attr)
    assert (ours.scale_ is None) == (theirs.scale_ is None)
    if theirs.scale_ is not None:
        assert ours.scale_.dtype == theirs.scale_.dtype == F64
        # sqrt halves the relative error; the constant column is 1 in both
        assert ours.scale_[2] == theirs.scale_[2] == 1.0
        _assert_within(ours.scale_, theirs.scale_, var_tol / (2 * theirs.scale_) + eps64,
                       "scale_")
    assert type(ours.n_samples_seen_) is type(theirs.n_samples_seen_)
    assert np.asarray(ours.n_samples_seen_).dtype == np.asarray(theirs.n_samples_seen_).dtype
    # sums of n weights; StandardScaler's are rounded to float32 first for float32 data
    np.testing.assert_allclose(ours.n_samples_seen_, theirs.n_samples_seen_,
                               rtol=4 * n * eps64 + w_rel)
    assert ours.n_features_in_ == theirs.n_features_in_
    return mean_tol, var_tol


def _output_tol(dtype, X, Y, ours, mean_tol, var_tol):
    """How far two correct (inverse) transforms may be apart, per column.

    StandardScaler computes ``(x - mean) / scale`` in X's dtype, with mean and scale rounded
    to it: a few roundings of eps_d relative to |x| + |mean| before the division and of |y|
    after; bnfast rounds once. The statistics' own differences (mean_tol, var_tol) add
    their effect on y: dmean / scale + |y| dscale / scale."""
    eps_d = np.finfo(np.dtype(dtype) if np.dtype(dtype).kind == "f" else F64).eps
    scale = ours.scale_ if ours.scale_ is not None else np.ones(X.shape[1])
    mean = ours.mean_ if ours.mean_ is not None else np.zeros(X.shape[1])
    bx, by = _columns_max(X), _columns_max(Y)
    mean = np.where(np.isnan(mean), 0.0, np.abs(mean))
    return (4 * eps_d * ((bx + mean) / scale + by) + 4 * eps_d * by * scale
            + (mean_tol + by * var_tol / (2 * scale)) / scale)


@needs_sklearn
@pytest.mark.parametrize("dtype", [np.float16, np.float32, F64, np.int64])
@pytest.mark.parametrize("with_mean, with_std", [(True, True), (True, False), (False, True),
                                                 (False, False)])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("nan", [False, True], ids=["no-nan", "nan"])
@pytest.mark.parametrize("how", ["fit", "partial_fit"])
def test_parity_with_standard_scaler(rng, dtype, with_mean, with_std, weighted, nan, how):
    """eps=0: the same fitted attributes (dtypes, types, values), the same output dtypes and
    values for transform / fit_transform / inverse_transform, the same NaN, no warnings."""
    if nan and np.dtype(dtype).kind == "i":
        pytest.skip("integer arrays hold no NaN")
    X = _parity_data(rng, dtype, nan)
    w = rng.uniform(0.1, 3, X.shape[0]) if weighted else None
    params = dict(with_mean=with_mean, with_std=with_std)
    # Uneven chunks, with values of every feature in each: StandardScaler's partial_fit keeps
    # NaN statistics for good once a batch had no value of a feature (bnfast starts the
    # feature at its first values instead; test_partial_fit_chunks_equal_fit). Rows of 30+
    # with 10% NaN: a column all NaN has probability 1e-30.
    cuts = [0, 1, 31, 90, X.shape[0]] if not nan else [0, 30, 31 + 30, X.shape[0]]

    def fit(est):
        if how == "fit":
            return est.fit(X, sample_weight=w)
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            est.partial_fit(X[lo:hi], sample_weight=None if w is None else w[lo:hi])
        return est

    (ours, warn_ours), (theirs, warn_theirs) = _fit_both(
        lambda: bnfast.BatchNormScaler(eps=0, **params), lambda: StandardScaler(**params), fit)
    # No warnings from bnfast. StandardScaler's only ones are NumPy's, from the sqrt of a
    # variance rounded below zero (the constant column) or 0/0 of an all-NaN batch column
    # in partial_fit: incidental, and not copied.
    assert warn_ours == []
    assert all(w.startswith("RuntimeWarning: invalid value") for w in warn_theirs), warn_theirs
    if weighted and not (with_mean or with_std):
        # StandardScaler computes no statistics here and counts values, not weights
        # (n_samples_seen_ ignores sample_weight in this case): bnfast sums the weights.
        want = np.where(np.isnan(X), 0.0, w[:, None]).sum(axis=0)
        np.testing.assert_allclose(ours.n_samples_seen_, want[0] if not nan else want,
                                   rtol=4 * X.shape[0] * np.finfo(F64).eps)
        assert ours.mean_ is ours.var_ is ours.scale_ is None is theirs.mean_
        return
    # StandardScaler rounds the weights of float32 data to float32, and in partial_fit with
    # weights its running count of float16 data to float16: relative errors it adds.
    w_rel = 0.0
    if weighted and dtype == np.float32:
        w_rel = np.finfo(np.float32).eps / 2
    if weighted and dtype == np.float16 and how == "partial_fit":
        w_rel = np.finfo(np.float16).eps / 2
    mean_tol, var_tol = _assert_same_attributes(ours, theirs, X, w_rel)

    Y, Y_ref = ours.transform(X), theirs.transform(X)
    assert Y.dtype == Y_ref.dtype == (dtype if np.dtype(dtype).kind == "f" else F64)
    np.testing.assert_array_equal(np.isnan(Y), np.isnan(X))
    tol = _output_tol(dtype, X, Y_ref, ours, mean_tol, var_tol)
    _assert_within(Y, Y_ref, tol, "transform")
    if how == "fit":
        Yf = bnfast.BatchNormScaler(eps=0, **params).fit_transform(X, sample_weight=w)
        assert Yf.dtype == Y.dtype
        _assert_within(Yf, Y_ref, tol, "fit_transform")
    back, back_ref = ours.inverse_transform(Y_ref), theirs.inverse_transform(Y_ref)
    assert back.dtype == back_ref.dtype == Y_ref.dtype
    back_tol = _output_tol(dtype, Y_ref, X, ours, mean_tol, var_tol) * (
        ours.scale_ if ours.scale_ is not None else 1.0)
    _assert_within(back, back_ref, back_tol, "inverse_transform")


@needs_sklearn
@pytest.mark.parametrize("dtype", [np.float16, np.float32, F64, np.int64])
def test_parity_copy_false_and_set_output(rng, dtype):
    """copy=False works in place exactly where StandardScaler does (float arrays of the
    three float dtypes; integers are converted, so a new array); set_output as well."""
    X = _parity_data(rng, dtype, nan=False)
    for make in (lambda: bnfast.BatchNormScaler(eps=0, copy=False),
                 lambda: StandardScaler(copy=False)):
        s = make().fit(X)
        Z = X.copy()
        out = s.transform(Z)
        assert (out is Z) == (np.dtype(dtype).kind == "f"), type(s).__name__
        assert out.dtype == (dtype if np.dtype(dtype).kind == "f" else F64)
        back = s.inverse_transform(out)  # out is a float array: worked on in place
        assert back is out
        assert s.set_output(transform="default") is s
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(X.astype(F64), columns=[f"c{i}" for i in range(X.shape[1])])
    out = bnfast.BatchNormScaler(eps=0).set_output(transform="pandas").fit_transform(df)
    ref = StandardScaler().set_output(transform="pandas").fit_transform(df)
    assert list(out.columns) == list(ref.columns)
    np.testing.assert_allclose(out.to_numpy(), ref.to_numpy(), rtol=0,
                               atol=4 * X.shape[0] * np.finfo(F64).eps * 40)


@needs_sklearn
def test_float16_statistics_are_float64(rng):
    """float16 data: float64 statistics of the float16 values (not float16 statistics), and
    float16 out, as StandardScaler."""
    X = (rng.standard_normal((500, 3)) * 2 + 30).astype(np.float16)
    s = bnfast.BatchNormScaler(eps=0).fit(X)
    _, mean, var = _ref_stats(X)
    assert s.mean_.dtype == s.var_.dtype == s.scale_.dtype == F64
    # float64 sums of 500 values: within 500 roundings of float64
    np.testing.assert_allclose(s.mean_, mean, rtol=500 * np.finfo(F64).eps)
    np.testing.assert_allclose(s.var_, var, rtol=500 * np.finfo(F64).eps * 30 ** 2 / var.min())
    Y = s.transform(X)
    assert Y.dtype == np.float16
    # one float16 rounding of the float64 result (plus the float64 error, far below it)
    exact = (X.astype(F64) - mean) / np.sqrt(var)
    np.testing.assert_allclose(Y.astype(F64), exact, rtol=np.finfo(np.float16).eps,
                               atol=np.finfo(np.float16).eps * 2)


@needs_sklearn
def test_errors_are_those_of_standard_scaler(rng):
    """Bad data raise what StandardScaler raises (an instance of its exception class)."""
    X = _data(rng, n=20, p=3)
    inf = X.copy()
    inf[3, 1] = np.inf
    cases = [
        ("fit", (X[:, 0],), {}), ("fit", (X[:, :, None],), {}), ("fit", (X[:0],), {}),
        ("fit", (X[:, :0],), {}), ("fit", (X + 1j,), {}), ("fit", ([["a", "b"]],), {}),
        ("fit", (inf,), {}), ("fit", (np.array([[10 ** 400], [1]], dtype=object),), {}),
        ("fit", (X,), dict(sample_weight=np.ones(19))),
        ("fit", (X,), dict(sample_weight=np.ones((20, 1)))),
        ("fit", (X,), dict(sample_weight=np.zeros(20))),
        ("fit", (X,), dict(sample_weight=np.full(20, np.nan))),
        ("fitted.transform", (X[:, :2],), {}), ("fitted.transform", (inf,), {}),
        ("fitted.inverse_transform", (X[:, :2],), {}),
        ("fitted.inverse_transform", (inf,), {}), ("fitted.partial_fit", (X[:, :2],), {}),
        ("transform", (X,), {}), ("inverse_transform", (X,), {}),
    ]
    cases += [("params.fit", (X,), dict(copy=None)), ("params.fit", (X,), dict(with_mean="yes")),
              ("params.partial_fit", (X,), dict(with_std=1)),
              ("params.fit_transform", (X,), dict(copy="no"))]
    for method, args, kwargs in cases:
        if method == "fit" and kwargs.get("sample_weight") is not None and not np.any(
                kwargs["sample_weight"]):
            # older scikit-learn (1.6) accepted all-zero weights (NaN statistics): bnfast
            # rejects them whatever the version
            with pytest.raises(ValueError, match="zero"):
                bnfast.BatchNormScaler().fit(*args, **kwargs)
            continue
        raised = []
        for make in (StandardScaler, lambda **kw: bnfast.BatchNormScaler(eps=0, **kw)):
            if method.startswith("params."):  # bad parameters: an InvalidParameterError
                est, kwargs_call = make(**kwargs), {}
            else:
                est, kwargs_call = make(), kwargs
            if method.startswith("fitted."):
                est.fit(X)
            with pytest.raises(Exception) as info:
                getattr(est, method.split(".")[-1])(*args, **kwargs_call)
            raised.append(info.value)
        theirs, ours = raised
        assert isinstance(ours, type(theirs)), (method, kwargs, theirs, ours)
        if isinstance(theirs, ValueError) and "sample_weight" in kwargs:
            assert str(ours) == str(theirs)  # the same check, the same words


# -- scikit-learn's callback API (scikit-learn 1.9+) -----------------------------------------

class _Recorder:
    """A FitCallback that records every hook call: what a progress or monitoring callback
    sees (task names and ids, the tree, X's dtype and shape, the metadata, a fitted copy)."""

    def __init__(self):
        self.events = []

    def setup(self, estimator, context):
        self.events.append(("setup", type(estimator).__name__, context.task_name))

    def teardown(self, estimator, context):
        self.events.append(("teardown", type(estimator).__name__, context.task_name))

    def on_fit_task_begin(self, estimator, context, *, X=None, y=None, metadata=None,
                          fitted_estimator=None):
        self.events.append(("begin", type(estimator).__name__, context.task_name,
                            context.task_id, context.max_subtasks, context.parent is None,
                            None if X is None else (np.asarray(X).dtype.name, X.shape),
                            y is None, sorted(metadata or {})))

    def on_fit_task_end(self, estimator, context, *, X=None, y=None, metadata=None,
                        fitted_estimator=None):
        scaled = mean_over_scale = None
        if fitted_estimator is not None and type(estimator).__name__.endswith("Scaler"):
            scaled = np.asarray(fitted_estimator.transform(X), F64)
            mean_over_scale = np.abs(fitted_estimator.mean_) / fitted_estimator.scale_
        self.events.append(("end", type(estimator).__name__, context.task_name,
                            context.task_id, None if X is None else np.asarray(X).shape,
                            y is None, sorted(metadata or {}), mean_over_scale, scaled))
        return False


def _normalized(events):
    """Events with the scaler's class name and its transform output taken out."""
    return [tuple("Scaler" if str(v).endswith("Scaler") else v for v in e if
                  not isinstance(v, np.ndarray)) for e in events]


@needs_sklearn
@pytest.mark.parametrize("dtype", [np.float16, np.float32, F64])
def test_callbacks_get_the_events_standard_scaler_sends(rng, dtype):
    pytest.importorskip("sklearn.callback")
    X = _parity_data(rng, dtype, nan=True)
    w = rng.uniform(0.5, 2, X.shape[0])
    logs = []
    for make in (lambda: bnfast.BatchNormScaler(eps=0), StandardScaler):
        rec = _Recorder()
        est = make()
        assert est.set_callbacks(rec) is est
        est.fit(X)
        est.partial_fit(X[:60], sample_weight=w[:60])
        est.fit_transform(X, np.zeros(X.shape[0]))
        with pytest.raises(ValueError):
            est.fit(X[:, :0])  # invalid X: no task begins, nothing to tear down
        with pytest.raises(ValueError):
            est.fit(X, sample_weight=np.ones(3))  # fails inside the task: torn down anyway
        assert not [k for k in vars(est) if "callback_fit_ctx" in k or "teardown" in k]
        logs.append(rec.events)
    ours, theirs = logs
    assert _normalized(ours) == _normalized(theirs)
    assert [e[0] for e in ours] == ["setup", "begin", "end", "teardown"] * 3 + [
        "setup", "begin", "teardown"]
    # the fitted copy handed to on_fit_task_end transforms as the scaler does
    for e_ours, e_theirs in zip(ours, theirs):
        if e_ours[0] == "end":
            Y, Y_ref = e_ours[-1], e_theirs[-1]
            # a few roundings of y in X's dtype, and StandardScaler's rounding of the mean to
            # X's dtype before it subtracts: u |mean| / scale (float16: up to 0.016 here)
            u = np.finfo(dtype).eps / 2
            scale = 8 * u * (1 + _columns_max(Y_ref)) + 2 * u * e_theirs[-2]
            _assert_within(Y, Y_ref, 8 * X.shape[0] * np.finfo(F64).eps * 40 + scale)


@needs_sklearn
def test_callbacks_in_a_pipeline_and_a_real_monitor(rng):
    """sklearn.callback.ScoringMonitor on the scaler alone and auto-propagated callbacks
    through a Pipeline: the same logs as with StandardScaler, no 'does not support
    callbacks' warning."""
    callback = pytest.importorskip("sklearn.callback")
    import warnings

    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline

    X = _parity_data(rng, F64, nan=False)
    y = X @ rng.standard_normal(X.shape[1]) + rng.standard_normal(X.shape[0])

    def score(est, X, y, sample_weight=None):
        return float(np.mean(est.transform(X)[:, 0] * y))

    scores = []
    for make in (lambda: bnfast.BatchNormScaler(eps=0), StandardScaler):
        monitor = callback.ScoringMonitor(scoring={"score": score})
        make().set_callbacks(monitor).fit(X, y)
        log = monitor.get_logs()
        assert len(log.data) == 1 and log.data[0]["task_name"] == "fit"
        scores.append(log.data[0]["score"])
        # a Pipeline propagates its auto-propagated callbacks to the scaler step
        rec = _Recorder()
        rec.max_propagation_depth = None  # makes it an AutoPropagatedCallback
        assert isinstance(rec, callback.AutoPropagatedCallback)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make_pipeline(make(), LinearRegression()).set_callbacks(rec).fit(X, y)
        # (LinearRegression itself does not take callbacks: scikit-learn warns about it)
        assert not [w for w in caught if "Scaler does not support" in str(w.message)]
        scores.append(_normalized(rec.events))
    # the score: a mean of 120 products of O(1) values after the transform
    np.testing.assert_allclose(scores[0], scores[2], rtol=0,
                               atol=1e3 * np.finfo(F64).eps * np.abs(y).max() * 10)
    assert scores[1] == scores[3]
    assert any(e[0] == "begin" and e[1] == "Scaler" for e in scores[1])


@needs_sklearn
def test_without_the_callback_api(rng):
    """A scikit-learn without sklearn.callback (older versions): the scaler still fits, and
    has no set_callbacks."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import sklearn.preprocessing  # (which itself uses sklearn.callback in 1.9)
        sys.modules["sklearn.callback"] = None  # bnfast finds no callback API, as before 1.9
        import bnfast
        s = bnfast.BatchNormScaler(eps=0)
        assert not hasattr(s, "set_callbacks")
        X = np.random.default_rng(0).standard_normal((50, 3))
        Y = s.fit_transform(X)
        assert abs(Y.mean()) < 1e-12 and s.partial_fit(X).n_samples_seen_ == 100
        print("ok")
    """)
    out = run_python(code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@needs_sklearn
def test_constant_weighted_feature_has_zero_variance_without_warnings(rng):
    """A constant feature, weighted, NaN skipped: var_ is 0 or a rounding above it, never
    below (so scale_ is 1 with eps=0 and the square root does not warn), in every batch."""
    import warnings

    # About 1 in 80 such fits (a NaN in the first row) had m2 round below zero: 1000 fits
    # meet it with certainty (the chance of none is e^-13).
    for _ in range(1000):
        n = int(rng.integers(2, 120))
        c = np.float16(rng.uniform(-5, 5))
        X = np.full((n, 2), c)
        X[rng.random(X.shape) < 0.1] = np.nan
        X[-1] = c  # a value in every column
        w = rng.uniform(0.1, 3, n)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            s = bnfast.BatchNormScaler(eps=0).fit(X, sample_weight=w)
        assert (s.var_ >= 0).all()
        # a float64 sum of n weighted squares of deviations that are rounding errors
        assert (s.var_ <= 4 * n * np.finfo(F64).eps * s.mean_ ** 2).all()
        np.testing.assert_array_equal(s.scale_, 1.0)
