/* an_grad.c - the gradient of a run's NLL with respect to every head's
 * output, for attribution patching (analyze.h).
 *
 * Only activations get gradients here (no weight gradients, no encoder):
 * from the scored logits back through the final LayerNorm, then sub-layer
 * by sub-layer down the residual stream, each one's backward recomputing
 * its LayerNorm and projections from the input the trace recorded and
 * using the attention probabilities the trace kept.  The gradient reaching
 * an attention sub-layer's output, times out_proj's weight, is the
 * gradient of its heads' outputs. */
#include "worker/analyze/analyze.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/kern.h"

/* dx += LayerNorm backward of dy over rows of x (the statistics
 * recomputed in double). */
static void s_ln_bwd(const float *x, const float *dy, int rows, int n, const DmNorm *nm, float eps,
                     float *dx)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n, *d = dy + (size_t)r * n;
        double mean = 0.0, var = 0.0;
        for (int i = 0; i < n; i++)
            mean += xr[i];
        mean /= n;
        for (int i = 0; i < n; i++)
            var += (xr[i] - mean) * (xr[i] - mean);
        var /= n;
        double rstd = 1.0 / sqrt(var + eps), m1 = 0.0, m2 = 0.0;
        for (int i = 0; i < n; i++) {
            double g = (double)d[i] * nm->g[i], xh = (xr[i] - mean) * rstd;
            m1 += g;
            m2 += g * xh;
        }
        m1 /= n;
        m2 /= n;
        float *o = dx + (size_t)r * n;
        for (int i = 0; i < n; i++) {
            double xh = (xr[i] - mean) * rstd;
            o[i] += (float)(rstd * ((double)d[i] * nm->g[i] - m1 - xh * m2));
        }
    }
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
            d[j] = (float)(p[j] * (d[j] - dot));
    }
}

static int s_f32(const DmLinear *l)
{
    return l->w != NULL;
}

/* Every buffer of one call. */
typedef struct Bufs {
    float *dres, *dx, *h, *dh, *dctx, *dq, *dk, *dv, *qs, *k, *v, *dP, *ff, *Kt, *Vh;
} Bufs;

static void s_bufs_free(Bufs *b)
{
    float **p = (float **)b;
    for (size_t i = 0; i < sizeof *b / sizeof(float *); i++)
        free(p[i]);
}

/* The backward of attention sub-layer `sub` of the trace from the
 * gradient at its output (b->dres): the heads' gradient into *g and the
 * LayerNorm output's gradient into b->dh. */
static int s_attn_bwd(const DecPage *page, const AnTrace *tr, int sub, Bufs *b, float **g,
                      DmErr *err)
{
    const DonutModel *m = page->m;
    const MBartConfig *c = &m->cfg.dec;
    int l = sub / 3, is_self = sub % 3 == DM_SUB_S;
    const DecAttn *a = is_self ? &m->dec.layers[l].self : &m->dec.layers[l].cross;
    int T = tr->T, D = c->d_model, hd = m->dec.head_dim, H = a->nheads, inner = H * hd;
    int S = tr->probs_S[sub];
    float scale = 1.0f / sqrtf((float)hd);
    if (!tr->probs[sub] || !tr->query[sub] || (is_self ? T : page->n_enc) != S)
        return dm_err(err, "analyze: the trace lacks the probabilities of sub-layer %d", sub);
    kern_gemm_nn(T, inner, D, 1.0f, b->dres, D, a->o.w, inner, 0.0f, b->dctx, inner);
    if (!(*g = malloc((size_t)T * inner * sizeof(float))))
        return dm_err(err, "analyze: out of memory for head gradients");
    memcpy(*g, b->dctx, (size_t)T * inner * sizeof(float));
    for (size_t i = 0; i < (size_t)T * inner; i++)
        b->qs[i] = tr->query[sub][i] * scale;
    if (is_self) {
        kern_linear(b->h, T, D, a->k.w, a->k.b, inner, b->k);
        kern_linear(b->h, T, D, a->v.w, a->v.b, inner, b->v);
    }
    for (int hh = 0; hh < H; hh++) {
        const float *P = tr->probs[sub] + (size_t)hh * T * S;
        const float *dc = b->dctx + hh * hd;
        if (is_self) {
            kern_gemm_nt(T, S, hd, 1.0f, dc, inner, b->v + hh * hd, inner, 0.0f, b->dP, S);
            kern_gemm_tn(S, hd, T, 1.0f, P, S, dc, inner, 0.0f, b->dv + hh * hd, inner);
            s_softmax_bwd(P, b->dP, T, S);
            kern_gemm_nn(T, hd, S, 1.0f, b->dP, S, b->k + hh * hd, inner, 0.0f, b->dq + hh * hd,
                         inner);
            kern_gemm_tn(S, hd, T, 1.0f, b->dP, S, b->qs + hh * hd, inner, 0.0f, b->dk + hh * hd,
                         inner);
            continue;
        }
        /* the page's keys (transposed, [hd, S]) and values ([S, hd]) */
        size_t off = (size_t)hh * hd * S;
        const float *Kt = page->ck[l] ? page->ck[l] + off : b->Kt;
        const float *Vh = page->cv[l] ? page->cv[l] + off : b->Vh;
        if (!page->ck[l])
            for (size_t i = 0; i < (size_t)hd * S; i++) {
                b->Kt[i] = kern_bf16_f32(page->ckb[l][off + i]);
                b->Vh[i] = kern_bf16_f32(page->cvb[l][off + i]);
            }
        kern_gemm_nt(T, S, hd, 1.0f, dc, inner, Vh, hd, 0.0f, b->dP, S);
        s_softmax_bwd(P, b->dP, T, S);
        kern_gemm_nt(T, hd, S, 1.0f, b->dP, S, Kt, S, 0.0f, b->dq + hh * hd, inner);
    }
    for (size_t i = 0; i < (size_t)T * inner; i++)
        b->dq[i] *= scale;
    kern_gemm_nn(T, D, inner, 1.0f, b->dq, inner, a->q.w, D, 0.0f, b->dh, D);
    if (is_self) {
        kern_gemm_nn(T, D, inner, 1.0f, b->dk, inner, a->k.w, D, 1.0f, b->dh, D);
        kern_gemm_nn(T, D, inner, 1.0f, b->dv, inner, a->v.w, D, 1.0f, b->dh, D);
    }
    return 0;
}

