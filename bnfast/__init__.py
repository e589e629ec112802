"""bnfast: batch normalization for NumPy on the CPU.

Blocked Welford/Chan kernels (Cython + OpenMP) behind a NumPy-style functional API.
See ``bnfast.show_config()`` for how this copy was built.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__
from ._functional import (
    batch_norm_backward,
    batch_norm_forward,
    batch_norm_inference,
    merge_moments,
    moments,
    moments_state,
)
from ._variants import batch_renorm_forward
from ._config import openmp_enabled, show_config
from . import _cpus
from .layer import BatchNorm, fold_batch_norm

_cpus.configure()  # the default thread count: the process's CPU share

if TYPE_CHECKING:  # for type checkers only: at run time __getattr__ imports it on first use
    from .preprocessing import BatchNormScaler

__all__ = [
    "__version__",
    "moments",
    "moments_state",
    "merge_moments",
    "batch_norm_forward",
    "batch_norm_inference",
    "batch_norm_backward",
    "batch_renorm_forward",
    "show_config",
    "openmp_enabled",
    "BatchNorm",
    "fold_batch_norm",
    "BatchNormScaler",
]


if not TYPE_CHECKING:  # hidden from type checkers, so that a misspelt name is an error there
    def __getattr__(name: str) -> type[BatchNormScaler]:
        # Lazy: bnfast.preprocessing imports scikit-learn (optional, slow to import).
        if name == "BatchNormScaler":
            from .preprocessing import BatchNormScaler
            return BatchNormScaler
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"BatchNormScaler"})
