"""Speed table: bnfast against NumPy, PyTorch and the memory-bandwidth floor.

Run it as ``python -m bnfast bench [--quick] [--threads N] [--json FILE]``.

Every row times one operation on one array, with every implementation measured side by
side in the same run, interleaved round by round so that drift (turbo, other processes,
thermal state) hits them all alike:

bnfast
    ``batch_norm_forward`` (op ``train``, with running statistics), ``batch_norm_inference``
    (``infer``) or ``batch_norm_backward`` (``backward``), always with a preallocated ``out=``
    and ``n_threads=threads``.
NumPy
    A plain vectorized NumPy implementation in the working dtype (``numpy_batch_norm_*``
    below), single-threaded like NumPy itself.
torch
    PyTorch's CPU batch norm on zero-copy ``torch.from_numpy`` views (NHWC arrays are seen as
    NCHW tensors in ``channels_last`` memory format), with ``torch.set_num_threads(threads)``.
    Forward ops are timed both as ``torch.nn.functional.batch_norm`` (which allocates its
    output) and as ``torch.ops.aten.native_batch_norm.out`` (which writes into a preallocated
    one, the same CPU kernels); the faster of the two is reported. Backward is
    ``torch.ops.aten.native_batch_norm_backward``: its ``.out`` overload only copies a freshly
    allocated result, so it is not used.
floor
    The memory floor: ``passes`` times the time of a streaming copy of an array of the same
    size (the faster of one ``np.copyto`` and ``threads`` threads each copying a slice).
    A copy reads and writes the array once; training forward reads x twice and writes y
    (1.5 copies), inference reads x and writes y (1.0), backward reads x and dy twice and
    writes dx (2.5).

Targets (DESIGN.md section 6): bnfast within 1.2x of the floor for arrays of 1 MiB and more;
no slower than PyTorch (at most 0.5x PyTorch's time on NCHW training forward); at least 10x
faster than NumPy; under 10 microseconds for a (256, 64) float32 training forward.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

EPS = 1e-5
MOMENTUM = 0.1
OPS = ("train", "infer", "backward")

#: Streaming copies of the array that each op costs at the very least.
PASSES = {"train": 1.5, "infer": 1.0, "backward": 2.5}

FLOOR_MIN_BYTES = 1 << 20
FLOOR_TARGET = 1.2
TORCH_TARGET = 1.0
TORCH_TARGET_NCHW_TRAIN = 0.5
NUMPY_TARGET = 10.0
SMALL_TARGET_S = 10e-6
SMALL_SHAPE = (256, 64)

#: Inner-loop length (seconds) that one timing sample aims for, like timeit's autorange.
MIN_TIME = 0.02
QUICK_MIN_TIME = 0.01
REPEATS = 7
QUICK_REPEATS = 3

_DTYPE_ABBREV = {"float32": "f32", "float64": "f64"}


# --------------------------------------------------------------------------------------
# What is measured
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One input array of the grid.

    Parameters
    ----------
    shape : tuple of int
        Logical shape, ``(N, C)`` or ``(N, C, H, W)``; NHWC arrays are stored as
        ``(N, H, W, C)``.
    layout : {"NC", "NCHW", "NHWC"}
        Memory layout; ``NHWC`` means channels last (``axis=-1``).
    dtype : {"float32", "float64"}
        Working dtype.
    """

    shape: tuple
    layout: str
    dtype: str

    @property
    def axis(self):
        """Channel axis passed to bnfast."""
        return -1 if self.layout == "NHWC" else 1

    @property
    def channels(self):
        return self.shape[1]

    @property
    def stored_shape(self):
        """Shape of the NumPy array as stored in memory."""
        if self.layout == "NHWC":
            n, c, h, w = self.shape
            return (n, h, w, c)
        return self.shape

    @property
    def nbytes(self):
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def label(self):
        dims = ",".join(str(d) for d in self.shape)
        return f"{self.layout} ({dims}) {_DTYPE_ABBREV[self.dtype]}"


