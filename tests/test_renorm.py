"""Batch renormalization: bnfast.batch_renorm_forward and batch_norm_backward(renorm=(r, d))
against the float64 reference, finite differences, thread counts, bad input and the layer."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bnfast
from bnfast import reference as ref
from _helpers import (
    assert_batch_norm_gradients, assert_bits_equal, central_differences, channels_last_2d,
    values_per_channel)
from _variant_checks import (
    KINDS, LAYOUTS, U, U64, assert_within, backward_bounds, make_data,
    normalize_bound, relayout, stat_errors, work_and_out)

# The seed fixture is fixed for the test and mixed with hypothesis's own draw.
SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def _shape(draw, layout):
    n = draw(st.integers(2, 9))
    C = draw(st.integers(1, 6))
    if layout == "NC":
        return (draw(st.integers(2, 80)), C), draw(st.sampled_from([1, -1]))
    if layout == "NCHW":
        return (n, C, draw(st.integers(1, 5)), draw(st.integers(1, 5))), 1
    if layout == "NHWC":
        return (n, draw(st.integers(1, 5)), draw(st.integers(1, 5)), C), -1
    if layout == "NCL":
        return (n, C, draw(st.integers(1, 7))), 1
    if layout == "whole":
        return (n, C), None
    return (draw(st.integers(2, 120)),), 0


@st.composite
def cases(draw):
    shape, axis = _shape(draw, draw(st.sampled_from(["NC", "NCHW", "NHWC", "NCL", "whole",
                                                     "1d"])))
    kind = draw(st.sampled_from(KINDS))
    return dict(
        shape=shape, axis=axis, kind=kind, layout=draw(st.sampled_from(LAYOUTS)),
        seed=draw(st.integers(0, 2 ** 32 - 1)),
        gamma=draw(st.booleans()), beta=draw(st.booleans()),
        running=draw(st.sampled_from(["float64", "float32"])),
        # r_max = 1, d_max = 0 is plain batch norm; small limits make r and d clip often.
        r_max=draw(st.sampled_from([1.0, 1.25, 3.0, 100.0])),
        d_max=draw(st.sampled_from([0.0, 0.3, 5.0, 100.0])),
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.5])),
        momentum=draw(st.sampled_from([0.0, 0.1, 1.0])),
        out=draw(st.sampled_from([None, "fresh", "inplace"])),
    )


def _channels(shape, axis):
    return 1 if len(shape) == 1 or axis is None else shape[axis]


def _setup(seed, case):
    rng = np.random.default_rng([seed, case["seed"]])
    shape, axis, kind = case["shape"], case["axis"], case["kind"]
    C = _channels(shape, axis)
    x = relayout(make_data(rng, shape, axis, kind), case["layout"])
    gamma = rng.uniform(0.5, 2.0, C) * rng.choice([-1.0, 1.0], C) if case["gamma"] else None
    beta = rng.uniform(-2.0, 2.0, C) if case["beta"] else None
    # Running statistics around the data's (offset up to 3, spread 0.5 to 3), so that r and
    # d are sometimes inside their limits and sometimes clipped.
    rm = rng.uniform(-4.0, 4.0, C).astype(case["running"])
    rv = rng.uniform(0.1, 12.0, C).astype(case["running"])
    return x, gamma, beta, rm, rv


@SETTINGS
@given(cases())
def test_forward_matches_reference(seed, case):
    x, gamma, beta, rm, rv = _setup(seed, case)
    axis, eps, mom = case["axis"], case["eps"], case["momentum"]
    work, odt = work_and_out(case["kind"])
    # The reference has no axis=None: the whole array is then one 1-D channel.
    ry, rmean, rinvstd, rr, rd, rrm, rrv = ref.batch_renorm_forward(
        x if axis is not None else x.ravel(), rm, rv, gamma, beta, r_max=case["r_max"],
        d_max=case["d_max"], axis=0 if axis is None else axis, eps=eps, momentum=mom)
    ry = ry.reshape(x.shape)
    x_before = x.copy()
    out = None
    if case["out"] == "fresh":
        out = np.full(x.shape, np.nan, odt)
    elif case["out"] == "inplace" and x.dtype == odt:
        out = x
    rm_plain, rv_plain = rm.copy(), rv.copy()
    y, mean, invstd, r, d = bnfast.batch_renorm_forward(
        x, rm, rv, gamma, beta, r_max=case["r_max"],
        d_max=case["d_max"], axis=axis, eps=eps, momentum=mom, out=out)
    if out is not None:
        assert y is out
    if out is not x:
        assert_bits_equal(x, x_before, "x unchanged")
    assert y.dtype == odt and y.shape == x.shape

    # The statistics are the plain training forward's, bit for bit, and so is the update of
    # the running statistics (the same rule).
    _, mean_p, invstd_p = bnfast.batch_norm_forward(x_before, axis=axis, eps=eps,
                                                    running_mean=rm_plain,
                                                    running_var=rv_plain, momentum=mom)
    assert_bits_equal(mean, mean_p, "mean")
    assert_bits_equal(invstd, invstd_p, "invstd")
    assert_bits_equal(rm, rm_plain, "running_mean")
    assert_bits_equal(rv, rv_plain, "running_var")

    x2 = channels_last_2d(x_before, axis)
    m = x2.shape[0]
    d_mean, d_var = stat_errors(x2)
    var = 1.0 / rinvstd ** 2 - eps
    d_rel = d_var / (2.0 * (var + eps)) + 4 * U64  # relative error of sigma_B
    sigma = np.sqrt(rv.astype(np.float64) + eps)
    assert_within(mean, rmean, d_mean, "mean")
    assert_within(invstd, rinvstd, rinvstd * d_rel, "invstd")
    # r = sigma_B / sigma and d = (mean - running_mean) / sigma, clipped (clip cannot add
    # error: it is monotonic and exact).
    assert_within(r, rr, rr * (d_rel + 4 * U64), "r")
    assert_within(d, rd, d_mean / sigma + 4 * U64 * np.abs(rd), "d")
    assert np.all((1.0 / case["r_max"] <= r) & (r <= case["r_max"]))
    assert np.all(np.abs(d) <= case["d_max"])

    g = np.ones(mean.shape) if gamma is None else gamma
    scale = rinvstd * rr * g
    shift = rd * g + (0.0 if beta is None else beta)
    bound = normalize_bound(x2, rmean, scale, shift, channels_last_2d(ry, axis), work, odt,
                            d_mean, np.abs(scale) * (2 * d_rel + 8 * U64),
                            np.abs(g) * (d_mean / sigma + 4 * U64 * np.abs(rd))
                            + 4 * U64 * np.abs(shift))
    assert_within(channels_last_2d(y, axis), channels_last_2d(ry, axis), bound, "y")

    # Running statistics: float64 arithmetic on statistics within d_mean, d_var, then stored
    # in the buffer's dtype (half an ulp of it).
    ub = U[np.dtype(case["running"])]
    assert_within(rm, rrm, mom * d_mean + (ub + 4 * U64) * np.abs(rrm), "running_mean")
    assert_within(rv, rrv, mom * d_var * m / max(m - 1, 1) + (ub + 4 * U64) * np.abs(rrv),
                  "running_var")


def test_plain_batch_norm_when_limits_are_1_and_0(rng):
    # r_max = 1 and d_max = 0 force r = 1, d = 0: plain batch norm, same bits.
    x = make_data(rng, (6, 4, 5, 5), 1, "float32")
    gamma, beta = rng.uniform(0.5, 2.0, 4), rng.standard_normal(4)
    rm, rv = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)
    rm2, rv2 = rm.copy(), rv.copy()
    y, mean, invstd, r, d = bnfast.batch_renorm_forward(x, rm, rv, gamma, beta, r_max=1.0,
                                                        d_max=0.0)
    yp, mp, ip = bnfast.batch_norm_forward(x, gamma, beta, running_mean=rm2, running_var=rv2)
    for name, a, b in [("y", y, yp), ("mean", mean, mp), ("invstd", invstd, ip),
                       ("running_mean", rm, rm2), ("running_var", rv, rv2)]:
        assert_bits_equal(a, b, name)
    assert r.tolist() == [1.0] * 4 and d.tolist() == [0.0] * 4


def test_r_and_d_use_the_running_statistics_before_the_call(rng):
    x = make_data(rng, (50, 3), 1, "float64")
    rm, rv = np.array([0.5, -1.0, 2.0]), np.array([2.0, 0.5, 4.0])
    sigma = np.sqrt(rv + 1e-3)
    mean, var = x.mean(axis=0), x.var(axis=0)
    _, _, _, r, d = bnfast.batch_renorm_forward(x, rm.copy(), rv.copy(), r_max=1e6,
                                                d_max=1e6, eps=1e-3, momentum=1.0)
    # Unclipped: r and d are the plain ratios of the statistics (float64 values of O(1)).
    np.testing.assert_allclose(r, np.sqrt(var + 1e-3) / sigma, rtol=1e-13)
    np.testing.assert_allclose(d, (mean - rm) / sigma, rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------- backward

@st.composite
def backward_cases(draw):
    case = draw(cases())
    case["dy_kind"] = draw(st.sampled_from(["same", "float64"]))
    return case


@SETTINGS
@given(backward_cases())
def test_backward_matches_reference(seed, case):
    x, gamma, beta, rm, rv = _setup(seed, case)
    axis = case["axis"]
    rng = np.random.default_rng([seed, case["seed"], 1])
    dy = make_data(rng, x.shape, axis, case["kind"] if case["dy_kind"] == "same" else "float64")
    _, mean, invstd, r, d = bnfast.batch_renorm_forward(
        x, rm, rv, gamma, beta, r_max=case["r_max"], d_max=case["d_max"], axis=axis,
        eps=case["eps"])
    work, odt = work_and_out(np.result_type(x.dtype, dy.dtype).name)
    x_before, dy_before = x.copy(), dy.copy()
    dx, dgamma, dbeta = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis,
                                                   renorm=(r, d))
    assert_bits_equal(x, x_before, "x unchanged")
    assert_bits_equal(dy, dy_before, "dy unchanged")
    whole = axis is None  # the reference's spelling: one 1-D channel
    rdx, rdgamma, rdbeta = ref.batch_renorm_backward(
        dy.ravel() if whole else dy, x.ravel() if whole else x, mean, invstd, r, d, gamma,
        axis=0 if whole else axis)
    rdx = rdx.reshape(x.shape)
    assert dx.dtype == odt and dgamma.dtype == np.float64 and dbeta.dtype == np.float64
    g = np.ones(mean.shape) if gamma is None else gamma
    dy2, x2 = channels_last_2d(dy, axis), channels_last_2d(x, axis)
    dx_bound, d_s0, d_s1 = backward_bounds(dy2, x2, mean, invstd, g * r,
                                           channels_last_2d(rdx, axis), work, odt)
    assert_within(channels_last_2d(dx, axis), channels_last_2d(rdx, axis), dx_bound, "dx")
    assert_within(dbeta, rdbeta, d_s0, "dbeta")
    # dgamma = r * sum(dy * xhat) + d * sum(dy): the two sums' errors, weighted, and the
    # float64 combination.
    assert_within(dgamma, rdgamma, r * d_s1 + np.abs(d) * d_s0 + 4 * U64 * (
        np.abs(r * rdgamma) + np.abs(d * rdbeta) + np.abs(rdgamma)), "dgamma")


def test_backward_is_the_plain_one_with_gamma_times_r(rng):
    x = make_data(rng, (7, 3, 4), 1, "float32")
    dy = make_data(rng, (7, 3, 4), 1, "float32")
    gamma = rng.uniform(0.5, 2.0, 3)
    _, mean, invstd, r, d = bnfast.batch_renorm_forward(x, np.zeros(3), np.full(3, 3.0),
                                                        gamma, r_max=2.0, d_max=1.0)
    dx, dgamma, dbeta = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma, renorm=(r, d))
    dxp, s1, s0 = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma * r)
    assert_bits_equal(dx, dxp, "dx")
    assert_bits_equal(dbeta, s0, "dbeta")
    assert_bits_equal(dgamma, r * s1 + d * s0, "dgamma")


# ---------------------------------------------------------------- finite differences

FD_SHAPES = [((6, 3), 1), ((3, 2, 2, 2), 1), ((2, 2, 3, 3), -1), ((9,), 0)]


def _check_gradients(loss, w, x, axis, gamma, beta, mean, invstd, r, d):
    """The renorm backward's gradients against central differences of loss: y is batch norm
    with the scale gamma * r and shift beta + d * gamma (r, d constant), so the bounds of
    plain batch norm with those apply (assert_batch_norm_gradients)."""
    dx, dgamma, dbeta = bnfast.batch_norm_backward(w, x, mean, invstd, gamma, axis=axis,
                                                   renorm=(r, d))
    h = 1e-6
    numeric = central_differences(loss, {"x": x, "gamma": gamma, "beta": beta}, h)
    assert_batch_norm_gradients({"x": dx, "gamma": dgamma, "beta": dbeta}, numeric, h, w, x,
                                axis, mean, invstd, gamma * r, beta + d * gamma,
                                values_per_channel(x, axis))


@pytest.mark.parametrize("shape, axis", FD_SHAPES, ids=["NC", "NCHW", "NHWC", "1d"])
def test_backward_matches_finite_differences_r_d_held(rng, shape, axis):
    # r and d are constants of the backward: the loss differentiated is the forward with r
    # and d frozen at their values, y = batch norm with gamma * r and beta + d * gamma.
    x = make_data(rng, shape, axis, "float64")
    C = _channels(shape, axis)
    gamma, beta = rng.uniform(0.5, 2.0, C), rng.standard_normal(C)
    w = rng.standard_normal(shape) + 0.5
    eps = 1e-3
    # Running statistics placed relative to the batch's, so that r lies in [0.5, 2] and |d|
    # below 1: inside the limits whatever the data (not clipped, so r and d move with x).
    bmean, bvar = bnfast.moments(x, axis=axis)
    sigma = np.sqrt(bvar + eps) * rng.uniform(0.5, 2.0, C)
    running_mean, running_var = bmean - sigma * rng.uniform(-1.0, 1.0, C), sigma**2 - eps
    _, mean, invstd, r, d = bnfast.batch_renorm_forward(
        x, running_mean, running_var, gamma, beta, r_max=5.0, d_max=5.0, axis=axis, eps=eps)
    assert np.all((r > 0.2) & (r < 5.0) & (np.abs(d) < 5.0))  # not clipped: r, d move

    def loss(x, gamma, beta):
        y, _, _ = bnfast.batch_norm_forward(x, gamma * r, beta + d * gamma, axis=axis, eps=eps)
        return float(np.sum(w * y))

    _check_gradients(loss, w, x, axis, gamma, beta, mean, invstd, r, d)


@pytest.mark.parametrize("shape, axis", FD_SHAPES, ids=["NC", "NCHW", "NHWC", "1d"])
def test_backward_is_the_true_gradient_where_r_and_d_are_clipped(rng, shape, axis):
    # With r and d both at their limits they are locally constant, so the true derivative of
    # batch_renorm_forward itself must equal the backward.
    x = make_data(rng, shape, axis, "float64", offset=0.5)
    C = _channels(shape, axis)
    gamma, beta = rng.uniform(0.5, 2.0, C), rng.standard_normal(C)
    w = rng.standard_normal(shape) + 0.5
    rm0, rv0 = np.full(C, 40.0), np.full(C, 400.0)  # sigma_B / sigma ~ 0.1, |d| ~ 2

    def forward(x, gamma, beta):
        return bnfast.batch_renorm_forward(x, rm0.copy(), rv0.copy(), gamma, beta, r_max=1.5,
                                           d_max=0.5, axis=axis, eps=1e-3)

    def loss(x, gamma, beta):
        return float(np.sum(w * forward(x, gamma, beta)[0]))

    _, mean, invstd, r, d = forward(x, gamma, beta)
    assert np.all(r == 1 / 1.5) and np.all(d == -0.5)
    _check_gradients(loss, w, x, axis, gamma, beta, mean, invstd, r, d)


# ---------------------------------------------------------------- threads

@pytest.mark.parametrize("shape, axis, dtype", [
    ((4096, 64), 1, "float32"), ((16, 8, 32, 32), 1, "float32"), ((8, 16, 16, 32), -1, "float64"),
    ((300_000,), 0, "float32")], ids=["NC", "NCHW", "NHWC-f64", "1d"])
def test_bit_identical_for_every_n_threads(rng, shape, axis, dtype):
    x = make_data(rng, shape, axis, dtype)
    dy = make_data(rng, shape, axis, dtype)
    C = _channels(shape, axis)
    gamma, beta = rng.uniform(0.5, 2.0, C), rng.standard_normal(C)
    rm0, rv0 = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)
    results = []
    for nt in (1, 2, 3):
        rm, rv = rm0.copy(), rv0.copy()
        fwd = bnfast.batch_renorm_forward(x, rm, rv, gamma, beta, r_max=1.5, d_max=0.5,
                                          axis=axis, n_threads=nt)
        bwd = bnfast.batch_norm_backward(dy, x, fwd[1], fwd[2], gamma, axis=axis,
                                         renorm=fwd[3:], n_threads=nt)
        results.append(list(fwd) + [rm, rv] + list(bwd))
    for other in results[1:]:
        for i, (a, b) in enumerate(zip(results[0], other)):
            assert_bits_equal(a, b, f"result {i}")


# ---------------------------------------------------------------- bad input

def _good(rng):
    x = make_data(rng, (6, 3, 2), 1, "float32")
    return dict(x=x, running_mean=rng.standard_normal(3), running_var=rng.uniform(0.5, 2, 3),
                gamma=np.ones(3), beta=np.zeros(3), r_max=3.0, d_max=5.0,
                out=np.full(x.shape, 7.0, np.float32))


BAD_FORWARD = [
    (dict(r_max=0.5), ValueError, "r_max: expected a finite real number >= 1"),
    (dict(r_max=float("inf")), ValueError, "r_max"),
    (dict(r_max=float("nan")), ValueError, "r_max"),
    (dict(r_max=True), ValueError, "r_max"),
    (dict(r_max="3"), ValueError, "r_max"),
    (dict(d_max=-0.1), ValueError, "d_max: expected a finite real number >= 0"),
    (dict(d_max=None), ValueError, "d_max"),
    (dict(running_mean=None), ValueError, "running_mean: .*required"),
    (dict(running_var=None), ValueError, "running_var: .*required"),
    (dict(running_var=np.ones(4)), ValueError, r"running_var: expected shape \(3,\)"),
    (dict(running_var=np.ones(3, np.int64)), ValueError, "running_var: .*dtype int64"),
    (dict(running_mean=[0.0, 0.0, 0.0]), ValueError, "running_mean: .*got list"),
    (dict(running_var=np.array([1.0, -1.0, 1.0])), ValueError, "running_var \\+ eps > 0"),
    (dict(gamma=np.ones(2)), ValueError, r"gamma: expected shape \(3,\)"),
    (dict(out=np.empty((6, 3, 2))), ValueError, "out: expected dtype float32"),
    (dict(out=np.empty((6, 3), np.float32)), ValueError, "out: expected shape"),
    (dict(eps=-1.0), ValueError, "eps"),
    (dict(momentum=1.5), ValueError, "momentum"),
    (dict(axis=3), np.exceptions.AxisError, "axis"),
    (dict(x=np.ones((1, 3), np.float32), out=None), ValueError,
     "Expected more than 1 value per channel when training"),
    (dict(x=np.ones((6, 3, 2), complex), out=None), TypeError, "x: expected real numbers"),
]


@pytest.mark.parametrize("change, exc, message", BAD_FORWARD,
                         ids=[str(i) for i in range(len(BAD_FORWARD))])
def test_bad_forward_input_changes_nothing(rng, change, exc, message):
    args = _good(rng)
    args.update(change)
    before = {k: v.copy() for k, v in args.items() if isinstance(v, np.ndarray)}
    kw = dict(args)
    x, rm, rv = kw.pop("x"), kw.pop("running_mean"), kw.pop("running_var")
    with pytest.raises(exc, match=message):
        bnfast.batch_renorm_forward(x, rm, rv, **kw)
    for k, v in before.items():
        assert_bits_equal(args[k], v, f"{k} unchanged")


def test_read_only_running_statistics_are_rejected(rng):
    args = _good(rng)
    rv = args["running_var"]
    rv.flags.writeable = False
    rm_before = args["running_mean"].copy()
    with pytest.raises(ValueError, match="running_var: expected a writeable array"):
        bnfast.batch_renorm_forward(args["x"], args["running_mean"], rv, r_max=2, d_max=1)
    assert_bits_equal(args["running_mean"], rm_before, "running_mean unchanged")


@pytest.mark.parametrize("renorm, message", [
    ((np.ones(3),), "renorm: expected a pair"),
    (np.ones(3), "renorm: expected a pair"),
    ((np.ones(3), None), "renorm: expected a pair"),
    ((np.ones(2), np.zeros(3)), r"renorm r: expected shape \(3,\)"),
    ((np.ones(3), np.zeros((3, 1))), r"renorm d: expected shape \(3,\)"),
    ((np.ones(3), np.array(["a", "b", "c"])), "renorm d: expected real numbers"),
])
def test_bad_backward_renorm_changes_nothing(rng, renorm, message):
    x = make_data(rng, (5, 3), 1, "float64")
    dy = make_data(rng, (5, 3), 1, "float64")
    out = np.full(x.shape, 7.0)
    before = (x.copy(), dy.copy())
    with pytest.raises(ValueError, match=message):
        bnfast.batch_norm_backward(dy, x, np.zeros(3), np.ones(3), renorm=renorm, out=out)
    assert_bits_equal(x, before[0], "x")
    assert_bits_equal(dy, before[1], "dy")
    assert np.all(out == 7.0)


def test_renorm_and_virtual_batch_size_together_are_rejected(rng):
    x = make_data(rng, (4, 3), 1, "float64")
    with pytest.raises(ValueError, match="virtual_batch_size and renorm"):
        bnfast.batch_norm_backward(x, x, np.zeros((2, 3)), np.ones((2, 3)),
                                   virtual_batch_size=2, renorm=(np.ones(3), np.zeros(3)))


# ---------------------------------------------------------------- the layer

def test_layer_train_eval_round_trip(rng):
    C = 4
    bn = bnfast.BatchNorm(C, renorm=True, r_max=2.0, d_max=1.0, dtype=np.float64)
    bn.weight[...] = rng.uniform(0.5, 2.0, C)
    bn.bias[...] = rng.standard_normal(C)
    rm, rv = np.zeros(C), np.ones(C)
    for step in range(3):
        x = make_data(rng, (8, C, 3, 3), 1, "float32")
        dy = make_data(rng, x.shape, 1, "float32")
        y = bn(x)
        dx = bn.backward(dy)
        # The layer is the functional API with its parameters and buffers.
        fy, mean, invstd, r, d = bnfast.batch_renorm_forward(
            x, rm, rv, bn.weight, bn.bias, r_max=2.0, d_max=1.0)
        fdx, fdg, fdb = bnfast.batch_norm_backward(dy, x, mean, invstd, bn.weight,
                                                   renorm=(r, d))
        assert_bits_equal(y, fy, "y")
        assert_bits_equal(dx, fdx, "dx")
        assert_bits_equal(bn.dgamma, fdg, "dgamma")
        assert_bits_equal(bn.dbeta, fdb, "dbeta")
        assert_bits_equal(bn.running_mean, rm, "running_mean")
        assert_bits_equal(bn.running_var, rv, "running_var")
        assert bn.num_batches_tracked == step + 1
    # r_max, d_max are plain attributes, read at every step.
    bn.r_max, bn.d_max = 1.0, 0.0
    x = make_data(rng, (8, C, 3, 3), 1, "float32")
    plain = bnfast.BatchNorm(C, dtype=np.float64)
    plain.load_state_dict(bn.state_dict())
    assert_bits_equal(bn(x), plain(x), "r_max=1, d_max=0 is plain batch norm")
    # Eval: plain batch norm with the running statistics, state_dict keys unchanged.
    bn.eval()
    x = make_data(rng, (5, C, 2, 2), 1, "float32")
    y = bn(x)
    assert_bits_equal(y, bnfast.batch_norm_inference(x, bn.running_mean, bn.running_var,
                                                     bn.weight, bn.bias), "eval y")
    assert sorted(bn.state_dict()) == ["bias", "num_batches_tracked", "running_mean",
                                       "running_var", "weight"]
    fresh = bnfast.BatchNorm(C, renorm=True, dtype=np.float64).eval()
    fresh.load_state_dict(bn.state_dict())
    assert_bits_equal(fresh(x), y, "reloaded eval y")
    bn.train()
    with pytest.raises(ValueError, match="r_max"):
        bn.r_max = 0.5
        bn(x)


@pytest.mark.parametrize("kwargs, message", [
    (dict(renorm=True, track_running_stats=False), "renorm: .*track_running_stats=True"),
    (dict(renorm=True, virtual_batch_size=2), "renorm and virtual_batch_size"),
    (dict(renorm=1), "renorm: expected True or False"),
    (dict(renorm=True, r_max=0.9), "r_max"),
    (dict(renorm=True, d_max=-1), "d_max"),
])
def test_layer_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bnfast.BatchNorm(3, **kwargs)


def test_layer_failed_forward_changes_nothing(rng):
    bn = bnfast.BatchNorm(3, renorm=True)
    bn(make_data(rng, (6, 3), 1, "float32"))
    state = {k: v.copy() for k, v in bn.state_dict().items()}
    bn.d_max = -1.0
    with pytest.raises(ValueError, match="d_max"):
        bn(make_data(rng, (6, 3), 1, "float32"))
    for k, v in bn.state_dict().items():
        assert_bits_equal(v, state[k], k)


@pytest.mark.parametrize("shape, axis", [((0, 1), 0), ((5, 0), 1)])
def test_no_channels(shape, axis):
    # Found by the fuzzer: no channels (one value each for (0, 1) on axis 0) is no error.
    y, mean, invstd, r, d = bnfast.batch_renorm_forward(np.ones(shape), np.zeros(0),
                                                        np.ones(0), r_max=2.0, d_max=1.0,
                                                        axis=axis)
    assert y.shape == shape and mean.shape == invstd.shape == r.shape == d.shape == (0,)
