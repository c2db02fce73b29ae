/* Mamba's selective scan on CPU, fused: the state of one batch row stays in L1/L2 for the whole sequence
 * and every per-state operation (decay, drive, readout and their gradients) happens in one pass, where
 * the PyTorch scan (models/scan.py) makes ~20 passes per token over (B, N, D) tensors.
 * Built and loaded by models/native_scan.py (plain C, no PyTorch headers: it builds in about a second).
 *
 *   h_t   = exp(dl_t A) * h_{t-1} + dl_t B_t u_t            h: (N, D) per batch row, h_{-1} = h0
 *   y_t   = C_t . h_t + Dskip u_t,  then  y_t * silu(z_t)
 *
 * dl is the step size after Mamba's softplus(delta + bias), which the caller applies and differentiates
 * in PyTorch (one vectorised pass; a scalar softplus per (b, t, d) here cost more than the scan).
 * The state is kept (N, D), d innermost: every loop below runs over d, contiguous, so it vectorises
 * without horizontal sums and with many independent lanes in flight (an (D, N) state with the loops
 * over n = 16 was bound by the latency of one exp per 16 lanes, 4x slower).
 * Layouts: u, dl, z are (B, L, D) and B, C are (B, L, N) with unit stride on the last axis and any batch /
 * time strides (the Mamba mixer's transposed views are read in place); At is A transposed (N, D), Dskip
 * (D,), h0 and the last state (B, N, D), all contiguous. Outputs are contiguous.
 * The backward recomputes the states in chunks of Q tokens from the states entering each chunk, then walks
 * each chunk backwards (as the CUDA kernel and models/scan.py do); the gradients of A and Dskip come out
 * per batch row (the caller sums them), so batch rows can run on separate threads.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exp_fast.h"

#define Q 32 /* tokens per backward chunk: two (Q, N, D) buffers */

/* dims: B, L, D, N, has_D, has_z, has_h0; st: (batch, time) strides of u, dl, B, C, z;
 * in: u, dl, At, B, C, Dskip, z, h0 */
typedef struct {
    int64_t L, D, N;
    int has_D, has_z, has_h0;
    const int64_t *st;
    const float *const *in;
} Args;

static Args unpack(const int64_t *dims, const int64_t *st, const float *const *in) {
    Args a = {dims[1], dims[2], dims[3], (int)dims[4], (int)dims[5], (int)dims[6], st, in};
    return a;
}

#define U(b, t) (a->in[0] + (b) * a->st[0] + (t) * a->st[1])
#define DL(b, t) (a->in[1] + (b) * a->st[2] + (t) * a->st[3])
#define BM(b, t) (a->in[3] + (b) * a->st[4] + (t) * a->st[5])
#define CM(b, t) (a->in[4] + (b) * a->st[6] + (t) * a->st[7])
#define Z(b, t) (a->in[6] + (b) * a->st[8] + (t) * a->st[9])

/* One token of row b: h <- exp(dl A) h + dl B u; the decays go to dec (if not NULL) and the pre-gate
 * outputs C . h + Dskip u to s (if not NULL); du is a (D,) work row. */
static void advance(const Args *a, int64_t b, int64_t t, const float *restrict hprev, float *restrict h,
                    float *restrict dec, float *restrict s, float *restrict du) {
    const int64_t D = a->D, N = a->N;
    const float *restrict u = U(b, t), *restrict dl = DL(b, t), *restrict Bt = BM(b, t), *restrict Ct = CM(b, t);
    const float *restrict At = a->in[2], *restrict Dskip = a->in[5];
#pragma omp simd
    for (int64_t d = 0; d < D; d++) du[d] = dl[d] * u[d];
    if (s) {
#pragma omp simd
        for (int64_t d = 0; d < D; d++) s[d] = a->has_D ? Dskip[d] * u[d] : 0.0f;
    }
    for (int64_t n = 0; n < N; n++) {
        const float bn = Bt[n], cn = Ct[n];
        const float *restrict An = At + n * D, *restrict hp = hprev + n * D;
        float *restrict hn = h + n * D;
        if (dec) {
            float *restrict an = dec + n * D;
#pragma omp simd
            for (int64_t d = 0; d < D; d++) {
                an[d] = exp_fast(dl[d] * An[d]);
                hn[d] = an[d] * hp[d] + du[d] * bn;
            }
        } else {
#pragma omp simd
            for (int64_t d = 0; d < D; d++) hn[d] = exp_fast(dl[d] * An[d]) * hp[d] + du[d] * bn;
        }
        if (s) {
#pragma omp simd
            for (int64_t d = 0; d < D; d++) s[d] += cn * hn[d];
        }
    }
}

