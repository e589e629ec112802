"""Hypothesis: random shapes, axes, dtypes and scales against the reference."""

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import bnfast
from bnfast import reference as ref
from _helpers import (
    STAT_RTOL, assert_output_close, assert_stat_close, backward_scales, n_channels, stat_scales)

SETTINGS = settings(max_examples=50, deadline=None)


@st.composite
def cases(draw):
    ndim = draw(st.integers(1, 5))
    dim = st.integers(1, 6) if ndim > 2 else st.integers(1, 6) | st.integers(7, 400)
    shape = tuple(draw(st.lists(dim, min_size=ndim, max_size=ndim)))
    if ndim == 1:
        axis = draw(st.sampled_from([None, 0, -1, 1]))
    else:
        axis = draw(st.integers(-ndim, ndim - 1))
    return dict(
        shape=shape,
        axis=axis,
        dtype=np.dtype(draw(st.sampled_from(["float32", "float64"]))),
        seed=draw(st.integers(0, 2**63 - 1)),
        offset=draw(st.floats(-10, 10, allow_nan=False)),
        spread=draw(st.floats(0.1, 10, allow_nan=False)),
        with_gamma=draw(st.booleans()),
        with_beta=draw(st.booleans()),
        eps=draw(st.sampled_from([0.0, 1e-5, 1e-3, 0.5])),
    )


def _data(case):
    rng = np.random.default_rng(case["seed"])
    shape, axis = case["shape"], case["axis"]
    channels = n_channels(shape, 0 if axis is None else axis)
    x = (rng.standard_normal(shape) * case["spread"] + case["offset"]).astype(case["dtype"])
    dy = (rng.standard_normal(shape) + 0.3).astype(case["dtype"])
    gamma = rng.uniform(-2, 2, channels) if case["with_gamma"] else None
    beta = rng.uniform(-2, 2, channels) if case["with_beta"] else None
    return x, dy, gamma, beta, channels


def _m(x, channels):
    return x.size // channels if channels else 0


@SETTINGS
@given(cases())
def test_moments_property(case):
    x, _, _, _, _ = _data(case)
    axis = case["axis"]
    ax = 0 if axis is None else axis
    mean_scale, var_scale = stat_scales(x, ax)
    mean, var = bnfast.moments(x, axis=axis)
    rmean, rvar = ref.moments(x, axis=axis)
    rtol = STAT_RTOL[case["dtype"]]
    assert_stat_close(mean, rmean, rtol, mean_scale, "mean")
    assert_stat_close(var, rvar, rtol, var_scale, "var")


@SETTINGS
@given(cases())
def test_forward_and_backward_property(case):
    x, dy, gamma, beta, channels = _data(case)
    assume(_m(x, channels) >= 2)  # training needs 2 values per channel (test_errors)
    axis, eps = case["axis"], case["eps"]
    ax = 0 if axis is None else axis
    rtol = STAT_RTOL[case["dtype"]]
    y, mean, invstd = bnfast.batch_norm_forward(x, gamma, beta, axis=axis, eps=eps)
    ry, rmean, rinvstd, _, _ = ref.batch_norm_forward(x, gamma, beta, axis=axis, eps=eps)
    assert_output_close(y, ry, case["dtype"])
    assert_stat_close(mean, rmean, rtol, stat_scales(x, ax)[0], "mean")
    assert_stat_close(invstd, rinvstd, rtol, 0.0, "invstd")

    assume(np.isfinite(rinvstd).all())  # eps == 0 on a constant channel
    dx, dgamma, dbeta = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis)
    rdx, rdgamma, rdbeta = ref.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis)
    scales = backward_scales(dy, x, mean, invstd, gamma, ax)
    assert_output_close(dx, rdx, case["dtype"], scale=scales[0])
    assert_stat_close(dgamma, rdgamma, rtol, scales[1], "dgamma")
    assert_stat_close(dbeta, rdbeta, rtol, scales[2], "dbeta")


@SETTINGS
@given(cases())
def test_inference_property(case):
    x, _, gamma, beta, channels = _data(case)
    rng = np.random.default_rng(case["seed"] + 1)
    rm = rng.uniform(-10, 10, channels)
    rv = rng.uniform(0.01, 100, channels)
    axis, eps = case["axis"], case["eps"]
    y = bnfast.batch_norm_inference(x, rm, rv, gamma, beta, axis=axis, eps=eps)
    ry = ref.batch_norm_inference(x, rm, rv, gamma, beta, axis=axis, eps=eps)
    assert_output_close(y, ry, case["dtype"])
