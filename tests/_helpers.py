"""Data makers, layouts and tolerance-aware comparisons shared by the tests."""

import os
import subprocess
import sys

import numpy as np

# (id, shape, axis): every layout of docs/design.md §2 plus axis 0, middle axes and
# shapes that reach both kernel shapes (inner == 1 and inner > 1) with few
# and many channels.
LAYOUTS = [
    ("1d-axis0", (37,), 0),
    ("1d-axis-1", (37,), -1),
    ("1d-axis1", (37,), 1),
    ("NC", (33, 5), 1),
    ("NC-axis-1", (33, 5), -1),
    ("NCHW", (4, 3, 5, 6), 1),
    ("NHWC", (4, 5, 6, 3), -1),
    ("NCL", (4, 3, 17), 1),
    ("NCDHW", (2, 3, 4, 5, 3), 1),
    ("axis0-2d", (5, 7), 0),
    ("axis0-3d", (3, 4, 5), 0),
    ("middle-axis2", (3, 4, 5, 6), 2),
    ("middle-axis-2", (3, 4, 5, 6), -2),
    ("NC-many-channels", (64, 300), 1),
    ("NC-few-channels-long", (3000, 3), 1),
    ("NCHW-many-channels", (2, 70, 9, 9), 1),
    ("NCHW-one-channel", (3, 1, 20, 20), 1),
]
LAYOUT_IDS = [layout[0] for layout in LAYOUTS]
LAYOUT_PARAMS = [layout[1:] for layout in LAYOUTS]

# Input kinds: NumPy dtypes plus "list" (nested Python lists of floats).
INPUT_KINDS = ["float64", "float32", "float16", "int64", "int32", "uint8", "bool", "list"]

# ------------------------------------------------------------------ tolerances
# Every tolerance below is a worst-case rounding-error bound (Higham, "Accuracy and Stability of
# Numerical Algorithms", 2nd ed., 2002: chapters 3 and 4), doubled where two computations of the
# same quantity (bnfast and the float64 reference), each within the bound of the exact value,
# are compared. Worst-case bounds grow like n u; observed errors grow like sqrt(n) u, so the
# bounds cannot fail by chance, and they stay orders of magnitude below the error of a real bug
# (float32 rounding of a float64 result ~1e-7, ddof off by one ~1/n, a wrong eps ~1e-5).


def is_bfloat16(dtype):
    """ml_dtypes' bfloat16 (recognized by name, as bnfast does: no ml_dtypes import here)."""
    dtype = np.dtype(dtype)
    return dtype.kind == "V" and dtype.itemsize == 2 and dtype.name == "bfloat16"


def unit_roundoff(dtype=np.float64):
    """u = eps / 2: the largest relative error of one rounding to nearest in dtype."""
    if is_bfloat16(dtype):
        return 2.0 ** -8  # 8 significant bits
    return float(np.finfo(dtype).eps) / 2


def gamma_n(n, dtype=np.float64):
    """gamma_n = n u / (1 - n u): relative error bound of n chained roundings (Higham, Lemma
    3.1)."""
    nu = n * unit_roundoff(dtype)
    assert nu < 0.5, f"gamma_{n}: n u = {nu} too large for a useful bound"
    return nu / (1.0 - nu)


def sum_tol(n, magnitude, dtype=np.float64):
    """Largest |difference| of two sums of the same n terms in any orders (sum |terms| =
    magnitude): each is within gamma_{n-1} * magnitude of the exact sum (Higham, eq. 4.4)."""
    return 2.0 * gamma_n(max(n - 1, 0), dtype) * magnitude


def stat_rtol(n):
    """rtol of a float64 mean / variance / backward sum over n values per channel vs the float64
    reference (atol = rtol * the scale of stat_scales / backward_scales): each side within
    5 gamma_{n+3} of the exact value (a sum of n terms of <= 3 roundings each; the kernels'
    shifted sums keep q <= 2 M2, which costs the factor 5 for M2 = q - s^2 / n)."""
    return 2.0 * 5.0 * gamma_n(n + 3)


