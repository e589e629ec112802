/* Innermost loops of the bnfast kernels, for float and double.
 *
 * Everything here works on one block that fits in cache; the Cython layer (_kernels.pyx)
 * decides the blocking, the parallel split and the merge order.  Sums are kept in float64
 * lanes with a fixed lane count and a fixed horizontal-sum order, so a block's result does
 * not depend on the vector width the compiler picks, nor on the thread that computes it.
 *
 * Portable C: the compiler vectorizes the lane loops.  On x86-64 Linux with GCC the hot
 * functions are also cloned for AVX2 and picked at load time (ifunc), so wheels built for
 * baseline x86-64 still use 256-bit vectors where the CPU has them.
 */
#ifndef BN_LOOPS_H
#define BN_LOOPS_H

#include <stddef.h>
#include <numpy/npy_common.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(__AVX2__) && !defined(BNFAST_NO_DISPATCH) && !defined(__SANITIZE_ADDRESS__)
#define BN_TARGET __attribute__((target_clones("avx2", "default")))
#else
#define BN_TARGET
#endif

#include <string.h>

/* Reductions keep 16 independent float64 lanes, held as four vectors of 4 doubles, and add
 * them up in a fixed order at the end.  GCC and clang get vector types (SLP does not
 * vectorize lane arrays reliably); other compilers get the same lanes as plain arrays. */
#if defined(__GNUC__) || defined(__clang__)
#define BN_VECTOR_TYPES 1
typedef double bn_vd __attribute__((vector_size(32)));
#define BN_VZERO ((bn_vd){0.0, 0.0, 0.0, 0.0})
#define BN_VSPLAT(s) ((bn_vd){(s), (s), (s), (s)})
/* Element-wise loads: GCC turns these into one vcvtps2pd / vmovupd, where memcpy plus
 * __builtin_convertvector gets split into halves. */
#define BN_VLOAD_f32(dst, p) ((dst) = (bn_vd){(p)[0], (p)[1], (p)[2], (p)[3]})
#define BN_VLOAD_f64(dst, p) ((dst) = (bn_vd){(p)[0], (p)[1], (p)[2], (p)[3]})
#define BN_VTOTAL(v) (((v)[0] + (v)[1]) + ((v)[2] + (v)[3]))
#endif

#define BN_LANES 16

/* True when shifted sums (s = sum d, q = sum d^2 over n values) give M2 = q - s^2/n without
 * cancellation: the shift is within about one standard deviation of the mean, so M2 >= q/2
 * and its rounding error stays a few ulps of M2.  NaN counts as fine (it propagates). */
static inline int bn_well_shifted(double s, double q, double n)
{
    return !(s * s / n > 0.5 * q);
}

/* Non-temporal stores for outputs much larger than the cache (SSE2: every x86-64 CPU). */
#define BN_STREAM_BUF 1024
#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#include <stdint.h>
static inline void bn_stream_store_f32(float *dst, const float *src, npy_intp n)
{
    npy_intp i = 0;
    for (; i < n && ((uintptr_t)(dst + i) & 15); i++)
        dst[i] = src[i];
    for (; i + 4 <= n; i += 4)
        _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
    for (; i < n; i++)
        dst[i] = src[i];
}
static inline void bn_stream_store_f64(double *dst, const double *src, npy_intp n)
{
    npy_intp i = 0;
    for (; i < n && ((uintptr_t)(dst + i) & 15); i++)
        dst[i] = src[i];
    for (; i + 2 <= n; i += 2)
        _mm_stream_pd(dst + i, _mm_loadu_pd(src + i));
    for (; i < n; i++)
        dst[i] = src[i];
}
/* Streamed stores are weakly ordered: fence before another thread may read the output. */
static inline void bn_stream_fence(void) { _mm_sfence(); }
#else
static inline void bn_stream_store_f32(float *dst, const float *src, npy_intp n)
{
    memcpy(dst, src, (size_t)n * sizeof(float));
}
static inline void bn_stream_store_f64(double *dst, const double *src, npy_intp n)
{
    memcpy(dst, src, (size_t)n * sizeof(double));
}
static inline void bn_stream_fence(void) {}
#endif

#define BN_T float
#define BN_FN(name) name##_f32
#define BN_VLOAD BN_VLOAD_f32
#include "bn_loops_impl.h"
#undef BN_T
#undef BN_FN
#undef BN_VLOAD

#define BN_T double
#define BN_FN(name) name##_f64
#define BN_VLOAD BN_VLOAD_f64
#include "bn_loops_impl.h"
#undef BN_T
#undef BN_FN
#undef BN_VLOAD

#endif
