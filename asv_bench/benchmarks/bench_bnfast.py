"""bnfast's functions: batch_norm_forward / _inference / _backward with and without out=,
and moments."""

from functools import partial

import bnfast

from .common import (DTYPES, LAYOUTS, OPS, SHAPE_LAYOUTS, SHAPES_2D, SHAPES_4D, THREADS,
                     Inputs, bnfast_call)


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


class BatchNormNoOut:
    """``bnfast.<op>`` as a user calls it: no ``out=`` (every call allocates its result),
    running statistics updated by the training forward. float32."""

    params = [SHAPE_LAYOUTS, OPS, THREADS]
    param_names = ["shape_layout", "op", "n_threads"]

    def setup(self, shape_layout, op, n_threads):
        shape, layout = shape_layout
        self.call = bnfast_call(Inputs(shape, layout, "float32", op), op, n_threads, out=False)

    def time_bnfast_no_out(self, shape_layout, op, n_threads):
        self.call()

    def peakmem_bnfast_no_out(self, shape_layout, op, n_threads):
        self.call()


class Moments:
    """``bnfast.moments(x, axis)``: the per-channel mean and variance alone."""

    params = [SHAPE_LAYOUTS, DTYPES, THREADS]
    param_names = ["shape_layout", "dtype", "n_threads"]

    def setup(self, shape_layout, dtype, n_threads):
        shape, layout = shape_layout
        d = Inputs(shape, layout, dtype, "batch_norm_forward")
        self.call = partial(bnfast.moments, d.x, axis=d.axis, n_threads=n_threads)

    def time_moments(self, shape_layout, dtype, n_threads):
        self.call()
