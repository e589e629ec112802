"""What one row of the table times: bnfast, the NumPy twin, PyTorch and the copy floor.

Every row times one operation on one array, every implementation side by side in the same
run, interleaved round by round (``timing.measure``):

bnfast
    ``batch_norm_forward`` (op ``train``, with running statistics), ``batch_norm_inference``
    (``infer``) or ``batch_norm_backward`` (``backward``), with a preallocated ``out=`` and
    ``n_threads=threads``.
NumPy
    The plain vectorized NumPy implementation in the working dtype (``numpy_twin``),
    single-threaded like NumPy itself.
torch
    PyTorch's CPU batch norm on zero-copy ``torch.from_numpy`` views (NHWC arrays are seen as
    NCHW tensors in ``channels_last`` memory format), with ``torch.set_num_threads(threads)``.
    Forward ops are timed both as ``torch.nn.functional.batch_norm`` (which allocates its
    output) and as ``torch.ops.aten.native_batch_norm.out`` (which writes into a preallocated
    one, the same CPU kernels); the faster of the two is reported. Backward is
    ``torch.ops.aten.native_batch_norm_backward``: its ``.out`` overload only copies a freshly
    allocated result, so it is not used.
floor
    ``passes`` times the time of a streaming copy of an array of the same size (the faster
    of one ``np.copyto`` and ``threads`` threads each copying a slice); ``cases.PASSES``.

How performance is measured: ``docs/design.md`` §6.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional, TextIO

import numpy as np

from . import targets as _targets
from .cases import EPS, HALF_DTYPES, MOMENTUM, PASSES, Case, Row, make_inputs
from .numpy_twin import (numpy_batch_norm_backward, numpy_batch_norm_forward,
                         numpy_batch_norm_inference)
from .timing import MIN_TIME, REPEATS, measure

Call = Callable[[], object]
RowResult = Dict[str, Any]


def import_torch() -> Optional[ModuleType]:
    """Return the ``torch`` module, or None when PyTorch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


class _Buffers(Dict[str, np.ndarray]):
    """Output buffers by implementation ("bnfast", "numpy", "torch", "copy"), each allocated
    and touched (filled with ones) when first asked for, before anything is timed."""

    def __init__(self, like: np.ndarray) -> None:
        super().__init__()
        self.like = like

    def __missing__(self, name: str) -> np.ndarray:
        buffer = self[name] = np.ones_like(self.like)
        return buffer