/* The feed-forward's backward from b->dres into b->dh. */
static void s_ffn_bwd(const DonutModel *m, int l, const AnTrace *tr, Bufs *b)
{
    const DecFfn *f = &m->dec.layers[l].ffn;
    int T = tr->T, D = m->cfg.dec.d_model, F = m->cfg.dec.ffn;
    float *a1 = b->ff, *dg = b->ff + (size_t)T * F;
    kern_linear(b->h, T, D, f->fc1.w, f->fc1.b, F, a1);
    kern_gemm_nn(T, F, D, 1.0f, b->dres, D, f->fc2.w, F, 0.0f, dg, F);
    /* exact GELU: d/dx [x Phi(x)] = Phi(x) + x phi(x) */
    for (size_t i = 0; i < (size_t)T * F; i++) {
        double x = a1[i];
        double d = 0.5 * (1.0 + erf(x * M_SQRT1_2)) + x * exp(-0.5 * x * x) * 0.3989422804014327;
        dg[i] = (float)(dg[i] * d);
    }
    kern_gemm_nn(T, D, F, 1.0f, dg, F, f->fc1.w, D, 0.0f, b->dh, D);
}

int an_head_grads(const DecPage *page, const int32_t *ids, int answer_start, const AnTrace *tr,
                  float ***grads, DmErr *err)
{
    return an_grads(page, ids, answer_start, tr, grads, NULL, err);
}

