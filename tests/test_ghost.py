"""Ghost batch norm: virtual_batch_size= on batch_norm_forward / batch_norm_backward and the
layer, against the float64 reference, finite differences, thread counts and bad input."""

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


@st.composite
def cases(draw):
    k = draw(st.integers(1, 6))
    G = draw(st.integers(1, 5))
    N = k * G
    C = draw(st.integers(1, 5))
    layout = draw(st.sampled_from(["NC", "NCHW", "NHWC", "NCL", "whole", "1d"]))
    if layout in ("NC", "whole", "1d"):
        k = max(k, 2)  # one value per channel per group otherwise
        N = k * G
    if layout == "NC":
        shape, axis = (N, C), draw(st.sampled_from([1, -1]))
    elif layout == "NCHW":
        shape, axis = (N, C, draw(st.integers(1, 4)), draw(st.integers(2, 4))), 1
    elif layout == "NHWC":
        shape, axis = (N, draw(st.integers(2, 4)), draw(st.integers(1, 4)), C), -1
    elif layout == "NCL":
        shape, axis = (N, C, draw(st.integers(2, 6))), 1
    elif layout == "whole":
        shape, axis = (N, C), None
    else:
        shape, axis = (N,), draw(st.sampled_from([0, -1]))
    return dict(
        shape=shape, axis=axis, k=k, kind=draw(st.sampled_from(KINDS)),
        layout=draw(st.sampled_from(LAYOUTS)), seed=draw(st.integers(0, 2 ** 32 - 1)),
        gamma=draw(st.booleans()), beta=draw(st.booleans()),
        running=draw(st.sampled_from([None, "float64", "float32"])),
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.5])),
        momentum=draw(st.sampled_from([0.0, 0.1, 1.0])),
        out=draw(st.sampled_from([None, "fresh", "inplace"])),
        dy_kind=draw(st.sampled_from(["same", "float64"])),
    )


def _channels(shape, axis):
    return 1 if len(shape) == 1 or axis is None else shape[axis]


def _ref_args(x, axis):
    """The reference's spelling of the layout (it has no axis=None: one channel in the
    middle)."""
    if axis is None:
        return np.asarray(x).reshape(x.shape[0], 1, -1), 1
    return x, axis


def _setup(seed, case):
    rng = np.random.default_rng([seed, case["seed"]])
    shape, axis = case["shape"], case["axis"]
    C = _channels(shape, axis)
    x = relayout(make_data(rng, shape, axis, case["kind"]), case["layout"])
    gamma = rng.uniform(0.5, 2.0, C) * rng.choice([-1.0, 1.0], C) if case["gamma"] else None
    beta = rng.uniform(-2.0, 2.0, C) if case["beta"] else None
    rm = rv = None
    if case["running"]:
        rm = rng.uniform(-4.0, 4.0, C).astype(case["running"])
        rv = rng.uniform(0.1, 12.0, C).astype(case["running"])
    dy_kind = case["kind"] if case["dy_kind"] == "same" else "float64"
    dy = relayout(make_data(rng, shape, axis, dy_kind), case["layout"])
    return x, gamma, beta, rm, rv, dy


