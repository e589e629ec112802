"""bnfast.dask and BatchNormScaler on dask DataFrames and Series, on a dask.distributed cluster.

The session's LocalCluster of two worker processes (conftest.py's dask_client: one thread
each, 127.0.0.1 only, closed however the tests end) serves the whole module. Statistics are
compared with a float64 NumPy reference and with scikit-learn's StandardScaler on the
computed frame, outputs with the in-memory kernels or a float64 reference; the frames have
uneven and empty partitions, the three layouts a partition's values come in, NaN, nullable,
integer and bool columns.
"""
import tracemalloc

import numpy as np
import pytest

distributed = pytest.importorskip("dask.distributed")
dd = pytest.importorskip("dask.dataframe")
pd = pytest.importorskip("pandas")
sklearn = pytest.importorskip("sklearn")
sklearn_preprocessing = pytest.importorskip("sklearn.preprocessing")
import dask  # noqa: E402
import dask.array as da  # noqa: E402

import bnfast  # noqa: E402
import bnfast.dask as bd  # noqa: E402
from _helpers import (  # noqa: E402
    assert_inference_close, assert_merged_moments_close, assert_merged_y_close,
    assert_same_scaler_fit, output_rtol, sum_tol, transform_scale)

F64 = np.float64
StandardScaler = sklearn_preprocessing.StandardScaler


@pytest.fixture
def client(dask_client):
    return dask_client


def _values(rng, n, p, nan_frac=0.0):
    """float64 (n, p) normal data with per-column offsets and spreads; NaN at random."""
    X = rng.standard_normal((n, p)) * rng.uniform(0.5, 4, p) + rng.uniform(-20, 20, p)
    X[rng.random(X.shape) < nan_frac] = np.nan
    return X


def _frame(X, divisions, columns=None, index_offset=0):
    """(pandas frame of X, dask DataFrame of it cut at the row positions ``divisions``)."""
    columns = [f"c{j}" for j in range(X.shape[1])] if columns is None else columns
    pdf = pd.DataFrame(X, columns=columns,
                       index=pd.RangeIndex(index_offset, index_offset + len(X)))
    return pdf, _split(pdf, divisions)


def _split(pdf, divisions):
    """A dask DataFrame of the pandas frame pdf (a RangeIndex) cut at the row positions
    ``divisions``: uneven partitions, known divisions."""
    start = pdf.index[0]
    df = dd.from_pandas(pdf, npartitions=1, sort=True)
    return df.repartition(divisions=[start + d for d in divisions])


# How the partitions hold their values, as the kernels see them: "slices" of one pandas
# block (dd.from_pandas), their own "blocks" (C, n) (what pandas operations and readers
# make), or (n, C) "rows" (a frame built from NumPy rows, e.g. dd.from_dask_array).
LAYOUTS = ["slices", "blocks", "rows"]


def _relayout(df, layout):
    """df with each partition holding its values as ``layout`` says (same values, index)."""
    if layout == "blocks":
        df = df.map_partitions(lambda p: p.copy(deep=True))
    elif layout == "rows":
        df = df.map_partitions(lambda p: pd.DataFrame(np.ascontiguousarray(p.to_numpy()),
                                                      index=p.index, columns=p.columns,
                                                      copy=False))
    return df


def _uneven(rng, n):
    """Row positions for 4 to 6 uneven partitions of n rows (one of a single row)."""
    cuts = sorted(rng.choice(np.arange(2, n - 1), size=int(rng.integers(3, 6)), replace=False))
    return [0, 1, *[int(c) for c in cuts], n - 1]


