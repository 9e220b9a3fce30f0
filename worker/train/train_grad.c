/* train_grad.c - teacher-forced forward of one sequence that keeps what the
 * backward needs, the loss, and the backward into the trainable weights
 * (train.h).
 *
 * The forward repeats worker/model/decoder.c operation by operation (same
 * kernels, same float32 order), so the loss is that of the ordinary
 * forward; only the factored cross-attention (TrainCross in train.h)
 * associates its products differently.  Gradients are linear in the logits' gradient, so `scale` is
 * applied there once and every later product accumulates into tp->grad.
 * Weight gradients dW += dY^T X are sgemm calls; the tied LM head, frozen
 * unless the whole model trains (tp->whole), passes the gradient back to
 * the final hidden states. */
#include "worker/train/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/kern.h"

/* Every buffer of one call, freed together. */
typedef struct Arena {
    float **p;
    int n, cap;
    int failed;
} Arena;

static float *s_alloc(Arena *a, size_t n)
{
    if (a->failed)
        return NULL;
    if (a->n == a->cap) {
        int cap = a->cap ? 2 * a->cap : 64;
        float **np = realloc(a->p, (size_t)cap * sizeof *np);
        if (!np) {
            a->failed = 1;
            return NULL;
        }
        a->p = np;
        a->cap = cap;
    }
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p)
        a->failed = 1;
    else
        a->p[a->n++] = p;
    return p;
}

static void s_arena_free(Arena *a)
{
    for (int i = 0; i < a->n; i++)
        free(a->p[i]);
    free(a->p);
}

/* A LayerNorm's input normalised ((x - mean) * rstd, as kern_layernorm
 * computes it) and rstd per row. */
typedef struct LnSave {
    float *xhat, *rstd;
} LnSave;

/* What one sub-layer keeps from the forward. */
typedef struct SubSave {
    LnSave ln;
    float *h;                     /* LayerNorm output [T, D] */
    float *q, *k, *v, *probs, *ctx; /* attention: scaled q [T, inner], k/v [S, inner], [H, T, S], [T, inner] */
    float *a1, *g1;               /* FFN: fc1 output before and after GELU [T, F] */
    float *A, *B;                 /* factored cross-attention: q_h Wk_h and P_h E [H, T, D] */
} SubSave;

/* kern_layernorm with its intermediate kept: y = xhat * g + b. */
static void s_ln_fwd(const float *x, int rows, int n, const DmNorm *nm, float eps, LnSave *s,
                     float *y)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        float *xh = s->xhat + (size_t)r * n, *yr = y + (size_t)r * n;
        double mean = 0.0, var = 0.0;
        for (int i = 0; i < n; i++)
            mean += xr[i];
        mean /= n;
        for (int i = 0; i < n; i++)
            var += (xr[i] - mean) * (xr[i] - mean);
        var /= n;
        float inv = (float)(1.0 / sqrt(var + eps)), fm = (float)mean;
        s->rstd[r] = inv;
        for (int i = 0; i < n; i++) {
            xh[i] = (xr[i] - fm) * inv;
            yr[i] = xh[i] * nm->g[i] + nm->b[i];
        }
    }
}

/* Gradient pointer of a trainable tensor: same offset in tp->grad. */
static float *s_g(const TrainParams *tp, const float *w)
{
    return tp->grad + (w - tp->data);
}

/* dx += LayerNorm backward of dy; dg, db accumulate. */
static void s_ln_bwd(const float *dy, int rows, int n, const DmNorm *nm, const LnSave *s,
                     const TrainParams *tp, float *dx)
{
    float *dg = s_g(tp, nm->g), *db = s_g(tp, nm->b);
    for (int r = 0; r < rows; r++) {
        const float *d = dy + (size_t)r * n, *xh = s->xhat + (size_t)r * n;
        double m1 = 0.0, m2 = 0.0;
        for (int i = 0; i < n; i++) {
            double dxh = (double)d[i] * nm->g[i];
            m1 += dxh;
            m2 += dxh * xh[i];
            dg[i] += d[i] * xh[i];
            db[i] += d[i];
        }
        m1 /= n;
        m2 /= n;
        float *o = dx + (size_t)r * n;
        for (int i = 0; i < n; i++)
            o[i] += (float)(s->rstd[r] * ((double)d[i] * nm->g[i] - m1 - xh[i] * m2));
    }
}

