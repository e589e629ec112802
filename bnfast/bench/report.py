"""Formatting the bench's results: the table, its notes, the scaler line, the machine.

How performance is measured: ``docs/design.md`` §6.
"""

from __future__ import annotations

import datetime
import os
import platform
from typing import Any, Collection, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .cases import DTYPE_ABBREV
from .load import load_average

NA = "n/a"


def format_time(seconds: Optional[float]) -> str:
    """Format seconds as ``12.3 us`` / ``4.56 ms`` / ``1.23 s`` (``n/a`` for None)."""
    if seconds is None:
        return NA
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _format_ratio(r: Optional[float]) -> str:
    return NA if r is None else f"{r:.2f}"


#: The columns of the table; ``targets`` only with ``--targets``.
COLUMNS = ["op", "layout", "shape", "dtype", "MiB", "bnfast", "NumPy", "torch", "floor",
           "bn/floor", "bn/torch", "np/bn"]
_RIGHT = {"MiB", "bnfast", "NumPy", "torch", "floor", "bn/floor", "bn/torch", "np/bn"}


def format_table(rows: Sequence[Mapping[str, Any]], targets: bool = False) -> str:
    """Return the rows as a fixed-width, Markdown-compatible table.

    Parameters
    ----------
    rows : list of dict
        As :func:`bnfast.bench.rows.run_rows` makes them.
    targets : bool
        Add a ``targets`` column: ``PASS`` or the development targets the row misses.

    Returns
    -------
    str
    """
    header = COLUMNS + (["targets"] if targets else [])
    lines: List[List[str]] = []
    for row in rows:
        cells = [
            row["op"], row["layout"], "(" + ",".join(map(str, row["shape"])) + ")",
            DTYPE_ABBREV.get(row["dtype"], row["dtype"]), f"{row['nbytes'] / 2**20:.2f}",
            format_time(row["bnfast_s"]), format_time(row["numpy_s"]),
            format_time(row["torch_s"]), format_time(row["floor_s"]),
            _format_ratio(row["bnfast_over_floor"]), _format_ratio(row["bnfast_over_torch"]),
            _format_ratio(row["numpy_over_bnfast"]),
        ]
        if targets:
            cells.append("PASS" if not row["missed"] else "miss " + ",".join(row["missed"]))
        lines.append(cells)
    return markdown_table(header, lines, right=_RIGHT)


def markdown_table(header: Sequence[str], lines: Sequence[Sequence[str]],
                   right: Collection[str]) -> str:
    """Return a fixed-width, Markdown-compatible table of text cells.

    Columns named in ``right`` are right-aligned (numbers), the others left-aligned.
    """
    widths = [max([len(h)] + [len(line[j]) for line in lines]) for j, h in enumerate(header)]

    def fmt(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if h in right else c.ljust(w)
                  for c, w, h in zip(cells, widths, header)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if h in right else ("-" * (w + 2))
                          for w, h in zip(widths, header)) + "|"
    return "\n".join([fmt(header), rule] + [fmt(line) for line in lines])


def table_notes(threads: int, torch_version: Optional[str]) -> str:
    """Return the lines printed under the table that say what its columns mean."""
    if torch_version is None:
        torch_note = "torch: not installed (its columns say n/a)"
    else:
        torch_note = (f"torch {torch_version}: the faster of F.batch_norm and "
                      "aten.native_batch_norm.out (forward), aten.native_batch_norm_backward")
    return "\n".join([
        f"threads: {threads} (bnfast n_threads, torch.set_num_threads, copy); "
        "NumPy is single-threaded; times are medians per call, with out=",
        "shapes are (N,C) or (N,C,H,W); NHWC arrays are stored (N,H,W,C), axis=-1",
        torch_note,
        "floor = passes x streaming copy of x (train 1.5, infer 1.0, backward 2.5)",
        "bn/floor, bn/torch: bnfast's time over the floor's, PyTorch's (below 1: bnfast is "
        "faster); np/bn: how many times faster than NumPy bnfast is",
    ])


def format_scaler(summary: Optional[Mapping[str, Any]], reason: str = "") -> str:
    """Return the scaler lines: medians and min-max ranges over fresh processes.

    Parameters
    ----------
    summary : dict or None
        As :func:`bnfast.bench.scaler.fresh_processes` returns it; None: not measured.
    reason : str
        Why it was not measured (printed when ``summary`` is None).
    """
    if summary is None:
        return f"scaler fit_transform: {NA}" + (f" ({reason})" if reason else "")

    def dist(d: Mapping[str, float], fmt: Any = format_time) -> str:
        return f"median {fmt(d['median'])} (range {fmt(d['min'])} - {fmt(d['max'])})"

    x = lambda r: f"{r:.1f}x"  # noqa: E731
    return "\n".join([
        f"scaler fit_transform {tuple(summary['shape'])} f32, first call of a fresh "
        f"process, {summary['n_processes']} processes each:",
        f"  BatchNormScaler  {dist(summary['bnfast_s'])}",
        f"  StandardScaler   {dist(summary['sklearn_s'])}",
        f"  StandardScaler / BatchNormScaler, pair by pair: {dist(summary['speedup'], x)}",
    ])


def machine_info(threads: Optional[int], torch_version: Optional[str]) -> Dict[str, Any]:
    """Return a dict describing this machine and the software measured (``threads``: the
    threads the figures use, None for the busy table's default threads and one thread)."""
    import bnfast

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        affinity: Optional[int] = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    openmp = getattr(bnfast, "openmp_enabled", None)
    return {
        "load_average": load_average(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch_version,
        "bnfast": getattr(bnfast, "__version__", None),
        "bnfast_openmp": openmp() if callable(openmp) else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
