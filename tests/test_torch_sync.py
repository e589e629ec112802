"""Synchronized batch norm: ``bnfast.distributed.sync_batch_norm_backward`` (NumPy, ranks as
threads) and ``bnfast.torch.SyncBatchNorm`` in two gloo processes on 127.0.0.1."""
import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

import bnfast
from bnfast import reference
from bnfast.distributed import sync_batch_norm_backward, sync_batch_norm_forward

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(bnfast.__file__)))


class ThreadCollectives:
    """all_gather and all_reduce between ranks that are threads of this process.

    Every wait has a timeout, so a rank that never arrives fails the test instead of hanging.
    """

    def __init__(self, n):
        self.n = n
        self.parts = [None] * n
        self.barrier = threading.Barrier(n, timeout=30)

    def _exchange(self, rank, packed):
        self.parts[rank] = np.array(packed, dtype=np.float64)
        self.barrier.wait()
        parts = list(self.parts)
        self.barrier.wait()  # nobody overwrites parts before every rank has read them
        return parts

    def all_gather(self, rank):
        return lambda packed: self._exchange(rank, packed)

    def all_reduce(self, rank):
        def reduce(packed):
            total = np.zeros_like(np.asarray(packed, dtype=np.float64))
            for part in self._exchange(rank, packed):  # rank order: the same bits everywhere
                total += part
            return total
        return reduce


