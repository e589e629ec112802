"""The fused ReLU and residual add (docs/design.md §1 and §4): forward, inference, backward
and the layer, against the unfused sequence (bit for bit, as the docstrings define the
rounding), the float64 reference, finite differences, several thread counts and bad input.
Also the float32 loops on tile rows wider than 256 columns (issue 14)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bnfast
from bnfast import _training
from bnfast import reference as ref
from _helpers import (assert_bits_equal, backward_scales, elementwise_scale, make_float,
                      n_channels, output_rtol, stat_rtol, unit_roundoff, values_per_channel)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# (shape, axis): NCHW, NHWC (axis=-1), (N, C) with narrow and wide (> 256 columns) rows, 1-D,
# and a fused-plan NCHW (channels of 8 KiB runs: statistics and y one channel at a time).
LAYOUTS = [((6, 3, 5, 7), 1), ((4, 5, 6, 3), -1), ((40, 7), 1), ((33, 300), 1),
           ((50,), 0), ((2, 16, 2048), 1), ((3, 4, 5), 0)]
RESIDUAL_KINDS = ["same", "float64", "float32", "int", "strided", "fortran", "list"]


def _residual(rng, shape, kind, work):
    r = rng.standard_normal(shape) * 2
    if kind == "same":
        return r.astype(work)
    if kind in ("float64", "float32"):
        return r.astype(kind)
    if kind == "int":
        return np.round(r).astype(np.int32)
    if kind == "strided":
        big = np.repeat(r.astype(work), 2, axis=-1)
        return big[..., ::2]
    if kind == "fortran":
        return np.asfortranarray(r.astype(work))
    return r.tolist()


def _params(rng, C, with_params):
    if not with_params:
        return None, None
    return rng.uniform(0.5, 2.0, C) * rng.choice([-1.0, 1.0], C), rng.uniform(-1.0, 1.0, C)


@SETTINGS
@given(layout=st.sampled_from(LAYOUTS), dtype=st.sampled_from(["float32", "float64"]),
       kind=st.sampled_from(RESIDUAL_KINDS), act=st.sampled_from([None, "relu"]),
       with_residual=st.booleans(), with_params=st.booleans(),
       n_threads=st.sampled_from([None, 1, 2]), seed=st.integers(0, 2**32 - 1))
def test_forward_is_the_unfused_sequence(layout, dtype, kind, act, with_residual, with_params,
                                         n_threads, seed):
    """y = relu(bn(x) + residual) has the bits of bn(x), then += residual (cast to x's dtype),
    then np.maximum(y, 0): training and inference; and stays within the reference's bound."""
    rng = np.random.default_rng(seed)
    shape, axis = layout
    C = n_channels(shape, axis)
    x = make_float(rng, shape, axis).astype(dtype)
    gamma, beta = _params(rng, C, with_params)
    r = _residual(rng, shape, kind, dtype) if with_residual else None
    r_work = None if r is None else np.asarray(r).astype(dtype)

    y, mean, invstd = bnfast.batch_norm_forward(x, gamma, beta, axis=axis, activation=act,
                                                residual=r, n_threads=n_threads)
    y0, mean0, invstd0 = bnfast.batch_norm_forward(x, gamma, beta, axis=axis)
    assert_bits_equal(mean, mean0, "mean")
    assert_bits_equal(invstd, invstd0, "invstd")
    want = y0.copy()
    if r_work is not None:
        want += r_work
    if act:
        np.maximum(want, 0, out=want)
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y, want)  # equal values; a zero's sign may differ

    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)
    yi = bnfast.batch_norm_inference(x, rm, rv, gamma, beta, axis=axis, activation=act,
                                     residual=r, n_threads=n_threads)
    wanti = bnfast.batch_norm_inference(x, rm, rv, gamma, beta, axis=axis)
    if r_work is not None:
        wanti += r_work
    if act:
        np.maximum(wanti, 0, out=wanti)
    np.testing.assert_array_equal(yi, wanti)

    # Against the float64 reference: bn(x) is within the plain forward's bound
    # (output_rtol(dtype, n) of elementwise_scale, tests/_helpers.py); adding the residual
    # rounds once more in the working dtype and once to the output dtype (u of |y* + r| each),
    # and the ReLU is 1-Lipschitz, so it adds nothing.
    ry, rmean, rinvstd, _, _ = ref.batch_norm_forward(x, gamma, beta, axis=axis)
    want64 = ref.relu_residual(ry, r_work, act)
    n = values_per_channel(x, axis)
    work = np.float32 if np.dtype(dtype) == np.float16 else dtype
    atol = (output_rtol(dtype, n) * elementwise_scale(x, axis, rmean, rinvstd, gamma, beta)
            + (unit_roundoff(work) + unit_roundoff(dtype)) * float(np.abs(want64).max()))
    np.testing.assert_allclose(y.astype(np.float64), want64, rtol=0, atol=atol)


