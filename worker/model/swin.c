/* swin.c - the Donut Swin encoder (HF DonutSwinModel, transformers 4.30).
 *
 * Layout: the feature map of a stage is x[H*W, C] (row-major tokens).  A
 * block runs in two phases, both in chunks so that scratch stays small:
 *
 *  attention: windows (row-major over the padded, shifted map) are processed
 *    G at a time: gather + layernorm_before into xw[G*N, C] (padded tokens
 *    are zero, as HF pads after the LayerNorm), one fused q|k|v GEMM, window
 *    attention (one pool task per window, all its heads; relative position
 *    bias expanded per block, the 4 kinds of shift mask built once per
 *    stage), one proj GEMM, then scatter-add into x (the residual).
 *    Windows are disjoint, so updating x in place chunk by chunk is exact.
 *  MLP: rows of x R at a time: layernorm_after, fc1 GEMM, bias+GELU, fc2 GEMM
 *    accumulated into x (beta = 1; fc2's bias is pre-added to x).
 *
 * The linear layers are GEMMs over many tokens (kern_gemm: oneDNN matmul on
 * weights packed once per model, bias and GELU in its epilogue, fc2 summed
 * into x by it).  Everything else (gathers, LayerNorm, window attention)
 * runs on the same OpenMP threads (kern_get_threads() of them).
 * Nothing is global: concurrent calls on one model are safe.  The working
 * memory is one block kept with the model from page to page, lent to one
 * call at a time (see "workspace" below).  Attention probabilities are
 * computed into a buffer only when a probe is given.
 * -DSWIN_PROF prints a per-phase time split (not thread-safe; for benches). */
#include <malloc.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/model/donut.h"
#include "kernels/cpu/kern.h"
#include "kernels/cpu/kern_gemm.h"

/* ------------------------------------------------------------ vector math */

#if defined(__AVX512F__)
#define VW 16
#else
#define VW 8
#endif
typedef float vf __attribute__((vector_size(VW * 4)));
typedef float vfu __attribute__((vector_size(VW * 4), aligned(4)));
typedef int32_t vi __attribute__((vector_size(VW * 4)));

static inline vf vload(const float *p) { return *(const vfu *)p; }
static inline void vstore(float *p, vf v) { *(vfu *)p = v; }
static inline vf vset1(float s) { return (vf){0} + s; }

typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));
typedef union {
    vf v;
    v4f q[VW / 4];
} VfQuads;

static inline float vsum(vf v)
{
    VfQuads u = {.v = v};
    v4f s = u.q[0];
    for (int i = 1; i < VW / 4; i++)
        s += u.q[i];
    return (s[0] + s[2]) + (s[1] + s[3]);
}

static inline float vmaxh(vf v)
{
    VfQuads u = {.v = v};
    v4f m = u.q[0];
    for (int i = 1; i < VW / 4; i++) {
        v4f x = u.q[i];
        v4i c = m > x;
        m = (v4f)(((v4i)m & c) | ((v4i)x & ~c));
    }
    float a = m[0] > m[1] ? m[0] : m[1], b = m[2] > m[3] ? m[2] : m[3];
    return a > b ? a : b;
}

static inline vf vmax(vf a, vf b)
{
    vi m = a > b;
    return (vf)(((vi)a & m) | ((vi)b & ~m));
}

/* exp(x), Cephes-style range reduction + degree-6 polynomial (about 1 ulp);
 * 0 for x < -87.3 (so -inf/-1e30 give exactly 0). */
static inline vf vexp(vf x)
{
    const vf hi = vset1(88.3762626647949f), lo = vset1(-88.3762626647949f);
    vi under = x < vset1(-87.3f);
    x = vmax(x, lo);
    x = -vmax(-x, -hi);
    vf fx = x * 1.44269504088896341f + 0.5f;
    vi t = __builtin_convertvector(fx, vi);
    t = t + (__builtin_convertvector(t, vf) > fx); /* floor (compare gives -1) */
    vf n = __builtin_convertvector(t, vf);
    x = x - n * 0.693359375f;
    x = x - n * -2.12194440e-4f;
    vf z = x * x;
    vf y = vset1(1.9875691500E-4f);
    y = y * x + 1.3981999507E-3f;
    y = y * x + 8.3334519073E-3f;
    y = y * x + 4.1665795894E-2f;
    y = y * x + 1.6666665459E-1f;
    y = y * x + 5.0000001201E-1f;
    y = y * z + x + 1.0f;
    vi e = (t + 127) << 23;
    vf r = y * (vf)e;
    return (vf)((vi)r & ~under);
}

static inline float sexp(float x)
{
    vf v = vset1(x);
    return vexp(v)[0];
}

/* LayerNorm of one row (torch semantics, biased variance); y may alias x. */
static void ln_row(const float *x, int n, const float *g, const float *b, float eps, float *y)
{
    vf acc = {0};
    int i = 0;
    for (; i + VW <= n; i += VW)
        acc += vload(x + i);
    float s = vsum(acc);
    for (; i < n; i++)
        s += x[i];
    float mean = s / (float)n;
    vf vm = vset1(mean);
    acc = (vf){0};
    i = 0;
    for (; i + VW <= n; i += VW) {
        vf d = vload(x + i) - vm;
        acc += d * d;
    }
    float q = vsum(acc);
    for (; i < n; i++)
        q += (x[i] - mean) * (x[i] - mean);
    float rstd = 1.0f / sqrtf(q / (float)n + eps);
    vf vr = vset1(rstd);
    i = 0;
    for (; i + VW <= n; i += VW)
        vstore(y + i, (vload(x + i) - vm) * vr * vload(g + i) + vload(b + i));
    for (; i < n; i++)
        y[i] = (x[i] - mean) * rstd * g[i] + b[i];
}

/* ------------------------------------------------------------ thread pool */

/* The non-GEMM phases run on the OpenMP threads that also run oneDNN's
 * GEMMs: one set of threads, so no thread spins waiting for work while
 * another needs its core.  Items are handed out one at a time (windows and
 * row groups cost about the same, but a shared machine stalls threads). */
#define POOL_MAX 64

typedef void (*PoolFn)(void *arg, int item, int tid);

typedef struct Pool {
    int n; /* threads */
} Pool;

