"""The benchmark's grid of cases and the arrays each case is timed on.

Shared by ``python -m bnfast bench`` and the asv suite (``asv_bench/benchmarks/common.py``),
so that both time the same inputs. This module needs NumPy only: the asv suite loads it
by file path, so that every commit it times gets the same inputs, whatever that commit's
bnfast contains (see ``asv_bench/benchmarks/common.py``).

How performance is measured is described in ``docs/design.md`` §6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
from numpy.typing import NDArray

#: ``eps`` and ``momentum`` of every call (PyTorch's defaults).
EPS = 1e-5
MOMENTUM = 0.1

#: The bench's short op names; asv names them after bnfast's functions (:data:`FUNCTIONS`).
OPS = ("train", "infer", "backward")
FUNCTIONS = {"train": "batch_norm_forward", "infer": "batch_norm_inference",
             "backward": "batch_norm_backward"}

#: Streaming copies of the array that each op costs at the very least: training forward
#: reads x twice and writes y, inference reads x and writes y, backward reads x and dy
#: twice and writes dx.
PASSES = {"train": 1.5, "infer": 1.0, "backward": 2.5}

#: The scaler row: ``BatchNormScaler().fit_transform`` against ``StandardScaler``.
SCALER_SHAPE = (65536, 256)

DTYPE_ABBREV = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16"}

#: Half-precision dtypes: their per-channel vectors and running statistics are float32, as
#: in PyTorch. ``bfloat16`` is ``ml_dtypes.bfloat16`` (an optional dependency).
HALF_DTYPES = ("float16", "bfloat16")
_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


def resolve_dtype(name: str) -> np.dtype:
    """The NumPy dtype of a case's dtype name.

    ``"bfloat16"`` imports ml_dtypes (ImportError when it is not installed), which
    registers the dtype with NumPy; nothing else here needs it.
    """
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def param_dtype(name: str) -> np.dtype:
    """The dtype of gamma, beta and the running statistics of a case of dtype ``name``."""
    return np.dtype(np.float32) if name in HALF_DTYPES else np.dtype(name)


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
    dtype : {"float32", "float64", "float16", "bfloat16"}
        Working dtype (``bfloat16``: ``ml_dtypes.bfloat16``).
    """

    shape: Tuple[int, ...]
    layout: str
    dtype: str

    @property
    def axis(self) -> int:
        """Channel axis passed to bnfast."""
        return -1 if self.layout == "NHWC" else 1

    @property
    def channels(self) -> int:
        """Number of channels, ``shape[1]``."""
        return self.shape[1]

    @property
    def stored_shape(self) -> Tuple[int, ...]:
        """Shape of the NumPy array as stored in memory."""
        if self.layout == "NHWC":
            n, c, *spatial = self.shape
            return (n, *spatial, c)
        return tuple(self.shape)

    @property
    def nbytes(self) -> int:
        """Size of one array of the case, in bytes."""
        return math.prod(self.shape) * _ITEMSIZE[self.dtype]

    def label(self) -> str:
        """Short description, e.g. ``NCHW (32,64,56,56) f32``."""
        dims = ",".join(str(d) for d in self.shape)
        return f"{self.layout} ({dims}) {DTYPE_ABBREV.get(self.dtype, self.dtype)}"


Row = Tuple[Case, str]


def full_grid() -> List[Row]:
    """Return the ``(case, op)`` rows of the full table (33 rows)."""
    cases = [Case(s, "NC", "float32") for s in [(65536, 256), (4096, 1024), (256, 64)]]
    for shape in [(32, 64, 56, 56), (64, 256, 14, 14), (8, 32, 112, 112)]:
        cases += [Case(shape, layout, "float32") for layout in ("NCHW", "NHWC")]
    cases += [Case((32, 64, 56, 56), layout, "float64") for layout in ("NCHW", "NHWC")]
    return [(case, op) for case in cases for op in OPS]