def output_rtol(dtype, n=0):
    """rtol of y / dx of dtype vs the float64 reference, relative to a scale that bounds every
    term of the elementwise pass (elementwise_scale, backward_scales): the statistics' error
    stat_rtol(n) (n = values per channel; 0 when the statistics are given), 8 roundings of the
    pass in its arithmetic dtype (float32 for float16), and the final rounding to dtype."""
    dtype = np.dtype(dtype)
    work = np.float32 if dtype == np.float16 or is_bfloat16(dtype) else dtype
    return (stat_rtol(n) if n else 0.0) + 8.0 * unit_roundoff(work) + unit_roundoff(dtype)


def torch_rtol(dtype, n=0):
    """rtol of bnfast vs PyTorch's CPU batch norm in dtype (neither is exact): bnfast's
    output_rtol(dtype, n), plus PyTorch's side taken at its worst: statistics accumulated in
    dtype (5 gamma_{n+3} of dtype, as stat_rtol), 8 roundings of its elementwise pass and
    the final one."""
    dtype = np.dtype(dtype)
    theirs = (5.0 * gamma_n(n + 3, dtype) if n else 0.0) + 9.0 * unit_roundoff(dtype)
    return output_rtol(dtype, n) + theirs


def values_per_channel(x, axis):
    """n: how many values each channel's statistics are taken over."""
    x = np.asarray(x)
    channels = 1 if axis is None else n_channels(x.shape, axis)
    return x.size // channels if channels else 0


def n_channels(shape, axis):
    return 1 if len(shape) == 1 else shape[axis % len(shape)]


def channel_broadcast_shape(shape, axis):
    if len(shape) == 1:
        return (1,)
    out = [1] * len(shape)
    out[axis % len(shape)] = shape[axis % len(shape)]
    return tuple(out)


def make_float(rng, shape, axis, offset=(1.0, 5.0), scale=(0.5, 3.0)):
    """float64 normal data with a nonzero offset and spread per channel."""
    channels = n_channels(shape, axis)
    bshape = channel_broadcast_shape(shape, axis)
    loc = rng.uniform(*offset, channels) * rng.choice([-1.0, 1.0], channels)
    spread = rng.uniform(*scale, channels)
    return rng.standard_normal(shape) * spread.reshape(bshape) + loc.reshape(bshape)


def make_input(rng, shape, axis, kind):
    """Random data of one of INPUT_KINDS."""
    if kind == "bool":
        return rng.random(shape) < 0.4
    if kind in ("int64", "int32"):
        return rng.integers(-20, 60, size=shape).astype(kind)
    if kind == "uint8":
        return rng.integers(0, 256, size=shape).astype(np.uint8)
    x = make_float(rng, shape, axis)
    if kind == "list":
        return x.tolist()
    return x.astype(kind)


def working_dtype(x):
    """Output dtype promised by the contract for input x."""
    dtype = np.asarray(x).dtype
    if dtype.kind == "f" and dtype.itemsize in (2, 4):
        return np.dtype(dtype.type).newbyteorder("=")
    if is_bfloat16(dtype):
        return dtype
    return np.dtype(np.float64)


def make_channel_params(rng, channels, kind="float64"):
    gamma = rng.uniform(0.5, 2.0, channels) * rng.choice([-1.0, 1.0], channels)
    beta = rng.uniform(-2.0, 2.0, channels)
    if kind == "int":
        return (np.round(gamma * 2).astype(np.int64) | 1), np.round(beta * 3).astype(np.int64)
    return gamma.astype(kind), beta.astype(kind)


