"""Hypothesis against the float64 reference over everything a caller can vary at once.

Shapes, channel axes, dtypes (floats, integers, bool, byte-swapped, lists), memory layouts
(Fortran, reversed, strided, transposed, zero-stride broadcast, read-only), where NaN and
infinity fall, whether gamma, beta and the running statistics are given (and in which dtype and
layout), eps, momentum and out= (none, fresh, in place). The contract for non-finite input
(docs/design.md §5): a channel holding NaN or infinity gets non-finite statistics (var NaN) and an
all-NaN y; the other channels are exactly as without it. Tolerances: tests/_helpers.py.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

import bnfast
from bnfast import reference as ref
from _helpers import (
    assert_backward_close, assert_forward_close, channels_last_2d, gamma_n, output_rtol,
    stat_rtol, unit_roundoff, working_dtype)

# The float64 reference warns about the NaN it computes; bnfast itself does not.
pytestmark = [pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")]

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

X_KINDS = ["float64", "float32", "float16", ">f8", ">f4", "int64", "int32", "uint8", "bool",
           "list"]
LAYOUTS = ["C", "F", "reversed", "strided", "transposed", "broadcast", "read-only"]
NONFINITE = ["none", "nan", "inf", "-inf", "mixed"]


@st.composite
def cases(draw):
    ndim = draw(st.integers(1, 4))
    side = st.integers(1, 5) if ndim > 2 else (st.integers(1, 5) | st.integers(6, 60)
                                               | st.integers(61, 400))
    shape = tuple(draw(st.lists(side, min_size=ndim, max_size=ndim)))
    if ndim == 1:
        axis = draw(st.sampled_from([None, 0, -1, 1]))
    else:
        axis = draw(st.integers(-ndim, ndim - 1) | st.none())
    kind = draw(st.sampled_from(X_KINDS))
    size = int(np.prod(shape))
    return dict(
        shape=shape, axis=axis, kind=kind,
        layout=draw(st.sampled_from(LAYOUTS)),
        seed=draw(st.integers(0, 2**32 - 1)),
        offset=draw(st.floats(-10, 10)), spread=draw(st.floats(0.1, 10)),
        nonfinite=draw(st.sampled_from(NONFINITE)) if kind not in ("int64", "int32", "uint8",
                                                                   "bool") else "none",
        positions=draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=3)),
        gamma=draw(st.sampled_from([None, "float64", "float32", "int"])),
        beta=draw(st.sampled_from([None, "float64", "float32"])),
        running=draw(st.sampled_from([None, "float64", "float32", "float16", "strided"])),
        momentum=draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
        eps=draw(st.sampled_from([0.0, 1e-5, 1e-3, 0.5])),
        out=draw(st.sampled_from([None, "fresh", "inplace"])),
    )


def _layout(a, layout):
    """An array equal to ``a`` (a C-contiguous ndarray) in another memory layout."""
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "reversed":
        return np.flip(np.flip(a).copy())  # negative strides on every axis
    if layout == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if layout == "transposed":
        return np.ascontiguousarray(a.T).T
    if layout == "broadcast" and a.ndim > 1:
        return np.broadcast_to(a[:1], a.shape)  # zero stride along axis 0, read-only
    if layout == "read-only":
        a = a.copy()
        a.flags.writeable = False
    return a


def make_x(case):
    """The input of a case (any kind and layout) and its float64 values."""
    rng = np.random.default_rng(case["seed"])
    values = rng.standard_normal(case["shape"]) * case["spread"] + case["offset"]
    kind = case["kind"]
    if kind == "bool":
        a = values > case["offset"]
    elif kind in ("int64", "int32"):
        a = np.round(values * 3).astype(kind)
    elif kind == "uint8":
        a = np.clip(np.round(np.abs(values) * 10), 0, 255).astype(np.uint8)
    else:
        flat = values.reshape(-1)
        nonfinite = case["nonfinite"]
        for i, p in enumerate(case["positions"]):
            if nonfinite == "mixed":
                flat[p] = [np.nan, np.inf, -np.inf][i % 3]
            elif nonfinite != "none":
                flat[p] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[nonfinite]
        a = values.astype("float64" if kind == "list" else kind)
    a = _layout(a, case["layout"])
    return (a.tolist() if kind == "list" else a), np.array(a, dtype=np.float64)


def _channels(case):
    shape, axis = case["shape"], case["axis"]
    return 1 if len(shape) == 1 or axis is None else shape[axis]


def _per_channel(rng, C, kind, low, high):
    if kind is None:
        return None
    v = rng.uniform(low, high, C)
    if kind == "int":
        return np.round(v * 3).astype(np.int64) | 1
    return v.astype(kind)


def _running(rng, C, kind):
    """(running_mean, running_var) buffers of a kind: dtype, or a strided float64 view."""
    if kind is None:
        return None, None
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)
    if kind == "strided":
        rm2, rv2 = np.zeros(2 * C), np.zeros(2 * C)
        rm2[::2], rv2[::2] = rm, rv
        return rm2[::2], rv2[::2]
    return rm.astype(kind), rv.astype(kind)


def _ref(fn, case, x64, *args, **kwargs):
    """``fn`` of bnfast.reference on float64 x; axis None (the whole array one channel, which
    the reference spells as a 1-D input) included: y, when returned first, keeps x's shape."""
    if case["axis"] is not None:
        return fn(x64, *args, axis=case["axis"], **kwargs)
    result = fn(x64.reshape(-1), *args, axis=0, **kwargs)
    if fn is ref.moments:
        return result
    if fn is ref.batch_norm_inference:
        return result.reshape(x64.shape)
    return (result[0].reshape(x64.shape),) + tuple(result[1:])


