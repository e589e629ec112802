"""batch_norm_backward against central finite differences of batch_norm_forward."""

import numpy as np
import pytest

import bnfast
from _helpers import (
    assert_batch_norm_gradients, central_differences, make_channel_params, make_float,
    n_channels, values_per_channel)


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

    def loss(x, gamma, beta):
        y, _, _ = bnfast.batch_norm_forward(x, gamma, beta, axis=axis, eps=eps)
        return float(np.sum(w * y))

    _, mean, invstd = bnfast.batch_norm_forward(x, gamma, beta, axis=axis, eps=eps)
    dx, dgamma, dbeta = bnfast.batch_norm_backward(w, x, mean, invstd, gamma, axis=axis)
    g_for_fd = np.ones(channels) if gamma is None else gamma

    # Tolerances: the central difference's rounding and truncation bounds (tests/_helpers.py),
    # plus the analytic gradient's own error (output_rtol of backward_scales' size ~ |numeric|).
    h = 1e-6
    params = {"x": x, "gamma": g_for_fd, "beta": beta}
    numeric = central_differences(loss, params, h)
    assert_batch_norm_gradients({"x": dx, "gamma": dgamma, "beta": dbeta}, numeric, h, w, x,
                                axis, mean, invstd, g_for_fd, beta, values_per_channel(x, axis))
