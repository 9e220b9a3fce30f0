/* test_kernels.c - every fast CPU path against its plain twin: the small-M
 * linear and the streaming attention of the decoding step, on random
 * inputs of several shapes (odd sizes included). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/kern.h"
#include "kernels/cpu/kern_gemm.h"
#include "common/tensorfile.h"
#include "tutil.h"

static float *s_rand(size_t n, unsigned *seed)
{
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = (float)rand_r(seed) / RAND_MAX * 2.0f - 1.0f;
    return p;
}

static void test_linear_paths(void)
{
    static const int shapes[][3] = {{1, 1024, 1024}, {4, 1024, 4096}, {3, 77, 131}, {16, 64, 33},
                                    {17, 128, 96},  {40, 256, 300},  {1, 5, 3}};
    unsigned seed = 7;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
        float *x = s_rand((size_t)M * K, &seed), *W = s_rand((size_t)N * K, &seed),
              *b = s_rand((size_t)N, &seed);
        float *y = malloc((size_t)M * N * sizeof *y), *r = malloc((size_t)M * N * sizeof *r);
        kern_linear(x, M, K, W, b, N, y);
        kern_linear_ref(x, M, K, W, b, N, r);
        double d = tu_maxdiff(y, r, (size_t)M * N);
        if (!(d <= 1e-5 * sqrt((double)K)))
            printf("\n  linear %dx%dx%d: max diff %.3g", M, K, N, d);
        CU_ASSERT(d <= 1e-5 * sqrt((double)K));
        /* a row's result does not depend on the other rows of the call */
        if (M > 1 && kern_small_m(M)) {
            float *y1 = malloc((size_t)N * sizeof *y1);
            kern_linear(x + (size_t)(M - 1) * K, 1, K, W, b, N, y1);
            CU_ASSERT(memcmp(y1, y + (size_t)(M - 1) * N, (size_t)N * sizeof *y1) == 0);
            free(y1);
        }
        free(x);
        free(W);
        free(b);
        free(y);
        free(r);
    }
}

static void test_attend_one(void)
{
    static const int shapes[][3] = {{4800, 16, 64}, {7, 4, 32}, {129, 3, 8}, {1, 2, 16}};
    unsigned seed = 11;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int S = shapes[s][0], H = shapes[s][1], hd = shapes[s][2], ld = H * hd;
        float *q = s_rand((size_t)ld, &seed), *K = s_rand((size_t)S * ld, &seed),
              *V = s_rand((size_t)S * ld, &seed);
        float *p = malloc((size_t)H * S * sizeof *p), *ctx = malloc((size_t)ld * sizeof *ctx);
        kern_attend_scores(q, 1, ld, K, S, H, hd, ld, p);
        kern_attend_values(p, 1, V, S, H, hd, ld, ctx, ld);
        /* plain twin in double */
        double dp = 0, dc = 0;
        double *sc = malloc((size_t)S * sizeof *sc);
        for (int h = 0; h < H; h++) {
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < S; j++) {
                double a = 0;
                for (int d = 0; d < hd; d++)
                    a += (double)q[h * hd + d] * K[(size_t)j * ld + h * hd + d];
                sc[j] = a;
                mx = fmax(mx, a);
            }
            for (int j = 0; j < S; j++)
                sum += sc[j] = exp(sc[j] - mx);
            for (int d = 0; d < hd; d++) {
                double c = 0;
                for (int j = 0; j < S; j++)
                    c += sc[j] / sum * V[(size_t)j * ld + h * hd + d];
                dc = fmax(dc, fabs(c - ctx[h * hd + d]));
            }
            for (int j = 0; j < S; j++)
                dp = fmax(dp, fabs(sc[j] / sum - p[(size_t)h * S + j]));
        }
        CU_ASSERT(dp <= 1e-6);
        CU_ASSERT(dc <= 1e-5);
        /* three query rows at once: each row equals the single-row result */
        float *q3 = malloc((size_t)3 * ld * sizeof *q3), *p3 = malloc((size_t)3 * H * S * sizeof *p3),
              *c3 = malloc((size_t)3 * ld * sizeof *c3);
        for (int r = 0; r < 3; r++)
            memcpy(q3 + (size_t)r * ld, q, (size_t)ld * sizeof *q);
        q3[ld] += 0.5f; /* row 1 differs */
        kern_attend_scores(q3, 3, ld, K, S, H, hd, ld, p3);
        kern_attend_values(p3, 3, V, S, H, hd, ld, c3, ld);
        CU_ASSERT(memcmp(p3 + (size_t)2 * H * S, p, (size_t)H * S * sizeof *p) == 0);
        CU_ASSERT(memcmp(c3 + (size_t)2 * ld, ctx, (size_t)ld * sizeof *ctx) == 0);
        CU_ASSERT(memcmp(c3, ctx, (size_t)ld * sizeof *ctx) == 0);
        free(q3);
        free(p3);
        free(c3);
        free(sc);
        free(q);
        free(K);
        free(V);
        free(p);
        free(ctx);
    }
}

