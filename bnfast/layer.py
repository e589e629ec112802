"""A batch-norm layer for NumPy training loops, and folding an eval-mode BN into the layer before.

Both sit on the functional API (``batch_norm_forward`` / ``batch_norm_inference`` /
``batch_norm_backward``); neither calls the kernels directly.
"""
from __future__ import annotations

from collections import namedtuple
from typing import Any, Mapping

import numpy as np
import numpy.typing as npt

from ._functional import batch_norm_backward, batch_norm_forward, batch_norm_inference
from ._training import backward_sums
from ._variants import batch_renorm_forward, check_renorm_limits
from ._validation import (
    as_array,
    channel_shape,
    channel_vector,
    check_activation,
    check_bool,
    check_eps,
    check_float_dtype,
    check_int,
    check_momentum,
    check_n_threads,
    dtype_policy,
    is_real_dtype,
    running_stats,
)

__all__ = ["BatchNorm", "fold_batch_norm"]

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])

_PARAM_KEYS = ("weight", "bias")
_BUFFER_KEYS = ("running_mean", "running_var", "num_batches_tracked")


def _to_numpy(value, key):
    """A state-dict value as an ndarray: NumPy arrays, scalars, torch tensors (any device)."""
    if hasattr(value, "detach") and callable(value.detach):  # torch.Tensor, no torch import
        value = value.detach()
        if hasattr(value, "cpu"):
            value = value.cpu()
    try:
        return np.asarray(value)
    except Exception as exc:  # e.g. a bfloat16 tensor
        raise ValueError(f"{key}: cannot convert a {type(value).__name__} to a NumPy array "
                         f"({exc})") from None


def _put_back(running, saved):
    """Restore a running statistic that an interrupted forward may have updated in place."""
    if isinstance(running, np.ndarray) and running.flags.writeable:
        running[...] = saved


