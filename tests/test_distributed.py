"""bnfast.distributed: SyncBatchNorm-style statistics from all-gathered Welford states.

Ranks are simulated by threads with a barrier-based all-gather (always), and run for real as
two torch.distributed processes on the gloo backend (when torch is installed). Also: bnfast
imports without dask and without scikit-learn.
"""
import os
import socket
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import bnfast
from bnfast.distributed import (
    mpi_all_gather,
    sync_batch_norm_forward,
    sync_moments_state,
)

from _helpers import (  # noqa: E402
    assert_merged_moments_close, assert_merged_y_close, run_python, stat_rtol, stat_scales,
    sum_tol, unit_roundoff)

F64 = np.float64
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ThreadAllGather:
    """An all-gather between ``world`` threads, one per simulated rank."""

    def __init__(self, world):
        self.slots = [None] * world
        self.barrier = threading.Barrier(world, timeout=30)

    def for_rank(self, rank):
        def all_gather(packed):
            self.slots[rank] = np.array(packed, copy=True)
            self.barrier.wait()
            gathered = [s.copy() for s in self.slots]
            self.barrier.wait()  # nobody writes the next round's slot before all have read
            return gathered
        return all_gather


def _run_ranks(world, fn):
    gather = ThreadAllGather(world)
    with ThreadPoolExecutor(world) as pool:
        futures = [pool.submit(fn, rank, gather.for_rank(rank)) for rank in range(world)]
        return [f.result(timeout=60) for f in futures]


def test_sync_moments_state_is_the_global_state_on_every_rank(rng):
    x = rng.standard_normal((101, 4, 3)) * 2 + 50
    parts = np.split(x, [0, 40, 41], axis=0)  # an empty rank and a one-sample rank
    results = _run_ranks(len(parts), lambda r, g: sync_moments_state(
        bnfast.moments_state(parts[r]), g))
    for res in results[1:]:  # bit-identical on every rank
        for a, b in zip(res, results[0]):
            np.testing.assert_array_equal(a, b)
    count, mean, m2 = results[0]
    x2 = np.moveaxis(x, 1, -1).reshape(-1, 4)
    np.testing.assert_array_equal(count, x2.shape[0])
    assert_merged_moments_close(mean, m2 / count, x2.mean(axis=0), x2.var(axis=0), x2, 1)


