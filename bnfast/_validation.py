"""Argument checks and the (outer, C, inner) layout view: the one place for both.

Every public entry point (functions, layer, scaler) goes through these helpers, so the same
bad input gets the same exception everywhere, and every check runs before anything is
written: a call that raises leaves its arguments as they were.
"""
import math
import numbers
import operator
import sys

import numpy as np
from numpy.exceptions import AxisError

_F16 = np.dtype(np.float16)
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)

# dtype -> (dtype the kernels compute in, dtype of y / dx)
_POLICY = {_F32: (_F32, _F32), _F64: (_F64, _F64), _F16: (_F32, _F16)}


def as_array(x, name="x"):
    """``x`` as an ndarray of a real dtype (no copy when it already is one).

    Raises TypeError for complex, object, string, datetime and other non-real dtypes.
    """
    a = x if type(x) is np.ndarray else np.asarray(x)
    kind = a.dtype.kind
    if kind not in "fiub" or (kind == "f" and a.dtype.itemsize > 8):
        raise TypeError(
            f"{name}: expected real numbers (float16/32/64, integer or bool), "
            f"got an array of dtype {a.dtype}")
    return a


def dtype_policy(dtype):
    """(working dtype, output dtype) for an input dtype; integers and bool compute in float64."""
    try:
        return _POLICY[dtype]
    except KeyError:
        if dtype.kind == "f":  # byte-swapped floats
            return _POLICY[dtype.newbyteorder("=")]
        return _F64, _F64


def channel_shape(a, axis, name="x"):
    """The (outer, C, inner) shape of ``a`` viewed with its channel axis in the middle.

    1-D input (or ``axis=None``) is a single channel.
    """
    ndim = a.ndim
    if ndim == 0:
        raise ValueError(f"{name}: expected an array with at least 1 dimension, got a 0-d array")
    if axis is None:
        return 1, 1, a.size
    try:
        ax = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis: expected an integer or None, got {type(axis).__name__}") from None
    if ndim == 1:
        if ax not in (-1, 0, 1):
            raise AxisError(ax, ndim, f"{name}: a 1-D input is a single channel; axis")
        return 1, 1, a.size
    if not -ndim <= ax < ndim:
        raise AxisError(ax, ndim, f"axis {ax} is out of bounds for {name} with {ndim} dimensions")
    ax %= ndim
    shape = a.shape
    return math.prod(shape[:ax]), shape[ax], math.prod(shape[ax + 1:])


def contiguous(a, dtype, shape3):
    """``a`` as a C-contiguous native array of ``dtype`` reshaped to shape3 (copied if needed)."""
    if a.dtype != dtype or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype=dtype)
    return a.reshape(shape3)


def channel_vector(v, C, name):
    """A per-channel argument as a C-contiguous float64 vector of shape (C,)."""
    if v is None:
        return None
    if type(v) is np.ndarray and v.dtype is _F64 and v.shape == (C,) and v.flags.c_contiguous:
        return v  # the common case, cheaply
    a = np.asarray(v)
    if a.dtype.kind not in "fiub" or (a.dtype.kind == "f" and a.dtype.itemsize > 8):
        raise ValueError(f"{name}: expected real numbers of shape ({C},), got dtype {a.dtype}")
    if a.shape != (C,):
        raise ValueError(f"{name}: expected shape ({C},), got shape {a.shape}")
    if a.dtype is not _F64 or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype=_F64)
    return a


def running_stats(running_mean, running_var, C):
    """Both (read-only) running statistics, required, as float64 vectors of shape (C,)."""
    if running_mean is None or running_var is None:
        raise ValueError(f"running_mean, running_var: expected arrays of shape ({C},), got None")
    return (channel_vector(running_mean, C, "running_mean"),
            channel_vector(running_var, C, "running_var"))