@SETTINGS
@given(cases())
def test_forward_matches_reference(seed, case):
    x, gamma, beta, rm, rv, _ = _setup(seed, case)
    axis, k, eps, mom = case["axis"], case["k"], case["eps"], case["momentum"]
    work, odt = work_and_out(case["kind"])
    xr, axr = _ref_args(x, axis)
    ry, rmean, rinvstd, rrm, rrv = ref.ghost_batch_norm_forward(
        xr, gamma, beta, k, axis=axr, eps=eps, running_mean=rm, running_var=rv, momentum=mom)
    ry = ry.reshape(x.shape)
    x_before = x.copy()
    rm_before = None if rm is None else rm.copy()
    out = None
    if case["out"] == "fresh":
        out = np.full(x.shape, np.nan, odt)
    elif case["out"] == "inplace" and x.dtype == odt:
        out = x
    y, mean, invstd = bnfast.batch_norm_forward(x, gamma, beta, axis=axis, eps=eps,
                                                running_mean=rm, running_var=rv, momentum=mom,
                                                out=out, virtual_batch_size=k)
    if out is not None:
        assert y is out
    if out is not x:
        assert_bits_equal(x, x_before, "x unchanged")
    G = x.shape[0] // k
    C = _channels(x.shape, axis)
    assert y.dtype == odt and y.shape == x.shape
    assert mean.shape == (G, C) and invstd.shape == (G, C)

    d_means, d_vars = [], []
    for i in range(G):
        s = slice(i * k, (i + 1) * k)
        # Each group's statistics are the plain forward's on that group, bit for bit.
        _, mean_p, invstd_p = bnfast.batch_norm_forward(x_before[s], axis=axis, eps=eps)
        assert_bits_equal(mean[i], mean_p, f"mean of group {i}")
        assert_bits_equal(invstd[i], invstd_p, f"invstd of group {i}")
        x2 = channels_last_2d(x_before[s], axis)
        d_mean, d_var = stat_errors(x2)
        d_means.append(d_mean)
        d_vars.append(d_var * x2.shape[0] / (x2.shape[0] - 1))
        var = 1.0 / rinvstd[i] ** 2 - eps
        d_rel = d_var / (2.0 * (var + eps)) + 4 * U64  # relative error of sqrt(var + eps)
        assert_within(mean[i], rmean[i], d_mean, f"mean of group {i}")
        assert_within(invstd[i], rinvstd[i], rinvstd[i] * d_rel, f"invstd of group {i}")
        g = np.ones(C) if gamma is None else gamma
        scale = rinvstd[i] * g
        shift = np.zeros(C) if beta is None else beta
        bound = normalize_bound(x2, rmean[i], scale, shift, channels_last_2d(ry[s], axis), work,
                                odt, d_mean, np.abs(scale) * (d_rel + 4 * U64), 0.0)
        assert_within(channels_last_2d(y[s], axis), channels_last_2d(ry[s], axis), bound,
                      f"y of group {i}")

    if rm is None:
        return
    # Running statistics: the mean over groups of values within d_means / d_vars, float64
    # arithmetic, stored in the buffer's dtype (half an ulp of it).
    ub = U[np.dtype(case["running"])]
    assert_within(rm, rrm, mom * np.max(d_means, axis=0) + (ub + 8 * U64) * (
        np.abs(rrm) + np.abs(rm_before)), "running_mean")
    assert_within(rv, rrv, mom * np.max(d_vars, axis=0) + (ub + 8 * U64) * np.abs(rrv),
                  "running_var")


def test_one_group_is_plain_batch_norm(rng):
    x = make_data(rng, (12, 5, 3, 3), 1, "float32")
    gamma, beta = rng.uniform(0.5, 2.0, 5), rng.standard_normal(5)
    rm, rv = rng.standard_normal(5).astype(np.float32), rng.uniform(0.5, 2, 5).astype(np.float32)
    rm2, rv2 = rm.copy(), rv.copy()
    y, mean, invstd = bnfast.batch_norm_forward(x, gamma, beta, running_mean=rm,
                                                running_var=rv, virtual_batch_size=12)
    yp, mp, ip = bnfast.batch_norm_forward(x, gamma, beta, running_mean=rm2, running_var=rv2)
    for name, a, b in [("y", y, yp), ("mean", mean[0], mp), ("invstd", invstd[0], ip),
                       ("running_mean", rm, rm2), ("running_var", rv, rv2)]:
        assert_bits_equal(a, b, name)
    dy = make_data(rng, x.shape, 1, "float32")
    got = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma, virtual_batch_size=12)
    want = bnfast.batch_norm_backward(dy, x, mp, ip, gamma)
    for name, a, b in zip(("dx", "dgamma", "dbeta"), got, want):
        assert_bits_equal(a, b, name)


