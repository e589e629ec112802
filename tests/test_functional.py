"""bnfast's functional API against the float64 reference over every layout and dtype."""

import numpy as np
import pytest

import bnfast
from bnfast import reference as ref
from _helpers import (
    INPUT_KINDS, LAYOUT_IDS, LAYOUT_PARAMS, assert_backward_close, assert_forward_close,
    assert_inference_close, assert_moments_close, stat_scales,
    make_channel_params, make_input, n_channels, output_rtol, stat_rtol, unit_roundoff,
    values_per_channel)

# Gamma/beta variants: absent, float64, float32, integer, gamma only.
PARAM_KINDS = ["none", "float64", "float32", "int", "gamma-only"]


def _params(rng, channels, kind):
    if kind == "none":
        return None, None
    if kind == "gamma-only":
        return make_channel_params(rng, channels)[0], None
    return make_channel_params(rng, channels, kind)


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("shape, axis", LAYOUT_PARAMS, ids=LAYOUT_IDS)
def test_moments(rng, shape, axis, kind):
    x = make_input(rng, shape, axis, kind)
    for ddof in (0, 1):
        mean, var = bnfast.moments(x, axis=axis, ddof=ddof)
        rmean, rvar = ref.moments(x, axis=axis, ddof=ddof)
        assert_moments_close(mean, var, rmean, rvar, x, axis)


def test_moments_default_axis_is_1(rng):
    x = make_input(rng, (40, 6, 3), 1, "float64")
    mean, var = bnfast.moments(x)
    rmean, rvar = ref.moments(x, axis=1)
    assert_moments_close(mean, var, rmean, rvar, x, 1)


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("shape, axis", LAYOUT_PARAMS, ids=LAYOUT_IDS)
def test_forward(rng, shape, axis, kind):
    x = make_input(rng, shape, axis, kind)
    channels = n_channels(shape, axis)
    gamma, beta = _params(rng, channels, PARAM_KINDS[rng.integers(len(PARAM_KINDS))])
    eps = float(rng.choice([1e-5, 1e-3, 0.0])) if kind != "bool" else 1e-5
    got = bnfast.batch_norm_forward(x, gamma, beta, axis=axis, eps=eps)
    want = ref.batch_norm_forward(x, gamma, beta, axis=axis, eps=eps)
    assert_forward_close(got, want, x, axis, gamma, beta, eps)


