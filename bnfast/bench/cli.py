"""``python -m bnfast bench``: the speed table, and the short table of ``python -m bnfast``.

How performance is measured: ``docs/design.md`` §6.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, TextIO, Tuple

from . import busy as _busy
from . import load, report, targets
from .cases import EPS, MOMENTUM, full_grid, quick_grid, short_grid
from .fused import fused_cases, format_fused, run_fused
from .half import format_half, half_cases, run_half
from .rows import RowResult, import_torch, run_rows
from .scaler import fresh_processes
from .timing import MIN_TIME, QUICK_MIN_TIME, QUICK_REPEATS, REPEATS

#: Fresh processes of the scaler figure, by default (``--quick``: none).
SCALER_PROCESSES = 10

DESCRIPTION = """\
Time bnfast against plain NumPy, PyTorch (when installed) and the memory-bandwidth floor
(a streaming copy), side by side in one run, and print a table of median times per call
and their ratios. Then time BatchNormScaler().fit_transform against scikit-learn's
StandardScaler().fit_transform, each as the first call of a fresh process, in several
processes, and print the median and range of each time and of their ratio.

Between the two, a "fused activation" table times the float32 training forward plain, with
activation="relu", with residual=r and activation="relu", and the unfused NumPy sequences
(bn, then np.maximum; bn, then y += r and np.maximum), side by side, with each one's ratio to
the plain forward (3 cases; --quick: 2 smaller ones).

After the fused table, a "half precision" table times each call on float16 and bfloat16 data
against the same call on float32 data (bfloat16: ml_dtypes arrays; skipped, with the reason, when
ml_dtypes is missing or this bnfast does not accept them). --half prints only that table.

The full grid has 33 rows of 64 KiB to 64 MiB arrays and takes minutes. --quick times 12
rows of smaller arrays (up to 6 MiB) with 3 repeats and skips the scaler: a glance, not
figures to quote.

On a busy machine: --busy K (or --busy-per-core P) replaces all of the above with the
busy-machine table. It starts K spinning processes (pure-CPU loops that stop by themselves;
the bench stops them when it is done, also on Ctrl-C), then times bnfast at its default
threads and at one thread, and PyTorch at its default threads, side by side, call by call,
as users call them (no out=, running statistics updated), on (N, C) and NCHW arrays of 0.25
to 50 MiB: medians, 90th percentiles and their ratios. Several counts run one after the
other: --busy 0 2 4, or --busy-per-core 1 2 for 1 and 2 spinners per usable CPU.
"""

#: What to do on a busy machine, said under the busy note of the bench and of the main job.
BENCH_HINT = ("For figures to compare, rerun when the machine is quiet; --threads 1 shows "
              "one-thread times, and --busy-per-core 1 2 measures a busy machine on purpose "
              "(default threads against one thread).")
MAIN_HINT = ("For figures to compare, rerun when the machine is quiet, or see one-thread "
             "times: python -m bnfast bench --quick --threads 1")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``bench`` to ``parser`` and return it."""
    parser.add_argument("--quick", action="store_true",
                        help="12 rows of smaller arrays (up to 6 MiB), 3 repeats, no scaler "
                             "processes")
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help=f"threads for bnfast, PyTorch and the copy (default: all cores, "
                             f"{os.cpu_count() or 1} here; not with --busy)")
    parser.add_argument("--repeats", type=_positive_int, default=None, metavar="R",
                        help=f"timing rounds per row (default {REPEATS}, "
                             f"{QUICK_REPEATS} with --quick; with --busy {_busy.ROUNDS}, "
                             f"{_busy.QUICK_ROUNDS} with --quick)")
    busy = parser.add_mutually_exclusive_group()
    busy.add_argument("--busy", type=_count, nargs="+", default=None, metavar="K",
                      help="only the busy-machine table, beside K spinning processes; "
                           "several K run one after the other (e.g. --busy 0 2 4)")
    busy.add_argument("--busy-per-core", type=_count, nargs="+", default=None, metavar="P",
                      help=f"the same with P spinning processes per usable CPU "
                           f"(e.g. --busy-per-core 1 2: the targets' two levels; "
                           f"{_busy.usable_cpus()} CPUs usable here)")
    busy.add_argument("--half", action="store_true",
                      help="only the half-precision table: float16 and bfloat16 calls "
                           "against float32 ones")
    parser.add_argument("--scaler-processes", type=_count, default=None, metavar="P",
                        help=f"fresh processes per scaler for the scaler figure (default "
                             f"{SCALER_PROCESSES}, 0 with --quick; 0 skips it)")
    parser.add_argument("--json", metavar="FILE",
                        help="also write every row, every sample and the machine's "
                             "description to FILE")
    parser.add_argument("--targets", action="store_true",
                        help="for development: add a pass/miss verdict against the "
                             "project's speed targets (docs/design.md, section 6)")
    return parser