/* C[M,N] += A[K,M]^T B[K,N] (row-major, leading dims given). */
static void s_gemm_tn(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                      float beta, float *C, int ldc)
{
    kern_gemm_tn(M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
}

/* Backward of y = x W^T + b over R rows: dW += dy^T x, db += colsum dy, and
 * dx (when not NULL) = or += dy W. */
static void s_linear_bwd(const DmLinear *l, const float *x, const float *dy, int R,
                         const TrainParams *tp, float *dx, float beta)
{
    s_gemm_tn(l->out, l->in, R, dy, l->out, x, l->in, 1.0f, s_g(tp, l->w), l->in);
    float *db = s_g(tp, l->b);
    for (int r = 0; r < R; r++)
        for (int j = 0; j < l->out; j++)
            db[j] += dy[(size_t)r * l->out + j];
    if (dx)
        kern_gemm_nn(R, l->in, l->out, 1.0f, dy, l->out, l->w, l->in, beta, dx, l->in);
}

typedef struct Pass {
    const DonutModel *m;
    const TrainParams *tp;
    const float *enc;
    int T, n_enc, D, hd;
    int factored;                 /* cross-attention without keys and values */
    SubSave sv[DM_MAX_LAYERS][3];
    LnSave ln_emb, ln_final;
} Pass;

static const DecAttn *s_attn_of(const DonutModel *m, int l, int kind)
{
    return kind == DM_SUB_S ? &m->dec.layers[l].self : &m->dec.layers[l].cross;
}

/* Cross-attention from the scaled queries without keys and values (see
 * TrainCross in train.h): A_h = q_h Wk_h, P_h = softmax(A_h E^T) (the key
 * bias adds q_h . bk_h to a whole row, which softmax ignores), ctx_h =
 * (P_h E) Wv_h^T + bv_h since each row of P_h sums to 1. */
static void s_cross_factored_fwd(Pass *ps, const DecAttn *a, SubSave *s)
{
    int T = ps->T, D = ps->D, hd = ps->hd, S = ps->n_enc, inner = a->nheads * hd;
    for (int h = 0; h < a->nheads; h++) {
        float *A = s->A + (size_t)h * T * D, *B = s->B + (size_t)h * T * D;
        float *P = s->probs + (size_t)h * T * S;
        kern_gemm_nn(T, D, hd, 1.0f, s->q + h * hd, inner, a->k.w + (size_t)h * hd * D, D, 0.0f,
                     A, D);
        kern_gemm_nt(T, S, D, 1.0f, A, D, ps->enc, D, 0.0f, P, S);
        kern_softmax_rows(P, T, S);
        kern_gemm_nn(T, D, S, 1.0f, P, S, ps->enc, D, 0.0f, B, D);
        kern_gemm_nt(T, hd, D, 1.0f, B, D, a->v.w + (size_t)h * hd * D, D, 0.0f,
                     s->ctx + h * hd, inner);
        for (int i = 0; i < T; i++)
            kern_add(s->ctx + (size_t)i * inner + h * hd, a->v.b + h * hd, hd);
    }
}

/* Attention sub-layer forward on x [T, D] into out [T, D] (decoder.c's
 * s_attention for one whole sequence). */
static void s_attn_fwd(Pass *ps, int l, int kind, const float *x, SubSave *s, float *out)
{
    const MBartConfig *c = &ps->m->cfg.dec;
    const DecAttn *a = s_attn_of(ps->m, l, kind);
    int T = ps->T, D = ps->D, hd = ps->hd, H = a->nheads, inner = H * hd;
    int S = kind == DM_SUB_S ? T : ps->n_enc;
    const float *kv_in = kind == DM_SUB_S ? s->h : ps->enc;
    float scale = 1.0f / sqrtf((float)hd);
    s_ln_fwd(x, T, D, &a->ln, c->ln_eps, &s->ln, s->h);
    kern_linear(s->h, T, D, a->q.w, a->q.b, inner, s->q);
    for (size_t i = 0; i < (size_t)T * inner; i++)
        s->q[i] *= scale;
    if (kind == DM_SUB_C && ps->factored) {
        s_cross_factored_fwd(ps, a, s);
        kern_linear(s->ctx, T, inner, a->o.w, a->o.b, D, out);
        return;
    }
    kern_linear(kv_in, S, D, a->k.w, a->k.b, inner, s->k);
    kern_linear(kv_in, S, D, a->v.w, a->v.b, inner, s->v);
    for (int h = 0; h < H; h++) {
        float *P = s->probs + (size_t)h * T * S;
        kern_gemm_nt(T, S, hd, 1.0f, s->q + h * hd, inner, s->k + h * hd, inner, 0.0f, P, S);
        if (kind == DM_SUB_S)
            for (int i = 0; i < T; i++)
                for (int j = i + 1; j < S; j++)
                    P[(size_t)i * S + j] = -INFINITY;
        kern_softmax_rows(P, T, S);
        kern_gemm_nn(T, hd, S, 1.0f, P, S, s->v + h * hd, inner, 0.0f, s->ctx + h * hd, inner);
    }
    kern_linear(s->ctx, T, inner, a->o.w, a->o.b, D, out);
}

/* Softmax backward in place: dS = P (dP - rowsum(P dP)). */
static void s_softmax_bwd(const float *P, float *dP, int T, int S)
{
    for (int i = 0; i < T; i++) {
        float *d = dP + (size_t)i * S;
        const float *p = P + (size_t)i * S;
        double dot = 0.0;
        for (int j = 0; j < S; j++)
            dot += (double)p[j] * d[j];
        for (int j = 0; j < S; j++)
            d[j] = p[j] * (d[j] - (float)dot);
    }
}

/* Backward of the factored cross-attention from dctx: weight gradients of
 * k and v (the key bias gets none), dq (scaled queries) and d enc. */
static void s_cross_factored_bwd(Pass *ps, const DecAttn *a, const SubSave *s, const float *dctx,
                                 float *dq, float *enc_grad, float *dP, float *dA, float *dB)
{
    const TrainParams *tp = ps->tp;
    int T = ps->T, D = ps->D, hd = ps->hd, S = ps->n_enc, inner = a->nheads * hd;
    float *gk = s_g(tp, a->k.w), *gv = s_g(tp, a->v.w), *gvb = s_g(tp, a->v.b);
    for (int h = 0; h < a->nheads; h++) {
        const float *A = s->A + (size_t)h * T * D, *B = s->B + (size_t)h * T * D;
        const float *P = s->probs + (size_t)h * T * S, *dc = dctx + h * hd;
        const float *wk = a->k.w + (size_t)h * hd * D, *wv = a->v.w + (size_t)h * hd * D;
        /* ctx_h = B Wv_h^T + bv_h */
        kern_gemm_nn(T, D, hd, 1.0f, dc, inner, wv, D, 0.0f, dB, D);
        s_gemm_tn(hd, D, T, dc, inner, B, D, 1.0f, gv + (size_t)h * hd * D, D);
        for (int i = 0; i < T; i++)
            kern_add(gvb + h * hd, dc + (size_t)i * inner, hd);
        /* B = P E; P = softmax(A E^T); A = q_h Wk_h */
        kern_gemm_nt(T, S, D, 1.0f, dB, D, ps->enc, D, 0.0f, dP, S);
        s_softmax_bwd(P, dP, T, S);
        kern_gemm_nn(T, D, S, 1.0f, dP, S, ps->enc, D, 0.0f, dA, D);
        s_gemm_tn(hd, D, T, s->q + h * hd, inner, dA, D, 1.0f, gk + (size_t)h * hd * D, D);
        kern_gemm_nt(T, hd, D, 1.0f, dA, D, wk, D, 0.0f, dq + h * hd, inner);
        if (enc_grad) {
            s_gemm_tn(S, D, T, dP, S, A, D, 1.0f, enc_grad, D);
            s_gemm_tn(S, D, T, P, S, dB, D, 1.0f, enc_grad, D);
        }
    }
}

/* Backward of an attention sub-layer: dout [T, D] -> dh [T, D] (the
 * LayerNorm output's gradient), weight gradients, and for cross-attention
 * d enc (when enc_grad). wk: scratch dctx, dq [T, inner], dk, dv [S, inner], dP [T, S],
 * and two [T, D]. */
static void s_attn_bwd(Pass *ps, int l, int kind, const SubSave *s, const float *dout, float *dh,
                       float *enc_grad, float **wk)
{
    const DecAttn *a = s_attn_of(ps->m, l, kind);
    const TrainParams *tp = ps->tp;
    int T = ps->T, hd = ps->hd, H = a->nheads, inner = H * hd;
    int S = kind == DM_SUB_S ? T : ps->n_enc;
    float *dctx = wk[0], *dq = wk[1], *dk = wk[2], *dv = wk[3], *dP = wk[4];
    float scale = 1.0f / sqrtf((float)hd);
    s_linear_bwd(&a->o, s->ctx, dout, T, tp, dctx, 0.0f);
    if (kind == DM_SUB_C && ps->factored) {
        s_cross_factored_bwd(ps, a, s, dctx, dq, enc_grad, dP, wk[5], wk[6]);
        for (size_t i = 0; i < (size_t)T * inner; i++)
            dq[i] *= scale;
        s_linear_bwd(&a->q, s->h, dq, T, tp, dh, 0.0f);
        return;
    }
    for (int h = 0; h < H; h++) {
        const float *P = s->probs + (size_t)h * T * S;
        /* dP = dctx_h v_h^T; dv_h = P^T dctx_h */
        kern_gemm_nt(T, S, hd, 1.0f, dctx + h * hd, inner, s->v + h * hd, inner, 0.0f, dP, S);
        s_gemm_tn(S, hd, T, P, S, dctx + h * hd, inner, 0.0f, dv + h * hd, inner);
        s_softmax_bwd(P, dP, T, S);
        /* scores = q~ k^T: dq~ = dS k, dk = dS^T q~ */
        kern_gemm_nn(T, hd, S, 1.0f, dP, S, s->k + h * hd, inner, 0.0f, dq + h * hd, inner);
        s_gemm_tn(S, hd, T, dP, S, s->q + h * hd, inner, 0.0f, dk + h * hd, inner);
    }
    for (size_t i = 0; i < (size_t)T * inner; i++)
        dq[i] *= scale;
    s_linear_bwd(&a->q, s->h, dq, T, tp, dh, 0.0f);
    if (kind == DM_SUB_S) {
        s_linear_bwd(&a->k, s->h, dk, T, tp, dh, 1.0f);
        s_linear_bwd(&a->v, s->h, dv, T, tp, dh, 1.0f);
    } else {
        s_linear_bwd(&a->k, ps->enc, dk, S, tp, enc_grad, 1.0f);
        s_linear_bwd(&a->v, ps->enc, dv, S, tp, enc_grad, 1.0f);
    }
}

static void s_ffn_fwd(Pass *ps, int l, const float *x, SubSave *s, float *out)
{
    const MBartConfig *c = &ps->m->cfg.dec;
    const DecFfn *f = &ps->m->dec.layers[l].ffn;
    size_t n = (size_t)ps->T * c->ffn;
    s_ln_fwd(x, ps->T, ps->D, &f->ln, c->ln_eps, &s->ln, s->h);
    kern_linear(s->h, ps->T, ps->D, f->fc1.w, f->fc1.b, c->ffn, s->a1);
    memcpy(s->g1, s->a1, n * sizeof(float));
    kern_gelu(s->g1, n);
    kern_linear(s->g1, ps->T, c->ffn, f->fc2.w, f->fc2.b, ps->D, out);
}

/* wk[0]: [T, F] scratch. */
static void s_ffn_bwd(Pass *ps, int l, const SubSave *s, const float *dout, float *dh, float **wk)
{
    const DecFfn *f = &ps->m->dec.layers[l].ffn;
    int F = ps->m->cfg.dec.ffn;
    float *dg = wk[0];
    s_linear_bwd(&f->fc2, s->g1, dout, ps->T, ps->tp, dg, 0.0f);
    /* exact GELU: d/dx [x Phi(x)] = Phi(x) + x phi(x) */
    for (size_t i = 0; i < (size_t)ps->T * F; i++) {
        double x = s->a1[i];
        double d = 0.5 * (1.0 + erf(x * M_SQRT1_2)) + x * exp(-0.5 * x * x) * 0.3989422804014327;
        dg[i] = (float)(dg[i] * d);
    }
    s_linear_bwd(&f->fc1, s->h, dg, ps->T, ps->tp, dh, 0.0f);
}

/* Cost of one cross-attention (multiply-adds over n_enc * d) either way:
 * K, V and their weight gradients with the per-head products, against the
 * four heads x T x n_enc x d products of the factored form. */
static int s_factored(TrainCross how, int T, int H, int hd, int D, int S)
{
    if (how != TRAIN_CROSS_AUTO)
        return how == TRAIN_CROSS_FACTORED;
    double inner = (double)H * hd;
    double kv = 4.0 * inner + 6.0 * T * inner / D, fact = 4.0 * H * T + 4.0 * T * inner / S;
    return fact < kv;
}

static int s_present(const DecLayer *L, int kind)
{
    return kind == DM_SUB_S ? L->self.present : kind == DM_SUB_C ? L->cross.present
                                                                 : L->ffn.present;
}

static int s_check(const DonutModel *m, const TrainParams *tp, const TrainItem *it, DmErr *err)
{
    const MBartConfig *c = &m->cfg.dec;
    if (!tp->n || m->dec.ln_final.g < tp->data || m->dec.ln_final.g >= tp->data + tp->total)
        return dm_err(err, "train: the model's decoder does not point into these parameters");
    if (it->T < 2 || it->T > c->max_pos)
        return dm_err(err, "train: sequence of %d tokens (needs 2..%d)", it->T, c->max_pos);
    if (it->answer_start < 0 || it->answer_start > it->T - 2)
        return dm_err(err, "train: answer start %d leaves no loss position in %d tokens",
                      it->answer_start, it->T);
    if (it->n_enc < 1 || !it->enc)
        return dm_err(err, "train: no encoder output");
    for (int i = 0; i < it->T; i++)
        if (it->ids[i] < 0 || it->ids[i] >= c->vocab)
            return dm_err(err, "train: token id %d at %d is outside the vocabulary (%d)",
                          it->ids[i], i, c->vocab);
    return 0;
}

/* The squares of the inputs of every decoder linear, summed per input
 * feature into sq (mask_linears order), from the saves of a forward. */
static void s_input_sq(const Pass *ps, double **sq)
{
    const DonutModel *m = ps->m;
    int T = ps->T, D = ps->D, k = 0;
    const MBartConfig *c = &m->cfg.dec;
    for (int l = 0; l < c->layers; l++)
        for (int kind = DM_SUB_S; kind <= DM_SUB_M; kind++) {
            if (!s_present(&m->dec.layers[l], kind))
                continue;
            const SubSave *s = &ps->sv[l][kind];
            /* (rows, width, data) of each linear's input, in order */
            const float *x[4];
            int rows[4], width[4], nl;
            if (kind == DM_SUB_M) {
                nl = 2;
                x[0] = s->h, rows[0] = T, width[0] = D;
                x[1] = s->g1, rows[1] = T, width[1] = c->ffn;
            } else {
                int inner = s_attn_of(m, l, kind)->nheads * ps->hd;
                const float *kv = kind == DM_SUB_S ? s->h : ps->enc;
                int nkv = kind == DM_SUB_S ? T : ps->n_enc;
                nl = 4;
                x[0] = s->h, rows[0] = T, width[0] = D;
                x[1] = x[2] = kv, rows[1] = rows[2] = nkv, width[1] = width[2] = D;
                x[3] = s->ctx, rows[3] = T, width[3] = inner;
            }
            for (int i = 0; i < nl; i++, k++)
                for (int r = 0; r < rows[i]; r++)
                    for (int j = 0; j < width[i]; j++) {
                        double v = x[i][(size_t)r * width[i] + j];
                        sq[k][j] += v * v;
                    }
        }
}

static int s_item(const DonutModel *m, TrainParams *tp, const TrainItem *it, const LossCfg *cfg,
                  double scale, LossParts *out, float *enc_grad, double **sq, DmErr *err);

int train_item_grad(const DonutModel *m, TrainParams *tp, const TrainItem *it,
                    const LossCfg *cfg, double scale, LossParts *out, float *enc_grad,
                    DmErr *err)
{
    return s_item(m, tp, it, cfg, scale, out, enc_grad, NULL, err);
}

int train_item_input_sq(const DonutModel *m, TrainParams *tp, const TrainItem *it, double **sq,
                        DmErr *err)
{
    return s_item(m, tp, it, NULL, 0.0, NULL, NULL, sq, err);
}

static int s_item(const DonutModel *m, TrainParams *tp, const TrainItem *it, const LossCfg *cfg,
                  double scale, LossParts *out, float *enc_grad, double **sq, DmErr *err)
{
    if (s_check(m, tp, it, err))
        return -1;
    const MBartConfig *c = &m->cfg.dec;
    const MBartWeights *w = &m->dec;
    int T = it->T, D = c->d_model, V = c->vocab, F = c->ffn, a0 = it->answer_start;
    int n = T - 1 - a0, hd = w->head_dim, inner_max = c->heads * hd;
    int Smax = T > it->n_enc ? T : it->n_enc;
    Pass ps = {.m = m, .tp = tp, .enc = it->enc, .T = T, .n_enc = it->n_enc, .D = D, .hd = hd};
    ps.factored = s_factored(tp->cross, T, c->heads, hd, D, it->n_enc);
    Arena ar = {0};
    size_t TD = (size_t)T * D;
    float *x = s_alloc(&ar, TD), *out_buf = s_alloc(&ar, TD), *hf = s_alloc(&ar, TD);
    float *logits = s_alloc(&ar, (size_t)n * V);
    double *gd = malloc((size_t)V * sizeof *gd);
    ps.ln_emb = (LnSave){s_alloc(&ar, TD), s_alloc(&ar, T)};
    ps.ln_final = (LnSave){s_alloc(&ar, TD), s_alloc(&ar, T)};
    for (int l = 0; l < c->layers; l++)
        for (int kind = DM_SUB_S; kind <= DM_SUB_M; kind++) {
            SubSave *s = &ps.sv[l][kind];
            if (!s_present(&w->layers[l], kind))
                continue;
            s->ln = (LnSave){s_alloc(&ar, TD), s_alloc(&ar, T)};
            s->h = s_alloc(&ar, TD);
            if (kind == DM_SUB_M) {
                s->a1 = s_alloc(&ar, (size_t)T * F);
                s->g1 = s_alloc(&ar, (size_t)T * F);
                continue;
            }
            const DecAttn *a = s_attn_of(m, l, kind);
            size_t inner = (size_t)a->nheads * hd, S = kind == DM_SUB_S ? T : it->n_enc;
            s->q = s_alloc(&ar, T * inner);
            if (kind == DM_SUB_C && ps.factored) {
                s->A = s_alloc(&ar, a->nheads * TD);
                s->B = s_alloc(&ar, a->nheads * TD);
            } else {
                s->k = s_alloc(&ar, S * inner);
                s->v = s_alloc(&ar, S * inner);
            }
            s->probs = s_alloc(&ar, a->nheads * T * S);
            s->ctx = s_alloc(&ar, T * inner);
        }
    /* backward scratch */
    float *dx = s_alloc(&ar, TD), *dh = s_alloc(&ar, TD);
    size_t wk_big = (size_t)Smax * inner_max;
    float *wk[7] = {s_alloc(&ar, (size_t)T * (inner_max > F ? inner_max : F)),
                    s_alloc(&ar, (size_t)T * inner_max), s_alloc(&ar, wk_big),
                    s_alloc(&ar, wk_big), s_alloc(&ar, (size_t)T * Smax), s_alloc(&ar, TD),
                    s_alloc(&ar, TD)};
    int rc = -1;
    if (ar.failed || !gd) {
        dm_err(err, "train: out of memory for a sequence of %d tokens", T);
        goto done;
    }

    /* ---- forward ---- */
    float escale = c->scale_embedding ? (float)sqrt((double)D) : 1.0f;
    for (int i = 0; i < T; i++) {
        const float *te = w->embed_tokens + (size_t)it->ids[i] * D;
        const float *pe = w->embed_positions + (size_t)(i + 2) * D;
        for (int d = 0; d < D; d++)
            x[(size_t)i * D + d] = te[d] * escale + pe[d];
    }
    s_ln_fwd(x, T, D, &w->ln_emb, c->ln_eps, &ps.ln_emb, x);
    for (int l = 0; l < c->layers; l++)
        for (int kind = DM_SUB_S; kind <= DM_SUB_M; kind++) {
            if (!s_present(&w->layers[l], kind))
                continue;
            if (kind == DM_SUB_M)
                s_ffn_fwd(&ps, l, x, &ps.sv[l][kind], out_buf);
            else
                s_attn_fwd(&ps, l, kind, x, &ps.sv[l][kind], out_buf);
            kern_add(x, out_buf, TD);
        }
    if (sq) { /* calibration: the forward's inputs only */
        s_input_sq(&ps, sq);
        rc = 0;
        goto done;
    }
    s_ln_fwd(x, T, D, &w->ln_final, c->ln_eps, &ps.ln_final, hf);
    kern_linear(hf + (size_t)a0 * D, n, D, w->lm_head, NULL, V, logits);

    /* ---- loss and its gradient on the logits ---- */
    double ce = 0.0, kd = 0.0, tau2 = cfg->tau * cfg->tau;
    for (int j = 0; j < n; j++) {
        double ce_t, kl_t;
        const KdTarget *t = it->teacher ? &it->teacher[j] : NULL;
        float *row = logits + (size_t)j * V;
        if (train_loss_row(row, V, it->ids[a0 + j + 1], t, cfg, &ce_t, &kl_t, gd, err)) {
            dm_err_prefix(err, "position %d", a0 + j);
            goto done;
        }
        ce += ce_t;
        kd += kl_t;
        for (int v = 0; v < V; v++)
            row[v] = (float)(gd[v] * scale / n);
    }
    out->positions = n;
    out->ce = ce / n;
    out->kd = tau2 * kd / n;
    out->total = out->ce + cfg->alpha * out->kd;

    /* ---- backward ---- */
    memset(dh, 0, TD * sizeof(float));
    kern_gemm_nn(n, D, V, 1.0f, logits, V, w->lm_head, D, 0.0f, dh + (size_t)a0 * D, D);
    float *demb = tp->whole ? s_g(tp, w->embed_tokens) : NULL;
    if (demb) /* the tied LM head's use of the token embeddings */
        s_gemm_tn(V, D, n, logits, V, hf + (size_t)a0 * D, D, 1.0f, demb, D);
    memset(dx, 0, TD * sizeof(float));
    s_ln_bwd(dh, T, D, &w->ln_final, &ps.ln_final, tp, dx);
    for (int l = c->layers - 1; l >= 0; l--)
        for (int kind = DM_SUB_M; kind >= DM_SUB_S; kind--) {
            const SubSave *s = &ps.sv[l][kind];
            if (!s_present(&w->layers[l], kind))
                continue;
            const DmNorm *ln;
            if (kind == DM_SUB_M) {
                s_ffn_bwd(&ps, l, s, dx, dh, wk);
                ln = &w->layers[l].ffn.ln;
            } else {
                s_attn_bwd(&ps, l, kind, s, dx, dh, enc_grad, wk);
                ln = &s_attn_of(m, l, kind)->ln;
            }
            s_ln_bwd(dh, T, D, ln, &s->ln, tp, dx);
        }
    /* layernorm_embedding, then the learned positions (the token
     * embeddings are frozen) */
    memset(dh, 0, TD * sizeof(float));
    s_ln_bwd(dx, T, D, &w->ln_emb, &ps.ln_emb, tp, dh);
    float *dpos = s_g(tp, w->embed_positions);
    for (int i = 0; i < T; i++)
        kern_add(dpos + (size_t)(i + 2) * D, dh + (size_t)i * D, D);
    if (demb) /* and its use as the (scaled) input embedding */
        for (int i = 0; i < T; i++) {
            float *g = demb + (size_t)it->ids[i] * D;
            const float *d = dh + (size_t)i * D;
            for (int k = 0; k < D; k++)
                g[k] += escale * d[k];
        }
    rc = 0;
done:
    free(gd);
    s_arena_free(&ar);
    return rc;
}
