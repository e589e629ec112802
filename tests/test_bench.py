"""The benchmark harness runs and its NumPy twins agree with the reference (no timing asserts)."""
import numpy as np
import pytest

from bnfast import bench
from bnfast import reference as ref


def test_bench_rows_run_and_agree_with_numpy():
    grid = [(bench.Case((64, 8), "NC", "float32"), op) for op in bench.OPS]
    grid += [(bench.Case((2, 4, 3, 5), "NHWC", "float64"), op) for op in bench.OPS]
    rows = bench.run_rows(grid, threads=1, repeats=1, min_time=0)
    assert len(rows) == len(grid)
    assert all(row["agrees_with_numpy"] for row in rows), rows
    table = bench.format_table(rows)
    assert "| train" in table and "| backward" in table


@pytest.mark.parametrize("shape, axis", [((50, 6), 1), ((3, 4, 5, 6), 1), ((3, 5, 6, 4), -1)])
def test_numpy_twins_match_reference(rng, shape, axis):
    x = rng.standard_normal(shape) * 2 + 3
    dy = rng.standard_normal(shape)
    C = shape[axis]
    gamma, beta = rng.uniform(0.5, 2, C), rng.standard_normal(C)
    rm, rv = np.zeros(C), np.ones(C)
    y, mean, invstd = bench.numpy_batch_norm_forward(x, gamma, beta, rm, rv, axis=axis)
    ry, rmean, rinv, rrm, rrv = ref.batch_norm_forward(x, gamma, beta, axis=axis,
                                                       running_mean=np.zeros(C),
                                                       running_var=np.ones(C))
    np.testing.assert_allclose(y, ry, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rm, rrm, rtol=1e-12)
    np.testing.assert_allclose(rv, rrv, rtol=1e-12)
    yi = bench.numpy_batch_norm_inference(x, rrm, rrv, gamma, beta, axis=axis)
    np.testing.assert_allclose(yi, ref.batch_norm_inference(x, rrm, rrv, gamma, beta, axis=axis),
                               rtol=1e-10, atol=1e-12)
    dx, dgamma, dbeta = bench.numpy_batch_norm_backward(dy, x, rmean, rinv, gamma, axis=axis)
    rdx, rdg, rdb = ref.batch_norm_backward(dy, x, rmean, rinv, gamma, axis=axis)
    np.testing.assert_allclose(dx, rdx, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dgamma, rdg, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dbeta, rdb, rtol=1e-10, atol=1e-12)


def test_scaler_row_compares_with_standard_scaler(monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.setattr(bench, "SCALER_SHAPE", (64, 5))
    row = bench.scaler_row(threads=1, repeats=1, min_time=0)
    assert row["bnfast_s"] > 0 and row["standard_scaler_s"] > 0
    assert "StandardScaler" in bench.format_scaler_row(row)
