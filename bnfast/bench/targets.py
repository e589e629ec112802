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
