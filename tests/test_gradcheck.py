"""batch_norm_backward against central finite differences of batch_norm_forward."""

import numpy as np
import pytest

import bnfast
from _helpers import make_channel_params, make_float, n_channels


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

    h = 1e-6
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
        np.testing.assert_allclose(analytic[name], numeric, rtol=1e-6,
                                   atol=1e-7 * max(np.abs(numeric).max(), 1.0),
                                   err_msg=f"d loss / d {name}")
    assert np.abs(dx).max() > 0 and np.abs(dgamma).max() > 0 and np.abs(dbeta).max() > 0