def assert_output_close(got, ref, dtype, scale=None, rtol=None):
    """y / dx: dtype, shape, and values within rtol * scale of the reference (defaults:
    output_rtol(dtype), which assumes given statistics, and max |ref| as the scale)."""
    dtype = np.dtype(dtype)
    assert isinstance(got, np.ndarray), type(got)
    assert got.dtype == dtype, f"dtype {got.dtype}, expected {dtype}"
    assert got.shape == ref.shape, f"shape {got.shape}, expected {ref.shape}"
    rtol = output_rtol(dtype) if rtol is None else rtol
    if scale is None:
        finite = np.abs(ref[np.isfinite(ref)])
        scale = finite.max() if finite.size else 0.0
    np.testing.assert_allclose(got.astype(np.float64), ref, rtol=rtol, atol=rtol * scale)


def assert_stat_close(got, ref, rtol, atol_scale=0.0, name="statistic"):
    """float64 (C,) statistics within rtol * (|ref| + atol_scale)."""
    assert isinstance(got, np.ndarray), f"{name}: {type(got)}"
    assert got.dtype == np.float64, f"{name}: dtype {got.dtype}, expected float64"
    assert got.shape == ref.shape, f"{name}: shape {got.shape}, expected {ref.shape}"
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * atol_scale, err_msg=name)


def weighted_column_moments(D, w=None):
    """float64 reference (count, mean, M2) per column of a 2-D D, NaN skipped, rows weighted by
    w (two-pass: the mean, then the squared deviations from it); columns with nothing counted
    get count 0 and NaN mean and M2."""
    D = np.asarray(D, np.float64)
    w = np.ones(D.shape[0]) if w is None else np.asarray(w, np.float64)
    ok = ~np.isnan(D)
    W = w[:, None] * ok
    count = W.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (W * np.where(ok, D, 0.0)).sum(axis=0) / count
        m2 = (W * np.where(ok, D - mean, 0.0) ** 2).sum(axis=0)
    return count, mean, np.where(count > 0, m2, np.nan)