@pytest.mark.parametrize("param_kind", PARAM_KINDS)
@pytest.mark.parametrize("shape, axis", [((50, 7), 1), ((3, 4, 6, 5), 1), ((3, 6, 5, 4), -1),
                                         ((41,), 0)], ids=["NC", "NCHW", "NHWC", "1d"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_forward_gamma_beta_kinds(rng, shape, axis, dtype, param_kind):
    x = make_input(rng, shape, axis, dtype)
    gamma, beta = _params(rng, n_channels(shape, axis), param_kind)
    got = bnfast.batch_norm_forward(x, gamma, beta, axis=axis)
    want = ref.batch_norm_forward(x, gamma, beta, axis=axis)
    assert_forward_close(got, want, x, axis, gamma, beta)


def test_forward_default_axis_and_eps(rng):
    x = make_input(rng, (20, 4, 3, 3), 1, "float64")
    got = bnfast.batch_norm_forward(x)
    want = ref.batch_norm_forward(x, axis=1, eps=1e-5)
    assert_forward_close(got, want, x, 1, eps=1e-5)


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("shape, axis", LAYOUT_PARAMS, ids=LAYOUT_IDS)
def test_inference(rng, shape, axis, kind):
    x = make_input(rng, shape, axis, kind)
    channels = n_channels(shape, axis)
    rm = rng.uniform(-3.0, 3.0, channels)
    rv = rng.uniform(0.5, 4.0, channels)
    gamma, beta = _params(rng, channels, PARAM_KINDS[rng.integers(len(PARAM_KINDS))])
    y = bnfast.batch_norm_inference(x, rm, rv, gamma, beta, axis=axis, eps=1e-4)
    ry = ref.batch_norm_inference(x, rm, rv, gamma, beta, axis=axis, eps=1e-4)
    assert_inference_close(y, ry, x, axis, rm, rv, gamma, beta, eps=1e-4)


@pytest.mark.parametrize("stats_dtype", ["float32", "float64"])
def test_inference_float32_running_stats_and_defaults(rng, stats_dtype):
    x = make_input(rng, (30, 6), 1, "float64")
    rm = rng.uniform(-3.0, 3.0, 6).astype(stats_dtype)
    rv = rng.uniform(0.5, 4.0, 6).astype(stats_dtype)
    y = bnfast.batch_norm_inference(x, rm, rv)
    ry = ref.batch_norm_inference(x, rm, rv, axis=1, eps=1e-5)
    assert_inference_close(y, ry, x, 1, rm, rv, eps=1e-5)


def test_inference_single_value_per_channel_is_fine(rng):
    x = make_input(rng, (1, 5), 1, "float64")
    rm, rv = rng.standard_normal(5), rng.uniform(0.5, 2.0, 5)
    y = bnfast.batch_norm_inference(x, rm, rv)
    assert_inference_close(y, ref.batch_norm_inference(x, rm, rv), x, 1, rm, rv)


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("shape, axis", LAYOUT_PARAMS, ids=LAYOUT_IDS)
def test_backward(rng, shape, axis, kind):
    x = make_input(rng, shape, axis, kind)
    dy = make_input(rng, shape, axis, "int64" if kind in ("bool", "uint8", "int32") else kind)
    channels = n_channels(shape, axis)
    gamma = None if rng.random() < 0.3 else make_channel_params(rng, channels)[0]
    _, mean, invstd, _, _ = ref.batch_norm_forward(x, axis=axis)
    got = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis)
    want = ref.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis)
    assert_backward_close(got, want, dy, x, mean, invstd, gamma, axis)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_backward_with_own_forward_statistics(rng, dtype):
    x = make_input(rng, (8, 5, 4, 4), 1, dtype)
    dy = make_input(rng, (8, 5, 4, 4), 1, dtype)
    gamma, beta = make_channel_params(rng, 5)
    _, mean, invstd = bnfast.batch_norm_forward(x, gamma, beta)
    got = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma)
    want = ref.batch_norm_backward(dy, x, mean, invstd, gamma)
    assert_backward_close(got, want, dy, x, mean, invstd, gamma, 1)


def test_worked_example_from_the_seed():
    x = [1, 4, 6, 8, 10, 9]
    y, mean, invstd = bnfast.batch_norm_forward(x)
    var = np.var(np.array(x, dtype=np.float64))
    assert y.dtype == np.float64 and y.shape == (6,)
    assert mean.dtype == np.float64 and mean.shape == (1,) and invstd.shape == (1,)
    # 38 / 6 rounds once; the sum 38 of small integers is exact, so the mean is within 0.5 ulp
    # of it whatever the summation order (and is not the median-ish 6.0).
    u = unit_roundoff()
    assert mean[0] != 6.0 and mean[0] == pytest.approx(38 / 6, rel=2 * u, abs=0)
    # Exact mean, so var is a sum of 6 exact-ish squares: stat_rtol(6) covers both sides.
    assert invstd[0] == pytest.approx(1 / np.sqrt(var + 1e-5), rel=stat_rtol(6))
    # y has mean 0 and variance var / (var + eps) exactly; the computed y is within
    # output_rtol(float64, 6) of |y| <= 2, so its mean is within that much of 0.
    tol = output_rtol(np.float64, 6)
    assert abs(y.mean()) < 2 * tol
    assert y.var() == pytest.approx(var / (var + 1e-5), rel=8 * tol)
    want = ref.batch_norm_forward(x)
    assert_forward_close((y, mean, invstd), want, x, 0)
    for axis in (0, -1):
        assert_forward_close(bnfast.batch_norm_forward(x, axis=axis), want, x, 0)
    m, v = bnfast.moments(x, axis=0)
    assert m[0] == pytest.approx(38 / 6, rel=2 * u)
    assert v[0] == pytest.approx(var, rel=stat_rtol(6))


