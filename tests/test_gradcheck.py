"""batch_norm_backward against central finite differences of batch_norm_forward."""

import numpy as np
import pytest

import bnfast
from _helpers import (
    bn_loss_error, bn_third_derivative, central_difference_tol, channels_last_2d,
    elementwise_scale, make_channel_params, make_float, n_channels, output_rtol,
    values_per_channel)


@pytest.mark.parametrize("with_gamma", [True, False])
@pytest.mark.parametrize("shape, axis", [((6, 3), 1), ((5, 2), -1), ((3, 2, 4), 1),
                                         ((2, 3, 2, 2), 1), ((2, 2, 3, 3), -1), ((3, 4), 0),
                                         ((7,), 0)],
                         ids=["NC", "NC-axis-1", "NCL", "NCHW", "NHWC", "axis0", "1d"])
def test_backward_matches_finite_differences(rng, shape, axis, with_gamma):
    x = make_float(rng, shape, axis)
    channels = n_channels(shape, axis)
    gamma, beta = make_channel_params(rng, channels)
    if not with_gamma:
        gamma = None
    w = rng.standard_normal(shape) + 0.5
    eps = 1e-3

    def loss(x_, gamma_, beta_):
        y, _, _ = bnfast.batch_norm_forward(x_, gamma_, beta_, axis=axis, eps=eps)
        return float(np.sum(w * y))

    _, mean, invstd = bnfast.batch_norm_forward(x, gamma, beta, axis=axis, eps=eps)
    dx, dgamma, dbeta = bnfast.batch_norm_backward(w, x, mean, invstd, gamma, axis=axis)
    g_for_fd = np.ones(channels) if gamma is None else gamma

    # Tolerances: the central difference's rounding and truncation bounds (tests/_helpers.py),
    # plus the analytic gradient's own error (output_rtol of backward_scales' size ~ |numeric|).
    n = values_per_channel(x, axis)
    xhat_max = float(np.abs((channels_last_2d(x, axis) - mean) * invstd).max())
    y_scale = elementwise_scale(x, axis, mean, invstd, g_for_fd, beta)
    value_error = bn_loss_error(w, y_scale, n)
    h = 1e-6
    curvature = {"x": bn_third_derivative(w, g_for_fd, invstd, xhat_max, n), "gamma": 0.0,
                 "beta": 0.0}
    params = {"x": x, "gamma": g_for_fd, "beta": beta}
    analytic = {"x": dx, "gamma": dgamma, "beta": dbeta}
    for name, value in params.items():
        numeric = np.empty_like(value)
        for i in np.ndindex(value.shape):
            shifted = {}
            for sign in (1, -1):
                args = {k: v.copy() for k, v in params.items()}
                args[name][i] += sign * h
                shifted[sign] = loss(args["x"], args["gamma"], args["beta"])
            numeric[i] = (shifted[1] - shifted[-1]) / (2 * h)
        atol = central_difference_tol(h, value_error, curvature[name])
        np.testing.assert_allclose(analytic[name], numeric, rtol=output_rtol(np.float64, n),
                                   atol=atol, err_msg=f"d loss / d {name}")
    assert np.abs(dx).max() > 0 and np.abs(dgamma).max() > 0 and np.abs(dbeta).max() > 0