# -- bnfast.dask: statistics ------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_frame_moments_are_lazy_and_exact(client, rng, dtype, layout):
    X = _values(rng, 403, 5).astype(dtype)
    pdf, df = _frame(X, _uneven(rng, 403))
    df = _relayout(df, layout)
    mean, var = bd.moments(df)
    count, smean, m2 = bd.moments_state(df)
    for a in (mean, var, count, smean, m2):
        assert isinstance(a, da.Array) and a.dtype == F64 and a.shape == (5,)
    mean, var, count, smean, m2 = dask.compute(mean, var, count, smean, m2)
    assert_merged_moments_close(mean, var, X.astype(F64).mean(axis=0),
                                X.astype(F64).var(axis=0), X, 1, "vs float64 NumPy")
    np.testing.assert_array_equal(count, 403.0)
    np.testing.assert_array_equal(smean, mean)
    # var = m2 / count on both sides: the same two numbers, one division each
    np.testing.assert_array_equal(m2 / count, var)


def test_frame_moments_ddof_axis_none_and_series(client, rng):
    X = _values(rng, 300, 3)
    pdf, df = _frame(X, _uneven(rng, 300))
    mean, var = dask.compute(*bd.moments(df, ddof=1, split_every=2))  # a deeper merge tree
    # ddof=1: var * (n - 1) / n is the biased variance, the same rounding
    assert_merged_moments_close(mean, var * 299 / 300, X.mean(axis=0), X.var(axis=0), X, 1)
    mean, var = dask.compute(*bd.moments(df, axis=None))  # every value one channel
    flat = X.reshape(-1, 1)
    assert_merged_moments_close(mean, var, flat.mean(axis=0), flat.var(axis=0), flat, 1)
    for axis in (0, 1, -1, None):  # a Series is one channel, as 1-D arrays
        mean, var = dask.compute(*bd.moments(df["c1"], axis=axis))
        assert mean.shape == (1,)
        assert_merged_moments_close(mean, var, X[:, 1:2].mean(axis=0), X[:, 1:2].var(axis=0),
                                    X[:, 1:2], 1)


def test_frame_moments_state_skipna_weights_and_column_kinds(client, rng):
    n = 250
    X = _values(rng, n, 3, nan_frac=0.1)
    ints = rng.integers(-5, 40, n)
    w = rng.uniform(0, 2, n)
    pdf = pd.DataFrame(X, columns=["c0", "c1", "c2"]).assign(
        i=ints, b=rng.random(n) < 0.3, w=w,
        n=pd.array(np.where(rng.random(n) < 0.2, None, ints.astype(object)), dtype="Int64"))
    df = _split(pdf, _uneven(rng, n))
    # the float64 reference: NaN where X has NaN or the nullable column has pd.NA
    ref = pdf[["c0", "c1", "c2", "i", "b", "n"]].to_numpy(dtype=F64, na_value=np.nan)
    data = df[["c0", "c1", "c2", "i", "b", "n"]]
    ok = ~np.isnan(ref)
    z = np.where(ok, ref, 0.0)
    count, mean, m2 = dask.compute(*bd.moments_state(data, skipna=True))
    np.testing.assert_array_equal(count, ok.sum(axis=0))
    ref_mean = z.sum(axis=0) / ok.sum(axis=0)
    ref_var = (np.where(ok, z - ref_mean, 0.0) ** 2).sum(axis=0) / ok.sum(axis=0)
    assert_merged_moments_close(mean, m2 / count, ref_mean, ref_var, ref, 1, "skipna")
    # weights: a column of the frame (its partitions), a NumPy array, a dask array
    ww = np.where(ok, w[:, None], 0.0)
    wcount = ww.sum(axis=0)
    wmean = (ww * z).sum(axis=0) / wcount
    wvar = (ww * (z - wmean) ** 2).sum(axis=0) / wcount
    for weights in (df["w"], w, da.from_array(w, chunks=64)):
        count, mean, m2 = dask.compute(*bd.moments_state(data, skipna=True,
                                                         sample_weight=weights))
        # the same weights (all >= 0, so sum |w| = count) summed in other orders
        np.testing.assert_allclose(count, wcount, rtol=0, atol=sum_tol(n, float(wcount.max())))
        # one rounding more per term than unweighted, well inside stat_rtol(4 n)'s margin
        assert_merged_moments_close(mean, m2 / count, wmean, wvar, ref, 1, "weighted")
    # without skipna a NaN (or pd.NA) poisons its column, as in memory
    mean = dask.compute(*bd.moments(data))[0]
    np.testing.assert_array_equal(np.isnan(mean), ~ok.all(axis=0))


