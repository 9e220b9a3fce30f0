/* swin_grad.c - the Swin encoder's training forward (with a tape) and its
 * backward (swin_grad.h).
 *
 * The forward follows worker/model/swin.c and HF's DonutSwin operation by
 * operation, over whole feature maps x [H*W, C] instead of chunks:
 *   patch embedding  unfold the pixels into U [T0, c*p*p] (zeros past the
 *                    image), y = U Wp^T + b, LayerNorm;
 *   each block       LayerNorm, windows gathered from the padded, cyclically
 *                    shifted map into xw [nW*N, C] (padded tokens are zero
 *                    rows, which still act as keys and values through the
 *                    biases, as in HF), q|k|v linears, per window and head
 *                    softmax(scale q k^T + B + mask) v, the output linear
 *                    scattered back onto the real tokens (the residual);
 *                    then LayerNorm, fc1, GELU, fc2 (the second residual);
 *   patch merging    the 2x2 neighbours concatenated (zero past an odd edge),
 *                    LayerNorm(4C), a linear to 2C without bias.
 * The backward runs the same steps in reverse.  The relative position
 * bias B[h][i][j] = table[idx(i, j)][h] with idx the relative position
 * index, so its gradient is the scores' gradient summed into the table
 * through idx (per window, then the windows in order: the same bits
 * whatever the threads).
 * The gradient of a padded token's LayerNorm output is dropped (it is a
 * constant zero), the map's real tokens each sit in exactly one window. */
#include "worker/train/swin_grad.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/kern.h"

/* ------------------------------------------------------------- geometry */

typedef struct Geo {
    int H, W, T, C, F, heads, hd;
    int win, shift, Hp, Wp, nWh, nWw, nW, N, M; /* M = nW * N window rows */
} Geo;

/* Activations of one block kept for the backward. */
typedef struct BlockAct {
    float *xhat1, *rstd1; /* layernorm_before: normalised input, 1/std per token */
    float *q, *k, *v;     /* [M, C], biases added, q not scaled */
    float *P;             /* [nW, heads, N, N] */
    float *ctx;           /* [M, C] */
    float *xhat2, *rstd2; /* layernorm_after */
    float *a1;            /* fc1 output before GELU [T, F] */
} BlockAct;

struct SwinTape {
    SwinKeep keep;
    int H, W, nstages;
    Geo g[DM_MAX_STAGES];
    float *U, *xhat0, *rstd0;        /* patch embedding */
    float **xin[DM_MAX_STAGES];      /* block inputs [T, C] per stage and block */
    BlockAct *act[DM_MAX_STAGES];    /* per block (KEEP_ALL), else NULL */
    float *mxhat[DM_MAX_STAGES], *mrstd[DM_MAX_STAGES]; /* merge LayerNorm */
};

static int s_round_up(int v, int m) { return (v + m - 1) / m * m; }

/* The geometry of every stage, as swin_encode and HF's
 * set_shift_and_window_size; -1 when the page is too small. */
static int s_geometry(const DonutModel *m, int H, int W, Geo *g, DmErr *err)
{
    const SwinConfig *c = &m->cfg.enc;
    int h = (H + c->patch - 1) / c->patch, w = (W + c->patch - 1) / c->patch;
    for (int s = 0; s < c->nstages; s++) {
        const SwinStage *st = &m->enc.stages[s];
        Geo *e = &g[s];
        memset(e, 0, sizeof *e);
        e->H = h;
        e->W = w;
        e->T = h * w;
        e->C = st->dim;
        e->heads = st->heads;
        e->hd = st->dim / st->heads;
        e->F = st->depth > 0 ? st->blocks[0].fc1.out : 0;
        int mn = h < w ? h : w;
        if (mn < c->window && st->depth > 0)
            return dm_err(err, "swin: image %dx%d gives a %dx%d map at stage %d, smaller than "
                          "window %d", H, W, h, w, s, c->window);
        e->win = mn <= c->window ? mn : c->window;
        e->shift = mn <= c->window ? 0 : c->window / 2;
        e->Hp = s_round_up(h, e->win);
        e->Wp = s_round_up(w, e->win);
        e->nWh = e->Hp / e->win;
        e->nWw = e->Wp / e->win;
        e->nW = e->nWh * e->nWw;
        e->N = e->win * e->win;
        e->M = e->nW * e->N;
        h = (h + 1) / 2;
        w = (w + 1) / 2;
    }
    return 0;
}

