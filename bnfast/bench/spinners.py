"""Spinning processes that load the CPUs while a busy-machine benchmark runs.

``Spinners(k)`` starts ``k`` processes that do nothing but integer arithmetic in a Python
loop, like the other programs of a busy machine (a scikit-learn pipeline under joblib, a data
loader, another user's job). They are bounded three ways, so that none outlives the benchmark:

- the benchmark stops them when it leaves the ``with`` block, also on Ctrl-C or an
  exception (:meth:`Spinners.stop`: terminate, then kill what is left);
- each one checks, every few milliseconds, that the process that started it is still its
  parent, and exits when it is not (the benchmark died without stopping them; POSIX only: on
  Windows a process keeps its dead parent's id, and the deadline alone applies);
- each one exits by itself at a deadline (``lifetime`` seconds after it started).

This module needs the standard library only: the asv suite loads it by file path
(``asv_bench/benchmarks/common.py``), and the spinners run ``python -I -S -c`` code that
imports neither NumPy nor bnfast, so that each starts in tens of milliseconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import TracebackType
from typing import List, Optional, Type

#: Seconds a spinner runs at most, whatever happens to the benchmark: longer than one busy
#: level of the full busy bench takes on a loaded 2-core machine.
LIFETIME_S = 1800.0

#: The spinner: a pure-CPU loop that checks its parent and its deadline every 20000
#: iterations (about 5 ms of CPU time).
#: It says "ready" once running, so that the benchmark starts timing only when every
#: spinner competes for the CPUs.
SPINNER_CODE = """\
import os, signal, sys, time
# Ctrl-C in a terminal reaches the whole process group: the bench stops its spinners itself.
signal.signal(signal.SIGINT, signal.SIG_IGN)
parent, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
sys.stdout.write("ready\\n")
sys.stdout.flush()
sys.stdout.close()
x = 1
while os.getppid() == parent and time.monotonic() < deadline:
    for _ in range(20000):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
"""


def usable_cpus() -> int:
    """The number of CPUs this process may run on (its affinity mask, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class Spinners:
    """``k`` bounded spinning processes, started on entering a ``with`` block.

    Parameters
    ----------
    k : int
        How many processes to start (0: none; the block then runs on a machine loaded by
        whatever else runs on it).
    lifetime : float
        Seconds after which every spinner exits by itself.

    Examples
    --------
    >>> with Spinners(2) as spinners:  # doctest: +SKIP
    ...     time_something()
    """

    def __init__(self, k: int, lifetime: float = LIFETIME_S) -> None:
        if k < 0:
            raise ValueError(f"k: expected a number of spinners >= 0, got {k}")
        if not lifetime > 0:
            raise ValueError(f"lifetime: expected seconds > 0, got {lifetime}")
        self.k = k
        self.lifetime = lifetime
        self.processes: List["subprocess.Popen[str]"] = []

    def start(self) -> "Spinners":
        """Start the spinners and return once each one is running."""
        argv = [sys.executable, "-I", "-S", "-c", SPINNER_CODE, str(os.getpid()),
                repr(float(self.lifetime))]
        try:
            for _ in range(self.k):
                self.processes.append(subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True))
            for process in self.processes:
                assert process.stdout is not None
                if process.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"spinner {process.pid} did not start "
                                       f"(exit status {process.poll()})")
                process.stdout.close()
        except BaseException:
            self.stop()
            raise
        return self

    def running(self) -> int:
        """How many spinners are still running."""
        return sum(1 for p in self.processes if p.poll() is None)

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate every spinner, kill those still running after ``timeout`` seconds."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None and not process.stdout.closed:
                process.stdout.close()
        self.processes = []

    def __enter__(self) -> "Spinners":
        return self.start()

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.stop()