@SETTINGS
@given(layout=st.sampled_from(LAYOUTS), dtype=st.sampled_from(["float32", "float64"]),
       act=st.sampled_from([None, "relu"]), with_params=st.booleans(),
       dres=st.booleans(), n_threads=st.sampled_from([None, 1, 2]),
       seed=st.integers(0, 2**32 - 1))
def test_backward_is_the_plain_backward_of_the_masked_gradient(layout, dtype, act,
                                                               with_params, dres, n_threads,
                                                               seed):
    """With activation="relu" the backward is the plain backward of g = where(y > 0, dy, 0),
    bit for bit (the masked sums are twins of the plain ones), and dresidual is g; and both
    stay within the reference's bounds."""
    rng = np.random.default_rng(seed)
    shape, axis = layout
    C = n_channels(shape, axis)
    x = make_float(rng, shape, axis).astype(dtype)
    gamma, beta = _params(rng, C, with_params)
    r = rng.standard_normal(shape).astype(dtype)
    y, mean, invstd = bnfast.batch_norm_forward(x, gamma, beta, axis=axis, activation=act,
                                                residual=r)
    dy = rng.standard_normal(shape).astype(dtype)
    res = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis, activation=act,
                                     y=y if act else None, return_dresidual=dres,
                                     n_threads=n_threads)
    assert len(res) == (4 if dres else 3)
    g = np.where(y > 0, dy, dy.dtype.type(0)) if act else dy
    want = bnfast.batch_norm_backward(g, x, mean, invstd, gamma, axis=axis)
    for got, exp, name in zip(res, want, ("dx", "dgamma", "dbeta")):
        np.testing.assert_array_equal(got, exp, err_msg=name)
    if dres:
        assert res[3].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(res[3], g)
        assert not np.shares_memory(res[3], dy)

    rdx, rdg, rdb, rg = ref.batch_norm_backward_relu(dy, x, mean, invstd,
                                                     y if act else np.ones_like(y), gamma, axis)
    dx_scale, dg_scale, db_scale = backward_scales(g, x, mean, invstd, gamma, axis)
    # The plain backward's bounds (tests/_helpers.py: output_rtol for dx, stat_rtol for the
    # sums, each relative to the size of the terms that cancel); mean and invstd are given.
    n = values_per_channel(x, axis)
    rtol = output_rtol(dtype, n)
    np.testing.assert_allclose(res[0].astype(np.float64), rdx, rtol=0, atol=rtol * dx_scale)
    srtol = stat_rtol(n)
    np.testing.assert_allclose(res[1], rdg, rtol=0, atol=srtol * dg_scale)
    np.testing.assert_allclose(res[2], rdb, rtol=0, atol=srtol * db_scale)


@pytest.mark.parametrize("shape, axis", [((6, 3, 4, 5), 1), ((5, 4, 3), -1), ((12, 3), 1),
                                         ((15,), 0)])