def test_frame_with_empty_partitions_and_unknown_divisions(client, rng):
    X = _values(rng, 200, 2)
    X[50:120, 0] = -1e3  # filtered out below: partitions with no rows left
    pdf, df = _frame(X, [0, 50, 120, 160, 199])
    kept = df[df["c0"] > -100].clear_divisions()
    assert not kept.known_divisions
    Xk = X[X[:, 0] > -100]
    mean, var = dask.compute(*bd.moments(kept))
    assert_merged_moments_close(mean, var, Xk.mean(axis=0), Xk.var(axis=0), Xk, 1)
    y, mean, invstd = bd.batch_norm_forward(kept)
    assert not y.known_divisions and y.npartitions == kept.npartitions
    assert_merged_y_close(y.compute().to_numpy(), bnfast.batch_norm_forward(Xk)[0], Xk, 1)


# -- bnfast.dask: outputs ---------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_frame_forward_and_inference_are_lazy_frames(client, rng, dtype, layout):
    X = _values(rng, 301, 4).astype(dtype)
    pdf, df = _frame(X, _uneven(rng, 301), columns=["a", "b", 7, "d"], index_offset=1000)
    df = _relayout(df, layout)
    gamma, beta = rng.uniform(0.5, 2, 4), rng.uniform(-1, 1, 4)
    rm, rv = np.zeros(4), np.ones(4)
    rm_ref, rv_ref = rm.copy(), rv.copy()
    y, mean, invstd = bd.batch_norm_forward(df, gamma, beta, eps=1e-3, running_mean=rm,
                                            running_var=rv, momentum=0.3)
    assert isinstance(y, dd.DataFrame) and y.divisions == df.divisions
    assert list(y.columns) == ["a", "b", 7, "d"] and list(y.dtypes) == [np.dtype(dtype)] * 4
    y_ref, mean_ref, invstd_ref = bnfast.batch_norm_forward(
        X, gamma, beta, eps=1e-3, running_mean=rm_ref, running_var=rv_ref, momentum=0.3)
    assert_merged_moments_close(mean, 1 / invstd**2, mean_ref, 1 / invstd_ref**2, X, 1)
    yc = y.compute()
    pd.testing.assert_index_equal(yc.index, pdf.index)
    assert_merged_y_close(yc.to_numpy(), y_ref, X, 1, 1e-3, gamma, beta)
    # the running statistics: the batch statistics (as above) and 4 roundings of the update
    np.testing.assert_allclose(rm, rm_ref, rtol=0, atol=4 * output_rtol(F64, 4 * 301)
                               * float(np.abs(X).max()))
    z = bd.batch_norm_inference(df, rm, rv, gamma, beta, eps=1e-3)
    assert isinstance(z, dd.DataFrame) and z.divisions == df.divisions
    # given statistics: only the elementwise pass rounds, on whichever loop the partition's
    # layout takes (float32 ones compute in float32 or float64 by layout)
    z_ref = (X.astype(F64) - rm) / np.sqrt(rv + 1e-3) * gamma + beta
    assert_inference_close(z.compute().to_numpy(), z_ref, X, 1, rm, rv, gamma, beta, 1e-3)
    s = bd.batch_norm_inference(df["b"], rm[1:2], rv[1:2], eps=1e-3)
    assert isinstance(s, dd.Series) and s.name == "b"
    assert_inference_close(s.compute().to_numpy(), (X[:, 1].astype(F64) - rm[1]) /
                           np.sqrt(rv[1] + 1e-3), X[:, 1], 0, rm[1:2], rv[1:2], eps=1e-3)


