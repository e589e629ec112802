/* OpenMP shim: lets the kernels ask about threads whether or not the build has OpenMP. */
#ifndef BN_OPENMP_H
#define BN_OPENMP_H

#ifdef _OPENMP
#include <omp.h>
static int bn_openmp_enabled(void) { return 1; }
static int bn_max_threads(void) { return omp_get_max_threads(); }
/* omp_get_num_procs() asks the kernel for the affinity mask (a system call): ask once. */
static int bn_num_procs(void)
{
    static int procs = 0;
    if (procs <= 0)
        procs = omp_get_num_procs();
    return procs;
}
#else
static int bn_openmp_enabled(void) { return 0; }
static int bn_max_threads(void) { return 1; }
static int bn_num_procs(void) { return 1; }
#endif

#ifdef BNFAST_COMPILE_FLAGS
static const char *bn_compile_flags(void) { return BNFAST_COMPILE_FLAGS; }
#else
static const char *bn_compile_flags(void) { return ""; }
#endif

#endif
