"""Benchmarks of bnfast against NumPy, PyTorch and the memory-bandwidth floor.

Run ``python -m bnfast bench`` (see ``--help``). The package's modules:

cases       the grid of cases and the arrays they are timed on (also used by asv_bench)
numpy_twin  the plain NumPy implementation timed as the NumPy baseline
timing      timing callables side by side (interleaved rounds, medians; call by call, p90)
rows        what one row times: bnfast, NumPy, PyTorch and the copy floor
fused       the fused ReLU / residual add against the plain forward and the unfused sequences
half        float16 and bfloat16 calls against the same calls on float32 data
busy        the busy-machine table (``--busy``): default threads, one thread and PyTorch
spinners    the bounded spinning processes that make the machine busy
load        how loaded the machine is, and the words that say so above a table
targets     the development targets and each row's pass/miss verdict (``--targets``)
scaler      BatchNormScaler against StandardScaler over fresh processes
report      formatting of the table, its notes and the scaler lines
cli         the ``bench`` command line and the short table of ``python -m bnfast``

How performance is measured: ``docs/design.md`` §6.
"""

from .cases import EPS, MOMENTUM, OPS, PASSES, Case, full_grid, quick_grid, short_grid
from .cli import main, short_table
from .numpy_twin import (numpy_batch_norm_backward, numpy_batch_norm_forward,
                         numpy_batch_norm_inference)
from .report import format_table, format_time
from .rows import Problem, run_rows
from .timing import measure

__all__ = [
    "EPS", "MOMENTUM", "OPS", "PASSES", "Case", "full_grid", "quick_grid", "short_grid",
    "main", "short_table", "numpy_batch_norm_forward", "numpy_batch_norm_inference",
    "numpy_batch_norm_backward", "format_table", "format_time", "Problem", "run_rows",
    "measure",
]