class BatchNorm:
    """Batch normalization layer for NumPy training loops, with PyTorch's semantics.

    The NumPy counterpart of ``torch.nn.BatchNorm1d/2d/3d`` for any layout: the channel
    axis is ``axis`` (1 for ``(N, C)``, ``(N, C, L)``, NCHW, NCDHW; -1 for channels-last
    NHWC), and the statistics are taken over every other axis.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    axis : int or None, default 1
        The channel axis of the inputs (``None``: the whole input is one channel).
    eps : float, default 1e-5
        Added to the variance, inside the square root.
    momentum : float in [0, 1] or None, default 0.1
        Running statistics update ``r = (1 - momentum) * r + momentum * batch`` (the running
        variance receives the unbiased batch variance, as in PyTorch). ``None``: the
        cumulative average over all batches, with PyTorch's rule: the factor is
        ``1 / num_batches_tracked`` after incrementing it.
    affine : bool, default True
        Learnable per-channel ``weight`` (gamma, initialized to 1) and ``bias`` (beta, 0).
        When False both are None and ``dgamma`` / ``dbeta`` stay None.
    track_running_stats : bool, default True
        Keep ``running_mean`` / ``running_var`` / ``num_batches_tracked``. When False they are
        None and batch statistics are used in eval mode too.
    dtype : float dtype, default numpy.float32
        dtype of the parameters, running statistics and gradients. The output has the input's
        dtype (the functional API's policy).
    n_threads : int or None, default None
        Threads for the kernels; None is the default count (docs/design.md §3). Results do
        not depend on it.
    virtual_batch_size : int or None, default None
        Ghost batch norm in training mode (Keras's option of that name): statistics per
        group of this many samples along axis 0 (see ``batch_norm_forward``); it must divide
        every training batch size. Eval mode is plain batch norm.
    renorm : bool, default False
        Batch renormalization in training mode (``batch_renorm_forward``); needs
        ``track_running_stats=True``. Eval mode is plain batch norm with the running
        statistics. Not together with ``virtual_batch_size``.
    r_max, d_max : float, default 3.0 and 5.0
        Renorm's clipping limits (finite): the final values of the paper's schedule, as in
        torchrl's BatchRenorm1d; Keras clips nothing by default (pass large values for that).
        Plain attributes: the schedule (from 1 and 0 upwards) is up to the user, who may
        change them between steps.
    activation : None or "relu", default None
        Fused into the forward pass: ``y = relu(bn(x) + residual)`` (``forward(x, residual)``),
        and differentiated by ``backward`` from the mask ``y > 0``. Not together with
        ``virtual_batch_size`` or ``renorm``.

    Attributes
    ----------
    weight, bias : ndarray of shape (C,) or None
    running_mean, running_var : ndarray of shape (C,) or None
        Initialized to 0 and 1.
    num_batches_tracked : int
        Training-mode forward calls so far (with ``track_running_stats``).
    dgamma, dbeta : ndarray of shape (C,) or None
        Gradients of the loss with respect to ``weight`` and ``bias``, written (not
        accumulated) by every ``backward``.
    dresidual : ndarray or None
        The gradient with respect to the ``residual`` of the last ``forward`` (``dy * (y >
        0)`` with the ReLU, else ``dy``), set by ``backward`` when that forward had a
        residual, else None.
    training : bool
        Training mode (batch statistics, running statistics updated) or eval mode.

    Notes
    -----
    ``forward`` keeps a reference to its input ``x`` (and the statistics it normalized with)
    until the next ``forward``, because ``backward`` needs them: don't modify ``x`` in place
    between the two (nor, with ``activation``, the output ``y``, whose mask ``y > 0``
    ``backward`` reads). ``backward`` differentiates whatever the last ``forward`` computed: the
    training-mode transform (batch statistics) or, in eval mode, the affine inference
    transform, whose gradients are ``dx = dy * weight / sqrt(running_var + eps)``,
    ``dgamma = sum(dy * xhat)``, ``dbeta = sum(dy)``.

    ``state_dict()`` / ``load_state_dict()`` use PyTorch's keys (``weight``, ``bias``,
    ``running_mean``, ``running_var``, ``num_batches_tracked``), so weights move both ways.

    Examples
    --------
    >>> import numpy as np
    >>> bn = BatchNorm(3)
    >>> x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    >>> y = bn(x)
    >>> dx = bn.backward(np.ones_like(y))
    >>> bn.dbeta.tolist(), bn.num_batches_tracked
    ([8.0, 8.0, 8.0], 1)
    >>> sorted(bn.eval().state_dict())
    ['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
    """

    def __init__(self, num_features: int, *, axis: int | None = 1, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, dtype: npt.DTypeLike = np.float32,
                 n_threads: int | None = None, virtual_batch_size: int | None = None,
                 renorm: bool = False, r_max: float = 3.0, d_max: float = 5.0,
                 activation: str | None = None) -> None:
        self.num_features = check_int(num_features, "num_features", minimum=1)
        self.axis = None if axis is None else check_int(axis, "axis")
        self.eps = check_eps(eps)
        self.momentum = None if momentum is None else check_momentum(momentum)
        self.affine = check_bool(affine, "affine")
        self.track_running_stats = check_bool(track_running_stats, "track_running_stats")
        self.dtype = check_float_dtype(dtype)
        check_n_threads(n_threads)
        self.n_threads = n_threads
        # Variants (bnfast/_variants.py): ghost batch norm and batch renormalization.
        self.virtual_batch_size = (None if virtual_batch_size is None else
                                   check_int(virtual_batch_size, "virtual_batch_size", 1))
        self.renorm = check_bool(renorm, "renorm")
        self.r_max, self.d_max = check_renorm_limits(r_max, d_max)
        if self.renorm and not self.track_running_stats:
            raise ValueError("renorm: batch renormalization needs the running statistics; "
                             "expected track_running_stats=True")
        if self.renorm and self.virtual_batch_size is not None:
            raise ValueError("renorm and virtual_batch_size: expected at most one of them "
                             "(batch renormalization of virtual batches is not supported)")
        self._saved_kw: dict[str, Any] = {}  # the variant's keywords for batch_norm_backward
        self.activation = check_activation(activation)
        if self.activation is not None and (self.renorm or self.virtual_batch_size is not None):
            raise ValueError("activation: the fused activation cannot be combined with renorm "
                             "or virtual_batch_size (apply it after the layer instead)")
        self.training = True
        C = self.num_features
        self.weight = np.ones(C, self.dtype) if self.affine else None
        self.bias = np.zeros(C, self.dtype) if self.affine else None
        self.dgamma: np.ndarray | None = None
        self.dbeta: np.ndarray | None = None
        self.dresidual: np.ndarray | None = None
        self.running_mean: np.ndarray | None
        self.running_var: np.ndarray | None
        self.num_batches_tracked: int | None
        if self.track_running_stats:
            self.running_mean = np.zeros(C, self.dtype)
            self.running_var = np.ones(C, self.dtype)
            self.num_batches_tracked = 0
        else:
            self.running_mean = None
            self.running_var = None
            self.num_batches_tracked = None
        # (x, mean, invstd, var or None, y or None, had a residual) of the last forward: var
        # is set in eval mode only, y with an activation only.
        self._saved: tuple[Any, ...] | None = None

    def __repr__(self) -> str:
        variant = ""
        if self.virtual_batch_size is not None:
            variant = f", virtual_batch_size={self.virtual_batch_size}"
        if self.renorm:
            variant = f", renorm=True, r_max={self.r_max}, d_max={self.d_max}"
        return (f"BatchNorm({self.num_features}, axis={self.axis}, eps={self.eps}, "
                f"momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}, dtype={self.dtype}"
                f"{variant}"
                + (f", activation={self.activation!r})" if self.activation else ")"))

    # -- mode -------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> BatchNorm:
        """Training mode (or eval mode with ``mode=False``); returns self."""
        self.training = check_bool(mode, "mode")
        return self

    def eval(self) -> BatchNorm:
        """Eval mode: normalize with the running statistics; returns self."""
        return self.train(False)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, num_batches_tracked 0."""
        if self.track_running_stats:
            self.running_mean = np.zeros(self.num_features, self.dtype)
            self.running_var = np.ones(self.num_features, self.dtype)
            self.num_batches_tracked = 0

    def reset_parameters(self) -> None:
        """Running statistics reset, weight 1, bias 0."""
        self.reset_running_stats()
        if self.affine:
            self.weight = np.ones(self.num_features, self.dtype)
            self.bias = np.zeros(self.num_features, self.dtype)

    # -- computation ------------------------------------------------------------------------

    def forward(self, x: npt.ArrayLike, residual: npt.ArrayLike | None = None) -> np.ndarray:
        """Normalize ``x``: batch statistics in training mode (running statistics updated),
        running statistics in eval mode (unless ``track_running_stats=False``); then add
        ``residual`` (x's shape, optional) and apply the layer's ``activation``, in the same
        pass (the functional API's rounding).

        Returns y, of ``x``'s dtype (float64 for integer input).
        """
        a = as_array(x)
        _, C, _ = channel_shape(a, self.axis)
        if C != self.num_features:
            raise ValueError(f"x: expected {self.num_features} channels along axis {self.axis}, "
                             f"got {C} (input shape {a.shape})")
        if self.training or not self.track_running_stats:
            rm = rv = None
            factor = 0.0
            update = self.training and self.track_running_stats
            if update:
                rm, rv = self.running_mean, self.running_var
                assert self.num_batches_tracked is not None  # tracked: set in __init__
                count = self.num_batches_tracked + 1
                factor = 1.0 / count if self.momentum is None else self.momentum
                before = (np.array(rm, copy=True), np.array(rv, copy=True))
            try:
                y, mean, invstd, kw = self._batch_forward(a, rm, rv, factor, residual)
            except BaseException:
                # KeyboardInterrupt is raised when the kernel returns, after it updated the
                # running statistics: undo that, so the layer is updated whole or not at all.
                if update:
                    _put_back(rm, before[0])
                    _put_back(rv, before[1])
                raise
            if update:  # only once the forward succeeded: a failed call changes nothing
                self.num_batches_tracked = count
            self._saved = (a, mean, invstd, None, y if self.activation else None,
                           residual is not None)
            self._saved_kw = kw
            return y
        if self.running_mean is None or self.running_var is None:  # set to None by hand
            raise ValueError("running_mean, running_var: expected both in eval mode (they "
                             "normalize the input), got None")
        y = batch_norm_inference(a, self.running_mean, self.running_var, self.weight,
                                 self.bias, axis=self.axis, eps=self.eps,
                                 n_threads=self.n_threads, activation=self.activation,
                                 residual=residual)
        # A snapshot: backward differentiates the transform this forward applied.
        mean = np.array(self.running_mean, dtype=np.float64)
        var = np.array(self.running_var, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            invstd = 1.0 / np.sqrt(var + self.eps)
        self._saved = (a, mean, invstd, var, y if self.activation else None,
                       residual is not None)
        self._saved_kw = {}
        return y

    __call__ = forward

    def _batch_forward(self, a: np.ndarray, rm: np.ndarray | None, rv: np.ndarray | None,
                       factor: float, residual: npt.ArrayLike | None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """The forward with batch statistics: (y, mean, invstd, keywords for the backward)."""
        kw: dict[str, Any] = dict(axis=self.axis, eps=self.eps, n_threads=self.n_threads)
        variant = self.training and (self.renorm or self.virtual_batch_size is not None)
        if variant and residual is not None:
            raise ValueError("residual: not with renorm or virtual_batch_size (those compute "
                             "plain batch norm; add the residual after the layer)")
        if self.training and self.renorm:
            assert rm is not None and rv is not None  # renorm needs track_running_stats
            y, mean, invstd, r, d = batch_renorm_forward(
                a, rm, rv, self.weight, self.bias, r_max=self.r_max, d_max=self.d_max,
                momentum=factor, **kw)
            return y, mean, invstd, {"renorm": (r, d)}
        if self.training and self.virtual_batch_size is not None:
            k = self.virtual_batch_size
            y, mean, invstd = batch_norm_forward(a, self.weight, self.bias, running_mean=rm,
                                                 running_var=rv, momentum=factor,
                                                 virtual_batch_size=k, **kw)
            return y, mean, invstd, {"virtual_batch_size": k}
        y, mean, invstd = batch_norm_forward(a, self.weight, self.bias, running_mean=rm,
                                             running_var=rv, momentum=factor,
                                             activation=self.activation, residual=residual,
                                             **kw)
        return y, mean, invstd, {}

    def backward(self, dy: npt.ArrayLike) -> np.ndarray:
        """Gradient of the last ``forward``: returns dx and sets ``self.dgamma``,
        ``self.dbeta`` (of the parameter dtype; None without ``affine``) and
        ``self.dresidual`` (when that forward had a residual, else None).

        dx has the dtype of ``x`` and ``dy`` combined (float64 for integers).
        """
        if self._saved is None:
            raise RuntimeError("backward: no forward to differentiate; call forward(x) first")
        x, mean, invstd, var, y, had_residual = self._saved
        if var is not None and y is None and not had_residual:
            # Eval mode, no ReLU, no residual: y is affine in x, dx = dy * weight * invstd.
            # The parameter gradients are the training backward's two sums; dx is one
            # inference transform of dy (mean 0), with no training dx pass to throw away.
            dgamma, dbeta = backward_sums(dy, x, mean, invstd, axis=self.axis,
                                          n_threads=self.n_threads)
            dx = self._eval_input_grad(as_array(dy, "dy"), x, var)
            return self._finish_backward(dx, dgamma, dbeta, None, had_residual)
        if self._saved_kw:  # a variant's backward (no activation, no residual)
            dx, dgamma, dbeta = batch_norm_backward(dy, x, mean, invstd, self.weight,
                                                    axis=self.axis, n_threads=self.n_threads,
                                                    **self._saved_kw)
            dres = None
        else:
            want_dres = had_residual or (var is not None and y is not None)
            res = batch_norm_backward(dy, x, mean, invstd, self.weight, axis=self.axis,
                                      n_threads=self.n_threads, activation=self.activation,
                                      y=y, return_dresidual=want_dres)
            dx, dgamma, dbeta = res[:3]
            dres = res[3] if want_dres else None
        if var is not None:
            # Eval mode with the ReLU or a residual: the reductions above (sum dy,
            # sum dy * xhat) are the same as in training, and the masked dy (the residual's
            # gradient) is what flows back through the affine y.
            dx = self._eval_input_grad(as_array(dy, "dy") if dres is None else dres, x, var)
        return self._finish_backward(dx, dgamma, dbeta, dres, had_residual)

    def _eval_input_grad(self, g: np.ndarray, x: np.ndarray, var: np.ndarray) -> np.ndarray:
        """Eval mode's dx = g * weight * invstd (y is affine in x): the inference transform of
        g with mean 0, in the dtype the training backward computes in for x and g."""
        work, odt = dtype_policy(np.result_type(x.dtype, g.dtype))
        if dtype_policy(g.dtype)[0] != work:
            g = g.astype(work)
        dx = batch_norm_inference(g, np.zeros_like(var), var, self.weight, None,
                                  axis=self.axis, eps=self.eps, n_threads=self.n_threads)
        return dx.astype(odt, copy=False)

    def _finish_backward(self, dx: np.ndarray, dgamma: np.ndarray, dbeta: np.ndarray,
                         dres: np.ndarray | None, had_residual: bool) -> np.ndarray:
        if self.affine:
            self.dgamma = dgamma.astype(self.dtype)
            self.dbeta = dbeta.astype(self.dtype)
        self.dresidual = dres if had_residual else None
        return dx

    # -- state ------------------------------------------------------------------------------

    def _state_keys(self):
        return (_PARAM_KEYS if self.affine else ()) + (
            _BUFFER_KEYS if self.track_running_stats else ())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters and buffers under PyTorch's BatchNorm keys.

        ``weight``, ``bias`` (with ``affine``), ``running_mean``, ``running_var`` (of the
        layer's dtype) and ``num_batches_tracked`` (a 0-d int64 array; with
        ``track_running_stats``). Load into PyTorch with
        ``{k: torch.from_numpy(v) for k, v in bn.state_dict().items()}``.
        """
        state: dict[str, np.ndarray] = {}
        for key in self._state_keys():
            if key == "num_batches_tracked":
                state[key] = np.array(self.num_batches_tracked, dtype=np.int64)
            else:
                state[key] = np.array(getattr(self, key), dtype=self.dtype)
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any],
                        strict: bool = True) -> IncompatibleKeys:
        """Load parameters and buffers from a ``state_dict`` (this layer's or PyTorch's).

        Values may be NumPy arrays, scalars, or torch tensors (anything ``numpy.asarray``
        accepts); they are copied and cast to the layer's dtype. All checks run before
        anything is written: on an error nothing changes.

        Parameters
        ----------
        state_dict : mapping
        strict : bool, default True
            Raise KeyError on missing or unexpected keys. With False, load the keys that
            match and report the others.

        Returns
        -------
        IncompatibleKeys
            Named tuple ``(missing_keys, unexpected_keys)``, as PyTorch returns.

        Raises
        ------
        KeyError
            Missing or unexpected keys with ``strict=True``.
        ValueError
            A value of the wrong shape ((C,) for tensors, () for ``num_batches_tracked``) or
            kind (real numbers; a non-negative integer for ``num_batches_tracked``).
        """
        strict = check_bool(strict, "strict")
        expected = self._state_keys()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys "
                           f"{unexpected} (expected exactly {list(expected)})")
        C = self.num_features
        new: dict[str, Any] = {}
        for key in expected:
            if key not in state_dict:
                continue
            v = _to_numpy(state_dict[key], key)
            if key == "num_batches_tracked":
                if v.shape != () or v.dtype.kind not in "iu" or v < 0:
                    raise ValueError(f"{key}: expected a non-negative integer of shape (), "
                                     f"got dtype {v.dtype} shape {v.shape}")
                new[key] = int(v)
                continue
            if not is_real_dtype(v.dtype):
                raise ValueError(f"{key}: expected real numbers of shape ({C},), "
                                 f"got dtype {v.dtype}")
            if v.shape != (C,):
                raise ValueError(f"{key}: expected shape ({C},), got shape {v.shape}")
            new[key] = v.astype(self.dtype)  # always a copy
        # Nothing below can fail: copy into the existing arrays (references held elsewhere,
        # e.g. by an optimizer, stay valid), or rebind where that is not possible.
        for key, v in new.items():
            target = getattr(self, key)
            if (isinstance(target, np.ndarray) and target.shape == v.shape
                    and target.dtype == v.dtype and target.flags.writeable):
                target[...] = v
            else:
                setattr(self, key, v)
        return IncompatibleKeys(missing, unexpected)