/* Bfloat16 weights: the vdpbf16ps small-M path against its plain twin (the
 * same rounding of the activations, double accumulation), and the
 * many-row path (float32 activations, widened weights through sgemm)
 * against a double product of the unrounded activations. */
static void test_linear_bf16(void)
{
    static const int shapes[][3] = {{1, 1024, 1024}, {4, 1024, 4096}, {3, 77, 131}, {16, 64, 33},
                                    {1, 5, 3},       {17, 128, 96},   {300, 96, 517}};
    unsigned seed = 19;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
        float *x = s_rand((size_t)M * K, &seed), *Wf = s_rand((size_t)N * K, &seed),
              *b = s_rand((size_t)N, &seed);
        uint16_t *W = malloc((size_t)N * K * sizeof *W);
        kern_to_bf16(Wf, W, (size_t)N * K);
        size_t bad = 0;
        for (size_t i = 0; i < (size_t)N * K; i++) /* the rounding is dm_f32_to_bf16's */
            bad += W[i] != dm_f32_to_bf16(Wf[i]);
        CU_ASSERT_EQUAL(bad, 0);
        float *y = malloc((size_t)M * N * sizeof *y), *r = malloc((size_t)M * N * sizeof *r);
        kern_linear_bf16(x, M, K, W, b, N, y);
        double d;
        if (kern_small_m(M)) {
            kern_linear_bf16_ref(x, M, K, W, b, N, r);
            d = tu_maxdiff(y, r, (size_t)M * N);
        } else {
            d = 0;
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double acc = b[j];
                    for (int k = 0; k < K; k++)
                        acc += (double)x[(size_t)i * K + k] * dm_bf16_to_f32(W[(size_t)j * K + k]);
                    d = fmax(d, fabs(acc - y[(size_t)i * N + j]));
                }
        }
        if (!(d <= 1e-5 * sqrt((double)K)))
            printf("\n  bf16 linear %dx%dx%d: max diff %.3g", M, K, N, d);
        CU_ASSERT(d <= 1e-5 * sqrt((double)K));
        /* the rounding of the activations is what the plain twin does: the
         * result differs from float32 weights by a bf16-sized amount */
        if (M == 4) {
            kern_linear_ref(x, M, K, Wf, b, N, r);
            double rel = tu_maxdiff(y, r, (size_t)M * N);
            CU_ASSERT(rel > 1e-4 && rel < 4.0 / 256 * sqrt((double)K));
        }
        if (M > 1 && kern_small_m(M)) {
            float *y1 = malloc((size_t)N * sizeof *y1);
            kern_linear_bf16(x + (size_t)(M - 1) * K, 1, K, W, b, N, y1);
            CU_ASSERT(memcmp(y1, y + (size_t)(M - 1) * N, (size_t)N * sizeof *y1) == 0);
            free(y1);
        }
        free(x);
        free(Wf);
        free(W);
        free(b);
        free(y);
        free(r);
    }
}

/* One attention head in double precision from key and value rows (row
 * stride ld, head h of size hd; bfloat16 keys and values when Kb/Vb are
 * given): the largest differences of probs [nq, S] and ctx rows (stride
 * ld, at the head's offset) from it go to *dp and *dc. */
