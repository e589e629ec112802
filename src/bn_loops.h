/* Innermost loops of the bnfast kernels, for float, double, float16 and bfloat16.
 *
 * Everything here works on one block that fits in cache; the Cython layer (_kernels.pyx)
 * decides the blocking, the parallel split and the merge order.  Sums are kept in float64
 * lanes with a fixed lane count and a fixed horizontal-sum order, so a block's result does
 * not depend on the vector width the compiler picks, nor on the thread that computes it.
 *
 * Portable C: the compiler vectorizes the lane loops.  On x86-64 Linux with GCC the hot
 * functions are also cloned for AVX2 and picked at load time (ifunc), so wheels built for
 * baseline x86-64 still use 256-bit vectors where the CPU has them.
 *
 * Half types (bn_half.h) are loaded and stored by the same loops, widened to float32 in
 * registers: the float32 elementwise loops and the float64 reductions are float32's, on
 * the widened values.  On x86-64 with GCC or clang their loops are compiled twice, for
 * x86-64-v3 (F16C converts eight values an instruction) and for baseline x86-64 (integer
 * arithmetic on the bits), and the first call picks one (bn_half_inst.h).
 */
#ifndef BN_LOOPS_H
#define BN_LOOPS_H

#include <math.h>
#include <stddef.h>
#include <numpy/npy_common.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(__AVX2__) && !defined(BNFAST_NO_DISPATCH) && !defined(__SANITIZE_ADDRESS__)
#define BN_CLONES_AVX2 1
#ifdef BNFAST_AVX512
/* x86-64-v4 (AVX-512 F/BW/DQ/VL) clones as well: a build switch until they are measured on
 * AVX-512 hardware (docs/design.md §3, "Instruction sets"). */
#define BN_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define BN_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#else
#define BN_CLONES
#endif
#define BN_TARGET BN_CLONES

/* Which clone of the BN_TARGET loops the load-time resolver picks on this CPU (show_config):
 * the same feature tests, in the same order of preference. */
static const char *bn_simd_clone(void)
{
#ifdef BN_CLONES_AVX2
    __builtin_cpu_init();
#ifdef BNFAST_AVX512
    if (__builtin_cpu_supports("x86-64-v4"))
        return "x86-64-v4 (AVX-512) clones";
#endif
    if (__builtin_cpu_supports("avx2"))
        return "AVX2 clones";
    return "baseline x86-64 (SSE2) clones";
#elif defined(__AVX512F__)
    return "AVX-512 (this build's target)";
#elif defined(__AVX2__)
    return "AVX2 (this build's target)";
#else
    return "the compiler's default for this target";
#endif
}

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

/* Inline bodies that must be compiled into each target clone of their caller. */
#if defined(__GNUC__) || defined(__clang__)
#define BN_INLINE static inline __attribute__((always_inline))
#else
#define BN_INLINE static inline
#endif

/* Loops over distinct arrays, or in place (y == x exactly: the Python layer never passes
 * partially overlapping buffers), carry no dependence between iterations. */
#if defined(__clang__)
#define BN_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define BN_IVDEP _Pragma("GCC ivdep")
#else
#define BN_IVDEP
#endif

/* True when shifted sums (s = sum d, q = sum d^2 over n > 0 values) give M2 = q - s^2/n
 * without cancellation: the shift is within about one standard deviation of the mean, so
 * M2 >= q/2 and its rounding error stays a few ulps of M2.  NaN counts as fine (it
 * propagates).  Multiplied out (no division): the tile loops test every channel of every
 * block, and a division per channel cost a fifth of the statistics of 64-row blocks. */
