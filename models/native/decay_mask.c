/* The decay mask of the SSD's chunked form (Mamba-2, models/ssd_chunked.py) on CPU, forward and backward in one
 * pass each: inside a chunk of Q tokens, head r of a group weighs
 *
 *   W_r[t, s] = S[t, s] * exp(b_r[t] - b_r[s])   for s <= t,   0 for s > t
 *
 * where S = C B^T is shared by the R heads of a group (B and C are per group) and b_r is head r's cumulative
 * log-decay inside the chunk (b_r[t] - b_r[s] <= 0: the exp never overflows). In torch the mask is ~10 passes over
 * (Q x Q) temporaries per head and chunk (difference, fill, exp, product and their gradients); the matmuls around
 * it (S = C B^T, W v and their gradients) stay torch's: a fused C pass that also took the W v products (tried)
 * ran at half the speed of the mask here plus torch's batched matmuls.
 * Built and loaded by models/native_build.py (plain C, no PyTorch headers).
 *
 * Layouts, all contiguous, with M = batch x groups x chunks blocks: S (M, Q, Q), b (M, R, Q), W and dW
 * (M, R, Q, Q), dS (M, Q, Q), db (M, R, Q). Blocks are independent: the caller splits them across threads.
 */
#include <stdint.h>
#include <string.h>

#include "exp_fast.h"
/* dims: R, Q */
int dm_forward(const int64_t *dims, const float *S, const float *b, float *W, int64_t m0, int64_t m1) {
    const int64_t R = dims[0], Q = dims[1];
    for (int64_t m = m0; m < m1; m++) {
        const float *Sm = S + m * Q * Q;
        for (int64_t r = 0; r < R; r++) {
            const float *restrict br = b + (m * R + r) * Q;
            float *Wr = W + (m * R + r) * Q * Q;
            for (int64_t t = 0; t < Q; t++) {
                const float bt = br[t];
                const float *restrict St = Sm + t * Q;
                float *restrict Wt = Wr + t * Q;
#pragma omp simd
                for (int64_t s = 0; s <= t; s++) Wt[s] = St[s] * exp_fast(bt - br[s]);
                memset(Wt + t + 1, 0, (size_t)(Q - t - 1) * sizeof(float));
            }
        }
    }
    return 0;
}
/* dS[t, s] = sum_r dW_r[t, s] e_r[t, s];  with a_r = dW_r W_r: db_r[t] += sum_s a_r[t, s], db_r[s] -= sum_t a_r[t, s]
 * (W_r = S e_r depends on b_r[t] through +b_r[t] and on b_r[s] through -b_r[s]). dW's upper triangle is ignored. */
int dm_backward(const int64_t *dims, const float *S, const float *b, const float *dW, float *dS, float *db,
                int64_t m0, int64_t m1) {
    const int64_t R = dims[0], Q = dims[1];
    for (int64_t m = m0; m < m1; m++) {
        const float *Sm = S + m * Q * Q;
        float *dSm = dS + m * Q * Q;
        memset(dSm, 0, (size_t)(Q * Q) * sizeof(float));
        for (int64_t r = 0; r < R; r++) {
            const float *restrict br = b + (m * R + r) * Q;
            const float *dWr = dW + (m * R + r) * Q * Q;
            float *restrict dbr = db + (m * R + r) * Q;
            memset(dbr, 0, (size_t)Q * sizeof(float));
            for (int64_t t = 0; t < Q; t++) {
                const float bt = br[t];
                const float *restrict St = Sm + t * Q;
                const float *restrict dWt = dWr + t * Q;
                float *restrict dSt = dSm + t * Q;
                float row = 0.0f;
#pragma omp simd reduction(+ : row)
                for (int64_t s = 0; s <= t; s++) {
                    const float g = dWt[s] * exp_fast(bt - br[s]);
                    const float a = g * St[s];
                    dSt[s] += g;
                    dbr[s] -= a;
                    row += a;
                }
                dbr[t] += row;
            }
        }
    }
    return 0;
}
