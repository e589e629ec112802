/* The half-type instantiations of the loops (included once, at the end of bn_loops.h).
 *
 * Each of float16 and bfloat16 gets bn_elementwise_impl.h and bn_stats_impl.h with
 * BN_T = bn_f16 / bn_bf16 and the conversions of bn_half.h.  On x86-64 with GCC or clang the
 * loops are compiled twice: once for x86-64-v3 (AVX2, and F16C, whose vcvtph2ps / vcvtps2ph
 * convert eight float16 values an instruction: the compiler does not vectorize float16
 * conversions by itself, so the loops call the instructions), once for baseline x86-64; the
 * exported functions (the ones _kernels.pyx calls, listed in bn_half_exports.h) pick one at
 * their first call.  Both give the same bits: the float arithmetic is the same operations in the
 * same order (no FMA: -ffp-contract=off) and the conversions agree on every value
 * (tests/test_half.py).  Elsewhere the loops are compiled once, with the portable
 * conversions.
 */
#ifndef BN_HALF_INST_H
#define BN_HALF_INST_H

#undef BN_TARGET
#define BN_TARGET
#define BN_F32 0
#define BN_LOWP 1
#define BN_HALF 1
#define BN_LD(v) ((double)BN_H_TO32(v))
#define BN_LDF(v) BN_H_TO32(v)
#define BN_STD(d) BN_H_FROM32((float)(d))
#define BN_STF(f) BN_H_FROM32(f)
#define BN_POS(y) BN_H_POS(y)
#define BN_MASKED(g, y) BN_H_MASK((g), (y))
#define BN_VLOAD(dst, p) ((dst) = BN_H_VLOAD4(p))

#ifdef BN_VECTOR_TYPES
/* Four bfloat16 values as four doubles (exact). */
static inline bn_vd bn_vload4_bf16(const bn_bf16 *p)
{
    typedef uint16_t vh4 __attribute__((vector_size(8)));
    typedef uint32_t vu4 __attribute__((vector_size(16)));
    vh4 h;
    memcpy(&h, p, sizeof h);
    const vu4 u = __builtin_convertvector(h, vu4) << 16;
    bn_vf4 f;
    memcpy(&f, &u, sizeof f);
    return __builtin_convertvector(f, bn_vd);
}

static inline bn_vd bn_vload4_f16(const bn_f16 *p)
{
    return (bn_vd){bn_f16_to_f32_bits(p[0].bits), bn_f16_to_f32_bits(p[1].bits),
                   bn_f16_to_f32_bits(p[2].bits), bn_f16_to_f32_bits(p[3].bits)};
}
#endif

static inline float bn_f16_to_f32_port(bn_f16 h) { return bn_f16_to_f32_bits(h.bits); }
static inline bn_f16 bn_f32_to_f16_port(float f)
{
    bn_f16 h = {bn_f32_to_f16_bits(f)};
    return h;
}

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) \
    && !defined(BNFAST_NO_DISPATCH) && !defined(__AVX2__)
#define BN_HALF_DISPATCH 1
#endif

#if defined(BN_HALF_DISPATCH) || (defined(__AVX2__) && defined(__F16C__))
#include <immintrin.h>
#ifdef BN_HALF_DISPATCH
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#endif
static inline float bn_f16_to_f32_f16c(bn_f16 h) { return _cvtsh_ss(h.bits); }
static inline bn_f16 bn_f32_to_f16_f16c(float f)
{
    bn_f16 h = {(uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT)};
    return h;
}
/* Intrinsics throughout: GCC 12 splits __builtin_convertvector of four floats to four doubles
 * into two halves through the stack, where vcvtps2pd takes one instruction. */
static inline bn_vd bn_vload4_f16_f16c(const bn_f16 *p)
{
    const __m128 f = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(const void *)p));
    return (bn_vd)_mm256_cvtps_pd(f);
}
static inline bn_vf8 bn_load8_f16_f16c(const bn_f16 *p)
{
    return (bn_vf8)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p));
}
static inline void bn_store8_f16_f16c(bn_f16 *p, bn_vf8 f)
{
    _mm_storeu_si128((__m128i *)(void *)p,
                     _mm256_cvtps_ph((__m256)f, _MM_FROUND_TO_NEAREST_INT));
}