static void pool_init(Pool *p, int n) { p->n = n < 1 ? 1 : n > POOL_MAX ? POOL_MAX : n; }

/* Run fn(arg, i, tid) for i in [0, total) on all threads. */
static void pool_for(Pool *p, int total, PoolFn fn, void *arg)
{
    if (total <= 0)
        return;
    if (p->n == 1 || total == 1) {
        for (int i = 0; i < total; i++)
            fn(arg, i, 0);
        return;
    }
    int nt = p->n < total ? p->n : total;
#pragma omp parallel num_threads(nt)
    {
        int tid = omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < total; i++)
            fn(arg, i, tid);
    }
}

/* ------------------------------------------------------------------ grid */

void swin_output_grid(const SwinConfig *c, int H, int W, int *oh, int *ow)
{
    int h = (H + c->patch - 1) / c->patch, w = (W + c->patch - 1) / c->patch;
    for (int s = 0; s + 1 < c->nstages; s++) {
        h = (h + 1) / 2;
        w = (w + 1) / 2;
    }
    *oh = h;
    *ow = w;
}

/* --------------------------------------------------------------- context */

#ifndef ROWS_FLOATS
#define ROWS_FLOATS (1 << 19)
#endif

/* Build with -DSWIN_PROF to print a time split of the phases to stderr. */
#ifdef SWIN_PROF
enum { PR_PATCH, PR_GATHER, PR_QKV, PR_ATT, PR_PROJ, PR_SCAT, PR_LN, PR_FC1, PR_FC2, PR_MERGE,
       PR_N };
static double s_prof[PR_N];
static const char *s_prof_name[PR_N] = {"patch", "gather", "qkv", "attn", "proj", "scatter",
                                        "ln_after", "fc1", "fc2", "merge"};
#define PROF(k, stmt)                                                                  \
    do {                                                                               \
        double t_ = dm_now();                                                          \
        stmt;                                                                          \
        s_prof[k] += dm_now() - t_;                                                    \
    } while (0)
#else
#define PROF(k, stmt) stmt
#endif /* target chunk size: rows * dim floats */

typedef struct Enc {
    const DonutModel *m;
    const SwinConfig *c;
    Pool pool;
    float *arena; /* chunk scratch */
    size_t arena_n;
    float *tscr; /* per-thread attention scratch */
    size_t tscr_n;
    uint16_t *xbf; /* bf16 activations of a GEMM (arena_n values), bf16 only */
    float *bias;  /* expanded relative position bias [heads, Nr, Np] */
    float *masks; /* 4 x [Nr, Np] */
    float *probs; /* attention probabilities for the probe, or NULL */
    float *zero;  /* zeros [max dim]: stands in for absent q/k/v biases */
} Enc;

/* Shared state of one block's attention phase. */
typedef struct Att {
    Enc *e;
    const SwinBlock *bl;
    const float *x;  /* feature map [H*W, C] (gather) */
    float *xo;       /* same map (scatter target) */
    int H, W, C, heads, hd;
    int win, shift, Hp, Wp, nWh, nWw, N, Nr, Np;
    int w0;          /* first window of the chunk */
    float eps;
    float *xw;       /* [G*N, C] LN'd gathered tokens; reused for proj output */
    float *qkv;      /* [G*N, 3C] */
    float *ctx;      /* [G*N, C] */
    int use_mask;
    float scale;
} Att;

static inline int wrap(int v, int n) { return v >= n ? v - n : v; }

/* Source position in x of token i of window wi, or -1 for a padded token. */
static inline int att_src(const Att *a, int wi, int i)
{
    int wr = wi / a->nWw, wc = wi % a->nWw;
    int r = wr * a->win + i / a->win, c = wc * a->win + i % a->win;
    r = wrap(r + a->shift, a->Hp);
    c = wrap(c + a->shift, a->Wp);
    if (r >= a->H || c >= a->W)
        return -1;
    return r * a->W + c;
}

static void att_gather(void *arg, int lw, int tid)
{
    const Att *a = arg;
    int wi = a->w0 + lw;
    const DmNorm *ln = &a->bl->ln_before;
    for (int i = 0; i < a->N; i++) {
        float *dst = a->xw + ((size_t)lw * a->N + i) * a->C;
        int src = att_src(a, wi, i);
        if (src < 0)
            memset(dst, 0, sizeof(float) * a->C);
        else
            ln_row(a->x + (size_t)src * a->C, a->C, ln->g, ln->b, a->eps, dst);
    }
}

static void att_scatter(void *arg, int lw, int tid)
{
    const Att *a = arg;
    int wi = a->w0 + lw;
    int C = a->C;
    for (int i = 0; i < a->N; i++) {
        int src = att_src(a, wi, i);
        if (src < 0)
            continue;
        float *d = a->xo + (size_t)src * C;
        const float *y = a->xw + ((size_t)lw * a->N + i) * C;
        for (int k = 0; k < C; k++)
            d[k] += y[k];
    }
}

/* Per-thread scratch floats for one (window, head). */
static size_t att_scratch_floats(int Nr, int Np, int C)
{
    return (size_t)Nr * C + (size_t)C * Np + (size_t)Np * C + (size_t)Nr * Np + 64;
}

/* ctx rows = P v for 4 rows of P (row stride Np): 8 head dims (pv_4x8) or
 * 32 head dims (pv_4x32) from d0, accumulators in registers. */
typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));
#define LD8(p) (*(const v8u *)(p))
#define ST8(p, x) (*(v8u *)(p) = (x))

static void pv_4x8(const float *P, int Np, const float *v, int hd, int N, int d0,
                   float *const o[4], int nrows)
{
    v8 c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0};
    const float *vp = v + d0;
    for (int j = 0; j < N; j++, vp += hd) {
        v8 x = LD8(vp);
        c0 += P[j] * x;
        c1 += P[Np + j] * x;
        c2 += P[2 * Np + j] * x;
        c3 += P[3 * Np + j] * x;
    }
    v8 c[4] = {c0, c1, c2, c3};
    for (int r = 0; r < nrows; r++)
        ST8(o[r] + d0, c[r]);
}

