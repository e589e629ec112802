"""Argument checks and the (outer, C, inner) layout view: the one place for both.

Every public entry point (functions, layer, scaler, dask, distributed) goes through these
helpers, so the same bad input gets the same exception everywhere, and every check runs
before anything is written: a call that raises leaves its arguments as they were.

What the checks produce is what the compiled entry points take as their plain case
(bnfast/_kernels.pyx, docs/design.md §4): ``plain`` arrays (exactly an ndarray, C-contiguous,
aligned, native byte order) of float32, float64, float16 or bfloat16, float64 per-channel
vectors, and floats.
"""
from __future__ import annotations

import math
import numbers
import operator
import sys
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt
from numpy.exceptions import AxisError

from ._dtypes import is_bfloat16

_F16: np.dtype[Any] = np.dtype(np.float16)
_F32: np.dtype[Any] = np.dtype(np.float32)
_F64: np.dtype[Any] = np.dtype(np.float64)

# dtype -> (dtype the kernels take, dtype of y / dx): the floats natively (float16 and
# bfloat16 are widened to float32 in the kernels' registers), anything else as float64.
_POLICY: dict[np.dtype[Any], tuple[np.dtype[Any], np.dtype[Any]]] = {
    _F32: (_F32, _F32), _F64: (_F64, _F64), _F16: (_F16, _F16)}

_T = TypeVar("_T")


def is_float_dtype(dtype: np.dtype[Any]) -> bool:
    """float16, float32, float64 (any byte order) or bfloat16: the floats bnfast takes."""
    return (dtype.kind == "f" and dtype.itemsize <= 8) or is_bfloat16(dtype)


def is_real_dtype(dtype: np.dtype[Any]) -> bool:
    """The one rule for real input: bnfast's floats, integers and bool."""
    return dtype.kind in "iub" or is_float_dtype(dtype)


def check_real_dtype(dtype: np.dtype[Any], name: str = "x") -> None:
    """TypeError for complex, object, string, datetime and other non-real dtypes."""
    if not is_real_dtype(dtype):
        raise TypeError(
            f"{name}: expected real numbers (float16/32/64, bfloat16, integer or bool), "
            f"got an array of dtype {dtype}")


def _asarray(x: Any, name: str) -> np.ndarray:
    """np.asarray(x), with NumPy's ValueError (a ragged nested list) naming the argument."""
    try:
        return np.asarray(x)
    except ValueError as exc:
        raise ValueError(f"{name}: expected an array-like of real numbers with a regular shape, "
                         f"got one NumPy cannot make an array of ({exc})") from exc


def as_array(x: npt.ArrayLike, name: str = "x") -> np.ndarray:
    """``x`` as an ndarray of a real dtype (no copy when it already is one).

    Raises TypeError for complex, object, string, datetime and other non-real dtypes, and
    ValueError for a ragged nested sequence.
    """
    a = x if type(x) is np.ndarray else _asarray(x, name)
    check_real_dtype(a.dtype, name)
    return a


def dtype_policy(dtype: np.dtype[Any]) -> tuple[np.dtype[Any], np.dtype[Any]]:
    """(working dtype, output dtype) for an input dtype; integers and bool compute in float64."""
    try:
        return _POLICY[dtype]
    except KeyError:
        if dtype.kind == "f":  # byte-swapped floats
            return _POLICY[dtype.newbyteorder("=")]
        if is_bfloat16(dtype):
            return dtype, dtype
        return _F64, _F64


class _Channels(int):
    """A channel count (an int for every other purpose) that remembers where it was read: the
    input's name and shape and the ``axis`` as given. A per-channel argument of the wrong
    length then gets an error that points at the channel axis (``channel_mismatch``) without
    every caller passing the input along."""

    source: tuple[str, tuple[int, ...], int]


def channel_mismatch(name: str, C: int, shape: tuple[int, ...]) -> str:
    """The message for a per-channel argument ``name`` of ``shape`` where ``(C,)`` is expected:
    which axis of which input has the C channels and, when another axis has the argument's
    length (the last one: channels-last data), the ``axis`` to pass instead."""
    msg = f"{name}: expected shape ({C},), got shape {shape}"
    source = getattr(C, "source", None)
    if source is None:
        return msg
    x_name, x_shape, axis = source
    msg += (f": one value per channel, and the channel axis of {x_name} (shape {x_shape}), "
            f"axis={axis}, has {C}")
    if len(shape) == 1:
        others = [k for k, n in enumerate(x_shape) if n == shape[0] and k != axis % len(x_shape)]
        if len(x_shape) - 1 in others:
            msg += (f"; for channels-last data (NHWC, NLC, ...), whose last axis has "
                    f"{shape[0]}, pass axis=-1")
        elif others:
            msg += f"; axis={others[0]} has {shape[0]}: is that the channel axis?"
    return msg