def fold_batch_norm(weight: npt.ArrayLike, bias: npt.ArrayLike | None,
                    running_mean: npt.ArrayLike, running_var: npt.ArrayLike,
                    gamma: npt.ArrayLike | None, beta: npt.ArrayLike | None,
                    eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Fold an eval-mode batch norm into the Linear / Conv layer that feeds it.

    For ``z = W x + b`` followed by ``y = (z - running_mean) / sqrt(running_var + eps) *
    gamma + beta`` (per output channel), returns ``(W', b')`` with ``y = W' x + b'``:
    ``W' = W * s`` along axis 0 and ``b' = (b - running_mean) * s + beta``, where
    ``s = gamma / sqrt(running_var + eps)``.

    Parameters
    ----------
    weight : array_like, shape (C, ...)
        Output channels on axis 0: ``(out, in)`` for Linear, ``(out, in, kh, kw)`` for Conv2d.
    bias : array_like of shape (C,) or None
        None means no bias (zeros).
    running_mean, running_var : array_like of shape (C,)
    gamma, beta : array_like of shape (C,) or None
        The BN's weight and bias; None means 1 and 0 (``affine=False``).
    eps : float, default 1e-5

    Returns
    -------
    weight, bias : ndarray
        Of ``weight``'s dtype (float64 for integer weights); the bias is always an array.
        Computed in float64.

    Raises
    ------
    ValueError
        Per-channel arguments whose shape is not (C,), ``eps < 0``, or
        ``running_var + eps <= 0`` somewhere.

    Examples
    --------
    >>> import numpy as np
    >>> W, b = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([1.0, -1.0])
    >>> Wf, bf = fold_batch_norm(W, b, [0.5, 1.0], [4.0, 1.0], [1.0, 1.0], [0.0, 1.0], eps=0)
    >>> Wf.tolist(), bf.tolist()
    ([[0.5, 1.0], [3.0, 4.0]], [0.25, -1.0])
    """
    w = as_array(weight, "weight")
    if w.ndim == 0:
        raise ValueError("weight: expected an array with output channels on axis 0, "
                         "got a 0-d array")
    C = w.shape[0]
    eps = check_eps(eps)
    rm, rv = running_stats(running_mean, running_var, C)
    g = channel_vector(gamma, C, "gamma")
    be = channel_vector(beta, C, "beta")
    b = channel_vector(bias, C, "bias")
    if np.any(rv + eps <= 0):
        raise ValueError("running_var: expected running_var + eps > 0 in every channel")
    odt = dtype_policy(w.dtype)[1]
    s = 1.0 / np.sqrt(rv + eps)
    if g is not None:
        s = s * g
    new_bias = (-rm if b is None else b - rm) * s
    if be is not None:
        new_bias += be
    new_weight = w.astype(np.float64) * s.reshape((C,) + (1,) * (w.ndim - 1))
    return new_weight.astype(odt, copy=False), new_bias.astype(odt, copy=False)
