"""Data makers, layouts and tolerance-aware comparisons shared by the tests."""

import os
import subprocess
import sys

import numpy as np

# (id, shape, axis): every layout of DESIGN §2 plus axis 0, middle axes and
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

# Relative tolerance of y / dx, by output dtype (a few ulps of that dtype).
OUTPUT_RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-6,
               np.dtype(np.float16): 1e-3}
# Relative tolerance of the float64 statistics, by input working dtype.
STAT_RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-10,
             np.dtype(np.float16): 1e-10}


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
    return np.dtype(np.float64)


def make_channel_params(rng, channels, kind="float64"):
    gamma = rng.uniform(0.5, 2.0, channels) * rng.choice([-1.0, 1.0], channels)
    beta = rng.uniform(-2.0, 2.0, channels)
    if kind == "int":
        return (np.round(gamma * 2).astype(np.int64) | 1), np.round(beta * 3).astype(np.int64)
    return gamma.astype(kind), beta.astype(kind)


def assert_output_close(got, ref, dtype, scale=None, rtol=None):
    """y / dx: dtype, shape and values within a few ulps of the output dtype."""
    dtype = np.dtype(dtype)
    assert isinstance(got, np.ndarray), type(got)
    assert got.dtype == dtype, f"dtype {got.dtype}, expected {dtype}"
    assert got.shape == ref.shape, f"shape {got.shape}, expected {ref.shape}"
    rtol = OUTPUT_RTOL[dtype] if rtol is None else rtol
    if scale is None:
        finite = np.abs(ref[np.isfinite(ref)])
        scale = finite.max() if finite.size else 0.0
    np.testing.assert_allclose(got.astype(np.float64), ref, rtol=rtol, atol=rtol * scale)


def assert_stat_close(got, ref, rtol, atol_scale=0.0, name="statistic"):
    """float64 (C,) statistics."""
    assert isinstance(got, np.ndarray), f"{name}: {type(got)}"
    assert got.dtype == np.float64, f"{name}: dtype {got.dtype}, expected float64"
    assert got.shape == ref.shape, f"{name}: shape {got.shape}, expected {ref.shape}"
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * atol_scale, err_msg=name)


def channels_last_2d(a, axis):
    """float64 (m, C) view of a, for per-channel error scales in tests."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        return a.reshape(-1, 1)
    moved = np.moveaxis(a, axis, -1)
    return moved.reshape(-1, moved.shape[-1])


def stat_scales(x, axis):
    """Scales for mean and var atol: max |x| and max (x - mean)^2 over channels."""
    x2 = channels_last_2d(x, axis)
    if x2.size == 0:
        return 0.0, 0.0
    dev = x2 - x2.mean(axis=0)
    biggest = float(np.abs(x2).max())
    # The second term covers a constant channel, whose variance is 0 only up to rounding.
    return biggest, float((dev ** 2).max()) + 1e-12 * biggest ** 2


def backward_scales(dy, x, mean, invstd, gamma, axis):
    """Error scales for dx, dgamma and dbeta: the size of the terms that cancel."""
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
