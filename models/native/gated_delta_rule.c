/* The gated delta rule (Gated DeltaNet) on CPU as one fused recurrence per (batch, head): the K x V state
 * stays in cache, each token costs a few passes over it, where the chunked WY form (models/delta_rule.py)
 * runs triangular solves and many small matmuls per chunk. Built and loaded by models/native_build.py.
 *
 * Per token, fla's order (row vectors, q already multiplied by scale inside):
 *   Sa = exp(g_t) S_{t-1};   w = v_t - k_t Sa;   u = beta_t w;   S_t = Sa + k_t^T u;   o_t = scale q_t S_t
 *
 * Layouts: q, k (B, H, T, K), v (B, H, T, V) with unit stride on the last axis, g and beta (B, H, T), all with
 * any batch / head / time strides; S0 and the last state (B, H, K, V) contiguous; outputs contiguous. The
 * loops run over V (the state's rows are K): Gated DeltaNet's V = 2K. The backward recomputes the states in
 * chunks of Q tokens from the state entering each chunk (keeping each token's w), then walks each chunk
 * backwards; every gradient is per (batch, head) row, so rows can run on separate threads.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define Q 16 /* tokens per backward chunk: a (Q, K, V) buffer of states */

/* dims: B, H, T, K, V, has_s0; st: (b, h, t) strides of q, k, v, g, beta; in: q, k, v, g, beta, S0 */
typedef struct {
    int64_t H, T, K, V;
    int has_s0;
    float scale;
    const int64_t *st;
    const float *const *in;
} Args;

#define PTR(i, b, h, t) (a->in[i] + (b) * a->st[3 * (i)] + (h) * a->st[3 * (i) + 1] + (t) * a->st[3 * (i) + 2])

static Args unpack(const int64_t *dims, float scale, const int64_t *st, const float *const *in) {
    Args a = {dims[1], dims[2], dims[3], dims[4], (int)dims[5], scale, st, in};
    return a;
}

/* One token from P into S (may be the same buffer); w (V,) receives v - k Sa; o (V,) the output if not NULL. */
static void advance(const Args *a, int64_t b, int64_t h, int64_t t, const float *P, float *S, float *restrict w,
                    float *restrict o) {
    const int64_t K = a->K, V = a->V;
    const float *restrict kt = PTR(1, b, h, t), *restrict vt = PTR(2, b, h, t);
    const float decay = expf(*PTR(3, b, h, t)), beta = *PTR(4, b, h, t);
    memset(w, 0, V * sizeof(float));
    for (int64_t i = 0; i < K; i++) {
        const float ki = kt[i], *p = P + i * V;
#pragma omp simd
        for (int64_t j = 0; j < V; j++) w[j] += ki * p[j];
    }
#pragma omp simd
    for (int64_t j = 0; j < V; j++) w[j] = vt[j] - decay * w[j];
    const float *restrict qt = o ? PTR(0, b, h, t) : NULL;
    if (o) memset(o, 0, V * sizeof(float));
    for (int64_t i = 0; i < K; i++) {
        const float ki = beta * kt[i], *p = P + i * V;
        float *s = S + i * V;
#pragma omp simd
        for (int64_t j = 0; j < V; j++) s[j] = decay * p[j] + ki * w[j];
        if (o) {
            const float qi = a->scale * qt[i];
#pragma omp simd
            for (int64_t j = 0; j < V; j++) o[j] += qi * s[j];
        }
    }
}

static void load_s0(const Args *a, int64_t r, float *S) {
    const int64_t KV = a->K * a->V;
    if (a->has_s0) memcpy(S, a->in[5] + r * KV, KV * sizeof(float));
    else memset(S, 0, KV * sizeof(float));
}

/* out: o (B, H, T, V), last state (B, H, K, V). Rows r0 <= r < r1, r = b * H + h. Returns 0, or 1 if out of
 * memory. */
int gdr_forward(const int64_t *dims, float scale, const int64_t *st, const float *const *in, float *const *out,
                int64_t r0, int64_t r1) {
    const Args args = unpack(dims, scale, st, in), *a = &args;
    const int64_t T = a->T, V = a->V, KV = a->K * a->V;
    float *S = malloc(KV * sizeof(float)), *w = malloc(V * sizeof(float));
    if (!S || !w) { free(S); free(w); return 1; }
    for (int64_t r = r0; r < r1; r++) {
        const int64_t b = r / a->H, h = r % a->H;
        load_s0(a, r, S);
        for (int64_t t = 0; t < T; t++) advance(a, b, h, t, S, S, w, out[0] + (r * T + t) * V);
        memcpy(out[1] + r * KV, S, KV * sizeof(float));
    }
    free(S); free(w);
    return 0;
}

/* go (B, H, T, V) contiguous; glast (B, H, K, V) or NULL.
 * out: dq, dk (B, H, T, K), dv (B, H, T, V), dg, dbeta (B, H, T), dS0 (B, H, K, V). Returns 0, or 1 if out of
 * memory. */
