"""The sparse kernels (src/sparse.pxi): per-column statistics of CSR and CSC matrices with the
implicit zeros counted, weighted and NaN-skipping, and the column scaling of stored values;
against a float64 NumPy reference on the dense matrix, bit-identical for every thread count."""

import numpy as np
import pytest

from bnfast import _kernels
from _helpers import (
    assert_bits_equal,
    gamma_n,
    stat_rtol,
    sum_tol,
    unit_roundoff,
    weighted_column_moments,
)

sp = pytest.importorskip("scipy.sparse")

F64 = np.float64


def _sparse_data(rng, shape, density, nan_frac=0.0, offset=0.0, dtype=F64):
    """A dense array with stored values of different offsets and spreads per column (zeros
    elsewhere), NaN among the stored values if asked."""
    n, p = shape
    stored = rng.random(shape) < density
    values = rng.standard_normal(shape) * rng.uniform(0.5, 4, p) + rng.uniform(-5, 5, p) + offset
    D = np.where(stored, values, 0.0)
    if nan_frac:
        D[stored & (rng.random(shape) < nan_frac)] = np.nan
    return D.astype(dtype)


def _reference(D, w=None):
    """float64 count, mean and M2 per column of the dense D (the kernels' 0 for nothing
    counted)."""
    count, mean, m2 = weighted_column_moments(D, w)
    return count, np.where(count > 0, mean, 0.0), np.where(count > 0, m2, 0.0)


def _as(D, fmt, index=np.int32):
    X = sp.csr_array(D) if fmt == "csr" else sp.csc_array(D)
    return X.data, X.indices.astype(index), X.indptr.astype(index), X.shape


def _assert_within(got, want, atol, what):
    err = np.abs(np.asarray(got, F64) - want)
    bad = ~(err <= atol)
    assert not bad.any(), f"{what}: columns {np.flatnonzero(bad)} off by {err[bad]} > {atol[bad]}"


def _assert_stats_close(got, D, w):
    """count within the rounding of two sums of the weights; mean and M2 / count within
    stat_rtol(n) of the column's scales (bnfast.stat_scales' rule, per column: max |x| for
    the mean, max (x - mean)^2 plus the mean's error squared for the variance). The kernel's
    passes are sums of n terms of a few roundings each with a shift within the spread of
    the mean (its well-shifted check), which is what stat_rtol bounds."""
    count, mean, m2 = got
    r_count, r_mean, r_m2 = _reference(D, w)
    n = D.shape[0]
    wsum = n if w is None else float(np.sum(w))
    np.testing.assert_allclose(count, r_count, rtol=0, atol=sum_tol(n, wsum) + 0.0)
    Dz = np.where(np.isnan(D), 0.0, np.asarray(D, F64))
    big = np.abs(Dz).max(axis=0)
    dev2 = np.where(np.isnan(D), 0.0, (np.asarray(D, F64) - r_mean) ** 2).max(axis=0)
    rtol = stat_rtol(n + 3)
    _assert_within(mean, r_mean, rtol * big, "mean")
    with np.errstate(invalid="ignore", divide="ignore"):
        var, r_var = m2 / count, r_m2 / r_count
    ok = r_count > 0
    _assert_within(var[ok], r_var[ok], (rtol * (dev2 + gamma_n(n + 1) * big ** 2))[ok], "var")
    assert np.all(count[~ok] == 0) and np.all(mean[~ok] == 0) and np.all(m2[~ok] == 0)


@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("dtype", [np.float32, F64])
@pytest.mark.parametrize("index", [np.int32, np.int64])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shape, density", [((1, 1), 1.0), ((7, 5), 0.0), ((40, 6), 0.3),
                                            ((3000, 50), 0.05), ((400, 900), 0.02)])
