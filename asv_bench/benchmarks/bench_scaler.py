"""``BatchNormScaler`` against scikit-learn's ``StandardScaler`` on a (65536, 256) float32 X,
and on a large CSR matrix (``with_mean=False``): fit, and partial_fit in row blocks.

These time repeated calls in one process (asv's way). The figure users read is the first
call of a fresh process: ``python -m bnfast bench`` reports it over several processes (and
``tools/bench_sparse_scaler.py`` for the sparse row).
"""

import numpy as np

from .common import SCALER_SHAPE, SPARSE_CHUNKS, SPARSE_SCALER, THREADS, cases

try:
    from sklearn.preprocessing import StandardScaler
except ImportError:
    StandardScaler = None
try:
    from bnfast.preprocessing import BatchNormScaler
except ImportError:  # a commit before the scaler existed
    BatchNormScaler = None


class Scaler:
    """fit_transform and transform of both scalers (n_threads: BatchNormScaler's)."""

    params = [[SCALER_SHAPE], THREADS]
    param_names = ["shape", "n_threads"]
    timeout = 300

    def setup(self, shape, n_threads):
        if StandardScaler is None or BatchNormScaler is None:
            raise NotImplementedError("needs scikit-learn and bnfast.preprocessing")
        self.X = cases.scaler_input(tuple(shape))
        self.ours = BatchNormScaler(n_threads=n_threads).fit(self.X)
        self.theirs = StandardScaler().fit(self.X)

    def time_batchnormscaler_fit_transform(self, shape, n_threads):
        BatchNormScaler(n_threads=n_threads).fit_transform(self.X)

    def time_standardscaler_fit_transform(self, shape, n_threads):
        StandardScaler().fit_transform(self.X)

    def time_batchnormscaler_transform(self, shape, n_threads):
        self.ours.transform(self.X)

    def time_standardscaler_transform(self, shape, n_threads):
        self.theirs.transform(self.X)


class SparseScaler:
    """fit and partial_fit over row blocks of a CSR matrix, both scalers (with_mean=False)."""

    params = [[SPARSE_SCALER], THREADS]
    param_names = ["shape_density", "n_threads"]
    timeout = 300

    def setup(self, shape_density, n_threads):
        if StandardScaler is None or BatchNormScaler is None:
            raise NotImplementedError("needs scikit-learn and bnfast.preprocessing")
        try:
            from scipy import sparse
        except ImportError:
            raise NotImplementedError("needs scipy") from None
        (rows, cols), density = shape_density
        rng = np.random.default_rng(0)
        self.X = sparse.random_array((rows, cols), density=density, format="csr", rng=rng)
        bounds = np.linspace(0, rows, SPARSE_CHUNKS + 1).astype(int)
        self.parts = [self.X[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        try:  # a commit before sparse support: nothing to time
            BatchNormScaler(with_mean=False).fit(self.parts[0])
        except TypeError:
            raise NotImplementedError("this commit's BatchNormScaler takes no sparse input")

    def _ours(self, n_threads):
        return BatchNormScaler(eps=0, with_mean=False, n_threads=n_threads)

    def time_batchnormscaler_fit(self, shape_density, n_threads):
        self._ours(n_threads).fit(self.X)

    def time_standardscaler_fit(self, shape_density, n_threads):
        StandardScaler(with_mean=False).fit(self.X)

    def time_batchnormscaler_partial_fit(self, shape_density, n_threads):
        scaler = self._ours(n_threads)
        for part in self.parts:
            scaler.partial_fit(part)

    def time_standardscaler_partial_fit(self, shape_density, n_threads):
        scaler = StandardScaler(with_mean=False)
        for part in self.parts:
            scaler.partial_fit(part)

    def time_batchnormscaler_transform(self, shape_density, n_threads):
        self._ours(n_threads).fit(self.parts[0]).transform(self.X)