static void s_ref_head(const float *q, int nq, float scale, const float *K, const float *V,
                       const uint16_t *Kb, const uint16_t *Vb, int S, int ld, int h, int hd,
                       const float *probs, const float *ctx, double *dp, double *dc)
{
    double *e = malloc((size_t)S * sizeof *e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    *dp = *dc = 0;
    for (int r = 0; r < nq; r++) {
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < S; j++) {
            double a = 0;
            for (int d = 0; d < hd; d++) {
                size_t o = (size_t)j * ld + h * hd + d;
                a += (double)(q[(size_t)r * ld + h * hd + d] * scale) *
                     (Kb ? dm_bf16_to_f32(Kb[o]) : K[o]);
            }
            e[j] = a;
            mx = fmax(mx, a);
        }
        for (int j = 0; j < S; j++)
            sum += e[j] = exp(e[j] - mx);
        for (int j = 0; j < S; j++)
            *dp = fmax(*dp, fabs(e[j] / sum - probs[(size_t)r * S + j]));
        for (int d = 0; d < hd; d++) {
            double c = 0;
            for (int j = 0; j < S; j++) {
                size_t o = (size_t)j * ld + h * hd + d;
                c += e[j] / sum * (Vb ? dm_bf16_to_f32(Vb[o]) : V[o]);
            }
            *dc = fmax(*dc, fabs(c - ctx[(size_t)r * ld + h * hd + d]));
        }
    }
    free(e);
}

/* The team forms inside a parallel region against the plain twins:
 * outputs through row pointers, bias, GELU, accumulation, bf16 weights;
 * and one attention head against a double-precision twin. */
static void test_team(void)
{
    static const int shapes[][3] = {{1, 1024, 1027}, {4, 256, 64}, {3, 77, 131}, {2, 40, 3},
                                    {5, 77, 9}};
    unsigned seed = 23;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
        float *x = s_rand((size_t)M * K, &seed), *W = s_rand((size_t)N * K, &seed),
              *b = s_rand((size_t)N, &seed), *y0 = s_rand((size_t)M * N, &seed);
        uint16_t *Wb = malloc((size_t)N * K * sizeof *Wb), *xb = malloc((size_t)M * K * sizeof *xb);
        kern_to_bf16(W, Wb, (size_t)N * K);
        for (size_t i = 0; i < (size_t)M * K; i++)
            xb[i] = dm_f32_to_bf16(x[i]);
        float *y = malloc((size_t)M * N * sizeof *y), *r = malloc((size_t)M * N * sizeof *r);
        float *rows[16];
        for (int m = 0; m < M; m++)
            rows[m] = y + (size_t)m * N;
        for (int mode = 0; mode < 3; mode++) {
            /* 0: float32, GELU; 1: bf16, accumulate into y0; 2: float32, no bias */
            int bf = mode == 1, flags = mode == 0 ? KERN_GELU : mode == 1 ? KERN_ACC : 0;
            const float *bias = mode == 2 ? NULL : b;
            memcpy(y, y0, (size_t)M * N * sizeof *y);
#pragma omp parallel num_threads(2)
            kern_linear_team(x, bf ? xb : NULL, M, K, bf ? NULL : W, bf ? Wb : NULL, bias, N, rows,
                             flags);
            if (bf)
                kern_linear_bf16_ref(x, M, K, Wb, bias, N, r);
            else
                kern_linear_ref(x, M, K, W, bias, N, r);
            for (size_t i = 0; i < (size_t)M * N; i++) {
                if (mode == 0)
                    r[i] = (float)(0.5 * r[i] * (1.0 + erf(r[i] / sqrt(2.0))));
                if (mode == 1)
                    r[i] += y0[i];
            }
            double d = tu_maxdiff(y, r, (size_t)M * N);
            if (!(d <= 1e-5 * sqrt((double)K)))
                printf("\n  team linear %dx%dx%d mode %d: max diff %.3g", M, K, N, mode, d);
            CU_ASSERT(d <= 1e-5 * sqrt((double)K));
            /* a row's result does not depend on the rows sharing the call
             * (row 0 of 4 or more goes through the 4x4 blocked product) */
            float *rows1[1] = {r};
            memcpy(r, y0, (size_t)N * sizeof *r);
#pragma omp parallel num_threads(2)
            kern_linear_team(x, bf ? xb : NULL, 1, K, bf ? NULL : W, bf ? Wb : NULL, bias, N,
                             rows1, flags);
            CU_ASSERT(memcmp(r, y, (size_t)N * sizeof *r) == 0);
            /* a thread's own output rows alone (kern_linear_part), from a
             * row that is no multiple of 4: the team's bits */
            int j0 = N > 3 ? 3 : 0, j1 = N > 5 ? N - 1 : N;
            float *part = malloc((size_t)M * N * sizeof *part), *prow[16];
            memcpy(part, y0, (size_t)M * N * sizeof *part);
            for (int m = 0; m < M; m++)
                prow[m] = part + (size_t)m * N;
            kern_linear_part(x, bf ? xb : NULL, M, K, bf ? NULL : W, bf ? Wb : NULL, bias, j0, j1,
                             prow, flags);
            for (int m = 0; m < M; m++)
                CU_ASSERT(memcmp(part + (size_t)m * N + j0, y + (size_t)m * N + j0,
                                 (size_t)(j1 - j0) * sizeof *part) == 0);
            free(part);
        }
        free(x);
        free(W);
        free(b);
        free(y0);
        free(Wb);
        free(xb);
        free(y);
        free(r);
    }
    /* one head, 3 query rows, float32 and bfloat16 keys/values */
    int S = 517, H = 4, hd = 64, ld = H * hd, nq = 3, h = 2;
    float *q = s_rand((size_t)nq * ld, &seed), *K = s_rand((size_t)S * ld, &seed),
          *V = s_rand((size_t)S * ld, &seed);
    uint16_t *Kb = malloc((size_t)S * ld * sizeof *Kb), *Vb = malloc((size_t)S * ld * sizeof *Vb);
    kern_to_bf16(K, Kb, (size_t)S * ld);
    kern_to_bf16(V, Vb, (size_t)S * ld);
    float *sc = malloc((size_t)nq * S * sizeof *sc), *ctx = malloc((size_t)nq * ld * sizeof *ctx);
    for (int bf = 0; bf < 2; bf++) {
        float scale = 0.125f;
        kern_attend_head(q + h * hd, nq, ld, scale, bf ? (const void *)(Kb + h * hd) : K + h * hd,
                         bf ? (const void *)(Vb + h * hd) : V + h * hd, bf, S, hd, ld, sc,
                         ctx + h * hd, ld);
        double dp, dc;
        s_ref_head(q, nq, scale, K, V, bf ? Kb : NULL, bf ? Vb : NULL, S, ld, h, hd, sc, ctx, &dp,
                   &dc);
        CU_ASSERT(dp <= 1e-6);
        CU_ASSERT(dc <= 1e-5);
    }
    free(q);
    free(K);
    free(V);
    free(Kb);
    free(Vb);
    free(sc);
    free(ctx);
}

