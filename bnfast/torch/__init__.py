"""bnfast inside PyTorch models on the CPU: batch norm layers, a functional, SyncBatchNorm and
``torch.ops.bnfast`` operators.

``import bnfast`` never imports PyTorch; ``import bnfast.torch`` does (and registers the
operators).

- ``batch_norm``: ``torch.nn.functional.batch_norm`` computed by bnfast's kernels, with
  autograd to any order.
- ``BatchNorm1d``, ``BatchNorm2d``, ``BatchNorm3d`` (and ``LazyBatchNorm1d/2d/3d``):
  subclasses of torch's layers (the same constructor, parameters, buffers and
  ``state_dict``) whose forward calls bnfast. Keyword-only options after torch's arguments
  (plain attributes, not in the ``state_dict``): ``activation=None | "relu"`` with
  ``forward(input, residual=None)`` giving ``relu(bn(input) + residual)`` in one fused pass
  (training and eval mode); ``virtual_batch_size=k`` (ghost batch norm) and ``renorm=True,
  r_max=3.0, d_max=5.0`` (batch renormalization, r and d held constant in the backward),
  both in training mode only (eval mode is plain batch norm). The activation combines with
  neither variant, nor the variants with each other; renorm needs ``track_running_stats``;
  a residual has the input's shape, dtype and device, and is not taken with a variant in
  training mode.
- ``SyncBatchNorm``: torch's ``SyncBatchNorm`` for CPU tensors over ``torch.distributed``
  (gloo): the statistics and the input gradient are those of the whole batch over the ranks.
- ``convert(module)`` swaps torch's batch norm layers of a model for these,
  ``convert_sync_batchnorm(module, process_group)`` swaps them for ``SyncBatchNorm``, and
  ``revert(module)`` swaps bnfast's back for torch's (for ONNX export or TorchScript).
- ``set_torch_handoff(enabled)``: whether the small calls where PyTorch's kernel is faster
  go to it (the default) or stay on bnfast's kernels.

What runs where (docs/torch.md): CPU tensors of float32 and float64 are handed to the
kernels without a copy (contiguous, or channels-last: any tensor whose channel dimension is
innermost), and the output keeps the input's memory format; float16 and bfloat16 are
computed in float32. In plain eager code the layers call the kernels directly; under
torch.compile, torch.export and torch.func the calls are the operators
``torch.ops.bnfast.batch_norm_train``, ``batch_norm_infer``, ``ghost_batch_norm_train``,
``batch_renorm_train``, ``batch_norm_backward`` and ``store_running_stats``. Non-CPU
tensors, tensor subclasses with ``__torch_function__``, dtype mixes PyTorch rejects,
forward-mode AD and JIT tracing go to PyTorch's own batch norm, which then behaves (and
raises) as usual. The kernels run on ``torch.get_num_threads()`` threads; their results do
not depend on that number.

Higher-order gradients are exact: the first-order backward runs on the kernels, and its
own derivative is that of the batch norm backward formula in float64 PyTorch operations.
SyncBatchNorm's backward has no such derivative and raises RuntimeError when one is asked
for.
"""
try:
    import torch as _torch  # noqa: F401
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a fresh interpreter
    if exc.name != "torch":
        raise
    raise ImportError(
        "bnfast.torch needs PyTorch, which is not installed: install it with "
        "`pip install torch` (or `pip install bnfast[torch]`); the rest of bnfast works "
        "without it") from exc

from . import _op_rules, _ops  # noqa: F401  (register torch.ops.bnfast)
from ._policy import set_torch_handoff
from .convert import convert, convert_sync_batchnorm, revert
from .functional import batch_norm
from .layers import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    LazyBatchNorm1d,
    LazyBatchNorm2d,
    LazyBatchNorm3d,
)
from .sync import SyncBatchNorm, _SyncBatchNormFunction  # noqa: F401  (tests use the latter)

__all__ = ["batch_norm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LazyBatchNorm1d",
           "LazyBatchNorm2d", "LazyBatchNorm3d", "SyncBatchNorm", "convert",
           "convert_sync_batchnorm", "revert", "set_torch_handoff"]
