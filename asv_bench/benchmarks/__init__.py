"""airspeed velocity benchmarks for bnfast.

bench_bnfast     bnfast's three batch-norm functions (with and without out=) and moments
bench_numpy      the plain NumPy baseline (bnfast/bench/numpy_twin.py)
bench_torch      PyTorch's CPU batch norm (skipped when torch is not installed)
bench_copy       the streaming copy that sets the memory-bandwidth floor
bench_layer      the BatchNorm layer: training forward, backward, eval forward
bench_scaler     BatchNormScaler against StandardScaler (skipped without scikit-learn)
bench_torch_module  bnfast.torch's BatchNorm layers against torch's (skipped without torch)

The suites share their parameters (common.py): shape, layout (4-D only), dtype, op (named
after bnfast's function, whose equivalent each peer runs) and n_threads (where the
implementation is threaded), so that their tables and graphs line up row by row.
"""

try:
    import bnfast  # noqa: F401
except ImportError:
    # "existing" environment with bnfast built in place (setup.py build_ext --inplace) but
    # not installed: benchmark the checkout this folder belongs to.
    import os
    import sys

    _repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, _repo)
