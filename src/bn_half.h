/* Half-precision storage for the kernels: float16 (IEEE binary16) and bfloat16.
 *
 * The kernels never compute in half precision.  A value is widened to float32 when it is
 * loaded (exactly: every float16 and bfloat16 is a float32) and a float32 result is rounded
 * once, to nearest with ties to even, when it is stored.  Three ways to do it, one result:
 *  - F16C (every x86-64 CPU with AVX2): vcvtph2ps / vcvtps2ph on 4 or 8 values at once;
 *  - elsewhere, integer arithmetic on the bits, written on GCC vector types where the
 *    compiler has them so that it runs on the vector unit too (SSE2, NEON), else scalar;
 *  - bfloat16 is the top half of a float32: a shift to widen, a rounding add to narrow.
 * NaN stays NaN (float16 keeps the payload's top bits with the quiet bit set, as F16C does;
 * bfloat16 becomes the quiet NaN of its sign), infinities stay infinite, values beyond the
 * largest finite half round to infinity, and tiny ones to subnormals or zero, as IEEE 754
 * rounding to nearest gives them.  tests/test_half.py checks every float16 and a sweep of
 * float32 values against NumPy's and ml_dtypes' conversions.  The F16C versions are in
 * bn_half_inst.h, where the loops that use them are compiled.
 */
#ifndef BN_HALF_H
#define BN_HALF_H

#include <stdint.h>
#include <string.h>

/* Distinct types for the two formats, so that a float16 array is never read as bfloat16. */
typedef struct { uint16_t bits; } bn_f16;
typedef struct { uint16_t bits; } bn_bf16;

static inline float bn_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t bn_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* ---- Scalar conversions -------------------------------------------------------------------- */

/* float16 -> float32, exact.  Normal numbers, infinities and NaN: the 10-bit fraction moves
 * up 13 bits and the exponent is rebiased by 127 - 15 = 112 (by 112 more for exponent 31,
 * which must become 255; a NaN gets the quiet bit, as F16C gives it).  Subnormals and zero: fraction * 2^-24, computed exactly as
 * (2^-14 + fraction * 2^-24) - 2^-14. */
static inline float bn_f16_to_f32_bits(uint16_t h)
{
    const uint32_t em = h & 0x7fffu, sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t u = (em << 13) + (112u << 23);
    if (em >= 0x7c00u)
        u += 112u << 23;
    if (em > 0x7c00u)
        u |= 0x400000u;
    float f = bn_bits_f32(u);
    if (em < 0x0400u)
        f = bn_bits_f32((em << 13) + (113u << 23)) - 6.103515625e-05f; /* 2^-14 */
    return bn_bits_f32(bn_f32_bits(f) | sign);
}

/* float32 -> float16, rounded to nearest, ties to even.  |f| >= 65520 (halfway between the
 * largest half, 65504, and 2^16) rounds to infinity.  Below 2^-14 the result is subnormal:
 * adding 0.5 puts |f| on a grid of 2^-24 (the float32 spacing in [0.5, 1)), so the float
 * addition itself rounds to the subnormal spacing, ties to even, and the low bits of the sum
 * are the half's.  Otherwise the exponent is rebiased and 2^12 - 1 plus the kept fraction's
 * lowest bit are added before 13 bits are dropped: round to nearest, ties to even, with a
 * carry into the exponent where the fraction overflows. */