def test_finite_differences(rng, shape, axis):
    """dx, dgamma, dbeta and dresidual of L = sum(w * relu(bn(x) + r)) against central
    differences in float64, with no output within reach of the ReLU's kink."""
    C = n_channels(shape, axis)
    x = make_float(rng, shape, axis)
    gamma, beta = rng.uniform(0.5, 2.0, C), rng.uniform(-0.5, 0.5, C)
    w = rng.standard_normal(shape)
    y0 = ref.batch_norm_forward(x, gamma, beta, axis=axis)[0]
    r = rng.standard_normal(shape)
    v = y0 + r
    # Keep every pre-activation at least 0.1 from 0: a step h = 1e-6 moves each one by at
    # most about h * |gamma| * invstd * (1 + |xhat| + ...) < 1e-4, so none crosses the kink.
    r += np.where(np.abs(v) < 0.1, 0.2 * np.sign(v + 1e-300), 0.0)

    def loss(x_, gamma_, beta_, r_):
        y_, _, _ = bnfast.batch_norm_forward(x_, gamma_, beta_, axis=axis, eps=1e-5,
                                             activation="relu", residual=r_)
        return float(np.sum(w * y_))

    y, mean, invstd = bnfast.batch_norm_forward(x, gamma, beta, axis=axis, activation="relu",
                                                residual=r)
    assert np.all(np.abs(y0 + r) >= 0.1 - 1e-12)
    dx, dgamma, dbeta, dres = bnfast.batch_norm_backward(
        w, x, mean, invstd, gamma, axis=axis, activation="relu", y=y, return_dresidual=True)
    h = 1e-6
    # Central differences: truncation h^2 |L'''| / 6 (about 1e-12 here) plus the rounding of
    # L (|L| <= a few hundred, each float64 evaluation off by ~ 2^-52 * sum|w y| ~ 1e-13),
    # divided by 2h: about 1e-7 at most; 1e-6 leaves a factor of ten.
    tol = 1e-6

    def numeric(f, a, idx):
        up, down = a.copy(), a.copy()
        up[idx] += h
        down[idx] -= h
        return (f(up) - f(down)) / (2 * h)

    for _ in range(6):
        idx = tuple(int(rng.integers(0, n)) for n in shape)
        assert abs(numeric(lambda a: loss(a, gamma, beta, r), x, idx) - dx[idx]) < tol
        assert abs(numeric(lambda a: loss(x, gamma, beta, a), r, idx) - dres[idx]) < tol
    for c in range(C):
        assert abs(numeric(lambda a: loss(x, a, beta, r), gamma, c) - dgamma[c]) < tol
        assert abs(numeric(lambda a: loss(x, gamma, a, r), beta, c) - dbeta[c]) < tol


# Shapes on both planner paths and wide float32 rows (> 256 columns, issue 14).
THREAD_SHAPES = [((4, 32, 64, 64), 1, np.float32), ((64, 5, 5, 40), -1, np.float64),
                 ((3000, 300), 1, np.float32), ((700, 1024), 1, np.float32),
                 ((2, 16, 2048), 1, np.float64), ((120000,), 0, np.float32)]


@pytest.mark.parametrize("shape, axis, dtype", THREAD_SHAPES)
def test_bit_identical_for_every_n_threads(rng, shape, axis, dtype):
    C = n_channels(shape, axis)
    x = make_float(rng, shape, axis).astype(dtype)
    r = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma = rng.uniform(0.5, 2.0, C)
    runs = []
    for nt in (1, 2, 3):
        y, mean, invstd = bnfast.batch_norm_forward(x, gamma, axis=axis, activation="relu",
                                                    residual=r, n_threads=nt)
        yi = bnfast.batch_norm_inference(x, mean, 1 / invstd**2, gamma, axis=axis,
                                         activation="relu", residual=r, n_threads=nt)
        back = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis,
                                          activation="relu", y=y, return_dresidual=True,
                                          n_threads=nt)
        runs.append((y, mean, invstd, yi) + back)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert_bits_equal(a, b)