/* Map position of token i of window wi (shift applies in odd blocks), or
 * -1 for a padded token. */
static int s_src(const Geo *g, int shift, int wi, int i)
{
    int r = (wi / g->nWw) * g->win + i / g->win, c = (wi % g->nWw) * g->win + i % g->win;
    r += shift;
    c += shift;
    if (r >= g->Hp)
        r -= g->Hp;
    if (c >= g->Wp)
        c -= g->Wp;
    return r >= g->H || c >= g->W ? -1 : r * g->W + c;
}

/* Relative position bias plus shift mask of head h in window wi: [N, N]. */
static void s_bias(const Geo *g, int shift, int wi, const float *table, int h, float *B)
{
    int win = g->win, N = g->N, span = 2 * win - 1;
    int lr = shift && wi / g->nWw == g->nWh - 1, lc = shift && wi % g->nWw == g->nWw - 1;
    for (int i = 0; i < N; i++) {
        int yi = i / win, xi = i % win;
        int ri = lr ? (yi < win - shift ? 1 : 2) : 0, ci = lc ? (xi < win - shift ? 1 : 2) : 0;
        for (int j = 0; j < N; j++) {
            int yj = j / win, xj = j % win;
            int idx = (yi - yj + win - 1) * span + (xi - xj + win - 1);
            int rj = lr ? (yj < win - shift ? 1 : 2) : 0, cj = lc ? (xj < win - shift ? 1 : 2) : 0;
            B[(size_t)i * N + j] = table[(size_t)idx * g->heads + h] +
                                   (ri * 3 + ci != rj * 3 + cj ? -100.0f : 0.0f);
        }
    }
}

/* LayerNorm forward keeping xhat and rstd; y = xhat * g + b (y may be
 * NULL, or alias x). */
static void s_ln_fwd(const float *x, int rows, int n, const DmNorm *nm, float eps, float *xhat,
                     float *rstd, float *y)
{
#pragma omp parallel for schedule(static) num_threads(kern_get_threads()) if (rows > 64)
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        float *xh = xhat + (size_t)r * n;
        double mean = 0.0, var = 0.0;
        for (int i = 0; i < n; i++)
            mean += xr[i];
        mean /= n;
        for (int i = 0; i < n; i++)
            var += (xr[i] - mean) * (xr[i] - mean);
        var /= n;
        float inv = (float)(1.0 / sqrt(var + eps)), fm = (float)mean;
        rstd[r] = inv;
        for (int i = 0; i < n; i++)
            xh[i] = (xr[i] - fm) * inv;
        if (y)
            for (int i = 0; i < n; i++)
                y[(size_t)r * n + i] = xh[i] * nm->g[i] + nm->b[i];
    }
}

/* ---------------------------------------------------------------- helpers */

static float *s_g(const TrainParams *tp, const float *w)
{
    return w ? tp->grad + (w - tp->data) : NULL;
}

static int s_in(const TrainParams *tp, const float *w)
{
    return w >= tp->data && w < tp->data + tp->total;
}

/* Backward of y = x W^T (+ b) over R rows: dW += dy^T x, db += colsum dy,
 * dx = or += dy W (when dx). */
static void s_linear_bwd(const DmLinear *l, const TrainParams *tp, const float *x, const float *dy,
                         int R, float *dx, float beta)
{
    kern_gemm_tn(l->out, l->in, R, 1.0f, dy, l->out, x, l->in, 1.0f, s_g(tp, l->w), l->in);
    float *db = s_g(tp, l->b);
    if (db)
        for (int r = 0; r < R; r++)
            kern_add(db, dy + (size_t)r * l->out, (size_t)l->out);
    if (dx)
        kern_gemm_nn(R, l->in, l->out, 1.0f, dy, l->out, l->w, l->in, beta, dx, l->in);
}