def full_grid():
    """Return the ``(case, op)`` rows of the full table.

    Returns
    -------
    list of (Case, str)
    """
    cases = [Case(s, "NC", "float32") for s in [(65536, 256), (4096, 1024), (256, 64)]]
    for shape in [(32, 64, 56, 56), (64, 256, 14, 14), (8, 32, 112, 112)]:
        cases += [Case(shape, layout, "float32") for layout in ("NCHW", "NHWC")]
    cases += [Case((32, 64, 56, 56), layout, "float64") for layout in ("NCHW", "NHWC")]
    return [(case, op) for case in cases for op in OPS]


def quick_grid():
    """Return the ``(case, op)`` rows of ``--quick``: one of each kind of shape.

    Returns
    -------
    list of (Case, str)
    """
    cases = [
        Case((256, 64), "NC", "float32"),
        Case((4096, 1024), "NC", "float32"),
        Case((32, 64, 56, 56), "NCHW", "float32"),
        Case((32, 64, 56, 56), "NHWC", "float32"),
        Case((32, 64, 56, 56), "NCHW", "float64"),
    ]
    return [(case, op) for case in cases for op in OPS]


def short_grid():
    """Return the four rows of :func:`short_table`.

    Returns
    -------
    list of (Case, str)
    """
    nchw = Case((32, 64, 56, 56), "NCHW", "float32")
    return [
        (Case((256, 64), "NC", "float32"), "train"),
        (Case((65536, 256), "NC", "float32"), "train"),
        (nchw, "train"),
        (nchw, "backward"),
    ]


# --------------------------------------------------------------------------------------
# The plain NumPy implementation (the "NumPy" column; also used by asv_bench)
# --------------------------------------------------------------------------------------


def _reduce_axes(ndim, axis):
    axis = axis % ndim
    return tuple(a for a in range(ndim) if a != axis)


def _channel_shape(ndim, axis, channels):
    shape = [1] * ndim
    shape[axis % ndim] = channels
    return tuple(shape)


def numpy_batch_norm_forward(x, gamma, beta, running_mean, running_var, *, axis=1, eps=EPS,
                             momentum=MOMENTUM, out=None):
    """Training-mode batch norm written as plain vectorized NumPy in ``x.dtype``.

    Parameters
    ----------
    x : ndarray
        Input, at least 2-D.
    gamma, beta : ndarray, shape (C,)
        Scale and shift.
    running_mean, running_var : ndarray, shape (C,)
        Running statistics, updated in place (unbiased variance, PyTorch's convention).
    axis : int
        Channel axis.
    eps, momentum : float
    out : ndarray, optional
        Where to write y.

    Returns
    -------
    y, mean, invstd : ndarray
        ``y`` has x's shape; ``mean`` and ``invstd`` have shape (C,), in ``x.dtype``.
    """
    axes = _reduce_axes(x.ndim, axis)
    cshape = _channel_shape(x.ndim, axis, x.shape[axis])
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(var + x.dtype.type(eps))
    out = np.subtract(x, mean, out=out)
    out *= invstd * gamma.reshape(cshape)
    out += beta.reshape(cshape)
    m = x.size // x.shape[axis]
    running_mean *= 1 - momentum
    running_mean += momentum * mean.ravel()
    running_var *= 1 - momentum
    running_var += (momentum * m / (m - 1)) * var.ravel()
    return out, mean.ravel(), invstd.ravel()


def numpy_batch_norm_inference(x, running_mean, running_var, gamma, beta, *, axis=1, eps=EPS,
                               out=None):
    """Inference-mode batch norm written as plain vectorized NumPy in ``x.dtype``.

    Parameters
    ----------
    x : ndarray
    running_mean, running_var, gamma, beta : ndarray, shape (C,)
    axis : int
    eps : float
    out : ndarray, optional

    Returns
    -------
    y : ndarray
    """
    cshape = _channel_shape(x.ndim, axis, x.shape[axis])
    scale = (gamma / np.sqrt(running_var + eps)).astype(x.dtype, copy=False)
    out = np.subtract(x, running_mean.astype(x.dtype, copy=False).reshape(cshape), out=out)
    out *= scale.reshape(cshape)
    out += beta.reshape(cshape)
    return out


