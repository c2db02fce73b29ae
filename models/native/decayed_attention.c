/* Decayed linear attention (GLA, RetNet's retention, Mamba-2's SSD) on CPU as one fused recurrence per
 * (batch, head): the K x V state stays in L1/L2 and each token costs a few passes over it, where the
 * chunked PyTorch form (models/linear_attention.py) builds decay masks and many small matmuls per chunk.
 * Built and loaded by models/native_scan.py (plain C, no PyTorch headers).
 *
 *   S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,        o_t = scale * q_t S_t        (row vectors)
 *
 * g is a log-decay per key channel (K values per token) or one per head (per_channel = 0).
 * Layouts: q, k (B, H, T, K), v (B, H, T, V) and g (B, H, T, K | 1) with unit stride on the last axis and
 * any batch / head / time strides; S0 and the final state (B, H, K, V) contiguous; outputs contiguous.
 * The backward recomputes the states in chunks of Q tokens from the state entering each chunk and walks
 * each chunk backwards. Every gradient is per (batch, head) row, so rows can run on separate threads.
 *
 * Two state layouts, the same math: K x V (``vk`` = 0) vectorises the loops over V, V x K (``vk`` = 1) over K.
 * The caller picks the longer axis: the backward's per-row dot products (3 per key row in K x V, 1 per value
 * row in V x K) are horizontal sums, latency-bound when the vector axis is one short register (Mamba-2:
 * K = d_state 64, V = headdim 16 ran 5x slower in K x V). S0 and the last state are in the layout used.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exp_fast.h"

#define Q 16 /* tokens per backward chunk: a (Q, K, V) buffer of states */
#define LANES 16 /* the key block of the V x K backward (vk_blocks) */

/* dims: B, H, T, K, V, per_channel, has_s0, vk; scale as a float; st: (b, h, t) strides of q, k, v, g;
 * in: q, k, v, g, S0 */
typedef struct {
    int64_t H, T, K, V;
    int per_channel, has_s0, vk;
    float scale;
    const int64_t *st;
    const float *const *in;
} Args;

#define ROW(i, b, h, t) (a->in[i] + (b) * a->st[3 * (i)] + (h) * a->st[3 * (i) + 1] + (t) * a->st[3 * (i) + 2])

static Args unpack(const int64_t *dims, float scale, const int64_t *st, const float *const *in) {
    Args a = {dims[1], dims[2], dims[3], dims[4], (int)dims[5], (int)dims[6], (int)dims[7], scale, st, in};
    return a;
}

/* The K decays exp(g_t) of one token (one per key channel, or the head's one repeated). */
static void decays(const Args *a, const float *restrict gt, float *restrict out) {
    if (a->per_channel) {
#pragma omp simd
        for (int64_t i = 0; i < a->K; i++) out[i] = exp_fast(gt[i]);
    } else {
        const float scalar = exp_fast(gt[0]);
        for (int64_t i = 0; i < a->K; i++) out[i] = scalar;
    }
}

/* S <- diag(exp(g_t)) S + k_t^T v_t (from Sprev into S, which may be the same buffer); the decays to dec
 * (K values) if not NULL. */
static void advance(const Args *a, int64_t b, int64_t h, int64_t t, const float *Sprev, float *S, float *dec,
                    float *decay) {
    const int64_t K = a->K, V = a->V;
    const float *restrict kt = ROW(1, b, h, t), *restrict vt = ROW(2, b, h, t);
    float *restrict ad = dec ? dec : decay;  /* K decays of this token */
    decays(a, ROW(3, b, h, t), ad);
    if (a->vk) {  /* S[j, i], i over K */
        for (int64_t j = 0; j < V; j++) {
            const float vj = vt[j], *sp = Sprev + j * K;
            float *s = S + j * K;
#pragma omp simd
            for (int64_t i = 0; i < K; i++) s[i] = ad[i] * sp[i] + kt[i] * vj;
        }
        return;
    }
    for (int64_t i = 0; i < K; i++) {
        const float ai = ad[i], ki = kt[i], *sp = Sprev + i * V;
        float *s = S + i * V;
#pragma omp simd
        for (int64_t j = 0; j < V; j++) s[j] = ai * sp[j] + ki * vt[j];
    }
}