static void load_h0(const Args *a, int64_t b, float *h) {
    const int64_t DN = a->D * a->N;
    if (a->has_h0) memcpy(h, a->in[7] + b * DN, DN * sizeof(float));
    else memset(h, 0, DN * sizeof(float));
}

/* out: y (B, L, D), last (B, N, D). Rows b0 <= b < b1. Returns 0, or 1 if out of memory. */
int ss_forward(const int64_t *dims, const int64_t *st, const float *const *in, float *const *out,
               int64_t b0, int64_t b1) {
    const Args args = unpack(dims, st, in), *a = &args;
    const int64_t L = a->L, D = a->D, DN = a->D * a->N;
    float *h = malloc(2 * DN * sizeof(float)), *work = malloc(D * sizeof(float));
    if (!h || !work) { free(h); free(work); return 1; }
    for (int64_t b = b0; b < b1; b++) {
        float *cur = h, *nxt = h + DN;
        load_h0(a, b, cur);
        for (int64_t t = 0; t < L; t++) {
            float *restrict y = out[0] + (b * L + t) * D;
            advance(a, b, t, cur, nxt, NULL, y, work);
            if (a->has_z) {
                const float *restrict z = Z(b, t);
#pragma omp simd
                for (int64_t d = 0; d < D; d++) y[d] *= z[d] * sigmoid(z[d]);
            }
            float *tmp = cur; cur = nxt; nxt = tmp;
        }
        memcpy(out[1] + b * DN, cur, DN * sizeof(float));
    }
    free(h); free(work);
    return 0;
}

/* gy (B, L, D) contiguous; glast (B, N, D) or NULL.
 * out: du, ddl, dz (B, L, D); dB, dC (B, L, N); dAt (B, N, D) and dD (B, D) per row; dh0 (B, N, D).
 * Rows b0 <= b < b1. Returns 0, or 1 if out of memory. */