def numpy_batch_norm_backward(dy, x, mean, invstd, gamma, *, axis=1, out=None):
    """Batch-norm backward written as plain vectorized NumPy in ``x.dtype``.

    Parameters
    ----------
    dy, x : ndarray
        Upstream gradient and forward input, same shape.
    mean, invstd, gamma : ndarray, shape (C,)
        Batch statistics saved by the forward pass, and the scale.
    axis : int
    out : ndarray, optional
        Where to write dx.

    Returns
    -------
    dx, dgamma, dbeta : ndarray
    """
    dtype = x.dtype
    axes = _reduce_axes(x.ndim, axis)
    cshape = _channel_shape(x.ndim, axis, x.shape[axis])
    m = x.size // x.shape[axis]
    invstd = invstd.astype(dtype, copy=False).reshape(cshape)
    xhat = (x - mean.astype(dtype, copy=False).reshape(cshape)) * invstd
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * xhat).sum(axis=axes)
    out = np.multiply(dy, dtype.type(m), out=out)
    out -= dbeta.reshape(cshape)
    xhat *= dgamma.reshape(cshape)
    out -= xhat
    out *= gamma.reshape(cshape) * invstd / dtype.type(m)
    return out, dgamma, dbeta


# --------------------------------------------------------------------------------------
# Inputs and the callables that are timed
# --------------------------------------------------------------------------------------