/* The forward's token: advance (decays into ``decay``) and o_t = scale * q_t S_t in the same pass over the state. */
static void advance_read(const Args *a, int64_t b, int64_t h, int64_t t, float *restrict S, float *restrict decay,
                         float *restrict o) {
    const int64_t K = a->K, V = a->V;
    const float *restrict qt = ROW(0, b, h, t), *restrict kt = ROW(1, b, h, t), *restrict vt = ROW(2, b, h, t);
    decays(a, ROW(3, b, h, t), decay);
    if (a->vk) {  /* S[j, i]: one dot product over K per value row */
        for (int64_t j = 0; j < V; j++) {
            const float vj = vt[j];
            float *restrict s = S + j * K, acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int64_t i = 0; i < K; i++) {
                s[i] = decay[i] * s[i] + kt[i] * vj;
                acc += qt[i] * s[i];
            }
            o[j] = a->scale * acc;
        }
        return;
    }
    memset(o, 0, V * sizeof(float));
    for (int64_t i = 0; i < K; i++) {
        const float ai = decay[i], ki = kt[i], qi = a->scale * qt[i];
        float *restrict s = S + i * V;
#pragma omp simd
        for (int64_t j = 0; j < V; j++) {
            s[j] = ai * s[j] + ki * vt[j];
            o[j] += qi * s[j];
        }
    }
}

static void load_s0(const Args *a, int64_t b, int64_t h, float *S) {
    const int64_t KV = a->K * a->V;
    if (a->has_s0) memcpy(S, a->in[4] + (b * a->H + h) * KV, KV * sizeof(float));
    else memset(S, 0, KV * sizeof(float));
}

/* out: o (B, H, T, V), last state (B, H, K, V). Rows r0 <= r < r1, r = b * H + h. Returns 0, or 1 if out of
 * memory. */
int da_forward(const int64_t *dims, float scale, const int64_t *st, const float *const *in, float *const *out,
               int64_t r0, int64_t r1) {
    const Args args = unpack(dims, scale, st, in), *a = &args;
    const int64_t T = a->T, V = a->V, KV = a->K * a->V;
    float *S = malloc(KV * sizeof(float)), *decay = malloc(a->K * sizeof(float));
    if (!S || !decay) { free(S); free(decay); return 1; }
    for (int64_t r = r0; r < r1; r++) {
        const int64_t b = r / a->H, h = r % a->H;
        load_s0(a, b, h, S);
        for (int64_t t = 0; t < T; t++) {
            advance_read(a, b, h, t, S, decay, out[0] + (r * T + t) * V);
        }
        memcpy(out[1] + r * KV, S, KV * sizeof(float));
    }
    free(S); free(decay);
    return 0;
}

/* One token of the V x K backward (any K): per value row, one pass over the key axis, dv's dot product summed
 * there. acc: gq, gk, gg (K each); gvp unused (the signature is vk_blocks'). */
static void vk_rows(const Args *a, const float *restrict Scur, const float *restrict Sprev, const float *restrict at,
                    const float *restrict qt, const float *restrict kt, const float *restrict vt,
                    const float *restrict gout, float *restrict dS, float *restrict gvp, float *restrict acc,
                    float *restrict dv) {
    const int64_t K = a->K, V = a->V;
    float *restrict gq = acc, *restrict gk = acc + K, *restrict gg = acc + 2 * K;
    (void)gvp;
    memset(acc, 0, 3 * K * sizeof(float));
    for (int64_t j = 0; j < V; j++) {
        const float oj = gout[j], sj = a->scale * gout[j], vj = vt[j];
        const float *restrict s = Scur + j * K, *restrict sp = Sprev + j * K;
        float *restrict ds = dS + j * K;
        float gv = 0.0f;
#pragma omp simd reduction(+ : gv)
        for (int64_t i = 0; i < K; i++) {
            gq[i] += s[i] * oj;
            const float d = ds[i] + sj * qt[i];  /* dLoss / dS_t */
            gk[i] += d * vj;
            gv += d * kt[i];
            gg[i] += d * sp[i];
            ds[i] = d * at[i];  /* dLoss / dS_{t-1} through the decay */
        }
        dv[j] = gv;
    }
}

