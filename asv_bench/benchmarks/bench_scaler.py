"""``BatchNormScaler`` against scikit-learn's ``StandardScaler`` on a (65536, 256) float32 X.

These time repeated calls in one process (asv's way). The figure users read is the first
call of a fresh process: ``python -m bnfast bench`` reports it over several processes.
"""

from .common import SCALER_SHAPE, THREADS, cases

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