class Problem:
    """The arrays of one :class:`Case`, and zero-argument callables that time each op.

    Every implementation gets its own output buffer and its own copy of the running
    statistics, allocated and touched here so that no page fault is timed.

    Parameters
    ----------
    case : Case
    threads : int
        ``n_threads`` for bnfast, ``torch.set_num_threads`` for PyTorch, and threads of the
        threaded copy.
    copy_pool : concurrent.futures.ThreadPoolExecutor or None
        Pool for the threaded copy (None: single-threaded copy only).
    seed : int
    """

    def __init__(self, case, threads, copy_pool=None, seed=0):
        self.case = case
        self.threads = threads
        self.copy_pool = copy_pool
        dtype = np.dtype(case.dtype)
        c = case.channels
        rng = np.random.default_rng(seed)
        self.x = (rng.standard_normal(case.stored_shape, dtype=dtype) * 2 + 0.5).astype(dtype)
        self.dy = rng.standard_normal(case.stored_shape, dtype=dtype)
        self.gamma = rng.uniform(0.5, 1.5, c).astype(dtype)
        self.beta = rng.uniform(-0.5, 0.5, c).astype(dtype)
        # Running buffers in the working dtype, like a PyTorch BatchNorm module's.
        self.running_mean0 = rng.uniform(0.0, 1.0, c).astype(dtype)
        self.running_var0 = rng.uniform(3.0, 5.0, c).astype(dtype)
        self.out = {name: np.ones_like(self.x) for name in ("bnfast", "numpy", "torch", "copy")}
        self.running = {
            name: (self.running_mean0.copy(), self.running_var0.copy())
            for name in ("bnfast", "numpy", "torch")
        }
        import bnfast

        self.bnfast = bnfast
        # Statistics of the batch, as bnfast's forward returns them (float64), for backward.
        _, self.mean, self.invstd = bnfast.batch_norm_forward(
            self.x, self.gamma, self.beta, axis=case.axis, eps=EPS,
            out=self.out["bnfast"], n_threads=threads)
        self._torch_state = None

    # -- bnfast -----------------------------------------------------------------------

    def bnfast_call(self, op):
        """Return a callable running bnfast's ``op`` with ``out=`` and ``n_threads``."""
        bn, case, out, threads = self.bnfast, self.case, self.out["bnfast"], self.threads
        x, dy, gamma, beta = self.x, self.dy, self.gamma, self.beta
        rm, rv = self.running["bnfast"]
        if op == "train":
            return lambda: bn.batch_norm_forward(
                x, gamma, beta, axis=case.axis, eps=EPS, running_mean=rm, running_var=rv,
                momentum=MOMENTUM, out=out, n_threads=threads)
        if op == "infer":
            return lambda: bn.batch_norm_inference(
                x, rm, rv, gamma, beta, axis=case.axis, eps=EPS, out=out, n_threads=threads)
        mean, invstd = self.mean, self.invstd
        return lambda: bn.batch_norm_backward(
            dy, x, mean, invstd, gamma, axis=case.axis, out=out, n_threads=threads)

    # -- NumPy ------------------------------------------------------------------------

    def numpy_call(self, op):
        """Return a callable running the plain NumPy implementation of ``op``."""
        case, out = self.case, self.out["numpy"]
        x, dy, gamma, beta = self.x, self.dy, self.gamma, self.beta
        rm, rv = self.running["numpy"]
        if op == "train":
            return lambda: numpy_batch_norm_forward(
                x, gamma, beta, rm, rv, axis=case.axis, eps=EPS, momentum=MOMENTUM, out=out)
        if op == "infer":
            return lambda: numpy_batch_norm_inference(
                x, rm, rv, gamma, beta, axis=case.axis, eps=EPS, out=out)
        mean, invstd = self.mean, self.invstd
        return lambda: numpy_batch_norm_backward(
            dy, x, mean, invstd, gamma, axis=case.axis, out=out)

    # -- PyTorch ----------------------------------------------------------------------

    def _torch_tensors(self, torch):
        if self._torch_state is None:
            def view(a):
                t = torch.from_numpy(a)
                # (N, H, W, C) memory seen as a logical (N, C, H, W) channels_last tensor.
                return t.permute(0, 3, 1, 2) if self.case.layout == "NHWC" else t

            rm, rv = self.running["torch"]
            s = {
                "x": view(self.x), "dy": view(self.dy), "out": view(self.out["torch"]),
                "weight": torch.from_numpy(self.gamma), "bias": torch.from_numpy(self.beta),
                "running_mean": torch.from_numpy(rm), "running_var": torch.from_numpy(rv),
            }
            c = self.case.channels
            s["out_mean"] = torch.empty(c, dtype=s["x"].dtype)
            s["out_invstd"] = torch.empty(c, dtype=s["x"].dtype)
            _, s["saved_mean"], s["saved_invstd"] = torch.native_batch_norm(
                s["x"], s["weight"], s["bias"], None, None, True, MOMENTUM, EPS)
            self._torch_state = s
        return self._torch_state

    def torch_calls(self, op, torch):
        """Return ``{api name: callable}``: PyTorch's ways of running ``op``.

        Parameters
        ----------
        op : str
        torch : module

        Returns
        -------
        dict of str to callable
        """
        s = self._torch_tensors(torch)
        x, w, b = s["x"], s["weight"], s["bias"]
        rm, rv = s["running_mean"], s["running_var"]
        functional = torch.nn.functional.batch_norm
        aten = torch.ops.aten
        if op in ("train", "infer"):
            training = op == "train"
            return {
                "F.batch_norm": lambda: functional(x, rm, rv, w, b, training, MOMENTUM, EPS),
                "aten.native_batch_norm.out": lambda: aten.native_batch_norm.out(
                    x, w, b, rm, rv, training, MOMENTUM, EPS,
                    out=s["out"], save_mean=s["out_mean"], save_invstd=s["out_invstd"]),
            }
        dy, mean, invstd = s["dy"], s["saved_mean"], s["saved_invstd"]
        mask = [True, True, True]
        return {
            "aten.native_batch_norm_backward": lambda: aten.native_batch_norm_backward(
                dy, x, w, rm, rv, mean, invstd, True, EPS, mask),
        }

    # -- the memory floor -------------------------------------------------------------

    def copy_calls(self):
        """Return ``{name: callable}`` streaming copies of an array of x's size."""
        src, dst = self.x.reshape(-1), self.out["copy"].reshape(-1)
        calls = {"np.copyto": lambda: np.copyto(dst, src)}
        if self.copy_pool is not None and self.threads > 1:
            srcs = np.array_split(src, self.threads)
            dsts = np.array_split(dst, self.threads)
            pool = self.copy_pool
            calls[f"np.copyto x{self.threads} threads"] = lambda: list(
                pool.map(np.copyto, dsts, srcs))
        return calls

    # -- sanity ------------------------------------------------------------------------

    def agrees_with_numpy(self, op):
        """Whether bnfast and the NumPy implementation agree on ``op`` (a gross check).

        Both run once from the same running statistics; the result must match to 1e-2
        (float32) or 1e-6 (float64) of the output's largest magnitude.
        """
        for name in ("bnfast", "numpy"):
            rm, rv = self.running[name]
            rm[...] = self.running_mean0
            rv[...] = self.running_var0
        self.bnfast_call(op)()
        self.numpy_call(op)()
        a, b = self.out["bnfast"], self.out["numpy"]
        tol = 1e-2 if self.case.dtype == "float32" else 1e-6
        scale = max(1.0, float(np.max(np.abs(b))))
        return bool(np.max(np.abs(a.astype(np.float64) - b)) <= tol * scale)


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


