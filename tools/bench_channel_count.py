"""What the channel count that remembers its input costs (``_validation._Channels``).

Usage::

    PYTHONPATH=. python tools/bench_channel_count.py [--rounds 21]

``channel_shape`` returns C as an int subclass carrying the input's shape and axis, so that a
per-channel argument of the wrong length gets an error pointing at the channel axis. This
times, interleaved round by round in one process, ``channel_shape`` as it is and with a plain
int C (the code before), and a ``bnfast.BatchNorm(64)`` training forward on a (256, 64)
float32 batch (the layer calls ``channel_shape`` on every call; the functions' plain case,
recognized in C, does not call it). Prints medians with the 25th-75th percentiles and the load
average.
"""
import argparse
import math
import operator
import os
import statistics
import timeit

import numpy as np

import bnfast
from bnfast import _validation


def plain_int_channel_shape(a, axis, name="x"):
    """channel_shape before the change (the same checks, C a plain int)."""
    ndim = a.ndim
    if axis is None:
        return 1, 1, a.size
    ax = operator.index(axis)
    if ndim == 1:
        return 1, 1, a.size
    ax %= ndim
    shape = a.shape
    return math.prod(shape[:ax]), shape[ax], math.prod(shape[ax + 1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    x = np.random.default_rng(0).standard_normal((256, 64), dtype=np.float32)
    layer = bnfast.BatchNorm(64)
    contenders = {
        "channel_shape, C an int": lambda: plain_int_channel_shape(x, 1),
        "channel_shape, C remembers": lambda: _validation.channel_shape(x, 1),
        "BatchNorm(64)(x), (256, 64) f32": lambda: layer(x),
    }
    times = {k: [] for k in contenders}
    print(f"load average before: {os.getloadavg()}")
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            n = args.number if name.startswith("channel") else args.number // 20
            times[name].append(timeit.timeit(fn, number=n) / n)
    print(f"load average after: {os.getloadavg()}")
    for name, t in times.items():
        q1, med, q3 = np.percentile(np.array(t) * 1e9, [25, 50, 75])
        print(f"{name:34s} {med:9.0f} ns  [{q1:.0f}-{q3:.0f}]")
    extra = [b - a for a, b in zip(times["channel_shape, C an int"],
                                   times["channel_shape, C remembers"])]
    print(f"extra per call: {statistics.median(extra) * 1e9:.0f} ns (median of the per-round "
          f"differences)")


if __name__ == "__main__":
    main()
