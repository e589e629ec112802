# Typed stub of the compiled module bnfast._kernels (checked by mypy.stubtest).
from typing import Any

import numpy as np
import numpy.typing as npt

_F = npt.NDArray[np.floating[Any]]
_F64 = npt.NDArray[np.float64]

def moments(x: _F, mean: _F64, m2: _F64, n_threads: int) -> None: ...
def forward_train(
    x: _F,
    out: _F,
    gamma: _F64 | None,
    beta: _F64 | None,
    eps: float,
    mean: _F64,
    invstd: _F64,
    running_mean: _F | None,
    running_var: _F | None,
    momentum: float,
    n_threads: int,
) -> None: ...
def forward_train_fast(
    x: object,
    gamma: object,
    beta: object,
    axis: object,
    eps: object,
    running_mean: object,
    running_var: object,
    momentum: object,
    out: object,
    n_threads: object,
) -> tuple[_F, _F64, _F64] | None: ...
def forward_infer_fast(
    x: object,
    running_mean: object,
    running_var: object,
    gamma: object,
    beta: object,
    axis: object,
    eps: object,
    out: object,
    n_threads: object,
) -> _F | None: ...
def backward_fast(
    dy: object,
    x: object,
    mean: object,
    invstd: object,
    gamma: object,
    axis: object,
    out: object,
    n_threads: object,
) -> tuple[_F, _F64, _F64] | None: ...
def forward_infer(
    x: _F,
    out: _F,
    running_mean: _F64,
    running_var: _F64,
    gamma: _F64 | None,
    beta: _F64 | None,
    eps: float,
    n_threads: int,
) -> None: ...
def backward(
    dy: _F,
    x: _F,
    dx: _F,
    mean: _F64,
    invstd: _F64,
    gamma: _F64 | None,
    dgamma: _F64,
    dbeta: _F64,
    n_threads: int,
) -> None: ...
def merge_states(
    count: _F64, mean: _F64, m2: _F64, count_b: _F64, mean_b: _F64, m2_b: _F64
) -> None: ...
def plan(outer: int, C: int, inner: int, itemsize: int = 4) -> dict[str, int]: ...
def set_stream_min_bytes(nbytes: int) -> int: ...
def openmp_enabled() -> bool: ...
def max_threads() -> int: ...
def compile_flags() -> str: ...
def moments_masked(
    x: _F, weights: _F64 | None, count: _F64, mean: _F64, m2: _F64, n_threads: int
) -> None: ...