def test_statistics_against_float64_reference(rng, fmt, dtype, index, weighted, shape,
                                              density):
    D = _sparse_data(rng, shape, density, nan_frac=0.05, dtype=dtype)
    D[:, 0] = np.where(D[:, 0] != 0, np.nan, 0.0)  # NaN and implicit zeros only
    w = rng.uniform(0, 3, shape[0]) if weighted else None
    *got, malformed, unsorted = _kernels.sparse_moments(*_as(D, fmt, index), fmt == "csr", w,
                                                        None)
    assert malformed == unsorted == 0
    assert all(a.dtype == F64 and a.shape == (shape[1],) for a in got)
    _assert_stats_close(got, D, w)


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_a_coarse_first_mean_is_refined(rng, fmt):
    """Values 2**56 + 16 k (k in 1..4, exact in float64, one stored per row): the first
    mean (CSC: of the column; CSR: of the first rows, all 5,000 here), a plain sum in row
    order, rounds every 16 k away, a mean off by more than the spread, which
    bn_well_shifted rejects (checked here, on the same sum): the column is summed again
    around the refined shift, and the variance comes out within stat_rtol of the exact
    256 var(k). (This exercises the third pass; at this spread the first shift would still
    have been accurate to 1e-13, so the test cannot tell the passes apart by accuracy.)"""
    n, offset = 5000, 2.0 ** 56
    k = rng.integers(1, 5, (n, 3))
    D = offset + 16.0 * k
    first_mean = np.cumsum(D, axis=0)[-1] / n  # the kernel's first pass: a sum in row order
    d = D - first_mean
    s, q = d.sum(axis=0), (d * d).sum(axis=0)
    assert np.all(s * s > 0.5 * q * n), "the data no longer needs the refined shift"
    count, mean, m2, _, _ = _kernels.sparse_moments(*_as(D, fmt), fmt == "csr", None, None)
    exact_var = 256.0 * k.var(axis=0)  # small integers: exact to a rounding
    np.testing.assert_array_equal(count, n)
    np.testing.assert_allclose(mean, offset + 16.0 * k.mean(axis=0), rtol=0,
                               atol=np.spacing(offset))
    # a refined shift leaves q <= 2 M2 (+ the shift's own rounding, 8 = half a spacing)
    np.testing.assert_allclose(m2 / n, exact_var, rtol=2 * stat_rtol(n), atol=64 * stat_rtol(n))


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_csr_columns_whose_first_rows_mislead_are_summed_again(rng, weighted):
    """CSR shifts come from the first rows (about 16,384 stored values, 64 rows at least):
    columns sorted in increasing order have first rows far below their mean, which the
    check on the whole column catches; they are summed again around their mean."""
    n = 20000
    D = np.sort(rng.standard_normal((n, 4)) * rng.uniform(0.5, 4, 4) + 100.0, axis=0)
    w = rng.uniform(0, 2, n) if weighted else None
    probe = max(64, 16384 * n // D.size)
    d = D - D[:probe].mean(axis=0)
    assert np.all(d.sum(axis=0) ** 2 > 0.5 * (d * d).sum(axis=0) * n), "no longer misled"
    *got, malformed, _ = _kernels.sparse_moments(*_as(D, "csr"), True, w, None)
    assert malformed == 0
    _assert_stats_close(got, D, w)


@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_bit_identical_for_every_thread_count(rng, fmt, weighted):
    """Enough stored values for several chunks and for two threads to be woken (the plan
    depends on the shape alone)."""
    D = _sparse_data(rng, (60000, 40), 0.2, nan_frac=0.01)
    w = rng.uniform(0, 2, D.shape[0]) if weighted else None
    args = _as(D, fmt)
    results = [_kernels.sparse_moments(*args, fmt == "csr", w, nt) for nt in (1, 2, 3, None)]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert_bits_equal(a, b, f"{fmt} statistics")
    X = sp.csr_array(D)
    factors = rng.uniform(0.1, 3, D.shape[1])
    scaled = [_kernels.sparse_scale(X.data, X.indices, factors, None, nt)[0]
              for nt in (1, 2, 3)]
    for other in scaled[1:]:
        assert_bits_equal(scaled[0], other, "scaled values")


@pytest.mark.parametrize("dtype", [np.float32, F64])
@pytest.mark.parametrize("index", [np.int32, np.int64])
def test_scale_multiplies_by_the_column_factor_once_rounded(rng, dtype, index):
    D = _sparse_data(rng, (300, 20), 0.3, nan_frac=0.05, dtype=dtype)
    X = sp.csr_array(D)
    factors = rng.uniform(0.1, 3, D.shape[1])
    want = (X.data.astype(F64) * factors[X.indices]).astype(dtype)  # one rounding to dtype
    got, malformed = _kernels.sparse_scale(X.data, X.indices.astype(index), factors, None,
                                           None)
    assert malformed == 0
    assert got.dtype == dtype
    assert_bits_equal(got, want, "scaled values")
    inplace = X.data.copy()
    assert _kernels.sparse_scale(inplace, X.indices, factors, inplace, 1)[0] is inplace
    assert_bits_equal(inplace, want, "in place")


def test_a_malformed_structure_is_counted_never_read_outside(rng):
    """Indices and indptr out of range are skipped and counted (the Python layer raises on
    the count), never read or written through: the loops clamp them."""
    data = rng.standard_normal(6)
    indices = np.array([0, 99, -5, 1, 2, 1 << 30], np.int32)
    indptr = np.array([0, 2, 1 << 20, 6], np.int32)
    for csr in (True, False):
        malformed = _kernels.sparse_moments(data, indices, indptr, (3, 3), csr, None, 2)[3]
        assert malformed > 0
    good = sp.csr_array(_sparse_data(rng, (5, 3), 0.5))
    for ends in ([1, 0], [0, -1]):  # indptr not starting at 0, or not ending at nnz
        indptr = good.indptr.copy()
        indptr[[0, -1]] += ends
        malformed = _kernels.sparse_moments(good.data, good.indices, indptr, good.shape,
                                            True, None, None)[3]
        assert malformed > 0
    scaled, malformed = _kernels.sparse_scale(data, indices, np.ones(3), None, 1)
    assert malformed == 3
    assert np.isnan(scaled[[1, 2, 5]]).all() and not np.isnan(scaled[[0, 3, 4]]).any()


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_unsorted_and_repeated_indices_are_counted(rng, fmt):
    """Indices not after the previous one of their row (CSR) or column (CSC): the second
    count, on which the Python layer sums duplicates and calls again."""
    X = sp.csr_array(_sparse_data(rng, (30, 6), 0.5)).asformat(fmt)
    assert _kernels.sparse_moments(X.data, X.indices, X.indptr, X.shape, fmt == "csr", None,
                                   None)[4] == 0
    indices = X.indices.copy()
    a = X.indptr[np.flatnonzero(np.diff(X.indptr) >= 2)[0]]
    indices[[a, a + 1]] = indices[[a + 1, a]]  # one slice unsorted
    assert _kernels.sparse_moments(X.data, indices, X.indptr, X.shape, fmt == "csr", None,
                                   None)[4] == 1
    indices[a + 1] = indices[a]  # and now a repeated pair
    assert _kernels.sparse_moments(X.data, indices, X.indptr, X.shape, fmt == "csr", None,
                                   None)[4] == 1


def test_entry_points_decline_anything_but_the_plain_case(rng):
    X = sp.csr_array(_sparse_data(rng, (10, 4), 0.5))
    ok = (X.data, X.indices, X.indptr, X.shape, True, None, None)
    assert _kernels.sparse_moments(*ok) is not None
    bad = [
        (X.data.astype(np.float16),) + ok[1:],
        (X.data[::-1],) + ok[1:],                       # not contiguous
        (X.data, X.indices.astype(np.int64)) + ok[2:],  # index dtypes differ
        ok[:3] + ((10, 4, 1),) + ok[4:],
        ok[:3] + ((0, 4),) + ok[4:],
        ok[:3] + ((10.0, 4),) + ok[4:],
        ok[:3] + ((11, 4),) + ok[4:],                   # indptr of the wrong length
        ok[:4] + (1,) + ok[5:],                         # csr not a bool
        ok[:5] + (np.ones(9),) + ok[6:],
        ok[:5] + (np.ones(10, np.float32),) + ok[6:],
        ok[:6] + (0,),
    ]
    for args in bad:
        assert _kernels.sparse_moments(*args) is None
    factors = np.ones(4)
    assert _kernels.sparse_scale(X.data, X.indices, factors, None, None) is not None
    assert _kernels.sparse_scale(X.data, X.indices[:-1], factors, None, None) is None
    assert _kernels.sparse_scale(X.data, X.indices, factors.astype(np.float32), None,
                                 None) is None
    assert _kernels.sparse_scale(X.data, X.indices, factors, X.data[:-1], None) is None
    assert _kernels.sparse_scale(X.data, X.indices, factors, X.data.astype(np.float32),
                                 None) is None


def test_float32_values_are_summed_in_float64(rng):
    """float32 stored values: statistics as accurate as for their float64 copies (float64
    accumulators), far below float32's rounding."""
    D = _sparse_data(rng, (20000, 3), 0.5, offset=1e3, dtype=np.float32)
    got = _kernels.sparse_moments(*_as(D, "csr"), True, None, None)
    _, r_mean, _ = _reference(D)
    assert np.all(np.abs(got[1] - r_mean) <= 100 * unit_roundoff() * 1e3 * 20000)