def _loop_time(fn, number):
    timer = time.perf_counter
    t0 = timer()
    for _ in range(number):
        fn()
    return timer() - t0


def _autorange(fn, min_time):
    """Return the loop length (1, 2, 5, 10, 20, ...) whose run takes at least min_time."""
    number = 1
    for _ in range(40):
        for step in (1, 2, 5):
            n = number * step
            if _loop_time(fn, n) >= min_time:
                return n
        number *= 10
    return number


def measure(calls, repeats=REPEATS, min_time=MIN_TIME):
    """Time callables side by side and return their median seconds per call.

    Each callable is warmed up and given a loop length that runs for ``min_time`` or more;
    then ``repeats`` rounds each time every callable once, in an order that rotates from
    round to round, so that drift affects them all alike. Garbage collection is off while
    timing.

    Parameters
    ----------
    calls : dict of str to callable
    repeats : int
    min_time : float

    Returns
    -------
    dict of str to dict
        For each name: ``median`` and ``min`` seconds per call, the loop length ``number``
        and the number of ``repeats``.
    """
    names = list(calls)
    for fn in calls.values():
        fn()
    numbers = {name: _autorange(calls[name], min_time) for name in names}
    samples = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                samples[name].append(_loop_time(calls[name], numbers[name]) / numbers[name])
    finally:
        if gc_was_enabled:
            gc.enable()
    return {
        name: {"median": statistics.median(s), "min": min(s), "number": numbers[name],
               "repeats": repeats}
        for name, s in samples.items()
    }


# --------------------------------------------------------------------------------------
# Rows and targets
# --------------------------------------------------------------------------------------


def _ratio(a, b):
    return a / b if a is not None and b else None


def missed_targets(row):
    """Return the names of the targets that a row misses.

    Parameters
    ----------
    row : dict
        As :func:`run_rows` makes it.

    Returns
    -------
    list of str
        Subset of ``floor``, ``torch``, ``numpy``, ``10us`` and ``wrong`` (bnfast and NumPy
        disagree); empty when every target that applies is met.
    """
    missed = []
    if not row["agrees_with_numpy"]:
        missed.append("wrong")
    if row["nbytes"] >= FLOOR_MIN_BYTES and row["bnfast_over_floor"] > FLOOR_TARGET:
        missed.append("floor")
    if row["bnfast_over_torch"] is not None:
        limit = TORCH_TARGET_NCHW_TRAIN if (row["layout"], row["op"]) == ("NCHW", "train") \
            else TORCH_TARGET
        if row["bnfast_over_torch"] > limit:
            missed.append("torch")
    if row["numpy_over_bnfast"] < NUMPY_TARGET:
        missed.append("numpy")
    if (tuple(row["shape"]), row["dtype"], row["op"]) == (SMALL_SHAPE, "float32", "train") \
            and row["bnfast_s"] >= SMALL_TARGET_S:
        missed.append("10us")
    return missed