int an_grads(const DecPage *page, const int32_t *ids, int answer_start, const AnTrace *tr,
             float ***grads, float ***out_grads, DmErr *err)
{
    const DonutModel *m = page->m;
    const MBartConfig *c = &m->cfg.dec;
    const MBartWeights *w = &m->dec;
    int T = tr->T, D = c->d_model, V = c->vocab, P = tr->P, a = answer_start, F = c->ffn;
    int hd = w->head_dim, inner = c->heads * hd, S = T > page->n_enc ? T : page->n_enc;
    size_t TD = (size_t)T * D;
    if (!w->lm_head)
        return dm_err(err, "analyze: attribution patching needs the float32 model (not bf16)");
    for (int l = 0; l < c->layers; l++) {
        const DecLayer *L = &w->layers[l];
        if ((L->self.present && !(s_f32(&L->self.q) && s_f32(&L->self.k) && s_f32(&L->self.v) &&
                                  s_f32(&L->self.o))) ||
            (L->cross.present && !(s_f32(&L->cross.q) && s_f32(&L->cross.o))) ||
            (L->ffn.present && !(s_f32(&L->ffn.fc1) && s_f32(&L->ffn.fc2))))
            return dm_err(err, "analyze: attribution patching needs the float32 model (not bf16)");
    }
    Bufs b = {0};
    b.dres = calloc(TD, sizeof(float));
    b.dx = calloc(TD, sizeof(float));
    b.h = malloc(TD * sizeof(float));
    b.dh = malloc(TD * sizeof(float));
    b.dctx = malloc((size_t)T * inner * sizeof(float));
    b.dq = malloc((size_t)T * inner * sizeof(float));
    b.dk = malloc((size_t)T * inner * sizeof(float));
    b.dv = malloc((size_t)T * inner * sizeof(float));
    b.qs = malloc((size_t)T * inner * sizeof(float));
    b.k = malloc((size_t)T * inner * sizeof(float));
    b.v = malloc((size_t)T * inner * sizeof(float));
    b.dP = malloc((size_t)T * S * sizeof(float));
    b.ff = malloc((size_t)T * (2 * F > V ? 2 * F : V) * sizeof(float));
    b.Kt = malloc((size_t)hd * page->n_enc * sizeof(float));
    b.Vh = malloc((size_t)hd * page->n_enc * sizeof(float));
    float **g = calloc(tr->nsub, sizeof *g);
    float **og = out_grads ? calloc(tr->nsub, sizeof *og) : NULL;
    int rc = -1, ok = g != NULL && (!out_grads || og);
    float **pb = (float **)&b;
    for (size_t i = 0; i < sizeof b / sizeof(float *); i++)
        ok &= pb[i] != NULL;
    if (!ok) {
        dm_err(err, "analyze: out of memory for the gradients of %d tokens", T);
        goto done;
    }
    /* d NLL / d logits = (softmax - onehot) / P at the scored rows, then
     * through the tied head and the final LayerNorm */
    float *dlog = b.ff;
    for (int j = 0; j < P; j++) {
        const float *row = tr->logits + (size_t)j * V;
        float *d = dlog + (size_t)j * V;
        float mx = row[kern_argmax(row, V)];
        double s = 0.0;
        for (int v = 0; v < V; v++)
            s += exp((double)row[v] - mx);
        for (int v = 0; v < V; v++)
            d[v] = (float)((exp((double)row[v] - mx) / s - (v == ids[a + j + 1])) / P);
    }
    kern_gemm_nn(P, D, V, 1.0f, dlog, V, w->lm_head, D, 0.0f, b.dh, D);
    s_ln_bwd(tr->resid + (size_t)tr->nsub * TD + (size_t)a * D, b.dh, P, D, &w->ln_final,
             c->ln_eps, b.dres + (size_t)a * D);
    for (int sub = tr->nsub - 1; sub >= 0; sub--) {
        int l = sub / 3, kind = sub % 3;
        const DecLayer *L = &w->layers[l];
        const DmNorm *ln = kind == DM_SUB_S ? &L->self.ln : kind == DM_SUB_C ? &L->cross.ln
                                                                              : &L->ffn.ln;
        int present = kind == DM_SUB_S ? L->self.present : kind == DM_SUB_C ? L->cross.present
                                                                             : L->ffn.present;
        if (!present)
            continue;
        /* the sub-layer's output is added to the stream: its gradient is
         * the stream's below here */
        if (og && !(og[sub] = malloc(TD * sizeof(float)))) {
            dm_err(err, "analyze: out of memory for the gradients of %d tokens", T);
            goto done;
        }
        if (og)
            memcpy(og[sub], b.dres, TD * sizeof(float));
        const float *x = tr->resid + (size_t)sub * TD;
        kern_layernorm(x, T, D, ln->g, ln->b, c->ln_eps, b.h);
        if (kind == DM_SUB_M)
            s_ffn_bwd(m, l, tr, &b);
        else if (s_attn_bwd(page, tr, sub, &b, &g[sub], err))
            goto done;
        memset(b.dx, 0, TD * sizeof(float));
        s_ln_bwd(x, b.dh, T, D, ln, c->ln_eps, b.dx);
        kern_add(b.dres, b.dx, TD);
    }
    *grads = g;
    g = NULL;
    if (out_grads)
        *out_grads = og;
    og = NULL;
    rc = 0;
done:
    for (int i = 0; i < tr->nsub; i++) {
        if (g)
            free(g[i]);
        if (og)
            free(og[i]);
    }
    free(g);
    free(og);
    s_bufs_free(&b);
    return rc;
}
