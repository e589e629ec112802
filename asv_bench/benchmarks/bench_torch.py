"""PyTorch's CPU batch norm on zero-copy views of the same arrays (skipped without torch).

TorchBatchNorm*      what a PyTorch user calls: torch.nn.functional.batch_norm (training
                     True for batch_norm_forward, False for batch_norm_inference; it allocates
                     its output), torch.ops.aten.native_batch_norm_backward for
                     batch_norm_backward (autograd's kernel, without the autograd graph).
TorchBatchNormOut*   torch.ops.aten.native_batch_norm.out: the same kernels writing into a
                     preallocated output, like bnfast's out=. Backward has no such variant
                     (its .out overload copies a freshly allocated result).

torch is imported here, at module level, so that asv's forkserver (asv.conf.json,
"launch_method") loads it once instead of once per benchmark process (seconds each); every
benchmark's peakmem then includes torch's resident pages.
"""

from .common import (DTYPES, EPS, LAYOUTS, MOMENTUM, OPS, SHAPES_2D, SHAPES_4D, THREADS,
                     Inputs, TorchTensors)

try:
    import torch
except ImportError:
    torch = None

FORWARD_OPS = OPS[:2]


class _TorchBench:
    """Shared setup: torch views of the inputs and torch.set_num_threads(n_threads)."""

    def _setup(self, shape, layout, dtype, op, n_threads):
        if torch is None:
            raise NotImplementedError("torch is not installed")  # asv: skipped
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(n_threads)
        self.t = TorchTensors(torch, Inputs(shape, layout, dtype, op))
        self.training = op == "batch_norm_forward"

    def teardown(self, *params):
        if hasattr(self, "_threads_before"):
            torch.set_num_threads(self._threads_before)

    def functional(self, op):
        t = self.t
        if op == "batch_norm_backward":
            torch.ops.aten.native_batch_norm_backward(
                t.dy, t.x, t.weight, t.running_mean, t.running_var, t.mean, t.invstd, True,
                EPS, [True, True, True])
        else:
            torch.nn.functional.batch_norm(
                t.x, t.running_mean, t.running_var, t.weight, t.bias, self.training, MOMENTUM,
                EPS)

    def native_out(self):
        t = self.t
        torch.ops.aten.native_batch_norm.out(
            t.x, t.weight, t.bias, t.running_mean, t.running_var, self.training, MOMENTUM, EPS,
            out=t.out, save_mean=t.save_mean, save_invstd=t.save_invstd)


class TorchBatchNorm2D(_TorchBench):
    """PyTorch's equivalent of ``bnfast.<op>`` on an (N, C) batch."""

    params = [SHAPES_2D, DTYPES, OPS, THREADS]
    param_names = ["shape", "dtype", "op", "n_threads"]

    def setup(self, shape, dtype, op, n_threads):
        self._setup(shape, "NC", dtype, op, n_threads)

    def time_torch(self, shape, dtype, op, n_threads):
        self.functional(op)

    def peakmem_torch(self, shape, dtype, op, n_threads):
        self.functional(op)


class TorchBatchNorm4D(_TorchBench):
    """PyTorch's equivalent of ``bnfast.<op>`` on an NCHW or channels_last batch."""

    params = [SHAPES_4D, LAYOUTS, DTYPES, OPS, THREADS]
    param_names = ["shape", "layout", "dtype", "op", "n_threads"]

    def setup(self, shape, layout, dtype, op, n_threads):
        self._setup(shape, layout, dtype, op, n_threads)

    def time_torch(self, shape, layout, dtype, op, n_threads):
        self.functional(op)

    def peakmem_torch(self, shape, layout, dtype, op, n_threads):
        self.functional(op)


class TorchBatchNormOut2D(_TorchBench):
    """``aten.native_batch_norm.out`` (training or not) on an (N, C) batch."""

    params = [SHAPES_2D, DTYPES, FORWARD_OPS, THREADS]
    param_names = ["shape", "dtype", "op", "n_threads"]

    def setup(self, shape, dtype, op, n_threads):
        self._setup(shape, "NC", dtype, op, n_threads)

    def time_torch_native_out(self, shape, dtype, op, n_threads):
        self.native_out()

    def peakmem_torch_native_out(self, shape, dtype, op, n_threads):
        self.native_out()


class TorchBatchNormOut4D(_TorchBench):
    """``aten.native_batch_norm.out`` (training or not) on an NCHW or channels_last batch."""

    params = [SHAPES_4D, LAYOUTS, DTYPES, FORWARD_OPS, THREADS]
    param_names = ["shape", "layout", "dtype", "op", "n_threads"]

    def setup(self, shape, layout, dtype, op, n_threads):
        self._setup(shape, layout, dtype, op, n_threads)

    def time_torch_native_out(self, shape, layout, dtype, op, n_threads):
        self.native_out()

    def peakmem_torch_native_out(self, shape, layout, dtype, op, n_threads):
        self.native_out()