/* d/dx [x Phi(x)] = Phi(x) + x phi(x), the exact GELU's derivative */
static inline float s_gelu_grad(float x)
{
    return 0.5f * (1.0f + erff(x * (float)M_SQRT1_2)) + x * expf(-0.5f * x * x) * 0.39894228f;
}

static float *s_new(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

static void s_act_free(BlockAct *a)
{
    float *p[] = {a->xhat1, a->rstd1, a->q, a->k, a->v, a->P, a->ctx, a->xhat2, a->rstd2, a->a1};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++)
        free(p[i]);
    memset(a, 0, sizeof *a);
}

static int s_act_alloc(const Geo *g, BlockAct *a)
{
    size_t TC = (size_t)g->T * g->C, MC = (size_t)g->M * g->C;
    a->xhat1 = s_new(TC);
    a->rstd1 = s_new(g->T);
    a->q = s_new(MC);
    a->k = s_new(MC);
    a->v = s_new(MC);
    a->P = s_new((size_t)g->nW * g->heads * g->N * g->N);
    a->ctx = s_new(MC);
    a->xhat2 = s_new(TC);
    a->rstd2 = s_new(g->T);
    a->a1 = s_new((size_t)g->T * g->F);
    if (!a->xhat1 || !a->rstd1 || !a->q || !a->k || !a->v || !a->P || !a->ctx || !a->xhat2 ||
        !a->rstd2 || !a->a1) {
        s_act_free(a);
        return -1;
    }
    return 0;
}

static size_t s_act_floats(const Geo *g)
{
    return 2 * (size_t)g->T * g->C + 2 * (size_t)g->T + 4 * (size_t)g->M * g->C +
           (size_t)g->nW * g->heads * g->N * g->N + (size_t)g->T * g->F;
}

/* The LayerNorm output of the window rows, from the kept xhat1. */
static void s_gather_ln(const Geo *g, int shift, const DmNorm *ln, const float *xhat, float *xw)
{
    int C = g->C;
#pragma omp parallel for schedule(static) num_threads(kern_get_threads())
    for (int wi = 0; wi < g->nW; wi++)
        for (int i = 0; i < g->N; i++) {
            float *d = xw + ((size_t)wi * g->N + i) * C;
            int src = s_src(g, shift, wi, i);
            if (src < 0) {
                memset(d, 0, sizeof(float) * C);
                continue;
            }
            const float *xh = xhat + (size_t)src * C;
            for (int k = 0; k < C; k++)
                d[k] = xh[k] * ln->g[k] + ln->b[k];
        }
}

/* ------------------------------------------------------------ block pass */

/* One block on x [T, C] in place, its activations into a. */
static int s_block_fwd(const Geo *g, int shift, const SwinBlock *bl, float eps, float *x,
                       BlockAct *a)
{
    int T = g->T, C = g->C, M = g->M, N = g->N, F = g->F, hd = g->hd;
    float *xw = s_new((size_t)M * C), *t = s_new((size_t)T * (C > F ? C : F));
    float *gl = s_new((size_t)T * F);
    if (!xw || !t || !gl) {
        free(xw);
        free(t);
        free(gl);
        return -1;
    }
    s_ln_fwd(x, T, C, &bl->ln_before, eps, a->xhat1, a->rstd1, NULL);
    s_gather_ln(g, shift, &bl->ln_before, a->xhat1, xw);
    kern_linear(xw, M, C, bl->q.w, bl->q.b, C, a->q);
    kern_linear(xw, M, C, bl->k.w, bl->k.b, C, a->k);
    kern_linear(xw, M, C, bl->v.w, bl->v.b, C, a->v);
    float scale = 1.0f / sqrtf((float)hd);
    int nt = kern_get_threads();
    float *bias = s_new((size_t)nt * N * N);
    if (!bias) {
        free(xw);
        free(t);
        free(gl);
        return -1;
    }
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int wi = 0; wi < g->nW; wi++) {
        float *B = bias + (size_t)omp_get_thread_num() * N * N;
        for (int h = 0; h < g->heads; h++) {
            size_t o = (size_t)wi * N * C + (size_t)h * hd;
            s_bias(g, shift, wi, bl->rel_bias, h, B);
            swin_attn_head_fwd(N, hd, C, scale, a->q + o, a->k + o, a->v + o, B,
                               a->P + ((size_t)wi * g->heads + h) * N * N, a->ctx + o);
        }
    }
    free(bias);
    /* output linear into xw (free now), scattered onto the real tokens */
    kern_linear(a->ctx, M, C, bl->proj.w, bl->proj.b, C, xw);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int wi = 0; wi < g->nW; wi++)
        for (int i = 0; i < N; i++) {
            int src = s_src(g, shift, wi, i);
            if (src >= 0)
                kern_add(x + (size_t)src * C, xw + ((size_t)wi * N + i) * C, (size_t)C);
        }
    /* MLP */
    s_ln_fwd(x, T, C, &bl->ln_after, eps, a->xhat2, a->rstd2, t);
    kern_linear(t, T, C, bl->fc1.w, bl->fc1.b, F, a->a1);
    memcpy(gl, a->a1, (size_t)T * F * sizeof(float));
    kern_gelu(gl, (size_t)T * F);
    kern_linear(gl, T, F, bl->fc2.w, bl->fc2.b, C, t);
    kern_add(x, t, (size_t)T * C);
    free(xw);
    free(t);
    free(gl);
    return 0;
}