#if VW == 16
static void pv_4x32z(const float *P, int Np, const float *v, int hd, int N, int d0,
                     float *const o[4], int nrows)
{
    vf c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0}, c30 = {0}, c31 = {0};
    const float *vp = v + d0;
    for (int j = 0; j < N; j++, vp += hd) {
        vf x0 = vload(vp), x1 = vload(vp + 16);
        float p0 = P[j], p1 = P[Np + j], p2 = P[2 * Np + j], p3 = P[3 * Np + j];
        c00 += p0 * x0; c01 += p0 * x1;
        c10 += p1 * x0; c11 += p1 * x1;
        c20 += p2 * x0; c21 += p2 * x1;
        c30 += p3 * x0; c31 += p3 * x1;
    }
    vf c[4][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}};
    for (int r = 0; r < nrows; r++) {
        vstore(o[r] + d0, c[r][0]);
        vstore(o[r] + d0 + 16, c[r][1]);
    }
}

#endif

/* One head of one window: S = q k^T * scale + bias (+ mask); softmax; ctx = P v. */
/* S rows (4, stride Np) at column jv = acc + bias (+ mask), as HF:
 * (q.k) / sqrt(hd) + relative bias, then + mask. */
static inline void s_store4(float *s0, int Np, int jv, const float *bias, const float *mask,
                            vf a0, vf a1, vf a2, vf a3)
{
    a0 += vload(bias + jv);
    a1 += vload(bias + Np + jv);
    a2 += vload(bias + 2 * Np + jv);
    a3 += vload(bias + 3 * Np + jv);
    if (mask) {
        a0 += vload(mask + jv);
        a1 += vload(mask + Np + jv);
        a2 += vload(mask + 2 * Np + jv);
        a3 += vload(mask + 3 * Np + jv);
    }
    vstore(s0 + jv, a0);
    vstore(s0 + Np + jv, a1);
    vstore(s0 + 2 * Np + jv, a2);
    vstore(s0 + 3 * Np + jv, a3);
}

static void att_head(const Att *a, int wi, int lw, int h, const float *q, const float *kt,
                     const float *v, float *S)
{
    int N = a->N, Nr = a->Nr, Np = a->Np, hd = a->hd, C = a->C;
    const Enc *e = a->e;
    int off = h * hd;
    const float *bias = e->bias + (size_t)h * Nr * Np;
    const float *mask = NULL;
    if (a->use_mask) {
        int lr = (wi / a->nWw) == a->nWh - 1, lc = (wi % a->nWw) == a->nWw - 1;
        int type = lr * 2 + lc;
        if (type)
            mask = e->masks + (size_t)type * Nr * Np;
    }
    float *pp = e->probs ? e->probs + ((size_t)wi * a->heads + h) * N * N : NULL;

    for (int ib = 0; ib < Nr; ib += 4) {
        /* S rows ib..ib+3 = q kt + bias (+ mask), VW columns per step */
        const float *q0 = q + (size_t)ib * hd;
        float *s0 = S + (size_t)ib * Np;
        int jv = 0;
        for (; jv + 2 * VW <= Np; jv += 2 * VW) {
            vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
            const float *kp = kt + jv;
            for (int d = 0; d < hd; d++, kp += Np) {
                vf k0 = vload(kp), k1 = vload(kp + VW);
                float x0 = q0[d], x1 = q0[hd + d], x2 = q0[2 * hd + d], x3 = q0[3 * hd + d];
                a0 += x0 * k0; b0 += x0 * k1;
                a1 += x1 * k0; b1 += x1 * k1;
                a2 += x2 * k0; b2 += x2 * k1;
                a3 += x3 * k0; b3 += x3 * k1;
            }
            s_store4(s0, Np, jv, bias + (size_t)ib * Np, mask ? mask + (size_t)ib * Np : NULL,
                     a0, a1, a2, a3);
            s_store4(s0, Np, jv + VW, bias + (size_t)ib * Np,
                     mask ? mask + (size_t)ib * Np : NULL, b0, b1, b2, b3);
        }
        for (; jv < Np; jv += VW) {
            vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            const float *kp = kt + jv;
            for (int d = 0; d < hd; d++, kp += Np) {
                vf kv = vload(kp);
                a0 += q0[d] * kv;
                a1 += q0[hd + d] * kv;
                a2 += q0[2 * hd + d] * kv;
                a3 += q0[3 * hd + d] * kv;
            }
            s_store4(s0, Np, jv, bias + (size_t)ib * Np, mask ? mask + (size_t)ib * Np : NULL,
                     a0, a1, a2, a3);
        }
        /* softmax over each real row (padded columns hold -1e30 -> exp = 0) */
        int nrows = N - ib < 4 ? N - ib : 4;
        for (int r = 0; r < nrows; r++) {
            float *sr = s0 + (size_t)r * Np;
            vf mx = vload(sr);
            for (int jv = VW; jv < Np; jv += VW)
                mx = vmax(mx, vload(sr + jv));
            vf vmx = vset1(vmaxh(mx));
            vf sum = {0};
            for (int jv = 0; jv < Np; jv += VW) {
                vf ev = vexp(vload(sr + jv) - vmx);
                vstore(sr + jv, ev);
                sum += ev;
            }
            vf inv = vset1(1.0f / vsum(sum));
            for (int jv = 0; jv < Np; jv += VW)
                vstore(sr + jv, vload(sr + jv) * inv);
            if (pp)
                memcpy(pp + (size_t)(ib + r) * N, sr, sizeof(float) * N);
        }
        /* ctx rows = P v */
        float *o[4];
        for (int r = 0; r < 4; r++)
            o[r] = a->ctx + ((size_t)lw * N + ib + (r < nrows ? r : 0)) * C + off;
        if (hd % 8 == 0) {
            int d0 = 0;
#if VW == 16
            for (; d0 + 32 <= hd; d0 += 32)
                pv_4x32z(s0, Np, v, hd, N, d0, o, nrows);
#endif
            for (; d0 < hd; d0 += 8)
                pv_4x8(s0, Np, v, hd, N, d0, o, nrows);
        } else {
            for (int r = 0; r < nrows; r++)
                for (int d = 0; d < hd; d++) {
                    float acc = 0.0f;
                    for (int j = 0; j < N; j++)
                        acc += s0[(size_t)r * Np + j] * v[(size_t)j * hd + d];
                    o[r][d] = acc;
                }
        }
    }
}