def test_sync_moments_state_with_skipna_and_weights(rng):
    x = rng.standard_normal((90, 3)) + 5
    x[rng.random(x.shape) < 0.2] = np.nan
    w = rng.uniform(0, 2, 90)
    cuts = [30, 65]
    xs, ws = np.split(x, cuts), np.split(w, cuts)
    results = _run_ranks(3, lambda r, g: sync_moments_state(
        bnfast.moments_state(xs[r], skipna=True, sample_weight=ws[r]), g))
    whole = bnfast.moments_state(x, skipna=True, sample_weight=w)
    count, mean, m2 = results[0]
    # the same weights (>= 0) summed in other orders: sum_tol; the statistics as merged ones
    np.testing.assert_allclose(count, whole[0], rtol=0, atol=sum_tol(90, float(whole[0].max())))
    assert_merged_moments_close(mean, m2 / count, whole[1], whole[2] / whole[0], x, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sync_batch_norm_forward_equals_the_whole_batch(rng, dtype):
    x = (rng.standard_normal((13, 5, 4, 4)) * 3 - 7).astype(dtype)  # NCHW
    gamma, beta = rng.uniform(0.5, 2, 5), rng.uniform(-1, 1, 5)
    parts = np.split(x, [1, 1, 8], axis=0)  # ranks with 1, 0, 7 and 5 samples

    def rank_fn(rank, all_gather):
        rm, rv = np.zeros(5, dtype), np.ones(5, dtype)
        y, mean, invstd = sync_batch_norm_forward(
            parts[rank], gamma, beta, all_gather=all_gather, axis=1, eps=1e-4,
            running_mean=rm, running_var=rv, momentum=0.2)
        return y, mean, invstd, rm, rv

    results = _run_ranks(len(parts), rank_fn)
    rm_ref, rv_ref = np.zeros(5, dtype), np.ones(5, dtype)
    y_ref, mean_ref, invstd_ref = bnfast.batch_norm_forward(
        x, gamma, beta, axis=1, eps=1e-4, running_mean=rm_ref, running_var=rv_ref,
        momentum=0.2)
    for r, (y, mean, invstd, rm, rv) in enumerate(results):
        np.testing.assert_array_equal(mean, results[0][1])
        np.testing.assert_array_equal(invstd, results[0][2])
        np.testing.assert_array_equal(rm, results[0][3])
        assert y.dtype == dtype and y.shape == parts[r].shape
    y = np.concatenate([res[0] for res in results])
    _check_against_whole_batch(x, gamma, beta, 1e-4, y, *results[0][1:], y_ref, mean_ref,
                               invstd_ref, rm_ref, rv_ref)


def _check_against_whole_batch(x, gamma, beta, eps, y, mean, invstd, rm, rv, y_ref, mean_ref,
                               invstd_ref, rm_ref, rv_ref):
    """A synchronized forward vs the in-memory one over the whole batch (NCHW): statistics as
    merged ones, y from them, the running statistics' update with 4 roundings more and one
    to their dtype."""
    assert_merged_y_close(y, y_ref, x, 1, eps, gamma, beta)
    assert_merged_moments_close(mean, 1 / invstd**2, mean_ref, 1 / invstd_ref**2, x, 1)
    n = x.size // x.shape[1]
    rtol = stat_rtol(4 * n) + 4 * unit_roundoff() + unit_roundoff(rm.dtype)
    mean_scale, var_scale = stat_scales(x, 1)
    np.testing.assert_allclose(rm, rm_ref, rtol=rtol, atol=rtol * mean_scale)
    np.testing.assert_allclose(rv, rv_ref, rtol=rtol, atol=rtol * 2 * var_scale)


def test_sync_batch_norm_forward_errors(rng):
    parts = [np.ones((1, 3)), np.ones((0, 3))]  # one value per channel over both ranks
    rms = [np.zeros(3), np.zeros(3)]
    rvs = [np.ones(3), np.ones(3)]  # both or neither (tests/test_first_use.py)

    def rank_fn(rank, all_gather):
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            sync_batch_norm_forward(parts[rank], all_gather=all_gather, running_mean=rms[rank],
                                    running_var=rvs[rank])
        return True

    assert all(_run_ranks(2, rank_fn))
    for rm, rv in zip(rms, rvs):
        np.testing.assert_array_equal(rm, 0.0)
        np.testing.assert_array_equal(rv, 1.0)
    never = lambda packed: pytest.fail("all_gather must not be reached")  # noqa: E731
    with pytest.raises(ValueError, match=r"gamma: expected shape \(3,\)"):
        sync_batch_norm_forward(np.ones((4, 3)), np.ones(2), all_gather=never)
    with pytest.raises(ValueError, match="running_mean"):
        sync_batch_norm_forward(np.ones((4, 3)), all_gather=never, running_mean=np.ones(4))
    with pytest.raises(ValueError, match="rank 1 sent a state of shape"):
        sync_moments_state(bnfast.moments_state(np.ones((4, 3))),
                           lambda p: [p, np.zeros((3, 2))])
    with pytest.raises(ValueError, match="triple"):
        sync_moments_state((1.0, 2.0), lambda p: [p])


def test_mpi_all_gather_glue():
    class FakeComm:  # mpi4py's buffer Allgather, for a world of 2 with identical ranks
        def Get_size(self):
            return 2

        def Allgather(self, send, recv):
            recv[...] = send

    state = bnfast.moments_state(np.arange(12.0).reshape(6, 2))
    count, mean, m2 = sync_moments_state(state, mpi_all_gather(FakeComm()))
    np.testing.assert_array_equal(count, 2 * state[0])
    np.testing.assert_array_equal(mean, state[1])
    # M2 + M2 + delta^2 n n / 2n with delta = 0: one addition, exact (doubling)
    np.testing.assert_array_equal(m2, 2 * state[2])


# -- two real processes: torch.distributed, gloo backend, 127.0.0.1 ---------------------------

RANK_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import torch.distributed as dist
    import bnfast
    from bnfast.distributed import sync_batch_norm_forward, sync_moments_state, torch_all_gather

    rank, port, data, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        d = np.load(data)
        x = d[f"x{rank}"]
        rm, rv = np.zeros(x.shape[1]), np.ones(x.shape[1])
        all_gather = torch_all_gather()
        y, mean, invstd = sync_batch_norm_forward(
            x, d["gamma"], d["beta"], all_gather=all_gather, axis=1, running_mean=rm,
            running_var=rv, momentum=0.1)
        nan_state = sync_moments_state(bnfast.moments_state(d[f"n{rank}"], skipna=True),
                                       all_gather)
        np.savez(out, y=y, mean=mean, invstd=invstd, rm=rm, rv=rv, count=nan_state[0],
                 nan_mean=nan_state[1], nan_m2=nan_state[2])
    finally:
        dist.destroy_process_group()
""")


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torch_gloo_processes(rng, tmp_path):
    pytest.importorskip("torch.distributed")
    x = (rng.standard_normal((11, 3, 5, 2)) * 4 + 9).astype(np.float32)
    nanx = rng.standard_normal((40, 3))
    nanx[rng.random(nanx.shape) < 0.3] = np.nan
    gamma, beta = rng.uniform(0.5, 2, 3), rng.uniform(-1, 1, 3)
    data = tmp_path / "data.npz"
    np.savez(data, x0=x[:4], x1=x[4:], n0=nanx[:25], n1=nanx[25:], gamma=gamma, beta=beta)
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
               PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(script), str(r), port, str(data),
                               str(tmp_path / f"rank{r}.npz")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for r in range(2)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=120)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    res = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    for key in ("mean", "invstd", "rm", "rv", "count", "nan_mean", "nan_m2"):
        np.testing.assert_array_equal(res[0][key], res[1][key], err_msg=key)  # same bits
    rm_ref, rv_ref = np.zeros(3), np.ones(3)
    y_ref, mean_ref, invstd_ref = bnfast.batch_norm_forward(
        x, gamma, beta, axis=1, running_mean=rm_ref, running_var=rv_ref, momentum=0.1)
    y = np.concatenate([res[0]["y"], res[1]["y"]])
    assert y.dtype == np.float32
    _check_against_whole_batch(x, gamma, beta, 1e-5, y, res[0]["mean"], res[0]["invstd"],
                               res[0]["rm"], res[0]["rv"], y_ref, mean_ref, invstd_ref, rm_ref,
                               rv_ref)
    x64 = np.moveaxis(x.astype(F64), 1, -1).reshape(-1, 3)  # float64 NumPy reference
    assert_merged_moments_close(res[0]["mean"], None, x64.mean(axis=0), None, x64, 1)
    np.testing.assert_array_equal(res[0]["count"], (~np.isnan(nanx)).sum(axis=0))
    assert_merged_moments_close(res[0]["nan_mean"], res[0]["nan_m2"] / res[0]["count"],
                                np.nanmean(nanx, axis=0), np.nanvar(nanx, axis=0), nanx, 1)


# -- optional dependencies --------------------------------------------------------------------

def test_import_without_dask_and_sklearn():
    code = textwrap.dedent("""
        import sys
        for name in ("dask", "dask.array", "distributed", "sklearn", "torch", "mpi4py"):
            sys.modules[name] = None  # any import of them raises ImportError
        import numpy as np
        import bnfast, bnfast.preprocessing, bnfast.distributed
        assert bnfast.moments_state(np.ones((3, 2)))[0].tolist() == [3.0, 3.0]
        try:
            import bnfast.dask
        except ImportError as e:
            assert "bnfast[dask]" in str(e), e
        else:
            raise AssertionError("bnfast.dask imported without dask")
        try:
            bnfast.BatchNormScaler()
        except ImportError as e:
            assert "scikit-learn" in str(e), e
        else:
            raise AssertionError("BatchNormScaler built without scikit-learn")
        print("ok")
    """)
    done = run_python(code)
    assert done.returncode == 0 and "ok" in done.stdout, done.stdout + done.stderr


def test_bnfast_does_not_import_dask_eagerly():
    code = ("import sys, bnfast, bnfast.preprocessing, bnfast.distributed; "
            "bnfast.BatchNormScaler; print(sorted(m for m in ('dask', 'distributed', 'torch')"
            " if m in sys.modules))")
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