/* Backward of one block: dx [T, C] holds d loss / d output on entry and
 * d loss / d input on return. */
static int s_block_bwd(const Geo *g, int shift, const SwinBlock *bl, const BlockAct *a,
                       const TrainParams *tp, float *dx)
{
    int T = g->T, C = g->C, M = g->M, N = g->N, F = g->F, hd = g->hd, nt = kern_get_threads();
    int span = 2 * g->win - 1, nrel = span * span;
    size_t TF = (size_t)T * F, MC = (size_t)M * C;
    float *gl = s_new(TF), *dg = s_new(TF), *t = s_new((size_t)T * C), *dt = s_new((size_t)T * C);
    float *xw = s_new(MC), *dy = s_new(MC), *dctx = s_new(MC), *dq = s_new(MC), *dk = s_new(MC);
    /* per thread dS [N, N]; per window its own table gradient, summed in
     * window order afterwards, so the result does not depend on which
     * thread took which window */
    float *dv = s_new(MC), *scr = s_new((size_t)nt * N * N),
          *wtab = s_new((size_t)g->nW * nrel * g->heads);
    int rc = -1;
    if (!gl || !dg || !t || !dt || !xw || !dy || !dctx || !dq || !dk || !dv || !scr || !wtab)
        goto done;
    /* ---- MLP: x2 = x1 + fc2(gelu(fc1(ln_after(x1)))) */
    memcpy(gl, a->a1, TF * sizeof(float));
    kern_gelu(gl, TF);
    s_linear_bwd(&bl->fc2, tp, gl, dx, T, dg, 0.0f);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (size_t i = 0; i < TF; i++)
        dg[i] *= s_gelu_grad(a->a1[i]);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int r = 0; r < T; r++)
        for (int k = 0; k < C; k++)
            t[(size_t)r * C + k] =
                a->xhat2[(size_t)r * C + k] * bl->ln_after.g[k] + bl->ln_after.b[k];
    s_linear_bwd(&bl->fc1, tp, t, dg, T, dt, 0.0f);
    swin_ln_bwd(dt, T, C, bl->ln_after.g, a->xhat2, a->rstd2, s_g(tp, bl->ln_after.g),
                s_g(tp, bl->ln_after.b), dx);
    /* ---- attention: x1 = x + scatter(proj(attn(gather(ln_before(x))))) */
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int wi = 0; wi < g->nW; wi++)
        for (int i = 0; i < N; i++) {
            int src = s_src(g, shift, wi, i);
            float *d = dy + ((size_t)wi * N + i) * C;
            if (src >= 0)
                memcpy(d, dx + (size_t)src * C, sizeof(float) * C);
            else
                memset(d, 0, sizeof(float) * C);
        }
    s_linear_bwd(&bl->proj, tp, a->ctx, dy, M, dctx, 0.0f);
    float scale = 1.0f / sqrtf((float)hd);
    size_t per = (size_t)nrel * g->heads;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int wi = 0; wi < g->nW; wi++) {
        float *dS = scr + (size_t)omp_get_thread_num() * N * N;
        float *dtab = wtab + (size_t)wi * per;
        int win = g->win;
        for (int h = 0; h < g->heads; h++) {
            size_t o = (size_t)wi * N * C + (size_t)h * hd;
            swin_attn_head_bwd(N, hd, C, scale, a->q + o, a->k + o, a->v + o,
                               a->P + ((size_t)wi * g->heads + h) * N * N, dctx + o, dq + o,
                               dk + o, dv + o, dS);
            for (int i = 0; i < N; i++)
                for (int j = 0; j < N; j++) {
                    int idx = (i / win - j / win + win - 1) * span + (i % win - j % win + win - 1);
                    dtab[(size_t)idx * g->heads + h] += dS[(size_t)i * N + j];
                }
        }
    }
    float *gtab = s_g(tp, bl->rel_bias);
    for (int wi = 0; wi < g->nW; wi++)
        kern_add(gtab, wtab + (size_t)wi * per, per);
    s_gather_ln(g, shift, &bl->ln_before, a->xhat1, xw);
    /* dxw (into dy) = dq Wq + dk Wk + dv Wv */
    s_linear_bwd(&bl->q, tp, xw, dq, M, dy, 0.0f);
    s_linear_bwd(&bl->k, tp, xw, dk, M, dy, 1.0f);
    s_linear_bwd(&bl->v, tp, xw, dv, M, dy, 1.0f);
    memset(dt, 0, (size_t)T * C * sizeof(float));
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int wi = 0; wi < g->nW; wi++)
        for (int i = 0; i < N; i++) {
            int src = s_src(g, shift, wi, i);
            if (src >= 0)
                memcpy(dt + (size_t)src * C, dy + ((size_t)wi * N + i) * C, sizeof(float) * C);
        }
    swin_ln_bwd(dt, T, C, bl->ln_before.g, a->xhat1, a->rstd1, s_g(tp, bl->ln_before.g),
                s_g(tp, bl->ln_before.b), dx);
    rc = 0;