/* One token of the V x K backward, K a multiple of LANES: the same sums as vk_rows, with
 * the key axis cut into blocks of LANES so that the q, k and decay gradients of a block stay in registers over
 * the value rows (vk_rows loads and stores three K-vectors per row) and dv's dot products are summed
 * across lanes once per token (gvp: V x LANES partial sums). acc: gq, gk, gg (K each). */
static void vk_blocks(const Args *a, const float *restrict Scur, const float *restrict Sprev, const float *restrict at,
                      const float *restrict qt, const float *restrict kt, const float *restrict vt,
                      const float *restrict gout, float *restrict dS, float *restrict gvp, float *restrict acc,
                      float *restrict dv) {
    const int64_t K = a->K, V = a->V;
    memset(gvp, 0, V * LANES * sizeof(float));
    for (int64_t i0 = 0; i0 < K; i0 += LANES) {
        float gq[LANES] = {0}, gk[LANES] = {0}, gg[LANES] = {0};
        for (int64_t j = 0; j < V; j++) {
            const float oj = gout[j], sj = a->scale * gout[j], vj = vt[j];
            const float *restrict s = Scur + j * K + i0, *restrict sp = Sprev + j * K + i0;
            float *restrict ds = dS + j * K + i0, *restrict gv = gvp + j * LANES;
#pragma omp simd
            for (int l = 0; l < LANES; l++) {
                gq[l] += s[l] * oj;
                const float d = ds[l] + sj * qt[i0 + l];  /* dLoss / dS_t */
                gk[l] += d * vj;
                gv[l] += d * kt[i0 + l];
                gg[l] += d * sp[l];
                ds[l] = d * at[i0 + l];  /* dLoss / dS_{t-1} through the decay */
            }
        }
        memcpy(acc + i0, gq, sizeof gq);
        memcpy(acc + K + i0, gk, sizeof gk);
        memcpy(acc + 2 * K + i0, gg, sizeof gg);
    }
    for (int64_t j = 0; j < V; j++) {
        float sum = 0.0f;
        for (int l = 0; l < LANES; l++) sum += gvp[j * LANES + l];
        dv[j] = sum;
    }
}

/* go (B, H, T, V) contiguous; glast (B, H, K, V) or NULL.
 * out: dq, dk (B, H, T, K), dv (B, H, T, V), dg (B, H, T, K | 1), dS0 (B, H, K, V). Returns 0, or 1 if out of
 * memory. */