def running_buffer(v, C, name):
    """Check a running statistic updated in place; return (kernel buffer, needs write-back).

    The kernel buffer is ``v`` itself when it is a C-contiguous native float32/float64 vector,
    else a float64 copy to be written back with ``v[...] = buffer`` after the kernel ran.
    """
    if v is None:
        return None, False
    if not isinstance(v, np.ndarray):
        raise ValueError(f"{name}: expected a writeable float ndarray of shape ({C},) "
                         f"(it is updated in place), got {type(v).__name__}")
    if v.dtype.kind != "f" or v.dtype.itemsize > 8:
        raise ValueError(f"{name}: expected a float ndarray of shape ({C},) (it is updated in "
                         f"place), got dtype {v.dtype}")
    if v.shape != (C,):
        raise ValueError(f"{name}: expected shape ({C},), got shape {v.shape}")
    if not v.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array (it is updated in place)")
    if v.dtype in (_F32, _F64) and v.flags.c_contiguous:
        return v, False
    return np.ascontiguousarray(v, dtype=_F64), True


def _as_float(value, name):
    """A real number as a float; ValueError (not OverflowError) when it is too big for one."""
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name}: expected a real number, got one too large for a float: "
                         f"{value!r:.40}") from None


def check_eps(eps):
    if type(eps) is float and 0.0 <= eps < math.inf:  # the common case, cheaply
        return eps
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise ValueError(f"eps: expected a real number >= 0, got {eps!r}")
    eps = _as_float(eps, "eps")
    if not (0.0 <= eps < math.inf):
        raise ValueError(f"eps: expected a finite real number >= 0, got {eps!r}")
    return eps


def check_momentum(momentum):
    if type(momentum) is float and 0.0 <= momentum <= 1.0:  # the common case, cheaply
        return momentum
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise ValueError(f"momentum: expected a real number in [0, 1], got {momentum!r}")
    momentum = _as_float(momentum, "momentum")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum: expected a real number in [0, 1], got {momentum!r}")
    return momentum


def check_n_threads(n_threads):
    """None -> 0 (the OpenMP default); a positive integer -> itself."""
    if n_threads is None:
        return 0
    if isinstance(n_threads, bool):
        raise ValueError(f"n_threads: expected None or an integer >= 1, got {n_threads!r}")
    try:
        n = operator.index(n_threads)
    except TypeError:
        raise ValueError(f"n_threads: expected None or an integer >= 1, got {n_threads!r}") from None
    if n < 1:
        raise ValueError(f"n_threads: expected None or an integer >= 1, got {n}")
    return min(n, 1 << 16)


def check_out(out, shape, dtype, name="out"):
    """Check an ``out=`` argument: an ndarray of exactly ``shape`` and ``dtype``, writeable."""
    if not isinstance(out, np.ndarray):
        raise ValueError(f"{name}: expected an ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got shape {out.shape}")
    if out.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype}, got dtype {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array")


def same_memory(a, b):
    """True when ``a`` and ``b`` are the same C-contiguous buffer (in-place is then safe)."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.strides == b.strides and a.flags.c_contiguous and b.flags.c_contiguous)


def direct_out(out, inputs, dtype):
    """True when the kernel may write straight into ``out``.

    That needs a C-contiguous native buffer of the working dtype that either shares no memory
    with the inputs or is exactly one of them; anything else goes through a temporary.
    """
    if out.dtype != dtype or not out.flags.c_contiguous or not out.dtype.isnative:
        return False
    for a in inputs:
        if np.may_share_memory(out, a) and not same_memory(out, a):
            return False
    return True


def check_int(value, name, minimum=None):
    """An integer argument (NumPy integers too, never bool) as a Python int.

    TypeError when it is not an integer, ValueError when it is below ``minimum``.
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {value!r}") from None
    if minimum is not None and n < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {n}")
    return n


def check_bool(value, name):
    """A flag argument: True or False (NumPy bools too), as a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def check_float_dtype(dtype, name="dtype"):
    """A real floating dtype (float16, float32 or float64), as a native np.dtype."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"{name}: expected a float dtype (float16, float32 or float64), "
                         f"got {dtype!r}") from None
    if dt.kind != "f" or dt.itemsize > 8:
        raise ValueError(f"{name}: expected a float dtype (float16, float32 or float64), "
                         f"got {dt}")
    return dt.newbyteorder("=")


def is_dask_array(x):
    """True when ``x`` is a dask array; never imports dask (unimported, no array can be one)."""
    da = sys.modules.get("dask.array")
    return da is not None and isinstance(x, da.Array)