/* A cross-attention head over transposed keys (kern_cross_head) against
 * attention computed in double from the key rows, and against
 * kern_attend_head on the rows: float32 and bfloat16, 1 to 16 query rows
 * (groups of 4 and their remainders), head size 64 (vector path) and 40
 * (plain path), a key count that leaves a partial block of 64 and of 16.
 * The transposed keys come from kern_transpose, checked element by
 * element (float32, and bfloat16 as kern_f32_bf16 rounds). */
static void test_cross_head(void)
{
    unsigned seed = 23;
    int S = 517, H = 3, h = 1;
    static const int nqs[] = {1, 3, 4, 6, 16, 20};
    for (int hv = 0; hv < 2; hv++) {
        int hd = hv ? 40 : 64, ld = H * hd;
        float *K = s_rand((size_t)S * ld, &seed), *V = s_rand((size_t)S * ld, &seed);
        float *q = s_rand((size_t)20 * ld, &seed);
        float *Kt = malloc((size_t)S * ld * sizeof *Kt);
        uint16_t *Ktb = malloc((size_t)S * ld * sizeof *Ktb), *Vb = malloc((size_t)S * ld * 2),
                 *Kb = malloc((size_t)S * ld * 2);
        CU_ASSERT_FATAL(Kt && Ktb && Vb && Kb);
        kern_transpose(K, S, ld, Kt, NULL);
        kern_transpose(K, S, ld, NULL, Ktb);
        kern_to_bf16(V, Vb, (size_t)S * ld);
        kern_to_bf16(K, Kb, (size_t)S * ld);
        int tbad = 0;
        for (int j = 0; j < S; j++)
            for (int c = 0; c < ld; c++)
                tbad += Kt[(size_t)c * S + j] != K[(size_t)j * ld + c] ||
                        Ktb[(size_t)c * S + j] != kern_f32_bf16(K[(size_t)j * ld + c]);
        CU_ASSERT_EQUAL(tbad, 0);
        float *sc = malloc((size_t)20 * S * sizeof *sc), *sc2 = malloc((size_t)16 * S * sizeof *sc2);
        float *ctx = malloc((size_t)20 * ld * sizeof *ctx), *ctx2 = malloc((size_t)16 * ld * 4);
        for (int bf = 0; bf < 2; bf++)
            for (size_t t = 0; t < sizeof nqs / sizeof *nqs; t++) {
                int nq = nqs[t];
                float scale = 0.125f;
                const void *kt = bf ? (const void *)(Ktb + (size_t)h * hd * S)
                                    : (const void *)(Kt + (size_t)h * hd * S);
                const void *vv = bf ? (const void *)(Vb + h * hd) : (const void *)(V + h * hd);
                kern_cross_head(q + h * hd, nq, ld, scale, kt, S, vv, ld, bf, S, hd, sc,
                                ctx + h * hd, ld);
                double dp, dc, d2 = 0;
                /* the reference reads the rounded keys as kern_transpose stored them */
                s_ref_head(q, nq, scale, K, V, bf ? Kb : NULL, bf ? Vb : NULL, S, ld, h, hd, sc,
                           ctx, &dp, &dc);
                /* the same head from the key rows (at most 16 rows) */
                if (nq > 16) {
                    CU_ASSERT(dp <= 1e-6);
                    CU_ASSERT(dc <= 1e-5);
                    continue;
                }
                kern_attend_head(q + h * hd, nq, ld, scale,
                                 bf ? (const void *)(Kb + h * hd) : (const void *)(K + h * hd), vv,
                                 bf, S, hd, ld, sc2, ctx2 + h * hd, ld);
                for (int r = 0; r < nq; r++)
                    for (int d = 0; d < hd; d++)
                        d2 = fmax(d2, fabs(ctx2[(size_t)r * ld + h * hd + d] -
                                           ctx[(size_t)r * ld + h * hd + d]));
                CU_ASSERT(dp <= 1e-6);
                CU_ASSERT(dc <= 1e-5);
                CU_ASSERT(d2 <= 1e-5);
                if (dp > 1e-6 || dc > 1e-5 || d2 > 1e-5)
                    printf("\n    hd %d bf16 %d nq %d: probs %.2e ctx %.2e vs rows %.2e", hd, bf,
                           nq, dp, dc, d2);
            }
        free(K);
        free(V);
        free(q);
        free(Kt);
        free(Ktb);
        free(Vb);
        free(Kb);
        free(sc);
        free(sc2);
        free(ctx);
        free(ctx2);
    }
}