/* float16 rounded and widened back in registers: the store's and the load's instructions. */
static inline bn_vf8 bn_round8_f16_f16c(bn_vf8 f)
{
    return (bn_vf8)_mm256_cvtph_ps(_mm256_cvtps_ph((__m256)f, _MM_FROUND_TO_NEAREST_INT));
}

/* bfloat16 with AVX2 integer instructions: the same widening and rounding as bn_half.h's. */
static inline bn_vd bn_vload4_bf16_avx2(const bn_bf16 *p)
{
    const __m128i h = _mm_cvtepu16_epi32(_mm_loadl_epi64((const __m128i *)(const void *)p));
    return (bn_vd)_mm256_cvtps_pd(_mm_castsi128_ps(_mm_slli_epi32(h, 16)));
}
/* Sixteen bfloat16 values as four vectors of four doubles, in order: a pair of 128-bit loads
 * unpacked against zero (the shift of the widening for free), where four bn_vload4 take four
 * loads, four zero-extensions and four shifts. */
static inline void bn_vload16_bf16_avx2(const bn_bf16 *p, bn_vd *a, bn_vd *b, bn_vd *c,
                                        bn_vd *d)
{
    const __m128i z = _mm_setzero_si128();
    const __m128i h0 = _mm_loadu_si128((const __m128i *)(const void *)p);
    const __m128i h1 = _mm_loadu_si128((const __m128i *)(const void *)(p + 8));
    *a = (bn_vd)_mm256_cvtps_pd(_mm_castsi128_ps(_mm_unpacklo_epi16(z, h0)));
    *b = (bn_vd)_mm256_cvtps_pd(_mm_castsi128_ps(_mm_unpackhi_epi16(z, h0)));
    *c = (bn_vd)_mm256_cvtps_pd(_mm_castsi128_ps(_mm_unpacklo_epi16(z, h1)));
    *d = (bn_vd)_mm256_cvtps_pd(_mm_castsi128_ps(_mm_unpackhi_epi16(z, h1)));
}
static inline bn_vf8 bn_load8_bf16_avx2(const bn_bf16 *p)
{
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)p));
    return (bn_vf8)_mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
}
/* float32 -> bfloat16 bits in the low halves of the 32-bit lanes, rounded to nearest even; a
 * NaN would be rounded like a number (possibly to infinity), so bn_bf16_round_avx2 is for
 * vectors without NaN and bn_bf16_round_nan_avx2 makes each NaN 0x7fc0 with its sign. */
static inline __m256i bn_bf16_round_avx2(__m256i u)
{
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    return _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)),
                                              odd), 16);
}
static inline __m256i bn_bf16_round_nan_avx2(bn_vf8 f)
{
    const __m256i u = _mm256_castps_si256((__m256)f);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps((__m256)f, (__m256)f, _CMP_UNORD_Q));
    const __m256i q = _mm256_or_si256(
        _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x8000)),
        _mm256_set1_epi32(0x7fc0));
    return _mm256_blendv_epi8(bn_bf16_round_avx2(u), q, nan);
}
static inline bn_vf8 bn_round8_bf16_avx2(bn_vf8 f)
{
    return (bn_vf8)_mm256_castsi256_ps(_mm256_slli_epi32(bn_bf16_round_nan_avx2(f), 16));
}
static inline void bn_store8_bf16_avx2(bn_bf16 *p, bn_vf8 f)
{
    const __m256i h = bn_bf16_round_nan_avx2(f);
    _mm_storeu_si128((__m128i *)(void *)p,
                     _mm_packus_epi32(_mm256_castsi256_si128(h),
                                      _mm256_extracti128_si256(h, 1)));
}

