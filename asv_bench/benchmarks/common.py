"""Parameter grid and inputs shared by every benchmark suite.

The inputs come from ``bnfast/bench/cases.py`` and the NumPy baseline from
``bnfast/bench/numpy_twin.py``, the same code ``python -m bnfast bench`` times. Both are
loaded from this checkout by file path, not imported from the bnfast that asv installed:
asv times old commits with this suite, and those commits' bnfast may not have (or may
have older) versions of them. This way every commit is timed on the same arrays. Both
files need NumPy only.
"""

import importlib.util
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import bnfast

_BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "bnfast", "bench")


def _load(name):
    """This checkout's ``bnfast/bench/<name>.py`` (or the installed one, if there is none)."""
    path = os.path.join(_BENCH_DIR, name + ".py")
    if not os.path.exists(path):  # the suite was copied away from its checkout
        return importlib.import_module("bnfast.bench." + name)
    spec = importlib.util.spec_from_file_location("_asv_bnfast_bench_" + name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


cases = _load("cases")
numpy_twin = _load("numpy_twin")
spinners = _load("spinners")

EPS = cases.EPS
MOMENTUM = cases.MOMENTUM

#: BNFAST_ASV_SMOKE=1 (tools/asv_smoke.sh): tiny arrays and one thread count, so that every
#: benchmark runs once in seconds. Never for figures.
SMOKE = os.environ.get("BNFAST_ASV_SMOKE", "") == "1"

#: (N, C) batches: a small one (Python overhead dominates) and a 16 MiB float32 one.
SHAPES_2D = [(256, 64), (4096, 1024)]
#: (N, C, H, W) batches (24.5 and 12.25 MiB in float32), stored NCHW or NHWC.
SHAPES_4D = [(32, 64, 56, 56), (64, 256, 14, 14)]
LAYOUTS = ["NCHW", "NHWC"]
DTYPES = ["float32", "float64"]
#: bnfast's function names; the peers run their equivalent of each.
OPS = ["batch_norm_forward", "batch_norm_inference", "batch_norm_backward"]
THREADS = [1, 2]
#: (shape, layout) rows of the suites that take one of each kind: a small and a wide
#: (N, C) batch, NCHW and NHWC.
SHAPE_LAYOUTS = [((256, 64), "NC"), ((4096, 1024), "NC"), ((32, 64, 56, 56), "NCHW"),
                 ((32, 64, 56, 56), "NHWC")]
SCALER_SHAPE = cases.SCALER_SHAPE
#: (shape, layout) rows of the busy-machine suite (bench_threads.py): (N, C) float32 of 0.25
#: and 1 MiB and a 24.5 MiB NCHW batch, rows of ``python -m bnfast bench --busy``.
BUSY_SHAPE_LAYOUTS = [((1024, 64), "NC"), ((4096, 64), "NC"), ((32, 64, 56, 56), "NCHW")]
#: Spinning processes per usable CPU beside the timed calls (bench_threads.py).
BUSY_PER_CORE = [0, 1, 2]
#: (shape, layout) rows of the half-precision suite (bench_half.py): 8 and 12.25 MiB in
#: float16, an (N, C), an NCHW and an NHWC batch.
HALF_SHAPE_LAYOUTS = [((4096, 1024), "NC"), ((32, 64, 56, 56), "NCHW"),
                      ((32, 64, 56, 56), "NHWC")]
HALF_DTYPES = ["float32", "float16", "bfloat16"]
#: The sparse scaler row: a CSR (rows, columns) matrix of this density, fitted whole and in
#: SPARSE_CHUNKS row blocks (tools/bench_sparse_scaler.py takes the same one).
SPARSE_SCALER = ((200000, 2000), 0.005)
SPARSE_CHUNKS = 10

if SMOKE:
    SHAPES_2D = [(64, 8)]
    SHAPES_4D = [(2, 8, 5, 5)]
    THREADS = [2]
    SHAPE_LAYOUTS = [((64, 8), "NC"), ((2, 8, 5, 5), "NCHW"), ((2, 8, 5, 5), "NHWC")]
    SCALER_SHAPE = (512, 16)
    BUSY_SHAPE_LAYOUTS = [((64, 8), "NC"), ((2, 8, 5, 5), "NCHW")]
    BUSY_PER_CORE = [0, 1]
    HALF_SHAPE_LAYOUTS = SHAPE_LAYOUTS
    SPARSE_SCALER = ((2000, 50), 0.05)


def Inputs(shape, layout, dtype, op):
    """The arrays one benchmark call needs (``cases.make_inputs``), plus a touched ``out``.

    ``dy``, ``mean`` and ``invstd`` only for ``batch_norm_backward``.
    """
    case = cases.Case(tuple(shape), layout, dtype)
    d = cases.make_inputs(case, backward=op == "batch_norm_backward")
    d.layout, d.axis = layout, case.axis
    d.out = d.x.copy()  # a copy touches every page: no page fault is timed
    return d


def bnfast_call(d, op, n_threads, out=True):
    """A zero-argument callable running ``bnfast.<op>`` on :func:`Inputs` ``d``.

    With ``out=False`` every call allocates its result, as a user's call without ``out=``.
    """
    o = d.out if out else None
    if op == "batch_norm_forward":
        return partial(bnfast.batch_norm_forward, d.x, d.gamma, d.beta, axis=d.axis, eps=EPS,
                       running_mean=d.running_mean, running_var=d.running_var,
                       momentum=MOMENTUM, out=o, n_threads=n_threads)
    if op == "batch_norm_inference":
        return partial(bnfast.batch_norm_inference, d.x, d.running_mean, d.running_var,
                       d.gamma, d.beta, axis=d.axis, eps=EPS, out=o, n_threads=n_threads)
    return partial(bnfast.batch_norm_backward, d.dy, d.x, d.mean, d.invstd, d.gamma,
                   axis=d.axis, out=o, n_threads=n_threads)


def numpy_call(d, op):
    """A zero-argument callable running the NumPy twin of ``bnfast.<op>``."""
    if op == "batch_norm_forward":
        return partial(numpy_twin.numpy_batch_norm_forward, d.x, d.gamma, d.beta,
                       d.running_mean, d.running_var, axis=d.axis, eps=EPS,
                       momentum=MOMENTUM, out=d.out)
    if op == "batch_norm_inference":
        return partial(numpy_twin.numpy_batch_norm_inference, d.x, d.running_mean,
                       d.running_var, d.gamma, d.beta, axis=d.axis, eps=EPS, out=d.out)
    return partial(numpy_twin.numpy_batch_norm_backward, d.dy, d.x, d.mean, d.invstd,
                   d.gamma, axis=d.axis, out=d.out)


class TorchTensors:
    """Zero-copy torch views of :func:`Inputs` (NHWC seen as NCHW, channels_last)."""

    def __init__(self, torch, d):
        def view(a):
            t = torch.from_numpy(a)
            return t.permute(0, 3, 1, 2) if d.layout == "NHWC" else t

        self.x, self.out = view(d.x), view(d.out)
        self.weight, self.bias = torch.from_numpy(d.gamma), torch.from_numpy(d.beta)
        self.running_mean = torch.from_numpy(d.running_mean)
        self.running_var = torch.from_numpy(d.running_var)
        self.save_mean = torch.empty(len(d.gamma), dtype=self.x.dtype)
        self.save_invstd = torch.empty(len(d.gamma), dtype=self.x.dtype)
        if d.dy is not None:
            self.dy = view(d.dy)
            self.mean = torch.from_numpy(d.mean.astype(d.x.dtype))
            self.invstd = torch.from_numpy(d.invstd.astype(d.x.dtype))


class ThreadedCopy:
    """Copy ``src`` into ``dst`` with ``n_threads`` threads, each ``np.copyto`` of a slice."""

    def __init__(self, dst, src, n_threads):
        import numpy as np

        self.copyto = np.copyto
        self.dsts = np.array_split(dst.reshape(-1), n_threads)
        self.srcs = np.array_split(src.reshape(-1), n_threads)
        self.pool = ThreadPoolExecutor(n_threads)

    def __call__(self):
        futures = [self.pool.submit(self.copyto, d, s) for d, s in zip(self.dsts, self.srcs)]
        for future in futures:
            future.result()

    def close(self):
        self.pool.shutdown()