def test_in_place_on_the_residual_and_on_x(rng):
    x = make_float(rng, (8, 3, 6, 6), 1).astype(np.float32)
    r = rng.standard_normal(x.shape).astype(np.float32)
    want = bnfast.batch_norm_forward(x, activation="relu", residual=r)[0]
    buf = r.copy()
    y, _, _ = bnfast.batch_norm_forward(x, out=buf, residual=buf, activation="relu")
    assert y is buf
    np.testing.assert_array_equal(buf, want)
    # x as its own residual, in place
    want = bnfast.batch_norm_forward(x, residual=x.copy(), activation="relu")[0]
    xx = x.copy()
    assert bnfast.batch_norm_forward(xx, out=xx, residual=xx, activation="relu")[0] is xx
    np.testing.assert_array_equal(xx, want)
    # a residual that has to be converted, in place on out (the validated path)
    buf = r.astype(np.float32)
    y = bnfast.batch_norm_forward(np.asfortranarray(x), out=buf, residual=buf,
                                  activation="relu")[0]
    np.testing.assert_array_equal(y, bnfast.batch_norm_forward(x, residual=r,
                                                               activation="relu")[0])
    # the backward with dx written over y
    _, mean, invstd = bnfast.batch_norm_forward(x)
    y = bnfast.batch_norm_forward(x, residual=r, activation="relu")[0]
    dy = rng.standard_normal(x.shape).astype(np.float32)
    want = bnfast.batch_norm_backward(dy, x, mean, invstd, activation="relu", y=y.copy())
    got = bnfast.batch_norm_backward(dy, x, mean, invstd, activation="relu", y=y, out=y)
    assert got[0] is y
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_nan_and_zero_outputs_mask_the_gradient():
    """y = 0 (clipped) and y = NaN pass no gradient; NaN stays NaN through the ReLU."""
    x = np.array([[1.0, np.nan], [2.0, 1.0], [3.0, 2.0]])
    y, mean, invstd = bnfast.batch_norm_forward(x, activation="relu")
    assert np.isnan(y[:, 1]).all() and y[0, 0] == 0.0 and y[2, 0] > 0
    dy = np.ones_like(x)
    _, _, dbeta, dres = bnfast.batch_norm_backward(dy, x, mean, invstd, activation="relu",
                                                   y=y, return_dresidual=True)
    assert dres.tolist() == [[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]
    assert dbeta.tolist() == [1.0, 0.0]


def test_bad_input_raises_and_changes_nothing(rng):
    x = rng.standard_normal((6, 3)).astype(np.float32)
    r = rng.standard_normal((6, 3)).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    out = np.full_like(x, 7.0)
    saved = [a.copy() for a in (x, r, rm, rv, out)]
    forward_cases = [
        (dict(activation="tanh"), ValueError, "activation: expected None or 'relu'"),
        (dict(activation="ReLU"), ValueError, "activation"),
        (dict(activation=1), ValueError, "activation"),
        (dict(residual=r[:, :2]), ValueError, r"residual: expected the shape of x"),
        (dict(residual=r[None]), ValueError, "no broadcasting"),
        (dict(residual=r.astype(np.complex64)), TypeError, "residual: expected real"),
        (dict(residual="abc"), TypeError, "residual"),
    ]
    for kwargs, exc, match in forward_cases:
        with pytest.raises(exc, match=match):
            bnfast.batch_norm_forward(x, running_mean=rm, running_var=rv, out=out, **kwargs)
        with pytest.raises(exc, match=match):
            bnfast.batch_norm_inference(x, rm, rv, out=out, **kwargs)
    _, mean, invstd = bnfast.batch_norm_forward(x)
    y = bnfast.batch_norm_forward(x, activation="relu")[0]
    backward_cases = [
        (dict(activation="relu"), "y: the forward output is required"),
        (dict(y=y), "y: only taken with activation='relu'"),
        (dict(activation="relu", y=y[:3]), "y: expected the shape of x"),
        (dict(activation="sigmoid", y=y), "activation"),
        (dict(return_dresidual="yes"), "return_dresidual: expected True or False"),
    ]
    for kwargs, match in backward_cases:
        with pytest.raises(ValueError, match=match):
            bnfast.batch_norm_backward(x, x, mean, invstd, out=out, **kwargs)
    for a, b in zip(saved, (x, r, rm, rv, out)):
        assert_bits_equal(a, b)


def test_layer(rng):
    x = make_float(rng, (8, 4, 5, 5), 1).astype(np.float32)
    r = rng.standard_normal(x.shape).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    bn = bnfast.BatchNorm(4, activation="relu")
    assert "activation='relu'" in repr(bn)
    y = bn(x, r)
    want, mean, invstd = bnfast.batch_norm_forward(x, bn.weight, bn.bias, activation="relu",
                                                   residual=r)
    np.testing.assert_array_equal(y, want)
    dx = bn.backward(dy)
    wdx, wdg, wdb, wdr = bnfast.batch_norm_backward(
        dy, x, mean, invstd, bn.weight, activation="relu", y=want, return_dresidual=True)
    np.testing.assert_array_equal(dx, wdx)
    np.testing.assert_array_equal(bn.dgamma, wdg.astype(np.float32))
    np.testing.assert_array_equal(bn.dbeta, wdb.astype(np.float32))
    np.testing.assert_array_equal(bn.dresidual, wdr)
    # no residual: dresidual is None
    bn(x)
    bn.backward(dy)
    assert bn.dresidual is None
    # eval mode: y = relu(inference + r), dx = weight * invstd * dy * (y > 0)
    bn.eval()
    ye = bn(x, r)
    rv = bn.running_var.astype(np.float64)
    np.testing.assert_array_equal(ye, bnfast.batch_norm_inference(
        x, bn.running_mean, bn.running_var, bn.weight, bn.bias, activation="relu", residual=r))
    dxe = bn.backward(dy)
    g = np.where(ye > 0, dy, 0).astype(np.float64)
    want_dx = g * (bn.weight / np.sqrt(rv + bn.eps))[None, :, None, None]
    # float32 dx of the inference transform: 5 half-ulps of |dx*| + |shift| (shift 0 here,
    # bn_elementwise_impl.h "Error of the float32 forward"), within output_rtol's 8 + 1 roundings.
    np.testing.assert_allclose(dxe, want_dx, rtol=0,
                               atol=output_rtol(np.float32) * np.abs(want_dx).max())
    np.testing.assert_array_equal(bn.dresidual, g.astype(np.float32))
    with pytest.raises(ValueError, match="activation"):
        bnfast.BatchNorm(4, activation="gelu")


@pytest.mark.parametrize("shape, axis, dtype", [((2, 16, 2048), 1, np.float32),
                                                ((300, 40), 1, np.float64),
                                                ((6, 5, 7, 7), 1, np.float32),
                                                ((9, 6, 6, 600), -1, np.float32)])
def test_backward_halves_with_relu(rng, shape, axis, dtype):
    """backward_sums and backward_input with the ReLU mask give batch_norm_backward's bits
    (both planner paths, runs and tiles), and the residual's gradient."""
    x = make_float(rng, shape, axis).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = n_channels(shape, axis)
    gamma = rng.uniform(0.5, 2.0, C)
    y, mean, invstd = bnfast.batch_norm_forward(x, gamma, axis=axis, activation="relu",
                                                residual=rng.standard_normal(shape))
    dx, dgamma, dbeta, dres = bnfast.batch_norm_backward(
        dy, x, mean, invstd, gamma, axis=axis, activation="relu", y=y, return_dresidual=True)
    sums = _training.backward_sums(dy, x, mean, invstd, axis=axis, activation="relu", y=y)
    assert_bits_equal(sums[0], dgamma, "dgamma")
    assert_bits_equal(sums[1], dbeta, "dbeta")
    m = float(x.size // C)
    got, got_dres = _training.backward_input(dy, x, mean, invstd, gamma, *sums, m, axis=axis,
                                             activation="relu", y=y, return_dresidual=True)
    assert_bits_equal(got, dx, "dx")
    assert_bits_equal(got_dres, dres, "dresidual")
    with pytest.raises(ValueError, match="y: the forward output is required"):
        _training.backward_sums(dy, x, mean, invstd, axis=axis, activation="relu")
    with pytest.raises(ValueError, match="y: only taken"):
        _training.backward_input(dy, x, mean, invstd, gamma, *sums, m, axis=axis, y=y)


# -- float32 tile rows wider than 256 columns (issue 14) -----------------------------------

def test_wide_rows_take_the_float32_loop(rng):
    """Inference on a (N, 1024) float32 array gives each column block the bits of the same
    channels in a (N, 256) array: the float32 loop for every width, coefficients in range."""
    N, C = 64, 1024
    x = (rng.standard_normal((N, C)) * 3 + rng.uniform(-1e4, 1e4, C)).astype(np.float32)
    rm = x.astype(np.float64).mean(axis=0)
    rv = x.astype(np.float64).var(axis=0)
    gamma, beta = rng.uniform(0.5, 2, C), rng.uniform(-1, 1, C)
    y = bnfast.batch_norm_inference(x, rm, rv, gamma, beta)
    for c0 in range(0, C, 256):
        s = slice(c0, c0 + 256)
        part = bnfast.batch_norm_inference(np.ascontiguousarray(x[:, s]), rm[s], rv[s],
                                           gamma[s], beta[s])
        assert_bits_equal(y[:, s], part, f"columns {c0}..")


def test_wide_rows_out_of_range_coefficient_falls_back(rng):
    """One coefficient beyond float32's range (scale 2^110) sends the pass to the float64 loop,
    which gets it right, and the other channels stay accurate."""
    N, C = 32, 600
    x = rng.standard_normal((N, C)).astype(np.float32)
    gamma = rng.uniform(0.5, 2.0, C)
    rv = rng.uniform(0.5, 2.0, C)
    rv[7] = 2.0 ** -230  # invstd 2^115: beyond the float32 loops' 2^100
    y = bnfast.batch_norm_inference(x, np.zeros(C), rv, gamma, eps=0.0)
    want = ref.batch_norm_inference(x, np.zeros(C), rv, gamma, eps=0.0)
    assert np.isfinite(y).all()  # |y| of channel 7 is about 2^115 < FLT_MAX
    # The float64 loop rounds once: within half an ulp, 2^-24 of |y*| (the float32 loop's
    # bound would be five times that).
    np.testing.assert_allclose(y, want, rtol=2.0 ** -24)


@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_wide_rows_large_offset_accuracy(rng, offset):
    """test_accuracy's bound (y within 1e-5 where |y| < 6, offset float32 data) on rows of
    1024 channels, forward, inference and backward."""
    x = (offset + rng.standard_normal((2048, 1024))).astype(np.float32)
    y, mean, invstd = bnfast.batch_norm_forward(x)
    ry, rmean, rinvstd, _, _ = ref.batch_norm_forward(x)
    np.testing.assert_allclose(y, ry, rtol=0, atol=1e-5)
    yi = bnfast.batch_norm_inference(x, rmean, 1 / rinvstd**2 - 1e-5)
    np.testing.assert_allclose(yi, ry, rtol=0, atol=1e-5)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx, _, _ = bnfast.batch_norm_backward(dy, x, mean, invstd)
    rdx, _, _ = ref.batch_norm_backward(dy, x, mean, invstd)
    dx_scale = backward_scales(dy, x, mean, invstd, None, 1)[0]
    rtol = output_rtol(np.float32, x.shape[0])  # the plain backward's bound (_helpers.py)
    np.testing.assert_allclose(dx, rdx, rtol=0, atol=rtol * dx_scale)
