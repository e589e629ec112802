"""The fused ReLU and residual add (``activation="relu"``, ``residual=``) against the plain
call and against the unfused NumPy sequence, float32, with out= and running statistics.

Imports only bnfast and NumPy.
"""

import numpy as np

import bnfast

#: (name, shape, axis): a 64 MiB (N, C) batch, and a ResNet-sized NCHW and NHWC batch.
CASES = {
    "(65536,256)": ((65536, 256), 1),
    "NCHW (32,64,56,56)": ((32, 64, 56, 56), 1),
    "NHWC (32,56,56,64)": ((32, 56, 56, 64), -1),
}
THREADS = [1, 2]


class _Inputs:
    def __init__(self, case):
        shape, axis = CASES[case]
        rng = np.random.default_rng(0)
        self.axis = axis
        self.x = (rng.standard_normal(shape, dtype=np.float32) * 2 + 3).astype(np.float32)
        self.r = rng.standard_normal(shape, dtype=np.float32)
        self.dy = rng.standard_normal(shape, dtype=np.float32)
        C = shape[axis]
        self.gamma = rng.uniform(0.5, 2, C).astype(np.float32)
        self.beta = rng.uniform(-1, 1, C).astype(np.float32)
        self.rm = np.zeros(C, np.float32)
        self.rv = np.ones(C, np.float32)
        self.y = np.empty_like(self.x)  # touched: no page faults in the timed calls
        self.y.fill(0)
        self.dx = np.zeros_like(self.x)
        self.g = np.zeros_like(self.x)
        self.yr, self.mean, self.invstd = bnfast.batch_norm_forward(
            self.x, self.gamma, self.beta, axis=axis, activation="relu", residual=self.r)


class FusedForward:
    """Training forward: plain, fused, and the unfused sequences it replaces."""

    params = [list(CASES), ["plain", "relu", "residual_relu", "unfused_relu",
                            "unfused_residual_relu"], THREADS]
    param_names = ["case", "variant", "n_threads"]

    def setup(self, case, variant, n_threads):
        a = _Inputs(case)
        kw = dict(axis=a.axis, running_mean=a.rm, running_var=a.rv, out=a.y,
                  n_threads=n_threads)
        fwd = bnfast.batch_norm_forward
        if variant == "plain":
            self.call = lambda: fwd(a.x, a.gamma, a.beta, **kw)
        elif variant == "relu":
            self.call = lambda: fwd(a.x, a.gamma, a.beta, activation="relu", **kw)
        elif variant == "residual_relu":
            self.call = lambda: fwd(a.x, a.gamma, a.beta, activation="relu", residual=a.r, **kw)
        elif variant == "unfused_relu":
            def call():
                fwd(a.x, a.gamma, a.beta, **kw)
                np.maximum(a.y, 0, out=a.y)
            self.call = call
        else:
            def call():
                fwd(a.x, a.gamma, a.beta, **kw)
                np.add(a.y, a.r, out=a.y)
                np.maximum(a.y, 0, out=a.y)
            self.call = call

    def time_forward(self, case, variant, n_threads):
        self.call()


class FusedBackward:
    """Backward: plain, with the ReLU mask (and the residual's gradient), and unfused."""

    params = [list(CASES), ["plain", "relu", "relu_dresidual", "unfused_relu"], THREADS]
    param_names = ["case", "variant", "n_threads"]

    def setup(self, case, variant, n_threads):
        a = _Inputs(case)
        kw = dict(axis=a.axis, out=a.dx, n_threads=n_threads)
        bwd = bnfast.batch_norm_backward
        if variant == "plain":
            self.call = lambda: bwd(a.dy, a.x, a.mean, a.invstd, a.gamma, **kw)
        elif variant == "relu":
            self.call = lambda: bwd(a.dy, a.x, a.mean, a.invstd, a.gamma, activation="relu",
                                    y=a.yr, **kw)
        elif variant == "relu_dresidual":
            self.call = lambda: bwd(a.dy, a.x, a.mean, a.invstd, a.gamma, activation="relu",
                                    y=a.yr, return_dresidual=True, **kw)
        else:
            def call():
                np.multiply(a.dy, a.yr > 0, out=a.g)
                bwd(a.g, a.x, a.mean, a.invstd, a.gamma, **kw)
            self.call = call

    def time_backward(self, case, variant, n_threads):
        self.call()
