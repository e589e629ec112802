/* Threads: how many a call may use.  OpenMP, when the build has it, supplies the count the
 * user set (OMP_NUM_THREADS, omp_set_num_threads, threadpoolctl); the work itself runs on
 * bn_pool.h's pool.  The Python layer reports the process's processors and CPU share once,
 * at import (bnfast/_cpus.py: affinity and cgroup quotas). */
#ifndef BN_OPENMP_H
#define BN_OPENMP_H

static int bn_procs = 0;     /* processors this process may run on (affinity) */
static int bn_share = 0;     /* of which its share: fewer under a cgroup CPU quota */
static int bn_explicit = 0;  /* the count the user set (OMP_NUM_THREADS), or 0: not capped by
                              * the share (OpenMP reads the variable itself) */

static void bn_set_cpus(int procs, int share, int explicit_count)
{
    bn_procs = procs > 0 ? procs : 0;
    bn_share = share > 0 ? share : 0;
    bn_explicit = explicit_count;
}

#ifdef _OPENMP
#include <omp.h>
static int bn_openmp_enabled(void) { return 1; }
static int bn_max_threads(void) { return omp_get_max_threads(); }
static int bn_num_procs(void)
{
    /* omp_get_num_procs() asks the kernel for the affinity mask (a system call): ask once. */
    if (bn_procs <= 0)
        bn_procs = omp_get_num_procs();
    return bn_procs;
}
#else
static int bn_openmp_enabled(void) { return 0; }
static int bn_num_procs(void) { return bn_procs > 0 ? bn_procs : 1; }
static int bn_max_threads(void) { return bn_explicit > 0 ? bn_explicit : bn_num_procs(); }
#endif

/* The count a call with n_threads=None asks for: the user's, or else the process's share. */
static int bn_default_threads(void)
{
    int t = bn_max_threads();
    if (!bn_explicit && bn_share > 0 && t > bn_share)
        t = bn_share;
    return t > 0 ? t : 1;
}

#ifdef BNFAST_COMPILE_FLAGS
static const char *bn_compile_flags(void) { return BNFAST_COMPILE_FLAGS; }
#else
static const char *bn_compile_flags(void) { return ""; }
#endif

#endif