/* The vectorised sums of exponentials (the cache's log-sum-exps) against
 * double-precision exp: all and the left-out part, three temperatures, a
 * length with a remainder of 16, logits spread like an LM head's and, at
 * the highest scale, gaps beyond float's range (terms that are 0). */
static void test_sum_exp(void)
{
    unsigned seed = 5;
    int n = 1037;
    float *x = s_rand((size_t)n, &seed);
    unsigned char *kept = malloc((size_t)n);
    CU_ASSERT_FATAL(x && kept);
    float m = -INFINITY;
    for (int i = 0; i < n; i++) {
        x[i] *= 30.0f;
        m = fmaxf(m, x[i]);
        kept[i] = (i * 7919) % 13 == 0;
    }
    static const float scales[] = {1.0f, 0.5f, 4.0f};
    for (int t = 0; t < 3; t++)
        for (int withk = 0; withk < 2; withk++) {
            double all, rest, ra = 0, rr = 0;
            kern_sum_exp(x, n, m, scales[t], withk ? kept : NULL, &all, &rest);
            for (int i = 0; i < n; i++) {
                double e = exp(((double)x[i] - m) * scales[t]);
                ra += e;
                rr += withk && !kept[i] ? e : 0.0;
            }
            CU_ASSERT(fabs(all - ra) <= 1e-6 * ra);
            /* terms below e^-87.3 are 0 here, within 1e-37 of the total */
            CU_ASSERT(withk ? fabs(rest - rr) <= 1e-6 * rr + 1e-36 : rest == 0.0);
        }
    free(x);
    free(kept);
}

/* A generated token's log-softmax pieces against scalar twins: the double
 * sum of exponentials against libm's exp term by term (banned -inf
 * entries, gaps to 800 nats where the terms go subnormal and then 0,
 * lengths that leave 12 and 9 for the scalar tail, a NaN in the vector
 * part and in the tail), and the argmax against the first-index scan
 * (ties, NaNs, a row of -inf). */
