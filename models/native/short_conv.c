/* The short convolution of Mamba, Mamba-2, Gated DeltaNet, GLA and retention on CPU, fused with its SiLU: forward and backward
 * in one pass each over a batch row, where the PyTorch form (models/short_conv.py) is W shifted multiply-adds
 * and a SiLU whose backward, with the slices' gradients, makes ~15 passes over (B, T, D).
 * Built and loaded by models/native_build.py (plain C, no PyTorch headers).
 *
 *   pre_t = bias + sum_i w_i * ctx_{t+i},   y_t = silu(pre_t) = pre_t * sigmoid(pre_t)      (per channel d)
 *
 * where ctx is the W-1 inputs before x (``left``, zeros when absent) followed by x, so ctx_{t+W-1} = x_t.
 * Layouts: x (B, T, D) with unit stride on D and any batch / time strides; left (B, W-1, D), taps (W, D),
 * bias (D), y and every gradient contiguous. The gradients of the taps and bias come out per batch row
 * (B, W + 1, D) and the caller sums them, so batch rows can run on separate threads.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exp_fast.h"

/* dims: B, T, D, W, has_left, has_bias; st: x's (batch, time) strides; in: x, left, taps, bias */
typedef struct {
    int64_t T, D, W;
    int has_left, has_bias;
    const int64_t *st;
    const float *const *in;
} Args;

static Args unpack(const int64_t *dims, const int64_t *st, const float *const *in) {
    Args a = {dims[1], dims[2], dims[3], (int)dims[4], (int)dims[5], st, in};
    return a;
}

/* Row c of batch row b's context: a left input (c < W-1; NULL for a zero) or x_{c-W+1}. */
static const float *context(const Args *a, int64_t b, int64_t c) {
    const int64_t W = a->W;
    if (c >= W - 1) return a->in[0] + b * a->st[0] + (c - (W - 1)) * a->st[1];
    return a->has_left ? a->in[1] + (b * (W - 1) + c) * a->D : NULL;
}

/* pre_t (D values) into out. */
static void preactivation(const Args *a, int64_t b, int64_t t, float *restrict out) {
    const int64_t D = a->D;
    const float *restrict bias = a->in[3];
    if (a->has_bias) memcpy(out, bias, D * sizeof(float));
    else memset(out, 0, D * sizeof(float));
    for (int64_t i = 0; i < a->W; i++) {
        const float *restrict row = context(a, b, t + i), *restrict w = a->in[2] + i * D;
        if (!row) continue;
#pragma omp simd
        for (int64_t d = 0; d < D; d++) out[d] += w[d] * row[d];
    }
}

/* out: y (B, T, D). Rows r0 <= b < r1. Returns 0. */
int sc_forward(const int64_t *dims, const int64_t *st, const float *const *in, float *y, int64_t r0, int64_t r1) {
    const Args args = unpack(dims, st, in), *a = &args;
    const int64_t T = a->T, D = a->D;
    for (int64_t b = r0; b < r1; b++)
        for (int64_t t = 0; t < T; t++) {
            float *restrict yt = y + (b * T + t) * D;
            preactivation(a, b, t, yt);
#pragma omp simd
            for (int64_t d = 0; d < D; d++) yt[d] *= sigmoid(yt[d]);
        }
    return 0;
}

/* gy (B, T, D) contiguous. out: gx (B, T, D), gleft (B, W-1, D) (written if has_left), gparams (B, W + 1, D):
 * per batch row the gradients of the W taps then of the bias. Returns 0, or 1 if out of memory. */
int sc_backward(const int64_t *dims, const int64_t *st, const float *const *in, const float *gy, float *const *out,
                int64_t r0, int64_t r1) {
    const Args args = unpack(dims, st, in), *a = &args;
    const int64_t T = a->T, D = a->D, W = a->W;
    float *gpre = malloc(T * D * sizeof(float));  /* dLoss / dpre_t of the row */
    if (!gpre) return 1;
    for (int64_t b = r0; b < r1; b++) {
        float *restrict gw = out[2] + b * (W + 1) * D, *restrict gb = gw + W * D;
        memset(gw, 0, (W + 1) * D * sizeof(float));
        for (int64_t t = 0; t < T; t++) {
            float *restrict g = gpre + t * D;
            const float *restrict gyt = gy + (b * T + t) * D;
            preactivation(a, b, t, g);
#pragma omp simd
            for (int64_t d = 0; d < D; d++) {  /* silu'(p) = s (1 + p (1 - s)) */
                const float p = g[d], s = sigmoid(p);
                g[d] = gyt[d] * s * (1.0f + p * (1.0f - s));
                gb[d] += g[d];
            }
            for (int64_t i = 0; i < W; i++) {
                const float *restrict row = context(a, b, t + i);
                float *restrict gwi = gw + i * D;
                if (!row) continue;
#pragma omp simd
                for (int64_t d = 0; d < D; d++) gwi[d] += g[d] * row[d];
            }
        }
        /* ctx_c's gradient: sum over taps i of w_i * gpre_{c-i}, for 0 <= c - i < T */
        for (int64_t c = (a->has_left ? 0 : W - 1); c < T + W - 1; c++) {
            float *restrict gc = c >= W - 1 ? out[0] + (b * T + c - (W - 1)) * D : out[1] + (b * (W - 1) + c) * D;
            memset(gc, 0, D * sizeof(float));
            for (int64_t i = 0; i < W; i++) {
                if (c - i < 0 || c - i >= T) continue;
                const float *restrict w = a->in[2] + i * D, *restrict g = gpre + (c - i) * D;
#pragma omp simd
                for (int64_t d = 0; d < D; d++) gc[d] += w[d] * g[d];
            }
        }
    }
    free(gpre);
    return 0;
}
