"""The scaler figure: ``BatchNormScaler().fit_transform`` against ``StandardScaler``'s.

Measured as a user meets it: a fresh process, a float32 ``(65536, 256)`` batch, one call.
The first call in a process pays for things a benchmark loop never sees, above all the first
touch of the memory it allocates, and that cost varies a lot from process to process. So
each scaler is timed alone in its own fresh processes, ``n`` of each, run in pairs (the
order within a pair alternates), and the figure is the median and the min-max range of each
time and of the per-pair ratio, never the best run.

Timing both scalers in one process would not be fair: whichever runs second reuses memory
the first one touched and freed. On the development machine that made the ratio 1.2-1.7x
when BatchNormScaler ran first and 10-20x when StandardScaler did.

Each child process also reports the minor page faults of the call (``getrusage``) and the
time of a second call (whose fresh output usually gets the physical pages that the first
call's output released); ``tools/scaler_first_call.py`` breaks the first call down.

One child by hand: ``python -c "from bnfast.bench.scaler import main; main()" --only bnfast``.
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


def child(threads: Optional[int], only: str,
          shape: Tuple[int, int] = SCALER_SHAPE) -> Result:
    """Time one scaler's first and second ``fit_transform`` in this (fresh) process.

    Parameters
    ----------
    threads : int or None
        ``n_threads`` of BatchNormScaler.
    only : {"bnfast", "sklearn"}
        BatchNormScaler or StandardScaler.
    shape : (int, int)

    Returns
    -------
    dict
        ``<only>_s`` (first call), ``<only>_faults`` (minor page faults during it),
        ``<only>_warm_s``, ``<only>_warm_faults`` (second call) and ``import_s``.
    """
    t0 = time.perf_counter()
    from sklearn.preprocessing import StandardScaler

    from bnfast.preprocessing import BatchNormScaler

    import_s = time.perf_counter() - t0
    from .cases import scaler_input

    X = scaler_input(shape)
    if only == "bnfast":
        def call() -> object:
            return BatchNormScaler(n_threads=threads).fit_transform(X)
    elif only == "sklearn":
        def call() -> object:
            return StandardScaler().fit_transform(X)
    else:
        raise ValueError(f"only: expected 'bnfast' or 'sklearn', got {only!r}")
    result: Result = {"import_s": import_s}
    result[f"{only}_s"], result[f"{only}_faults"] = _one_call(call)
    result[f"{only}_warm_s"], result[f"{only}_warm_faults"] = _one_call(call)
    return result


def _summary(values: Sequence[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


#: What a child process runs (not ``-m bnfast.bench.scaler``: runpy would warn that the
#: package had imported the module already).
_CHILD = "import sys; from bnfast.bench.scaler import main; sys.exit(main(sys.argv[1:]))"


def fresh_processes(n: int, threads: Optional[int] = None,
                    shape: Tuple[int, int] = SCALER_SHAPE,
                    progress: Optional[Any] = None) -> Optional[Result]:
    """Time each scaler in ``n`` fresh Python processes (:func:`child`), pair by pair.

    Parameters
    ----------
    n : int
        Processes per scaler (at least 1): ``2 n`` processes in all.
    threads : int, optional
        ``n_threads`` of BatchNormScaler (None: the OpenMP default).
    shape : (int, int)
    progress : file-like, optional
        Where to write one line per pair.

    Returns
    -------
    dict or None
        ``pairs`` (each pair's numbers), and the median, min and max over pairs of
        ``bnfast_s``, ``sklearn_s``, their ratio ``speedup`` (StandardScaler's time over
        BatchNormScaler's, per pair), the fault counts and the second calls; None when
        scikit-learn is not installed.
    """
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return None
    # The children import this bnfast, wherever it was imported from.
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)

    def run_child(only: str) -> Result:
        cmd = [sys.executable, "-c", _CHILD, "--json", "--only", only,
               "--rows", str(shape[0]), "--cols", str(shape[1])]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"scaler child process failed:\n{done.stderr}")
        result: Result = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    pairs = []
    for i in range(n):
        if progress is not None:
            print(f"[scaler {i + 1}/{n}] two fresh processes ...", file=progress, flush=True)
        order = ["bnfast", "sklearn"] if i % 2 == 0 else ["sklearn", "bnfast"]
        pair: Result = {"bnfast_ran_first": i % 2 == 0}
        for only in order:
            pair.update(run_child(only))
        pair.pop("import_s", None)
        pairs.append(pair)
    speedups = [r["sklearn_s"] / r["bnfast_s"] for r in pairs]
    summary: Result = {"shape": list(shape), "dtype": "float32", "n_processes": n,
                       "threads": threads, "pairs": pairs, "speedup": _summary(speedups)}
    for key in ("bnfast_s", "sklearn_s", "bnfast_faults", "sklearn_faults",
                "bnfast_warm_s", "sklearn_warm_s"):
        summary[key] = _summary([r[key] for r in pairs])
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    """Child entry point: print one process's times (see :func:`child`)."""
    parser = argparse.ArgumentParser(
        prog="bnfast.bench.scaler",
        description="A first and a second call of BatchNormScaler().fit_transform or "
                    "StandardScaler().fit_transform in this process.")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", choices=["bnfast", "sklearn"], default="bnfast")
    parser.add_argument("--rows", type=int, default=SCALER_SHAPE[0])
    parser.add_argument("--cols", type=int, default=SCALER_SHAPE[1])
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    result = child(args.threads, args.only, (args.rows, args.cols))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:22s} {value}")
    return 0


