"""Awkward arrays (Fortran order, steps, negative strides, byte-swapped, unaligned,
broadcast, transposed views), size 0, C == 0 and NaN/Inf."""

import numpy as np
import pytest

import bnfast
from bnfast import reference as ref
from _helpers import (
    assert_backward_close, assert_bits_equal, assert_forward_close, assert_inference_close,
    assert_moments_close, assert_output_close, backward_scales, make_channel_params, make_float,
    n_channels, output_rtol, run_isolated, stat_rtol, stat_scales, unit_roundoff,
    working_dtype)

AWKWARD_LAYOUTS = [
    ("1d", (37,), 0),
    ("NC", (33, 5), 1),
    ("NC-axis-1", (33, 5), -1),
    ("NCHW", (4, 3, 5, 6), 1),
    ("NHWC", (4, 5, 6, 3), -1),
    ("axis0-3d", (3, 4, 5), 0),
    ("middle-axis2", (3, 4, 5, 6), 2),
    ("NC-few-channels-long", (700, 3), 1),
]
AWKWARD_IDS = [layout[0] for layout in AWKWARD_LAYOUTS]
AWKWARD_PARAMS = [layout[1:] for layout in AWKWARD_LAYOUTS]
AWKWARD_KINDS = ["fortran", "step", "negative-strides", "byteswapped", "unaligned", "broadcast",
                 "transposed-memory"]


def make_awkward(rng, shape, axis, dtype, kind):
    """An array of logical shape `shape` whose memory layout is awkward."""
    dtype = np.dtype(dtype)
    if kind == "step":
        big = make_float(rng, tuple(2 * s + 1 for s in shape), axis).astype(dtype)
        x = big[tuple(slice(1, None, 2) for _ in shape)]
    elif kind == "negative-strides":
        x = make_float(rng, shape, axis).astype(dtype)[tuple(slice(None, None, -1) for _ in shape)]
    elif kind == "fortran":
        x = np.asfortranarray(make_float(rng, shape, axis).astype(dtype))
    elif kind == "byteswapped":
        swapped = dtype.newbyteorder(">" if np.little_endian else "<")
        x = make_float(rng, shape, axis).astype(swapped)
    elif kind == "unaligned":
        values = make_float(rng, shape, axis).astype(dtype)
        raw = np.zeros(values.nbytes + 1, dtype=np.uint8)
        x = np.ndarray(shape, dtype=dtype, buffer=raw, offset=1)
        x[...] = values
        assert not x.flags.aligned
    elif kind == "broadcast":
        # Repeat along a non-channel axis: read-only, zero stride.
        x = make_float(rng, shape, axis).astype(dtype)
        along = 0 if axis % len(shape) != 0 else len(shape) - 1
        x = np.broadcast_to(np.take(x, [0], axis=along), shape)
        assert 0 in x.strides
    elif kind == "transposed-memory":
        # Channels last in memory for a channels-first view, and the other way round.
        x = make_float(rng, shape, axis).astype(dtype)
        target = -1 if axis % x.ndim != x.ndim - 1 else 0
        x = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, axis, target)), target, axis)
        assert not x.flags.c_contiguous
    else:
        raise AssertionError(kind)
    assert x.shape == shape
    return x


def _cases():
    for (name, shape, axis) in AWKWARD_LAYOUTS:
        for kind in AWKWARD_KINDS:
            if kind == "broadcast" and len(shape) < 3:
                continue  # repeating a 1-D or 2-D array makes constant channels
            if kind == "transposed-memory" and len(shape) == 1:
                continue
            for dtype in ("float64", "float32"):
                yield pytest.param(shape, axis, dtype, kind, id=f"{name}-{kind}-{dtype}")


@pytest.mark.parametrize("shape, axis, dtype, kind", list(_cases()))
def test_awkward_inputs_match_reference(rng, shape, axis, dtype, kind):
    x = make_awkward(rng, shape, axis, dtype, kind)
    dy = make_awkward(rng, shape, axis, dtype, kind)
    channels = n_channels(shape, axis)
    gamma, beta = make_channel_params(rng, channels)
    out_dtype = working_dtype(x)
    assert out_dtype == np.dtype(dtype)

    mean, var = bnfast.moments(x, axis=axis)
    rmean, rvar = ref.moments(x, axis=axis)
    assert_moments_close(mean, var, rmean, rvar, x, axis)

    got = bnfast.batch_norm_forward(x, gamma, beta, axis=axis)
    want = ref.batch_norm_forward(x, gamma, beta, axis=axis)
    assert_forward_close(got, want, x, axis, gamma, beta)
    _, rmean, rinvstd, _, _ = want

    rv = 1 / rinvstd**2 - 1e-5
    y = bnfast.batch_norm_inference(x, rmean, rv, gamma, beta, axis=axis)
    ry = ref.batch_norm_inference(x, rmean, rv, gamma, beta, axis=axis)
    assert_inference_close(y, ry, x, axis, rmean, rv, gamma, beta)

    got = bnfast.batch_norm_backward(dy, x, rmean, rinvstd, gamma, axis=axis)
    want = ref.batch_norm_backward(dy, x, rmean, rinvstd, gamma, axis=axis)
    assert_backward_close(got, want, dy, x, rmean, rinvstd, gamma, axis)


