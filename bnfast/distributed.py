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

Backward is not synchronized here: ``bnfast.batch_norm_backward`` on a rank gives that
rank's gradient sums only (SyncBatchNorm all-reduces ``sum(dy)`` and ``sum(dy * xhat)``).
"""
import numpy as np

from ._functional import batch_norm_inference, merge_moments, moments_state
from ._training import training_stats_from_state
from ._validation import (
    as_array,
    channel_shape,
    channel_vector,
    check_eps,
    check_momentum,
    check_n_threads,
    running_buffer,
)

__all__ = ["sync_moments_state", "sync_batch_norm_forward", "torch_all_gather",
           "mpi_all_gather"]


def _pack_state(state):
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


def sync_moments_state(state, all_gather):
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


def sync_batch_norm_forward(x, gamma=None, beta=None, *, all_gather, axis=1, eps=1e-5,
                            running_mean=None, running_var=None, momentum=0.1,
                            n_threads=None):
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
    eps = check_eps(eps)
    momentum = check_momentum(momentum)
    check_n_threads(n_threads)
    gamma = channel_vector(gamma, C, "gamma")
    beta = channel_vector(beta, C, "beta")
    running_buffer(running_mean, C, "running_mean")
    running_buffer(running_var, C, "running_var")
    state = sync_moments_state(moments_state(a, axis, n_threads=n_threads), all_gather)
    shape = (f"{a.shape} on this rank, {int(state[0][0]) if C else 0} values per channel "
             "over all ranks")
    mean, var, invstd = training_stats_from_state(state, eps, running_mean, running_var,
                                                  momentum, shape)
    y = batch_norm_inference(a, mean, var, gamma, beta, axis=axis, eps=eps,
                             n_threads=n_threads)
    return y, mean, invstd


def torch_all_gather(group=None, device=None):
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

    def all_gather(packed):
        t = torch.from_numpy(np.ascontiguousarray(packed, dtype=np.float64))
        if device is not None:
            t = t.to(device)
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, t, group=group)
        return [p.cpu().numpy() for p in parts]

    return all_gather


def mpi_all_gather(comm=None):
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

    def all_gather(packed):
        send = np.ascontiguousarray(packed, dtype=np.float64)
        recv = np.empty((comm.Get_size(),) + send.shape)
        comm.Allgather(send, recv)
        return recv

    return all_gather