def test_frame_errors(client, rng):
    pdf = pd.DataFrame({"a": np.arange(6.0), "s": list("abcdef")})
    df = dd.from_pandas(pdf, npartitions=2)
    with pytest.raises(TypeError, match="column 's' has dtype"):
        bd.moments(df)
    num = df[["a"]]
    with pytest.raises(ValueError, match="axis=1 or -1"):
        bd.moments(num, axis=0)
    with pytest.raises(np.exceptions.AxisError):
        bd.moments(num, axis=2)
    with pytest.raises(ValueError, match="sample_weight: only for a DataFrame"):
        bd.moments_state(num["a"], sample_weight=np.ones(6))
    with pytest.raises(ValueError, match=r"sample_weight: expected shape \(6,\)"):
        bd.moments_state(num, sample_weight=np.ones(5))
    with pytest.raises(ValueError, match=r"sample_weight: expected one weight per row"):
        bd.moments_state(num, sample_weight=2.0)
    other = dd.from_pandas(pd.Series(np.ones(6)), npartitions=3)
    with pytest.raises(ValueError, match="3 partitions for a frame of 2"):
        bd.moments_state(num, sample_weight=other)
    shifted = dd.from_pandas(pd.Series(np.ones(6), index=np.arange(6) + 1), npartitions=2)
    with pytest.raises(ValueError, match="divisions differ"):
        bd.moments_state(num, sample_weight=shifted)
    rm = np.zeros(1)
    with pytest.raises(ValueError, match="running_var"):
        bd.batch_norm_forward(num, running_mean=rm, running_var=np.ones(2))
    with pytest.raises(ValueError, match=r"gamma: expected shape \(1,\)"):
        bd.batch_norm_inference(num, [0.0], [1.0], gamma=np.ones(2))
    one_row = dd.from_pandas(pd.DataFrame({"a": [1.0]}), npartitions=1)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bd.batch_norm_forward(one_row, running_mean=rm, running_var=np.ones(1))
    np.testing.assert_array_equal(rm, 0.0)  # a failed call changes nothing


# -- BatchNormScaler --------------------------------------------------------------------------

@pytest.mark.parametrize("layout,nan_frac", [("slices", 0.0), ("slices", 0.1),
                                             ("blocks", 0.1), ("rows", 0.1)])
def test_scaler_fit_matches_standardscaler(client, rng, layout, nan_frac):
    X = _values(rng, 401, 5, nan_frac)
    pdf, df = _frame(X, _uneven(rng, 401))
    df = _relayout(df, layout)
    got = bnfast.BatchNormScaler(eps=0).fit(df)
    ref = StandardScaler().fit(pdf)
    assert_same_scaler_fit(got, ref, X)
    assert got.feature_names_in_.tolist() == ref.feature_names_in_.tolist()
    # the lazy transform: a dask DataFrame with the frame's columns, index and divisions
    T = got.transform(df)
    assert isinstance(T, dd.DataFrame) and T.divisions == df.divisions
    assert list(T.columns) == list(pdf.columns) and all(dt == F64 for dt in T.dtypes)
    t = T.compute()
    pd.testing.assert_index_equal(t.index, pdf.index)
    np.testing.assert_array_equal(np.isnan(t.to_numpy()), np.isnan(X))  # NaN kept
    # statistics of the two fits (as in assert_same_scaler_fit), then the elementwise pass
    atol = output_rtol(F64, 4 * 401) * transform_scale(ref, X)
    np.testing.assert_allclose(t.to_numpy(), ref.transform(pdf), rtol=0, atol=atol,
                               equal_nan=True)
    back = got.inverse_transform(T)
    assert isinstance(back, dd.DataFrame) and back.divisions == df.divisions
    # the same statistics both ways: t's rounding and two passes, times scale_
    back_atol = 2 * output_rtol(F64) * transform_scale(got, X) * float(np.max(got.scale_))
    np.testing.assert_allclose(back.compute().to_numpy(), X, rtol=0, atol=back_atol,
                               equal_nan=True)
    ft = bnfast.BatchNormScaler(eps=0).fit_transform(df)
    assert isinstance(ft, dd.DataFrame)
    np.testing.assert_allclose(ft.compute().to_numpy(), ref.transform(pdf), rtol=0, atol=atol,
                               equal_nan=True)


