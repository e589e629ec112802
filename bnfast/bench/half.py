"""The bench's "half precision" section: float16 and bfloat16 calls against float32 ones.

Batch norm is bound by memory traffic, so a call on half-precision data, half the bytes,
should take about half the time of the same call on float32 data (issue 19's target: at most
:data:`bnfast.bench.targets.HALF_TARGET` times, on arrays of 1 MiB or more). For each case
(:func:`half_cases`: an (N, C), an NCHW and an NHWC array) and each op (training forward
with running statistics, inference, backward), the float32, float16 and bfloat16 calls are
timed side by side (:func:`bnfast.bench.timing.measure`, interleaved rounds), each with a
preallocated, touched ``out=`` and ``n_threads`` like the main table's, on the same values
(drawn in float32, then rounded to the half dtype). Per-channel vectors and running
statistics are float32 for half data, as in PyTorch.

bfloat16 arrays are ``ml_dtypes.bfloat16``. Its rows are skipped, with the reason printed,
when ml_dtypes is not installed or when this build of bnfast does not accept bfloat16: the
support is found by trying three tiny calls (:func:`unsupported`), never from a version, so
that the rows run unchanged once bnfast accepts it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, TextIO

import numpy as np

from . import targets as _targets
from .cases import HALF_DTYPES, OPS, Case, param_dtype, resolve_dtype
from .report import format_time, markdown_table
from .rows import Problem
from .timing import measure

HalfRow = Dict[str, Any]


def half_cases(quick: bool = False) -> List[Case]:
    """Return the float32 cases of the section; each is also timed in float16 and bfloat16.

    Full: the (65536, 256) batch and the ResNet-sized (32, 64, 56, 56) batch in NCHW and NHWC
    (32 and 12.25 MiB in half precision), the shapes of issue 19. ``--quick``: a (1024, 1024)
    batch and an (8, 64, 56, 56) batch in NCHW and NHWC (2 and 3.06 MiB in half precision).
    Every half array is 1 MiB or more, the arrays the target is stated for.
    """
    if quick:
        return [Case((1024, 1024), "NC", "float32")] + [
            Case((8, 64, 56, 56), layout, "float32") for layout in ("NCHW", "NHWC")]
    return [Case((65536, 256), "NC", "float32")] + [
        Case((32, 64, 56, 56), layout, "float32") for layout in ("NCHW", "NHWC")]


def unsupported(dtype: str) -> Optional[str]:
    """Why the ``dtype`` rows cannot run here, or None when they can.

    Tries the training forward (with running statistics), the inference and the backward
    on a tiny array of ``dtype``: a build that rejects the dtype raises, and one that
    returns another dtype converts it (then its times would not be half precision's).
    """
    try:
        np_dtype = resolve_dtype(dtype)
    except ImportError:
        return "ml_dtypes is not installed (pip install ml_dtypes)"
    import bnfast

    x = (np.arange(24, dtype=np.float32).reshape(6, 4) % 5).astype(np_dtype)
    ones = np.ones(4, dtype=param_dtype(dtype))
    try:
        y, mean, invstd = bnfast.batch_norm_forward(
            x, ones, 0 * ones, axis=1, running_mean=0 * ones, running_var=ones.copy())
        results = [y, bnfast.batch_norm_inference(x, 0 * ones, ones, ones, 0 * ones, axis=1),
                   bnfast.batch_norm_backward(x, x, mean, invstd, ones, axis=1)[0]]
    except (TypeError, ValueError, NotImplementedError) as e:
        return f"this bnfast rejects {dtype} arrays ({type(e).__name__}: {e})"
    for result in results:
        if result.dtype != np_dtype:
            return f"this bnfast returns {result.dtype} for {dtype} input"
    return None


def agrees_with_float32(problems: Mapping[str, Problem], op: str) -> bool:
    """Whether each half call's result matches the float32 call's (a gross sanity check).

    Every call runs once from the same running statistics, on the same values rounded to
    each dtype. With u the unit roundoff of the half dtype (2^-11 for float16, 2^-8 for
    bfloat16), rounding x (|x| <= 13, std 2, gamma <= 1.5) moves y by at most about
    1.5 * 13 / 2 * u ~ 10u of its scale, rounding y by u, and the backward's dx likewise
    (its other terms are means of m such errors): 32u of the float32 result's largest
    magnitude bounds the difference, and a real mistake (a wrong channel, a lost
    normalization) changes the result by O(1) of it.
    """
    results = {}
    for d, problem in problems.items():
        rm, rv = problem.running["bnfast"]
        rm[...], rv[...] = problem.running_mean0, problem.running_var0
        problem.bnfast_call(op)()
        results[d] = problem.out["bnfast"].astype(np.float64)
    want = results.pop("float32")
    scale = max(1.0, float(np.max(np.abs(want))))
    for d, got in results.items():
        unit_roundoff = 2.0 ** -11 if d == "float16" else 2.0 ** -8
        if not np.max(np.abs(got - want)) <= 32 * unit_roundoff * scale:
            return False
    return True


def run_half(cases: Sequence[Case], threads: int, repeats: int, min_time: float,
             progress: Optional[TextIO] = None, warmup: bool = True,
             check: bool = True) -> Dict[str, Any]:
    """Time each op of each case in float32, float16 and bfloat16, side by side.

    Parameters
    ----------
    cases : list of Case
        float32 cases, e.g. :func:`half_cases`.
    threads : int
        ``n_threads`` of every call.
    repeats, min_time, warmup
        See :func:`bnfast.bench.timing.measure`.
    progress : file-like, optional
        Where to write one line per row as it starts.
    check : bool
        Check that the half calls agree with the float32 call (:func:`agrees_with_float32`;
        ``agrees`` is None when not checked).

    Returns
    -------
    dict
        ``rows``: one dict per case and op with the case's fields (``nbytes``: of the
        float32 array), ``times``, the medians ``float32_s``, ``float16_s`` and
        ``bfloat16_s`` (None when skipped), the ratios ``float16_over_float32`` and
        ``bfloat16_over_float32``, ``agrees`` and ``missed`` (``"wrong"`` when the check
        fails, ``"float16"`` and ``"bfloat16"`` when the dtype's ratio exceeds
        :data:`bnfast.bench.targets.HALF_TARGET`);
        ``skipped``: ``{dtype: reason}`` for each half dtype whose rows did not run;
        ``threads``.
    """
    skipped = {d: why for d in HALF_DTYPES for why in [unsupported(d)] if why is not None}
    dtypes = ["float32"] + [d for d in HALF_DTYPES if d not in skipped]
    rows: List[HalfRow] = []
    step = 0
    for case in cases:
        problems = {d: Problem(dataclasses.replace(case, dtype=d), threads) for d in dtypes}
        for op in OPS:
            step += 1
            if progress is not None:
                print(f"[half {step}/{len(cases) * len(OPS)}] {op} {case.label()} ...",
                      file=progress, flush=True)
            agrees = agrees_with_float32(problems, op) if check else None
            calls = {d: problem.bnfast_call(op) for d, problem in problems.items()}
            times = measure(calls, repeats, min_time, warmup=warmup)
            row: HalfRow = {
                "op": op, "layout": case.layout, "shape": list(case.shape),
                "stored_shape": list(case.stored_shape), "axis": case.axis,
                "nbytes": case.nbytes, "threads": threads, "times": times,
                "float32_s": float(times["float32"]["median"]), "agrees": agrees,
                "missed": ["wrong"] if agrees is False else [],
            }
            for d in HALF_DTYPES:
                median = float(times[d]["median"]) if d in times else None
                row[d + "_s"] = median
                ratio = None if median is None else median / row["float32_s"]
                row[d + "_over_float32"] = ratio
                if ratio is not None and ratio > _targets.HALF_TARGET:
                    row["missed"].append(d)
            rows.append(row)
        del problems  # free the case's arrays before the next
    return {"rows": rows, "skipped": skipped, "threads": threads}


def format_half(result: Mapping[str, Any], targets: bool = False) -> str:
    """Return the section: a title line, a Markdown-compatible table and its notes.

    With ``targets``, a ``targets`` column: ``PASS`` or the half dtypes whose ratio to
    float32 exceeds :data:`bnfast.bench.targets.HALF_TARGET`, and the target's line.
    """
    header = ["op", "layout", "shape", "MiB f16", "float32", "float16", "bfloat16",
              "f16/f32", "bf16/f32"] + (["targets"] if targets else [])
    lines = []
    for row in result["rows"]:
        cells = [row["op"], row["layout"], "(" + ",".join(map(str, row["shape"])) + ")",
                 f"{row['nbytes'] / 2**21:.2f}"]  # nbytes: the float32 array's
        cells += [format_time(row[d + "_s"]) for d in ("float32",) + HALF_DTYPES]
        cells += ["n/a" if row[d + "_over_float32"] is None
                  else f"{row[d + '_over_float32']:.2f}" for d in HALF_DTYPES]
        if targets:
            cells.append("PASS" if not row["missed"] else "miss " + ",".join(row["missed"]))
        lines.append(cells)
    right = set(header) - {"op", "layout", "shape", "targets"}
    text = [
        f"half precision: each call on float16 and bfloat16 data against the same call on "
        f"float32 data (out=, bnfast n_threads={result['threads']}); medians per call, timed "
        "side by side:",
        markdown_table(header, lines, right),
        "same values in each dtype (drawn in float32, rounded); gamma, beta and the running "
        "statistics float32; f16/f32, bf16/f32: median over float32's median (the floor is "
        "0.5: half the bytes)",
    ]
    for dtype, why in result["skipped"].items():
        text.append(f"{dtype}: skipped: {why}")
    if targets:
        text.append(f"target (development, issue 19): f16/f32 and bf16/f32 <= "
                    f"{_targets.HALF_TARGET} on arrays of 1 MiB or more")
    return "\n".join(text)
