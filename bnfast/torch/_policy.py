"""Which code computes a call: the eager fast path, the operators, or PyTorch's own kernel.

- ``eager(x)``: True when nothing traces, transforms or intercepts the call (no
  torch.compile, torch.export, FX or JIT tracing, no torch.func transform, no dispatch or
  function mode, a plain ``torch.Tensor``): the layers then call the kernels through a lean
  ``autograd.Function``, since a dispatcher round trip through a Python operator costs more
  than a small batch norm itself. Everything else goes through the ``torch.ops.bnfast``
  operators (``_ops``), which those tools understand.
- ``forward_ad()``: forward-mode AD is active (``torch.func.jvp``, ``jacfwd``, ``hessian``,
  ``torch.autograd.forward_ad``): PyTorch's batch norm, which has a forward-mode formula,
  computes the call.
- ``torch_is_faster(x, training)``: the hand-off to PyTorch's own kernel for the sizes where
  it is faster (measured: docs/torch.md, "Speed"), made inside the operators and the eager
  path alike; ``set_torch_handoff(False)`` keeps every call on bnfast's kernels.
- ``inductor_is_faster(x, training)``: the same under torch.compile (not torch.export), where
  the call then is aten's batch norm for inductor to fuse instead of bnfast's operator.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.autograd.forward_ad as _fwad
from torch import Tensor

from ._arrays import HALF, NATIVE

_functorch_stack = torch._C._functorch.peek_interpreter_stack
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._is_torch_function_mode_enabled
_STRIDED = torch.strided

# Below these many values per call PyTorch's kernel is faster than bnfast's kernels with
# their Python glue (tools/bench_torch_crossover.py measures one layer, with --threads,
# --dtype and --large; tools/bench_torch_resnet.py a model; docs/torch.md quotes both).
# One table per (half-precision input, more than one thread), keyed by (training, layout),
# the layout being "NC" for 2-D input, "NHWC" for channels-last input and "NCHW" for the
# other (N, C, ...) input; float64 takes float32's. The multi-thread tables were measured
# at 2 threads: PyTorch's kernels gain more from the second thread on calls up to a few
# million values than bnfast's do, so bnfast's kernels take over later there. From 32 MiB
# per tensor (2^23 float32 values, 2^24 half ones) glibc serves each fresh output with new
# pages from the kernel, and PyTorch's calls slow down by 5-10x while bnfast's (NumPy asks
# for huge pages for large arrays) slow down less: bnfast's kernels compute every call from
# there.
_CROSSOVERS = {
    # float32, 1 thread. Channels-last training gains only once memory-bound: a layer of
    # 4.2M values measured slower inside a ResNet, one of 6.4M faster alone.
    (False, False): {(True, "NC"): 131072, (True, "NCHW"): 65536, (True, "NHWC"): 5 << 20,
                     (False, "NC"): 65536, (False, "NCHW"): 1 << 23,
                     (False, "NHWC"): 262144},
    # float32, 2 threads: training from 0.4M values (NCHW 0.66 at 401,408, 1.06 at
    # 262,144) and 0.5M ((N, C): 0.71); channels-last training and every eval from 2^23
    # (0.83-1.38 up to 6.4M values, 0.19-0.39 from 8.4M).
    (False, True): {(True, "NC"): 1 << 19, (True, "NCHW"): 3 << 17, (True, "NHWC"): 1 << 23,
                    (False, "NC"): 1 << 23, (False, "NCHW"): 1 << 23,
                    (False, "NHWC"): 1 << 23},
    # float16 and bfloat16, 1 thread: PyTorch's half kernel was faster in eval at every
    # size up to 12.8M values (1.02-1.7x), and slower from 16.8M (0.31-0.39 at 25.7M and
    # 33.5M); in training bnfast's kernels win from 1M values in (N, C) (bfloat16 0.75 to
    # 0.44, float16 about even), from 5M channels-last (0.73-0.87) and from 8M NCHW (0.81
    # at 12.8M).
    (True, False): {(True, "NC"): 1 << 20, (True, "NCHW"): 1 << 23, (True, "NHWC"): 5 << 20,
                    (False, "NC"): 1 << 24, (False, "NCHW"): 1 << 24, (False, "NHWC"): 1 << 24},
    # float16 and bfloat16, 2 threads: PyTorch's kernel was faster at every size up to
    # 12.8M values but for channels-last training at 12.8M (0.60-1.01); from 16.8M values
    # bnfast's (eval 0.39-0.52, NCHW training 0.62-0.87 at 25.7M).
    (True, True): {(True, "NC"): 1 << 24, (True, "NCHW"): 1 << 24, (True, "NHWC"): 1 << 23,
                   (False, "NC"): 1 << 24, (False, "NCHW"): 1 << 24, (False, "NHWC"): 1 << 24},
}
# The same under torch.compile, against inductor's batch norm fused with its neighbours: a
# bnfast operator pays the dispatcher and stays outside inductor's fusion (its output is
# written, then read again by the ReLU and residual add that inductor would have fused), so
# inductor wins up to far larger sizes. tools/bench_torch_crossover.py --compiled measures
# BN followed by ReLU; in a whole model (tools/bench_torch_resnet.py) the extra pass costs
# more, and the operators were still slower at 2M-4M values: they take over from 2^23,
# and for half-precision input, whose eager calls cross later, from 2^24. Keyed by
# half-precision input.
_COMPILED_CROSSOVERS = {
    half: {(training, layout): 1 << (24 if half else 23) for training in (True, False)
           for layout in ("NC", "NCHW", "NHWC")}
    for half in (False, True)
}
# BNFAST_TORCH_HANDOFF=0 in the environment starts with the hand-off off.
_handoff = os.environ.get("BNFAST_TORCH_HANDOFF", "1").strip() not in ("0", "false", "no")


def set_torch_handoff(enabled: bool) -> bool:
    """Whether small calls go to PyTorch's own batch norm kernel, where it is faster.

    With the hand-off (the default) a call below the measured crossover size (docs/torch.md,
    "Speed") runs on PyTorch's kernel, inside bnfast's layers and operators, so converting a
    model never makes it slower. Those calls then have PyTorch's float32 rounding (its
    variance of offset data loses digits that bnfast's float64 accumulation keeps) and bits
    that may depend on the thread count. ``set_torch_handoff(False)`` computes every call
    with bnfast's kernels; so does ``BNFAST_TORCH_HANDOFF=0`` in the environment, read at
    import.

    Parameters
    ----------
    enabled : bool

    Returns
    -------
    bool
        The previous setting.

    Examples
    --------
    >>> import bnfast.torch
    >>> previous = bnfast.torch.set_torch_handoff(False)  # every call on bnfast's kernels
    >>> bnfast.torch.set_torch_handoff(previous)
    False
    """
    global _handoff
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected True or False, got {enabled!r}")
    previous, _handoff = _handoff, enabled
    return previous


def _layout(x: Tensor) -> str:
    return "NC" if x.dim() == 2 else "NCHW" if x.is_contiguous() else "NHWC"


def crossover(x: Tensor, training: bool) -> int:
    """The number of values per call from which bnfast's kernels compute a call like this
    one, at PyTorch's current thread count."""
    table = _CROSSOVERS[(x.dtype in HALF, torch.get_num_threads() > 1)]
    return table[(training, _layout(x))]