def test_scaler_float32_and_mixed_columns(client, rng):
    X = _values(rng, 200, 3, nan_frac=0.05).astype(np.float32)
    pdf, df = _frame(X, _uneven(rng, 200))
    got = bnfast.BatchNormScaler().fit(df)
    assert_same_scaler_fit(got, bnfast.BatchNormScaler().fit(X), X)
    T = got.transform(df)
    assert all(dt == np.float32 for dt in T.dtypes)  # float32 stays float32, as in memory
    atol = output_rtol(np.float32, 4 * 200) * transform_scale(got, X)
    np.testing.assert_allclose(T.compute().to_numpy(), got.transform(pdf), rtol=0, atol=atol,
                               equal_nan=True)
    # integer, bool and nullable columns: float64, pd.NA skipped like NaN, as StandardScaler
    n = 120
    mixed = pd.DataFrame({"f": rng.standard_normal(n).astype(np.float32),
                          "i": rng.integers(-3, 9, n),
                          "b": rng.random(n) < 0.5,
                          "n": pd.array(np.where(rng.random(n) < 0.2, None,
                                                 rng.integers(0, 5, n).astype(object)),
                                        dtype="Int64")})
    dmixed = dd.from_pandas(mixed, npartitions=3)
    got = bnfast.BatchNormScaler(eps=0).fit(dmixed)
    values = mixed.to_numpy(dtype=F64, na_value=np.nan)
    assert_same_scaler_fit(got, StandardScaler().fit(mixed), values)
    assert all(dt == F64 for dt in got.transform(dmixed).dtypes)


@pytest.mark.parametrize("momentum", [None, 0.25])
def test_scaler_partial_fit_over_frames(client, rng, momentum):
    X = _values(rng, 360, 4, nan_frac=0.05)
    pdf, df = _frame(X, [0, 100, 200, 300, 359])
    got = bnfast.BatchNormScaler(eps=0, momentum=momentum)
    ref = bnfast.BatchNormScaler(eps=0, momentum=momentum)
    for start in range(0, 360, 120):
        got.partial_fit(df.loc[start:start + 119])
        ref.partial_fit(pdf.loc[start:start + 119])
    assert_same_scaler_fit(got, ref, X)
    if momentum is None:  # the exact merge: partial_fit over frames == fit on all of it
        assert_same_scaler_fit(got, StandardScaler().fit(pdf), X)


def test_scaler_sample_weight(client, rng):
    n = 300
    X = _values(rng, n, 3, nan_frac=0.05)
    pdf, df = _frame(X, _uneven(rng, n))
    w = rng.uniform(0, 3, n)
    wdf = _split(pdf.assign(w=w), df.divisions)
    ref = StandardScaler().fit(pdf, sample_weight=w)
    for weights in (wdf["w"], w, da.from_array(w, chunks=70), pd.Series(w)):
        got = bnfast.BatchNormScaler(eps=0).fit(wdf[["c0", "c1", "c2"]], sample_weight=weights)
        assert_same_scaler_fit(got, ref, X)
    got = bnfast.BatchNormScaler(eps=0).fit(df, sample_weight=2.5)  # a scalar: every row
    assert_same_scaler_fit(got, StandardScaler().fit(pdf, sample_weight=2.5), X)
    scaler = bnfast.BatchNormScaler()
    with pytest.raises(ValueError, match="all zero weights"):
        scaler.fit(df, sample_weight=np.zeros(n))
    bad = w.copy()
    bad[7] = np.nan
    with pytest.raises(ValueError, match="expected finite weights"):
        scaler.fit(df, sample_weight=bad)
    # a Series with the frame's number of partitions but other rows in them: even ones,
    # where the frame has a partition of one row
    cut = dd.from_pandas(pd.Series(w, index=pdf.index),
                         npartitions=df.npartitions).clear_divisions()
    assert cut.npartitions == df.npartitions and not cut.known_divisions
    with pytest.raises(ValueError, match="does not line up"):
        scaler.fit(df, sample_weight=cut)
    assert not hasattr(scaler, "mean_")  # failed fits changed nothing