@pytest.mark.parametrize("shape, axis, dtype, kind", list(_cases()))
def test_awkward_inputs_same_as_contiguous_copy(rng, shape, axis, dtype, kind):
    """docs/design.md §2: walked by stride or copied, the result is that of a contiguous copy."""
    x = make_awkward(rng, shape, axis, dtype, kind)
    dy = make_awkward(rng, shape, axis, dtype, kind)
    xc = np.ascontiguousarray(x, dtype=np.dtype(dtype))
    dyc = np.ascontiguousarray(dy, dtype=np.dtype(dtype))
    channels = n_channels(shape, axis)
    gamma, beta = make_channel_params(rng, channels)
    for a, b, what in zip(bnfast.moments(x, axis=axis), bnfast.moments(xc, axis=axis),
                          ("mean", "var")):
        assert_bits_equal(a, b, f"moments {what}")
    fa = bnfast.batch_norm_forward(x, gamma, beta, axis=axis)
    fb = bnfast.batch_norm_forward(xc, gamma, beta, axis=axis)
    for a, b, what in zip(fa, fb, ("y", "mean", "invstd")):
        assert_bits_equal(a, b, f"forward {what}")
    mean, invstd = fb[1], fb[2]
    assert_bits_equal(bnfast.batch_norm_inference(x, mean, 1 / invstd**2, gamma, beta, axis=axis),
                      bnfast.batch_norm_inference(xc, mean, 1 / invstd**2, gamma, beta, axis=axis),
                      "inference y")
    ba = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis)
    bb = bnfast.batch_norm_backward(dyc, xc, mean, invstd, gamma, axis=axis)
    for a, b, what in zip(ba, bb, ("dx", "dgamma", "dbeta")):
        assert_bits_equal(a, b, f"backward {what}")


@pytest.mark.parametrize("dtype", [">f4", ">f8", "<f4", "<f8"])
def test_byteswapped_per_channel_arguments(rng, dtype):
    x = make_float(rng, (20, 4, 3), 1)
    gamma, beta = make_channel_params(rng, 4)
    rm, rv = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)
    g, b = gamma.astype(dtype), beta.astype(dtype)
    m_, v_ = rm.astype(dtype), rv.astype(dtype)
    ry, rmean, rinvstd, rrm, rrv = ref.batch_norm_forward(x, g, b, running_mean=m_,
                                                          running_var=v_)
    y, mean, invstd = bnfast.batch_norm_forward(x, g, b, running_mean=m_, running_var=v_)
    assert m_.dtype == np.dtype(dtype) and v_.dtype == np.dtype(dtype)
    assert_forward_close((y, mean, invstd), (ry, rmean, rinvstd), x, 1, g, b)
    # the batch statistics' error, 4 float64 roundings of the update, one to the buffer dtype
    tol = stat_rtol(60) + 4 * unit_roundoff() + unit_roundoff(dtype)
    mean_scale, var_scale = stat_scales(x, 1)
    np.testing.assert_allclose(m_.astype(np.float64), rrm, rtol=tol, atol=tol * mean_scale)
    np.testing.assert_allclose(v_.astype(np.float64), rrv, rtol=tol, atol=tol * var_scale)
    yi = bnfast.batch_norm_inference(x, rm.astype(dtype), rv.astype(dtype), g, b)
    assert_inference_close(
        yi, ref.batch_norm_inference(x, rm.astype(dtype), rv.astype(dtype), g, b), x, 1,
        rm.astype(dtype), rv.astype(dtype), g, b)
    dx, dgamma, dbeta = bnfast.batch_norm_backward(x, x, rmean.astype(dtype),
                                                   rinvstd.astype(dtype), g)
    rdx, _, _ = ref.batch_norm_backward(x, x, rmean.astype(dtype), rinvstd.astype(dtype), g)
    scales = backward_scales(x, x, rmean.astype(dtype).astype(float),
                             rinvstd.astype(dtype).astype(float), g.astype(float), 1)
    assert_output_close(dx, rdx, np.float64, scale=scales[0], rtol=output_rtol(np.float64, 60))


# ---------------------------------------------------------------- size 0 and C == 0

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape, axis", [((5, 0), 1), ((4, 0, 3, 3), 1), ((4, 3, 3, 0), -1),
                                         ((0, 6), 0)], ids=["NC", "NCHW", "NHWC", "axis0"])
def test_zero_channels(shape, axis, dtype):
    # In a child process: an integer division by C == 0 in a kernel kills the process.
    run_isolated("test_awkward", "check_zero_channels", shape, axis, dtype)