static inline int bn_well_shifted(double s, double q, double n)
{
    return !(s * s > 0.5 * q * n);
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

/* The float32 elementwise passes (bn_elementwise_impl.h, "Elementwise passes") take a channel's
 * coefficients in float32 when each one is zero, NaN, or of a magnitude in [lo, 2^100]: lo is
 * 2^-60 for a mean that is split in two, 2^-100 for the others.  Out of that range (a float32
 * conversion would overflow, or lose bits to gradual underflow) the float64 loop runs instead.
 * Infinity is allowed where the float32 loop then gives the float64 loop's value (inf or NaN
 * alike), which the forward pass does and the backward pass does not. */
#define BN_F32_COEF_MAX 1267650600228229401496703205376.0 /* 2^100 */
#define BN_F32_COEF_MIN (1.0 / BN_F32_COEF_MAX)
#define BN_F32_SPLIT_MIN (1.0 / 1152921504606846976.0)   /* 2^-60 */

/* Tile rows of at most this many columns take the float32 loops (see bn_elementwise_impl.h,
 * "Elementwise passes"): their coefficients are converted once per call, on the stack. */
#define BN_F32_ROW_COLS 256

/* 1 when v is outside the float32 path's range (see above); inf_ok: infinity is allowed. */
static inline int bn_f32_bad(double v, double lo, int inf_ok)
{
    const double a = fabs(v);
    return ((a != 0.0) & (a < lo)) | ((a > BN_F32_COEF_MAX) & (inf_ok ? a < HUGE_VAL : 1));
}

#ifdef BN_VECTOR_TYPES
/* The same on four values at a time: bn_f32_bad as lanes of -1 (out of range) or'ed into *bad,
 * the split, and a plain rounding to float32 stored at dst. */
typedef float bn_vf4 __attribute__((vector_size(16)));
typedef long long bn_vl __attribute__((vector_size(32)));
#define BN_VLZERO ((bn_vl){0, 0, 0, 0})

BN_INLINE void bn_f32_vbad(bn_vl *bad, const bn_vd *v, double lo, int inf_ok)
{
    const long long abs_bits = 0x7fffffffffffffffLL;
    const bn_vd a = (bn_vd)((bn_vl)*v & (bn_vl){abs_bits, abs_bits, abs_bits, abs_bits});
    const bn_vl high = a > BN_VSPLAT(BN_F32_COEF_MAX);
    *bad |= ((a != BN_VZERO) & (a < BN_VSPLAT(lo)))
            | (inf_ok ? high & (a < BN_VSPLAT(HUGE_VAL)) : high);
}

BN_INLINE void bn_f32_vstore(float *dst, const bn_vd *v)
{
    const bn_vf4 f = __builtin_convertvector(*v, bn_vf4);
    memcpy(dst, &f, sizeof f);
}

BN_INLINE void bn_f32_vsplit(const bn_vd *v, float *hi, float *lo)
{
    const bn_vf4 h = __builtin_convertvector(*v, bn_vf4);
    bn_vd d = *v - __builtin_convertvector(h, bn_vd);
    d = (bn_vd)((bn_vl)d & (d == d)); /* infinite v: inf - inf is NaN, and lo is 0 */
    memcpy(hi, &h, sizeof h);
    bn_f32_vstore(lo, &d);
}
#endif

/* v as hi + lo in float32: hi the float nearest v, lo the float nearest v - hi (which is
 * exact in float64).  For infinite v, lo is 0 rather than inf - inf. */
static inline void bn_f32_split(double v, float *hi, float *lo)
{
    const float h = (float)v;
    *hi = h;
    *lo = isfinite(v) ? (float)(v - (double)h) : 0.0f;
}

/* Forward coefficients of n channels in float32, for the float32 loops, which compute
 * y = ((x - h) - l) * s + b.  A channel with a finite nonzero scale and a shift of at least
 * 2^-27 |mean * scale| takes the form of its zero crossing: h + l = z = mean - shift / scale
 * (in float64, split in two), s = scale, b = 0, so that y = (x - z) * scale errs relative to y
 * itself, also where x - mean and the shift cancel (bn_elementwise_impl.h, "Error of the
 * float32 forward"; the float64 rounding of z, 2^-52 |mean * scale|, then stays below a
 * float32 rounding of the shift).  Any other channel (scale zero or not finite, a smaller
 * shift, z out of the split's range) takes the plain form: h + l = mean, s = scale,
 * b = shift.  Returns 0 when a coefficient of the form taken is out of range: the float64 loop
 * must run instead. */
#define BN_F32_ZFORM_RATIO 134217728.0 /* 2^27 */
static inline int bn_f32_norm_coef(double mean, double scale, double shift, float *mh,
                                   float *ml, float *s, float *b)
{
    const double z = mean - shift / scale;
    *s = (float)scale;
    if (scale != 0.0 && isfinite(scale) && isfinite(z) && !bn_f32_bad(z, BN_F32_SPLIT_MIN, 0)
        && !bn_f32_bad(scale, BN_F32_COEF_MIN, 0)
        && fabs(mean * scale) <= BN_F32_ZFORM_RATIO * fabs(shift)) {
        bn_f32_split(z, mh, ml);
        *b = 0.0f;
        return 0;
    }
    bn_f32_split(mean, mh, ml);
    *b = (float)shift;
    return bn_f32_bad(mean, BN_F32_SPLIT_MIN, 1) | bn_f32_bad(scale, BN_F32_COEF_MIN, 1)
           | bn_f32_bad(shift, BN_F32_COEF_MIN, 1);
}

BN_INLINE int bn_f32_norm_coefs(const double *mean, const double *scale, const double *shift,
                                npy_intp n, float *mh, float *ml, float *s, float *b)
{
    npy_intp c = 0;
    int bad = 0;
#ifdef BN_VECTOR_TYPES
    /* Four channels at a time: both forms, and a lane select; the scalar function's values. */
    const long long abs_bits = 0x7fffffffffffffffLL;
    const bn_vl abs_mask = {abs_bits, abs_bits, abs_bits, abs_bits};
    bn_vl vbad = BN_VLZERO;
    for (; c + 4 <= n; c += 4) {
        bn_vd m, sc, sh;
        BN_VLOAD_f64(m, mean + c);
        BN_VLOAD_f64(sc, scale + c);
        BN_VLOAD_f64(sh, shift + c);
        const bn_vd z = m - sh / sc;
        const bn_vd az = (bn_vd)((bn_vl)z & abs_mask), as = (bn_vd)((bn_vl)sc & abs_mask);
        const bn_vd ams = (bn_vd)((bn_vl)(m * sc) & abs_mask);
        const bn_vd ash = (bn_vd)((bn_vl)sh & abs_mask);
        /* finite nonzero scale in range, finite z in the split's range, shift large enough */
        const bn_vl zform = (as >= BN_VSPLAT(BN_F32_COEF_MIN))
                            & (as <= BN_VSPLAT(BN_F32_COEF_MAX))
                            & ((az == BN_VZERO) | (az >= BN_VSPLAT(BN_F32_SPLIT_MIN)))
                            & (az <= BN_VSPLAT(BN_F32_COEF_MAX))
                            & (ams <= BN_VSPLAT(BN_F32_ZFORM_RATIO) * ash);
        const bn_vd hv = (bn_vd)((zform & (bn_vl)z) | (~zform & (bn_vl)m));
        const bn_vd bv = (bn_vd)(~zform & (bn_vl)sh);
        bn_vl pbad = BN_VLZERO;
        bn_f32_vsplit(&hv, mh + c, ml + c);
        bn_f32_vstore(s + c, &sc);
        bn_f32_vstore(b + c, &bv);
        bn_f32_vbad(&pbad, &m, BN_F32_SPLIT_MIN, 1);
        bn_f32_vbad(&pbad, &sc, BN_F32_COEF_MIN, 1);
        bn_f32_vbad(&pbad, &sh, BN_F32_COEF_MIN, 1);
        vbad |= ~zform & pbad;
    }
    bad = ((vbad[0] | vbad[1]) | (vbad[2] | vbad[3])) != 0;
#endif
    for (; c < n; c++)
        bad |= bn_f32_norm_coef(mean[c], scale[c], shift[c], mh + c, ml + c, s + c, b + c);
    return !bad;
}

/* Backward coefficients of n channels in float32: a and the mean split in two, k rounded, and
 * w = b * k (in float64) rounded.  A channel with a NaN coefficient is all NaN in either loop;
 * infinity is out of range here.  Returns 0 when one of them is out of range. */
BN_INLINE int bn_f32_grad_coefs(const double *mean, const double *a, const double *b,
                                const double *k, npy_intp n, float *ah, float *al, float *kf,
                                float *mh, float *ml, float *w)
{
    npy_intp c = 0;
    int bad = 0;
#ifdef BN_VECTOR_TYPES
    bn_vl vbad = BN_VLZERO;
    for (; c + 4 <= n; c += 4) {
        bn_vd m, av, bv, kv;
        BN_VLOAD_f64(m, mean + c);
        BN_VLOAD_f64(av, a + c);
        BN_VLOAD_f64(bv, b + c);
        BN_VLOAD_f64(kv, k + c);
        const bn_vd wv = bv * kv;
        const bn_vl nan = (m != m) | (av != av) | (bv != bv) | (kv != kv);
        bn_vl cbad = BN_VLZERO;
        bn_f32_vsplit(&av, ah + c, al + c);
        bn_f32_vsplit(&m, mh + c, ml + c);
        bn_f32_vstore(kf + c, &kv);
        bn_f32_vstore(w + c, &wv);
        bn_f32_vbad(&cbad, &m, BN_F32_SPLIT_MIN, 0);
        bn_f32_vbad(&cbad, &av, BN_F32_SPLIT_MIN, 0);
        bn_f32_vbad(&cbad, &kv, BN_F32_COEF_MIN, 0);
        bn_f32_vbad(&cbad, &wv, BN_F32_COEF_MIN, 0);
        vbad |= ~nan & cbad;
    }
    bad = ((vbad[0] | vbad[1]) | (vbad[2] | vbad[3])) != 0;
#endif
    for (; c < n; c++) {
        const double wc = b[c] * k[c];
        const int nan = isnan(mean[c]) | isnan(a[c]) | isnan(b[c]) | isnan(k[c]);
        bn_f32_split(a[c], ah + c, al + c);
        bn_f32_split(mean[c], mh + c, ml + c);
        kf[c] = (float)k[c];
        w[c] = (float)wc;
        bad |= (!nan) & (bn_f32_bad(mean[c], BN_F32_SPLIT_MIN, 0)
                         | bn_f32_bad(a[c], BN_F32_SPLIT_MIN, 0)
                         | bn_f32_bad(k[c], BN_F32_COEF_MIN, 0)
                         | bn_f32_bad(wc, BN_F32_COEF_MIN, 0));
    }
    return !bad;
}

/* The ReLU's gradient mask, g where y > 0 else +0 (also for y NaN), as an and of the bits:
 * no branch and no conditional load, so the loops that use it stay vectorized.  pos is
 * (y > 0), BN_POS(y) of the element type. */
#include <stdint.h>
#include "bn_half.h"
static inline float bn_zero_unless_f(float g, int pos)
{
    uint32_t b;
    memcpy(&b, &g, sizeof b);
    b &= (uint32_t)0 - (uint32_t)pos;
    memcpy(&g, &b, sizeof g);
    return g;
}
static inline double bn_zero_unless_d(double g, int pos)
{
    uint64_t b;
    memcpy(&b, &g, sizeof b);
    b &= (uint64_t)0 - (uint64_t)pos;
    memcpy(&g, &b, sizeof g);
    return g;
}
#define BN_ZERO_UNLESS(g, pos) \
    _Generic((g), float: bn_zero_unless_f, double: bn_zero_unless_d)((g), (pos))

/* y > 0 for the half types: 0 < bits <= +infinity's (NaN and negative values are not). */
static inline int bn_pos_f16(bn_f16 y) { return (uint16_t)(y.bits - 1u) < 0x7c00u; }
static inline int bn_pos_bf16(bn_bf16 y) { return (uint16_t)(y.bits - 1u) < 0x7f80u; }
static inline bn_f16 bn_masked_f16(bn_f16 g, bn_f16 y)
{
    g.bits &= (uint16_t)(0u - (unsigned)bn_pos_f16(y));
    return g;
}
static inline bn_bf16 bn_masked_bf16(bn_bf16 g, bn_bf16 y)
{
    g.bits &= (uint16_t)(0u - (unsigned)bn_pos_bf16(y));
    return g;
}

/* Non-temporal stores of 16-bit values (the half types). */
static inline void bn_stream_store_u16(uint16_t *dst, const uint16_t *src, npy_intp n)
{
#if defined(__SSE2__) || defined(_M_X64)
    npy_intp i = 0;
    for (; i < n && ((uintptr_t)(dst + i) & 15); i++)
        dst[i] = src[i];
    for (; i + 8 <= n; i += 8)
        _mm_stream_si128((__m128i *)(void *)(dst + i),
                         _mm_loadu_si128((const __m128i *)(const void *)(src + i)));
    for (; i < n; i++)
        dst[i] = src[i];
#else
    memcpy(dst, src, (size_t)n * sizeof *dst);
#endif
}

/* The instantiations.  BN_LD / BN_LDF read an element as double / float, BN_STD / BN_STF
 * store a double / float result; BN_LOWP: the float32 elementwise loops exist (float32 and
 * the half types); BN_HALF: a half type (bn_half_inst.h). */
#define BN_T float
#define BN_F32 1
#define BN_LOWP 1
#define BN_HALF 0
#define BN_FN(name) name##_f32
#define BN_VLOAD BN_VLOAD_f32
#define BN_LD(v) ((double)(v))
#define BN_LDF(v) (v)
#define BN_STD(d) ((float)(d))
#define BN_STF(f) (f)
#define BN_POS(y) ((y) > 0)
#define BN_MASKED(g, y) BN_ZERO_UNLESS((g), (y) > 0)
#include "bn_elementwise_impl.h"
#include "bn_passes_impl.h"
#include "bn_stats_impl.h"
#undef BN_T
#undef BN_F32
#undef BN_LOWP
#undef BN_FN
#undef BN_VLOAD
#undef BN_STD
#undef BN_LDF
#undef BN_STF

#define BN_T double
#define BN_F32 0
#define BN_LOWP 0
#define BN_FN(name) name##_f64
#define BN_VLOAD BN_VLOAD_f64
#define BN_STD(d) ((double)(d))
#include "bn_elementwise_impl.h"
#include "bn_passes_impl.h"
#include "bn_stats_impl.h"
#undef BN_T
#undef BN_F32
#undef BN_LOWP
#undef BN_HALF
#undef BN_FN
#undef BN_VLOAD
#undef BN_LD
#undef BN_STD
#undef BN_POS
#undef BN_MASKED

#include "bn_half_inst.h"

#endif
