"""Accuracy on data with a large offset (docs/design.md §1 and §3): float32 1e4 + N(0, 1),
about 1e6 elements per channel, against the float64 reference of the same float32 values.

The statistics are checked within the worst-case bounds of tests/_helpers.py, which an
E[x^2] - E[x]^2 variance (relative error ~ u * (1e4)^2 * sqrt(n) ~ 1e-5 here) fails."""

import numpy as np
import pytest

import bnfast
from bnfast import reference as ref
from _helpers import (
    assert_moments_close, assert_stat_close, float32_forward_bound, stat_rtol, stat_scales,
    unit_roundoff, values_per_channel)

LAYOUTS = [
    pytest.param((1_000_000, 2), 1, id="NC"),
    pytest.param((4, 2, 500, 500), 1, id="NCHW"),
    pytest.param((4, 500, 500, 2), -1, id="NHWC"),
    pytest.param((1_000_000,), 0, id="1d"),
]


@pytest.mark.parametrize("shape, axis", LAYOUTS)
def test_large_offset_float32(rng, shape, axis):
    x = (1e4 + rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    rmean, rvar = ref.moments(x, axis=axis)

    mean, var = bnfast.moments(x, axis=axis)
    assert_moments_close(mean, var, rmean, rvar, x, axis)

    y, fmean, invstd = bnfast.batch_norm_forward(x, axis=axis)
    ry, _, rinvstd, _, _ = ref.batch_norm_forward(x, axis=axis)
    # var + eps recovered from invstd: var's bound, plus invstd's 3 roundings doubled by the
    # square, and 2 more (square, reciprocal): 8 u.
    n = values_per_channel(x, axis)
    _, var_scale = stat_scales(x, axis)
    assert_stat_close(1 / invstd**2 - 1e-5, rvar, stat_rtol(n) + 8 * unit_roundoff(),
                      var_scale, "forward var")
    assert_moments_close(fmean, None, rmean, None, x, axis)
    assert y.dtype == np.float32
    # The documented accuracy of y on this data (README, docs): 1e-5 absolute, about 40 ulps
    # of float32 at |y| ~ 5; the statistics' share of it is below 1e-8 (bounds above).
    np.testing.assert_allclose(y, ry, rtol=0, atol=1e-5, err_msg="forward y")
    del y, ry

    yi = bnfast.batch_norm_inference(x, rmean, rvar, axis=axis)
    ryi = ref.batch_norm_inference(x, rmean, rvar, axis=axis)
    assert yi.dtype == np.float32
    np.testing.assert_allclose(yi, ryi, rtol=0, atol=1e-5, err_msg="inference y")  # as above


@pytest.mark.parametrize("C", [64, 256])  # float32 tiles summed 4 rows at a time / row by row
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_badly_shifted_channel_is_redone_alone(rng, dtype, C):
    """A block whose first rows are far from the channel's mean takes a second, re-shifted
    pass for that channel only: its statistics stay accurate, and every other channel's
    statistics are the same bits whatever its neighbours do (channels-last, one tile)."""
    n = 256
    x = (rng.standard_normal((n, C)) * rng.uniform(0.5, 2) + rng.uniform(-5, 5)).astype(dtype)
    # The shift guess is the mean of the first rows: put it at the channel's mean, so that
    # only the channels shifted below need a second pass.
    x[:8] += (x[8:].mean(axis=0) - x[:8].mean(axis=0)).astype(dtype)
    bad = sorted(rng.choice(C, size=3, replace=False))
    shifted = x.copy()
    shifted[:16, bad] += dtype(40.0)
    mean, var = bnfast.moments(x, axis=1)
    smean, svar = bnfast.moments(shifted, axis=1)
    rmean, rvar = ref.moments(shifted, axis=1)
    assert_moments_close(smean, svar, rmean, rvar, shifted, 1)
    good = np.setdiff1d(np.arange(C), bad)
    np.testing.assert_array_equal(smean[good], mean[good])
    np.testing.assert_array_equal(svar[good], var[good])


def test_badly_shifted_channel_is_redone_alone_skipna(rng):
    """The same for the NaN-skipping, weighted statistics (the scaler's)."""
    n, C = 256, 64
    x = rng.standard_normal((n, C)) * 1.5 + 3.0
    x[rng.random((n, C)) < 0.05] = np.nan
    # The first row is this kernel's shift guess: put it at the mean, so that only the
    # shifted channels below need a second pass.
    x[0] = np.nanmean(x[1:], axis=0)
    w = rng.uniform(0.5, 2.0, n)
    bad = sorted(rng.choice(C, size=2, replace=False))
    shifted = x.copy()
    shifted[:16, bad] += 40.0
    count, mean, m2 = bnfast.moments_state(x, skipna=True, sample_weight=w)
    scount, smean, sm2 = bnfast.moments_state(shifted, skipna=True, sample_weight=w)
    good = np.setdiff1d(np.arange(C), bad)
    np.testing.assert_array_equal(smean[good], mean[good])
    np.testing.assert_array_equal(sm2[good], m2[good])
    for c in bad:
        ok = ~np.isnan(shifted[:, c])
        v, wc = shifted[ok, c], w[ok]
        rmean = np.sum(wc * v) / np.sum(wc)
        # weighted sums of m values: one rounding more per term (the weight) than stat_rtol;
        # atol from max|v| (mean) and sum w * (max (v - mean)^2 + gamma max|v|^2) (M2)
        m = v.size
        rtol = stat_rtol(m + 1)
        _, var_scale = stat_scales(v, 0)
        np.testing.assert_allclose(smean[c], rmean, rtol=rtol, atol=rtol * np.abs(v).max())
        np.testing.assert_allclose(sm2[c], np.sum(wc * (v - rmean) ** 2), rtol=rtol,
                                   atol=rtol * wc.sum() * var_scale)


# ---- float64 with a large offset: the means carried in two parts -------------------------

F64_OFFSET_LAYOUTS = [
    pytest.param((20000, 1), 1, id="NC-1"),
    pytest.param((20000, 8), 1, id="NC-8"),
    pytest.param((20000, 64), 1, id="NC-64"),
    pytest.param((2000, 300), 1, id="NC-300"),
    pytest.param((1000, 1000), -1, id="NC-1000"),
    pytest.param((16, 8, 40, 40), 1, id="NCHW"),
    pytest.param((16, 40, 40, 8), -1, id="NHWC"),
    pytest.param((8, 3, 4000), 1, id="NCL"),
    pytest.param((100_000,), 0, id="1d"),
]


def _exact_var(x, axis):
    """The variance and mean per channel in long double (two passes), as float64 (1-D: one
    channel)."""
    xl = np.asarray(x, np.longdouble)
    xl = xl.reshape(-1, 1) if xl.ndim == 1 else np.moveaxis(xl, axis % x.ndim, -1)
    xl = xl.reshape(-1, xl.shape[-1])
    dev = xl - xl.mean(axis=0)
    return (dev * dev).mean(axis=0).astype(np.float64), xl.mean(axis=0).astype(np.float64)


@pytest.mark.parametrize("offset", [1e4, 1e8])
@pytest.mark.parametrize("shape, axis", F64_OFFSET_LAYOUTS)
def test_large_offset_float64_variance_is_two_pass_accurate(rng, shape, axis, offset):
    """offset + N(0, 1) in float64: the variance within stat_rtol(n) of itself, the bound of
    a two-pass computation. Each block's deviations from its shift are exact (Sterbenz) and
    its M2 is a sum of positive terms; the blocks' and chunks' means are merged as unevaluated
    pairs, so their difference keeps its digits. (Rounding each block's mean into one double
    cost 1e-10 .. 1e-9 relative at 1e8, far above this bound: 2.2e-11 for n = 20,000.)"""
    x = offset + rng.standard_normal(shape)
    want, _ = _exact_var(x, axis)
    n = values_per_channel(x, axis)
    for got in (bnfast.moments(x, axis=axis)[1],
                1 / bnfast.batch_norm_forward(x, axis=axis, eps=0.0)[2] ** 2):
        # both within stat_rtol(n) of the exact value (invstd adds 4 roundings each way)
        np.testing.assert_allclose(got, want, rtol=stat_rtol(n) + 8 * unit_roundoff())
    count, mean, m2 = bnfast.moments_state(x.reshape(-1, 1) if len(shape) == 1 else
                                           np.moveaxis(x, axis, -1).reshape(-1, shape[axis]),
                                           axis=1, skipna=True)
    np.testing.assert_allclose(m2 / count, want, rtol=stat_rtol(n) + 2 * unit_roundoff())


def test_merging_states_keeps_the_documented_bound(rng):
    """States merged across calls (merge_moments: partial_fit, Dask, processes) keep the mean
    as one double: each merge adds at most (2 |delta| e + e^2) n_a n_b / n to M2, where delta
    is the exact difference of the two means and e = u (|mean_a| + |mean_b|) bounds the error
    of their rounded difference (docs/design.md §1, "Offsets"). 1e8 + N(0, 1) in 10 pieces."""
    u = unit_roundoff()
    x = 1e8 + rng.standard_normal((20000, 4))
    pieces = np.array_split(x, 10)
    count, mean, m2 = bnfast.moments_state(pieces[0])
    bound = np.zeros(4)
    seen = [pieces[0]]
    for piece in pieces[1:]:
        _, exact_a = _exact_var(np.concatenate(seen), 1)
        _, exact_b = _exact_var(piece, 1)
        nb = piece.shape[0]
        na = count[0]
        e = u * (np.abs(exact_a) + np.abs(exact_b)) * 1.01  # and the states' own rounding
        delta = np.abs(exact_b - exact_a)
        bound += (2 * delta * e + e * e) * na * nb / (na + nb)
        count, mean, m2 = bnfast.merge_moments([(count, mean, m2), bnfast.moments_state(piece)])
        seen.append(piece)
    want, _ = _exact_var(x, 1)
    n = x.shape[0]
    err = np.abs(m2 / n - want)
    assert np.all(err <= bound / n + stat_rtol(n) * want), (err / want, bound / n / want)


@pytest.mark.parametrize("shape, axis", [pytest.param((200_000, 3), 1, id="NC"),
                                         pytest.param((8, 3, 100, 250), 1, id="NCHW"),
                                         pytest.param((8, 100, 250, 3), -1, id="NHWC")])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_float32_y_is_accurate_where_beta_cancels(rng, shape, axis, offset):
    """float32 y = (x - z) * scale around the zero crossing z = mean - beta / scale
    (bn_elementwise_impl.h): within 4 float32 roundings of |y| itself, plus 2^-51 of
    |mean * scale| + |beta| for z's float64 rounding, also at y near 0 where gamma x_hat
    cancels beta (the plain formula erred by float32 roundings of |beta| there)."""
    C = shape[axis]
    x = (offset + rng.standard_normal(shape)).astype(np.float32)
    gamma = rng.uniform(0.5, 2.0, C) * rng.choice([-1.0, 1.0], C)
    beta = rng.uniform(-3.0, 3.0, C)
    rm = offset + rng.uniform(-0.1, 0.1, C)
    rv = rng.uniform(0.5, 2.0, C)
    y = bnfast.batch_norm_inference(x, rm, rv, gamma, beta, axis=axis)
    want = ref.batch_norm_inference(x.astype(np.float64), rm, rv, gamma, beta, axis=axis)
    bound = float32_forward_bound(want, rm, gamma / np.sqrt(rv + 1e-5), beta, axis)
    err = np.abs(y.astype(np.float64) - want)
    assert np.all(err <= bound), float(np.max(err / bound))
    assert np.sum(np.abs(want) < 1e-3 * np.abs(beta).max()) > 0  # y near 0 was checked


@pytest.mark.parametrize("layout", ["NC", "NCHW", "NHWC"])
def test_float32_y_with_extreme_coefficients(rng, layout):
    """Per-channel coefficients from zero to 1e25 (gamma), 1e-20 to 3e38 (beta), means at 0,
    1e-35 and 1e4, data over six decades: float32 y within float32_forward_bound of the
    float64 formula, and exactly beta where gamma is 0 (finite x), in the run and tile
    layouts."""
    axis = -1 if layout == "NHWC" else 1
    for _ in range(60):
        C = int(rng.integers(1, 40))
        shape = {"NC": (int(rng.integers(1, 50)), C), "NCHW": (3, C, 5, 7),
                 "NHWC": (3, 5, 7, C)}[layout]
        x = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3)
             + rng.choice([0.0, 1e4, -3.0])).astype(np.float32)
        gamma = rng.choice([0.0, 1e-30, 1e-8, 1.0, -2.5, 1e8, 1e25], C) * rng.uniform(0.5, 2, C)
        beta = rng.choice([0.0, 1.0, -7.0, 1e20, 1e-20, 3e38], C)
        rm, rv = rng.choice([0.0, 1e4, -3.0, 1e-35], C), rng.uniform(0.1, 10, C)
        with np.errstate(over="ignore", invalid="ignore"):
            y = bnfast.batch_norm_inference(x, rm, rv, gamma, beta, axis=axis)
            want = ref.batch_norm_inference(x.astype(np.float64), rm, rv, gamma, beta, axis=axis)
        ok = np.isfinite(want) & (np.abs(want) < 3e38)  # past FLT_MAX y may round to inf
        bound = float32_forward_bound(want, rm, gamma / np.sqrt(rv + 1e-5), beta, axis)
        err = np.abs(y.astype(np.float64) - want)
        assert np.all(err[ok] <= bound[ok]), float(np.max(err[ok] / bound[ok]))
        bshape = [1] * len(shape)
        bshape[axis] = C
        zero = np.broadcast_to((gamma == 0).reshape(bshape), shape)
        assert np.array_equal(y[zero], np.broadcast_to(beta.reshape(bshape), shape)[zero]
                              .astype(np.float32))