def check_zero_channels(shape, axis, dtype):
    x = np.empty(shape, dtype=dtype)
    empty = np.empty(0)
    mean, var = bnfast.moments(x, axis=axis)
    assert mean.shape == var.shape == (0,) and mean.dtype == var.dtype == np.float64
    y, mean, invstd = bnfast.batch_norm_forward(x, axis=axis)
    assert y.shape == shape and y.dtype == np.dtype(dtype)
    assert mean.shape == invstd.shape == (0,) and mean.dtype == invstd.dtype == np.float64
    y = bnfast.batch_norm_inference(x, empty, empty, empty, empty, axis=axis)
    assert y.shape == shape and y.dtype == np.dtype(dtype)
    dx, dgamma, dbeta = bnfast.batch_norm_backward(x, x, empty, empty, axis=axis)
    assert dx.shape == shape and dx.dtype == np.dtype(dtype)
    assert dgamma.shape == dbeta.shape == (0,) and dgamma.dtype == dbeta.dtype == np.float64
    ry, rmean, rinvstd, _, _ = ref.batch_norm_forward(x, axis=axis)
    assert ry.shape == shape and rmean.shape == (0,)


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_empty_batch_inference_with_out(dtype):
    x = np.empty((0, 3, 4), dtype=dtype)
    out = np.empty_like(x)
    assert bnfast.batch_norm_inference(x, np.zeros(3), np.ones(3), out=out) is out


# ---------------------------------------------------------------- NaN / Inf

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, "inf-and-minus-inf"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape, axis, index", [
    ((40, 4), 1, (7, 2)),
    ((3, 4, 5, 6), 1, (1, 0, 2, 3)),
    ((3, 5, 6, 4), -1, (2, 4, 0, 3)),
    ((5000, 3), 1, (4321, 1)),
    ((101,), 0, (50,)),
], ids=["NC", "NCHW", "NHWC", "NC-long", "1d"])
def test_non_finite_values_poison_only_their_channel(rng, shape, axis, index, dtype, bad):
    x = make_float(rng, shape, axis).astype(dtype)
    if bad == "inf-and-minus-inf":
        x[index] = np.inf
        other = list(index)
        other[0] = (other[0] + 1) % shape[0]
        x[tuple(other)] = -np.inf
    else:
        x[index] = bad
    channels = n_channels(shape, axis)
    bad_channel = 0 if len(shape) == 1 else index[axis]
    good = np.arange(channels) != bad_channel
    x_good = np.compress(good, x, axis=axis) if len(shape) > 1 else None
    gamma, beta = make_channel_params(rng, channels)

    mean, var = bnfast.moments(x, axis=axis)
    assert not np.isfinite(mean[bad_channel])
    assert np.isnan(var[bad_channel])
    if x_good is not None:
        rmean, rvar = ref.moments(x_good, axis=axis)
        assert_moments_close(mean[good], var[good], rmean, rvar, x_good, axis)

    y, mean, invstd = bnfast.batch_norm_forward(x, gamma, beta, axis=axis)
    assert not np.isfinite(mean[bad_channel])
    assert np.isnan(invstd[bad_channel])
    y_bad = y if len(shape) == 1 else np.take(y, [bad_channel], axis=axis)
    assert np.isnan(y_bad).all()
    if x_good is not None:
        want = ref.batch_norm_forward(x_good, gamma[good], beta[good], axis=axis)
        assert_forward_close((np.compress(good, y, axis=axis), mean[good], invstd[good]), want,
                             x_good, axis, gamma[good], beta[good])

    # Inference normalizes with given statistics: only the bad elements are non-finite.
    rm, rv = rng.standard_normal(channels), rng.uniform(0.5, 2.0, channels)
    yi = bnfast.batch_norm_inference(x, rm, rv, gamma, beta, axis=axis)
    ryi = ref.batch_norm_inference(x, rm, rv, gamma, beta, axis=axis)
    np.testing.assert_array_equal(np.isfinite(yi), np.isfinite(ryi))
    finite = np.isfinite(ryi)
    x_finite = np.where(np.isfinite(x), x, 0)
    assert_inference_close(np.where(finite, yi, 0).astype(yi.dtype), np.where(finite, ryi, 0),
                           x_finite, axis, rm, rv, gamma, beta)


def test_non_finite_running_statistics_update(rng):
    x = make_float(rng, (30, 3), 1)
    x[4, 1] = np.nan
    rm, rv = np.zeros(3), np.ones(3)
    bnfast.batch_norm_forward(x, running_mean=rm, running_var=rv)
    assert np.isnan(rm[1]) and np.isnan(rv[1])
    good = [0, 2]
    # the batch statistics' error, plus 4 roundings of the update on each side
    rtol = stat_rtol(30) + 8 * unit_roundoff()
    mean_scale, var_scale = stat_scales(x[:, good], 1)
    np.testing.assert_allclose(rm[good], 0.1 * x[:, good].mean(axis=0), rtol=rtol,
                               atol=rtol * mean_scale)
    np.testing.assert_allclose(rv[good], 0.9 + 0.1 * x[:, good].var(axis=0, ddof=1), rtol=rtol,
                               atol=rtol * var_scale)
