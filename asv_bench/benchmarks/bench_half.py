"""bnfast's calls on float16 and bfloat16 data next to the same calls on float32 data.

Batch norm is bound by memory traffic: a half-precision call should take about half the
float32 time (issue 19's target: at most 0.6x, on arrays of 1 MiB or more, in (N, C), NCHW
and NHWC, at 1 and 2 threads). The same values in each dtype (drawn in float32, rounded);
gamma, beta and the running statistics are float32 for half data, as in PyTorch; out= and
running statistics, like bench_bnfast's. bfloat16 is ``ml_dtypes.bfloat16``: skipped when
ml_dtypes is not installed or when the commit's bnfast does not accept it (found by making
the call, never from a version).
"""

from .common import HALF_DTYPES, HALF_SHAPE_LAYOUTS, OPS, THREADS, Inputs, bnfast_call


class Half:
    """``bnfast.<op>`` on float32, float16 and bfloat16 arrays of the same shape."""

    params = [HALF_SHAPE_LAYOUTS, HALF_DTYPES, OPS, THREADS]
    param_names = ["shape_layout", "dtype", "op", "n_threads"]

    def setup(self, shape_layout, dtype, op, n_threads):
        shape, layout = shape_layout
        try:
            d = Inputs(shape, layout, dtype, op)
        except ImportError:
            raise NotImplementedError("ml_dtypes is not installed")  # asv: skipped
        self.call = bnfast_call(d, op, n_threads)
        try:
            self.call()
        except TypeError as e:  # this commit's bnfast rejects the dtype
            raise NotImplementedError(str(e))

    def time_bnfast(self, shape_layout, dtype, op, n_threads):
        self.call()
