"""The scaler figure: ``BatchNormScaler().fit_transform`` against ``StandardScaler``'s.

Measured as a user meets it: a fresh process, a float32 ``(65536, 256)`` batch, one call of
each. The first call in a process pays for things a benchmark loop never sees (faulting in
the 64 MiB output, starting thread pools), and that cost varies a lot from process to
process, so the figure is a distribution over ``n`` fresh processes: the median and the
min-max range of each time and of their ratio, never the best run. Half the processes call
BatchNormScaler first, half StandardScaler first.

Each child process also reports the minor page faults of each call (``getrusage``) and the
time of a second call of each (whose fresh output usually gets the physical pages that the
first call's output released); ``tools/scaler_first_call.py`` breaks the first call down.

One child by hand: ``python -c "from bnfast.bench.scaler import main; main()"``.
How performance is measured: ``docs/design.md`` §6.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .cases import SCALER_SHAPE

Result = Dict[str, Any]


def _minor_faults() -> int:
    try:
        import resource
    except ImportError:  # not on POSIX
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _one_call(fn: Callable[[], object]) -> Tuple[float, int]:
    faults = _minor_faults()
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    return elapsed, _minor_faults() - faults


def child(threads: Optional[int], bnfast_first: bool,
          shape: Tuple[int, int] = SCALER_SHAPE) -> Result:
    """Time one call of each scaler in this process (meant to be a fresh one).

    Returns
    -------
    dict
        ``bnfast_s``, ``sklearn_s`` (first calls), ``bnfast_faults``, ``sklearn_faults``
        (minor page faults during each first call), ``bnfast_warm_s``, ``sklearn_warm_s``
        (second calls) and ``import_s`` (importing bnfast and scikit-learn).
    """
    t0 = time.perf_counter()
    from sklearn.preprocessing import StandardScaler

    from bnfast.preprocessing import BatchNormScaler

    import_s = time.perf_counter() - t0
    from .cases import scaler_input

    X = scaler_input(shape)
    calls = {"bnfast": lambda: BatchNormScaler(n_threads=threads).fit_transform(X),
             "sklearn": lambda: StandardScaler().fit_transform(X)}
    order = ["bnfast", "sklearn"] if bnfast_first else ["sklearn", "bnfast"]
    result: Result = {"import_s": import_s, "bnfast_first": bnfast_first}
    for name in order:
        result[f"{name}_s"], result[f"{name}_faults"] = _one_call(calls[name])
    for name in order:
        result[f"{name}_warm_s"], result[f"{name}_warm_faults"] = _one_call(calls[name])
    return result


def _summary(values: Sequence[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


#: What a child process runs (not ``-m bnfast.bench.scaler``: runpy would warn that the
#: package had imported the module already).
_CHILD = "import sys; from bnfast.bench.scaler import main; sys.exit(main(sys.argv[1:]))"


def fresh_processes(n: int, threads: Optional[int] = None,
                    shape: Tuple[int, int] = SCALER_SHAPE,
                    progress: Optional[Any] = None) -> Optional[Result]:
    """Run :func:`child` in ``n`` fresh Python processes, one after the other.

    Parameters
    ----------
    n : int
        Number of processes (at least 1).
    threads : int, optional
        ``n_threads`` of BatchNormScaler (None: the OpenMP default).
    shape : (int, int)
    progress : file-like, optional
        Where to write one line per process.

    Returns
    -------
    dict or None
        ``processes`` (each child's result), and the median, min and max over processes of
        ``bnfast_s``, ``sklearn_s``, their ratio ``speedup`` (StandardScaler's time over
        BatchNormScaler's, per process) and the fault counts; None when scikit-learn is not
        installed.
    """
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return None
    # The children import this bnfast, wherever it was imported from.
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    results = []
    for i in range(n):
        if progress is not None:
            print(f"[scaler {i + 1}/{n}] fresh process ...", file=progress, flush=True)
        cmd = [sys.executable, "-c", _CHILD, "--json",
               "--rows", str(shape[0]), "--cols", str(shape[1])]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        if i % 2 == 0:
            cmd.append("--bnfast-first")
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"scaler child process failed:\n{done.stderr}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    speedups = [r["sklearn_s"] / r["bnfast_s"] for r in results]
    summary: Result = {"shape": list(shape), "dtype": "float32", "n_processes": n,
                       "threads": threads, "processes": results,
                       "speedup": _summary(speedups)}
    for key in ("bnfast_s", "sklearn_s", "bnfast_faults", "sklearn_faults",
                "bnfast_warm_s", "sklearn_warm_s"):
        summary[key] = _summary([r[key] for r in results])
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    """Child entry point: print one process's times (see :func:`child`)."""
    parser = argparse.ArgumentParser(
        prog="bnfast.bench.scaler",
        description="One call each of BatchNormScaler().fit_transform and "
                    "StandardScaler().fit_transform in this process, then a second call.")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bnfast-first", action="store_true")
    parser.add_argument("--rows", type=int, default=SCALER_SHAPE[0])
    parser.add_argument("--cols", type=int, default=SCALER_SHAPE[1])
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    result = child(args.threads, args.bnfast_first, (args.rows, args.cols))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:22s} {value}")
    return 0