def test_scaler_set_output_keeps_frames_lazy(client, rng):
    X = _values(rng, 100, 3)
    pdf, df = _frame(X, [0, 40, 99])
    scaler = bnfast.BatchNormScaler(eps=0).set_output(transform="pandas")
    out = scaler.fit_transform(df)
    assert isinstance(out, dd.DataFrame) and out.divisions == df.divisions
    assert isinstance(scaler.transform(df), dd.DataFrame)
    assert isinstance(scaler.transform(pdf), pd.DataFrame)  # in memory: pandas, as before
    with sklearn.config_context(transform_output="pandas"):
        assert isinstance(bnfast.BatchNormScaler().fit(df).transform(df), dd.DataFrame)
    polars_out = bnfast.BatchNormScaler().set_output(transform="polars")
    with pytest.raises(ValueError, match="lazy dask DataFrame"):
        polars_out.fit_transform(df)
    assert not hasattr(polars_out, "mean_")  # refused before fitting


def test_scaler_frame_errors(client, rng):
    pdf = pd.DataFrame({"a": rng.standard_normal(20), "when": pd.date_range("2020", periods=20)})
    df = dd.from_pandas(pdf, npartitions=2)
    scaler = bnfast.BatchNormScaler()
    with pytest.raises(ValueError, match="column 'when' has dtype"):
        scaler.fit(df)
    with pytest.raises(ValueError, match="got a dask Series"):
        scaler.fit(df["a"])
    X = _values(rng, 60, 3)
    X[17, 1] = np.inf
    pdf, df = _frame(X, [0, 30, 59])
    with pytest.raises(ValueError, match="infinity.*column 'c1'"):
        scaler.fit(df)
    assert not hasattr(scaler, "mean_")
    with pytest.raises(ValueError, match="0 sample"):
        scaler.fit(df[df["c0"] > 1e9])
    X[17, 1] = 0.0
    pdf, df = _frame(X, [0, 30, 59])
    scaler.fit(df)
    fitted = (scaler.mean_, scaler.var_, scaler.n_samples_seen_)
    with pytest.raises(ValueError, match="X has 2 features, but BatchNormScaler is expecting 3"), \
            pytest.warns(UserWarning, match="does not have valid feature names"):
        scaler.partial_fit(df[["c0", "c1"]].rename(columns={"c0": 0, "c1": 1}))
    renamed = df.rename(columns={"c2": "z"})
    with pytest.raises(ValueError, match="feature names should match"):
        scaler.transform(renamed)
    with pytest.raises(ValueError, match="feature names should match"):
        scaler.partial_fit(renamed)
    assert (scaler.mean_, scaler.var_, scaler.n_samples_seen_) == fitted  # unchanged
    assert isinstance(scaler.inverse_transform(renamed), dd.DataFrame)  # as StandardScaler


# -- the driver never holds the frame ---------------------------------------------------------

def test_scaler_fit_keeps_the_frame_on_the_workers(client):
    """A 64 MiB frame generated and persisted on the workers is fitted while the driver
    allocates (tracemalloc: every Python and NumPy allocation, whichever thread) less than
    1/16 of it: the driver receives one O(C) state per merge, and the graph holds one task
    per partition. Pulling the frame in, as check_array did, allocates more than the frame."""
    rows, cols = 262_144, 32
    nbytes = rows * cols * 8
    x = da.random.default_rng(0).standard_normal((rows, cols), chunks=(rows // 8, cols))
    df = dd.from_dask_array(x, columns=[f"f{j}" for j in range(cols)]).persist()
    distributed.wait(df)
    bnfast.BatchNormScaler().fit(df)  # first use: imports and caches, not what we measure
    tracemalloc.start()
    try:
        scaler = bnfast.BatchNormScaler().fit(df)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < nbytes / 16, f"the driver allocated {peak} bytes for a {nbytes}-byte frame"
    print(f"driver peak allocation {peak} bytes, frame {nbytes} bytes")
    assert scaler.n_samples_seen_ == rows