def channel_shape(a: np.ndarray, axis: Any, name: str = "x") -> tuple[int, int, int]:
    """The (outer, C, inner) shape of ``a`` viewed with its channel axis in the middle.

    1-D input (or ``axis=None``) is a single channel. C remembers ``a``'s shape and ``axis``
    for the messages of ``channel_mismatch``.
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
            raise AxisError(ax, ndim, f"{name} (1-D input is a single channel)")
        return 1, 1, a.size
    if not -ndim <= ax < ndim:
        raise AxisError(ax, ndim, name)  # "x: axis 5 is out of bounds for array of dimension 4"
    shape = a.shape
    C = shape[ax]
    if type(C) is int:  # not a dask array's NaN (an unknown size), which bnfast.dask reports
        C = _Channels(C)
        C.source = (name, shape, ax)
    ax %= ndim
    return math.prod(shape[:ax]), C, math.prod(shape[ax + 1:])


def plain(a: npt.ArrayLike, dtype: np.dtype[Any]) -> np.ndarray:
    """``a`` as the kernels take arrays: exactly an ndarray of ``dtype``, C-contiguous, aligned,
    in native byte order (``a`` itself when it already is one, else a copy)."""
    if (type(a) is np.ndarray and a.dtype == dtype and a.flags.c_contiguous
            and a.flags.aligned):
        return a
    return np.array(a, dtype=dtype, order="C")


def contiguous(a: np.ndarray, dtype: np.dtype[Any], shape3: tuple[int, ...]) -> np.ndarray:
    """``a`` as a ``plain`` array of ``dtype`` reshaped to shape3 (copied if needed)."""
    return plain(a, dtype).reshape(shape3)


def channel_vector(v: Any, C: int, name: str) -> np.ndarray | None:
    """A per-channel argument as a plain float64 vector of shape (C,) (None stays None)."""
    if v is None:
        return None
    if (type(v) is np.ndarray and v.dtype is _F64 and v.shape == (C,) and v.flags.c_contiguous
            and v.flags.aligned):
        return v  # the common case, cheaply
    a = _asarray(v, name)
    if not is_real_dtype(a.dtype):
        raise ValueError(f"{name}: expected real numbers of shape ({C},), got dtype {a.dtype}")
    if a.shape != (C,):
        raise ValueError(channel_mismatch(name, C, a.shape))
    return plain(a, _F64)


def check_running_pair(running_mean: Any, running_var: Any) -> None:
    """ValueError unless both running statistics are given or neither (PyTorch's rule in
    training: updating one of them alone would leave the pair inconsistent)."""
    if (running_mean is None) != (running_var is None):
        given, missing = (("running_mean", "running_var") if running_var is None
                          else ("running_var", "running_mean"))
        raise ValueError(f"running_mean, running_var: expected both or neither (they are "
                         f"updated together), got {given} without {missing}")


def running_stats(running_mean: Any, running_var: Any, C: int) -> tuple[np.ndarray, np.ndarray]:
    """Both (read-only) running statistics, required, as float64 vectors of shape (C,)."""
    if running_mean is None or running_var is None:
        raise ValueError(f"running_mean, running_var: expected arrays of shape ({C},), got None")
    rm = channel_vector(running_mean, C, "running_mean")
    rv = channel_vector(running_var, C, "running_var")
    assert rm is not None and rv is not None
    return rm, rv


def running_buffer(v: Any, C: int, name: str,
                   required: bool = False) -> tuple[np.ndarray | None, bool]:
    """Check a running statistic updated in place; return (kernel buffer, needs write-back).

    The kernel buffer is ``v`` itself (a base-class view of it for an ndarray subclass) when
    it is a C-contiguous aligned native float32/float64 vector, else a float64 copy to be
    written back with ``v[...] = buffer`` after the kernel ran. ``None`` is allowed (no
    update) unless ``required``.
    """
    if v is None:
        if required:
            raise ValueError(f"{name}: expected a writeable float ndarray of shape ({C},) "
                             "(it is required and updated in place), got None")
        return None, False
    if not isinstance(v, np.ndarray):
        raise ValueError(f"{name}: expected a writeable float ndarray of shape ({C},) "
                         f"(it is updated in place), got {type(v).__name__}")
    if not is_float_dtype(v.dtype):
        raise ValueError(f"{name}: expected a float ndarray of shape ({C},) (it is updated in "
                         f"place), got dtype {v.dtype}")
    if v.shape != (C,):
        raise ValueError(channel_mismatch(name, C, v.shape))
    if not v.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array (it is updated in place)")
    if v.dtype in (_F32, _F64) and v.flags.c_contiguous and v.flags.aligned:
        return (v if type(v) is np.ndarray else v.view(np.ndarray)), False
    return np.array(v, dtype=_F64, order="C"), True  # always a copy: aligned, native


class TrainingArguments(NamedTuple):
    """The checked arguments every training forward takes besides x (``training_arguments``)."""

    eps: float
    momentum: float
    n_threads: int | None
    gamma: np.ndarray | None       # float64 vectors of shape (C,)
    beta: np.ndarray | None
    running_mean: tuple[np.ndarray | None, bool]   # (kernel buffer, needs write-back)
    running_var: tuple[np.ndarray | None, bool]


def training_arguments(C: int, gamma: Any, beta: Any, eps: Any, momentum: Any,
                       running_mean: Any, running_var: Any, n_threads: Any,
                       out: Any = None, out_shape: tuple[int, ...] = (),
                       out_dtype: np.dtype[Any] | None = None,
                       running_required: bool = False) -> TrainingArguments:
    """Check the arguments a training forward shares, in one order: eps, momentum,
    n_threads, gamma, beta, running_mean, running_var and ``out`` (of ``out_shape`` and
    ``out_dtype``). The plain forward, ghost batch norm, batch renormalization and
    synchronized batch norm all take them here."""
    eps = check_eps(eps)
    momentum = check_momentum(momentum)
    nt = kernel_threads(n_threads)
    g = channel_vector(gamma, C, "gamma")
    b = channel_vector(beta, C, "beta")
    rm = running_buffer(running_mean, C, "running_mean", required=running_required)
    rv = running_buffer(running_var, C, "running_var", required=running_required)
    if out is not None:
        assert out_dtype is not None
        check_out(out, out_shape, out_dtype)
    return TrainingArguments(eps, momentum, nt, g, b, rm, rv)


def as_float(value: Any, name: str) -> float:
    """A real number as a float; ValueError (not OverflowError) when it is too big for one."""
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name}: expected a real number, got one too large for a float: "
                         f"{value!r:.40}") from None


def check_eps(eps: Any) -> float:
    if type(eps) is float and 0.0 <= eps < math.inf:  # the common case, cheaply
        return eps
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise ValueError(f"eps: expected a real number >= 0, got {eps!r}")
    eps = as_float(eps, "eps")
    if not (0.0 <= eps < math.inf):
        raise ValueError(f"eps: expected a finite real number >= 0, got {eps!r}")
    return eps


def check_momentum(momentum: Any) -> float:
    if type(momentum) is float and 0.0 <= momentum <= 1.0:  # the common case, cheaply
        return momentum
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise ValueError(f"momentum: expected a real number in [0, 1], got {momentum!r}")
    momentum = as_float(momentum, "momentum")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum: expected a real number in [0, 1], got {momentum!r}")
    return momentum


def check_n_threads(n_threads: Any) -> int:
    """None -> 0 (the default count); a positive integer -> itself (at most 65536)."""
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


def kernel_threads(n_threads: Any) -> int | None:
    """``n_threads`` checked, as the kernels take it: None (the default count) or an int."""
    return check_n_threads(n_threads) or None


def check_ddof(ddof: Any) -> float:
    """Delta degrees of freedom: a real number (never bool), as a float."""
    if isinstance(ddof, bool) or not isinstance(ddof, (int, float, np.integer, np.floating)):
        raise ValueError(f"ddof: expected a real number, got {ddof!r}")
    try:  # a float: m - ddof on an unsigned NumPy integer would wrap around
        return float(ddof)
    except OverflowError:
        raise ValueError(f"ddof: expected a real number within float64's range, "
                         f"got {ddof!r:.40}") from None


def check_sample_weight(sample_weight: Any, n_samples: int,
                        samples_by_channels: bool = True) -> Any:
    """Sample weights for ``n_samples`` rows: an ndarray of a real dtype (a dask array stays
    one), of shape (n_samples,).

    ``samples_by_channels``: whether x is 2-D (samples, channels) with the channels on axis
    1, the only layout sample weights apply to.
    """
    if not samples_by_channels:
        raise ValueError("sample_weight: only for 2-D x (samples, channels) with axis=1")
    if is_dask_array(sample_weight):
        w = sample_weight
        check_real_dtype(w.dtype, "sample_weight")
    else:
        w = as_array(sample_weight, "sample_weight")
    if w.shape != (n_samples,):
        raise ValueError(f"sample_weight: expected shape ({n_samples},), got shape {w.shape}")
    return w


def check_out(out: Any, shape: tuple[int, ...], dtype: np.dtype[Any], name: str = "out") -> None:
    """Check an ``out=`` argument: an ndarray of exactly ``shape`` and ``dtype``, writeable."""
    if not isinstance(out, np.ndarray):
        raise ValueError(f"{name}: expected an ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got shape {out.shape}")
    if out.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype}, got dtype {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array")


def same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` are the same C-contiguous buffer (in-place is then safe)."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.strides == b.strides and a.flags.c_contiguous and b.flags.c_contiguous)


def direct_out(out: np.ndarray, inputs: tuple[np.ndarray, ...], dtype: np.dtype[Any]) -> bool:
    """True when the kernel may write straight into ``out``.

    That needs a C-contiguous aligned native buffer of the working dtype that either shares
    no memory with the inputs or is exactly one of them; anything else goes through a
    temporary.
    """
    if (out.dtype != dtype or not out.flags.c_contiguous or not out.flags.aligned
            or not out.dtype.isnative):
        return False
    for a in inputs:
        if np.may_share_memory(out, a) and not same_memory(out, a):
            return False
    return True


def output_buffers(a: np.ndarray, shape3: tuple[int, int, int], work: np.dtype[Any],
                   out: np.ndarray | None,
                   inputs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray, bool]:
    """(a3, y3, direct): the kernel's plain view of ``a``, the plain buffer it writes, and
    whether that buffer is ``out`` itself.

    When the kernel can write straight into ``out`` and ``a`` must be copied anyway (strided,
    byte-swapped, unaligned, another dtype), the copy is made into ``out`` and the kernel runs
    in place, so no temporary the size of the input is made.
    """
    if out is not None and direct_out(out, inputs, work):
        y3 = (out if type(out) is np.ndarray else out.view(np.ndarray)).reshape(shape3)
        if a.dtype == work and a.flags.c_contiguous and a.flags.aligned:
            return a.reshape(shape3), y3, True
        if not any(np.may_share_memory(out, i) for i in inputs):
            np.copyto(out, a, casting="unsafe")
            return y3, y3, True
        return contiguous(a, work, shape3), y3, True
    return contiguous(a, work, shape3), np.empty(shape3, dtype=work), False


def finish_output(y3: np.ndarray, shape: tuple[int, ...], odt: np.dtype[Any],
                  out: np.ndarray | None, direct: bool) -> np.ndarray:
    """The user's result from the kernel's buffer: ``out`` itself when given."""
    if out is not None:
        if not direct:
            np.copyto(out, y3.reshape(shape), casting="unsafe")
        return out
    y = y3.reshape(shape)
    return y if y.dtype == odt else y.astype(odt)


def kernel_result(result: _T | None, name: str) -> _T:
    """What a compiled entry point returned for validated arguments: None there breaks the
    kernel contract (docs/design.md §4), a bnfast bug."""
    if result is None:
        raise RuntimeError(f"bnfast bug: _kernels.{name} declined arguments that passed "
                           "validation (the kernel contract, docs/design.md §4); please "
                           "report it with the call that raised this")
    return result


def check_int(value: Any, name: str, minimum: int | None = None) -> int:
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


def check_bool(value: Any, name: str) -> bool:
    """A flag argument: True or False (NumPy bools too), as a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def check_float_dtype(dtype: Any, name: str = "dtype") -> np.dtype[Any]:
    """A real floating dtype (float16, float32 or float64), as a native np.dtype."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"{name}: expected a float dtype (float16, float32 or float64), "
                         f"got {dtype!r}") from None
    if not is_float_dtype(dt):
        raise ValueError(f"{name}: expected a float dtype (float16, float32 or float64), "
                         f"got {dt}")
    return dt.newbyteorder("=")


def is_dask_array(x: Any) -> bool:
    """True when ``x`` is a dask array; never imports dask (unimported, no array can be one)."""
    da = sys.modules.get("dask.array")
    return da is not None and isinstance(x, da.Array)


def is_dask_frame(x: Any) -> bool:
    """True when ``x`` is a dask DataFrame or Series; never imports dask."""
    dd = sys.modules.get("dask.dataframe")
    return dd is not None and isinstance(x, (dd.DataFrame, dd.Series))



def check_activation(activation: Any) -> str | None:
    """The fused activation: None or ``"relu"``."""
    if activation is None:
        return None
    if isinstance(activation, str) and activation == "relu":
        return "relu"  # exactly the str (a str subclass becomes one)
    raise ValueError(f"activation: expected None or 'relu', got {activation!r}")


def same_shape_input(v: Any, shape: tuple[int, ...], work: np.dtype[Any],
                     shape3: tuple[int, int, int], name: str,
                     avoid: np.ndarray | None = None) -> np.ndarray:
    """An array argument of x's shape (a residual, the forward output y) as the kernels take
    it: plain, of the working dtype, viewed as shape3. A copy whenever it may share memory
    with ``avoid`` (the user's ``out``, which may be written before the kernel reads it)."""
    a = as_array(v, name)
    if a.shape != shape:
        raise ValueError(f"{name}: expected the shape of x {shape}, got shape {a.shape} "
                         "(no broadcasting)")
    if avoid is not None and np.may_share_memory(a, avoid):
        return np.array(a, dtype=work, order="C").reshape(shape3)
    return contiguous(a, work, shape3)
