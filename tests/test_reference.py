"""The oracle itself: bnfast.reference against independent NumPy formulas."""

import ast
import pathlib

import numpy as np
import pytest

from bnfast import reference as ref
from _helpers import (
    LAYOUT_IDS, LAYOUT_PARAMS, assert_forward_close, assert_inference_close,
    assert_moments_close, bn_loss_error, bn_third_derivative, central_difference_tol,
    channels_last_2d, elementwise_scale, make_channel_params, make_float, output_rtol,
    stat_rtol, stat_scales, unit_roundoff, values_per_channel)


def _other_axes(ndim, axis):
    return tuple(i for i in range(ndim) if i != axis % ndim)


def _bcast(v, ndim, axis):
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return np.reshape(v, shape)


def _broadcast_forward(x, gamma, beta, axis, eps):
    if x.ndim == 1:
        x = x[:, None]
        y, mean, invstd = _broadcast_forward(x, gamma, beta, 1, eps)
        return y[:, 0], mean, invstd
    red = _other_axes(x.ndim, axis)
    mean = x.mean(axis=red)
    var = x.var(axis=red)
    invstd = 1.0 / np.sqrt(var + eps)
    y = (x - _bcast(mean, x.ndim, axis)) * _bcast(invstd * gamma, x.ndim, axis) \
        + _bcast(beta, x.ndim, axis)
    return y, mean, invstd