static void att_window(void *arg, int lw, int tid)
{
    const Att *a = arg;
    int wi = a->w0 + lw;
    int N = a->N, Nr = a->Nr, Np = a->Np, hd = a->hd, C = a->C, C3 = 3 * a->C;
    Enc *e = a->e;
    float *qa = e->tscr + (size_t)tid * e->tscr_n; /* [heads][Nr][hd] */
    float *kta = qa + (size_t)Nr * C;              /* [C][Np] (head h: rows h*hd..) */
    float *va = kta + (size_t)C * Np;              /* [heads][Np][hd] */
    float *S = va + (size_t)Np * C;                /* [Nr, Np] */
    const float *bq = a->bl->q.b ? a->bl->q.b : e->zero;
    const float *bk = a->bl->k.b ? a->bl->k.b : e->zero;
    const float *bv = a->bl->v.b ? a->bl->v.b : e->zero;
    const float *base = a->qkv + (size_t)lw * N * C3;
    float scale = a->scale;

    /* split the window's q|k|v rows (read sequentially) into per-head blocks */
    for (int i = 0; i < N; i++) {
        const float *row = base + (size_t)i * C3;
        for (int h = 0; h < a->heads; h++) {
            float *qi = qa + ((size_t)h * Nr + i) * hd, *vi_ = va + ((size_t)h * Np + i) * hd;
            const float *rq = row + h * hd, *rv = row + 2 * C + h * hd;
            const float *cq = bq + h * hd, *cv = bv + h * hd;
            for (int d = 0; d < hd; d++) {
                qi[d] = (rq[d] + cq[d]) * scale;
                vi_[d] = rv[d] + cv[d];
            }
        }
    }
    /* k transposed: column-major walk, contiguous stores, reads hit L1 */
    for (int c = 0; c < C; c++) {
        const float *rk = base + C + c;
        float *dst = kta + (size_t)c * Np, bc = bk[c];
        for (int i = 0; i < N; i++)
            dst[i] = rk[(size_t)i * C3] + bc;
    }
    /* rows N..Nr of q and columns N..Np of kt stay zero (set at init) */

    for (int h = 0; h < a->heads; h++)
        att_head(a, wi, lw, h, qa + (size_t)h * Nr * hd, kta + (size_t)h * hd * Np,
                 va + (size_t)h * Np * hd, S);
}

/* ------------------------------------------------------------ MLP phase */

typedef struct Mlp {
    const SwinBlock *bl;
    float *x;   /* rows of the chunk */
    float *t;   /* [R, C] */
    float *hid; /* [R, F] */
    int C, F, rows;
    float eps;
} Mlp;

#define MLP_ROWS_PER_TASK 16

static void mlp_ln(void *arg, int task, int tid)
{
    const Mlp *p = arg;
    int r0 = task * MLP_ROWS_PER_TASK, r1 = r0 + MLP_ROWS_PER_TASK;
    if (r1 > p->rows)
        r1 = p->rows;
    const float *b2 = p->bl->fc2.b;
    for (int r = r0; r < r1; r++) {
        float *xr = p->x + (size_t)r * p->C;
        ln_row(xr, p->C, p->bl->ln_after.g, p->bl->ln_after.b, p->eps, p->t + (size_t)r * p->C);
        if (b2)
            for (int k = 0; k < p->C; k++)
                xr[k] += b2[k];
    }
}

/* ------------------------------------------------------ patch embed/merge */

typedef struct Rows {
    const DonutModel *m;
    const float *src;
    float *dst;
    int r0, rows;
    int H, W;     /* source grid (pixels for patch embed, tokens for merge) */
    int ow;       /* output grid width */
    int C;        /* channels of the source */
    int patch;
    float eps;
} Rows;

static void patch_unfold(void *arg, int task, int tid)
{
    const Rows *r = arg;
    int P = r->patch, C = r->C, K = C * P * P;
    int t = r->r0 + task;
    int py = t / r->ow, px = t % r->ow;
    float *d = r->dst + (size_t)task * K;
    for (int c = 0; c < C; c++)
        for (int ki = 0; ki < P; ki++) {
            int y = py * P + ki;
            for (int kj = 0; kj < P; kj++) {
                int x = px * P + kj;
                d[(c * P + ki) * P + kj] =
                    (y < r->H && x < r->W) ? r->src[((size_t)c * r->H + y) * r->W + x] : 0.0f;
            }
        }
}

static void patch_norm(void *arg, int task, int tid)
{
    const Rows *r = arg;
    const SwinWeights *w = &r->m->enc;
    int E = r->m->cfg.enc.embed_dim;
    float *y = r->dst + (size_t)task * E;
    ln_row(y, E, w->patch_norm.g, w->patch_norm.b, r->eps, y);
}

typedef struct MergeArg {
    const DmNorm *ln;
    const float *x;
    float *dst;
    int H, W, C, ow, r0;
    float eps;
} MergeArg;

static void merge_gather(void *arg, int task, int tid)
{
    const MergeArg *a = arg;
    int t = a->r0 + task, C = a->C;
    int i2 = t / a->ow, j2 = t % a->ow;
    float *d = a->dst + (size_t)task * 4 * C;
    /* order: x(0::2,0::2), x(1::2,0::2), x(0::2,1::2), x(1::2,1::2) */
    static const int dy[4] = {0, 1, 0, 1}, dx[4] = {0, 0, 1, 1};
    for (int q = 0; q < 4; q++) {
        int y = 2 * i2 + dy[q], x = 2 * j2 + dx[q];
        if (y < a->H && x < a->W)
            memcpy(d + q * C, a->x + ((size_t)y * a->W + x) * C, sizeof(float) * C);
        else
            memset(d + q * C, 0, sizeof(float) * C);
    }
    ln_row(d, 4 * C, a->ln->g, a->ln->b, a->eps, d);
}

/* ------------------------------------------------------------------ probe */

static void emit3(const DmProbe *pr, const char *name, int T, int C, const float *x)
{
    int64_t sh[3] = {1, T, C};
    pr->emit(pr->ctx, name, 3, sh, x);
}

/* --------------------------------------------------------------- checks */

/* float32 weights, or bf16 ones once a bf16 model let the float32 go */
static int has_w(const DmLinear *l) { return l->w || l->wbf; }