def channels_last_2d(a, axis):
    """float64 (m, C) view of a, for per-channel error scales in tests."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1 or axis is None:
        return a.reshape(-1, 1)
    moved = np.moveaxis(a, axis, -1)
    return moved.reshape(-1, moved.shape[-1])


def stat_scales(x, axis):
    """atol scales for stat_rtol: max |x| for the mean (a sum's error is relative to the sum of
    |terms|) and max (x - mean)^2 for the variance, plus gamma_{n+1} max|x|^2 so that
    stat_rtol(n) * scale covers the (gamma_{n+1} max|x|)^2 an error in the mean adds (a
    constant channel has variance 0 only up to that)."""
    x2 = channels_last_2d(x, axis)
    if x2.size == 0:
        return 0.0, 0.0
    dev = x2 - x2.mean(axis=0)
    biggest = float(np.abs(x2).max())
    return biggest, float((dev ** 2).max()) + gamma_n(x2.shape[0] + 1) * biggest ** 2


def invstd_rtol(n, x, axis, eps):
    """rtol of invstd = 1 / sqrt(var + eps) from n values per channel: half the relative error
    of var + eps (stat_rtol(n) * (var + var scale) / (var + eps)) plus 3 roundings each side."""
    x2 = channels_last_2d(x, axis)
    if x2.size == 0:
        return stat_rtol(n)
    var = x2.var(axis=0)
    _, var_scale = stat_scales(x, axis)
    ok = var + eps > 0  # else invstd is infinite on both sides
    spread = float(np.max((var[ok] + var_scale) / (var[ok] + eps))) if ok.any() else 1.0
    return 0.5 * stat_rtol(n) * spread + 6 * unit_roundoff()


def elementwise_scale(x, axis, center, invstd, gamma=None, beta=None):
    """Bound on the terms of y = (x - center) * invstd * gamma + beta, in either order of
    evaluation (x * a + b included): max over channels of |gamma| invstd (max|x| + |center|)
    + |beta|; an error of the statistics or one rounding is relative to this."""
    x2 = channels_last_2d(x, axis)
    if x2.size == 0:
        return 0.0
    g = np.ones(x2.shape[1]) if gamma is None else np.abs(np.asarray(gamma, np.float64))
    b = np.zeros(x2.shape[1]) if beta is None else np.abs(np.asarray(beta, np.float64))
    center = np.abs(np.asarray(center, np.float64))
    invstd = np.asarray(invstd, np.float64)
    big = np.abs(x2).max(axis=0)
    with np.errstate(invalid="ignore"):
        terms = g * invstd * (big + center) + b
    terms = terms[np.isfinite(terms)]
    return float(terms.max()) if terms.size else 0.0


def backward_scales(dy, x, mean, invstd, gamma, axis):
    """atol scales for dx, dgamma and dbeta: the size of the terms that cancel (dx: |gamma|
    invstd |dy| (2 + xhat^2); dgamma: sum |dy xhat|; dbeta: sum |dy|)."""
    x2 = channels_last_2d(x, axis)
    dy2 = channels_last_2d(dy, axis)
    if x2.size == 0:
        return 0.0, 0.0, 0.0
    g = np.ones(x2.shape[1]) if gamma is None else np.asarray(gamma, np.float64)
    xhat = (x2 - mean) * invstd
    dx_scale = float(np.max(np.abs(g * invstd)) * np.abs(dy2).max()
                     * (2.0 + np.abs(xhat).max() ** 2))
    dgamma_scale = float(np.abs(dy2 * xhat).sum(axis=0).max())
    dbeta_scale = float(np.abs(dy2).sum(axis=0).max())
    return dx_scale, dgamma_scale, dbeta_scale


def assert_moments_close(mean, var, rmean, rvar, x, axis):
    """mean / var of x (any ddof) vs the float64 reference, within stat_rtol(n)."""
    rtol = stat_rtol(values_per_channel(x, axis))
    mean_scale, var_scale = stat_scales(x, axis)
    assert_stat_close(mean, rmean, rtol, mean_scale, "mean")
    if var is not None:
        assert_stat_close(var, rvar, rtol, var_scale, "var")


def assert_forward_close(got, want, x, axis, gamma=None, beta=None, eps=1e-5, dtype=None):
    """(y, mean, invstd) of a training forward vs the reference's: the statistics within
    stat_rtol(n) / invstd_rtol, y within output_rtol(dtype, n) of elementwise_scale."""
    y, mean, invstd = got
    ry, rmean, rinvstd = want[:3]
    n = values_per_channel(x, axis)
    dtype = working_dtype(x) if dtype is None else np.dtype(dtype)
    assert_output_close(y, ry, dtype, rtol=output_rtol(dtype, n),
                        scale=elementwise_scale(x, axis, rmean, rinvstd, gamma, beta))
    assert_moments_close(mean, None, rmean, None, x, axis)
    assert_stat_close(invstd, rinvstd, invstd_rtol(n, x, axis, eps), 0.0, "invstd")


def assert_inference_close(y, ry, x, axis, rm, rv, gamma=None, beta=None, eps=1e-5, dtype=None):
    """y of an inference forward vs the reference's: given statistics, so only the elementwise
    pass rounds (output_rtol(dtype)) relative to elementwise_scale."""
    dtype = working_dtype(x) if dtype is None else np.dtype(dtype)
    invstd = 1.0 / np.sqrt(np.asarray(rv, np.float64) + eps)
    assert_output_close(y, ry, dtype, rtol=output_rtol(dtype),
                        scale=elementwise_scale(x, axis, rm, invstd, gamma, beta))


def assert_backward_close(got, want, dy, x, mean, invstd, gamma, axis, dtype=None):
    """(dx, dgamma, dbeta) vs the reference's, given the same mean and invstd: the two sums
    within stat_rtol(n) of their backward_scales, dx within output_rtol(dtype, n)."""
    dx, dgamma, dbeta = got
    rdx, rdgamma, rdbeta = want
    n = values_per_channel(x, axis)
    dtype = working_dtype(x) if dtype is None else np.dtype(dtype)
    dx_scale, dgamma_scale, dbeta_scale = backward_scales(dy, x, mean, invstd, gamma, axis)
    assert_output_close(dx, rdx, dtype, scale=dx_scale, rtol=output_rtol(dtype, n))
    assert_stat_close(dgamma, rdgamma, stat_rtol(n), dgamma_scale, "dgamma")
    assert_stat_close(dbeta, rdbeta, stat_rtol(n), dbeta_scale, "dbeta")


def assert_merged_moments_close(mean, var, ref_mean, ref_var, x, axis, what=""):
    """mean / var of a chunked or all-gathered (merged) reduction vs another computation of
    them (dask, distributed): each within stat_rtol(n) of exact plus 3 roundings per Chan
    merge of the pieces (fewer merges than values: stat_rtol(4 n)); atol from stat_scales
    (NaN counted as 0, which only widens it)."""
    x = np.where(np.isnan(x), 0.0, np.asarray(x, np.float64))
    n = values_per_channel(x, axis)
    rtol = stat_rtol(4 * n)
    mean_scale, var_scale = stat_scales(x, axis)
    np.testing.assert_allclose(mean, ref_mean, rtol=rtol, atol=rtol * mean_scale,
                               err_msg=f"mean {what}")
    if var is not None:
        np.testing.assert_allclose(var, ref_var, rtol=rtol, atol=rtol * 2 * var_scale,
                                   err_msg=f"var {what}")


def assert_merged_y_close(y, y_ref, x, axis, eps=1e-5, gamma=None, beta=None):
    """y of a chunked or distributed training forward vs the in-memory one:
    output_rtol(dtype, 4 n) (statistics as in assert_merged_moments_close) of
    elementwise_scale."""
    x2 = channels_last_2d(x, axis)
    mean = x2.mean(axis=0)
    invstd = 1 / np.sqrt(x2.var(axis=0) + eps)
    scale = elementwise_scale(x, axis, mean, invstd, gamma, beta)
    rtol = output_rtol(np.asarray(y).dtype, 4 * values_per_channel(x, axis))
    np.testing.assert_allclose(np.asarray(y, np.float64), np.asarray(y_ref, np.float64), rtol=0,
                               atol=rtol * scale, err_msg="y")


def transform_scale(scaler, X):
    """Size of the terms of (X - mean_) / scale_ (NaN as 0)."""
    X = np.where(np.isnan(X), 0.0, np.asarray(X, np.float64))
    return float(np.max((np.abs(X).max(axis=0) + np.abs(scaler.mean_)) / scaler.scale_))


def assert_same_scaler_fit(a, b, X):
    """Two fits of the same data X (NaN skipped): statistics as in _stats_close; scale_ =
    sqrt(var_) has half var_'s relative error; sample counts are integers (exact)."""
    assert_merged_moments_close(a.mean_, a.var_, b.mean_, b.var_, X, 1, "scaler")
    var = np.asarray(b.var_, np.float64)
    ok = var > 0  # a constant feature's scale_ is 1 on both sides
    _, var_scale = stat_scales(np.where(np.isnan(X), 0.0, np.asarray(X, np.float64)), 1)
    smallest = float(np.min(var[ok], initial=np.inf))
    rtol = 0.5 * stat_rtol(4 * X.shape[0]) * (1 + 2 * var_scale / smallest) + 2 * unit_roundoff()
    np.testing.assert_allclose(a.scale_[ok], b.scale_[ok], rtol=rtol, err_msg="scale_")
    np.testing.assert_array_equal(a.scale_[~ok], b.scale_[~ok])
    seen_a, seen_b = np.asarray(a.n_samples_seen_), np.asarray(b.n_samples_seen_)
    if seen_b.dtype.kind == "f":  # sums of weights (>= 0) in other orders
        np.testing.assert_allclose(seen_a, seen_b, rtol=0,
                                   atol=sum_tol(X.shape[0], float(seen_b.max())))
    else:
        np.testing.assert_array_equal(seen_a, seen_b)
    assert np.asarray(a.n_samples_seen_).dtype == np.asarray(b.n_samples_seen_).dtype
    assert a.n_features_in_ == b.n_features_in_