def torch_is_faster(x: Tensor, training: bool) -> bool:
    """True when PyTorch's kernel computes this (CPU) call faster than bnfast's."""
    return _handoff and x.numel() < crossover(x, training)


def inductor_is_faster(x: Tensor, training: bool) -> bool:
    """True when, under torch.compile, aten's batch norm (which inductor fuses with its
    neighbours) is faster than bnfast's operator: decided at trace time, so a symbolic batch
    size puts a guard on this comparison (crossing it recompiles)."""
    table = _COMPILED_CROSSOVERS[x.dtype in HALF]
    return _handoff and x.numel() < table[(training, _layout(x))]


def eager(x: Tensor) -> bool:
    """True when nothing traces, transforms or intercepts a call on ``x``."""
    return (type(x) is Tensor and _functorch_stack() is None and not _dispatch_modes()
            and not _function_modes() and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling() and _fwad._current_level < 0)


def forward_ad() -> bool:
    """True when forward-mode AD is active (``torch.func.jvp``, ``forward_ad.dual_level``)."""
    return _fwad._current_level >= 0


_SERVED = frozenset(NATIVE + HALF)
_PARAMS = {d: frozenset((d, torch.float32)) if d in HALF else frozenset((d,)) for d in _SERVED}


def served(input: Tensor, *others: Optional[Tensor]) -> bool:
    """True when the kernels compute this call as PyTorch would: a dense CPU ``input`` of
    float16, bfloat16, float32 or float64 with at least 2 dimensions and one element, and
    ``others`` (None, per-channel tensors of shape (C,), or tensors of input's shape: a
    residual, an output) dense CPU tensors whose dtypes PyTorch accepts with input's: one
    dtype throughout, or half-precision input with float32 per-channel tensors."""
    dtype = input.dtype
    if not (dtype in _SERVED and input.is_cpu and input.layout is _STRIDED
            and input.dim() >= 2 and input.numel()):
        return False
    C = input.shape[1]
    params = _PARAMS[dtype]
    for t in others:
        if t is None:
            continue
        if not (t.is_cpu and t.layout is _STRIDED):
            return False
        if t.dim() == 1:
            if t.numel() != C or t.dtype not in params:
                return False
        elif t.shape != input.shape or t.dtype is not dtype:
            return False
    return True