static inline uint16_t bn_f32_to_f16_bits(float f)
{
    const uint32_t u = bn_f32_bits(f), a = u & 0x7fffffffu;
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t h;
    if (a > 0x7f800000u)
        h = 0x7e00u | ((a >> 13) & 0x3ffu);
    else if (a >= 0x477ff000u)
        h = 0x7c00u;
    else if (a < 0x38800000u)
        h = bn_f32_bits(bn_bits_f32(a) + 0.5f) - 0x3f000000u;
    else
        h = (a - (112u << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
    return (uint16_t)(h | sign);
}

static inline float bn_bf16_to_f32_bits(uint16_t b) { return bn_bits_f32((uint32_t)b << 16); }

/* float32 -> bfloat16, rounded to nearest, ties to even (a carry out of the fraction goes into
 * the exponent; past the largest finite bfloat16 that gives infinity). */
static inline uint16_t bn_f32_to_bf16_bits(float f)
{
    const uint32_t u = bn_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)(((u >> 16) & 0x8000u) | 0x7fc0u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline float bn_bf16_to_f32(bn_bf16 b) { return bn_bf16_to_f32_bits(b.bits); }
static inline bn_bf16 bn_f32_to_bf16(float f)
{
    bn_bf16 b = {bn_f32_to_bf16_bits(f)};
    return b;
}

/* ---- Eight at a time ----------------------------------------------------------------------- */

#if defined(__GNUC__) || defined(__clang__)
#define BN_HALF_VECTORS 1
#if defined(__GNUC__) && !defined(__clang__)
/* 32-byte vectors passed between static inline functions: no ABI is crossed. */
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef float bn_vf8 __attribute__((vector_size(32)));
typedef int32_t bn_vi8 __attribute__((vector_size(32)));
typedef uint32_t bn_vu8 __attribute__((vector_size(32)));
typedef uint16_t bn_vh8 __attribute__((vector_size(16)));

#define BN_VU8(s) ((bn_vu8){(s), (s), (s), (s), (s), (s), (s), (s)})

static inline bn_vf8 bn_vu8_as_f32(bn_vu8 u)
{
    bn_vf8 f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline bn_vu8 bn_vf8_bits(bn_vf8 f)
{
    bn_vu8 u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Eight floats from memory (unaligned). */
static inline bn_vf8 bn_vf8_loadu(const float *p)
{
    bn_vf8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Lane select: m is all ones or all zeros per lane. */
static inline bn_vu8 bn_vsel(bn_vi8 m, bn_vu8 a, bn_vu8 b)
{
    return ((bn_vu8)m & a) | (~(bn_vu8)m & b);
}

static inline bn_vf8 bn_load8_bf16(const bn_bf16 *p)
{
    bn_vh8 h;
    memcpy(&h, p, sizeof h);
    return bn_vu8_as_f32(__builtin_convertvector(h, bn_vu8) << 16);
}

static inline void bn_store8_bf16(bn_bf16 *p, bn_vf8 f)
{
    const bn_vu8 u = bn_vf8_bits(f);
    const bn_vi8 nan = (bn_vi8)((u & BN_VU8(0x7fffffffu)) > BN_VU8(0x7f800000u));
    const bn_vu8 r = (u + BN_VU8(0x7fffu) + ((u >> 16) & BN_VU8(1u))) >> 16;
    const bn_vu8 q = ((u >> 16) & BN_VU8(0x8000u)) | BN_VU8(0x7fc0u);
    const bn_vh8 h = __builtin_convertvector(bn_vsel(nan, q, r), bn_vh8);
    memcpy(p, &h, sizeof h);
}

/* The scalar conversions above, lane by lane on integer vectors. */
static inline bn_vf8 bn_load8_f16(const bn_f16 *p)
{
    bn_vh8 h;
    memcpy(&h, p, sizeof h);
    const bn_vu8 x = __builtin_convertvector(h, bn_vu8);
    const bn_vu8 em = x & BN_VU8(0x7fffu), sign = (x & BN_VU8(0x8000u)) << 16;
    bn_vu8 u = (em << 13) + BN_VU8(112u << 23);
    u = bn_vsel((bn_vi8)(em >= BN_VU8(0x7c00u)), u + BN_VU8(112u << 23), u);
    u = bn_vsel((bn_vi8)(em > BN_VU8(0x7c00u)), u | BN_VU8(0x400000u), u);
    const bn_vf8 sub = bn_vu8_as_f32((em << 13) + BN_VU8(113u << 23))
                       - (bn_vf8){6.103515625e-05f, 6.103515625e-05f, 6.103515625e-05f,
                                  6.103515625e-05f, 6.103515625e-05f, 6.103515625e-05f,
                                  6.103515625e-05f, 6.103515625e-05f};
    u = bn_vsel((bn_vi8)(em < BN_VU8(0x0400u)), bn_vf8_bits(sub), u);
    return bn_vu8_as_f32(u | sign);
}

static inline void bn_store8_f16(bn_f16 *p, bn_vf8 f)
{
    const bn_vu8 u = bn_vf8_bits(f), a = u & BN_VU8(0x7fffffffu);
    const bn_vu8 sign = (u >> 16) & BN_VU8(0x8000u);
    const bn_vf8 half = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
    const bn_vu8 sub = bn_vf8_bits(bn_vu8_as_f32(a) + half) - BN_VU8(0x3f000000u);
    const bn_vu8 norm = (a - BN_VU8(112u << 23) + BN_VU8(0xfffu) + ((a >> 13) & BN_VU8(1u)))
                        >> 13;
    bn_vu8 h = bn_vsel((bn_vi8)(a < BN_VU8(0x38800000u)), sub, norm);
    h = bn_vsel((bn_vi8)(a >= BN_VU8(0x477ff000u)), BN_VU8(0x7c00u), h);
    h = bn_vsel((bn_vi8)(a > BN_VU8(0x7f800000u)),
                BN_VU8(0x7e00u) | ((a >> 13) & BN_VU8(0x3ffu)), h);
    const bn_vh8 out = __builtin_convertvector(h | sign, bn_vh8);
    memcpy(p, &out, sizeof out);
}
#endif /* vector types */

#endif