class Problem:
    """The arrays of one :class:`Case`, and zero-argument callables that time each op.

    Every implementation gets its own output buffer (allocated and touched when its first
    callable is made, so that no page fault is timed) and its own copy of the running
    statistics.

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

    def __init__(self, case: Case, threads: int,
                 copy_pool: Optional[ThreadPoolExecutor] = None, seed: int = 0) -> None:
        import bnfast

        self.bnfast = bnfast
        self.case = case
        self.threads = threads
        self.copy_pool = copy_pool
        # Half data: NumPy's float64 statistics (bnfast may not accept bfloat16 yet).
        moments = None if case.dtype in HALF_DTYPES else bnfast.moments
        inputs = make_inputs(case, seed, moments=moments)
        assert inputs.dy is not None and inputs.mean is not None and inputs.invstd is not None
        self.x, self.dy, self.gamma, self.beta = inputs.x, inputs.dy, inputs.gamma, inputs.beta
        self.mean, self.invstd = inputs.mean, inputs.invstd
        self.running_mean0, self.running_var0 = inputs.running_mean, inputs.running_var
        self.out = _Buffers(self.x)
        self.running = {
            name: (self.running_mean0.copy(), self.running_var0.copy())
            for name in ("bnfast", "numpy", "torch")
        }
        self._torch_state: Optional[Dict[str, Any]] = None

    def bnfast_call(self, op: str, n_threads: Any = "row", out: bool = True) -> Call:
        """Return a callable running bnfast's ``op`` with ``out=`` and ``n_threads``.

        ``n_threads`` defaults to the row's threads (``None``: bnfast's default); with
        ``out=False`` every call allocates its result, as a user's call without ``out=``.
        """
        bn, case = self.bnfast, self.case
        threads = self.threads if n_threads == "row" else n_threads
        out_array = self.out["bnfast"] if out else None
        x, dy, gamma, beta = self.x, self.dy, self.gamma, self.beta
        rm, rv = self.running["bnfast"]
        if op == "train":
            return lambda: bn.batch_norm_forward(
                x, gamma, beta, axis=case.axis, eps=EPS, running_mean=rm, running_var=rv,
                momentum=MOMENTUM, out=out_array, n_threads=threads)
        if op == "infer":
            return lambda: bn.batch_norm_inference(
                x, rm, rv, gamma, beta, axis=case.axis, eps=EPS, out=out_array,
                n_threads=threads)
        mean, invstd = self.mean, self.invstd
        return lambda: bn.batch_norm_backward(
            dy, x, mean, invstd, gamma, axis=case.axis, out=out_array, n_threads=threads)

    def numpy_call(self, op: str) -> Call:
        """Return a callable running the NumPy twin of ``op``."""
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

    def _torch_tensors(self, torch: ModuleType) -> Dict[str, Any]:
        if self._torch_state is None:
            def view(a: np.ndarray) -> Any:
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
            s["saved_mean"] = torch.from_numpy(self.mean.astype(self.x.dtype))
            s["saved_invstd"] = torch.from_numpy(self.invstd.astype(self.x.dtype))
            self._torch_state = s
        return self._torch_state

    def torch_calls(self, op: str, torch: ModuleType) -> Dict[str, Call]:
        """Return ``{api name: callable}``: PyTorch's ways of running ``op``."""
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

    def copy_calls(self) -> Dict[str, Call]:
        """Return ``{name: callable}`` streaming copies of an array of x's size."""
        src, dst = self.x.reshape(-1), self.out["copy"].reshape(-1)
        calls: Dict[str, Call] = {"np.copyto": lambda: np.copyto(dst, src)}
        pool = self.copy_pool
        if pool is not None and self.threads > 1:
            srcs = np.array_split(src, self.threads)
            dsts = np.array_split(dst, self.threads)
            calls[f"np.copyto x{self.threads} threads"] = lambda: list(
                pool.map(np.copyto, dsts, srcs))
        return calls

    def agrees_with_numpy(self, op: str) -> bool:
        """Whether bnfast and the NumPy twin agree on ``op`` (a gross sanity check).

        Both run once from the same running statistics; the results must match to 1e-2
        (float32) or 1e-6 (float64) of the output's largest magnitude: far above the
        rounding error of either (a few units of the working precision times the
        reduction length's logarithm), far below the size of any real mistake.
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


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def run_rows(grid: List[Row], threads: int, repeats: int = REPEATS, min_time: float = MIN_TIME,
             progress: Optional[TextIO] = None, warmup: bool = True,
             check: bool = True) -> List[RowResult]:
    """Measure every ``(case, op)`` of a grid.

    Parameters
    ----------
    grid : list of (Case, str)
    threads : int
    repeats, min_time, warmup
        See :func:`bnfast.bench.timing.measure`.
    progress : file-like, optional
        Where to write one line per row as it starts (``[3/33] backward NC ...``).
    check : bool
        Check that bnfast and the NumPy twin agree on each row (``agrees_with_numpy``;
        None when not checked).

    Returns
    -------
    list of dict
        One dict per row: case and op, the timings of every implementation (``times``), the
        reported medians ``bnfast_s``, ``numpy_s``, ``torch_s`` (None without PyTorch),
        ``floor_s``, their ratios, and ``missed``: the development targets the row misses
        (:func:`bnfast.bench.targets.missed_targets`).
    """
    torch = import_torch()
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
            rows.append(_measure_row(problem, op, torch, repeats, min_time, warmup, check))
    finally:
        if pool is not None:
            pool.shutdown()
        if torch is not None:
            torch.set_num_threads(torch_threads)
    return rows


def _measure_row(problem: Problem, op: str, torch: Optional[ModuleType], repeats: int,
                 min_time: float, warmup: bool, check: bool) -> RowResult:
    case = problem.case
    agrees = problem.agrees_with_numpy(op) if check else None
    calls = {"bnfast": problem.bnfast_call(op), "numpy": problem.numpy_call(op)}
    torch_names = []
    if torch is not None:
        for api, fn in problem.torch_calls(op, torch).items():
            calls["torch " + api] = fn
            torch_names.append("torch " + api)
    copies = problem.copy_calls()
    calls.update(copies)
    times = measure(calls, repeats, min_time, warmup=warmup)
    median = {name: float(t["median"]) for name, t in times.items()}

    torch_s = torch_api = None
    if torch_names:
        best = min(torch_names, key=median.__getitem__)
        torch_s, torch_api = median[best], best[len("torch "):]
    copy_s = min(median[name] for name in copies)
    row: RowResult = {
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
    row["missed"] = _targets.missed_targets(row)
    return row
