"""The memory-bandwidth floor: a streaming copy of an array of each benchmarked size.

A copy reads and writes the array once. The floor of a batch-norm call is this time times
1.5 (training forward: reads x twice, writes y), 1.0 (inference) or 2.5 (backward: reads x
and dy twice, writes dx): compare with ``asv compare`` or the published graphs.
"""

import numpy as np

from .common import DTYPES, SHAPES_2D, SHAPES_4D, THREADS, ThreadedCopy


class StreamingCopy:
    """``np.copyto(dst, src)``; with n_threads > 1, each thread copies one slice."""

    params = [SHAPES_2D + SHAPES_4D, DTYPES, THREADS]
    param_names = ["shape", "dtype", "n_threads"]

    def setup(self, shape, dtype, n_threads):
        self.src = np.ones(shape, dtype=dtype)
        self.dst = np.zeros_like(self.src)
        self.threaded = ThreadedCopy(self.dst, self.src, n_threads) if n_threads > 1 else None

    def teardown(self, shape, dtype, n_threads):
        if self.threaded is not None:
            self.threaded.close()

    def _copy(self):
        if self.threaded is None:
            np.copyto(self.dst, self.src)
        else:
            self.threaded()

    def time_copyto(self, shape, dtype, n_threads):
        self._copy()

    def peakmem_copyto(self, shape, dtype, n_threads):
        self._copy()