/* float32 -> bfloat16 of two vectors, packed in-lane: a's lanes 0-3, b's 0-3, a's 4-7, b's
 * 4-7.  The NaN case is taken only when there is a NaN among the sixteen. */
static inline __m256i bn_bf16_pack16_avx2(bn_vf8 a, bn_vf8 b)
{
    const __m256 nan = _mm256_cmp_ps((__m256)a, (__m256)b, _CMP_UNORD_Q);
    if (__builtin_expect(_mm256_testz_ps(nan, nan), 1))
        return _mm256_packus_epi32(bn_bf16_round_avx2(_mm256_castps_si256((__m256)a)),
                                   bn_bf16_round_avx2(_mm256_castps_si256((__m256)b)));
    return _mm256_packus_epi32(bn_bf16_round_nan_avx2(a), bn_bf16_round_nan_avx2(b));
}

/* Sixteen values in order: a = p[0..7], b = p[8..15]. */
static inline void bn_load16_bf16_avx2(const bn_bf16 *p, bn_vf8 *a, bn_vf8 *b)
{
    *a = bn_load8_bf16_avx2(p);
    *b = bn_load8_bf16_avx2(p + 8);
}
static inline void bn_store16_bf16_avx2(bn_bf16 *p, bn_vf8 a, bn_vf8 b)
{
    _mm256_storeu_si256((__m256i *)(void *)p,
                        _mm256_permute4x64_epi64(bn_bf16_pack16_avx2(a, b), 0xd8));
}

/* Sixteen values in the order that unpacking the two 128-bit lanes gives, a = p[0..3],
 * p[8..11] and b = p[4..7], p[12..15]; the in-lane pack of the store puts them back.  For
 * loops in which every array goes through these two and all values take the same
 * coefficients (one channel's run): two instructions widen the sixteen values and one packs
 * them, where load16 and store16 take four and two. */
static inline void bn_load16x_bf16_avx2(const bn_bf16 *p, bn_vf8 *a, bn_vf8 *b)
{
    const __m256i h = _mm256_loadu_si256((const __m256i *)(const void *)p);
    *a = (bn_vf8)_mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), h));
    *b = (bn_vf8)_mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), h));
}
static inline void bn_store16x_bf16_avx2(bn_bf16 *p, bn_vf8 a, bn_vf8 b)
{
    _mm256_storeu_si256((__m256i *)(void *)p, bn_bf16_pack16_avx2(a, b));
}
#endif

/* One instantiation per (type, instruction set): BN_FN names it. */
#ifdef BN_HALF_DISPATCH
#define BN_V3(name) name##_v3
#define BN_BASE(name) name##_base
#else
#define BN_V3(name) name
#define BN_BASE(name) name
#endif

#if defined(BN_HALF_DISPATCH) || (defined(__AVX2__) && defined(__F16C__))
/* x86-64-v3: bfloat16 with AVX2 integer instructions, float16 with F16C. */
#define BN_T bn_bf16
#define BN_H_TO32 bn_bf16_to_f32
#define BN_H_FROM32 bn_f32_to_bf16
#define BN_H_POS bn_pos_bf16
#define BN_H_MASK bn_masked_bf16
#define BN_H_VLOAD4 bn_vload4_bf16_avx2
#define BN_H_VLOAD16 bn_vload16_bf16_avx2
#define BN_H_ROUND8 bn_round8_bf16_avx2
#define BN_H_LOAD8 bn_load8_bf16_avx2
#define BN_H_STORE8 bn_store8_bf16_avx2
#define BN_H_LOAD16 bn_load16_bf16_avx2
#define BN_H_STORE16 bn_store16_bf16_avx2
#define BN_H_LOAD16X bn_load16x_bf16_avx2
#define BN_H_STORE16X bn_store16x_bf16_avx2
#define BN_FN(name) BN_V3(name##_bf16)
#include "bn_half_one.h"
#define BN_T bn_f16
#define BN_H_TO32 bn_f16_to_f32_f16c
#define BN_H_FROM32 bn_f32_to_f16_f16c
#define BN_H_POS bn_pos_f16
#define BN_H_MASK bn_masked_f16
#define BN_H_VLOAD4 bn_vload4_f16_f16c
#define BN_H_LOAD8 bn_load8_f16_f16c
#define BN_H_STORE8 bn_store8_f16_f16c
#define BN_H_ROUND8 bn_round8_f16_f16c
#define BN_FN(name) BN_V3(name##_f16)
#include "bn_half_one.h"
#endif
#ifdef BN_HALF_DISPATCH
#pragma GCC pop_options
#endif

