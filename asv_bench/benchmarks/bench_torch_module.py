"""The BN layers alone in PyTorch training: ``bnfast.torch.BatchNorm2d`` vs
``torch.nn.BatchNorm2d``, forward plus backward through autograd (what a training step runs
for each BN layer), and the eval-mode forward. Skipped without torch.

torch is imported at module level, so that asv's forkserver loads it once (see
bench_torch.py).
"""

from .common import SHAPES_4D, THREADS

try:
    import torch
except ImportError:
    torch = None

LAYOUTS = ["NCHW", "channels_last"]
DTYPES = ["float32", "float64"]
IMPLS = ["torch", "bnfast"]


class TorchModuleBatchNorm2d:
    """A BatchNorm2d layer in train mode: ``y = layer(x); y.backward(dy)``, and in eval mode
    ``layer(x)`` under ``torch.no_grad()``."""

    params = [SHAPES_4D, LAYOUTS, DTYPES, IMPLS, THREADS]
    param_names = ["shape", "layout", "dtype", "impl", "n_threads"]

    def setup(self, shape, layout, dtype, impl, n_threads):
        if torch is None:
            raise NotImplementedError("torch is not installed")  # asv: skipped
        import bnfast.torch as bt

        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(n_threads)  # bnfast.torch passes this count to the kernels
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        gen = torch.Generator().manual_seed(0)
        tdtype = getattr(torch, dtype)
        self.x = (torch.randn(shape, generator=gen, dtype=tdtype) * 2 + 0.5).contiguous(
            memory_format=fmt).requires_grad_(True)
        self.dy = torch.randn(shape, generator=gen, dtype=tdtype).contiguous(
            memory_format=fmt)
        cls = bt.BatchNorm2d if impl == "bnfast" else torch.nn.BatchNorm2d
        self.layer = cls(shape[1], dtype=tdtype)

    def teardown(self, *params):
        if hasattr(self, "_threads_before"):
            torch.set_num_threads(self._threads_before)

    def time_train_forward_backward(self, shape, layout, dtype, impl, n_threads):
        self.x.grad = None
        self.layer.weight.grad = self.layer.bias.grad = None
        self.layer(self.x).backward(self.dy)

    def time_eval_forward(self, shape, layout, dtype, impl, n_threads):
        self.layer.eval()
        with torch.no_grad():
            self.layer(self.x)
        self.layer.train()

    def peakmem_train_forward_backward(self, shape, layout, dtype, impl, n_threads):
        self.x.grad = None
        self.layer.weight.grad = self.layer.bias.grad = None
        self.layer(self.x).backward(self.dy)