def build_parser(prog: str = "python -m bnfast bench") -> argparse.ArgumentParser:
    """Return the stand-alone parser of ``bench``."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return configure_parser(parser)


def run(args: argparse.Namespace, out: Optional[TextIO] = None,
        err: Optional[TextIO] = None) -> int:
    """Run ``bench`` with parsed arguments; return the exit status (0).

    ``out`` receives the results (default ``sys.stdout``), ``err`` the progress lines
    (default ``sys.stderr``).
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    busy_levels = _busy.spinner_levels(args.busy, args.busy_per_core)
    if args.busy is not None or args.busy_per_core is not None:
        if args.threads is not None:
            raise SystemExit("bench: --threads does not apply to --busy and --busy-per-core "
                             "(they time bnfast's default threads and one thread)")
        return _run_busy(args, busy_levels, out, err)
    threads = args.threads or os.cpu_count() or 1
    grid = quick_grid() if args.quick else full_grid()
    repeats = args.repeats or (QUICK_REPEATS if args.quick else REPEATS)
    min_time = QUICK_MIN_TIME if args.quick else MIN_TIME
    if args.half:
        return _run_half(args, threads, repeats, min_time, out, err)
    n_scaler = args.scaler_processes
    if n_scaler is None:
        n_scaler = 0 if args.quick else SCALER_PROCESSES
    info, machine_load = _start(threads, err)
    started = time.perf_counter()
    # --quick: the first timing trial is each callable's warm-up, and bnfast is checked
    # against NumPy only for the --targets verdict.
    rows = run_rows(grid, threads, repeats, min_time, progress=err,
                    warmup=not args.quick, check=args.targets or not args.quick)
    fused = run_fused(fused_cases(args.quick), threads, repeats, min_time, progress=err,
                      warmup=not args.quick, check=args.targets or not args.quick)
    half = run_half(half_cases(args.quick), threads, repeats, min_time, progress=err,
                    warmup=not args.quick, check=args.targets or not args.quick)
    scaler = None
    why = "skipped: --quick" if args.quick else "skipped: --scaler-processes 0"
    if n_scaler:
        scaler = fresh_processes(n_scaler, threads, progress=err)
        why = "scikit-learn not installed"

    _print_load_note(machine_load, threads, BENCH_HINT, out)
    print(report.format_table(rows, targets=args.targets), file=out)
    print(file=out)
    print(format_fused(fused, targets=args.targets), file=out)
    print(file=out)
    print(format_half(half, targets=args.targets), file=out)
    print(file=out)
    print(report.format_scaler(scaler, why), file=out)
    print(report.table_notes(threads, info["torch"]), file=out)
    if args.targets:
        print(targets.describe(), file=out)
        met = sum(1 for row in rows if not row["missed"])
        line = f"{met}/{len(rows)} rows meet every target"
        fused_met = sum(1 for row in fused if not row["missed"])
        line += f"; fused relu {fused_met}/{len(fused)}"
        half_met = sum(1 for row in half["rows"] if not row["missed"])
        line += f"; half precision {half_met}/{len(half['rows'])}"
        if scaler is not None:
            ok = scaler["speedup"]["median"] >= targets.SCALER_TARGET
            line += f"; scaler {'PASS' if ok else 'miss'}"
        print(line, file=out)
    settings = {"repeats": repeats, "min_time_s": min_time, "scaler_processes": n_scaler}
    return _finish(args, info, machine_load, started, settings,
                   {"rows": rows, "fused": fused, "half": half, "scaler": scaler}, out, err)