def run_ranks(fn, n):
    """fn(rank) in n threads; returns the results in rank order, re-raising any error."""
    results, errors = [None] * n, []

    def target(rank):
        try:
            results[rank] = fn(rank)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    assert not any(t.is_alive() for t in threads), "a rank did not finish"
    return results


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("sizes", [(3, 5), (0, 4, 1), (1, 1)], ids=["3+5", "0+4+1", "1+1"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_numpy_sync_backward_is_the_whole_batch_gradient(rng, dtype, sizes, layout):
    axis = 1 if layout == "NCHW" else -1
    shape = (sum(sizes), 3, 4, 5) if layout == "NCHW" else (sum(sizes), 4, 5, 3)
    C = 3
    # Offset data, so that xhat and the gradient sums are not trivially small.
    x = (rng.standard_normal(shape) * 2.0 + 7.0).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma = rng.uniform(0.5, 2.0, C)
    beta = rng.standard_normal(C)
    y_all, mean_all, invstd_all = bnfast.batch_norm_forward(x, gamma, beta, axis=axis)
    dx_all, dgamma_all, dbeta_all = bnfast.batch_norm_backward(dy, x, mean_all, invstd_all,
                                                               gamma, axis=axis)
    bounds = np.cumsum((0,) + sizes)
    coll = ThreadCollectives(len(sizes))

    def rank_step(rank):
        rows = slice(bounds[rank], bounds[rank + 1])
        y, mean, invstd = sync_batch_norm_forward(x[rows], gamma, beta, axis=axis,
                                                  all_gather=coll.all_gather(rank))
        dx, dgamma, dbeta = sync_batch_norm_backward(dy[rows], x[rows], mean, invstd, gamma,
                                                     axis=axis,
                                                     all_reduce=coll.all_reduce(rank))
        return y, mean, invstd, dx, dgamma, dbeta

    out = run_ranks(rank_step, len(sizes))
    for r in range(1, len(sizes)):  # merged in rank order: the same bits on every rank
        np.testing.assert_array_equal(out[r][1], out[0][1])
        np.testing.assert_array_equal(out[r][2], out[0][2])
    # float64 statistics from float64 accumulators over <= 120 values per channel: the
    # merged and the one-pass results differ by a few float64 ulps of the offset (7.0).
    np.testing.assert_allclose(out[0][1], mean_all, rtol=1e-13)
    np.testing.assert_allclose(out[0][2], invstd_all, rtol=1e-11)
    # y and dx: a few ulps of the output dtype, relative to the largest value (float64: the
    # statistics above propagate; float32: the rounding of y and dx to float32).
    tol = {"float64": 1e-11, "float32": 4e-7}[dtype]
    y = np.concatenate([o[0] for o in out])
    dx = np.concatenate([o[3] for o in out])
    assert y.dtype == dx.dtype == np.dtype(dtype)
    np.testing.assert_allclose(y, y_all, rtol=0, atol=tol * np.abs(y_all).max())
    np.testing.assert_allclose(dx, dx_all, rtol=0, atol=tol * np.abs(dx_all).max())
    # dgamma and dbeta are each rank's own: they sum to the whole batch's (float64 sums of
    # at most 120 products, ~1e-14 relative to the sum of magnitudes).
    for i, whole in ((4, dgamma_all), (5, dbeta_all)):
        total = sum(o[i] for o in out)
        scale = np.abs(dy).astype(np.float64).sum() * 4.0
        np.testing.assert_allclose(total, whole, rtol=0, atol=1e-13 * scale)


def test_numpy_sync_backward_rejects_bad_arguments_before_the_collective(rng):
    x = rng.standard_normal((4, 3))
    _, mean, invstd = bnfast.batch_norm_forward(x)

    def never(packed):
        raise AssertionError("the collective ran")

    with pytest.raises(ValueError, match="gamma"):
        sync_batch_norm_backward(x, x, mean, invstd, np.ones(2), all_reduce=never)
    with pytest.raises(ValueError, match="dy"):
        sync_batch_norm_backward(x[:2], x, mean, invstd, all_reduce=never)
    with pytest.raises(ValueError, match="out"):
        sync_batch_norm_backward(x, x, mean, invstd, out=np.empty((4, 2)), all_reduce=never)
    with pytest.raises(ValueError, match="all_reduce"):
        sync_batch_norm_backward(x, x, mean, invstd, all_reduce=lambda p: p[:3])


def test_numpy_sync_backward_one_rank_is_batch_norm_backward(rng):
    x = rng.standard_normal((20, 4)) + 3.0
    dy = rng.standard_normal((20, 4))
    gamma = rng.uniform(0.5, 2.0, 4)
    _, mean, invstd = bnfast.batch_norm_forward(x, gamma)
    out = np.empty_like(x)
    dx, dgamma, dbeta = sync_batch_norm_backward(dy, x, mean, invstd, gamma, out=out,
                                                 all_reduce=lambda p: p.copy())
    assert dx is out
    ref = reference.batch_norm_backward(dy, x, mean, invstd, gamma)
    # float64 both ways: the sums over 20 values agree to ~1e-15 of their magnitudes.
    np.testing.assert_allclose(dx, ref[0], rtol=0, atol=1e-12 * np.abs(ref[0]).max())
    np.testing.assert_allclose(dgamma, ref[1], rtol=0, atol=1e-12 * np.abs(dy).sum())
    np.testing.assert_allclose(dbeta, ref[2], rtol=0, atol=1e-12 * np.abs(dy).sum())


# ---- Two gloo processes ------------------------------------------------------------------------

def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(case_file, out_files, timeout=300):
    """Run the two ranks; kill both and fail (never hang) when they take too long."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, HERE, env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    init = f"tcp://127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "_torch_sync_worker.py"),
                               str(r), str(len(out_files)), init, str(case_file), str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r, out in enumerate(out_files)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0].decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]


# (dtype, rows of rank 0 and rank 1, memory format, DistributedDataParallel or a hand-made
# gradient all-reduce, torch.compile): unequal batches, an empty rank, and a compiled model
# (the synchronized forward eager inside it).
GLOO_CASES = [("float64", (3, 5), "contiguous_format", False, False),
              ("float32", (0, 6), "channels_last", True, False),
              ("float64", (4, 2), "contiguous_format", False, True)]
GLOO_IDS = ["float64-3+5-NCHW", "float32-0+6-channels_last-DDP", "float64-4+2-compiled"]


@pytest.fixture(scope="module")
def gloo_run(tmp_path_factory):
    """Every case of GLOO_CASES run by one pair of gloo processes (starting them and importing
    torch there costs seconds); returns (cases, per-rank results)."""
    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    from _torch_sync_worker import make_model

    fixed = os.environ.get("BNFAST_TEST_SEED")
    seed = int(fixed) if fixed else np.random.SeedSequence().entropy
    print(f"random seed: {seed} (replay with BNFAST_TEST_SEED={seed})")
    gen = torch.Generator().manual_seed(seed % 2**63)
    cases = []
    for dtype, sizes, memory_format, ddp, compiled in GLOO_CASES:
        tdtype = getattr(torch, dtype)
        N, C = sum(sizes), 4
        x = (torch.randn(N, 3, 6, 5, generator=gen, dtype=torch.float64) * 2 + 5).to(tdtype)
        g = [torch.randn(N, C, 6, 5, generator=gen, dtype=torch.float64).to(tdtype)
             for _ in range(2)]
        model = make_model(3, C).to(tdtype)
        with torch.no_grad():
            model[1].weight.uniform_(0.5, 2.0, generator=gen)
            model[1].bias.normal_(generator=gen)
        cases.append({"x": x, "g": g, "state_dict": model.state_dict(), "sizes": sizes,
                      "memory_format": memory_format, "lr": 0.1, "channels": C,
                      "ddp": ddp, "compile": compiled})
    tmp = tmp_path_factory.mktemp("gloo")
    torch.save(cases, tmp / "cases.pt")
    outs = [tmp / f"rank{r}.pt" for r in range(2)]
    _launch(tmp / "cases.pt", outs)
    return cases, [torch.load(o, weights_only=False) for o in outs]


@pytest.mark.parametrize("case_index", range(len(GLOO_CASES)), ids=GLOO_IDS)
def test_sync_batchnorm_two_gloo_processes_train_like_one(gloo_run, case_index):
    torch = pytest.importorskip("torch")
    import bnfast.torch as bt
    from _torch_sync_worker import make_model

    cases, results = gloo_run
    case = cases[case_index]
    ranks = [r[case_index] for r in results]
    dtype, _, memory_format, ddp, compiled = GLOO_CASES[case_index]
    x, g, C = case["x"], case["g"], case["channels"]
    tdtype = x.dtype
    fmt = getattr(torch, memory_format)

    def reference(convert):
        ref = convert(make_model(3, C).to(tdtype))
        ref.load_state_dict(case["state_dict"])
        ref = ref.to(memory_format=fmt)
        opt = torch.optim.SGD(ref.parameters(), lr=case["lr"])
        steps = []
        for gt in g:
            xr = x.clone().contiguous(memory_format=fmt).requires_grad_(True)
            y = ref(xr)
            (y * gt).sum().backward()
            steps.append({"y": y.detach(), "dx": xr.grad,
                          "grads": {k: p.grad.clone() for k, p in ref.named_parameters()}})
            opt.step()
            opt.zero_grad()
        return steps, ref.state_dict()
    # Tolerances, relative to the largest value compared: float64 - the merge of two Welford
    # states vs one pass and the sums of gradients over ranks vs over the batch differ by a
    # few ulps per operation over <= 240 values per channel (1e-11 leaves 100x room);
    # float32 - the conv runs in float32 and may round differently for a different batch
    # split, and y, dx are rounded to float32: a few float32 ulps amplified by the
    # normalization (invstd * gamma <= ~4 here), and conv weight gradients summed in float32
    # over 240 products per channel (sqrt(240) ulps typical): 2e-5.
    tol = {"float64": 1e-11, "float32": 2e-5}[dtype]

    def close(got, want, what):
        got, want = got.double(), want.double()
        scale = float(want.abs().max()) if want.numel() else 1.0
        torch.testing.assert_close(got, want, rtol=0, atol=tol * max(scale, 1e-30),
                                   msg=lambda m: f"{what}: {m}")

    for convert in (bt.convert, lambda m: m):  # bnfast's BatchNorm2d, then torch's
        steps, buffers = reference(convert)
        for t, step in enumerate(steps):
            close(torch.cat([r["steps"][t]["y"] for r in ranks]), step["y"], f"y step {t}")
            close(torch.cat([r["steps"][t]["dx"] for r in ranks]), step["dx"], f"dx step {t}")
            for name, want in step["grads"].items():
                if ddp:  # every rank holds the sum over the ranks
                    got = ranks[0]["steps"][t]["grads"][name]
                    assert torch.equal(ranks[1]["steps"][t]["grads"][name], got)
                else:  # each rank's own: their sum is the whole batch's
                    got = sum(r["steps"][t]["grads"][name] for r in ranks)
                close(got, want, f"grad of {name}, step {t}")
        for name in ("1.running_mean", "1.running_var"):
            close(ranks[0]["buffers"][name], buffers[name], name)
        assert int(ranks[0]["buffers"]["1.num_batches_tracked"]) == 2
    for name, value in ranks[0]["buffers"].items():  # every rank holds the same bits
        assert torch.equal(ranks[1]["buffers"][name], value), name
    if memory_format == "channels_last":
        assert all(r["steps"][0]["y_channels_last"] for r in ranks if len(r["steps"][0]["y"]))
    if compiled:  # the convolution compiled around the eager synchronized forward
        assert all(r["graphs"] >= 1 for r in ranks)
