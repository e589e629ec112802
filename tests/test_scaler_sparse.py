"""BatchNormScaler on scipy.sparse CSR and CSC input (with_mean=False), as StandardScaler:
statistics against a float64 reference on the dense matrix and against StandardScaler,
partial_fit, transform / inverse_transform (formats, dtypes, in place), errors."""

import numpy as np
import pytest

import bnfast
from _helpers import (
    assert_bits_equal,
    gamma_n,
    stat_rtol,
    sum_tol,
    unit_roundoff,
    weighted_column_moments,
)

sp = pytest.importorskip("scipy.sparse")
pytest.importorskip("sklearn")
from sklearn.preprocessing import StandardScaler  # noqa: E402

F64 = np.float64
CONTAINERS = {"csr_matrix": sp.csr_matrix, "csr_array": sp.csr_array,
              "csc_matrix": sp.csc_matrix, "csc_array": sp.csc_array}


def _sparse_data(rng, n=300, p=6, density=0.3, nan_frac=0.0, dtype=F64):
    """Stored values of different offsets and spreads per column, zeros elsewhere; one column
    all zeros, one stored everywhere; NaN among the stored values if asked."""
    stored = rng.random((n, p)) < density
    stored[:, 1] = False
    stored[:, 2] = True
    values = rng.standard_normal((n, p)) * rng.uniform(0.5, 4, p) + rng.uniform(-20, 20, p)
    D = np.where(stored, values, 0.0)
    if nan_frac:
        D[stored & (rng.random((n, p)) < nan_frac)] = np.nan
    return D.astype(dtype)