def test_reference_imports_only_numpy():
    source = pathlib.Path(ref.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "reference must not import from the rest of bnfast"
            imported.add(node.module.split(".")[0])
    assert imported <= {"numpy", "math", "__future__", "typing"}, imported  # stdlib for types


def test_reference_worked_example():
    x = [1, 4, 6, 8, 10, 9]
    y, mean, invstd, rm, rv = ref.batch_norm_forward(x)
    var = np.var(np.array(x, dtype=np.float64))
    assert mean.dtype == np.float64 and mean.shape == (1,)
    # The sum 38 of small integers is exact, so the mean is 38 / 6 rounded once (u); var is
    # within stat_rtol(6) (the mean is the same on both sides, only the sum orders differ).
    u = unit_roundoff()
    assert mean[0] == pytest.approx(38 / 6, rel=u, abs=0)
    assert invstd[0] == pytest.approx(1 / np.sqrt(var + 1e-5), rel=stat_rtol(6))
    # y has mean 0 and variance var / (var + eps) exactly, up to output_rtol(float64, 6) of
    # |y| <= 2 per value.
    tol = output_rtol(np.float64, 6)
    assert abs(y.mean()) < 2 * tol
    assert y.var() == pytest.approx(var / (var + 1e-5), rel=8 * tol)
    assert rm is None and rv is None
    m, v = ref.moments(x, axis=0)
    assert m[0] == pytest.approx(38 / 6, rel=u) and v[0] == pytest.approx(var, rel=stat_rtol(6))


@pytest.mark.parametrize("shape, axis", LAYOUT_PARAMS, ids=LAYOUT_IDS)
def test_reference_moments_match_numpy(rng, shape, axis):
    x = make_float(rng, shape, axis)
    for ddof in (0, 1):
        mean, var = ref.moments(x, axis=axis, ddof=ddof)
        red = _other_axes(x.ndim, axis) if x.ndim > 1 else (0,)
        assert_moments_close(mean, var, np.atleast_1d(x.mean(axis=red)),
                             np.atleast_1d(x.var(axis=red, ddof=ddof)), x, axis)


@pytest.mark.parametrize("shape, axis", LAYOUT_PARAMS, ids=LAYOUT_IDS)
def test_reference_forward_and_inference_match_broadcasting(rng, shape, axis):
    x = make_float(rng, shape, axis)
    channels = 1 if x.ndim == 1 else shape[axis]
    gamma, beta = make_channel_params(rng, channels)
    rm0 = rng.standard_normal(channels)
    rv0 = rng.uniform(0.5, 2.0, channels)
    rm_in, rv_in = rm0.copy(), rv0.copy()
    y, mean, invstd, rm, rv = ref.batch_norm_forward(
        x, gamma, beta, axis=axis, eps=1e-3, running_mean=rm_in, running_var=rv_in,
        momentum=0.25)
    y_b, mean_b, invstd_b = _broadcast_forward(x, gamma, beta, axis, 1e-3)
    assert_forward_close((y, mean, invstd), (y_b, mean_b, invstd_b), x, axis, gamma, beta,
                         eps=1e-3)
    m = x.size // channels
    # the batch statistics' error (var + eps recovered from invstd: 8 u more), plus 4
    # roundings of the update on each side
    rtol = stat_rtol(m) + 16 * unit_roundoff()
    mean_scale, var_scale = stat_scales(x, axis)
    np.testing.assert_allclose(rm, 0.75 * rm0 + 0.25 * mean_b, rtol=rtol, atol=rtol * mean_scale)
    np.testing.assert_allclose(rv, 0.75 * rv0 + 0.25 * (1 / invstd_b**2 - 1e-3) * m / (m - 1),
                               rtol=rtol, atol=rtol * 2 * var_scale)
    np.testing.assert_array_equal(rm_in, rm0)
    np.testing.assert_array_equal(rv_in, rv0)

    yi = ref.batch_norm_inference(x, rm0, rv0, gamma, beta, axis=axis, eps=1e-3)
    if x.ndim == 1:
        expect = (x - rm0) / np.sqrt(rv0 + 1e-3) * gamma + beta
    else:
        expect = ((x - _bcast(rm0, x.ndim, axis)) / np.sqrt(_bcast(rv0, x.ndim, axis) + 1e-3)
                  * _bcast(gamma, x.ndim, axis) + _bcast(beta, x.ndim, axis))
    assert_inference_close(yi, expect, x, axis, rm0, rv0, gamma, beta, eps=1e-3)


@pytest.mark.parametrize("shape, axis", [((6, 3), 1), ((3, 2, 4), 1), ((4, 3, 2), -1), ((7,), 0)])
def test_reference_backward_matches_finite_differences(rng, shape, axis):
    x = make_float(rng, shape, axis)
    channels = 1 if x.ndim == 1 else shape[axis]
    gamma, beta = make_channel_params(rng, channels)
    w = rng.standard_normal(shape) + 0.5

    def loss(x_, gamma_, beta_):
        return np.sum(w * ref.batch_norm_forward(x_, gamma_, beta_, axis=axis)[0])

    _, mean, invstd, _, _ = ref.batch_norm_forward(x, gamma, beta, axis=axis)
    dx, dgamma, dbeta = ref.batch_norm_backward(w, x, mean, invstd, gamma, axis=axis)
    # the central difference's rounding and truncation bounds (tests/_helpers.py)
    n = values_per_channel(x, axis)
    xhat_max = float(np.abs((channels_last_2d(x, axis) - mean) * invstd).max())
    value_error = bn_loss_error(w, elementwise_scale(x, axis, mean, invstd, gamma, beta), n)
    curvature = [bn_third_derivative(w, gamma, invstd, xhat_max, n), 0.0, 0.0]
    h = 1e-6
    for arr, grad, args in ((x, dx, 0), (gamma, dgamma, 1), (beta, dbeta, 2)):
        numeric = np.empty_like(arr)
        for i in np.ndindex(arr.shape):
            plus = [x.copy(), gamma.copy(), beta.copy()]
            minus = [x.copy(), gamma.copy(), beta.copy()]
            plus[args][i] += h
            minus[args][i] -= h
            numeric[i] = (loss(*plus) - loss(*minus)) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=output_rtol(np.float64, n),
                                   atol=central_difference_tol(h, value_error, curvature[args]))


def test_reference_rejects_single_value_per_channel():
    with pytest.raises(ValueError, match="^Expected more than 1 value per channel when training"):
        ref.batch_norm_forward(np.ones((1, 3)))


def test_reference_empty_channel_moments_warn_and_give_nan():
    with pytest.warns(RuntimeWarning):
        mean, var = ref.moments(np.empty((0, 3)))
    assert mean.shape == var.shape == (3,)
    assert np.isnan(mean).all() and np.isnan(var).all()
