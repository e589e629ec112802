"""The plain NumPy baseline (bnfast/bench/numpy_twin.py): single-threaded."""

from .common import DTYPES, LAYOUTS, OPS, SHAPES_2D, SHAPES_4D, Inputs, numpy_call


class NumpyBatchNorm2D:
    """NumPy twin of ``bnfast.<op>`` on an (N, C) batch, axis=1."""

    params = [SHAPES_2D, DTYPES, OPS]
    param_names = ["shape", "dtype", "op"]

    def setup(self, shape, dtype, op):
        self.call = numpy_call(Inputs(shape, "NC", dtype, op), op)

    def time_numpy(self, shape, dtype, op):
        self.call()

    def peakmem_numpy(self, shape, dtype, op):
        self.call()


class NumpyBatchNorm4D:
    """NumPy twin of ``bnfast.<op>`` on an (N, C, H, W) batch stored NCHW or NHWC."""

    params = [SHAPES_4D, LAYOUTS, DTYPES, OPS]
    param_names = ["shape", "layout", "dtype", "op"]

    def setup(self, shape, layout, dtype, op):
        self.call = numpy_call(Inputs(shape, layout, dtype, op), op)

    def time_numpy(self, shape, layout, dtype, op):
        self.call()

    def peakmem_numpy(self, shape, layout, dtype, op):
        self.call()
