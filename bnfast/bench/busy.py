"""The busy-machine bench: ``python -m bnfast bench --busy K`` (or ``--busy-per-core P``).

Users mostly run bnfast beside other work: a scikit-learn pipeline under joblib, Dask
workers, a notebook server, a CI runner, a data loader beside the training loop. This bench
makes such a machine on purpose and measures what a user meets there. For each busy level
(``k`` spinning processes, :class:`bnfast.bench.spinners.Spinners`), and for each row of the
busy grid (the training forward, inference and backward on (N, C) and NCHW arrays of 0.25 to
50 MiB), three contenders are timed side by side in interleaved rounds, call by call
(:func:`bnfast.bench.timing.measure_calls`):

default   bnfast with its default threads (``n_threads`` not given)
1 thread  bnfast with ``n_threads=1``
torch     PyTorch at its default threads (``torch.nn.functional.batch_norm``, and
          ``aten.native_batch_norm_backward`` for the backward), when installed

Every call is made the way users make it: no ``out=`` (each call allocates its result), the
training forward updating running statistics. Each contender's median and 90th percentile
per call are reported, and the three ratios the targets of issue 18 name
(:mod:`bnfast.bench.targets`, verdicts only with ``--targets``).
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any, Dict, List, Optional, Sequence, TextIO

from . import targets as _targets
from .cases import DTYPE_ABBREV, OPS, Case, Row
from .load import load_average
from .report import format_time, markdown_table
from .rows import Call, Problem, import_torch
from .spinners import LIFETIME_S, Spinners, usable_cpus
from .timing import measure_calls

#: Rounds of the busy bench (a turn of each contender per round), and how long a turn lasts:
#: single calls, each timed on its own, until this time has passed (at most 50 calls).
ROUNDS = 30
QUICK_ROUNDS = 10
MIN_TIME = 0.005
QUICK_MIN_TIME = 0.002
#: Seconds to wait after starting the spinners, so that the scheduler has spread them.
SETTLE_S = 0.5

#: The contenders, in table order.
CONTENDERS = ("default", "1 thread", "torch")

BusyRow = Dict[str, Any]


def busy_cases(quick: bool = False) -> List[Case]:
    """Return the cases of the busy grid: (N, C) and NCHW arrays of 0.25 to 50 MiB.

    Full: (N, C) float32 of 0.25 and 1 MiB, the (20000, 100) float64 batch (15.3 MiB), and
    NCHW float32 of 0.25, 24.5 and 50 MiB, the rows of issue 18. ``--quick``: a 0.25 MiB and a
    1 MiB (N, C) batch and a 2 MiB NCHW batch.
    """
    if quick:
        return [Case((1024, 64), "NC", "float32"), Case((4096, 64), "NC", "float32"),
                Case((8, 64, 32, 32), "NCHW", "float32")]
    return [
        Case((1024, 64), "NC", "float32"),
        Case((4096, 64), "NC", "float32"),
        Case((20000, 100), "NC", "float64"),
        Case((4, 16, 32, 32), "NCHW", "float32"),
        Case((32, 64, 56, 56), "NCHW", "float32"),
        Case((32, 64, 80, 80), "NCHW", "float32"),
    ]


def busy_grid(quick: bool = False) -> List[Row]:
    """Return the ``(case, op)`` rows of the busy table (18 rows; ``--quick``: 9)."""
    return [(case, op) for case in busy_cases(quick) for op in OPS]


def spinner_levels(busy: Optional[Sequence[int]], per_core: Optional[Sequence[int]],
                   cpus: Optional[int] = None) -> List[int]:
    """The spinner counts to run: ``busy`` as given, or ``per_core`` times the CPUs this
    process may use (:func:`bnfast.bench.spinners.usable_cpus`, or ``cpus``)."""
    if busy is not None:
        return list(busy)
    cpus = usable_cpus() if cpus is None else cpus
    return [p * cpus for p in per_core or ()]


def user_calls(problem: Problem, op: str, torch: Optional[ModuleType]) -> Dict[str, Call]:
    """Return ``{contender: callable}``: ``op`` as users call it (no ``out=``)."""
    calls = {"default": problem.bnfast_call(op, n_threads=None, out=False),
             "1 thread": problem.bnfast_call(op, n_threads=1, out=False)}
    if torch is not None:
        api = "aten.native_batch_norm_backward" if op == "backward" else "F.batch_norm"
        calls["torch"] = problem.torch_calls(op, torch)[api]
    return calls


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def _row(case: Case, op: str, k: int, times: Dict[str, Any]) -> BusyRow:
    def stat(name: str, key: str) -> Optional[float]:
        return float(times[name][key]) if name in times else None

    row: BusyRow = {
        "spinners": k, "op": op, "layout": case.layout, "shape": list(case.shape),
        "stored_shape": list(case.stored_shape), "axis": case.axis, "dtype": case.dtype,
        "nbytes": case.nbytes, "times": times,
    }
    for name, key in (("default", "default"), ("1 thread", "one"), ("torch", "torch")):
        row[key + "_s"] = stat(name, "median")
        row[key + "_p90_s"] = stat(name, "p90")
    row["default_over_one"] = _ratio(row["default_s"], row["one_s"])
    row["default_p90_over_median"] = _ratio(row["default_p90_s"], row["default_s"])
    row["default_over_torch"] = _ratio(row["default_s"], row["torch_s"])
    row["missed"] = _targets.missed_busy_targets(row)
    return row


def run_busy(levels: Sequence[int], grid: List[Row], rounds: int = ROUNDS,
             min_time: float = MIN_TIME, progress: Optional[TextIO] = None,
             lifetime: float = LIFETIME_S) -> Dict[str, Any]:
    """Time every row of ``grid`` beside ``k`` spinners, for each ``k`` of ``levels``.

    The spinners of a level start before its first row and stop after its last (also on
    Ctrl-C or an exception), so that every row of a level runs on the same busy machine.

    Parameters
    ----------
    levels : list of int
        Spinner counts, e.g. ``[0, 2, 4]``.
    grid : list of (Case, str)
    rounds, min_time
        See :func:`bnfast.bench.timing.measure_calls`.
    progress : file-like, optional
        Where to write one line per level and per row as it starts.
    lifetime : float
        Seconds after which a spinner exits by itself, whatever happens here.

    Returns
    -------
    dict
        ``rows``: one dict per level and row, with each contender's median and 90th
        percentile (``default_s``, ``default_p90_s``, ``one_s``, ``one_p90_s``,
        ``torch_s``, ``torch_p90_s``; torch's None without PyTorch), the ratios
        ``default_over_one``, ``default_p90_over_median``, ``default_over_torch``, every
        timing (``times``) and ``missed`` (:func:`bnfast.bench.targets.missed_busy_targets`);
        ``levels``: per level, the spinner count and the load average before and after it;
        ``bnfast_threads`` and ``torch_threads``: the default thread counts measured.
    """
    from bnfast._config import config

    torch = import_torch()
    result: Dict[str, Any] = {
        "rows": [], "levels": [], "rounds": rounds, "min_time_s": min_time,
        "bnfast_threads": config()["threads"],
        "torch_threads": None if torch is None else torch.get_num_threads(),
    }
    for k in levels:
        if progress is not None:
            print(f"[busy] starting {k} spinning processes", file=progress, flush=True)
        level: Dict[str, Any] = {"spinners": k, "load_average_before": load_average()}
        with Spinners(k, lifetime=lifetime) as spinners:
            time.sleep(SETTLE_S if k else 0.0)
            problem = None
            for i, (case, op) in enumerate(grid, 1):
                if progress is not None:
                    print(f"[busy k={k} {i}/{len(grid)}] {op} {case.label()} ...",
                          file=progress, flush=True)
                if problem is None or problem.case != case:
                    problem = None  # free the previous case's arrays first
                    problem = Problem(case, threads=1)
                times = measure_calls(user_calls(problem, op, torch), rounds, min_time)
                result["rows"].append(_row(case, op, k, times))
            level["spinners_running_at_end"] = spinners.running()
            problem = None
        level["load_average_after"] = load_average()
        result["levels"].append(level)
    return result


#: The busy table's columns; ``targets`` only with ``--targets``.
COLUMNS = ["k", "op", "layout", "shape", "dtype", "MiB", "default", "def p90", "1 thread",
           "1t p90", "torch", "torch p90", "def/1t", "p90/def", "def/torch"]
_LEFT = {"op", "layout", "shape", "dtype", "targets"}


def _r(value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


def format_busy(result: Dict[str, Any], targets: bool = False) -> str:
    """Return the busy section: a title, a Markdown-compatible table and its notes.

    Parameters
    ----------
    result : dict
        As :func:`run_busy` returns it.
    targets : bool
        Add a ``targets`` column (``PASS`` or the busy targets the row misses), the targets'
        line and, per level, how many rows meet them all.
    """
    rows = result["rows"]
    header = COLUMNS + (["targets"] if targets else [])
    lines = []
    for row in rows:
        cells = [str(row["spinners"]), row["op"], row["layout"],
                 "(" + ",".join(map(str, row["shape"])) + ")",
                 DTYPE_ABBREV.get(row["dtype"], row["dtype"]),
                 f"{row['nbytes'] / 2**20:.2f}"]
        for key in ("default", "one", "torch"):
            cells += [format_time(row[key + "_s"]), format_time(row[key + "_p90_s"])]
        cells += [_r(row["default_over_one"]), _r(row["default_p90_over_median"]),
                  _r(row["default_over_torch"])]
        if targets:
            cells.append("PASS" if not row["missed"] else "miss " + ",".join(row["missed"]))
        lines.append(cells)
    torch_threads = result["torch_threads"]
    levels = ", ".join(
        f"k={lv['spinners']}: load {lv['load_average_before']} before, "
        f"{lv['load_average_after']} after" for lv in result["levels"])
    text = [
        "busy machine: bnfast at its default threads and at one thread, and PyTorch, beside "
        "k spinning processes; medians and 90th percentiles of single calls, side by side:",
        markdown_table(header, lines, right=set(header) - _LEFT),
        "k: spinning processes (pure-CPU loops) started for the rows of that k and stopped "
        f"after them; {usable_cpus()} CPUs usable here",
        f"default: bnfast's default threads ({result['bnfast_threads']} here); 1 thread: "
        "n_threads=1; torch: "
        + ("not installed" if torch_threads is None
           else f"PyTorch at its default threads ({torch_threads} here)"),
        "calls as users make them: no out=, running statistics updated; "
        f"{result['rounds']} rounds; each gives every contender single calls for "
        f"{result['min_time_s'] * 1e3:g} ms (at least one, at most 50)",
        "def/1t: default median over 1-thread median; p90/def: default p90 over its median; "
        "def/torch: default median over PyTorch's (below 1: bnfast is faster)",
        f"load average per level: {levels}",
    ]
    if targets:
        text.append(_targets.describe_busy())
        counts = []
        for lv in result["levels"]:
            k = lv["spinners"]
            of_k = [row for row in rows if row["spinners"] == k]
            met = sum(1 for row in of_k if not row["missed"])
            counts.append(f"k={k}: {met}/{len(of_k)}")
        text.append("rows meeting every busy target: " + ", ".join(counts))
    return "\n".join(text)