done:
    free(gl);
    free(dg);
    free(t);
    free(dt);
    free(xw);
    free(dy);
    free(dctx);
    free(dq);
    free(dk);
    free(dv);
    free(scr);
    free(wtab);
    return rc;
}

/* ------------------------------------------------------ patch and merge */

static void s_merge_gather(const Geo *g, const float *x, float *xm, int T2, int W2)
{
    int C = g->C;
    static const int dy[4] = {0, 1, 0, 1}, dxo[4] = {0, 0, 1, 1};
#pragma omp parallel for schedule(static) num_threads(kern_get_threads())
    for (int t = 0; t < T2; t++) {
        int i2 = t / W2, j2 = t % W2;
        float *d = xm + (size_t)t * 4 * C;
        for (int q = 0; q < 4; q++) {
            int y = 2 * i2 + dy[q], xx = 2 * j2 + dxo[q];
            if (y < g->H && xx < g->W)
                memcpy(d + q * C, x + ((size_t)y * g->W + xx) * C, sizeof(float) * C);
            else
                memset(d + q * C, 0, sizeof(float) * C);
        }
    }
}

static void s_merge_scatter(const Geo *g, const float *dxm, float *dx, int T2, int W2)
{
    int C = g->C;
    static const int dy[4] = {0, 1, 0, 1}, dxo[4] = {0, 0, 1, 1};
#pragma omp parallel for schedule(static) num_threads(kern_get_threads())
    for (int t = 0; t < T2; t++) {
        int i2 = t / W2, j2 = t % W2;
        for (int q = 0; q < 4; q++) {
            int y = 2 * i2 + dy[q], xx = 2 * j2 + dxo[q];
            if (y < g->H && xx < g->W)
                kern_add(dx + ((size_t)y * g->W + xx) * C, dxm + (size_t)t * 4 * C + q * C,
                         (size_t)C);
        }
    }
}

/* ------------------------------------------------------------ the tape */