# ---------------------------------------------------------------- running statistics

@pytest.mark.parametrize("buffer_dtype", ["float32", "float64"])
@pytest.mark.parametrize("x_dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape, axis", [((50, 7), 1), ((3, 4, 6, 5), 1), ((3, 6, 5, 4), -1),
                                         ((41,), 0)], ids=["NC", "NCHW", "NHWC", "1d"])
def test_running_statistics_update_in_place(rng, shape, axis, x_dtype, buffer_dtype):
    channels = n_channels(shape, axis)
    rm = rng.standard_normal(channels).astype(buffer_dtype)
    rv = rng.uniform(0.5, 2.0, channels).astype(buffer_dtype)
    rm_obj, rv_obj = rm, rv
    expect_rm, expect_rv = rm.astype(np.float64), rv.astype(np.float64)
    for step, momentum in enumerate((0.1, 0.3, 0.9, 0.5)):
        x = make_input(rng, shape, axis, x_dtype)
        # (1 - momentum) * old + momentum * new: the batch statistic's error (stat_rtol of
        # stat_scales), 4 float64 roundings (unbiasing included), one rounding to the buffer.
        tol = stat_rtol(values_per_channel(x, axis)) + 4 * unit_roundoff() \
            + unit_roundoff(buffer_dtype)
        mean_scale, var_scale = stat_scales(x, axis)
        bnfast.batch_norm_forward(x, axis=axis, running_mean=rm, running_var=rv,
                                  momentum=momentum)
        _, mean, _, expect_rm, expect_rv = ref.batch_norm_forward(
            x, axis=axis, running_mean=expect_rm, running_var=expect_rv, momentum=momentum)
        assert rm is rm_obj and rv is rv_obj
        assert rm.dtype == np.dtype(buffer_dtype) and rv.dtype == np.dtype(buffer_dtype)
        np.testing.assert_allclose(rm, expect_rm, rtol=tol, atol=tol * mean_scale,
                                   err_msg=f"running_mean after step {step}")
        np.testing.assert_allclose(rv, expect_rv, rtol=tol, atol=tol * 2 * var_scale,
                                   err_msg=f"running_var after step {step}")
        # Feed back what the buffers actually hold, so float32 rounding does not accumulate.
        expect_rm, expect_rv = rm.astype(np.float64), rv.astype(np.float64)


def test_running_var_is_unbiased_and_normalization_biased(rng):
    x = make_input(rng, (5, 2), 1, "float64")
    rm, rv = np.zeros(2), np.zeros(2)
    y, mean, invstd = bnfast.batch_norm_forward(x, running_mean=rm, running_var=rv, momentum=1.0,
                                                eps=0.0)
    # momentum 1: the buffers are the batch statistics (unbiased var), one rounding more.
    rtol = stat_rtol(5) + 2 * unit_roundoff()
    mean_scale, var_scale = stat_scales(x, 1)
    np.testing.assert_allclose(rm, x.mean(axis=0), rtol=rtol, atol=rtol * mean_scale)
    np.testing.assert_allclose(rv, x.var(axis=0, ddof=1), rtol=rtol, atol=rtol * 2 * var_scale)
    # eps = 0: 1 / invstd^2 is var up to invstd's rounding (relative 2 * (3u)) and squaring (2u)
    np.testing.assert_allclose(1 / invstd**2, x.var(axis=0, ddof=0),
                               rtol=rtol + 8 * unit_roundoff(), atol=rtol * var_scale)


def test_momentum_zero_keeps_running_statistics(rng):
    x = make_input(rng, (30, 4), 1, "float64")
    rm, rv = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)
    rm0, rv0 = rm.copy(), rv.copy()
    bnfast.batch_norm_forward(x, running_mean=rm, running_var=rv, momentum=0.0)
    # 1 * old + 0 * new is exact.
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)


