"""bnfast's calls at one thread and at its default threads, on a quiet machine and beside
spinning processes: the busy machine of ``python -m bnfast bench --busy``.

Every call is made as users make it: no ``out=`` (each call allocates its result), the
training forward updating running statistics, float32. ``n_threads=None`` is bnfast's
default thread count. ``busy_per_core`` spinning processes per usable CPU
(``bnfast/bench/spinners.py``: pure-CPU loops that stop by themselves) run while the
benchmark runs: setup starts them, teardown stops them. The targets (issue 18, with 1 and 2
per core): the default-thread time at most 1.5x the one-thread time, its 90th percentile at
most 3x its median (``track_p90_over_median``).
"""

import statistics
import time

from .common import (BUSY_PER_CORE, BUSY_SHAPE_LAYOUTS, OPS, SMOKE, Inputs, bnfast_call,
                     spinners)

#: Single calls timed by track_p90_over_median.
TAIL_CALLS = 5 if SMOKE else 100


class _Busy:
    params = [BUSY_SHAPE_LAYOUTS, OPS, [1, None], BUSY_PER_CORE]
    param_names = ["shape_layout", "op", "n_threads", "busy_per_core"]

    def setup(self, shape_layout, op, n_threads, busy_per_core):
        shape, layout = shape_layout
        d = Inputs(shape, layout, "float32", op)
        self.call = bnfast_call(d, op, n_threads, out=False)
        self.call()  # warm-up, before the spinners
        k = busy_per_core * spinners.usable_cpus()
        self.spinners = spinners.Spinners(k, lifetime=600).start()

    def teardown(self, *params):
        if hasattr(self, "spinners"):
            self.spinners.stop()


class Threads(_Busy):
    """``bnfast.<op>`` without out=, one thread and default threads, quiet and busy."""

    def time_bnfast(self, shape_layout, op, n_threads, busy_per_core):
        self.call()


class ThreadsTail(_Busy):
    """The 90th percentile of single calls over their median (the busy machine's tail)."""

    unit = "p90/median"

    def track_p90_over_median(self, shape_layout, op, n_threads, busy_per_core):
        timer, call, times = time.perf_counter, self.call, []
        for _ in range(TAIL_CALLS):
            t0 = timer()
            call()
            times.append(timer() - t0)
        times.sort()
        return times[int(0.9 * (len(times) - 1))] / statistics.median(times)