static int check_model(const DonutModel *m, DmErr *err)
{
    const SwinConfig *c = &m->cfg.enc;
    const SwinWeights *w = &m->enc;
    if (c->nstages < 1 || c->nstages > DM_MAX_STAGES || c->patch < 1 || c->channels < 1 ||
        c->embed_dim < 1 || c->window < 1)
        return dm_err(err, "swin: bad encoder config (stages %d, patch %d, channels %d, embed %d, "
                      "window %d)", c->nstages, c->patch, c->channels, c->embed_dim, c->window);
    if (!w->patch_w || !w->patch_b || !w->patch_norm.g || !w->patch_norm.b)
        return dm_err(err, "swin: patch embedding weights missing");
    for (int s = 0; s < c->nstages; s++) {
        const SwinStage *st = &w->stages[s];
        int C = st->dim;
        if (C != (c->embed_dim << s) || st->heads < 1 || C % st->heads || st->depth < 0 ||
            (st->depth > 0 && !st->blocks))
            return dm_err(err, "swin: stage %d: dim %d / heads %d / depth %d inconsistent", s, C,
                          st->heads, st->depth);
        for (int b = 0; b < st->depth; b++) {
            const SwinBlock *bl = &st->blocks[b];
            if (bl->q.out != C || bl->q.in != C || bl->k.out != C || bl->k.in != C ||
                bl->v.out != C || bl->v.in != C || bl->proj.out != C || bl->proj.in != C ||
                bl->fc1.in != C || bl->fc2.out != C || bl->fc2.in != bl->fc1.out ||
                bl->fc1.out < 1 || !bl->rel_bias || !has_w(&bl->q) || !has_w(&bl->k) ||
                !has_w(&bl->v) || !has_w(&bl->proj) || !has_w(&bl->fc1) || !has_w(&bl->fc2) ||
                !bl->ln_before.g || !bl->ln_after.g)
                return dm_err(err, "swin: stage %d block %d: weight shapes inconsistent with dim %d",
                              s, b, C);
        }
        if (s + 1 < c->nstages &&
            (!st->has_merge || st->merge.in != 4 * C || st->merge.out != 2 * C || !has_w(&st->merge) ||
             !st->merge_norm.g))
            return dm_err(err, "swin: stage %d: patch merging weights missing or mis-shaped", s);
    }
    return 0;
}

/* ------------------------------------------------------- packed weights */

/* The encoder's linears run on kern_gemm with weights packed once per model
 * (and again if the model's precision changes): q, k and v fused into one
 * [3C, C] block kept in q.packed (k.packed and v.packed stay NULL), every
 * other linear in its own .packed.  The blocks join the model's owned
 * buffers (donut_free releases them).  Packing happens on the first encode;
 * the process-wide packing lock makes concurrent first calls pack once. */
/* q|k|v stacked ([3C, C]): from their bf16 copies when all three have one
 * and the model runs in bf16, else from the float32 weights. */
static int pack_qkv(DonutModel *m, SwinBlock *bl, int bf16, DmErr *err)
{
    size_t cc = (size_t)bl->q.out * bl->q.in;
    int from_bf = bf16 && bl->q.wbf && bl->k.wbf && bl->v.wbf;
    const DmLinear *src[3] = {&bl->q, &bl->k, &bl->v};
    for (int i = 0; i < 3; i++)
        if (!from_bf && !src[i]->w)
            return dm_err(err, "swin: q/k/v without float32 or complete bf16 weights");
    float *w = from_bf ? NULL : malloc(3 * cc * sizeof *w);
    uint16_t *wb = from_bf ? malloc(3 * cc * sizeof *wb) : NULL;
    if (!w && !wb)
        return dm_err(err, "swin: out of memory packing q|k|v (%zu weights)", 3 * cc);
    for (int i = 0; i < 3; i++) {
        if (wb)
            memcpy(wb + i * cc, src[i]->wbf, cc * sizeof *wb);
        else
            memcpy(w + i * cc, src[i]->w, cc * sizeof *w);
    }
    DmLinear fused = {.w = w, .wbf = wb, .out = 3 * bl->q.out, .in = bl->q.in};
    donut_unpack_linear(m, &bl->q);
    int rc = donut_pack_linear(m, &fused, bf16, err);
    bl->q.packed = fused.packed;
    for (int i = 0; rc == 0 && i < 3; i++)
        if (src[i]->w)
            donut_drop_pages(m->weights, src[i]->w, cc * sizeof(float));
    free(w);
    free(wb);
    return rc;
}

static int pack_encoder(const DonutModel *cm, DmErr *err)
{
    DonutModel *m = (DonutModel *)cm; /* only the .packed slots change */
    int bf16 = m->precision == DM_PREC_BF16, rc = 0, packed = 0;
    donut_pack_lock();
    for (int s = 0; s < m->cfg.enc.nstages && rc == 0; s++) {
        SwinStage *st = &m->enc.stages[s];
        for (int b = 0; b < st->depth && rc == 0; b++) {
            SwinBlock *bl = &st->blocks[b];
            if (!donut_packed_as(&bl->q, bf16)) {
                rc = pack_qkv(m, bl, bf16, err);
                packed = 1;
            }
            DmLinear *ls[3] = {&bl->proj, &bl->fc1, &bl->fc2};
            for (int i = 0; i < 3 && rc == 0; i++)
                if (!donut_packed_as(ls[i], bf16)) {
                    rc = donut_pack_linear(m, ls[i], bf16, err);
                    packed = 1;
                }
        }
        if (rc == 0 && s + 1 < m->cfg.enc.nstages && !donut_packed_as(&st->merge, bf16)) {
            rc = donut_pack_linear(m, &st->merge, bf16, err);
            packed = 1;
        }
    }
    donut_pack_unlock();
    /* the packing's temporaries (the stacked q|k|v, up to 12 MB at full
     * size) went back to the heap, where they stay resident under the
     * encoder's working memory: hand them to the kernel */
    if (packed)
        malloc_trim(0);
    return rc;
}

/* ----------------------------------------------------------------- encode */

static float *xalloc_f(size_t n)
{
    void *p = NULL;
    if (n == 0)
        n = 1;
    if (posix_memalign(&p, 64, n * sizeof(float)) != 0)
        return NULL;
    return p;
}

