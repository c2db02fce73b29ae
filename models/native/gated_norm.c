/* The gated RMSNorm of Mamba-2 and Gated DeltaNet on CPU, forward and backward in one pass each over a batch row,
 * where the PyTorch form is ~8 elementwise passes forward and ~15 backward over (B, T, channels) tensors.
 * Per row of C channels (a group of Mamba-2's d_inner, a head of Gated DeltaNet's values), s(z) = silu(z):
 *
 *   gate_first (Mamba-2, norm_before_gate=False):  u = y s(z),  out = u r w,       r = 1 / sqrt(mean(u^2) + eps)
 *   norm_first (fla's FusedRMSNormGated):          out = y r w s(z),               r = 1 / sqrt(mean(y^2) + eps)
 *
 * Backward (the normalised input x = u or y, g = the gradient reaching x r):
 *   dx = r g - x r^3 mean(x g),  dw = sum over rows of (x r) * (what multiplies w), and through s(z):
 *   s'(z) = sigma(z) (1 + z (1 - sigma(z))).
 * Built and loaded by models/native_build.py (plain C, no PyTorch headers).
 *
 * Layouts: y and z (B, T, G, C) with unit stride on C, groups adjacent (stride C) and any batch / time strides;
 * w (G C); out, dy, dz contiguous (B, T, G, C); dw per batch row (B, G C), summed by the caller; rstd (B, T, G),
 * saved by the forward for the backward.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "exp_fast.h"

/* dims: T, G, C, gate_first; st: y's (batch, time) strides, z's (batch, time) strides; eps as float */
typedef struct {
    int64_t T, G, C;
    int gate_first;
    const int64_t *st;
    float eps;
} Args;

static Args unpack(const int64_t *dims, const int64_t *st, const float *eps) {
    Args a = {dims[0], dims[1], dims[2], (int)dims[3], st, *eps};
    return a;
}

static inline float silu_of(float z) { return z * sigmoid(z); }

/* Row (b, t, g): its y, z and weight and its index in the contiguous (B, T, G) rows. */
typedef struct {
    const float *y, *z, *w;
    int64_t row;
} Row;

static Row row_at(const Args *a, const float *y, const float *z, const float *w, int64_t b, int64_t t, int64_t g) {
    Row r = {y + b * a->st[0] + t * a->st[1] + g * a->C, z + b * a->st[2] + t * a->st[3] + g * a->C, w + g * a->C,
             (b * a->T + t) * a->G + g};
    return r;
}

int gn_forward(const int64_t *dims, const int64_t *st, const float *eps, const float *y, const float *z,
               const float *w, float *out, float *rstd, int64_t b0, int64_t b1) {
    const Args a = unpack(dims, st, eps);
    const int64_t C = a.C;
    for (int64_t b = b0; b < b1; b++)
        for (int64_t t = 0; t < a.T; t++)
            for (int64_t g = 0; g < a.G; g++) {
                const Row at = row_at(&a, y, z, w, b, t, g);
                const float *restrict yr = at.y, *restrict zr = at.z, *restrict wr = at.w;
                const int64_t row = at.row;
                float *restrict o = out + row * C;
                float ss = 0.0f;
                if (a.gate_first) {
#pragma omp simd reduction(+ : ss)
                    for (int64_t c = 0; c < C; c++) {
                        o[c] = yr[c] * silu_of(zr[c]);  /* u, scaled below */
                        ss += o[c] * o[c];
                    }
                    const float r = 1.0f / sqrtf(ss / (float)C + a.eps);
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) o[c] *= r * wr[c];
                    rstd[row] = r;
                } else {
#pragma omp simd reduction(+ : ss)
                    for (int64_t c = 0; c < C; c++) ss += yr[c] * yr[c];
                    const float r = 1.0f / sqrtf(ss / (float)C + a.eps);
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) o[c] = yr[c] * r * wr[c] * silu_of(zr[c]);
                    rstd[row] = r;
                }
            }
    return 0;
}

int gn_backward(const int64_t *dims, const int64_t *st, const float *eps, const float *y, const float *z,
                const float *w, const float *rstd, const float *gout, float *dy, float *dz, float *dw,
                int64_t b0, int64_t b1) {
    const Args a = unpack(dims, st, eps);
    const int64_t C = a.C;
    for (int64_t b = b0; b < b1; b++) {
        float *restrict dwb = dw + b * a.G * C;
        memset(dwb, 0, (size_t)(a.G * C) * sizeof(float));
        for (int64_t t = 0; t < a.T; t++)
            for (int64_t g = 0; g < a.G; g++) {
                const Row at = row_at(&a, y, z, w, b, t, g);
                const float *restrict yr = at.y, *restrict zr = at.z, *restrict wr = at.w;
                const int64_t row = at.row;
                const float *restrict go = gout + row * C;
                float *restrict dyr = dy + row * C, *restrict dzr = dz + row * C, *restrict dwr = dwb + g * C;
                const float r = rstd[row];
                float dot = 0.0f;  /* sum over c of x g, with x the normalised input and g = d(x r) */
                if (a.gate_first) {
#pragma omp simd reduction(+ : dot)
                    for (int64_t c = 0; c < C; c++) {
                        const float u = yr[c] * silu_of(zr[c]);
                        const float gx = go[c] * wr[c];
                        dwr[c] += go[c] * u * r;
                        dot += u * gx;
                    }
                    const float k = r * r * r * dot / (float)C;
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) {
                        const float sg = sigmoid(zr[c]), s = zr[c] * sg;
                        const float du = r * go[c] * wr[c] - yr[c] * s * k;
                        dyr[c] = du * s;
                        dzr[c] = du * yr[c] * sg * (1.0f + zr[c] * (1.0f - sg));
                    }
                } else {
#pragma omp simd reduction(+ : dot)
                    for (int64_t c = 0; c < C; c++) {
                        const float sg = sigmoid(zr[c]), s = zr[c] * sg;
                        const float gx = go[c] * wr[c] * s;
                        dwr[c] += go[c] * yr[c] * r * s;
                        dot += yr[c] * gx;
                        dzr[c] = go[c] * yr[c] * r * wr[c] * sg * (1.0f + zr[c] * (1.0f - sg));
                    }
                    const float k = r * r * r * dot / (float)C;
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) {
                        const float s = silu_of(zr[c]);
                        dyr[c] = r * go[c] * wr[c] * s - yr[c] * k;
                    }
                }
            }
    }
    return 0;
}