def run_rows(grid, threads, repeats=REPEATS, min_time=MIN_TIME, progress=None):
    """Measure every ``(case, op)`` of a grid.

    Parameters
    ----------
    grid : list of (Case, str)
    threads : int
    repeats : int
    min_time : float
    progress : file-like, optional
        Where to write one line per row as it starts (``[3/33] backward NC ...``).

    Returns
    -------
    list of dict
        One dict per row: case and op, median seconds of every implementation measured
        (``times``), the reported ``bnfast_s``, ``numpy_s``, ``torch_s`` (None without
        PyTorch), ``floor_s``, their ratios, and ``missed`` (see :func:`missed_targets`).
    """
    torch = _import_torch()
    torch_threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(threads)
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    rows = []
    problem = None
    try:
        for i, (case, op) in enumerate(grid, 1):
            if progress is not None:
                print(f"[{i}/{len(grid)}] {op} {case.label()} ...", file=progress, flush=True)
            if problem is None or problem.case != case:
                problem = None  # free the previous case's arrays first
                problem = Problem(case, threads, pool)
            rows.append(_measure_row(problem, op, torch, repeats, min_time))
    finally:
        if pool is not None:
            pool.shutdown()
        if torch is not None:
            torch.set_num_threads(torch_threads)
    return rows