void swin_tape_free(SwinTape **pt)
{
    SwinTape *t = pt ? *pt : NULL;
    if (!t)
        return;
    free(t->U);
    free(t->xhat0);
    free(t->rstd0);
    for (int s = 0; s < t->nstages; s++) {
        if (t->xin[s]) {
            for (int b = 0; b < DM_MAX_LAYERS && t->xin[s][b]; b++)
                free(t->xin[s][b]);
            free(t->xin[s]);
        }
        if (t->act[s]) {
            for (int b = 0; b < DM_MAX_LAYERS && t->act[s][b].xhat1; b++)
                s_act_free(&t->act[s][b]);
            free(t->act[s]);
        }
        free(t->mxhat[s]);
        free(t->mrstd[s]);
    }
    free(t);
    *pt = NULL;
}

size_t swin_tape_bytes(const SwinConfig *c, int H, int W, SwinKeep keep)
{
    /* the geometry without a model: the config's dims and heads */
    size_t n = 0, act_max = 0;
    int h = (H + c->patch - 1) / c->patch, w = (W + c->patch - 1) / c->patch;
    n += (size_t)h * w * ((size_t)c->channels * c->patch * c->patch + c->embed_dim + 1);
    for (int s = 0; s < c->nstages; s++) {
        Geo g = {0};
        int mn = h < w ? h : w;
        g.T = h * w;
        g.C = c->embed_dim << s;
        g.heads = c->heads[s];
        g.F = (int)(g.C * c->mlp_ratio);
        g.win = mn <= c->window ? mn : c->window;
        if (g.win < 1)
            g.win = 1;
        g.nW = (s_round_up(h, g.win) / g.win) * (s_round_up(w, g.win) / g.win);
        g.N = g.win * g.win;
        g.M = g.nW * g.N;
        size_t a = s_act_floats(&g);
        n += (size_t)c->depths[s] * g.T * g.C;
        if (keep == SWIN_KEEP_ALL)
            n += (size_t)c->depths[s] * a;
        if (a > act_max)
            act_max = a;
        h = (h + 1) / 2;
        w = (w + 1) / 2;
        if (s + 1 < c->nstages)
            n += (size_t)h * w * (4 * (size_t)g.C + 1);
    }
    if (keep == SWIN_KEEP_INPUTS)
        n += act_max;
    return n * sizeof(float);
}

