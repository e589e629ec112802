"""``BatchNormScaler`` on a dask DataFrame against dask-ml's ``StandardScaler``.

A (262144, 32) float64 frame (64 MiB) in 8 partitions, persisted in this process and
computed by dask's threaded scheduler: what a commit changes in bnfast's DataFrame path (the
partition states, the merge tree, the lazy transform), without a cluster to start. The
cluster figures are ``tools/bench_dask_dataframe.py``'s. Skipped where dask.dataframe is not
installed (asv's commit environments), and the dask-ml side where dask-ml is not.
"""

import numpy as np

from .common import SMOKE

try:
    import dask
    import dask.dataframe as dd
    import pandas as pd
except ImportError:
    dd = None
try:
    from bnfast.preprocessing import BatchNormScaler
except ImportError:  # a commit before the scaler existed
    BatchNormScaler = None
try:
    from dask_ml.preprocessing import StandardScaler as DaskMLStandardScaler
except ImportError:
    DaskMLStandardScaler = None

FRAME_SHAPE = (512, 4) if SMOKE else (262144, 32)
PARTITIONS = 2 if SMOKE else 8


class _PersistedFrame:
    """The frame, persisted in this process; dask's threaded scheduler."""

    params = [[FRAME_SHAPE]]
    param_names = ["shape"]
    timeout = 300

    def _persist_frame(self, shape):
        if dd is None or BatchNormScaler is None:
            raise NotImplementedError("needs dask.dataframe and bnfast.preprocessing")
        dask.config.set(scheduler="threads")  # each benchmark runs in a process of its own
        rng = np.random.default_rng(0)
        values = rng.standard_normal(shape) * rng.uniform(0.5, 20, shape[1]) + 10
        frame = pd.DataFrame(values, columns=[f"f{j}" for j in range(shape[1])])
        self.df = dd.from_pandas(frame, npartitions=PARTITIONS).persist()


class DaskFrameScaler(_PersistedFrame):
    """BatchNormScaler: fit, and transform computed into memory (persist)."""

    def setup(self, shape):
        self._persist_frame(shape)
        self.fitted = BatchNormScaler().fit(self.df)

    def time_batchnormscaler_fit(self, shape):
        BatchNormScaler().fit(self.df)

    def time_batchnormscaler_transform(self, shape):
        dask.persist(self.fitted.transform(self.df))  # a commit before lazy frames: NumPy


class DaskFrameDaskML(_PersistedFrame):
    """dask-ml's StandardScaler on the same frame (skipped without dask-ml)."""

    def setup(self, shape):
        if DaskMLStandardScaler is None:
            raise NotImplementedError("needs dask-ml")
        self._persist_frame(shape)
        self.fitted = DaskMLStandardScaler().fit(self.df)

    def time_daskml_standardscaler_fit(self, shape):
        DaskMLStandardScaler().fit(self.df)

    def time_daskml_standardscaler_transform(self, shape):
        dask.persist(self.fitted.transform(self.df))
