# Introspection and tuning of the compiled module (included by _kernels.pyx): not operations,
# so plain typed arguments rather than the plain-case contract of the entry points.

def plan(intp outer, intp C, intp inner, intp itemsize=4):
    """The blocking of a (outer, C, inner) array, as a dict (for tests and benchmarks)."""
    return make_plan(outer, C, inner, itemsize)


def set_stream_min_bytes(intp nbytes):
    """Set the output size from which non-temporal stores are used; returns the old value.

    Results do not depend on it (only speed does).
    """
    global stream_min_bytes
    old = stream_min_bytes
    stream_min_bytes = max(nbytes, 0)
    return old


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(bn_openmp_enabled())


def max_threads():
    """The thread count the user set (OMP_NUM_THREADS, omp_set_num_threads, threadpoolctl),
    else the processor count."""
    return bn_max_threads()


def default_threads():
    """Threads a call with n_threads=None asks for: max_threads(), capped by the process's
    CPU share unless the user set a count."""
    return bn_default_threads()


def set_cpus(int procs, int share, int explicit_count):
    """Tell the kernels the process's processors (affinity), its CPU share (cgroup quota)
    and the thread count the user set in OMP_NUM_THREADS (0: none); bnfast/_cpus.py calls it
    at import."""
    bn_set_cpus(procs, share, explicit_count)


def pool_enabled():
    """True when the kernels run on bnfast's own thread pool (POSIX builds)."""
    return bool(bn_pool_enabled())


def pool_helpers():
    """Helper threads the pool has started so far (it starts them on first use)."""
    return bn_pool_helpers()


def pool_helped():
    """How many claims of tasks the pool's helper threads have run (diagnostics)."""
    return bn_pool_helped()


def pool_backoffs():
    """How many times the pool backed off to one thread after a call waited for a helper
    that the scheduler had stopped (bn_pool.h)."""
    return bn_pool_backoffs()


def simd_clone():
    """Which clone of the vectorized loops runs on this CPU (picked at load time)."""
    return bn_simd_clone().decode()


def half_loops():
    """Which float16/bfloat16 loops run: x86-64-v3 (F16C), baseline or portable."""
    return bn_half_loops().decode()


def use_baseline_half_loops(bint baseline):
    """Run the baseline half-precision loops on any CPU (True) or let the CPU choose
    (False): for tests comparing the two. Returns half_loops()."""
    bn_half_choose(0 if baseline else 1)
    return half_loops()


def compile_flags():
    """The C compiler flags the kernels were built with."""
    return bn_compile_flags().decode()
