"""bnfast.batch_norm_forward / _inference / _backward, each with out= and n_threads."""

from .common import DTYPES, LAYOUTS, OPS, SHAPES_2D, SHAPES_4D, THREADS, Inputs, bnfast_call


class BatchNorm2D:
    """``bnfast.<op>`` on an (N, C) batch, axis=1."""

    params = [SHAPES_2D, DTYPES, OPS, THREADS]
    param_names = ["shape", "dtype", "op", "n_threads"]

    def setup(self, shape, dtype, op, n_threads):
        self.call = bnfast_call(Inputs(shape, "NC", dtype, op), op, n_threads)

    def time_bnfast(self, shape, dtype, op, n_threads):
        self.call()

    def peakmem_bnfast(self, shape, dtype, op, n_threads):
        self.call()


class BatchNorm4D:
    """``bnfast.<op>`` on an (N, C, H, W) batch stored NCHW (axis=1) or NHWC (axis=-1)."""

    params = [SHAPES_4D, LAYOUTS, DTYPES, OPS, THREADS]
    param_names = ["shape", "layout", "dtype", "op", "n_threads"]

    def setup(self, shape, layout, dtype, op, n_threads):
        self.call = bnfast_call(Inputs(shape, layout, dtype, op), op, n_threads)

    def time_bnfast(self, shape, layout, dtype, op, n_threads):
        self.call()

    def peakmem_bnfast(self, shape, layout, dtype, op, n_threads):
        self.call()