int swin_tape_forward(const DonutModel *m, const float *pixels, int H, int W, SwinKeep keep,
                      float *out, SwinTape **tape, DmErr *err)
{
    const SwinConfig *c = &m->cfg.enc;
    const SwinWeights *wt = &m->enc;
    *tape = NULL;
    if (c->nstages < 1 || c->nstages > DM_MAX_STAGES)
        return dm_err(err, "swin: bad encoder config (%d stages)", c->nstages);
    for (int s = 0; s < c->nstages; s++)
        if (c->depths[s] > DM_MAX_LAYERS)
            return dm_err(err, "swin: stage %d has %d blocks (at most %d)", s, c->depths[s],
                          DM_MAX_LAYERS);
    SwinTape *t = calloc(1, sizeof *t);
    if (!t)
        return dm_err(err, "swin: out of memory for the training tape");
    t->keep = keep;
    t->H = H;
    t->W = W;
    t->nstages = c->nstages;
    float *x = NULL, *xn = NULL;
    if (s_geometry(m, H, W, t->g, err)) {
        swin_tape_free(&t);
        return -1;
    }
    int P = c->patch, K0 = c->channels * P * P, E = c->embed_dim;
    Geo *g0 = &t->g[0];
    int T0 = g0->T;
    t->U = s_new((size_t)T0 * K0);
    t->xhat0 = s_new((size_t)T0 * E);
    t->rstd0 = s_new(T0);
    x = s_new((size_t)T0 * E);
    if (!t->U || !t->xhat0 || !t->rstd0 || !x)
        goto oom;
    /* ---- patch embedding */
#pragma omp parallel for schedule(static) num_threads(kern_get_threads())
    for (int r = 0; r < T0; r++) {
        int py = r / g0->W, px = r % g0->W;
        float *d = t->U + (size_t)r * K0;
        for (int ch = 0; ch < c->channels; ch++)
            for (int ki = 0; ki < P; ki++)
                for (int kj = 0; kj < P; kj++) {
                    int y = py * P + ki, xx = px * P + kj;
                    d[(ch * P + ki) * P + kj] =
                        y < H && xx < W ? pixels[((size_t)ch * H + y) * W + xx] : 0.0f;
                }
    }
    kern_linear(t->U, T0, K0, wt->patch_w, wt->patch_b, E, x);
    s_ln_fwd(x, T0, E, &wt->patch_norm, c->ln_eps, t->xhat0, t->rstd0, x);
    /* ---- stages */
    for (int s = 0; s < c->nstages; s++) {
        const SwinStage *st = &wt->stages[s];
        const Geo *g = &t->g[s];
        t->xin[s] = calloc((size_t)st->depth + 1, sizeof *t->xin[s]);
        if (keep == SWIN_KEEP_ALL)
            t->act[s] = calloc((size_t)st->depth + 1, sizeof *t->act[s]);
        if (!t->xin[s] || (keep == SWIN_KEEP_ALL && !t->act[s]))
            goto oom;
        for (int b = 0; b < st->depth; b++) {
            int shift = b % 2 ? g->shift : 0;
            t->xin[s][b] = s_new((size_t)g->T * g->C);
            if (!t->xin[s][b])
                goto oom;
            memcpy(t->xin[s][b], x, (size_t)g->T * g->C * sizeof(float));
            BlockAct tmp = {0}, *a = keep == SWIN_KEEP_ALL ? &t->act[s][b] : &tmp;
            if (s_act_alloc(g, a))
                goto oom;
            int rc = s_block_fwd(g, shift, &st->blocks[b], c->ln_eps, x, a);
            if (a == &tmp)
                s_act_free(&tmp);
            if (rc)
                goto oom;
        }
        if (s + 1 < c->nstages) {
            const Geo *g2 = &t->g[s + 1];
            int T2 = g2->T, K = 4 * g->C;
            float *xm = s_new((size_t)T2 * K);
            xn = s_new((size_t)T2 * 2 * g->C);
            t->mxhat[s] = s_new((size_t)T2 * K);
            t->mrstd[s] = s_new(T2);
            if (!xm || !xn || !t->mxhat[s] || !t->mrstd[s]) {
                free(xm);
                goto oom;
            }
            s_merge_gather(g, x, xm, T2, g2->W);
            s_ln_fwd(xm, T2, K, &st->merge_norm, c->ln_eps, t->mxhat[s], t->mrstd[s], xm);
            kern_linear(xm, T2, K, st->merge.w, NULL, 2 * g->C, xn);
            free(xm);
            free(x);
            x = xn;
            xn = NULL;
        }
    }
    const Geo *gl = &t->g[c->nstages - 1];
    memcpy(out, x, (size_t)gl->T * gl->C * sizeof(float));
    free(x);
    *tape = t;
    return 0;
oom:
    free(x);
    free(xn);
    swin_tape_free(&t);
    return dm_err(err, "swin: out of memory for the training tape of a %dx%d page (%zu MB)", H,
                  W, swin_tape_bytes(c, H, W, keep) >> 20);
}

