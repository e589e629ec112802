"""The development targets (``docs/design.md`` §6), and which of them a row misses.

Users see times and ratios; these pass/miss verdicts are for development and print only
with ``python -m bnfast bench --targets``. "At least 10x faster than NumPy" is no longer a
target: NumPy runs at 2-9x the copy floor, so no kernel at the floor could meet it.
"""

from __future__ import annotations

from typing import Any, List, Mapping

#: bnfast within this factor of the copy floor, on arrays of at least FLOOR_MIN_BYTES.
FLOOR_TARGET = 1.2
FLOOR_MIN_BYTES = 1 << 20
#: bnfast's time over PyTorch's: at most 1.0, and 0.5 on NCHW training forward.
TORCH_TARGET = 1.0
TORCH_TARGET_NCHW_TRAIN = 0.5
#: A (256, 64) float32 training forward under 10 microseconds.
SMALL_TARGET_S = 10e-6
SMALL_SHAPE = (256, 64)
#: BatchNormScaler.fit_transform at least 5x faster than StandardScaler's (median over
#: fresh processes).
SCALER_TARGET = 5.0


def missed_targets(row: Mapping[str, Any]) -> List[str]:
    """Return the names of the targets that a row misses.

    Parameters
    ----------
    row : dict
        As :func:`bnfast.bench.rows.run_rows` makes it.

    Returns
    -------
    list of str
        Subset of ``floor``, ``torch``, ``10us`` and ``wrong`` (bnfast and NumPy disagree);
        empty when every target that applies is met.
    """
    missed = []
    if row["agrees_with_numpy"] is False:  # None: not checked
        missed.append("wrong")
    if row["nbytes"] >= FLOOR_MIN_BYTES and row["bnfast_over_floor"] > FLOOR_TARGET:
        missed.append("floor")
    if row["bnfast_over_torch"] is not None:
        limit = TORCH_TARGET_NCHW_TRAIN if (row["layout"], row["op"]) == ("NCHW", "train") \
            else TORCH_TARGET
        if row["bnfast_over_torch"] > limit:
            missed.append("torch")
    if (tuple(row["shape"]), row["dtype"], row["op"]) == (SMALL_SHAPE, "float32", "train") \
            and row["bnfast_s"] >= SMALL_TARGET_S:
        missed.append("10us")
    return missed


def describe() -> str:
    """One line naming every target, printed under the table with ``--targets``."""
    return (f"targets (development, docs/design.md §6): bn/floor <= {FLOOR_TARGET} "
            f"(>= 1 MiB), bn/torch <= {TORCH_TARGET} ({TORCH_TARGET_NCHW_TRAIN} NCHW train), "
            f"(256,64) f32 train < 10 us, scaler median >= {SCALER_TARGET:g}x StandardScaler")


#: Busy machine (issue 18), with 1 and 2 spinning processes per core: bnfast's median at
#: its default threads at most this many times its one-thread median, ...
BUSY_ONE_THREAD_TARGET = 1.5
#: ... its 90th percentile at most this many times its median, ...
BUSY_TAIL_TARGET = 3.0
#: ... and its median at most PyTorch's, at PyTorch's default threads.
BUSY_TORCH_TARGET = 1.0
#: Half precision (issue 19): a float16 or bfloat16 call on an array of 1 MiB or more takes
#: at most this many times the same call on float32 data (the floor is 0.5: half the bytes).
HALF_TARGET = 0.6


def missed_busy_targets(row: Mapping[str, Any]) -> List[str]:
    """Return the busy-machine targets a row of the busy bench misses.

    Parameters
    ----------
    row : dict
        As :func:`bnfast.bench.busy.run_busy` makes it.

    Returns
    -------
    list of str
        Subset of ``1thread`` (default-thread median over one-thread median above
        :data:`BUSY_ONE_THREAD_TARGET`), ``p90`` (default-thread p90 over its median above
        :data:`BUSY_TAIL_TARGET`) and ``torch`` (over PyTorch's median, when measured).
    """
    missed = []
    if row["default_over_one"] > BUSY_ONE_THREAD_TARGET:
        missed.append("1thread")
    if row["default_p90_over_median"] > BUSY_TAIL_TARGET:
        missed.append("p90")
    if row["default_over_torch"] is not None and row["default_over_torch"] > BUSY_TORCH_TARGET:
        missed.append("torch")
    return missed


def describe_busy() -> str:
    """The line naming the busy-machine targets, printed under the busy table."""
    return (f"targets (development, issue 18; stated for 1 and 2 spinners per core): "
            f"def/1t <= {BUSY_ONE_THREAD_TARGET}, p90/def <= {BUSY_TAIL_TARGET:g}, "
            f"def/torch <= {BUSY_TORCH_TARGET}")