def central_difference_tol(h, value_error, third_derivative=0.0):
    """|(f(x + h) - f(x - h)) / 2h - f'(x)| <= value_error / h (each evaluation within
    value_error of f) + h^2 / 6 * max |f^(3)| (Taylor's remainder)."""
    return value_error / h + h * h / 6.0 * third_derivative


def bn_loss_error(w, y_scale, n):
    """Error bound of sum(w * y) over float64 y = batch norm of n values per channel: each y
    within output_rtol(float64, n) * y_scale (elementwise_scale) of exact, and the sum's
    gamma_N sum |w| y_scale (N = w.size terms)."""
    w = np.asarray(w, np.float64)
    return float(np.abs(w).sum()) * y_scale * (output_rtol(np.float64, n) + gamma_n(w.size))


def bn_third_derivative(w, gamma, invstd, xhat_max, n):
    """Bound on |d^3 sum(w * y) / dx_i^3| for y = gamma (x - mean) invstd + beta: differentiating
    invstd = (var + eps)^-1/2 three times with var' = 2 (x_i - mean) / n, var'' <= 2 / n gives
    at most 40 (1 + max|xhat|)^3 |gamma| invstd^3 sum |w| / n (0 for gamma and beta: linear)."""
    g = 1.0 if gamma is None else float(np.max(np.abs(gamma)))
    s = float(np.max(invstd))
    return 40.0 * (1.0 + xhat_max) ** 3 * g * s ** 3 * float(np.abs(w).sum()) / n


