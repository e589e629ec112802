# Typed stub of the compiled module bnfast._kernels (checked by mypy.stubtest).
#
# Every operation keeps the kernel contract (docs/design.md §4): it takes Python objects,
# computes its plain case, and returns None for anything else (never raising).
from typing import Any

import numpy as np
import numpy.typing as npt

_F = npt.NDArray[np.floating[Any]]
_F64 = npt.NDArray[np.float64]

def forward_train(
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
    activation: object = None,
    residual: object = None,
) -> tuple[_F, _F64, _F64] | None: ...
def forward_infer(
    x: object,
    running_mean: object,
    running_var: object,
    gamma: object,
    beta: object,
    axis: object,
    eps: object,
    out: object,
    n_threads: object,
    activation: object = None,
    residual: object = None,
) -> _F | None: ...
def backward(
    dy: object,
    x: object,
    mean: object,
    invstd: object,
    gamma: object,
    axis: object,
    out: object,
    n_threads: object,
    activation: object = None,
    y: object = None,
    return_dresidual: object = False,
) -> tuple[_F, _F64, _F64] | tuple[_F, _F64, _F64, _F] | None: ...
def backward_sums(
    dy: object,
    x: object,
    mean: object,
    invstd: object,
    axis: object,
    n_threads: object,
    activation: object = None,
    y: object = None,
) -> tuple[_F64, _F64] | None: ...
def backward_input(
    dy: object,
    x: object,
    mean: object,
    invstd: object,
    gamma: object,
    dgamma: object,
    dbeta: object,
    count: object,
    axis: object,
    out: object,
    n_threads: object,
    activation: object = None,
    y: object = None,
    return_dresidual: object = False,
) -> _F | tuple[_F, _F] | None: ...
def moments(x: object, axis: object, n_threads: object) -> tuple[_F64, _F64] | None: ...
def moments_masked(
    x: object, weights: object, n_threads: object
) -> tuple[_F64, _F64, _F64] | None: ...
def merge_states(
    count: object, mean: object, m2: object, count_b: object, mean_b: object, m2_b: object
) -> tuple[_F64, _F64, _F64] | None: ...
def update_running(buffer: object, batch: object, momentum: object, factor: object) -> _F | None: ...
def sparse_moments(
    values: object, indices: object, indptr: object, shape: object, csr: object,
    weights: object, n_threads: object
) -> tuple[_F64, _F64, _F64, int, int] | None: ...
def sparse_scale(
    values: object, indices: object, factors: object, out: object, n_threads: object
) -> tuple[_F, int] | None: ...
def plan(outer: int, C: int, inner: int, itemsize: int = 4) -> dict[str, int]: ...
def set_stream_min_bytes(nbytes: int) -> int: ...
def openmp_enabled() -> bool: ...
def max_threads() -> int: ...
def default_threads() -> int: ...
def set_cpus(procs: int, share: int, explicit_count: int) -> None: ...
def pool_enabled() -> bool: ...
def pool_helpers() -> int: ...
def pool_backoffs() -> int: ...
def pool_helped() -> int: ...
def simd_clone() -> str: ...
def half_loops() -> str: ...
def use_baseline_half_loops(baseline: bool) -> str: ...
def set_bfloat16(dtype: object, bits_dtype: object) -> None: ...
def compile_flags() -> str: ...