def _channel_view(a, case):
    """float64 (m, C) view of an x-shaped array (axis None: one channel)."""
    a = np.asarray(a, dtype=np.float64)
    if case["axis"] is None:
        return a.reshape(-1, 1)
    return channels_last_2d(a, case["axis"])


def _bad_channels(x64, case):
    return ~np.isfinite(_channel_view(x64, case)).all(axis=0)


def assert_matches(got, want, rtol, scale, name):
    """Non-finite exactly where the reference is; finite values within rtol (and rtol * scale
    absolute)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), finite, err_msg=f"{name}: non-finite where "
                                                                     f"the reference is finite")
    np.testing.assert_allclose(got[finite], want[finite], rtol=rtol, atol=rtol * scale,
                               err_msg=name)


def _scale(a):
    a = np.abs(np.asarray(a, dtype=np.float64))
    a = a[np.isfinite(a)]
    return float(a.max()) if a.size else 0.0


def _stat_scales(x64, case, good):
    x2 = _channel_view(x64, case)[:, good]
    if x2.size == 0:
        return 0.0, 0.0
    dev = x2 - x2.mean(axis=0)
    biggest = float(np.abs(x2).max())
    # + gamma_{n+1} max|x|^2: a constant channel's variance is 0 only up to the mean's error
    return biggest, float((dev ** 2).max()) + gamma_n(x2.shape[0] + 1) * biggest ** 2


def _work(x):
    return np.dtype(working_dtype(x))


def _n(x64, case):
    """Values per channel."""
    return x64.size // max(_channels(case), 1)


def _stat_rtol(x64, case):
    return stat_rtol(_n(x64, case))


def _out_rtol(x, n=0):
    return output_rtol(np.dtype(working_dtype(x)).newbyteorder("="), n)


def _out_arg(case, x):
    odt = _work(x).newbyteorder("=")
    if case["out"] == "fresh":
        return np.full(np.shape(x), 7, dtype=odt)
    if (case["out"] == "inplace" and isinstance(x, np.ndarray) and x.dtype == odt
            and x.flags.writeable):
        return x
    return None


@SETTINGS
@given(cases())
def test_moments_fuzz(case):
    x, x64 = make_x(case)
    x_before = np.array(x, copy=True)
    bad = _bad_channels(x64, case)
    mean, var = bnfast.moments(x, axis=case["axis"])
    rmean, rvar = _ref(ref.moments, case, x64)
    mscale, vscale = _stat_scales(x64, case, ~bad)
    rtol = _stat_rtol(x64, case)
    assert_matches(mean, rmean, rtol, mscale, "mean")
    assert np.isnan(var[bad]).all(), "a channel with NaN or infinity must get var NaN"
    assert_matches(var[~bad], rvar[~bad], rtol, vscale, "var")
    np.testing.assert_array_equal(np.asarray(x), x_before)


# Found by the fuzzer: constant channels (a broadcast x), where y is 0 up to the rounding of
# the mean amplified by invstd = 1/sqrt(eps).
CONSTANT_CHANNELS = {'shape': (6, 6), 'axis': 1, 'kind': 'float64', 'layout': 'broadcast',
                     'seed': 0, 'offset': 0.0, 'spread': 1.0, 'nonfinite': 'none',
                     'positions': [0], 'gamma': None, 'beta': None, 'running': None,
                     'momentum': 0.0, 'eps': 1e-05, 'out': None}


@SETTINGS
@given(cases())
@example(CONSTANT_CHANNELS)
def test_forward_fuzz(case):
    x, x64 = make_x(case)
    C = _channels(case)
    assume(x64.size // max(C, 1) >= 2)  # training needs 2 values per channel (test_errors)
    rng = np.random.default_rng(case["seed"] + 1)
    gamma = _per_channel(rng, C, case["gamma"], 0.5, 2.0)
    beta = _per_channel(rng, C, case["beta"], -2.0, 2.0)
    rm, rv = _running(rng, C, case["running"])
    rm0 = None if rm is None else np.array(rm, dtype=np.float64)
    rv0 = None if rv is None else np.array(rv, dtype=np.float64)
    out = _out_arg(case, x)
    bad = _bad_channels(x64, case)
    ry, rmean, rinvstd, rrm, rrv = _ref(
        ref.batch_norm_forward, case, x64, gamma, beta, eps=case["eps"], running_mean=rm0,
        running_var=rv0, momentum=case["momentum"])
    x_before = None if out is x else np.array(x, copy=True)

    event(f"out={'x' if out is x else case['out'] if out is not None else None}")
    event(f"bad channels: {bool(bad.any())}")
    y, mean, invstd = bnfast.batch_norm_forward(
        x, gamma, beta, axis=case["axis"], eps=case["eps"], running_mean=rm, running_var=rv,
        momentum=case["momentum"], out=out)

    if out is not None:
        assert y is out
    if x_before is not None:
        np.testing.assert_array_equal(np.asarray(x), x_before)  # not modified
    assert y.dtype == _work(x).newbyteorder("=") and y.shape == np.shape(x)
    n = _n(x64, case)
    rtol = stat_rtol(n)
    mscale, vscale = _stat_scales(x64, case, ~bad)
    assert_matches(mean, rmean, rtol, mscale, "mean")
    assert np.isnan(invstd[bad]).all(), "a channel with NaN or infinity must get invstd NaN"
    assume(np.isfinite(rinvstd[~bad]).all())  # eps == 0 on a constant channel
    # invstd = (var + eps)^-1/2: half var's relative error, var's atol (vscale) included
    rvar = 1 / rinvstd[~bad] ** 2
    spread = _scale((rvar + vscale) / rvar) if rvar.size else 1.0
    assert_matches(invstd, rinvstd, 0.5 * rtol * spread + 6 * unit_roundoff(), 0.0, "invstd")
    y2, ry2 = _channel_view(y, case), _channel_view(ry, case)
    assert np.isnan(y2[:, bad]).all(), "y of a channel with NaN or infinity must be NaN"
    out_rtol = _out_rtol(x, n)
    # y's conditioning: the terms of y = (x - mean) * invstd * gamma + beta are at most
    # invstd |gamma| (max|x| + |mean|) + |beta| (elementwise_scale); an error of the mean is
    # relative to max|x|, amplified by invstd |gamma|: large when a channel is near constant.
    gain = _scale(rinvstd[~bad] * (1.0 if gamma is None else np.abs(gamma)[~bad]))
    assert_matches(y2[:, ~bad], ry2[:, ~bad], out_rtol,
                   max(_scale(ry2[:, ~bad]), 2 * mscale * gain + _scale(beta)), "y")
    if rm is not None:
        # the batch statistics' error, 4 float64 roundings of the update, one to the buffer
        run_rtol = rtol + 4 * unit_roundoff() + unit_roundoff(rm.dtype)
        assert_matches(np.asarray(rm, np.float64), rrm, run_rtol, mscale + _scale(rm0),
                       "running_mean")
        assert_matches(np.asarray(rv, np.float64), rrv, run_rtol, 2 * vscale, "running_var")


@SETTINGS
@given(cases())
def test_inference_fuzz(case):
    x, x64 = make_x(case)
    C = _channels(case)
    rng = np.random.default_rng(case["seed"] + 2)
    gamma = _per_channel(rng, C, case["gamma"], 0.5, 2.0)
    beta = _per_channel(rng, C, case["beta"], -2.0, 2.0)
    rm, rv = rng.uniform(-10, 10, C), rng.uniform(0.01, 100, C)
    if case["running"] in ("float32", "float16"):
        rm, rv = rm.astype(case["running"]), rv.astype(case["running"])
    out = _out_arg(case, x)
    ry = _ref(ref.batch_norm_inference, case, x64, rm, rv, gamma, beta, eps=case["eps"])
    x_before = None if out is x else np.array(x, copy=True)
    y = bnfast.batch_norm_inference(x, rm, rv, gamma, beta, axis=case["axis"], eps=case["eps"],
                                    out=out)
    if out is not None:
        assert y is out
    if x_before is not None:
        np.testing.assert_array_equal(np.asarray(x), x_before)
    assert y.dtype == _work(x).newbyteorder("=")
    # Elementwise: NaN stays NaN, infinity gives infinity of the same sign where the
    # reference has it.
    # given statistics: only the elementwise pass rounds, relative to its terms' size
    gain = np.abs(np.asarray(gamma if gamma is not None else 1.0, np.float64)) \
        / np.sqrt(np.asarray(rv, np.float64) + case["eps"])
    scale = _scale(gain) * (_scale(x64) + _scale(rm)) + _scale(beta)
    assert_matches(y, ry, _out_rtol(x), max(_scale(ry), scale), "y")


@SETTINGS
@given(cases(), st.booleans())
def test_backward_fuzz(case, dy_like_x):
    x, x64 = make_x(case)
    C = _channels(case)
    assume(x64.size // max(C, 1) >= 2)
    rng = np.random.default_rng(case["seed"] + 3)
    gamma = _per_channel(rng, C, case["gamma"], 0.5, 2.0)
    dy64 = rng.standard_normal(np.shape(x)) + 0.3
    dy = dy64.astype(_work(x)) if dy_like_x else dy64
    dy = _layout(dy, case["layout"]) if isinstance(dy, np.ndarray) else dy
    dy64 = np.array(dy, dtype=np.float64)
    _, mean, invstd, _, _ = _ref(ref.batch_norm_forward, case, x64,
                                 eps=max(case["eps"], 1e-5))
    bad = _bad_channels(x64, case)
    if case["axis"] is None:
        rdx, rdgamma, rdbeta = ref.batch_norm_backward(dy64.reshape(-1), x64.reshape(-1), mean,
                                                       invstd, gamma, axis=0)
        rdx = rdx.reshape(x64.shape)
    else:
        rdx, rdgamma, rdbeta = ref.batch_norm_backward(dy64, x64, mean, invstd, gamma,
                                                       axis=case["axis"])
    x_before = np.array(x, copy=True)
    dx, dgamma, dbeta = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma, axis=case["axis"])
    np.testing.assert_array_equal(np.asarray(x), x_before)
    work = np.result_type(np.asarray(x).dtype, np.asarray(dy).dtype)
    assert dx.dtype == np.dtype(working_dtype(np.empty(0, work))).newbyteorder("=")
    n = _n(x64, case)
    rtol = stat_rtol(n)
    out_rtol = output_rtol(dx.dtype, n)
    good = ~bad
    dx2, rdx2 = _channel_view(dx, case), _channel_view(rdx, case)
    assert not np.isfinite(dx2[:, bad]).any()
    # The terms of dx cancel: their size, not dx's, sets the error.
    x2 = _channel_view(x64, case)[:, good]
    dy2 = _channel_view(dy64, case)[:, good]
    if x2.size:
        g = np.ones(C)[good] if gamma is None else np.asarray(gamma, np.float64)[good]
        xhat = (x2 - mean[good]) * invstd[good]
        dx_scale = float(np.max(np.abs(g * invstd[good])) * np.abs(dy2).max()
                         * (2.0 + np.abs(xhat).max() ** 2))
        assert_matches(dx2[:, good], rdx2[:, good], out_rtol, dx_scale, "dx")
        assert_matches(dgamma[good], rdgamma[good], rtol,
                       float(np.abs(dy2 * xhat).sum(axis=0).max()), "dgamma")
    assert_matches(dbeta, rdbeta, rtol, float(np.abs(dy64).sum()), "dbeta")
    assert np.isnan(dgamma[bad]).all()


@SETTINGS
@given(cases(), st.booleans())
def test_forward_then_backward_fuzz(case, dy_like_x):
    """The backward of bnfast's own forward statistics (test_backward_fuzz takes the
    reference's), on finite input: each step within the bounds of tests/_helpers.py."""
    assume(case["nonfinite"] == "none")
    x, x64 = make_x(case)
    C, axis = _channels(case), case["axis"]
    assume(_n(x64, case) >= 2)
    rng = np.random.default_rng(case["seed"] + 4)
    gamma = _per_channel(rng, C, case["gamma"], -2.0, 2.0)
    beta = _per_channel(rng, C, case["beta"], -2.0, 2.0)
    eps, work = case["eps"], _work(x).newbyteorder("=")
    got = bnfast.batch_norm_forward(x, gamma, beta, axis=axis, eps=eps)
    want = _ref(ref.batch_norm_forward, case, x64, gamma, beta, eps=eps)
    assert_forward_close(got, want, x64, axis, gamma, beta, eps, dtype=work)
    _, mean, invstd = got
    assume(np.isfinite(invstd).all())  # eps == 0 on a constant channel
    dy64 = rng.standard_normal(np.shape(x)) + 0.3
    dy = dy64.astype(work) if dy_like_x else dy64
    dy64 = dy.astype(np.float64)
    got = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis)
    if axis is None:
        rdx, rdgamma, rdbeta = ref.batch_norm_backward(dy64.reshape(-1), x64.reshape(-1), mean,
                                                       invstd, gamma, axis=0)
        want = rdx.reshape(x64.shape), rdgamma, rdbeta
    else:
        want = ref.batch_norm_backward(dy64, x64, mean, invstd, gamma, axis=axis)
    dtype = working_dtype(np.empty(0, np.result_type(work, dy.dtype)))
    assert_backward_close(got, want, dy64, x64, mean, invstd, gamma, axis, dtype=dtype)