def test_running_statistics_strided_buffers(rng):
    x = make_input(rng, (30, 4), 1, "float64")
    storage_m = np.zeros(8)
    storage_v = np.ones(8)
    rm, rv = storage_m[::2], storage_v[::-2]
    bnfast.batch_norm_forward(x, running_mean=rm, running_var=rv)
    # the batch statistics' error, plus 4 roundings of the update on each side
    rtol = stat_rtol(30) + 8 * unit_roundoff()
    mean_scale, var_scale = stat_scales(x, 1)
    np.testing.assert_allclose(storage_m[::2], 0.1 * x.mean(axis=0), rtol=rtol,
                               atol=rtol * mean_scale)
    np.testing.assert_allclose(storage_v[::-2], 0.9 + 0.1 * x.var(axis=0, ddof=1), rtol=rtol,
                               atol=rtol * var_scale)
    np.testing.assert_array_equal(storage_m[1::2], 0.0)
    np.testing.assert_array_equal(storage_v[-2::-2], 1.0)


@pytest.mark.parametrize("buffer_dtype", ["float32", "float64"])
@pytest.mark.parametrize("bad", ["beta-length", "gamma-complex", "single-value", "eps", "momentum",
                                 "out-shape", "out-readonly", "running-var-length"])
def test_failed_call_leaves_running_statistics_untouched(rng, bad, buffer_dtype):
    shape = (1, 4) if bad == "single-value" else (20, 4)
    x = make_input(rng, shape, 1, "float64")
    rm = rng.standard_normal(4).astype(buffer_dtype)
    rv = rng.uniform(0.5, 2.0, 4).astype(buffer_dtype)
    rv_arg = rv
    rm0, rv0 = rm.copy(), rv.copy()
    gamma, beta = make_channel_params(rng, 4)
    kwargs = dict(eps=1e-5, momentum=0.1, out=None)
    if bad == "beta-length":
        beta = np.ones(5)
    elif bad == "gamma-complex":
        gamma = gamma.astype(np.complex128)
    elif bad == "eps":
        kwargs["eps"] = -1.0
    elif bad == "momentum":
        kwargs["momentum"] = 1.5
    elif bad == "out-shape":
        kwargs["out"] = np.empty((20, 5))
    elif bad == "out-readonly":
        kwargs["out"] = np.empty((20, 4))
        kwargs["out"].flags.writeable = False
    elif bad == "running-var-length":
        rv_arg = np.ones(3, dtype=buffer_dtype)
    with pytest.raises(ValueError):
        bnfast.batch_norm_forward(x, gamma, beta, running_mean=rm, running_var=rv_arg, **kwargs)
    assert rm.tobytes() == rm0.tobytes() and rv.tobytes() == rv0.tobytes()


# ---------------------------------------------------------------- out=

@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize("layout", ["C", "F"])
def test_forward_out_is_x_in_place(rng, dtype, layout):
    x = make_input(rng, (16, 5, 3, 4), 1, dtype)
    x = np.asfortranarray(x) if layout == "F" else x
    x_copy = x.copy()
    gamma, beta = make_channel_params(rng, 5)
    ry, rmean, rinvstd, _, _ = ref.batch_norm_forward(x_copy, gamma, beta)
    got = bnfast.batch_norm_forward(x, gamma, beta, out=x)
    assert got[0] is x
    # Statistics come from the input values, not from partially overwritten ones.
    assert_forward_close(got, (ry, rmean, rinvstd), x_copy, 1, gamma, beta)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_forward_out_separate_buffer(rng, dtype):
    x = make_input(rng, (16, 3, 4, 5), -1, dtype)
    out = np.full(x.shape, np.nan, dtype=dtype)
    got = bnfast.batch_norm_forward(x, axis=-1, out=out)
    assert got[0] is out
    assert_forward_close(got, ref.batch_norm_forward(x, axis=-1), x, -1)