def central_differences(loss, params, h):
    """Central differences (f(p + h e_i) - f(p - h e_i)) / 2h of loss(**params) for every
    element i of every array in params (a dict name -> float64 array); a dict of gradients."""
    grads = {}
    for name, value in params.items():
        numeric = np.empty_like(value)
        for i in np.ndindex(value.shape):
            shifted = {}
            for sign in (1, -1):
                args = {k: v.copy() for k, v in params.items()}
                args[name][i] += sign * h
                shifted[sign] = loss(**args)
            numeric[i] = (shifted[1] - shifted[-1]) / (2 * h)
        grads[name] = numeric
    return grads


def assert_batch_norm_gradients(analytic, numeric, h, w, x, axis, mean, invstd, gamma, beta,
                                n):
    """The gradients of L = sum(w * y) with respect to x, gamma and beta, y = batch norm of
    n values per channel with statistics (mean, invstd) and the scale and shift gamma and
    beta it is linear in, against central differences with step h: the differences'
    rounding and truncation (central_difference_tol with bn_loss_error and
    bn_third_derivative) plus the analytic gradient's own error (output_rtol(float64, n)).
    mean and invstd may be (G, C), one row per group of a ghost batch: the bounds then take
    the largest over the groups."""
    means, invs = np.atleast_2d(mean), np.atleast_2d(invstd)
    x2 = channels_last_2d(x, axis)
    xhat_max = max(float(np.abs((x2 - m) * s).max()) for m, s in zip(means, invs))
    y_scale = max(elementwise_scale(x, axis, m, s, gamma, beta) for m, s in zip(means, invs))
    value_error = bn_loss_error(w, y_scale, n)
    curvature = {"x": bn_third_derivative(w, gamma, invs, xhat_max, n), "gamma": 0.0,
                 "beta": 0.0}
    for name in analytic:
        atol = central_difference_tol(h, value_error, curvature[name])
        np.testing.assert_allclose(analytic[name], numeric[name],
                                   rtol=output_rtol(np.float64, n), atol=atol,
                                   err_msg=f"d loss / d {name}")
        assert np.abs(analytic[name]).max() > 0, name