def _measure_row(problem, op, torch, repeats, min_time):
    case = problem.case
    agrees = problem.agrees_with_numpy(op)
    calls = {"bnfast": problem.bnfast_call(op), "numpy": problem.numpy_call(op)}
    torch_names = []
    if torch is not None:
        for api, fn in problem.torch_calls(op, torch).items():
            calls["torch " + api] = fn
            torch_names.append("torch " + api)
    copies = problem.copy_calls()
    calls.update(copies)
    times = measure(calls, repeats, min_time)
    median = {name: t["median"] for name, t in times.items()}

    torch_s = torch_api = None
    if torch_names:
        best = min(torch_names, key=median.__getitem__)
        torch_s, torch_api = median[best], best[len("torch "):]
    copy_s = min(median[name] for name in copies)
    row = {
        "op": op, "layout": case.layout, "shape": list(case.shape),
        "stored_shape": list(case.stored_shape), "axis": case.axis, "dtype": case.dtype,
        "nbytes": case.nbytes, "threads": problem.threads,
        "times": times,
        "bnfast_s": median["bnfast"], "numpy_s": median["numpy"],
        "torch_s": torch_s, "torch_api": torch_api,
        "copy_s": copy_s, "passes": PASSES[op], "floor_s": PASSES[op] * copy_s,
        "agrees_with_numpy": agrees,
    }
    row["bnfast_over_floor"] = _ratio(row["bnfast_s"], row["floor_s"])
    row["bnfast_over_torch"] = _ratio(row["bnfast_s"], torch_s)
    row["numpy_over_bnfast"] = _ratio(row["numpy_s"], row["bnfast_s"])
    row["missed"] = missed_targets(row)
    return row


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def format_time(seconds):
    """Format seconds as ``12.3 us`` / ``4.56 ms`` / ``1.23 s`` (``-`` for None)."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _format_ratio(r):
    return "-" if r is None else f"{r:.2f}"


def format_table(rows):
    """Return the rows as a fixed-width, Markdown-compatible table.

    Parameters
    ----------
    rows : list of dict

    Returns
    -------
    str
    """
    header = ["op", "layout", "shape", "dtype", "MiB", "bnfast", "NumPy", "torch", "floor",
              "bn/floor", "bn/torch", "np/bn", "targets"]
    right = {"MiB", "bnfast", "NumPy", "torch", "floor", "bn/floor", "bn/torch", "np/bn"}
    lines = []
    for row in rows:
        lines.append([
            row["op"], row["layout"], "(" + ",".join(map(str, row["shape"])) + ")",
            _DTYPE_ABBREV.get(row["dtype"], row["dtype"]), f"{row['nbytes'] / 2**20:.2f}",
            format_time(row["bnfast_s"]), format_time(row["numpy_s"]),
            format_time(row["torch_s"]), format_time(row["floor_s"]),
            _format_ratio(row["bnfast_over_floor"]), _format_ratio(row["bnfast_over_torch"]),
            _format_ratio(row["numpy_over_bnfast"]),
            "PASS" if not row["missed"] else "miss " + ",".join(row["missed"]),
        ])
    widths = [max(len(h), *(len(line[j]) for line in lines)) for j, h in enumerate(header)]

    def fmt(cells):
        padded = [c.rjust(w) if h in right else c.ljust(w)
                  for c, w, h in zip(cells, widths, header)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if h in right else ("-" * (w + 2))
                          for w, h in zip(widths, header)) + "|"
    return "\n".join([fmt(header), rule] + [fmt(line) for line in lines])


def table_notes(threads, torch_version):
    """Return the lines printed under the table that say what its columns mean."""
    torch_note = (f"torch {torch_version}: the faster of F.batch_norm and "
                  "aten.native_batch_norm.out (forward), aten.native_batch_norm_backward")
    if torch_version is None:
        torch_note = "torch: not installed"
    return "\n".join([
        f"threads: {threads} (bnfast n_threads, torch.set_num_threads, copy); "
        "NumPy is single-threaded; times are medians per call",
        "shapes are (N,C) or (N,C,H,W); NHWC arrays are stored (N,H,W,C), axis=-1",
        torch_note,
        "floor = passes x streaming copy of x (train 1.5, infer 1.0, backward 2.5)",
        f"targets: bn/floor <= {FLOOR_TARGET} (>= 1 MiB), bn/torch <= {TORCH_TARGET} "
        f"({TORCH_TARGET_NCHW_TRAIN} NCHW train), np/bn >= {NUMPY_TARGET:g}, "
        "(256,64) f32 train < 10 us",
    ])


def machine_info(threads):
    """Return a dict describing this machine and the software measured.

    Parameters
    ----------
    threads : int

    Returns
    -------
    dict
    """
    import bnfast

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    torch = _import_torch()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    openmp = getattr(bnfast, "openmp_enabled", None)
    return {
        "load_average": _load_average(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": None if torch is None else torch.__version__,
        "bnfast": getattr(bnfast, "__version__", None),
        "bnfast_openmp": openmp() if callable(openmp) else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _load_average():
    """1-minute load average (None where the OS has none): other processes skew timings."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


# --------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------


def short_table(file=None, threads=None):
    """Print a four-row speed table (a few seconds): bnfast against NumPy and PyTorch.

    Parameters
    ----------
    file : file-like, optional
        Where to print (default ``sys.stdout``).
    threads : int, optional
        Threads for bnfast and PyTorch (default: ``os.cpu_count()``).

    Returns
    -------
    list of dict
        The rows, as :func:`run_rows` returns them.
    """
    file = sys.stdout if file is None else file
    threads = threads or os.cpu_count() or 1
    rows = run_rows(short_grid(), threads, repeats=QUICK_REPEATS, min_time=0.005)
    torch = _import_torch()
    print(format_table(rows), file=file)
    print(table_notes(threads, None if torch is None else torch.__version__), file=file)
    return rows


SCALER_SHAPE = (65536, 256)
SCALER_TARGET = 5.0


