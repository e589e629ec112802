"""Data, layouts and rounding-error bounds shared by test_renorm.py and test_ghost.py.

The bounds are per element and derived from the arithmetic (u = unit roundoff: 2^-53 for
float64, 2^-24 for float32, 2^-11 for float16):

* Statistics are float64 sums over the m values of a channel (blocked, pairwise-like): the
  mean is within ``K * u64 * max|x|`` and the variance within ``K * u64 * max|x|^2`` of the
  exact values, ``K = 8 * (log2(m) + 2)`` (a generous multiple of the depth of the sums).
* ``y = (x - mean) * scale + shift`` is evaluated with a handful of roundings in the working
  dtype (the coefficients, the subtraction, the product and the sum), then rounded once to the
  output dtype: at most ``4 * u_w * (|x - mean| * |scale| + |mean * scale| + |shift|)`` plus
  half an ulp of |y|, plus the statistics' errors propagated through scale and shift.
"""

import math

import numpy as np

U = {np.dtype(np.float64): 2.0 ** -53, np.dtype(np.float32): 2.0 ** -24,
     np.dtype(np.float16): 2.0 ** -11}
U64 = 2.0 ** -53

# Input kinds: dtype names (integers compute in float64, float16 in float32).
KINDS = ["float64", "float32", "float16", "int64"]
# Memory layouts the same values may come in.
LAYOUTS = ["C", "F", "strided", "reversed"]


def work_and_out(kind):
    """(working dtype, output dtype) of the functional API's policy."""
    if kind == "float16":
        return np.dtype(np.float32), np.dtype(np.float16)
    if kind == "float32":
        return np.dtype(np.float32), np.dtype(np.float32)
    return np.dtype(np.float64), np.dtype(np.float64)


def make_data(rng, shape, axis, kind, offset=3.0):
    """Random data with per-channel offsets and spreads, in ``kind`` (never all zeros)."""
    ndim = len(shape)
    C = 1 if ndim == 1 or axis is None else shape[axis % ndim]
    bshape = [1] * ndim
    if ndim > 1 and axis is not None:
        bshape[axis % ndim] = C
    loc = (rng.uniform(-offset, offset, C)).reshape(bshape)
    spread = rng.uniform(0.5, 3.0, C).reshape(bshape)
    x = rng.standard_normal(shape) * spread + loc
    if kind == "int64":
        return np.round(x * 4).astype(np.int64)
    return x.astype(kind)


def relayout(a, layout):
    """The values of ``a`` in another memory layout (a view of a fresh buffer)."""
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if layout == "reversed":
        return np.flip(np.flip(a).copy())
    return np.ascontiguousarray(a)


def stat_errors(x2):
    """Bounds on the difference between bnfast's and the reference's float64 mean and
    variance, per channel, of an (m, C) array (each side within K * u64 of the exact value)."""
    m = x2.shape[0]
    K = 8.0 * (math.log2(max(m, 1)) + 2.0)
    big = np.abs(x2).max(axis=0)
    return 2 * K * U64 * big, 2 * K * U64 * big ** 2


def normalize_bound(x2, mean, scale, shift, y_ref2, work, odt, d_mean, d_scale, d_shift):
    """Per-element bound on |y - y_ref| for y = (x - mean) * scale + shift, (m, C) arrays.

    d_mean, d_scale, d_shift: bounds on the errors of the float64 coefficients (C,).
    """
    uw = U[np.dtype(work)]
    dev = np.abs(x2 - mean)
    arith = 4.0 * uw * (dev * np.abs(scale) + np.abs(mean * scale) + np.abs(shift))
    coeff = np.abs(scale) * d_mean + dev * d_scale + d_shift
    return arith + coeff + _rounding(y_ref2, odt)


def _rounding(v, odt):
    """Rounding ``v`` to ``odt`` (half an ulp, subnormals included), and the reference's own
    few float64 roundings."""
    odt = np.dtype(odt)
    return U[odt] * (np.abs(v) + np.finfo(odt).smallest_normal) + 8 * U64 * np.abs(v)


def assert_within(got, want, bound, what):
    """|got - want| <= bound elementwise (NaN only where want is NaN)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = np.abs(got - want)
    bad = ~(err <= bound)
    if bad.any():
        i = np.flatnonzero(bad)[0]
        raise AssertionError(f"{what}: {bad.sum()} of {bad.size} elements beyond the rounding "
                             f"bound; first at flat index {i}: got {got.flat[i]!r}, want "
                             f"{want.flat[i]!r}, error {err.flat[i]:.3g} > bound "
                             f"{np.broadcast_to(bound, err.shape).flat[i]:.3g}")


def backward_bounds(dy2, x2, mean, invstd, g_eff, dx_ref2, work, odt):
    """Bounds for dx (m, C) and for the float64 sums sum(dy), sum(dy * xhat) (C,).

    dx = g_eff * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)): the sums are float64
    (K * u64 of the sum of |terms|); xhat and the per-element combination are evaluated in the
    working dtype (a few u_w of each term); the result is rounded once to the output dtype.
    """
    m = x2.shape[0]
    K = 8.0 * (math.log2(max(m, 1)) + 2.0)
    uw = U[np.dtype(work)]
    xhat = (x2 - mean) * invstd
    d_xhat = 4.0 * uw * (np.abs(x2) + np.abs(mean)) * invstd
    s0_abs = np.abs(dy2).sum(axis=0)
    s1_abs = (np.abs(dy2) * (np.abs(xhat) + d_xhat)).sum(axis=0)
    d_s0 = K * U64 * s0_abs
    d_s1 = K * U64 * s1_abs + (np.abs(dy2) * d_xhat).sum(axis=0)
    k = np.abs(g_eff * invstd)
    mean_s1 = np.abs((dy2 * xhat).sum(axis=0)) / m
    terms = np.abs(dy2) + np.abs(dy2.sum(axis=0)) / m + np.abs(xhat) * mean_s1
    dx_bound = k * (4.0 * uw * terms + d_s0 / m + np.abs(xhat) * d_s1 / m + d_xhat * mean_s1)
    dx_bound = dx_bound + _rounding(dx_ref2, odt)
    return dx_bound, d_s0, d_s1
