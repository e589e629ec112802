"""Threads: the default count (affinity, cgroup quotas, OMP_NUM_THREADS, threadpoolctl) and
the kernels' thread pool (concurrent callers, fork, many jobs back to back)."""
import multiprocessing
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import bnfast
from bnfast import _cpus, _kernels
from _helpers import assert_bits_equal, run_python

# ---- The CPU share, from files laid out as the kernel lays them out ---------------------------


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_the_smallest_on_the_path(tmp_path):
    _write(tmp_path / "self", "0::/a/b\n")
    _write(tmp_path / "mnt" / "a" / "b" / "cpu.max", "max 100000\n")
    _write(tmp_path / "mnt" / "a" / "cpu.max", "150000 100000\n")
    _write(tmp_path / "mnt" / "cpu.max", "400000 100000\n")
    assert _cpus.cgroup_cpu_limit(str(tmp_path / "self"), str(tmp_path / "mnt")) == 1.5


def test_cgroup_v1_quota(tmp_path):
    _write(tmp_path / "self", "4:memory:/x\n3:cpu,cpuacct:/job\n0::/\n")
    _write(tmp_path / "mnt" / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us", "250000\n")
    _write(tmp_path / "mnt" / "cpu,cpuacct" / "job" / "cpu.cfs_period_us", "100000\n")
    _write(tmp_path / "mnt" / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    _write(tmp_path / "mnt" / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert _cpus.cgroup_cpu_limit(str(tmp_path / "self"), str(tmp_path / "mnt")) == 2.5


@pytest.mark.parametrize("cpu_max", ["max 100000", "", "garbage", "0 100000", "100000 0"])
def test_cgroup_without_a_quota(tmp_path, cpu_max):
    _write(tmp_path / "self", "0::/a\n")
    _write(tmp_path / "mnt" / "a" / "cpu.max", cpu_max)
    assert _cpus.cgroup_cpu_limit(str(tmp_path / "self"), str(tmp_path / "mnt")) is None
    assert _cpus.cgroup_cpu_limit(str(tmp_path / "missing"), str(tmp_path / "none")) is None


@pytest.mark.parametrize("procs, limit, share", [
    (8, 1.5, 2), (8, None, 8), (2, 4.0, 2), (4, 0.2, 1), (1, None, 1), (16, 3.0, 3),
])
def test_cpu_share_rounds_the_quota_up(procs, limit, share):
    assert _cpus.cpu_share(procs, limit) == share


@pytest.mark.parametrize("text, count", [("4", 4), ("4,2", 4), (" 3 ", 3), ("", 0),
                                         ("abc", 0), ("0", 0), ("-2", 0)])
def test_explicit_thread_count(text, count):
    assert _cpus.explicit_thread_count({"OMP_NUM_THREADS": text}) == count
    assert _cpus.explicit_thread_count({}) == 0


_DEFAULT = "import bnfast, bnfast._kernels as k; print(k.default_threads(), k.max_threads())"


def _default_threads(env=(), prefix=()):
    """(default_threads, max_threads) in a fresh process with env set (OMP_NUM_THREADS
    removed unless given) and its command prefixed (taskset)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(bnfast.__file__)))
    environ = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    environ.update(env, PYTHONPATH=root)
    done = subprocess.run([*prefix, sys.executable, "-c", _DEFAULT], capture_output=True,
                          text=True, timeout=120, env=environ)
    assert done.returncode == 0, done.stderr
    return tuple(int(v) for v in done.stdout.split())


@pytest.mark.skipif(not shutil.which("taskset") or _cpus.affinity_count() < 2,
                    reason="needs taskset and 2 processors")
def test_default_threads_honour_taskset():
    assert _default_threads(prefix=("taskset", "-c", "0"))[0] == 1


def test_omp_num_threads_takes_precedence_over_the_share():
    default, user = _default_threads({"OMP_NUM_THREADS": "3"})
    assert (default, user) == (3, 3)
    assert _default_threads({"OMP_NUM_THREADS": "1"})[0] == 1


def test_threadpoolctl_limit_is_the_default():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not bnfast.openmp_enabled():
        pytest.skip("threadpoolctl limits OpenMP; this build has none")
    with threadpoolctl.threadpool_limits(1):
        assert _kernels.default_threads() == 1


_CGROUP_V1 = "/sys/fs/cgroup/cpu"


@pytest.mark.skipif(not (sys.platform == "linux" and os.access(_CGROUP_V1, os.W_OK)
                         and os.path.exists(os.path.join(_CGROUP_V1, "cgroup.procs"))),
                    reason="needs a writable cgroup v1 cpu controller (root)")
def test_default_threads_honour_a_real_cgroup_quota(tmp_path):
    group = os.path.join(_CGROUP_V1, f"bnfast-test-{os.getpid()}")
    os.mkdir(group)
    try:
        with open(os.path.join(group, "cpu.cfs_quota_us"), "w") as f:
            f.write("50000")  # half a CPU per 100 ms period
        code = (f"import os; open({os.path.join(group, 'cgroup.procs')!r}, 'w')"
                f".write(str(os.getpid())); {_DEFAULT}")
        done = run_python(code)
        assert done.returncode == 0, done.stderr
        default, _ = (int(v) for v in done.stdout.split())
        assert default == 1
    finally:
        os.rmdir(group)


# ---- The pool ---------------------------------------------------------------------------------

def _job(x):
    y, mean, invstd = bnfast.batch_norm_forward(x, n_threads=2)
    dx = bnfast.batch_norm_backward(x, x, mean, invstd, n_threads=2)[0]
    return y, mean, invstd, dx


def _inputs(seed, n=8):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((64, 32, 12, 12)) * 3 + 1).astype(np.float32)
            for _ in range(n)]


def test_many_jobs_from_several_threads_keep_their_bits(seed):
    """Jobs back to back and from four Python threads at once (the pool runs one job at a
    time; a second caller runs its tasks itself): every result is the serial one's."""
    xs = _inputs(seed % 2**32)
    serial = [bnfast.batch_norm_forward(x, n_threads=1) for x in xs]
    want = [_job(x) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(_job, xs * 25))
    for i, result in enumerate(got):
        for a, b, what in zip(result, want[i % len(xs)], ("y", "mean", "invstd", "dx")):
            assert_bits_equal(a, b, f"{what} of job {i}")
        assert_bits_equal(result[0], serial[i % len(xs)][0], f"y of job {i} vs 1 thread")


def _child(x):
    return _job(x)[0]


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(),
                    reason="no fork on this platform")
def test_pool_works_in_a_forked_child(seed):
    """A child forked after the pool started its helpers has none: it starts its own."""
    xs = _inputs(seed % 2**32, n=3)
    want = [_job(x)[0] for x in xs]  # helpers running in this process now
    assert not _kernels.pool_enabled() or _kernels.pool_helpers() >= 1
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.map(_child, xs, chunksize=1)
    for a, b in zip(got, want):
        assert_bits_equal(a, b, "y in a forked child")


def test_helpers_never_exceed_the_processors():
    bnfast.batch_norm_forward(_inputs(0, 1)[0], n_threads=64)
    assert _kernels.pool_helpers() <= max(0, _cpus.affinity_count() - 1)