def scaler_row(threads, repeats=REPEATS, min_time=MIN_TIME):
    """``BatchNormScaler().fit_transform`` against scikit-learn's ``StandardScaler``.

    On a float32 ``SCALER_SHAPE`` batch, both allocating their output as a user would.

    Returns
    -------
    dict or None
        Median seconds of each and their ratio; None when scikit-learn is not installed.
    """
    try:
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        return None
    from bnfast.preprocessing import BatchNormScaler

    X = np.random.default_rng(0).standard_normal(SCALER_SHAPE, dtype=np.float32) * 3 + 5
    ours = BatchNormScaler(n_threads=threads)
    theirs = StandardScaler()
    times = measure({"bnfast": lambda: ours.fit_transform(X),
                     "sklearn": lambda: theirs.fit_transform(X)}, repeats, min_time)
    b, s = times["bnfast"]["median"], times["sklearn"]["median"]
    return {"shape": list(SCALER_SHAPE), "dtype": "float32", "bnfast_s": b,
            "standard_scaler_s": s, "speedup": s / b}


def format_scaler_row(row):
    mark = "PASS" if row["speedup"] >= SCALER_TARGET else "miss"
    return (f"scaler fit_transform {tuple(row['shape'])} f32: BatchNormScaler "
            f"{format_time(row['bnfast_s'])}, StandardScaler {format_time(row['standard_scaler_s'])}"
            f", {row['speedup']:.1f}x faster (target >= {SCALER_TARGET:.0f}x: {mark})")


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def main(argv=None):
    """Run the speed table: ``python -m bnfast bench [--quick] [--threads N] [--json FILE]``.

    Parameters
    ----------
    argv : list of str, optional
        Arguments after ``bench`` (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bnfast bench",
        description="Time bnfast against plain NumPy, PyTorch (when installed) and the "
                    "memory-bandwidth floor, side by side in one run.")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_REPEATS} repeats and a smaller grid")
    parser.add_argument("--threads", type=_positive_int, default=os.cpu_count() or 1,
                        help="threads for bnfast, PyTorch and the copy (default: all cores, "
                             "%(default)s)")
    parser.add_argument("--repeats", type=_positive_int, default=None,
                        help=f"timing rounds per row (default {REPEATS}, "
                             f"{QUICK_REPEATS} with --quick)")
    parser.add_argument("--json", metavar="FILE",
                        help="also write every row and the machine's description to FILE")
    args = parser.parse_args(argv)

    grid = quick_grid() if args.quick else full_grid()
    repeats = args.repeats or (QUICK_REPEATS if args.quick else REPEATS)
    min_time = QUICK_MIN_TIME if args.quick else MIN_TIME
    info = machine_info(args.threads)
    print(f"bnfast {info['bnfast']}, numpy {info['numpy']}, torch {info['torch']}, "
          f"{info['cpu']}, {info['cores']} cores", file=sys.stderr, flush=True)
    load_before = info["load_average"]
    if load_before is not None and load_before >= 0.5:
        print(f"warning: load average {load_before} before the run ({info['cores']} cores): "
              "other processes compete for the CPUs, multi-threaded timings suffer most",
              file=sys.stderr)
    started = time.perf_counter()
    rows = run_rows(grid, args.threads, repeats, min_time, progress=sys.stderr)
    elapsed = time.perf_counter() - started
    load_after = _load_average()

    scaler = scaler_row(args.threads, repeats, min_time)
    print(format_table(rows))
    print()
    if scaler is not None:
        print(format_scaler_row(scaler))
    print(table_notes(args.threads, info["torch"]))
    missed = sum(1 for row in rows if row["missed"])
    print(f"{len(rows) - missed}/{len(rows)} rows meet every target; "
          f"{info['cpu']}, {info['cores']} cores; {elapsed:.0f} s; "
          f"load average {load_before} before, {load_after} after")
    if args.json:
        settings = {"quick": args.quick, "repeats": repeats, "min_time_s": min_time,
                    "eps": EPS, "momentum": MOMENTUM, "elapsed_s": elapsed,
                    "load_average_after": load_after}
        with open(args.json, "w") as f:
            json.dump({"machine": info, "settings": settings, "rows": rows, "scaler": scaler},
                      f, indent=1)
            f.write("\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