def _reference(D, w=None):
    """float64 count, mean and biased variance per column of dense D (NaN skipped)."""
    count, mean, m2 = weighted_column_moments(D, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        return count, mean, m2 / count


def _scales(D):
    """Per column: max |x| and max (x - mean)^2 over the non-NaN values (zeros included)."""
    D = np.asarray(D, F64)
    mean = np.nanmean(D, axis=0)
    big = np.nanmax(np.abs(D), axis=0)
    dev2 = np.nanmax((D - mean) ** 2, axis=0)
    return big, dev2


def _assert_within(got, want, atol, what):
    got, want = np.asarray(got, F64), np.asarray(want, F64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=what)
    err = np.where(np.isnan(want), 0.0, np.abs(got - want))
    bad = err > np.broadcast_to(atol, err.shape)
    limit = np.broadcast_to(atol, err.shape)
    assert not bad.any(), f"{what}: off by {err[bad]} beyond {limit[bad]}"


def _assert_statistics(scaler, D, w=None, n=None):
    """mean_, var_, scale_ and n_samples_seen_ against the float64 reference: each within
    stat_rtol(n) of its column's scale (max |x|; max (x - mean)^2 plus the mean's error
    squared), as the dense statistics are checked; counts within two sums' rounding."""
    n = D.shape[0] if n is None else n
    count, mean, var = _reference(D, w)
    big, dev2 = _scales(D)
    rtol = stat_rtol(n + 3)
    np.testing.assert_allclose(scaler.n_samples_seen_, count if np.ptp(count) else count[0],
                               rtol=0, atol=sum_tol(n, count.max()))
    _assert_within(scaler.mean_, mean, rtol * big, "mean_")
    var_tol = rtol * (dev2 + gamma_n(n + 1) * big ** 2)
    _assert_within(scaler.var_, var, var_tol, "var_")
    # sqrt halves the relative error of var_ + eps (eps = 0 here; constant columns: 1)
    scale = np.where(var <= n * np.finfo(F64).eps * var, 1.0, np.sqrt(var))
    _assert_within(scaler.scale_, scale, var_tol / (2 * np.maximum(scale, 1e-300))
                   + 4 * unit_roundoff() * scale, "scale_")


@pytest.mark.parametrize("container", list(CONTAINERS))
@pytest.mark.parametrize("dtype", [np.float32, F64])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("nan", [False, True], ids=["no-nan", "nan"])
def test_statistics_against_float64_reference(rng, container, dtype, weighted, nan):
    D = _sparse_data(rng, nan_frac=0.1 if nan else 0.0, dtype=dtype)
    w = rng.uniform(0, 3, D.shape[0]) if weighted else None
    scaler = bnfast.BatchNormScaler(eps=0, with_mean=False).fit(CONTAINERS[container](D),
                                                                 sample_weight=w)
    _assert_statistics(scaler, D, w)
    assert scaler.mean_.dtype == scaler.var_.dtype == scaler.scale_.dtype == F64
    assert scaler.scale_[1] == 1.0  # an all-zero column: constant, left unscaled


@pytest.mark.parametrize("container", list(CONTAINERS))
@pytest.mark.parametrize("dtype", [np.float32, F64])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("nan", [False, True], ids=["no-nan", "nan"])
@pytest.mark.parametrize("with_std", [True, False])
def test_parity_with_standard_scaler(rng, container, dtype, weighted, nan, with_std):
    """Attributes, n_samples_seen_'s form, and transform / inverse_transform (type, format,
    dtype, values) as StandardScaler's. StandardScaler sums float32 sparse data in float32
    (bnfast in float64): the bounds take its float32 sums, n roundings of eps32."""
    D = _sparse_data(rng, nan_frac=0.1 if nan else 0.0, dtype=dtype)
    X = CONTAINERS[container](D)
    w = rng.uniform(0, 3, D.shape[0]) if weighted else None
    ours = bnfast.BatchNormScaler(eps=0, with_mean=False, with_std=with_std).fit(
        X, sample_weight=w)
    theirs = StandardScaler(with_mean=False, with_std=with_std).fit(X, sample_weight=w)
    n = D.shape[0]
    acc = gamma_n(n + 3, dtype)  # StandardScaler's sums in X's dtype
    big, dev2 = _scales(D)
    for attr in ("mean_", "var_", "scale_"):
        assert (getattr(ours, attr) is None) == (getattr(theirs, attr) is None), attr
    if with_std:
        _assert_within(ours.mean_, theirs.mean_, 4 * acc * big, "mean_")
        _assert_within(ours.var_, theirs.var_, 8 * acc * big ** 2, "var_")
        _assert_within(ours.scale_, theirs.scale_,
                       4 * acc * big ** 2 / np.maximum(theirs.scale_, 1e-300), "scale_")
    assert np.ndim(ours.n_samples_seen_) == np.ndim(theirs.n_samples_seen_)
    assert np.asarray(ours.n_samples_seen_).dtype.kind == np.asarray(
        theirs.n_samples_seen_).dtype.kind
    np.testing.assert_allclose(ours.n_samples_seen_, theirs.n_samples_seen_, rtol=2 * acc)
    for method in ("transform", "inverse_transform"):
        got, want = getattr(ours, method)(X), getattr(theirs, method)(X)
        assert type(got) is type(want) and got.format == want.format == "csr", method
        assert got.dtype == want.dtype == dtype, method
        # one rounding of x * factor each side, factors within the bound of scale_
        factor = np.ones(D.shape[1]) if not with_std else ours.scale_
        rel = 4 * acc * big ** 2 / factor ** 2 + 4 * unit_roundoff(dtype)
        scale = np.nanmax(np.abs(want.toarray()), axis=0)
        _assert_within(got.toarray(), want.toarray(), rel * scale, method)


@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_partial_fit_in_chunks_equals_fit(rng, fmt, weighted):
    """Chunks of rows (sparse, and one dense) merged exactly (the kernels' Chan merge):
    the statistics of all the rows, within stat_rtol of the reference."""
    D = _sparse_data(rng, n=600, nan_frac=0.05)
    w = rng.uniform(0, 3, D.shape[0]) if weighted else None
    scaler = bnfast.BatchNormScaler(eps=0, with_mean=False)
    bounds = [0, 1, 150, 151, 400, 600]
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = D[a:b] if i == 3 else sp.csr_matrix(D[a:b]).asformat(fmt)
        scaler.partial_fit(part, sample_weight=None if w is None else w[a:b])
    _assert_statistics(scaler, D, w, n=4 * D.shape[0])


def test_momentum_on_sparse_batches(rng):
    """The exponential moving average takes the sparse batches' statistics (zeros counted)."""
    D1, D2 = _sparse_data(rng), _sparse_data(rng)
    scaler = bnfast.BatchNormScaler(eps=0, with_mean=False, momentum=0.25)
    scaler.partial_fit(sp.csr_matrix(D1)).partial_fit(sp.csc_matrix(D2))
    dense = bnfast.BatchNormScaler(eps=0, with_mean=False, momentum=0.25)
    dense.partial_fit(D1).partial_fit(D2)
    _assert_within(scaler.mean_, dense.mean_, stat_rtol(len(D1)) * _scales(D1 + D2)[0], "mean")
    _assert_within(scaler.var_, dense.var_, stat_rtol(len(D1)) * 4 * _scales(D1 + D2)[0] ** 2,
                   "var")


@pytest.mark.parametrize("container", list(CONTAINERS))
@pytest.mark.parametrize("dtype", [np.float32, F64])
def test_copy_false_scales_csr_in_place_and_copy_true_never(rng, container, dtype):
    D = _sparse_data(rng, dtype=dtype)
    X = CONTAINERS[container](D)
    scaler = bnfast.BatchNormScaler(eps=0, with_mean=False).fit(X)
    before = X.copy()
    Y = scaler.transform(X)
    assert Y is not X and not np.shares_memory(Y.data, X.data)
    assert_bits_equal(X.toarray(), before.toarray(), "input after copy=True")
    Z = scaler.transform(X, copy=False)
    assert_bits_equal(Z.toarray(), Y.toarray(), "copy=False result")
    if X.format == "csr":
        assert Z is X  # StandardScaler's in-place transform of CSR
    else:  # CSC is converted to CSR first: the input stays as it was
        assert Z.format == "csr"
        assert_bits_equal(X.toarray(), before.toarray(), "CSC input after copy=False")
    back = scaler.inverse_transform(Y.copy(), copy=False)
    np.testing.assert_allclose(back.toarray(), D.astype(F64), rtol=8 * unit_roundoff(dtype))
    ft = bnfast.BatchNormScaler(eps=0, with_mean=False).fit_transform(before)
    assert type(ft) is type(Y) and ft.format == "csr"
    assert_bits_equal(ft.toarray(), Y.toarray(), "fit_transform")


def test_with_mean_raises_standard_scalers_error(rng):
    X = sp.csr_matrix(_sparse_data(rng))
    scaler = bnfast.BatchNormScaler()
    for method in (scaler.fit, scaler.partial_fit, scaler.fit_transform):
        with pytest.raises(ValueError, match="Cannot center sparse matrices"):
            method(X)
    assert not hasattr(scaler, "mean_")  # a failed fit changes nothing
    scaler.fit(X.toarray())
    fitted = dict(vars(scaler))
    with pytest.raises(ValueError, match="Cannot center sparse matrices"):
        scaler.transform(X)
    with pytest.raises(ValueError, match="Cannot uncenter sparse matrices"):
        scaler.inverse_transform(X)
    with pytest.raises(ValueError, match="Cannot center sparse matrices"):
        scaler.partial_fit(X)
    assert all(vars(scaler)[k] is v for k, v in fitted.items())


def test_duplicate_entries_are_summed_as_scipy_does(rng):
    data = np.array([1.0, 2.0, 5.0, -1.0, 4.0])
    cols = np.array([1, 1, 0, 1, 0])  # rows 0, 0, 1, 2, 2: (0, 1) twice, row 2 unsorted
    X = sp.csr_matrix((data, cols, np.array([0, 2, 3, 5])), shape=(3, 2))
    assert not X.has_canonical_format
    scaler = bnfast.BatchNormScaler(eps=0, with_mean=False).fit(X)
    want = bnfast.BatchNormScaler(eps=0, with_mean=False).fit(X.toarray())
    _assert_within(scaler.mean_, want.mean_, 4 * unit_roundoff() * 5, "mean_")
    _assert_within(scaler.var_, want.var_, 16 * unit_roundoff() * 25, "var_")
    assert not X.has_canonical_format  # summed on a copy: the input is not modified
    np.testing.assert_allclose(scaler.transform(X).toarray(), want.transform(X.toarray()),
                               rtol=4 * unit_roundoff())


def test_malformed_structure_raises(rng):
    X = sp.csr_matrix(_sparse_data(rng, n=20, p=3))
    bad = X.copy()
    bad.indices[0] = 7  # beyond the 3 columns
    scaler = bnfast.BatchNormScaler(eps=0, with_mean=False)
    with pytest.raises(ValueError, match="malformed sparse CSR"):
        scaler.fit(bad)
    scaler.fit(X)
    with pytest.raises(ValueError, match="malformed sparse CSR"):
        scaler.transform(bad)


def test_infinity_raises_scikit_learns_error(rng):
    D = _sparse_data(rng)
    D[3, 2] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        bnfast.BatchNormScaler(with_mean=False).fit(sp.csr_matrix(D))


def test_int64_indices_and_integer_values(rng):
    D = np.round(_sparse_data(rng))
    X = sp.csr_matrix(D.astype(np.int64))
    X.indices, X.indptr = X.indices.astype(np.int64), X.indptr.astype(np.int64)
    scaler = bnfast.BatchNormScaler(eps=0, with_mean=False).fit(X)
    _assert_statistics(scaler, D)
    assert scaler.transform(X).dtype == F64  # integers become float64, as in StandardScaler


def test_results_do_not_depend_on_the_thread_count(rng):
    D = _sparse_data(rng, n=50000, p=30, density=0.2, nan_frac=0.01)
    w = rng.uniform(0, 2, D.shape[0])
    for X in (sp.csr_matrix(D), sp.csc_matrix(D)):
        fitted = [bnfast.BatchNormScaler(eps=0, with_mean=False, n_threads=nt).fit(
            X, sample_weight=w) for nt in (1, 2, 3)]
        outputs = [s.transform(X) for s in fitted]
        for s, Y in zip(fitted[1:], outputs[1:]):
            for attr in ("mean_", "var_", "scale_", "n_samples_seen_"):
                assert_bits_equal(getattr(s, attr), getattr(fitted[0], attr), attr)
            assert_bits_equal(Y.data, outputs[0].data, "transform")


def test_sparse_tag_follows_with_mean():
    assert bnfast.BatchNormScaler(with_mean=False).__sklearn_tags__().input_tags.sparse
    assert not bnfast.BatchNormScaler().__sklearn_tags__().input_tags.sparse