static double s_ref_sum_exp(const float *x, int n, float m)
{
    double a = 0.0;
    for (int i = 0; i < n; i++)
        if (x[i] != -INFINITY)
            a += exp((double)x[i] - m);
    return a;
}

static int s_ref_argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

static void test_logsoftmax_parts(void)
{
    unsigned seed = 11;
    int n = 57532;
    float *x = s_rand((size_t)n, &seed);
    CU_ASSERT_FATAL(x != NULL);
    static const float spread[] = {1.0f, 12.0f, 400.0f};
    for (int t = 0; t < 3; t++) {
        float *y = malloc((size_t)n * sizeof *y);
        CU_ASSERT_FATAL(y != NULL);
        for (int i = 0; i < n; i++)
            y[i] = i % 97 == 3 ? -INFINITY : x[i] * spread[t];
        int k = kern_argmax(y, n);
        CU_ASSERT_EQUAL(k, s_ref_argmax(y, n));
        for (int len = n; len >= n - 19; len -= 19) {
            double got = kern_sum_exp_f64(y, len, y[k]), want = s_ref_sum_exp(y, len, y[k]);
            CU_ASSERT(fabs(got - want) <= 1e-14 * want);
        }
        int in_vec = k == 40 ? 41 : 40, in_tail = k == n - 2 ? n - 3 : n - 2;
        float keep = y[in_vec];
        y[in_vec] = NAN; /* a NaN term makes the sum NaN, in the vector part */
        CU_ASSERT(isnan(kern_sum_exp_f64(y, n, y[k])) && isnan(s_ref_sum_exp(y, n, y[k])));
        y[in_vec] = keep;
        keep = y[in_tail];
        y[in_tail] = NAN; /* and in the scalar tail */
        CU_ASSERT(isnan(kern_sum_exp_f64(y, n, y[k])));
        y[in_tail] = keep;
        y[n - 5] = y[k]; /* a tie later in the row: still the first */
        y[7] = NAN;      /* a NaN never wins */
        CU_ASSERT_EQUAL(kern_argmax(y, n), s_ref_argmax(y, n));
        y[k] = NAN;
        CU_ASSERT_EQUAL(kern_argmax(y, n), n - 5);
        CU_ASSERT_EQUAL(kern_argmax(y, n), s_ref_argmax(y, n));
        y[0] = NAN; /* as the scan: nothing beats a NaN at index 0 */
        CU_ASSERT_EQUAL(kern_argmax(y, n), 0);
        for (int i = 0; i < 37; i++)
            y[i] = -INFINITY;
        CU_ASSERT_EQUAL(kern_argmax(y, 37), 0);
        CU_ASSERT_EQUAL(kern_sum_exp_f64(y, 37, 0.0f), 0.0);
        free(y);
    }
    /* one exact term at the maximum and 1 + e^-1 around it */
    float z[3] = {-1.0f, 0.0f, -INFINITY};
    CU_ASSERT(fabs(kern_sum_exp_f64(z, 3, 0.0f) - (1.0 + exp(-1.0))) <= 1e-15);
    free(x);
}

/* The encoder's GEMM backend (oneDNN, packed weights) against its plain
 * twin: float32 and bf16, strided rows, every epilogue, row counts other
 * than the one the layout was packed for. */
