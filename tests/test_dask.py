"""bnfast.dask and BatchNormScaler on dask arrays, on a real dask.distributed cluster.

The session's LocalCluster of two worker processes (conftest.py's dask_client: one thread
each, 127.0.0.1 only) serves the whole module. Every result is compared with bnfast's in-memory functions and with a float64 NumPy
reference, over float32 and float64, uneven chunks and chunks along the channel axis.
"""
import sys

import numpy as np
import pytest

distributed = pytest.importorskip("dask.distributed")
da = pytest.importorskip("dask.array")
import dask  # noqa: E402

import bnfast  # noqa: E402
import bnfast.dask as bd  # noqa: E402
from _helpers import (  # noqa: E402
    assert_merged_moments_close, assert_merged_y_close, assert_same_scaler_fit, output_rtol,
    stat_rtol, stat_scales, sum_tol, transform_scale, unit_roundoff, values_per_channel)

try:
    import sklearn  # noqa: F401
except ImportError:
    HAVE_SKLEARN = False
else:
    HAVE_SKLEARN = True
needs_sklearn = pytest.mark.skipif(not HAVE_SKLEARN, reason="scikit-learn is not installed")

F64 = np.float64


@pytest.fixture
def client(dask_client):
    return dask_client


# (id, shape, channel axis, chunks): uneven chunks, chunks along the channel axis, layouts
LAYOUTS = [
    ("NC-uneven", (203, 5), 1, ((50, 3, 100, 50), 5)),
    ("NC-channel-chunks", (120, 7), 1, (40, (2, 3, 2))),
    ("NC-axis-1", (121, 6), -1, (33, 4)),
    ("NCHW", (6, 4, 5, 3), 1, (2, (1, 3), 3, 3)),
    ("NHWC", (5, 4, 3, 6), -1, ((1, 4), 2, 3, (4, 2))),
    ("1d", (157,), 0, 40),
    ("axis-None", (8, 3, 10), None, (3, 2, 5)),
]
IDS = [layout[0] for layout in LAYOUTS]
PARAMS = [layout[1:] for layout in LAYOUTS]
DTYPES = [np.float32, np.float64]


def _channels(shape, axis):
    return 1 if axis is None or len(shape) == 1 else shape[axis]


def _bshape(shape, axis):
    if axis is None or len(shape) == 1:
        return (1,) * len(shape)
    out = [1] * len(shape)
    out[axis % len(shape)] = shape[axis]
    return tuple(out)


def _data(rng, shape, axis, dtype):
    C = _channels(shape, axis)
    loc = rng.uniform(-20, 20, C).reshape(_bshape(shape, axis))
    spread = rng.uniform(0.5, 4, C).reshape(_bshape(shape, axis))
    return (rng.standard_normal(shape) * spread + loc).astype(dtype)


def _ref_moments(x, axis):
    """float64 NumPy mean and biased variance per channel."""
    x = np.asarray(x, F64)
    x2 = x.reshape(-1, 1) if axis is None or x.ndim == 1 else np.moveaxis(x, axis, -1).reshape(
        -1, x.shape[axis])
    return x2.mean(axis=0), x2.var(axis=0)


def _bnfast_on_workers():
    return "bnfast._kernels" in sys.modules


def test_runs_on_the_cluster_workers(client, rng):
    x = da.from_array(rng.standard_normal((400, 3)), chunks=(50, 3))
    dask.compute(*bd.moments(x))
    assert dask.base.get_scheduler() == client.get
    workers = client.scheduler_info()["workers"]
    assert len(workers) == 2
    for address in [client.scheduler.address, *workers]:
        assert address.startswith("tcp://127.0.0.1:"), address
    loaded = client.run(_bnfast_on_workers)
    assert len(loaded) == 2 and any(loaded.values()), loaded