def test_running_statistics_average_the_groups(rng):
    # momentum 1: the running statistics become the mean of the group means and the mean of
    # the groups' unbiased variances (k * H * W = 2 * 3 = 6 values per channel and group).
    x = make_data(rng, (8, 2, 3), 1, "float64")
    rm, rv = np.zeros(2), np.ones(2)
    bnfast.batch_norm_forward(x, running_mean=rm, running_var=rv, momentum=1.0,
                              virtual_batch_size=2)
    groups = x.reshape(4, 2, 2, 3).transpose(0, 2, 1, 3).reshape(4, 2, 6)
    # Values of O(1) to O(10): float64 sums of 6 terms, averaged over 4 groups.
    np.testing.assert_allclose(rm, groups.mean(axis=2).mean(axis=0), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(rv, groups.var(axis=2, ddof=1).mean(axis=0), rtol=1e-13)


@SETTINGS
@given(cases())
def test_backward_matches_reference(seed, case):
    x, gamma, beta, _, _, dy = _setup(seed, case)
    axis, k = case["axis"], case["k"]
    _, mean, invstd = bnfast.batch_norm_forward(x, gamma, beta, axis=axis, eps=case["eps"],
                                                virtual_batch_size=k)
    work, odt = work_and_out(np.result_type(x.dtype, dy.dtype).name)
    x_before, dy_before = x.copy(), dy.copy()
    out = None
    if case["out"] == "fresh":
        out = np.full(x.shape, np.nan, odt)
    elif case["out"] == "inplace" and dy.dtype == odt:
        out = dy
    dx, dgamma, dbeta = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis,
                                                   out=out, virtual_batch_size=k)
    if out is not None:
        assert dx is out
    assert_bits_equal(x, x_before, "x unchanged")
    if out is not dy:
        assert_bits_equal(dy, dy_before, "dy unchanged")
    xr, axr = _ref_args(x_before, axis)
    dyr, _ = _ref_args(dy_before, axis)
    rdx, rdgamma, rdbeta = ref.ghost_batch_norm_backward(dyr, xr, mean, invstd, gamma, k,
                                                         axis=axr)
    rdx = rdx.reshape(x.shape)
    assert dx.dtype == odt and dgamma.shape == dbeta.shape == mean.shape[1:]
    g = np.ones(mean.shape[1]) if gamma is None else gamma
    d_s0 = d_s1 = 0.0
    for i in range(x.shape[0] // k):
        s = slice(i * k, (i + 1) * k)
        dx_bound, e0, e1 = backward_bounds(
            channels_last_2d(dy_before[s], axis), channels_last_2d(x_before[s], axis), mean[i],
            invstd[i], g, channels_last_2d(rdx[s], axis), work, odt)
        assert_within(channels_last_2d(dx[s], axis), channels_last_2d(rdx[s], axis), dx_bound,
                      f"dx of group {i}")
        d_s0, d_s1 = d_s0 + e0, d_s1 + e1
    # Summed over the groups in float64: the groups' errors plus one rounding per addition.
    G = x.shape[0] // k
    assert_within(dbeta, rdbeta, d_s0 + G * U64 * np.abs(rdbeta), "dbeta")
    assert_within(dgamma, rdgamma, d_s1 + G * U64 * np.abs(rdgamma), "dgamma")


# ---------------------------------------------------------------- finite differences

@pytest.mark.parametrize("shape, axis, k", [((6, 3), 1, 3), ((4, 2, 2, 2), 1, 2),
                                            ((4, 2, 3, 2), -1, 2), ((8,), 0, 4)],
                         ids=["NC", "NCHW", "NHWC", "1d"])
def test_backward_matches_finite_differences(rng, shape, axis, k):
    x = make_data(rng, shape, axis, "float64")
    C = _channels(shape, axis)
    gamma, beta = rng.uniform(0.5, 2.0, C), rng.standard_normal(C)
    w = rng.standard_normal(shape) + 0.5
    eps = 1e-3

    def loss(x, gamma, beta):
        y, _, _ = bnfast.batch_norm_forward(x, gamma, beta, axis=axis, eps=eps,
                                            virtual_batch_size=k)
        return float(np.sum(w * y))

    _, mean, invstd = bnfast.batch_norm_forward(x, gamma, beta, axis=axis, eps=eps,
                                                virtual_batch_size=k)
    dx, dgamma, dbeta = bnfast.batch_norm_backward(w, x, mean, invstd, gamma, axis=axis,
                                                   virtual_batch_size=k)
    # Each group is plain batch norm of its own values: the bounds of assert_batch_norm_gradients
    # with the groups' (G, C) statistics and n values per channel per group.
    h = 1e-6
    numeric = central_differences(loss, {"x": x, "gamma": gamma, "beta": beta}, h)
    assert_batch_norm_gradients({"x": dx, "gamma": dgamma, "beta": dbeta}, numeric, h, w, x,
                                axis, mean, invstd, gamma, beta,
                                values_per_channel(x, axis) * k // x.shape[0])


# ---------------------------------------------------------------- threads

@pytest.mark.parametrize("shape, axis, k, dtype", [
    ((4096, 64), 1, 512, "float32"), ((16, 8, 32, 32), 1, 4, "float32"),
    ((8, 16, 16, 32), -1, 2, "float64")], ids=["NC", "NCHW", "NHWC-f64"])
def test_bit_identical_for_every_n_threads(rng, shape, axis, k, dtype):
    x = make_data(rng, shape, axis, dtype)
    dy = make_data(rng, shape, axis, dtype)
    C = _channels(shape, axis)
    gamma, beta = rng.uniform(0.5, 2.0, C), rng.standard_normal(C)
    rm0, rv0 = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)
    results = []
    for nt in (1, 2, 3):
        rm, rv = rm0.copy(), rv0.copy()
        fwd = bnfast.batch_norm_forward(x, gamma, beta, axis=axis, running_mean=rm,
                                        running_var=rv, virtual_batch_size=k, n_threads=nt)
        bwd = bnfast.batch_norm_backward(dy, x, fwd[1], fwd[2], gamma, axis=axis,
                                         virtual_batch_size=k, n_threads=nt)
        results.append(list(fwd) + [rm, rv] + list(bwd))
    for other in results[1:]:
        for i, (a, b) in enumerate(zip(results[0], other)):
            assert_bits_equal(a, b, f"result {i}")


# ---------------------------------------------------------------- bad input

BAD_FORWARD = [
    (dict(x_shape=(0, 3)), ValueError, "Expected a non-empty batch when training"),
    (dict(virtual_batch_size=4), ValueError,
     r"virtual_batch_size: 4 does not divide the batch size 6"),
    (dict(virtual_batch_size=0), ValueError, "virtual_batch_size: expected an integer >= 1"),
    (dict(virtual_batch_size=-2), ValueError, "virtual_batch_size: expected an integer >= 1"),
    (dict(virtual_batch_size=2.0), TypeError, "virtual_batch_size: expected an integer"),
    (dict(virtual_batch_size=True), TypeError, "virtual_batch_size: expected an integer"),
    (dict(axis=0), ValueError, "channel axis must not be 0"),
    (dict(axis=-3), ValueError, "channel axis must not be 0"),
    (dict(x_shape=(6, 3)), ValueError,
     "Expected more than 1 value per channel in each virtual batch of 1"),
    (dict(running_var=np.ones(2)), ValueError, r"running_var: expected shape \(3,\)"),
    (dict(gamma=np.ones(4)), ValueError, r"gamma: expected shape \(3,\)"),
    (dict(out=np.empty((6, 3, 2))), ValueError, "out: expected dtype float32"),
    (dict(momentum=-0.5), ValueError, "momentum"),
]


@pytest.mark.parametrize("change, exc, message", BAD_FORWARD,
                         ids=[str(i) for i in range(len(BAD_FORWARD))])
def test_bad_forward_input_changes_nothing(rng, change, exc, message):
    change = dict(change)
    x = make_data(rng, change.pop("x_shape", (6, 3, 2)), 1, "float32")
    args = dict(running_mean=rng.standard_normal(3), running_var=rng.uniform(0.5, 2, 3),
                out=np.full(x.shape, 7.0, np.float32), virtual_batch_size=1)
    if x.ndim == 2:
        args.pop("out")
    args.update(change)
    before = {k: v.copy() for k, v in args.items() if isinstance(v, np.ndarray)}
    x_before = x.copy()
    with pytest.raises(exc, match=message):
        bnfast.batch_norm_forward(x, **args)
    assert_bits_equal(x, x_before, "x unchanged")
    for k, v in before.items():
        assert_bits_equal(args[k], v, f"{k} unchanged")


BAD_BACKWARD = [
    (dict(mean=np.zeros(3)), r"mean: expected shape \(3, 3\) \(one row per virtual batch\)"),
    (dict(invstd=np.ones((2, 3))), r"invstd: expected shape \(3, 3\)"),
    (dict(mean=None), r"mean: expected an array of shape \(3, 3\)"),
    (dict(invstd=np.full((3, 3), "a")), "invstd: expected real numbers"),
    (dict(virtual_batch_size=4), "4 does not divide the batch size 6"),
    (dict(gamma=np.ones(2)), r"gamma: expected shape \(3,\)"),
    (dict(out=np.empty((6, 3), np.float32)), "out: expected dtype float64"),
    (dict(dy=np.ones((6, 2))), r"dy: expected the shape of x \(6, 3\)"),
]


@pytest.mark.parametrize("change, message", BAD_BACKWARD,
                         ids=[str(i) for i in range(len(BAD_BACKWARD))])
def test_bad_backward_input_changes_nothing(rng, change, message):
    x = make_data(rng, (6, 3), 1, "float64")
    args = dict(dy=make_data(rng, (6, 3), 1, "float64"), mean=np.zeros((3, 3)),
                invstd=np.ones((3, 3)), gamma=None, out=np.full((6, 3), 7.0),
                virtual_batch_size=2)
    args.update(change)
    before = {k: v.copy() for k, v in args.items() if isinstance(v, np.ndarray)}
    x_before = x.copy()
    kw = dict(args)
    dy, mean, invstd = kw.pop("dy"), kw.pop("mean"), kw.pop("invstd")
    with pytest.raises(ValueError, match=message):
        bnfast.batch_norm_backward(dy, x, mean, invstd, **kw)
    assert_bits_equal(x, x_before, "x unchanged")
    for k, v in before.items():
        assert_bits_equal(args[k], v, f"{k} unchanged")


# ---------------------------------------------------------------- the layer

def test_layer_train_eval_round_trip(rng):
    C, k = 3, 4
    bn = bnfast.BatchNorm(C, axis=-1, virtual_batch_size=k, dtype=np.float64)
    bn.weight[...] = rng.uniform(0.5, 2.0, C)
    bn.bias[...] = rng.standard_normal(C)
    rm, rv = np.zeros(C), np.ones(C)
    for step in range(3):
        x = make_data(rng, (12, 5, C), -1, "float32")
        dy = make_data(rng, x.shape, -1, "float32")
        y = bn(x)
        dx = bn.backward(dy)
        fy, mean, invstd = bnfast.batch_norm_forward(x, bn.weight, bn.bias, axis=-1,
                                                     running_mean=rm, running_var=rv,
                                                     virtual_batch_size=k)
        fdx, fdg, fdb = bnfast.batch_norm_backward(dy, x, mean, invstd, bn.weight, axis=-1,
                                                   virtual_batch_size=k)
        assert mean.shape == (3, C)
        for name, a, b in [("y", y, fy), ("dx", dx, fdx), ("dgamma", bn.dgamma, fdg),
                           ("dbeta", bn.dbeta, fdb), ("running_mean", bn.running_mean, rm),
                           ("running_var", bn.running_var, rv)]:
            assert_bits_equal(a, b, name)
        assert bn.num_batches_tracked == step + 1
    # A training batch that k does not divide: a clear error, nothing changed.
    state = {key: v.copy() for key, v in bn.state_dict().items()}
    with pytest.raises(ValueError, match="4 does not divide the batch size 10"):
        bn(make_data(rng, (10, 5, C), -1, "float32"))
    for key, v in bn.state_dict().items():
        assert_bits_equal(v, state[key], key)
    # Eval: plain batch norm with the running statistics, any batch size.
    bn.eval()
    x = make_data(rng, (7, 2, C), -1, "float32")
    y = bn(x)
    assert_bits_equal(y, bnfast.batch_norm_inference(x, bn.running_mean, bn.running_var,
                                                     bn.weight, bn.bias, axis=-1), "eval y")
    dy = make_data(rng, x.shape, -1, "float32")
    plain = bnfast.BatchNorm(C, axis=-1, dtype=np.float64).eval()
    plain.load_state_dict(bn.state_dict())
    assert_bits_equal(plain(x), y, "eval y, plain layer")
    assert_bits_equal(plain.backward(dy), bn.backward(dy), "eval dx")
    assert sorted(bn.state_dict()) == ["bias", "num_batches_tracked", "running_mean",
                                       "running_var", "weight"]


def test_layer_without_running_stats_evaluates_with_whole_batch_statistics(rng):
    bn = bnfast.BatchNorm(3, virtual_batch_size=2, track_running_stats=False).eval()
    x = make_data(rng, (5, 3), 1, "float32")  # 2 does not divide 5: not grouped in eval
    assert_bits_equal(bn(x), bnfast.batch_norm_forward(x)[0], "eval y")


@pytest.mark.parametrize("kwargs, exc, message", [
    (dict(virtual_batch_size=0), ValueError, "virtual_batch_size: expected an integer >= 1"),
    (dict(virtual_batch_size=1.5), TypeError, "virtual_batch_size: expected an integer"),
])
def test_layer_bad_options(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        bnfast.BatchNorm(3, **kwargs)