def assert_bits_equal(a, b, what=""):
    """Bit-identical arrays (NaN payloads, signed zeros included)."""
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype, a.shape, b.shape)
    if a.tobytes() != b.tobytes():
        diff = np.flatnonzero(np.ascontiguousarray(a).view(np.uint8)
                              != np.ascontiguousarray(b).view(np.uint8))
        raise AssertionError(f"{what}: not bit-identical; first differing byte {diff[0]} "
                             f"of {a.nbytes}; max abs diff "
                             f"{np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))}")


def run_python(code, timeout=120):
    """Run ``code`` in a fresh Python interpreter that imports this checkout's bnfast (its
    folder first on PYTHONPATH); the completed process, output captured as text."""
    import bnfast
    root = os.path.dirname(os.path.dirname(os.path.abspath(bnfast.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=env)


def run_isolated(module, function, *args, timeout=120):
    """Call module.function(*args) in a fresh Python process and fail on a non-zero exit,
    so a crash (SIGFPE, SIGSEGV) fails one test instead of killing the whole run."""
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    path = [tests_dir] + [entry or os.getcwd() for entry in sys.path]
    code = (f"import sys; sys.path[:0] = {path!r}; "
            f"import {module} as m; m.{function}(*{args!r})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, (
        f"{module}.{function}{args!r} exited with code {done.returncode}"
        f"{' (killed by signal %d)' % -done.returncode if done.returncode < 0 else ''}\n"
        f"{done.stdout[-3000:]}{done.stderr[-3000:]}")


def run_pytest(args, cwd=None, env=None, timeout=1200):
    """Run pytest on ``args`` in a fresh interpreter that imports this checkout's bnfast, with
    the environment variables ``env`` added; (counts, completed process), counts a dict of
    tests passed, failed, errors and skipped (from its JUnit XML report)."""
    import tempfile
    import xml.etree.ElementTree as ET

    import bnfast
    root = os.path.dirname(os.path.dirname(os.path.abspath(bnfast.__file__)))
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.xml")
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
             f"--junitxml={report}", *args], capture_output=True, text=True, timeout=timeout,
            cwd=cwd, env=full_env)
        counts = dict(passed=0, failed=0, errors=0, skipped=0)
        if os.path.exists(report):
            for suite in ET.parse(report).getroot().iter("testsuite"):
                tests = int(suite.get("tests", 0))
                for key in ("failures", "errors", "skipped"):
                    counts[{"failures": "failed"}.get(key, key)] += int(suite.get(key, 0))
                counts["passed"] += tests - sum(int(suite.get(k, 0))
                                                for k in ("failures", "errors", "skipped"))
    return counts, done


def float32_forward_bound(want, mean, scale, shift, axis):
    """The float32 forward's error bound per element (bn_elementwise_impl.h, "Error of the
    float32 forward"): around the zero crossing (scale nonzero and |mean * scale| <= 2^27
    |shift|) 4 roundings of |y*| plus 2^-51 of |mean * scale| + |shift|; otherwise 5
    roundings of |y*| + |shift|. The u^2 terms and gradual underflow (2^-149) are covered."""
    bshape = [1] * want.ndim
    bshape[axis] = len(scale)
    u = unit_roundoff(np.float32)
    zform = ((scale != 0) & (np.abs(mean * scale) <= 2.0 ** 27 * np.abs(shift))).reshape(bshape)
    terms = (np.abs(mean * scale) + np.abs(shift)).reshape(bshape)
    a = np.abs(want)
    z_bound = 4 * u * (1 + 4 * u) * a + 2.0 ** -50 * terms
    plain_bound = 5 * u * (1 + 4 * u) * (a + np.abs(shift).reshape(bshape))
    return np.where(zform, z_bound, plain_bound) + 2.0 ** -149
