"""Swapping a model's batch norm layers: ``convert``, ``convert_sync_batchnorm`` and
``revert``, its inverse."""
from __future__ import annotations

from typing import Any, Callable, Dict

import torch
from torch.nn.modules.batchnorm import _BatchNorm, _LazyNormBase

from .layers import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    LazyBatchNorm1d,
    LazyBatchNorm2d,
    LazyBatchNorm3d,
)
from .sync import SyncBatchNorm

__all__ = ["convert", "convert_sync_batchnorm", "revert"]

nn = torch.nn


def _swap(module: torch.nn.Module, new: torch.nn.Module) -> torch.nn.Module:
    """``new`` given ``module``'s parameters and buffers (the same tensors) and mode."""
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        if name in module._parameters:
            new._parameters[name] = module._parameters[name]
            new._buffers.pop(name, None)
        elif name in module._buffers:
            new._buffers[name] = module._buffers[name]
            new._parameters.pop(name, None)
    new.train(module.training)
    if hasattr(module, "qconfig"):
        new.qconfig = module.qconfig
    return new


def _new_like(module: _BatchNorm, cls: type, **extra: Any) -> torch.nn.Module:
    # Built on the meta device (nothing allocated): every tensor is then module's own.
    if isinstance(module, _LazyNormBase):
        return cls(module.eps, module.momentum, module.affine, module.track_running_stats,
                   device="meta", bias=module.bias is not None, **extra)
    return cls(module.num_features, module.eps, module.momentum, module.affine,
               module.track_running_stats, device="meta", bias=module.bias is not None,
               **extra)


_TO_BNFAST: Dict[type, type] = {
    nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d, nn.BatchNorm3d: BatchNorm3d,
    nn.LazyBatchNorm1d: LazyBatchNorm1d, nn.LazyBatchNorm2d: LazyBatchNorm2d,
    nn.LazyBatchNorm3d: LazyBatchNorm3d}
_TO_TORCH: Dict[type, type] = {ours: theirs for theirs, ours in _TO_BNFAST.items()}


def _walk(module: torch.nn.Module, swap: Callable[[torch.nn.Module], torch.nn.Module]
          ) -> torch.nn.Module:
    out = swap(module)
    for name, child in module.named_children():
        out.add_module(name, _walk(child, swap))
    return out


def convert(module: torch.nn.Module) -> torch.nn.Module:
    """Swap every ``torch.nn.BatchNorm1d/2d/3d`` (and ``SyncBatchNorm``) of a model for bnfast's.

    The new layers keep the old ones' parameters and buffers (the same tensors, so their
    values, ``requires_grad``, device, dtype and an optimizer's references stay) and their
    train/eval mode. ``torch.nn.LazyBatchNorm1d/2d/3d`` not yet run become
    bnfast's lazy layers, which keep torch's uninitialized parameters (the same objects,
    materialized in place at the first forward) and become ``bnfast.torch.BatchNorm*d``
    then. Only layers of exactly those classes are swapped: a subclass of them may change
    their behaviour, and is left alone.

    Returns
    -------
    torch.nn.Module
        ``module`` itself with its layers swapped, or, when ``module`` is itself a batch norm
        layer, the new layer.

    Examples
    --------
    >>> import torch, bnfast.torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    >>> model = bnfast.torch.convert(model)
    >>> type(model[1]).__module__, isinstance(model[1], torch.nn.BatchNorm2d)
    ('bnfast.torch', True)
    """
    def swap(m: torch.nn.Module) -> torch.nn.Module:
        cls = _TO_BNFAST.get(type(m))
        if cls is not None:
            return _swap(m, _new_like(m, cls))  # type: ignore[arg-type]
        if type(m) is nn.SyncBatchNorm:
            return _swap(m, _new_like(m, SyncBatchNorm,  # type: ignore[arg-type]
                                      process_group=m.process_group))
        return m

    return _walk(module, swap)


def convert_sync_batchnorm(module: torch.nn.Module,
                           process_group: Any = None) -> torch.nn.Module:
    """Swap every batch norm layer of a model for bnfast's ``SyncBatchNorm``.

    As ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: every ``_BatchNorm`` (torch's
    ``BatchNorm1d/2d/3d``, ``SyncBatchNorm`` and bnfast's) becomes a ``SyncBatchNorm`` over
    ``process_group`` (default: the whole world) that keeps the old layer's parameters,
    buffers (the same tensors) and mode.

    Returns
    -------
    torch.nn.Module
        ``module`` with its layers swapped, or the new layer when ``module`` is one.
    """
    def swap(m: torch.nn.Module) -> torch.nn.Module:
        if isinstance(m, _BatchNorm) and not isinstance(m, _LazyNormBase):
            return _swap(m, _new_like(m, SyncBatchNorm, process_group=process_group))
        return m

    return _walk(module, swap)


def revert(module: torch.nn.Module) -> torch.nn.Module:
    """The inverse of ``convert``: swap bnfast's layers back for torch's own.

    ``bnfast.torch.BatchNorm1d/2d/3d`` (and the lazy ones) become torch's, and
    ``bnfast.torch.SyncBatchNorm`` becomes ``torch.nn.SyncBatchNorm``, keeping the same
    parameters and buffers (the same tensors) and mode: for tools that need aten's
    operators only (ONNX export, TorchScript), or to compare against PyTorch.

    Raises
    ------
    ValueError
        For a layer with an option torch's layers do not have (``activation``,
        ``virtual_batch_size``, ``renorm``); nothing is swapped then.

    Returns
    -------
    torch.nn.Module
        ``module`` itself with its layers swapped, or the new layer when ``module`` is one.

    Examples
    --------
    >>> import torch, bnfast.torch
    >>> model = bnfast.torch.convert(torch.nn.Sequential(torch.nn.BatchNorm1d(4)))
    >>> type(bnfast.torch.revert(model)[0]) is torch.nn.BatchNorm1d
    True
    """
    for name, m in module.named_modules():
        if type(m) in _TO_TORCH and (getattr(m, "activation", None) is not None
                                     or getattr(m, "virtual_batch_size", None) is not None
                                     or getattr(m, "renorm", False)):
            raise ValueError(f"revert: layer {name or type(m).__name__!r} has options "
                             f"torch's {_TO_TORCH[type(m)].__name__} does not have "
                             f"({m.extra_repr()})")

    def swap(m: torch.nn.Module) -> torch.nn.Module:
        cls = _TO_TORCH.get(type(m))
        if cls is not None:
            return _swap(m, _new_like(m, cls))  # type: ignore[arg-type]
        if type(m) is SyncBatchNorm:
            return _swap(m, _new_like(m, nn.SyncBatchNorm,  # type: ignore[arg-type]
                                      process_group=m.process_group))
        return m

    return _walk(module, swap)
