/* The exp and sigmoid the fused kernels vectorise (included by models/native/*.c; part of every library's build key). */
#ifndef LONGCTX_EXP_FAST_H
#define LONGCTX_EXP_FAST_H
#include <stdint.h>
#include <string.h>
#include <math.h>

/* exp(x) for x in [-87, 88] (clamped): Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, a degree-6
 * polynomial for exp(r) (relative error ~2e-7, as expf) and 2^k from the exponent bits. Plain arithmetic,
 * so that the loops calling it vectorise it. */
static inline float exp_fast(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float k = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - k * 0.693359375f + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);  /* 2^k; memcpy (not a union) is what the vectoriser can follow */
    return p * scale;
}

static inline float sigmoid(float x) { return 1.0f / (1.0f + exp_fast(-x)); }

#endif