def test_forward_out_non_contiguous_buffer(rng):
    x = make_input(rng, (12, 5), 1, "float64")
    storage = np.zeros((5, 24))
    out = storage.T[::2]  # shape (12, 5), neither C nor F contiguous
    got = bnfast.batch_norm_forward(x, out=out)
    assert got[0] is out
    assert_forward_close(got, ref.batch_norm_forward(x), x, 1)
    np.testing.assert_array_equal(storage.T[1::2], 0.0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_inference_out(rng, dtype):
    x = make_input(rng, (10, 4, 6), 1, dtype)
    rm, rv = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)
    ry = ref.batch_norm_inference(x, rm, rv)
    out = np.empty_like(x)
    x_copy = x.copy()
    assert bnfast.batch_norm_inference(x, rm, rv, out=out) is out
    assert_inference_close(out, ry, x_copy, 1, rm, rv)
    assert bnfast.batch_norm_inference(x, rm, rv, out=x) is x
    assert_inference_close(x, ry, x_copy, 1, rm, rv)


@pytest.mark.parametrize("target", ["separate", "dy", "x"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_backward_out(rng, dtype, target):
    x = make_input(rng, (10, 4, 6), 1, dtype)
    dy = make_input(rng, (10, 4, 6), 1, dtype)
    gamma = make_channel_params(rng, 4)[0]
    _, mean, invstd, _, _ = ref.batch_norm_forward(x)
    rdx, rdgamma, rdbeta = ref.batch_norm_backward(dy, x, mean, invstd, gamma)
    x_copy, dy_copy = x.copy(), dy.copy()
    out = {"separate": np.empty_like(x), "dy": dy, "x": x}[target]
    got = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma, out=out)
    assert got[0] is out
    assert_backward_close(got, (rdx, rdgamma, rdbeta), dy_copy, x_copy, mean, invstd, gamma, 1)


def test_integer_input_output_is_float64():
    x = np.arange(12, dtype=np.int32).reshape(4, 3) * 3 + 7
    y, _, _ = bnfast.batch_norm_forward(x)
    assert y.dtype == np.float64
    assert bnfast.batch_norm_inference(x, np.zeros(3), np.ones(3)).dtype == np.float64
    out = np.empty((4, 3))
    assert bnfast.batch_norm_forward(x, out=out)[0] is out


# Shapes chosen to take each route through the kernels: per-channel fused statistics and
# normalize (long runs), the separate statistics and memory-order passes (short runs, or too
# few channels), and the tiled inner == 1 layout.
ROUTE_SHAPES = [
    ((3, 16, 48, 48), 1, True),     # 9 KiB runs (float32; 18 KiB float64): fused
    ((5, 20, 16, 16), 1, False),    # 1-2 KiB runs: two passes
    ((2, 8, 64, 64), 1, False),     # 16 KiB runs but 8 channels: two passes
    ((40, 9, 9, 24), -1, False),    # channels last: tiled
]


@pytest.mark.parametrize("shape, axis, fused", ROUTE_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_kernel_route_matches_reference(rng, shape, axis, fused, dtype):
    from bnfast import _kernels

    ax = axis % len(shape)
    outer = int(np.prod(shape[:ax]))
    inner = int(np.prod(shape[ax + 1:]))
    plan = _kernels.plan(outer, shape[ax], inner, np.dtype(dtype).itemsize)
    assert plan["fused"] == fused

    C = shape[ax]
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 3) + rng.uniform(-50, 50)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma, beta = make_channel_params(rng, C)
    got = bnfast.batch_norm_forward(x, gamma, beta, axis=axis)
    assert_forward_close(got, ref.batch_norm_forward(x, gamma, beta, axis=axis), x, axis,
                         gamma, beta)
    _, mean, invstd = got
    got = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis)
    want = ref.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis)
    assert_backward_close(got, want, dy, x, mean, invstd, gamma, axis)