static int round_up(int v, int m) { return (v + m - 1) / m * m; }

/* ------------------------------------------------------------- workspace */

/* The working memory of one encode (feature maps, chunk arena, per-thread
 * attention scratch, bias and masks: ~260 MB at the full-size config on a
 * 2560x1920 page, nearly all of it the two feature maps) is one block.
 * Allocated per call, a block that size is a fresh mapping whose every page
 * faults on first touch, page after page; so the model keeps it
 * (DonutModel.enc_ws), grown when a larger page needs more and freed by
 * swin_free_workspace / donut_free.
 *
 * Several threads may encode with one model (swin_encode takes a const
 * model and keeps no other state in it).  The block goes to one call at a
 * time, taken with a compare-and-swap on enc_ws_busy; a call that finds it
 * taken works in a private block freed on return (the old per-call cost)
 * rather than wait, so concurrent encodes still run side by side and never
 * share a buffer.  Every part of the block is written before it is read in
 * each call (the zero vector and the attention scratch are cleared), so
 * what a page leaves behind cannot reach the next. */
enum { WS_NPARTS = 8 };

/* floats of a part, rounded up to 64 bytes */
static size_t ws_part(size_t n) { return (n + 15) / 16 * 16; }

/* 1 when the calling thread took the model's block. */
static int ws_lock(DonutModel *m)
{
    int idle = 0;
    return atomic_compare_exchange_strong_explicit(&m->enc_ws_busy, &idle, 1,
                                                   memory_order_acquire, memory_order_relaxed);
}

/* A block of n floats: the model's (grown to n if smaller; *own = 0) when
 * no other call holds it, else a private one (*own = 1).  NULL when out of
 * memory. */
static float *ws_take(DonutModel *m, size_t n, int *own)
{
    *own = !ws_lock(m);
    if (*own)
        return xalloc_f(n);
    if (m->enc_ws_n < n) {
        free(m->enc_ws);
        m->enc_ws = xalloc_f(n);
        m->enc_ws_n = m->enc_ws ? n : 0;
    }
    if (!m->enc_ws)
        atomic_store_explicit(&m->enc_ws_busy, 0, memory_order_release);
    return m->enc_ws;
}

static void ws_give(DonutModel *m, float *ws, int own)
{
    if (own)
        free(ws);
    else
        atomic_store_explicit(&m->enc_ws_busy, 0, memory_order_release);
}

/* Expand the relative position bias table of one block into [heads, Nr, Np]
 * (padded columns -1e30 so that softmax gives them 0; padded rows 0). */
static void build_bias(const float *table, int heads, int win, int Nr, int Np, float *out)
{
    int N = win * win, span = 2 * win - 1;
    for (int h = 0; h < heads; h++) {
        float *o = out + (size_t)h * Nr * Np;
        for (int i = 0; i < Nr; i++)
            for (int j = 0; j < Np; j++) {
                float v;
                if (i >= N)
                    v = 0.0f;
                else if (j >= N)
                    v = -1e30f;
                else {
                    int yi = i / win, xi = i % win, yj = j / win, xj = j % win;
                    int idx = (yi - yj + win - 1) * span + (xi - xj + win - 1);
                    v = table[(size_t)idx * heads + h];
                }
                o[(size_t)i * Np + j] = v;
            }
    }
}

/* Shift masks for the 4 window kinds (last window row?, last window column?):
 * -100 between tokens of different regions of HF's img_mask, 0 within. */
static void build_masks(int win, int shift, int Nr, int Np, float *out)
{
    int N = win * win;
    for (int type = 0; type < 4; type++) {
        int lr = type >> 1, lc = type & 1;
        float *o = out + (size_t)type * Nr * Np;
        memset(o, 0, sizeof(float) * Nr * Np);
        for (int i = 0; i < N; i++) {
            int ri = lr ? (i / win < win - shift ? 1 : 2) : 0;
            int ci = lc ? (i % win < win - shift ? 1 : 2) : 0;
            for (int j = 0; j < N; j++) {
                int rj = lr ? (j / win < win - shift ? 1 : 2) : 0;
                int cj = lc ? (j % win < win - shift ? 1 : 2) : 0;
                o[(size_t)i * Np + j] = (ri * 3 + ci != rj * 3 + cj) ? -100.0f : 0.0f;
            }
        }
    }
}

