"""Parameter grid and inputs shared by every benchmark suite."""

from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np

import bnfast

EPS = 1e-5
MOMENTUM = 0.1

#: (N, C) batches: a small one (Python overhead dominates) and a 16 MiB float32 one.
SHAPES_2D = [(256, 64), (4096, 1024)]
#: (N, C, H, W) batches (24.5 and 12.25 MiB in float32), stored NCHW or NHWC.
SHAPES_4D = [(32, 64, 56, 56), (64, 256, 14, 14)]
LAYOUTS = ["NCHW", "NHWC"]
DTYPES = ["float32", "float64"]
#: bnfast's function names; the peers run their equivalent of each.
OPS = ["batch_norm_forward", "batch_norm_inference", "batch_norm_backward"]
THREADS = [1, 2]


class Inputs:
    """The arrays one benchmark call needs, allocated and touched in setup.

    Parameters
    ----------
    shape : tuple of int
        Logical shape, (N, C) or (N, C, H, W).
    layout : {"NC", "NCHW", "NHWC"}
        NHWC arrays are stored as (N, H, W, C) and normalized over axis -1.
    dtype : str
    op : str
        One of :data:`OPS`; only ``batch_norm_backward`` gets ``dy``, ``mean`` and ``invstd``.
    """

    def __init__(self, shape, layout, dtype, op):
        channels = shape[1]
        self.layout = layout
        self.axis = -1 if layout == "NHWC" else 1
        stored = (shape[0], *shape[2:], channels) if layout == "NHWC" else shape
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal(stored, dtype=dtype)
        self.x *= 2
        self.x += 0.5
        self.gamma = rng.uniform(0.5, 1.5, channels).astype(dtype)
        self.beta = rng.uniform(-0.5, 0.5, channels).astype(dtype)
        # Running buffers in the working dtype, like a PyTorch BatchNorm module's.
        self.running_mean = rng.uniform(0.0, 1.0, channels).astype(dtype)
        self.running_var = rng.uniform(3.0, 5.0, channels).astype(dtype)
        self.out = np.zeros_like(self.x)  # zeros_like touches every page: no fault is timed
        if op == "batch_norm_backward":
            self.dy = rng.standard_normal(stored, dtype=dtype)
            mean, var = bnfast.moments(self.x, axis=self.axis)
            self.mean, self.invstd = mean, 1.0 / np.sqrt(var + EPS)


def bnfast_call(d, op, n_threads):
    """Return a zero-argument callable running ``bnfast.<op>`` on :class:`Inputs` ``d``."""
    if op == "batch_norm_forward":
        return partial(bnfast.batch_norm_forward, d.x, d.gamma, d.beta, axis=d.axis, eps=EPS,
                       running_mean=d.running_mean, running_var=d.running_var,
                       momentum=MOMENTUM, out=d.out, n_threads=n_threads)
    if op == "batch_norm_inference":
        return partial(bnfast.batch_norm_inference, d.x, d.running_mean, d.running_var,
                       d.gamma, d.beta, axis=d.axis, eps=EPS, out=d.out, n_threads=n_threads)
    return partial(bnfast.batch_norm_backward, d.dy, d.x, d.mean, d.invstd, d.gamma,
                   axis=d.axis, out=d.out, n_threads=n_threads)


def numpy_call(d, op):
    """Return a zero-argument callable running the plain NumPy twin of ``bnfast.<op>``."""
    from bnfast import bench

    if op == "batch_norm_forward":
        return partial(bench.numpy_batch_norm_forward, d.x, d.gamma, d.beta, d.running_mean,
                       d.running_var, axis=d.axis, eps=EPS, momentum=MOMENTUM, out=d.out)
    if op == "batch_norm_inference":
        return partial(bench.numpy_batch_norm_inference, d.x, d.running_mean, d.running_var,
                       d.gamma, d.beta, axis=d.axis, eps=EPS, out=d.out)
    return partial(bench.numpy_batch_norm_backward, d.dy, d.x, d.mean, d.invstd, d.gamma,
                   axis=d.axis, out=d.out)


class TorchTensors:
    """Zero-copy torch views of :class:`Inputs` (NHWC seen as NCHW, channels_last)."""

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
        if hasattr(d, "dy"):
            self.dy = view(d.dy)
            self.mean = torch.from_numpy(d.mean.astype(d.x.dtype))
            self.invstd = torch.from_numpy(d.invstd.astype(d.x.dtype))


class ThreadedCopy:
    """Copy ``src`` into ``dst`` with ``n_threads`` threads, each ``np.copyto`` of a slice."""

    def __init__(self, dst, src, n_threads):
        self.dsts = np.array_split(dst.reshape(-1), n_threads)
        self.srcs = np.array_split(src.reshape(-1), n_threads)
        self.pool = ThreadPoolExecutor(n_threads)

    def __call__(self):
        for future in [self.pool.submit(np.copyto, d, s) for d, s in zip(self.dsts, self.srcs)]:
            future.result()

    def close(self):
        self.pool.shutdown()
