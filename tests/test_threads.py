"""Results are bit-identical whatever the number of threads (docs/design.md §3)."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import bnfast
from bnfast import reference as ref
from _helpers import (
    assert_backward_close, assert_bits_equal, assert_forward_close, assert_inference_close,
    assert_moments_close, make_channel_params, make_float, n_channels, stat_rtol, stat_scales,
    unit_roundoff, values_per_channel)

# Shapes big enough to go parallel, in every kernel shape.
BIG = [
    pytest.param((4096, 256), 1, "float32", id="NC-4096x256-f32"),
    pytest.param((16, 8, 64, 64), 1, "float32", id="NCHW-16x8x64x64-f32"),
    pytest.param((8, 32, 32, 64), -1, "float32", id="NHWC-8x32x32x64-f32"),
    pytest.param((2_000_000,), 0, "float32", id="1d-2M-f32"),
    pytest.param((65536, 3), 1, "float32", id="NC-65536x3-f32"),
    pytest.param((65536, 3), 1, "float64", id="NC-65536x3-f64"),
    pytest.param((4, 2, 256, 256), 1, "float64", id="NCHW-tiny-C-f64"),
]


def _inputs(rng, shape, axis, dtype):
    x = make_float(rng, shape, axis).astype(dtype)
    dy = make_float(rng, shape, axis).astype(dtype)
    channels = n_channels(shape, axis)
    gamma, beta = make_channel_params(rng, channels)
    rm, rv = rng.standard_normal(channels), rng.uniform(0.5, 2.0, channels)
    return x, dy, gamma, beta, rm, rv


def _run_all(x, dy, gamma, beta, rm, rv, axis, **kw):
    """Every op once; returns a dict name -> array (running stats included)."""
    rm, rv = rm.copy(), rv.copy()
    results = {}
    results["moments.mean"], results["moments.var"] = bnfast.moments(x, axis=axis, **kw)
    results["moments.var_ddof1"] = bnfast.moments(x, axis=axis, ddof=1, **kw)[1]
    y, mean, invstd = bnfast.batch_norm_forward(x, gamma, beta, axis=axis, running_mean=rm,
                                                running_var=rv, **kw)
    results.update({"forward.y": y, "forward.mean": mean, "forward.invstd": invstd,
                    "running_mean": rm, "running_var": rv})
    results["inference.y"] = bnfast.batch_norm_inference(x, rm, rv, gamma, beta, axis=axis, **kw)
    dx, dgamma, dbeta = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis, **kw)
    results.update({"backward.dx": dx, "backward.dgamma": dgamma, "backward.dbeta": dbeta})
    return results


def _assert_same(a, b, label):
    assert a.keys() == b.keys()
    for key in a:
        assert_bits_equal(a[key], b[key], f"{key} ({label})")


@pytest.mark.parametrize("shape, axis, dtype", BIG)
def test_bit_identical_for_every_n_threads(rng, shape, axis, dtype):
    args = _inputs(rng, shape, axis, dtype)
    base = _run_all(*args, axis, n_threads=1)
    for n in (2, 3, 7):
        _assert_same(base, _run_all(*args, axis, n_threads=n), f"n_threads=1 vs {n}")


@pytest.mark.parametrize("shape, axis, dtype", BIG)
def test_bit_identical_under_threadpoolctl_limits(rng, shape, axis, dtype):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    args = _inputs(rng, shape, axis, dtype)
    with threadpoolctl.threadpool_limits(1):
        one = _run_all(*args, axis)
    with threadpoolctl.threadpool_limits(2):
        two = _run_all(*args, axis)
    _assert_same(one, two, "threadpool_limits 1 vs 2")
    _assert_same(one, _run_all(*args, axis), "threadpool_limits 1 vs default")


@pytest.mark.parametrize("shape, axis, dtype", BIG)
def test_parallel_shapes_match_reference(rng, shape, axis, dtype):
    x, dy, gamma, beta, rm, rv = _inputs(rng, shape, axis, dtype)
    got = _run_all(x, dy, gamma, beta, rm, rv, axis, n_threads=2)
    rmean, rvar = ref.moments(x, axis=axis)
    assert_moments_close(got["moments.mean"], got["moments.var"], rmean, rvar, x, axis)
    want = ref.batch_norm_forward(x, gamma, beta, axis=axis, running_mean=rm, running_var=rv)
    assert_forward_close((got["forward.y"], got["forward.mean"], got["forward.invstd"]), want,
                         x, axis, gamma, beta)
    # the batch statistics' error, plus 4 roundings of the update (unbiasing included)
    rtol = stat_rtol(values_per_channel(x, axis)) + 4 * unit_roundoff()
    mean_scale, var_scale = stat_scales(x, axis)
    np.testing.assert_allclose(got["running_mean"], want[3], rtol=rtol, atol=rtol * mean_scale)
    np.testing.assert_allclose(got["running_var"], want[4], rtol=rtol, atol=rtol * 2 * var_scale)
    rm1, rv1 = got["running_mean"], got["running_var"]  # what the inference call was given
    assert_inference_close(got["inference.y"],
                           ref.batch_norm_inference(x, rm1, rv1, gamma, beta, axis=axis),
                           x, axis, rm1, rv1, gamma, beta)
    mean, invstd = got["forward.mean"], got["forward.invstd"]
    want = ref.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis)
    assert_backward_close((got["backward.dx"], got["backward.dgamma"], got["backward.dbeta"]),
                          want, dy, x, mean, invstd, gamma, axis)


def test_calls_from_several_python_threads(rng):
    inputs = [_inputs(rng, (64, 16, 16, 16), 1, "float32") for _ in range(4)]
    serial = [_run_all(*args, 1, n_threads=2) for args in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(_run_all, *args, 1, n_threads=2) for args in inputs * 3]
        concurrent = [f.result() for f in futures]
    for i, result in enumerate(concurrent):
        _assert_same(serial[i % 4], result, f"python thread {i}")
