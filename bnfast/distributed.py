"""Cross-process batch statistics: the SyncBatchNorm recipe on mergeable Welford states.

Data-parallel training splits a batch over ranks; batch norm should still normalize with the
statistics of the whole batch (PyTorch's ``SyncBatchNorm``). Each rank computes the
Welford state ``(count, mean, m2)`` of its own slice with the kernels, the ranks all-gather
those O(C) states, and every rank merges them with ``bnfast.merge_moments`` in rank order:
exact statistics, bit-identical on every rank, from one small collective.

The communication is any all-gather, passed as a callable: ``torch_all_gather`` wraps
``torch.distributed`` (gloo on the CPU), ``mpi_all_gather`` wraps an ``mpi4py``
communicator; neither is imported until used.

Example (one script per rank, e.g. ``torchrun --nproc-per-node 2 train.py``, or
``torch.distributed.init_process_group("gloo", init_method="tcp://127.0.0.1:29500",
rank=rank, world_size=2)``)::

    import numpy as np
    import torch.distributed as dist
    import bnfast
    from bnfast.distributed import sync_batch_norm_forward, torch_all_gather

    dist.init_process_group("gloo")
    all_gather = torch_all_gather()
    running_mean, running_var = np.zeros(C), np.ones(C)
    for x_local in my_batches():                # this rank's slice of each global batch
        y, mean, invstd = sync_batch_norm_forward(
            x_local, gamma, beta, all_gather=all_gather, axis=1,
            running_mean=running_mean, running_var=running_var, momentum=0.1)
        # mean / invstd (and the running statistics) are the global batch's, on every rank

Or only the statistics::

    state = bnfast.moments_state(x_local, axis=1)
    count, mean, m2 = sync_moments_state(state, all_gather)
    var = m2 / count

Backward: ``sync_batch_norm_backward`` sums each rank's ``sum(dy * xhat)``, ``sum(dy)`` and
element count with one all-reduce of 2C + 1 float64 values, so each rank's ``dx`` is its slice
of the whole batch's gradient; the ``dgamma`` and ``dbeta`` it returns are this rank's own
sums (a data-parallel optimizer sums them over the ranks with the other gradients, as
PyTorch's DistributedDataParallel does)::

    from bnfast.distributed import sync_batch_norm_backward, torch_all_reduce

    all_reduce = torch_all_reduce()            # or mpi_all_reduce(comm) with mpi4py
    dx, dgamma, dbeta = sync_batch_norm_backward(
        dy_local, x_local, mean, invstd, gamma, all_reduce=all_reduce, axis=1)
    # dgamma, dbeta: this rank's; sum them over the ranks (all_reduce) before the update

(``bnfast.batch_norm_backward`` on a rank alone gives that rank's gradient, as if its slice
were the whole batch.)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _training
from ._functional import batch_norm_inference, merge_moments, moments_state
from ._training import training_stats_from_state
from ._validation import (
    as_array,
    channel_shape,
    channel_vector,
    check_out,
    training_arguments,
)

if TYPE_CHECKING:
    import torch
    from torch.distributed import ProcessGroup

__all__ = ["sync_moments_state", "sync_batch_norm_forward", "torch_all_gather",
           "mpi_all_gather", "sync_batch_norm_backward", "torch_all_reduce", "mpi_all_reduce"]

F64Array = NDArray[np.float64]
# all_gather(packed): every rank's (3, C) state, in rank order (a list, or one (size, 3, C)
# array); all_reduce(packed): the sum over the ranks of their (2 C + 1,) arrays.
AllGather = Callable[[F64Array], Iterable[ArrayLike]]
AllReduce = Callable[[F64Array], ArrayLike]


def _pack_state(state: Any) -> F64Array:
    try:
        count, mean, m2 = state
    except (TypeError, ValueError):
        raise ValueError("state: expected a (count, mean, m2) triple") from None
    mean = np.asarray(mean, dtype=np.float64)
    if mean.ndim != 1:
        raise ValueError(f"state: expected mean of shape (C,), got shape {mean.shape}")
    C = mean.shape[0]
    packed = np.empty((3, C))
    try:
        packed[0] = np.broadcast_to(np.asarray(count, np.float64), (C,))
        packed[2] = np.asarray(m2, np.float64)
    except ValueError:
        raise ValueError(f"state: expected count and m2 of shape ({C},)") from None
    packed[1] = mean
    return packed


def sync_moments_state(
    state: tuple[ArrayLike, ArrayLike, ArrayLike], all_gather: AllGather,
) -> tuple[F64Array, F64Array, F64Array]:
    """The Welford state of the data of every rank, from this rank's state.

    Parameters
    ----------
    state : (count, mean, m2)
        This rank's state, as ``bnfast.moments_state`` returns it (shape (C,) each; the
        same C on every rank).
    all_gather : callable
        ``all_gather(packed)`` takes this rank's state as a float64 array of shape (3, C)
        (rows count, mean, m2) and returns the list of every rank's such array, in rank
        order, this rank's included. ``torch_all_gather()`` and ``mpi_all_gather()`` make
        one; any collective library fits.

    Returns
    -------
    count, mean, m2 : ndarray of float64, shape (C,)
        The merged state (``bnfast.merge_moments`` in rank order): the same bits on every
        rank.

    Examples
    --------
    Two "ranks" in one process, with an all-gather that sees both states:

    >>> import bnfast
    >>> states = [bnfast.moments_state([1.0, 4.0, 6.0]), bnfast.moments_state([8.0, 10.0, 9.0])]
    >>> gather = lambda packed: [np.array(s) for s in states]  # each rank's (3, C) array
    >>> count, mean, m2 = sync_moments_state(states[0], gather)
    >>> float(count[0]), round(float(m2[0] / count[0]), 6)
    (6.0, 9.555556)
    """
    packed = _pack_state(state)
    gathered = all_gather(packed)
    states = []
    for rank, g in enumerate(gathered):
        g = np.asarray(g, dtype=np.float64)
        if g.shape != packed.shape:
            raise ValueError(f"all_gather: rank {rank} sent a state of shape {g.shape}, "
                             f"expected {packed.shape} (the same channels on every rank)")
        states.append((g[0], g[1], g[2]))
    return merge_moments(states)


def sync_batch_norm_forward(
    x: ArrayLike, gamma: ArrayLike | None = None, beta: ArrayLike | None = None, *,
    all_gather: AllGather, axis: int | None = 1, eps: float = 1e-5,
    running_mean: np.ndarray | None = None, running_var: np.ndarray | None = None,
    momentum: float = 0.1, n_threads: int | None = None,
) -> tuple[np.ndarray, F64Array, F64Array]:
    """Training-mode batch norm of this rank's slice with the statistics of all ranks.

    SyncBatchNorm's forward: the local state from the kernels, ``sync_moments_state``, then
    this rank's ``x`` normalized with the global mean and variance by the inference kernel.

    Parameters
    ----------
    x : array_like
        This rank's part of the batch (it may be empty, or have a single sample).
    gamma, beta : array_like of shape (C,), optional
    all_gather : callable
        As in ``sync_moments_state``; every rank must call this function together.
    axis : int or None, default 1
    eps : float, default 1e-5
    running_mean, running_var : ndarray of shape (C,), optional
        Updated in place with the global statistics (running_var with the unbiased variance
        of the global batch), the same on every rank.
    momentum : float in [0, 1], default 0.1
    n_threads : int or None, default None

    Returns
    -------
    y : ndarray
        This rank's normalized slice, of x's dtype.
    mean, invstd : ndarray of float64, shape (C,)
        Of the global batch.

    Raises
    ------
    ValueError
        When the global batch has one value per channel or none, and for bad arguments
        (checked before the all-gather, so a rank with bad arguments raises without waiting
        for the others; the others then wait for it, as with any collective).
    """
    a = as_array(x)
    _, C, _ = channel_shape(a, axis)
    t = training_arguments(C, gamma, beta, eps, momentum, running_mean, running_var, n_threads)
    eps, momentum, gamma, beta = t.eps, t.momentum, t.gamma, t.beta
    state = sync_moments_state(moments_state(a, axis, n_threads=n_threads), all_gather)
    shape = (f"{a.shape} on this rank, {int(state[0][0]) if C else 0} values per channel "
             "over all ranks")
    mean, var, invstd = training_stats_from_state(state, eps, running_mean, running_var,
                                                  momentum, shape)
    y = batch_norm_inference(a, mean, var, gamma, beta, axis=axis, eps=eps,
                             n_threads=n_threads)
    return y, mean, invstd


def torch_all_gather(group: ProcessGroup | None = None,
                     device: torch.device | str | None = None
                     ) -> Callable[[F64Array], list[F64Array]]:
    """An ``all_gather`` callable over ``torch.distributed`` (the process group must exist).

    Parameters
    ----------
    group : ProcessGroup, optional
        Default: the default group (``torch.distributed.init_process_group``).
    device : torch.device or str, optional
        Where the collective runs: None (the CPU) for gloo; ``"cuda"`` for NCCL.

    Returns
    -------
    callable
        ``all_gather(packed) -> list of ndarray``, one per rank in rank order.
    """
    import torch
    import torch.distributed as dist

    def all_gather(packed: F64Array) -> list[F64Array]:
        t = torch.from_numpy(np.ascontiguousarray(packed, dtype=np.float64))
        if device is not None:
            t = t.to(device)
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, t, group=group)
        return [p.cpu().numpy() for p in parts]

    return all_gather


def mpi_all_gather(comm: Any = None) -> Callable[[F64Array], F64Array]:
    """An ``all_gather`` callable over an mpi4py communicator (default ``MPI.COMM_WORLD``).

    Returns
    -------
    callable
        ``all_gather(packed) -> ndarray`` of shape (size, 3, C), one state per rank in rank
        order (MPI's buffer ``Allgather``: no pickling).
    """
    if comm is None:
        from mpi4py import MPI
        comm = MPI.COMM_WORLD

    def all_gather(packed: F64Array) -> F64Array:
        send = np.ascontiguousarray(packed, dtype=np.float64)
        recv = np.empty((comm.Get_size(),) + send.shape)
        comm.Allgather(send, recv)
        return recv

    return all_gather


# ---- Synchronized backward ------------------------------------------------------------------

def sync_batch_norm_backward(
    dy: ArrayLike, x: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
    gamma: ArrayLike | None = None, *, all_reduce: AllReduce, axis: int | None = 1,
    out: np.ndarray | None = None, n_threads: int | None = None,
) -> tuple[np.ndarray, F64Array, F64Array]:
    """Gradients of ``sync_batch_norm_forward``: this rank's part of the whole batch's dx.

    Each rank computes its ``sum(dy * xhat)`` and ``sum(dy)`` per channel and its element
    count, the ranks sum those ``2 C + 1`` values with one all-reduce, and each rank gets
    ``dx = gamma * invstd / m * (m * dy - sum(dy) - xhat * sum(dy * xhat))`` with the global
    sums and the global count ``m``: exactly the gradient of the whole batch, sliced.

    Parameters
    ----------
    dy : array_like
        Upstream gradient of this rank's output, the shape of ``x`` (may be empty).
    x : array_like
        This rank's forward input.
    mean, invstd : array_like of shape (C,)
        The global statistics ``sync_batch_norm_forward`` returned.
    gamma : array_like of shape (C,), optional
    all_reduce : callable
        ``all_reduce(packed)`` takes a float64 array of shape (2 C + 1,) and returns the sum
        of every rank's such array (any order: a sum). ``torch_all_reduce()`` and
        ``mpi_all_reduce()`` make one. Every rank must call this function together.
    axis : int or None, default 1
    out : ndarray, optional
        Where to write dx.
    n_threads : int or None, default None

    Returns
    -------
    dx : ndarray
        This rank's slice of the whole batch's input gradient, of the inputs' dtype.
    dgamma, dbeta : ndarray of float64, shape (C,)
        This rank's own ``sum(dy * xhat)`` and ``sum(dy)``: sum them over the ranks (a
        data-parallel wrapper does) to get the parameters' gradients.

    Raises
    ------
    ValueError
        For bad arguments, before the all-reduce (so a rank with bad arguments raises without
        waiting; the others then wait for it, as with any collective), or when the all-reduce
        returns an array of the wrong shape.

    Examples
    --------
    Two "ranks" in one process, with an all-reduce that sees both ranks' sums:

    >>> import bnfast
    >>> x = np.array([[1.0], [2.0], [4.0], [7.0]]); dy = np.array([[1.0], [0.0], [0.0], [-2.0]])
    >>> _, mean, invstd = bnfast.batch_norm_forward(x)
    >>> def gather_sums(part):             # rank 0 and rank 1's packed sums
    ...     _, dg, db = bnfast.batch_norm_backward(dy[part], x[part], mean, invstd)
    ...     return np.concatenate([dg, db, [len(x[part])]])
    >>> total = gather_sums(slice(0, 1)) + gather_sums(slice(1, 4))
    >>> dx0, dg0, db0 = sync_batch_norm_backward(dy[:1], x[:1], mean, invstd,
    ...                                          all_reduce=lambda packed: total)
    >>> dx_all, _, _ = bnfast.batch_norm_backward(dy, x, mean, invstd)
    >>> bool(np.allclose(dx0, dx_all[:1], rtol=1e-12))
    True
    """
    args = _training.backward_arguments(dy, x, mean, invstd, axis, n_threads)
    a, g_in, mu, inv, odt = args.x, args.dy, args.mean, args.invstd, args.odt
    outer, C, inner = args.shape3
    gam = channel_vector(gamma, C, "gamma")
    if out is not None:
        check_out(out, a.shape, odt)
    m_local = outer * inner
    if m_local and C:
        dgamma, dbeta = _training.backward_sums(g_in, a, mu, inv, axis=axis,
                                                n_threads=n_threads)
    else:  # an empty slice (this rank holds no samples) adds nothing
        dgamma, dbeta = np.zeros(C), np.zeros(C)
    packed = np.empty(2 * C + 1)
    packed[:C] = dgamma
    packed[C:2 * C] = dbeta
    packed[2 * C] = m_local
    total = np.asarray(all_reduce(packed), dtype=np.float64)
    if total.shape != packed.shape:
        raise ValueError(f"all_reduce: expected an array of shape {packed.shape}, "
                         f"got shape {total.shape}")
    if m_local == 0 or C == 0:
        dx = np.empty(a.shape, dtype=odt) if out is None else out
        return dx, dgamma, dbeta
    dx = _training.backward_input(g_in, a, mu, inv, gam, total[:C], total[C:2 * C],
                                  float(total[2 * C]), axis=axis, out=out,
                                  n_threads=n_threads)
    return dx, dgamma, dbeta


def torch_all_reduce(group: ProcessGroup | None = None,
                     device: torch.device | str | None = None
                     ) -> Callable[[F64Array], F64Array]:
    """An ``all_reduce`` callable (a sum) over ``torch.distributed``; the group must exist.

    Parameters
    ----------
    group : ProcessGroup, optional
        Default: the default group.
    device : torch.device or str, optional
        Where the collective runs: None (the CPU) for gloo; ``"cuda"`` for NCCL.

    Returns
    -------
    callable
        ``all_reduce(packed) -> ndarray``: the sum over the ranks, a new float64 array.
    """
    import torch
    import torch.distributed as dist

    def all_reduce(packed: F64Array) -> F64Array:
        t = torch.from_numpy(np.array(packed, dtype=np.float64))  # a copy: packed is kept
        if device is not None:
            t = t.to(device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        return t.cpu().numpy()

    return all_reduce


def mpi_all_reduce(comm: Any = None) -> Callable[[F64Array], F64Array]:
    """An ``all_reduce`` callable (a sum) over an mpi4py communicator (default COMM_WORLD).

    Returns
    -------
    callable
        ``all_reduce(packed) -> ndarray``: MPI's buffer ``Allreduce`` with ``MPI.SUM``.
    """
    from mpi4py import MPI
    if comm is None:
        comm = MPI.COMM_WORLD

    def all_reduce(packed: F64Array) -> F64Array:
        send = np.ascontiguousarray(packed, dtype=np.float64)
        recv = np.empty_like(send)
        comm.Allreduce(send, recv, op=MPI.SUM)
        return recv

    return all_reduce