# -- statistics -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis,chunks", PARAMS, ids=IDS)
def test_moments_are_lazy_and_exact(client, rng, shape, axis, chunks, dtype):
    x = _data(rng, shape, axis, dtype)
    X = da.from_array(x, chunks=chunks)
    mean, var = bd.moments(X, axis=axis)
    count, smean, m2 = bd.moments_state(X, axis=axis)
    C = _channels(shape, axis)
    for a in (mean, var, count, smean, m2):
        assert isinstance(a, da.Array) and a.dtype == F64 and a.shape == (C,)
    if C > 1:  # the statistics keep the channel chunks of x
        assert mean.chunks == (X.chunks[axis],)
    mean, var, count, smean, m2 = dask.compute(mean, var, count, smean, m2)
    ref_mean, ref_var = _ref_moments(x, axis)
    assert_merged_moments_close(mean, var, ref_mean, ref_var, x, axis, "vs float64 NumPy")
    in_mean, in_var = bnfast.moments(x, axis=axis)
    assert_merged_moments_close(mean, var, in_mean, in_var, x, axis, "vs bnfast.moments")
    np.testing.assert_array_equal(count, x.size // C)
    np.testing.assert_array_equal(smean, mean)
    # var = M2 / count, one division (maybe by count - ddof, 0 here) on either side
    np.testing.assert_allclose(m2 / count, var, rtol=2 * unit_roundoff(), atol=0)


def test_moments_ddof_and_deep_merge_tree(client, rng):
    x = _data(rng, (1000, 3), 1, F64)
    X = da.from_array(x, chunks=(111, 2))  # 10 row chunks: split_every=2 merges in 4 levels
    ddofs = (0, 1, 2.5)
    results = dask.compute(*[bd.moments(X, ddof=ddof, split_every=2) for ddof in ddofs])
    for ddof, (mean, var) in zip(ddofs, results):
        # ddof: var = M2 / (n - ddof), M2's bound times n / (n - ddof) <= 2
        assert_merged_moments_close(mean, var * (1000 - ddof) / 1000, x.mean(axis=0),
                     x.var(axis=0, ddof=ddof) * (1000 - ddof) / 1000, x, 1, f"ddof={ddof}")
    # a degenerate ddof gives inf, as bnfast.moments does (there with a warning)
    with pytest.warns(RuntimeWarning):
        expected = bnfast.moments(x[:2], ddof=2)[1]
    _, var = dask.compute(*bd.moments(da.from_array(x[:2], chunks=1), ddof=2))
    np.testing.assert_array_equal(var, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_moments_state_skipna_and_weights(client, rng, dtype):
    x = _data(rng, (300, 4), 1, dtype)
    x[100:][rng.random((200, 4)) < 0.15] = np.nan  # the first row chunk has no NaN
    w = rng.uniform(0, 2, 300)
    X = da.from_array(x, chunks=((100, 7, 93, 100), (3, 1)))
    ok = ~np.isnan(x)
    xz = np.where(ok, x.astype(F64), 0.0)
    # NaN skipped
    count, mean, m2 = dask.compute(*bd.moments_state(X, skipna=True))
    ref_count = ok.sum(axis=0)
    ref_mean = xz.sum(axis=0) / ref_count
    ref_var = (np.where(ok, xz - ref_mean, 0.0) ** 2).sum(axis=0) / ref_count
    np.testing.assert_array_equal(count, ref_count)
    assert_merged_moments_close(mean, m2 / count, ref_mean, ref_var, x, 1, "skipna")
    # NaN skipped and weighted, the weights a dask array chunked differently from x
    for weights in (w, da.from_array(w, chunks=64)):
        count, mean, m2 = dask.compute(*bd.moments_state(X, skipna=True,
                                                         sample_weight=weights))
        ww = np.where(ok, w[:, None], 0.0)
        ref_count = ww.sum(axis=0)
        ref_mean = (ww * xz).sum(axis=0) / ref_count
        ref_var = (ww * (xz - ref_mean) ** 2).sum(axis=0) / ref_count
        # the same weights summed in other orders (all >= 0: sum |w| = count)
        np.testing.assert_allclose(count, ref_count, rtol=0,
                                   atol=sum_tol(300, float(ref_count.max())))
        # weighted: one rounding more per term, well inside stat_rtol(4 n)'s margin
        assert_merged_moments_close(mean, m2 / count, ref_mean, ref_var, x, 1, "weighted")
    # without skipna a NaN poisons its channel, as in memory
    assert np.isnan(dask.compute(*bd.moments(X))[0]).all()


def test_numpy_and_integer_input(client, rng):
    x = rng.integers(-5, 50, (40, 3))
    mean, var = dask.compute(*bd.moments(x))
    assert_merged_moments_close(mean, var, x.mean(axis=0), x.var(axis=0), x, 1)
    y, _, _ = bd.batch_norm_forward(da.from_array(x, chunks=(15, 2)))
    assert y.dtype == F64
    assert_merged_y_close(y.compute(), bnfast.batch_norm_forward(x)[0], x, 1)


# -- forward and inference --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis,chunks", PARAMS, ids=IDS)
def test_forward_matches_in_memory(client, rng, shape, axis, chunks, dtype):
    x = _data(rng, shape, axis, dtype)
    C = _channels(shape, axis)
    gamma, beta = rng.uniform(0.5, 2, C), rng.uniform(-1, 1, C)
    rm, rv = rng.standard_normal(C).astype(dtype), rng.uniform(1, 2, C).astype(dtype)
    rm_ref, rv_ref = rm.copy(), rv.copy()
    X = da.from_array(x, chunks=chunks)
    y, mean, invstd = bd.batch_norm_forward(X, gamma, beta, axis=axis, eps=1e-3,
                                            running_mean=rm, running_var=rv, momentum=0.3)
    assert isinstance(y, da.Array) and y.chunks == X.chunks and y.dtype == dtype
    assert isinstance(mean, np.ndarray) and isinstance(invstd, np.ndarray)
    y_ref, mean_ref, invstd_ref = bnfast.batch_norm_forward(
        x, gamma, beta, axis=axis, eps=1e-3, running_mean=rm_ref, running_var=rv_ref,
        momentum=0.3)
    ref_mean, ref_var = _ref_moments(x, axis)
    assert_merged_moments_close(mean, 1 / invstd**2, mean_ref, 1 / invstd_ref**2, x, axis,
                                "vs in memory")
    assert_merged_moments_close(mean, 1 / invstd**2, ref_mean, ref_var + 1e-3, x, axis,
                                "vs float64 NumPy")
    yc = y.compute()
    assert yc.dtype == dtype
    assert_merged_y_close(yc, y_ref, x, axis, 1e-3, gamma, beta)
    # the batch statistics (as above), 4 roundings of the update, one rounding to dtype
    rtol = stat_rtol(4 * values_per_channel(x, axis)) + 4 * unit_roundoff() \
        + unit_roundoff(dtype)
    mean_scale, var_scale = stat_scales(x, axis)
    np.testing.assert_allclose(rm, rm_ref, rtol=rtol, atol=rtol * mean_scale)
    np.testing.assert_allclose(rv, rv_ref, rtol=rtol, atol=rtol * 2 * var_scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis,chunks", PARAMS, ids=IDS)
def test_inference_is_lazy_and_matches_in_memory(client, rng, shape, axis, chunks, dtype):
    x = _data(rng, shape, axis, dtype)
    C = _channels(shape, axis)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 3, C)
    gamma, beta = rng.uniform(0.5, 2, C), rng.uniform(-1, 1, C)
    X = da.from_array(x, chunks=chunks)
    y = bd.batch_norm_inference(X, rm, rv, gamma, beta, axis=axis, eps=1e-4)
    assert isinstance(y, da.Array) and y.chunks == X.chunks and y.dtype == dtype
    y_ref = bnfast.batch_norm_inference(x, rm, rv, gamma, beta, axis=axis, eps=1e-4)
    np.testing.assert_array_equal(y.compute(), y_ref)  # the same kernel on the same numbers


def test_forward_float16_and_persisted_y(client, rng):
    x = _data(rng, (64, 3, 4), 1, np.float16)
    X = da.from_array(x, chunks=(16, 2, 4))
    y, mean, invstd = bd.batch_norm_forward(X)
    assert y.dtype == np.float16
    y_ref, mean_ref, _ = bnfast.batch_norm_forward(x)
    assert_merged_moments_close(mean, None, mean_ref, None, x, 1)
    assert_merged_y_close(y.persist().compute(), y_ref, x, 1)


def test_forward_errors_leave_running_stats(client):
    rm, rv = np.zeros(3), np.ones(3)
    X = da.ones((1, 3), chunks=(1, 2))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bd.batch_norm_forward(X, running_mean=rm, running_var=rv)
    with pytest.raises(ValueError, match="non-empty batch"):
        bd.batch_norm_forward(da.ones((0, 3)), running_mean=rm, running_var=rv)
    np.testing.assert_array_equal(rm, 0.0)
    np.testing.assert_array_equal(rv, 1.0)
    X = da.ones((4, 3), chunks=2)
    with pytest.raises(ValueError, match=r"gamma: expected shape \(3,\)"):
        bd.batch_norm_forward(X, gamma=np.ones(2))
    with pytest.raises(ValueError, match="running_var"):
        bd.batch_norm_forward(X, running_mean=rm, running_var=np.ones(2))
    with pytest.raises(ValueError, match="momentum"):
        bd.batch_norm_forward(X, momentum=2.0)
    with pytest.raises(np.exceptions.AxisError):
        bd.moments(X, axis=2)
    with pytest.raises(TypeError, match="real numbers"):
        bd.moments(da.ones((4, 3), dtype=complex))
    with pytest.raises(ValueError, match="running_mean, running_var"):
        bd.batch_norm_inference(X, None, np.ones(3))
    with pytest.raises(ValueError, match="sample_weight"):
        bd.moments_state(X, sample_weight=np.ones(5))
    np.testing.assert_array_equal(rm, 0.0)


def test_unknown_row_chunks_still_reduce(client, rng):
    x = rng.standard_normal((100, 3))
    X = da.from_array(x, chunks=(30, 3))
    Xu = X[X[:, 0] > -10]  # boolean mask: unknown row chunk sizes
    assert np.isnan(Xu.shape[0])
    y, mean, _ = bd.batch_norm_forward(Xu)
    assert_merged_moments_close(mean, None, x.mean(axis=0), None, x, 1)
    assert_merged_y_close(y.compute(), bnfast.batch_norm_forward(x)[0], x, 1)


# -- BatchNormScaler on dask arrays -----------------------------------------------------------

def _scaler_data(rng, n, p, dtype, nan_frac=0.1):
    X = rng.standard_normal((n, p)) * rng.uniform(0.5, 4, p) + rng.uniform(-10, 10, p)
    X[rng.random(X.shape) < nan_frac] = np.nan
    return X.astype(dtype)


@needs_sklearn
@pytest.mark.parametrize("dtype", DTYPES)
def test_scaler_fit_transform_with_nan(client, rng, dtype):
    X = _scaler_data(rng, 301, 5, dtype)
    D = da.from_array(X, chunks=((100, 1, 150, 50), (2, 3)))  # uneven, along features too
    ref = bnfast.BatchNormScaler().fit(X)
    got = bnfast.BatchNormScaler().fit(D)
    assert_same_scaler_fit(got, ref, X)
    # float64 NumPy reference, NaN skipped
    assert_merged_moments_close(got.mean_, got.var_, np.nanmean(X.astype(F64), axis=0),
                 np.nanvar(X.astype(F64), axis=0), X, 1, "vs float64 NumPy")
    T = got.transform(D)
    assert isinstance(T, da.Array) and T.dtype == dtype and T.chunks == D.chunks
    t_ref = ref.transform(X)
    t = T.compute()
    np.testing.assert_array_equal(np.isnan(t), np.isnan(X))  # NaN kept
    # statistics of the two fits as in _stats_close, then the elementwise pass
    rtol = output_rtol(dtype, 4 * X.shape[0])
    scale = transform_scale(ref, X)
    np.testing.assert_allclose(t, t_ref, rtol=0, atol=rtol * scale, equal_nan=True)
    back = got.inverse_transform(T)
    assert isinstance(back, da.Array)
    # the same statistics both ways: t's rounding and the two passes' in dtype, relative to
    # the terms' size times scale_
    back_atol = 2 * output_rtol(dtype) * scale * float(np.max(got.scale_))
    np.testing.assert_allclose(back.compute(), X, rtol=0, atol=back_atol, equal_nan=True)
    ft = bnfast.BatchNormScaler().fit_transform(D)
    assert isinstance(ft, da.Array)
    np.testing.assert_allclose(ft.compute(), t_ref, rtol=0, atol=rtol * scale, equal_nan=True)


@needs_sklearn
@pytest.mark.parametrize("momentum", [None, 0.25])
def test_scaler_partial_fit_over_dask_batches(client, rng, momentum):
    X = _scaler_data(rng, 400, 4, F64)
    D = da.from_array(X, chunks=(60, 2))
    got = bnfast.BatchNormScaler(momentum=momentum)
    ref = bnfast.BatchNormScaler(momentum=momentum)
    for start in range(0, 400, 130):
        got.partial_fit(D[start:start + 130])
        ref.partial_fit(X[start:start + 130])
    assert_same_scaler_fit(got, ref, X)
    if momentum is None:  # the exact merge: partial_fit over batches == fit on all
        assert_same_scaler_fit(got, bnfast.BatchNormScaler().fit(X), X)


@needs_sklearn
def test_scaler_sample_weight_and_int_input(client, rng):
    X = _scaler_data(rng, 200, 3, F64)
    w = rng.uniform(0, 3, 200)
    D = da.from_array(X, chunks=(70, 3))
    ref = bnfast.BatchNormScaler().fit(X, sample_weight=w)
    for weights in (w, da.from_array(w, chunks=45)):
        got = bnfast.BatchNormScaler().fit(D, sample_weight=weights)
        assert_same_scaler_fit(got, ref, X)
        assert got.n_samples_seen_.dtype == F64
    Xi = rng.integers(0, 9, (50, 2))
    got = bnfast.BatchNormScaler().fit(da.from_array(Xi, chunks=20))
    assert_same_scaler_fit(got, bnfast.BatchNormScaler().fit(Xi), Xi)
    assert got.transform(da.from_array(Xi, chunks=20)).dtype == F64


@needs_sklearn
def test_scaler_dask_errors(client, rng):
    X = _scaler_data(rng, 60, 3, F64, nan_frac=0)
    X[7, 1] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        bnfast.BatchNormScaler().fit(da.from_array(X, chunks=20))
    scaler = bnfast.BatchNormScaler().fit(da.from_array(np.ones((10, 3)), chunks=5))
    with pytest.raises(ValueError, match="X has 2 features, but BatchNormScaler is expecting 3"):
        scaler.transform(da.ones((4, 2)))
    with pytest.raises(ValueError, match="X has 2 features"):
        scaler.partial_fit(da.ones((4, 2)))
    with pytest.raises(ValueError, match="2D"):
        bnfast.BatchNormScaler().fit(da.ones(5))
    with pytest.raises(ValueError, match="all zero weights"):
        bnfast.BatchNormScaler().fit(da.ones((4, 3)), sample_weight=da.zeros(4))
    with pytest.raises(ValueError, match="sample_weight"):
        bnfast.BatchNormScaler().fit(da.ones((4, 3)), sample_weight=np.ones(3))