int gdr_backward(const int64_t *dims, float scale, const int64_t *st, const float *const *in, const float *go,
                 const float *glast, float *const *out, int64_t r0, int64_t r1) {
    const Args args = unpack(dims, scale, st, in), *a = &args;
    const int64_t T = a->T, K = a->K, V = a->V, KV = K * V, nc = (T + Q - 1) / Q;
    float *enter = malloc(nc * KV * sizeof(float)), *hs = malloc(Q * KV * sizeof(float)),
          *ws = malloc(Q * V * sizeof(float)), *dS = malloc(KV * sizeof(float)), *du = malloc(V * sizeof(float));
    int status = 0;
    if (!enter || !hs || !ws || !dS || !du) { status = 1; goto done; }
    for (int64_t r = r0; r < r1; r++) {
        const int64_t b = r / a->H, h = r % a->H;
        load_s0(a, r, enter);  /* the state entering each chunk */
        for (int64_t c = 0; c + 1 < nc; c++) {
            memcpy(enter + (c + 1) * KV, enter + c * KV, KV * sizeof(float));
            for (int64_t t = c * Q; t < (c + 1) * Q; t++)
                advance(a, b, h, t, enter + (c + 1) * KV, enter + (c + 1) * KV, ws, NULL);
        }
        if (glast) memcpy(dS, glast + r * KV, KV * sizeof(float));
        else memset(dS, 0, KV * sizeof(float));
        for (int64_t c = nc - 1; c >= 0; c--) {
            const int64_t t0 = c * Q, t1 = (t0 + Q < T) ? t0 + Q : T;
            for (int64_t t = t0; t < t1; t++)  /* the chunk's states and each token's w */
                advance(a, b, h, t, t == t0 ? enter + c * KV : hs + (t - t0 - 1) * KV, hs + (t - t0) * KV,
                        ws + (t - t0) * V, NULL);
            for (int64_t t = t1 - 1; t >= t0; t--) {
                const float *restrict S = hs + (t - t0) * KV, *restrict P = t == t0 ? enter + c * KV : hs + (t - t0 - 1) * KV;
                const float *restrict w = ws + (t - t0) * V, *restrict qt = PTR(0, b, h, t), *restrict kt = PTR(1, b, h, t);
                const float *restrict gout = go + (r * T + t) * V;
                const float decay = expf(*PTR(3, b, h, t)), beta = *PTR(4, b, h, t);
                float *restrict dq = out[0] + (r * T + t) * K, *restrict dk = out[1] + (r * T + t) * K;
                float *restrict dv = out[2] + (r * T + t) * V;
                /* pass 1: o = scale q S; S = Sa + k^T u, u = beta w  ->  dq, dS += scale q^T do, dk, du = k dS */
                memset(du, 0, V * sizeof(float));
                for (int64_t i = 0; i < K; i++) {
                    const float qi = a->scale * qt[i], ki = kt[i];
                    const float *restrict s = S + i * V;
                    float *restrict ds = dS + i * V;
                    float gq = 0.0f, gk = 0.0f;
#pragma omp simd reduction(+ : gq, gk)
                    for (int64_t j = 0; j < V; j++) {
                        gq += s[j] * gout[j];
                        const float d = ds[j] + qi * gout[j];  /* dLoss / dS_t */
                        ds[j] = d;
                        gk += d * w[j];
                        du[j] += d * ki;  /* dLoss / du */
                    }
                    dq[i] = a->scale * gq;
                    dk[i] = beta * gk;
                }
                /* u = beta w: dbeta = du . w, dw = beta du; w = v - k Sa: dv = dw, d(k Sa) = -dw */
                float gbeta = 0.0f;
#pragma omp simd reduction(+ : gbeta)
                for (int64_t j = 0; j < V; j++) {
                    gbeta += du[j] * w[j];
                    du[j] *= beta;  /* now dw */
                    dv[j] = du[j];
                }
                out[4][r * T + t] = gbeta;
                /* pass 2: Sa = decay P receives dS (through S = Sa + ...) and -k^T dw (through k Sa) */
                float gdecay = 0.0f;
                for (int64_t i = 0; i < K; i++) {
                    const float ki = kt[i];
                    const float *restrict p = P + i * V;
                    float *restrict ds = dS + i * V;
                    float gk = 0.0f, gd = 0.0f;
#pragma omp simd reduction(+ : gk, gd)
                    for (int64_t j = 0; j < V; j++) {
                        gk -= decay * p[j] * du[j];
                        const float dsa = ds[j] - ki * du[j];  /* dLoss / dSa */
                        gd += dsa * p[j];
                        ds[j] = decay * dsa;  /* dLoss / dS_{t-1} */
                    }
                    dk[i] += gk;
                    gdecay += gd;
                }
                out[3][r * T + t] = decay * gdecay;  /* d exp(g) / dg = exp(g) */
            }
        }
        memcpy(out[5] + r * KV, dS, KV * sizeof(float));
    }
done:
    free(enter); free(hs); free(ws); free(dS); free(du);
    return status;
}