def _start(threads: Optional[int], err: TextIO) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Describe the machine (on ``err``) and measure its load, before anything is timed."""
    torch = import_torch()
    info = report.machine_info(threads, None if torch is None else torch.__version__)
    print(f"bnfast {info['bnfast']}, numpy {info['numpy']}, torch {info['torch'] or 'n/a'}, "
          f"{info['cpu']}, {info['cores']} cores", file=err, flush=True)
    return info, load.sample()


def _print_load_note(machine_load: Dict[str, Any], threads: Optional[int], hint: str,
                     out: TextIO) -> None:
    """Print, above a table, what a loaded machine does to its times (nothing when idle)."""
    note = load.note_for(machine_load, threads=threads, hint=hint)
    if note:
        print(note + "\n", file=out)


def _finish(args: argparse.Namespace, info: Dict[str, Any], machine_load: Dict[str, Any],
            started: float, settings: Dict[str, Any], results: Dict[str, Any], out: TextIO,
            err: TextIO) -> int:
    """Print the closing line (the machine, the time taken, the load before and after) and
    write ``--json``: the machine, its load, the settings and ``results``. Returns 0."""
    elapsed = time.perf_counter() - started
    load_after = report.load_average()
    print(f"{info['cpu']}, {info['cores']} cores; {elapsed:.0f} s; "
          f"load average {info['load_average']} before, {load_after} after", file=out)
    if args.json:
        settings = dict(settings, quick=args.quick, eps=EPS, momentum=MOMENTUM,
                        elapsed_s=elapsed, load_average_after=load_after)
        document = {"machine": info, "load": machine_load, "settings": settings, **results}
        with open(args.json, "w") as f:
            json.dump(document, f, indent=1)
            f.write("\n")
        print(f"wrote {args.json}", file=err)
    return 0


def _run_half(args: argparse.Namespace, threads: int, repeats: int, min_time: float,
              out: TextIO, err: TextIO) -> int:
    """``bench --half``: only the half-precision table."""
    info, machine_load = _start(threads, err)
    started = time.perf_counter()
    half = run_half(half_cases(args.quick), threads, repeats, min_time, progress=err,
                    warmup=not args.quick, check=args.targets or not args.quick)
    _print_load_note(machine_load, threads, BENCH_HINT, out)
    print(format_half(half, targets=args.targets), file=out)
    settings = {"half": True, "repeats": repeats, "min_time_s": min_time}
    return _finish(args, info, machine_load, started, settings, {"half": half}, out, err)


def _run_busy(args: argparse.Namespace, levels: List[int], out: TextIO, err: TextIO) -> int:
    """``bench --busy K ...`` / ``--busy-per-core P ...``: only the busy-machine table."""
    rounds = args.repeats or (_busy.QUICK_ROUNDS if args.quick else _busy.ROUNDS)
    min_time = _busy.QUICK_MIN_TIME if args.quick else _busy.MIN_TIME
    info, machine_load = _start(None, err)
    started = time.perf_counter()
    result = _busy.run_busy(levels, _busy.busy_grid(args.quick), rounds, min_time,
                            progress=err)
    # The note judges the machine before the spinners: they are the point of this table.
    _print_load_note(machine_load, None, "", out)
    print(_busy.format_busy(result, targets=args.targets), file=out)
    settings = {"busy": levels, "rounds": rounds, "min_time_s": min_time}
    return _finish(args, info, machine_load, started, settings, {"busy": result}, out, err)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m bnfast bench [options]``; ``argv`` are the arguments after ``bench``."""
    return run(build_parser().parse_args(argv))


def short_table(file: Optional[TextIO] = None, threads: Optional[int] = None) -> List[RowResult]:
    """Print the four-row speed table of ``python -m bnfast``: bnfast, NumPy, PyTorch, floor.

    Parameters
    ----------
    file : file-like, optional
        Where to print (default ``sys.stdout``).
    threads : int, optional
        Threads for bnfast and PyTorch (default: ``os.cpu_count()``).

    Returns
    -------
    list of dict
        The rows, as :func:`bnfast.bench.rows.run_rows` returns them.
    """
    file = sys.stdout if file is None else file
    threads = threads or os.cpu_count() or 1
    machine_load = load.sample()
    rows = run_rows(short_grid(), threads, repeats=QUICK_REPEATS, min_time=QUICK_MIN_TIME,
                    warmup=False, check=False)
    torch = import_torch()
    _print_load_note(machine_load, threads, MAIN_HINT, file)
    print(report.format_table(rows), file=file)
    print(report.table_notes(threads, None if torch is None else torch.__version__), file=file)
    return rows
