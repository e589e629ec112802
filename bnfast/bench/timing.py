"""Timing callables side by side: interleaved rounds, medians, garbage collection off.

How performance is measured: ``docs/design.md`` §6.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Callable, Dict, List, Mapping, Union

#: Inner-loop length (seconds) that one timing sample aims for, like timeit's autorange.
MIN_TIME = 0.02
QUICK_MIN_TIME = 0.002
#: Timing rounds per row.
REPEATS = 7
QUICK_REPEATS = 3
#: Most calls per turn of :func:`measure_calls` (tiny calls: enough samples, bounded time).
MAX_BATCH = 50

Timing = Dict[str, Union[float, int]]


def _loop_time(fn: Callable[[], object], number: int) -> float:
    timer = time.perf_counter
    t0 = timer()
    for _ in range(number):
        fn()
    return timer() - t0


def autorange(fn: Callable[[], object], min_time: float) -> int:
    """Return the loop length (1, 2, 5, 10, 20, ...) whose run takes at least ``min_time``.

    The first trial runs ``fn`` once, which also serves as its warm-up call.
    """
    number = 1
    for _ in range(40):
        for step in (1, 2, 5):
            n = number * step
            if _loop_time(fn, n) >= min_time:
                return n
        number *= 10
    return number


def measure(calls: Mapping[str, Callable[[], object]], repeats: int = REPEATS,
            min_time: float = MIN_TIME, warmup: bool = True) -> Dict[str, Timing]:
    """Time callables side by side and return their median seconds per call.

    Each callable is warmed up (one call, when ``warmup``) and given a loop length that runs
    for ``min_time`` or more; then ``repeats`` rounds each time every callable once, in an
    order that rotates from round to round, so that drift (turbo, other processes, thermal
    state) affects them all alike. Garbage collection is off while timing.

    Parameters
    ----------
    calls : dict of str to callable
    repeats : int
    min_time : float
    warmup : bool
        Call each callable once before anything is timed. Without it, the first trial of
        :func:`autorange` is the warm-up.

    Returns
    -------
    dict of str to dict
        For each name: ``median``, ``min`` and ``max`` seconds per call, the loop length
        ``number`` and the number of ``repeats``.
    """
    names = list(calls)
    if warmup:
        for fn in calls.values():
            fn()
    numbers = {name: autorange(calls[name], min_time) for name in names}
    samples: Dict[str, List[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                samples[name].append(_loop_time(calls[name], numbers[name]) / numbers[name])
    finally:
        if gc_was_enabled:
            gc.enable()
    return {
        name: {"median": statistics.median(s), "min": min(s), "max": max(s),
               "number": numbers[name], "repeats": repeats}
        for name, s in samples.items()
    }


def quantile(samples: List[float], q: float) -> float:
    """The ``q`` quantile of ``samples`` (linear between order statistics, as NumPy's
    default), e.g. ``q=0.9`` for the 90th percentile."""
    if not samples:
        raise ValueError("samples: expected at least one sample")
    s = sorted(samples)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def measure_calls(calls: Mapping[str, Callable[[], object]], rounds: int,
                  min_time: float) -> Dict[str, Timing]:
    """Time every single call of callables side by side: medians and 90th percentiles.

    Unlike :func:`measure`, which times loops and reports the mean call of each loop, this
    times each call on its own, so that a call that waited (for a thread the system was not
    running, say) shows in the upper percentiles instead of being averaged away. Each
    callable is warmed up with one call. Then ``rounds`` rounds each give every callable, in
    an order that rotates from round to round, a turn of single calls that lasts until
    ``min_time`` has passed (at least one call, at most :data:`MAX_BATCH`). A turn that
    ends at a slow call samples slow calls at their true rate (the turn ends at the first
    slow call, after as many fast ones as its odds give), and a busy machine cannot stretch
    a row beyond ``rounds`` slow calls per callable. Garbage collection is off while timing.

    Returns
    -------
    dict of str to dict
        For each name: ``median``, ``p25``, ``p75``, ``p90``, ``min`` and ``max`` seconds
        per call over its ``calls`` timed calls.
    """
    names = list(calls)
    for fn in calls.values():
        fn()
    samples: Dict[str, List[float]] = {name: [] for name in names}
    timer = time.perf_counter
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                fn, out = calls[name], samples[name]
                spent = 0.0
                for _ in range(MAX_BATCH):
                    t0 = timer()
                    fn()
                    t = timer() - t0
                    out.append(t)
                    spent += t
                    if spent >= min_time:
                        break
    finally:
        if gc_was_enabled:
            gc.enable()
    return {
        name: {"median": statistics.median(s), "p25": quantile(s, 0.25),
               "p75": quantile(s, 0.75), "p90": quantile(s, 0.9), "min": min(s),
               "max": max(s), "calls": len(s)}
        for name, s in samples.items()
    }