#if !(defined(__AVX2__) && defined(__F16C__))
/* Baseline: the portable conversions (integer arithmetic on the bits for float16). */
#define BN_T bn_bf16
#define BN_H_TO32 bn_bf16_to_f32
#define BN_H_FROM32 bn_f32_to_bf16
#define BN_H_POS bn_pos_bf16
#define BN_H_MASK bn_masked_bf16
#define BN_H_VLOAD4 bn_vload4_bf16
#define BN_H_LOAD8 bn_load8_bf16
#define BN_H_STORE8 bn_store8_bf16
#define BN_FN(name) BN_BASE(name##_bf16)
#include "bn_half_one.h"
#define BN_T bn_f16
#define BN_H_TO32 bn_f16_to_f32_port
#define BN_H_FROM32 bn_f32_to_f16_port
#define BN_H_POS bn_pos_f16
#define BN_H_MASK bn_masked_f16
#define BN_H_VLOAD4 bn_vload4_f16
#define BN_H_LOAD8 bn_load8_f16
#define BN_H_STORE8 bn_store8_f16
#define BN_FN(name) BN_BASE(name##_f16)
#include "bn_half_one.h"
#endif

#ifdef BN_HALF_DISPATCH
/* The exported functions: the x86-64-v3 loops where the CPU has them.  bn_half_v3_use
 * (-1: decide; tests set 0 to run the baseline loops on any CPU, to compare their bits). */
static int bn_half_v3_use = -1;
static int bn_half_v3(void)
{
    if (bn_half_v3_use < 0)
        bn_half_v3_use = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")
                         && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
    return bn_half_v3_use;
}
#define BN_EXPORT_ONE(name, SUF, params, args)                                               \
    static void name##SUF params                                                             \
    {                                                                                        \
        if (bn_half_v3())                                                                    \
            name##SUF##_v3 args;                                                             \
        else                                                                                 \
            name##SUF##_base args;                                                           \
    }
#define T bn_f16
#define BN_EXPORT(name, params, args) BN_EXPORT_ONE(name, _f16, params, args)
#include "bn_half_exports.h"
#undef T
#undef BN_EXPORT
#define T bn_bf16
#define BN_EXPORT(name, params, args) BN_EXPORT_ONE(name, _bf16, params, args)
#include "bn_half_exports.h"
#undef T
#undef BN_EXPORT
#undef BN_EXPORT_ONE
#endif

/* Run the baseline loops (0) or let the CPU decide (1); returns whether v3 loops run. */
static int bn_half_choose(int decide)
{
#ifdef BN_HALF_DISPATCH
    bn_half_v3_use = decide ? -1 : 0;
    return bn_half_v3();
#else
    (void)decide;
    return 0;
#endif
}

/* Which half-precision loops run here (show_config). */
static const char *bn_half_loops(void)
{
#ifdef BN_HALF_DISPATCH
    return bn_half_v3() ? "x86-64-v3 (F16C)" : "baseline x86-64 (integer conversions)";
#elif defined(__F16C__)
    return "F16C (this build's target)";
#else
    return "portable (integer conversions)";
#endif
}

#undef BN_T
#undef BN_F32
#undef BN_LOWP
#undef BN_HALF
#undef BN_LD
#undef BN_LDF
#undef BN_STD
#undef BN_STF
#undef BN_POS
#undef BN_MASKED
#undef BN_VLOAD
#undef BN_TARGET
#define BN_TARGET BN_CLONES
#endif