int da_backward(const int64_t *dims, float scale, const int64_t *st, const float *const *in, const float *go,
                const float *glast, float *const *out, int64_t r0, int64_t r1) {
    const Args args = unpack(dims, scale, st, in), *a = &args;
    const int64_t T = a->T, K = a->K, V = a->V, KV = K * V, nc = (T + Q - 1) / Q, G = a->per_channel ? K : 1;
    float *enter = malloc(nc * KV * sizeof(float)), *hs = malloc(Q * KV * sizeof(float)),
          *dec = malloc(Q * K * sizeof(float)), *dS = malloc(KV * sizeof(float)),
          *acc = malloc(3 * K * sizeof(float)), *gvp = malloc(V * LANES * sizeof(float));
    int status = 0;
    if (!enter || !hs || !dec || !dS || !acc || !gvp) { status = 1; goto done; }
    for (int64_t r = r0; r < r1; r++) {
        const int64_t b = r / a->H, h = r % a->H;
        load_s0(a, b, h, enter);  /* the state entering each chunk */
        for (int64_t c = 0; c + 1 < nc; c++) {
            memcpy(enter + (c + 1) * KV, enter + c * KV, KV * sizeof(float));
            for (int64_t t = c * Q; t < (c + 1) * Q; t++)
                advance(a, b, h, t, enter + (c + 1) * KV, enter + (c + 1) * KV, NULL, dec);
        }
        if (glast) memcpy(dS, glast + r * KV, KV * sizeof(float));
        else memset(dS, 0, KV * sizeof(float));
        for (int64_t c = nc - 1; c >= 0; c--) {
            const int64_t t0 = c * Q, t1 = (t0 + Q < T) ? t0 + Q : T;
            for (int64_t t = t0; t < t1; t++)  /* the chunk's states and decays */
                advance(a, b, h, t, t == t0 ? enter + c * KV : hs + (t - t0 - 1) * KV, hs + (t - t0) * KV,
                        dec + (t - t0) * K, NULL);
            for (int64_t t = t1 - 1; t >= t0; t--) {
                const float *restrict Scur = hs + (t - t0) * KV, *restrict Sprev = t == t0 ? enter + c * KV : hs + (t - t0 - 1) * KV;
                const float *restrict at = dec + (t - t0) * K, *restrict qt = ROW(0, b, h, t), *restrict kt = ROW(1, b, h, t);
                const float *restrict vt = ROW(2, b, h, t), *restrict gout = go + (r * T + t) * V;
                float *restrict dq = out[0] + (r * T + t) * K, *restrict dk = out[1] + (r * T + t) * K;
                float *restrict dv = out[2] + (r * T + t) * V, *restrict dg = out[3] + (r * T + t) * G;
                if (a->vk) {  /* S[j, i]: vectors over K, one dot product per value row */
                    float *restrict gq = acc, *restrict gk = acc + K, *restrict gg = acc + 2 * K;
                    (K % LANES == 0 ? vk_blocks : vk_rows)(a, Scur, Sprev, at, qt, kt, vt, gout, dS, gvp, acc, dv);
                    float gsum = 0.0f;
                    for (int64_t i = 0; i < K; i++) {
                        dq[i] = a->scale * gq[i];
                        dk[i] = gk[i];
                        if (a->per_channel) dg[i] = at[i] * gg[i];
                        else gsum += at[i] * gg[i];
                    }
                    if (!a->per_channel) dg[0] = gsum;
                    continue;
                }
                memset(dv, 0, V * sizeof(float));
                if (!a->per_channel) dg[0] = 0.0f;
                for (int64_t i = 0; i < K; i++) {
                    const float qi = a->scale * qt[i], ki = kt[i], ai = at[i];
                    const float *restrict s = Scur + i * V, *restrict sp = Sprev + i * V;
                    float *restrict ds = dS + i * V;
                    float gq = 0.0f, gk = 0.0f, gg = 0.0f;
#pragma omp simd reduction(+ : gq, gk, gg)
                    for (int64_t j = 0; j < V; j++) {
                        gq += s[j] * gout[j];
                        const float d = ds[j] + qi * gout[j];  /* dLoss / dS_t */
                        gk += d * vt[j];
                        dv[j] += d * ki;
                        gg += d * sp[j];
                        ds[j] = d * ai;  /* dLoss / dS_{t-1} through the decay */
                    }
                    dq[i] = a->scale * gq;
                    dk[i] = gk;
                    if (a->per_channel) dg[i] = ai * gg;
                    else dg[0] += ai * gg;
                }
            }
        }
        memcpy(out[4] + r * KV, dS, KV * sizeof(float));
    }
done:
    free(enter); free(hs); free(dec); free(dS); free(acc); free(gvp);
    return status;
}