def quick_grid() -> List[Row]:
    """Return the rows of ``--quick`` (12 rows): one case of each kind, smaller arrays.

    A small batch, a wide one and an NCHW and an NHWC batch of 4-6 MiB: big enough to be
    timed as arrays (1 MiB or more), small enough that the whole table takes a few seconds.
    The full grid's 16-64 MiB arrays are the figures to quote.
    """
    cases = [
        Case((256, 64), "NC", "float32"),
        Case((1024, 1024), "NC", "float32"),
        Case((8, 64, 56, 56), "NCHW", "float32"),
        Case((8, 64, 56, 56), "NHWC", "float32"),
    ]
    return [(case, op) for case in cases for op in OPS]


def short_grid() -> List[Row]:
    """Return the four rows of the table that ``python -m bnfast`` prints."""
    nchw = Case((32, 64, 56, 56), "NCHW", "float32")
    return [
        (Case((256, 64), "NC", "float32"), "train"),
        (Case((65536, 256), "NC", "float32"), "train"),
        (nchw, "train"),
        (nchw, "backward"),
    ]


@dataclass
class Inputs:
    """The arrays of one :class:`Case` (see :func:`make_inputs`).

    ``x`` and ``dy`` have the case's stored shape and dtype; the others have shape (C,),
    in the case's dtype (float32 for half-precision data, :func:`param_dtype`). ``mean``
    and ``invstd`` (float64) are the batch statistics of ``x`` that a training forward
    saves for backward; ``dy``, ``mean`` and ``invstd`` are None unless asked for.
    """

    case: Case
    x: NDArray[np.floating]
    gamma: NDArray[np.floating]
    beta: NDArray[np.floating]
    running_mean: NDArray[np.floating]
    running_var: NDArray[np.floating]
    dy: Optional[NDArray[np.floating]] = None
    mean: Optional[NDArray[np.float64]] = None
    invstd: Optional[NDArray[np.float64]] = None


Moments = Callable[..., Tuple[NDArray[np.float64], NDArray[np.float64]]]


def make_inputs(case: Case, seed: int = 0, backward: bool = True,
                moments: Optional[Moments] = None) -> Inputs:
    """Draw the arrays of a case: x ~ N(0.5, 2^2), dy ~ N(0, 1), parameters near 1 and 0.

    Parameters
    ----------
    case : Case
    seed : int
        Seed of ``numpy.random.default_rng``; the same seed gives the same arrays.
    backward : bool
        Also draw ``dy`` and compute the batch statistics ``mean`` and ``invstd`` (in
        float64, as bnfast's forward returns them).
    moments : callable, optional
        ``moments(x, axis=axis)`` returning the float64 mean and biased variance per
        channel, e.g. ``bnfast.moments`` (faster); default: NumPy in float64.

    Returns
    -------
    Inputs
    """
    dtype = resolve_dtype(case.dtype)
    # NumPy draws normal numbers in float32 or float64 only: half data is drawn in float32.
    drawn = dtype if case.dtype in ("float32", "float64") else np.dtype(np.float32)
    c = case.channels
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.stored_shape, dtype=drawn)
    x *= 2
    x += 0.5
    x = x.astype(dtype, copy=False)
    params = param_dtype(case.dtype)
    gamma = rng.uniform(0.5, 1.5, c).astype(params)
    beta = rng.uniform(-0.5, 0.5, c).astype(params)
    # Running buffers in the parameters' dtype, like a PyTorch BatchNorm module's.
    running_mean = rng.uniform(0.0, 1.0, c).astype(params)
    running_var = rng.uniform(3.0, 5.0, c).astype(params)
    inputs = Inputs(case, x, gamma, beta, running_mean, running_var)
    if backward:
        dy = rng.standard_normal(case.stored_shape, dtype=drawn)
        inputs.dy = dy.astype(dtype, copy=False)
        if moments is not None:
            mean, var = moments(x, axis=case.axis)
        else:
            axes = tuple(a for a in range(x.ndim) if a != case.axis % x.ndim)
            mean = x.mean(axis=axes, dtype=np.float64)
            var = x.var(axis=axes, dtype=np.float64)
        inputs.mean, inputs.invstd = mean, 1.0 / np.sqrt(var + EPS)
    return inputs


def scaler_input(shape: Tuple[int, int] = SCALER_SHAPE, seed: int = 0) -> NDArray[np.float32]:
    """The float32 batch of the scaler row: N(5, 3^2) features."""
    X = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    X *= 3
    X += 5
    return X
