"""The bench's "fused activation" section: the fused ReLU and residual add against the plain
training forward and the unfused NumPy sequences they replace.

For each float32 case (:func:`fused_cases`), five calls are timed side by side in one
:func:`bnfast.bench.timing.measure` (interleaved rounds, medians), each the training forward
with running statistics and a preallocated, touched ``out=``, as a training loop with reused
buffers runs it:

plain           ``batch_norm_forward(x, gamma, beta, ...)``
relu            the same with ``activation="relu"``
res+relu        the same with ``residual=r, activation="relu"``
bn;max          the plain call, then ``np.maximum(y, 0, out=y)``
bn;+r;max       the plain call, then ``y += r`` and ``np.maximum(y, 0, out=y)``

Every ratio is a median time over the plain call's median time. The development target
(``--targets`` only): the fused ReLU costs at most :data:`FUSED_RELU_TARGET` times the plain
forward.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, TextIO

import numpy as np

from .cases import EPS, MOMENTUM, Case, make_inputs
from .report import format_time, markdown_table
from .timing import measure

#: The fused training forward with the ReLU costs at most this many times the plain one.
FUSED_RELU_TARGET = 1.05

#: The timed calls, in table order; the first is the baseline of every ratio.
VARIANTS = ("plain", "relu", "res+relu", "bn;max", "bn;+r;max")

FusedRow = Dict[str, Any]


def fused_cases(quick: bool = False) -> List[Case]:
    """Return the float32 cases of the section.

    Full: a 64 MiB (65536, 256) batch and a ResNet-sized (32, 64, 56, 56) batch in NCHW and
    NHWC (24.5 MiB), the shapes of ``asv_bench/benchmarks/bench_fused.py``. ``--quick``: one
    NCHW and one NHWC (8, 64, 56, 56) batch of 6.1 MiB, the quick table's.
    """
    if quick:
        return [Case((8, 64, 56, 56), layout, "float32") for layout in ("NCHW", "NHWC")]
    return [Case((65536, 256), "NC", "float32")] + [
        Case((32, 64, 56, 56), layout, "float32") for layout in ("NCHW", "NHWC")]


class FusedProblem:
    """The arrays of one case and the five timed calls (:data:`VARIANTS`).

    All calls write into one preallocated, touched output ``y`` and update one pair of
    running statistics, so that no page fault is timed and every call does the same work
    the training loop does.
    """

    def __init__(self, case: Case, threads: int, seed: int = 0) -> None:
        import bnfast

        self.bnfast = bnfast
        self.case = case
        self.threads = threads
        inputs = make_inputs(case, seed, backward=False)
        self.x, self.gamma, self.beta = inputs.x, inputs.gamma, inputs.beta
        self.running_mean, self.running_var = inputs.running_mean, inputs.running_var
        rng = np.random.default_rng(seed + 1)
        self.residual = rng.standard_normal(case.stored_shape, dtype=np.float32)
        self.y = np.ones_like(self.x)

    def calls(self) -> Dict[str, Any]:
        """Return ``{variant: zero-argument callable}`` in :data:`VARIANTS` order."""
        fwd = self.bnfast.batch_norm_forward
        x, gamma, beta, r, y = self.x, self.gamma, self.beta, self.residual, self.y
        kw: Dict[str, Any] = dict(axis=self.case.axis, eps=EPS, momentum=MOMENTUM,
                                  running_mean=self.running_mean,
                                  running_var=self.running_var, out=y,
                                  n_threads=self.threads)

        def bn_max() -> None:
            fwd(x, gamma, beta, **kw)
            np.maximum(y, 0, out=y)

        def bn_add_max() -> None:
            fwd(x, gamma, beta, **kw)
            np.add(y, r, out=y)  # y += r
            np.maximum(y, 0, out=y)

        return {
            "plain": lambda: fwd(x, gamma, beta, **kw),
            "relu": lambda: fwd(x, gamma, beta, activation="relu", **kw),
            "res+relu": lambda: fwd(x, gamma, beta, activation="relu", residual=r, **kw),
            "bn;max": bn_max,
            "bn;+r;max": bn_add_max,
        }

    def fused_agrees(self) -> bool:
        """Whether each fused call matches its unfused sequence (a gross sanity check).

        Each pair runs from the same running statistics; the outputs must match to 1e-3 of
        their largest magnitude: far above float32 rounding (a few units of 6e-8 times
        max|x| / std, here about 3), far below any real mistake (a lost ReLU or residual
        changes the output by O(1)).
        """
        calls = self.calls()
        rm0, rv0 = self.running_mean.copy(), self.running_var.copy()
        for fused, unfused in (("relu", "bn;max"), ("res+relu", "bn;+r;max")):
            results = []
            for name in (fused, unfused):
                self.running_mean[...], self.running_var[...] = rm0, rv0
                calls[name]()
                results.append(self.y.copy())
            scale = max(1.0, float(np.max(np.abs(results[1]))))
            if not np.max(np.abs(results[0] - results[1])) <= 1e-3 * scale:
                return False
        return True


def run_fused(cases: Sequence[Case], threads: int, repeats: int, min_time: float,
              progress: Optional[TextIO] = None, warmup: bool = True,
              check: bool = True) -> List[FusedRow]:
    """Time the five calls of each case side by side; return one dict per case.

    Parameters
    ----------
    cases : list of Case
        Float32 cases, e.g. :func:`fused_cases`.
    threads : int
        ``n_threads`` of bnfast (NumPy's ``maximum`` and ``+=`` are single-threaded).
    repeats, min_time, warmup
        See :func:`bnfast.bench.timing.measure`.
    progress : file-like, optional
        Where to write one line per case as it starts.
    check : bool
        Check that the fused calls match the unfused sequences
        (:meth:`FusedProblem.fused_agrees`; ``agrees`` is None when not checked).

    Returns
    -------
    list of dict
        Case fields as in the main table's rows, ``times`` (every variant's timing), the
        medians ``{variant}_s`` keyed by :func:`key`, their ratios to the plain call's
        ``{variant}_over_plain``, ``agrees`` and ``missed`` (``["relu"]`` when the fused
        ReLU exceeds :data:`FUSED_RELU_TARGET` times plain, ``["wrong"]`` when the check
        fails).
    """
    rows = []
    for i, case in enumerate(cases, 1):
        if progress is not None:
            print(f"[fused {i}/{len(cases)}] {case.label()} ...", file=progress, flush=True)
        problem = FusedProblem(case, threads)
        agrees = problem.fused_agrees() if check else None
        times = measure(problem.calls(), repeats, min_time, warmup=warmup)
        median = {name: float(times[name]["median"]) for name in VARIANTS}
        row: FusedRow = {
            "layout": case.layout, "shape": list(case.shape),
            "stored_shape": list(case.stored_shape), "axis": case.axis,
            "dtype": case.dtype, "nbytes": case.nbytes, "threads": threads,
            "times": times, "agrees": agrees,
        }
        for name in VARIANTS:
            row[key(name) + "_s"] = median[name]
            if name != "plain":
                row[key(name) + "_over_plain"] = median[name] / median["plain"]
        missed = ["wrong"] if agrees is False else []
        if row["relu_over_plain"] > FUSED_RELU_TARGET:
            missed.append("relu")
        row["missed"] = missed
        rows.append(row)
        del problem  # free the case's arrays before the next
    return rows


def key(variant: str) -> str:
    """The JSON key of a variant: ``res+relu`` -> ``residual_relu``, ``bn;max`` ->
    ``unfused_relu``, ``bn;+r;max`` -> ``unfused_residual_relu``."""
    return {"plain": "plain", "relu": "relu", "res+relu": "residual_relu",
            "bn;max": "unfused_relu", "bn;+r;max": "unfused_residual_relu"}[variant]


def format_fused(rows: Sequence[Mapping[str, Any]], targets: bool = False) -> str:
    """Return the section: a title line, a Markdown-compatible table and its notes.

    Columns: layout, shape, MiB, the median time of each variant, and each non-plain
    variant's ratio to plain (``/p``); with ``targets``, a ``targets`` column: ``PASS``
    or ``miss relu`` (fused ReLU over :data:`FUSED_RELU_TARGET` x plain).
    """
    ratios = [v + "/p" for v in VARIANTS[1:]]
    header = ["layout", "shape", "MiB"] + list(VARIANTS) + ratios
    header += ["targets"] if targets else []
    lines = []
    for row in rows:
        cells = [row["layout"], "(" + ",".join(map(str, row["shape"])) + ")",
                 f"{row['nbytes'] / 2**20:.2f}"]
        cells += [format_time(row[key(v) + "_s"]) for v in VARIANTS]
        cells += [f"{row[key(v) + '_over_plain']:.3f}" for v in VARIANTS[1:]]
        if targets:
            cells.append("PASS" if not row["missed"] else "miss " + ",".join(row["missed"]))
        lines.append(cells)
    right = set(header) - {"layout", "shape", "targets"}
    threads = rows[0]["threads"] if rows else "?"
    notes = [
        f"fused activation, float32 training forward (running statistics, out=), "
        f"bnfast n_threads={threads}; medians per call, timed side by side:",
        markdown_table(header, lines, right),
        "relu: activation=\"relu\"; res+relu: residual=r, activation=\"relu\"; "
        "bn;max: plain, then np.maximum(y, 0, out=y);",
        "bn;+r;max: plain, then y += r and np.maximum (NumPy, single-threaded); "
        "/p: median over plain's median",
    ]
    if targets:
        notes.append(f"target (development): relu/p <= {FUSED_RELU_TARGET}")
    return "\n".join(notes)
