"""What this build of bnfast is: version, OpenMP, threads, compiler flags."""
from __future__ import annotations

import platform
import sys
from typing import TextIO

import numpy as np

from . import _kernels
from ._version import __version__


def openmp_enabled() -> bool:
    """True when the kernels were compiled with OpenMP: the thread count the user sets with
    OMP_NUM_THREADS or threadpoolctl then applies (the work runs on bnfast's own pool on
    POSIX systems, or in OpenMP loops on Windows, where a build without OpenMP runs on one
    thread)."""
    return _kernels.openmp_enabled()


def _threads_line() -> str:
    """The default thread count, where it comes from, and what runs the threads."""
    from . import _cpus
    n = _kernels.default_threads()
    procs = _cpus.affinity_count()
    if _cpus.explicit_thread_count():
        why = "set by OMP_NUM_THREADS"
    elif n < _kernels.max_threads():
        why = f"this process's CPU quota, of {procs} processors"
    elif _kernels.max_threads() < procs:
        why = f"the limit set by threadpoolctl or omp_set_num_threads, of {procs} processors"
    else:
        why = "the processors this process may run on"
    pool = ("bnfast's pool: a call never waits for a thread that is not running"
            if _kernels.pool_enabled() else "OpenMP" if openmp_enabled() else "one thread")
    return f"{n} by default: {why}; run by {pool}"


def config() -> dict[str, str | int]:
    """The build and runtime configuration as a dict (what ``show_config`` prints)."""
    flags = _kernels.compile_flags()
    simd = f"{_kernels.simd_clone()} run here; half precision: {_kernels.half_loops()}"
    if "-march=native" in flags:
        simd += " (-march=native: this CPU family only)"
    return {
        "bnfast": __version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": f"{sys.platform}-{platform.machine()}",
        "OpenMP": "on" if openmp_enabled() else "off",
        "threads": _threads_line(),
        "compile flags": flags,
        "SIMD": simd,
    }


def show_config(file: TextIO | None = None) -> None:
    """Print bnfast's version, OpenMP on/off, the default thread count and the build flags.

    Parameters
    ----------
    file : file-like, optional
        Where to print (default ``sys.stdout``).
    """
    out = sys.stdout if file is None else file
    for key, value in config().items():
        print(f"{key + ':':15s}{value}", file=out)
