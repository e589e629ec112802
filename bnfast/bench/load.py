"""How loaded the machine is before a benchmark, and how to say so to a new user.

Other programs on the CPUs slow every timing down and make it noisier, and they hurt
multi-threaded calls most: a parallel call can wait for one of its threads that the
operating system is not running. A new user who runs ``python -m bnfast`` on a busy machine
must read that in the table's header, on stdout, in plain words, not in a warning on stderr.

:func:`sample` measures the load (the 1-minute load average, and on Linux a short sample of
the runnable tasks and of the time the hypervisor steals); :func:`busy_note` turns the
figures into the words (a pure function, tested with injected values).
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional, Tuple

#: The machine is "busy" above this load per CPU (more runnable work than CPUs), and "not
#: idle" from this one on (a quarter: one busy CPU of four, half a CPU of two). The load
#: average and /proc/stat count the whole machine (also inside a container, which has its
#: own share of it), so both are compared with the machine's CPU count.
BUSY_LOAD_PER_CPU = 1.0
NOT_IDLE_LOAD_PER_CPU = 0.25
#: Fraction of CPU time the hypervisor gives to other machines (steal) that makes a virtual
#: machine busy, and not idle.
BUSY_STEAL = 0.10
NOT_IDLE_STEAL = 0.02
#: Length of the short sample of /proc/stat, and how many times it reads the runnable count.
SAMPLE_S = 0.25
SAMPLE_READS = 10


def load_average() -> Optional[float]:
    """1-minute load average (None where the OS has none): other processes skew timings."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _read_proc_stat() -> Optional[Tuple[List[int], int]]:
    """(the aggregate ``cpu`` line's jiffies, ``procs_running``) from /proc/stat, or None."""
    try:
        with open("/proc/stat") as f:
            text = f.read()
    except OSError:
        return None
    jiffies: Optional[List[int]] = None
    running: Optional[int] = None
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            jiffies = [int(v) for v in fields[1:]]
        elif fields and fields[0] == "procs_running":
            running = int(fields[1])
    if jiffies is None or running is None:
        return None
    return jiffies, running


def sample(duration: float = SAMPLE_S, reads: int = SAMPLE_READS) -> Dict[str, Any]:
    """Measure how loaded the machine is now (takes ``duration`` seconds on Linux).

    Returns
    -------
    dict
        ``load_average`` (1 minute, None where the OS has none), ``cpus`` (the machine's
        CPU count), ``runnable_others`` (the mean number of other runnable tasks over the
        sample, from /proc/stat's ``procs_running`` less this process's reading thread;
        None off Linux) and ``steal`` (the fraction of CPU time the hypervisor took over
        the sample; None off Linux or without a steal counter).
    """
    result: Dict[str, Any] = {"load_average": load_average(), "cpus": os.cpu_count() or 1,
                              "runnable_others": None, "steal": None}
    first = _read_proc_stat()
    if first is None:
        return result
    counts = [first[1]]
    last = first
    for _ in range(max(1, reads - 1)):
        time.sleep(duration / max(1, reads - 1))
        now = _read_proc_stat()
        if now is None:
            return result
        counts.append(now[1])
        last = now
    # The thread reading /proc/stat is itself running when it reads: one less.
    result["runnable_others"] = round(max(0.0, sum(counts) / len(counts) - 1.0), 2)
    before, after = first[0], last[0]
    if len(before) >= 8 and len(after) >= 8:
        # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
        # already counted in user and nice.
        total = sum(after[:8]) - sum(before[:8])
        if total > 0:
            result["steal"] = round((after[7] - before[7]) / total, 3)
    return result


def level(load: Optional[float], cpus: int, runnable_others: Optional[float] = None,
          steal: Optional[float] = None) -> str:
    """``"busy"``, ``"not idle"`` or ``"idle"``: how loaded figures like :func:`sample`'s
    say the machine is (``"idle"`` also when nothing could be measured)."""
    cpus = max(1, cpus)
    per_cpu = max(load or 0.0, runnable_others or 0.0) / cpus
    steal = steal or 0.0
    if per_cpu > BUSY_LOAD_PER_CPU or steal >= BUSY_STEAL:
        return "busy"
    if per_cpu >= NOT_IDLE_LOAD_PER_CPU or steal >= NOT_IDLE_STEAL:
        return "not idle"
    return "idle"


def _cpus(n: int) -> str:
    return f"{n} CPU" if n == 1 else f"{n} CPUs"


def busy_note(load: Optional[float], cpus: int, runnable_others: Optional[float] = None,
              steal: Optional[float] = None, threads: Optional[int] = None,
              hint: str = "") -> str:
    """The words that tell a user the machine is loaded, or ``""`` on an idle machine.

    Parameters
    ----------
    load : float or None
        The 1-minute load average.
    cpus : int
        The machine's CPU count.
    runnable_others : float, optional
        Other runnable tasks, measured just now.
    steal : float, optional
        Fraction of CPU time the hypervisor took just now.
    threads : int, optional
        bnfast's threads in the figures that follow (default: not said).
    hint : str
        What the user can do, appended to a "busy" note (e.g. which option gives
        one-thread times).

    Returns
    -------
    str
        One or more lines, no trailing newline; ``""`` when :func:`level` is ``"idle"``.
    """
    how = level(load, cpus, runnable_others, steal)
    if how == "idle":
        return ""
    figures = []
    if load is not None:
        figures.append(f"load {load:.1f} on {_cpus(cpus)}")
    if runnable_others is not None and (load is None or runnable_others > load):
        figures.append(f"{runnable_others:.1f} other tasks ready to run just now")
    if steal:
        figures.append(f"the virtual machine's host took {steal:.0%} of its CPU time")
    said = "; ".join(figures) or f"{_cpus(cpus)}"
    if threads is None:
        whose = "bnfast's default threads and PyTorch's"
    elif threads > 1:
        whose = f"bnfast's {threads} threads and PyTorch's"
    else:
        whose = ""
    if how == "not idle":
        return (f"This machine is not idle: {said}. Other programs share the CPUs, so times "
                "can be slower and noisier than on an idle machine"
                + (f", for calls on several threads ({whose}) most." if whose else "."))
    lines = [f"This machine is busy: {said}. Other programs want more CPU time than the "
             "machine has, so every time below is slower and noisier than on an idle "
             "machine."]
    if whose:
        lines.append(f"Calls on several threads suffer most ({whose}): a call waits for "
                     "each of its threads, and the system may not be running one of them, "
                     "so bnfast can even look slower than single-threaded NumPy.")
    if hint:
        lines.append(hint)
    return "\n".join(lines)


def note_for(measured: Dict[str, Any], threads: Optional[int] = None, hint: str = "") -> str:
    """:func:`busy_note` for a :func:`sample`'s figures."""
    return busy_note(measured["load_average"], measured["cpus"], measured["runnable_others"],
                     measured["steal"], threads=threads, hint=hint)