static void test_gemm_packed(void)
{
    static const int shapes[][3] = {{1030, 128, 384}, {37, 96, 24}, {1, 512, 128},
                                    {300, 200, 72},   {64, 48, 128}};
    unsigned seed = 11;
    DmErr err = {{0}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
        int ldx = K + 3, ldy = N + 5;
        float *x = s_rand((size_t)M * ldx, &seed), *W = s_rand((size_t)N * K, &seed),
              *b = s_rand((size_t)N, &seed), *y0 = s_rand((size_t)M * ldy, &seed);
        uint16_t *wbf = malloc((size_t)N * K * sizeof *wbf);
        kern_f32_to_bf16_n(W, (size_t)N * K, wbf);
        float *y = malloc((size_t)M * ldy * sizeof *y), *r = malloc((size_t)M * ldy * sizeof *r);
        for (int bf16 = 0; bf16 < 2; bf16++) {
            void *pk = NULL;
            /* bf16 packs from the bf16 copy; float32 from W */
            int rc = kern_gemm_pack(W, bf16 ? wbf : NULL, N, K, bf16, &pk, &err);
            if (rc)
                printf("\n  pack: %s", err.msg);
            CU_ASSERT_EQUAL_FATAL(rc, 0);
            int pn, pkk, pb;
            kern_gemm_packed_shape(pk, &pn, &pkk, &pb);
            CU_ASSERT(pn == N && pkk == K && pb == bf16);
            static const int flags[4] = {0, 0, KG_GELU, KG_ACC};
            for (int f = 0; f < 4; f++) {
                const float *bias = f == 0 ? NULL : b;
                memcpy(y, y0, (size_t)M * ldy * sizeof *y);
                memcpy(r, y0, (size_t)M * ldy * sizeof *r);
                rc = kern_gemm_run(pk, x, M, ldx, bias, flags[f], y, ldy, NULL, &err);
                if (rc)
                    printf("\n  run: %s", err.msg);
                CU_ASSERT_EQUAL_FATAL(rc, 0);
                kern_gemm_ref(W, bf16 ? wbf : NULL, N, K, bf16, x, M, ldx, bias, flags[f], r,
                              ldy);
                /* both sides see the same (rounded) operands: only the
                 * float32 accumulation order differs */
                double d = tu_maxdiff(y, r, (size_t)M * ldy);
                double tol = 2e-6 * sqrt((double)K) * 4;
                if (!(d <= tol))
                    printf("\n  gemm %dx%dx%d bf16 %d flags %d: max diff %.3g", M, N, K, bf16,
                           flags[f], d);
                CU_ASSERT(d <= tol);
            }
            free(pk);
        }
        /* a non-block pointer is refused */
        CU_ASSERT_EQUAL(kern_gemm_run(x, x, M, ldx, NULL, 0, y, ldy, NULL, &err), -1);
        free(x);
        free(W);
        free(b);
        free(y0);
        free(wbf);
        free(y);
        free(r);
    }
}

/* The vector bf16 conversion against the scalar one, ties and NaN included. */
static void test_bf16_convert(void)
{
    unsigned seed = 3;
    size_t n = 1000;
    float *x = s_rand(n, &seed);
    uint32_t special[] = {0x3f808000u, 0x3f818000u, 0x7fc00001u, 0xff800000u, 0x00000001u,
                          0x7f7fffffu, 0x80000000u};
    for (size_t i = 0; i < sizeof special / sizeof *special; i++)
        memcpy(&x[100 + i], &special[i], 4);
    uint16_t *y = malloc(n * sizeof *y);
    kern_f32_to_bf16_n(x, n, y);
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += y[i] != dm_f32_to_bf16(x[i]);
    CU_ASSERT_EQUAL(bad, 0);
    free(x);
    free(y);
    /* a model's matrix (slices over the team) with the same specials
     * spread over it, a length that is no multiple of a slice */
    n = ((size_t)1 << 20) + 37;
    x = s_rand(n, &seed);
    y = malloc(n * sizeof *y);
    CU_ASSERT_FATAL(x && y);
    for (size_t i = 0; i < sizeof special / sizeof *special; i++)
        memcpy(&x[(i * 150001) % n], &special[i], 4);
    kern_to_bf16(x, y, n);
    bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += y[i] != dm_f32_to_bf16(x[i]);
    CU_ASSERT_EQUAL(bad, 0);
    free(x);
    free(y);
}

void tests_kernels(void)
{
    TU_SUITE("kernels", {"linear: small-M and BLAS paths vs plain", test_linear_paths},
             {"streaming attention vs plain", test_attend_one},
             {"linear with bf16 weights: vdpbf16ps and widened sgemm vs plain", test_linear_bf16},
             {"team forms of the step: linear, one attention head vs plain", test_team},
             {"cross-attention head over transposed keys vs double and vs key rows",
              test_cross_head},
             {"sums of exponentials (log-sum-exp) vs double", test_sum_exp},
             {"log-softmax of a generated token: double exp sum, argmax", test_logsoftmax_parts},
             {"encoder GEMM (packed, f32 and bf16, epilogues) vs plain", test_gemm_packed},
             {"bf16 conversion: vector vs scalar", test_bf16_convert});
}