int swin_encode(const DonutModel *m, const float *pixels, int H, int W, float *out,
                const DmProbe *probe, DmErr *err)
{
    if (!m || !pixels || !out)
        return dm_err(err, "swin_encode: NULL argument");
    const SwinConfig *c = &m->cfg.enc;
    if (H < 1 || W < 1)
        return dm_err(err, "swin_encode: bad image size %dx%d", H, W);
    if (check_model(m, err) || pack_encoder(m, err))
        return -1;
    if (probe && !probe->emit)
        probe = NULL;

    /* geometry of every stage; HF's set_shift_and_window_size */
    int gh[DM_MAX_STAGES], gw[DM_MAX_STAGES], ws[DM_MAX_STAGES];
    int h = (H + c->patch - 1) / c->patch, w = (W + c->patch - 1) / c->patch;
    for (int s = 0; s < c->nstages; s++) {
        gh[s] = h;
        gw[s] = w;
        int mn = h < w ? h : w;
        ws[s] = mn <= c->window ? mn : c->window;
        if (mn < c->window && m->enc.stages[s].depth > 0)
            return dm_err(err, "swin_encode: image %dx%d gives a %dx%d map at stage %d, smaller "
                          "than window %d (HF cannot run this either)", H, W, h, w, s, c->window);
        h = (h + 1) / 2;
        w = (w + 1) / 2;
    }

    /* scratch sizes */
    size_t xmax[2] = {0, 0}, arena = 0, tscr = 0, biasn = 0; /* maps of even/odd stages */
    int K0 = c->channels * c->patch * c->patch;
    {
        size_t rp = (size_t)ROWS_FLOATS / (K0 > c->embed_dim ? K0 : c->embed_dim) + 1;
        size_t t0 = (size_t)gh[0] * gw[0];
        if (rp > t0)
            rp = t0;
        size_t need = rp * K0;
        arena = need;
    }
    for (int s = 0; s < c->nstages; s++) {
        const SwinStage *st = &m->enc.stages[s];
        int C = st->dim;
        size_t T = (size_t)gh[s] * gw[s];
        if (T * C > xmax[s & 1])
            xmax[s & 1] = T * C;
        int win = ws[s], N = win * win, Nr = round_up(N, 4), Np = round_up(N, VW);
        int Hp = round_up(gh[s], win), Wp = round_up(gw[s], win);
        size_t nW = (size_t)(Hp / win) * (Wp / win);
        size_t G = ROWS_FLOATS / ((size_t)N * C) + 1;
        if (G > nW)
            G = nW;
        size_t att = G * N * (size_t)C * 5;
        size_t F = 0;
        for (int b = 0; b < st->depth; b++)
            if ((size_t)st->blocks[b].fc1.out > F)
                F = st->blocks[b].fc1.out;
        size_t R = ROWS_FLOATS / C + 1;
        if (R > T)
            R = T;
        size_t mlp = R * (C + F);
        size_t mrg = 0;
        if (s + 1 < c->nstages) {
            size_t T2 = (size_t)gh[s + 1] * gw[s + 1];
            size_t R2 = ROWS_FLOATS / (4 * C) + 1;
            if (R2 > T2)
                R2 = T2;
            mrg = R2 * 4 * C;
            if (T2 * 2 * C > xmax[(s + 1) & 1])
                xmax[(s + 1) & 1] = T2 * 2 * C;
        }
        size_t need = att > mlp ? att : mlp;
        if (mrg > need)
            need = mrg;
        if (need > arena)
            arena = need;
        size_t ts = att_scratch_floats(Nr, Np, C);
        if (ts > tscr)
            tscr = ts;
        size_t bn = (size_t)st->heads * Nr * Np;
        if (bn > biasn)
            biasn = bn;
    }
    size_t masks_n = 0;
    for (int s = 0; s < c->nstages; s++) {
        int N = ws[s] * ws[s];
        size_t mn = 4 * (size_t)round_up(N, 4) * round_up(N, VW);
        if (mn > masks_n)
            masks_n = mn;
    }

    Enc e;
    memset(&e, 0, sizeof e);
    e.m = m;
    e.c = c;
    int nth = kern_get_threads();
    nth = nth < 1 ? 1 : nth > POOL_MAX ? POOL_MAX : nth;
    tscr = round_up((int)tscr, 16);
    /* one block, carved in 64-byte aligned parts: [xa | xb | arena | tscr
     * per thread | bias | masks | zero | xbf (bf16 only)] */
    size_t zero_n = (size_t)c->embed_dim << (c->nstages - 1);
    size_t part[WS_NPARTS] = {xmax[0], xmax[1], arena, tscr * (size_t)nth, biasn, masks_n, zero_n,
                              m->precision == DM_PREC_BF16 ? (arena + 1) / 2 : 0};
    size_t total = 0;
    for (int i = 0; i < WS_NPARTS; i++)
        total += ws_part(part[i]);
    int own = 0;
    float *blk = ws_take((DonutModel *)m, total, &own);
    if (!blk)
        return dm_err(err, "swin_encode: out of memory (%zu MB of feature maps and scratch)",
                      total * sizeof(float) >> 20);
    float *p[WS_NPARTS], *at = blk;
    for (int i = 0; i < WS_NPARTS; i++) {
        p[i] = at;
        at += ws_part(part[i]);
    }
    float *xa = p[0], *xb = p[1];
    e.arena = p[2];
    e.arena_n = arena;
    e.tscr = p[3];
    e.tscr_n = tscr;
    e.bias = p[4];
    e.masks = p[5];
    e.zero = p[6];
    memset(e.zero, 0, zero_n * sizeof(float));
    e.xbf = m->precision == DM_PREC_BF16 ? (uint16_t *)p[7] : NULL;
    pool_init(&e.pool, nth);
    int rc = 0;

    /* ---- patch embedding: unfold + GEMM (+ bias) + LayerNorm; its small
     * [embed, channels*patch^2] weight is packed per call, in float32 */
    void *patch_pk = NULL;
    rc = kern_gemm_pack(m->enc.patch_w, NULL, c->embed_dim, K0, 0, &patch_pk, err);
    if (rc == 0) {
        int E = c->embed_dim, T0 = gh[0] * gw[0];
        int rp = (int)(e.arena_n / K0);
        for (int r0 = 0; r0 < T0 && rc == 0; r0 += rp) {
            int rows = T0 - r0 < rp ? T0 - r0 : rp;
            Rows ra = {.m = m, .src = pixels, .dst = e.arena, .r0 = r0, .rows = rows, .H = H,
                       .W = W, .ow = gw[0], .C = c->channels, .patch = c->patch, .eps = c->ln_eps};
            pool_for(&e.pool, rows, patch_unfold, &ra);
            float *y = xa + (size_t)r0 * E;
            rc = kern_gemm_run(patch_pk, e.arena, rows, K0, m->enc.patch_b, 0, y, E, NULL, err);
            ra.dst = y;
            if (rc == 0)
                pool_for(&e.pool, rows, patch_norm, &ra);
        }
        free(patch_pk);
        if (rc == 0 && probe)
            emit3(probe, "encoder.hidden_states.0", T0, E, xa);
    }

    float *x = xa, *xn = xb;
    for (int s = 0; s < c->nstages && rc == 0; s++) {
        const SwinStage *st = &m->enc.stages[s];
        int C = st->dim, Hs = gh[s], Wsz = gw[s], T = Hs * Wsz;
        int win = ws[s], N = win * win, Nr = round_up(N, 4), Np = round_up(N, VW);
        int Hp = round_up(Hs, win), Wp = round_up(Wsz, win);
        int nWh = Hp / win, nWw = Wp / win, nW = nWh * nWw;
        int heads = st->heads, hd = C / heads;
        int mn = Hs < Wsz ? Hs : Wsz;
        int sh_odd = mn <= c->window ? 0 : c->window / 2;
        int G = (int)(ROWS_FLOATS / ((size_t)N * C)) + 1;
        if (G > nW)
            G = nW;

        /* zero the per-thread scratch (pads must stay 0) */
        memset(e.tscr, 0, sizeof(float) * e.tscr_n * e.pool.n);
        int use_shift = 0;
        if (sh_odd > 0)
            build_masks(win, sh_odd, Nr, Np, e.masks);

        for (int b = 0; b < st->depth && rc == 0; b++) {
            const SwinBlock *bl = &st->blocks[b];
            int shift = (b % 2 == 1) ? sh_odd : 0;
            use_shift = shift > 0;
            int want_probs = probe && b == st->depth - 1;
            float *probs = NULL;
            if (want_probs) {
                probs = xalloc_f((size_t)nW * heads * N * N);
                if (!probs) {
                    rc = dm_err(err, "swin_encode: out of memory (attention probabilities)");
                    break;
                }
            }
            e.probs = probs;
            build_bias(bl->rel_bias, heads, c->window, Nr, Np, e.bias);
            /* the relative position index is built for the configured window;
             * ws[s] differs from it only when min(H, W) == window, i.e.
             * never smaller (rejected above) */

            Att a = {.e = &e, .bl = bl, .x = x, .xo = x, .H = Hs, .W = Wsz, .C = C,
                     .heads = heads, .hd = hd, .win = win, .shift = shift, .Hp = Hp, .Wp = Wp,
                     .nWh = nWh, .nWw = nWw, .N = N, .Nr = Nr, .Np = Np, .eps = c->ln_eps,
                     .use_mask = use_shift, .scale = 1.0f / sqrtf((float)hd)};
            a.xw = e.arena;
            a.qkv = a.xw + (size_t)G * N * C;
            a.ctx = a.qkv + (size_t)G * N * 3 * C;
            for (int w0 = 0; w0 < nW; w0 += G) {
                int g = nW - w0 < G ? nW - w0 : G;
                int rows = g * N;
                a.w0 = w0;
                PROF(PR_GATHER, pool_for(&e.pool, g, att_gather, &a));
                PROF(PR_QKV, rc = kern_gemm_run(bl->q.packed, a.xw, rows, C, NULL, 0, a.qkv,
                                                3 * C, e.xbf, err));
                if (rc)
                    break;
                PROF(PR_ATT, pool_for(&e.pool, g, att_window, &a));
                PROF(PR_PROJ, rc = kern_gemm_run(bl->proj.packed, a.ctx, rows, C, bl->proj.b, 0,
                                                 a.xw, C, e.xbf, err));
                if (rc)
                    break;
                PROF(PR_SCAT, pool_for(&e.pool, g, att_scatter, &a));
            }

            /* MLP */
            int F = bl->fc1.out;
            int R = (int)(ROWS_FLOATS / C) + 1;
            if (R > T)
                R = T;
            for (int r0 = 0; r0 < T && rc == 0; r0 += R) {
                int rows = T - r0 < R ? T - r0 : R;
                Mlp p = {.bl = bl, .x = x + (size_t)r0 * C, .t = e.arena,
                         .hid = e.arena + (size_t)R * C, .C = C, .F = F, .rows = rows,
                         .eps = c->ln_eps};
                int tasks = (rows + MLP_ROWS_PER_TASK - 1) / MLP_ROWS_PER_TASK;
                PROF(PR_LN, pool_for(&e.pool, tasks, mlp_ln, &p));
                PROF(PR_FC1, rc = kern_gemm_run(bl->fc1.packed, p.t, rows, C, bl->fc1.b, KG_GELU,
                                                p.hid, F, e.xbf, err));
                if (rc == 0)
                    PROF(PR_FC2, rc = kern_gemm_run(bl->fc2.packed, p.hid, rows, F, NULL, KG_ACC,
                                                    p.x, C, e.xbf, err));
            }

            if (want_probs) {
                char nm[64];
                snprintf(nm, sizeof nm, "encoder.attentions.%d", s);
                int64_t shp[4] = {nW, heads, N, N};
                probe->emit(probe->ctx, nm, 4, shp, probs);
                free(probs);
                e.probs = NULL;
            }
        }
        if (rc)
            break;
        char nm[64];
        if (probe) {
            snprintf(nm, sizeof nm, "encoder.stage_outputs_before_downsampling.%d", s);
            emit3(probe, nm, T, C, x);
        }
        if (s + 1 < c->nstages) {
            int H2 = gh[s + 1], W2 = gw[s + 1], T2 = H2 * W2, K = 4 * C;
            int R2 = (int)(e.arena_n / K);
            for (int r0 = 0; r0 < T2 && rc == 0; r0 += R2) {
                int rows = T2 - r0 < R2 ? T2 - r0 : R2;
                MergeArg ma = {.ln = &st->merge_norm, .x = x, .dst = e.arena, .H = Hs, .W = Wsz,
                               .C = C, .ow = W2, .r0 = r0, .eps = c->ln_eps};
                pool_for(&e.pool, rows, merge_gather, &ma);
                rc = kern_gemm_run(st->merge.packed, e.arena, rows, K, NULL, 0,
                                   xn + (size_t)r0 * 2 * C, 2 * C, e.xbf, err);
            }
            if (rc)
                break;
            float *tmp = x;
            x = xn;
            xn = tmp;
            if (probe) {
                snprintf(nm, sizeof nm, "encoder.hidden_states.%d", s + 1);
                emit3(probe, nm, T2, 2 * C, x);
            }
        } else {
            if (probe) {
                snprintf(nm, sizeof nm, "encoder.hidden_states.%d", s + 1);
                emit3(probe, nm, T, C, x);
                emit3(probe, "encoder.last_hidden_state", T, C, x);
            }
            memcpy(out, x, sizeof(float) * T * C);
        }
    }

#ifdef SWIN_PROF
    for (int k = 0; k < PR_N; k++)
        fprintf(stderr, "swin %-9s %8.3f s\n", s_prof_name[k], s_prof[k]);
#endif
    ws_give((DonutModel *)m, blk, own);
    return rc;
}

void swin_free_workspace(const DonutModel *cm)
{
    DonutModel *m = (DonutModel *)cm; /* only the workspace slots change */
    if (!m || !ws_lock(m)) /* an encode holds it: it stays */
        return;
    free(m->enc_ws);
    m->enc_ws = NULL;
    m->enc_ws_n = 0;
    atomic_store_explicit(&m->enc_ws_busy, 0, memory_order_release);
}