int swin_tape_backward(const DonutModel *m, SwinTape *t, const float *dout, TrainParams *tp,
                       float *dpix, DmErr *err)
{
    const SwinConfig *c = &m->cfg.enc;
    const SwinWeights *wt = &m->enc;
    if (!s_in(tp, wt->patch_w) || !s_in(tp, wt->patch_norm.g))
        return dm_err(err, "swin: the model's encoder does not point into the trained weights");
    int S = c->nstages;
    const Geo *gl = &t->g[S - 1];
    float *dx = s_new((size_t)gl->T * gl->C);
    if (!dx)
        return dm_err(err, "swin: out of memory for the backward");
    memcpy(dx, dout, (size_t)gl->T * gl->C * sizeof(float));
    for (int s = S - 1; s >= 0; s--) {
        const SwinStage *st = &wt->stages[s];
        const Geo *g = &t->g[s];
        for (int b = st->depth - 1; b >= 0; b--) {
            int shift = b % 2 ? g->shift : 0;
            BlockAct tmp = {0}, *a = t->act[s] ? &t->act[s][b] : &tmp;
            int rc = 0;
            if (a == &tmp) { /* recompute this block's activations from its input */
                float *x = s_new((size_t)g->T * g->C);
                rc = !x || s_act_alloc(g, &tmp);
                if (!rc) {
                    memcpy(x, t->xin[s][b], (size_t)g->T * g->C * sizeof(float));
                    rc = s_block_fwd(g, shift, &st->blocks[b], c->ln_eps, x, &tmp);
                }
                free(x);
            }
            if (!rc)
                rc = s_block_bwd(g, shift, &st->blocks[b], a, tp, dx);
            if (a == &tmp)
                s_act_free(&tmp);
            if (rc) {
                free(dx);
                return dm_err(err, "swin: out of memory in the backward of stage %d block %d",
                              s, b);
            }
        }
        if (s == 0)
            break;
        /* the merge at the end of stage s-1 */
        const SwinStage *sp = &wt->stages[s - 1];
        const Geo *gp = &t->g[s - 1];
        int K = 4 * gp->C, T2 = g->T;
        float *ln = s_new((size_t)T2 * K), *dln = s_new((size_t)T2 * K), *dxm = s_new((size_t)T2 * K);
        float *dprev = s_new((size_t)gp->T * gp->C);
        if (!ln || !dln || !dxm || !dprev) {
            free(ln);
            free(dln);
            free(dxm);
            free(dprev);
            free(dx);
            return dm_err(err, "swin: out of memory in the backward of a patch merging");
        }
        for (size_t r = 0; r < (size_t)T2; r++)
            for (int k = 0; k < K; k++)
                ln[r * K + k] = t->mxhat[s - 1][r * K + k] * sp->merge_norm.g[k] +
                                sp->merge_norm.b[k];
        s_linear_bwd(&sp->merge, tp, ln, dx, T2, dln, 0.0f);
        swin_ln_bwd(dln, T2, K, sp->merge_norm.g, t->mxhat[s - 1], t->mrstd[s - 1],
                    s_g(tp, sp->merge_norm.g), s_g(tp, sp->merge_norm.b), dxm);
        s_merge_scatter(gp, dxm, dprev, T2, g->W);
        free(ln);
        free(dln);
        free(dxm);
        free(dx);
        dx = dprev;
    }
    /* patch embedding: LayerNorm, then y = U Wp^T + b */
    const Geo *g0 = &t->g[0];
    int T0 = g0->T, E = c->embed_dim, P = c->patch, K0 = c->channels * P * P;
    float *dy = s_new((size_t)T0 * E), *dU = dpix ? s_new((size_t)T0 * K0) : NULL;
    if (!dy || (dpix && !dU)) {
        free(dy);
        free(dU);
        free(dx);
        return dm_err(err, "swin: out of memory in the backward of the patch embedding");
    }
    swin_ln_bwd(dx, T0, E, wt->patch_norm.g, t->xhat0, t->rstd0, s_g(tp, wt->patch_norm.g),
                s_g(tp, wt->patch_norm.b), dy);
    DmLinear pl = {.w = wt->patch_w, .b = wt->patch_b, .out = E, .in = K0};
    s_linear_bwd(&pl, tp, t->U, dy, T0, dU, 0.0f);
    if (dpix) {
        memset(dpix, 0, (size_t)c->channels * t->H * t->W * sizeof(float));
        for (int r = 0; r < T0; r++) {
            int py = r / g0->W, px = r % g0->W;
            const float *d = dU + (size_t)r * K0;
            for (int ch = 0; ch < c->channels; ch++)
                for (int ki = 0; ki < P; ki++)
                    for (int kj = 0; kj < P; kj++) {
                        int y = py * P + ki, xx = px * P + kj;
                        if (y < t->H && xx < t->W)
                            dpix[((size_t)ch * t->H + y) * t->W + xx] = d[(ch * P + ki) * P + kj];
                    }
        }
    }
    free(dy);
    free(dU);
    free(dx);
    return 0;
}