int ss_backward(const int64_t *dims, const int64_t *st, const float *const *in, const float *gy,
                const float *glast, float *const *out, int64_t b0, int64_t b1) {
    const Args args = unpack(dims, st, in), *a = &args;
    const int64_t L = a->L, D = a->D, N = a->N, DN = D * N, nc = (L + Q - 1) / Q;
    float *enter = malloc(nc * DN * sizeof(float)), *hs = malloc(Q * DN * sizeof(float)),
          *dec = malloc(Q * DN * sizeof(float)), *dh = malloc(DN * sizeof(float)),
          *ds = malloc(D * sizeof(float)), *work = malloc(D * sizeof(float));
    int status = 0;
    if (!enter || !hs || !dec || !dh || !ds || !work) { status = 1; goto done; }
    const float *restrict At = a->in[2], *restrict Dskip = a->in[5];
    for (int64_t b = b0; b < b1; b++) {
        load_h0(a, b, enter);  /* the state entering each chunk */
        for (int64_t c = 0; c + 1 < nc; c++) {
            const float *cur = enter + c * DN;
            for (int64_t t = c * Q; t < (c + 1) * Q; t++) {
                float *nxt = (t == (c + 1) * Q - 1) ? enter + (c + 1) * DN : hs + (t % 2) * DN;
                advance(a, b, t, cur, nxt, NULL, NULL, work);
                cur = nxt;
            }
        }
        if (glast) memcpy(dh, glast + b * DN, DN * sizeof(float));
        else memset(dh, 0, DN * sizeof(float));
        float *restrict dA = out[5] + b * DN, *restrict dD = out[6] + b * D;
        memset(dA, 0, DN * sizeof(float));
        memset(dD, 0, D * sizeof(float));
        for (int64_t c = nc - 1; c >= 0; c--) {
            const int64_t t0 = c * Q, t1 = (t0 + Q < L) ? t0 + Q : L;
            for (int64_t t = t0; t < t1; t++)  /* the chunk's states and decays */
                advance(a, b, t, t == t0 ? enter + c * DN : hs + (t - t0 - 1) * DN, hs + (t - t0) * DN,
                        dec + (t - t0) * DN, NULL, work);
            for (int64_t t = t1 - 1; t >= t0; t--) {
                const float *restrict hcur = hs + (t - t0) * DN;
                const float *restrict hprev = t == t0 ? enter + c * DN : hs + (t - t0 - 1) * DN;
                const float *restrict at = dec + (t - t0) * DN, *restrict u = U(b, t), *restrict dl = DL(b, t);
                const float *restrict Bt = BM(b, t), *restrict Ct = CM(b, t), *restrict g = gy + (b * L + t) * D;
                float *restrict gu = out[0] + (b * L + t) * D, *restrict gdl = out[1] + (b * L + t) * D;
                if (a->has_z) {  /* through the gate: the pre-gate output s = C . h + Dskip u is recomputed */
                    const float *restrict z = Z(b, t);
                    float *restrict dz = out[2] + (b * L + t) * D, *restrict s = work;
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) s[d] = a->has_D ? Dskip[d] * u[d] : 0.0f;
                    for (int64_t n = 0; n < N; n++) {
                        const float cn = Ct[n], *restrict hn = hcur + n * D;
#pragma omp simd
                        for (int64_t d = 0; d < D; d++) s[d] += cn * hn[d];
                    }
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) {
                        const float sg = sigmoid(z[d]);
                        dz[d] = g[d] * s[d] * sg * (1.0f + z[d] * (1.0f - sg));
                        ds[d] = g[d] * z[d] * sg;
                    }
                } else {
                    memcpy(ds, g, D * sizeof(float));
                }
#pragma omp simd
                for (int64_t d = 0; d < D; d++) {
                    gu[d] = a->has_D ? ds[d] * Dskip[d] : 0.0f;
                    gdl[d] = 0.0f;
                    if (a->has_D) dD[d] += ds[d] * u[d];
                }
                for (int64_t n = 0; n < N; n++) {
                    const float bn = Bt[n], cn = Ct[n];
                    const float *restrict hc = hcur + n * D, *restrict hp = hprev + n * D, *restrict an = at + n * D;
                    const float *restrict An = At + n * D;
                    float *restrict dhn = dh + n * D, *restrict dAn = dA + n * D;
                    float rowB = 0.0f, rowC = 0.0f;
#pragma omp simd reduction(+ : rowB, rowC)
                    for (int64_t d = 0; d < D; d++) {
                        const float gh = dhn[d] + ds[d] * cn;  /* dLoss / dh_t */
                        const float decayed = an[d] * hp[d];
                        rowC += ds[d] * hc[d];
                        gdl[d] += gh * (decayed * An[d] + bn * u[d]);
                        dAn[d] += gh * decayed * dl[d];
                        gu[d] += gh * dl[d] * bn;
                        rowB += gh * dl[d] * u[d];
                        dhn[d] = gh * an[d];
                    }
                    out[3][(b * L + t) * N + n] = rowB;
                    out[4][(b * L + t) * N + n] = rowC;
                }
            }
        }
        memcpy(out[7] + b * DN, dh, DN * sizeof(float));
    }
done:
    free(enter); free(hs); free(dec); free(dh); free(ds); free(work);
    return status;
}
