/* decoder.c - mBART decoder forward pass (pre-LN layers, KV cache, cross
 * K/V once per page), with hooks for analysis and probes for checking.
 *
 * Numerics follow transformers' MBartDecoder: token embedding times
 * sqrt(d_model) when scale_embedding, plus learned position p + 2, then
 * layernorm_embedding; per layer S, C, M each as LayerNorm -> sub-layer ->
 * residual add; queries scaled by head_dim^-0.5 after their bias; final
 * layer_norm; LM head without bias. */
#include "worker/model/decoder.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "kernels/cpu/kern.h"
#include <omp.h>

/* Head h's cross keys ([hd, n_enc] at row stride n_enc) and values
 * ([n_enc, hd]) of a layer, in the page's precision (*bf16 set for
 * bfloat16): the layout dec_page_init writes. */
static void s_page_head(const DecPage *p, int layer, int h, const void **K, const void **V,
                        int *bf16)
{
    size_t off = (size_t)h * p->m->dec.head_dim * p->n_enc;
    *bf16 = p->ckb[layer] != NULL;
    if (*bf16) {
        *K = p->ckb[layer] + off;
        *V = p->cvb[layer] + off;
    } else {
        *K = p->ck[layer] + off;
        *V = p->cv[layer] + off;
    }
}

/* Key and value buffers of n floats each; 0, or -1 with both freed. */
static int s_kv_alloc(float **k, float **v, size_t n)
{
    *k = malloc(n * sizeof(float));
    *v = malloc(n * sizeof(float));
    if (*k && *v)
        return 0;
    free(*k);
    free(*v);
    *k = *v = NULL;
    return -1;
}

/* A page's cross keys or values: on 2 MiB pages where the kernel allows
 * (transparent huge pages on madvise), since a decoding step reads one
 * head's 256-byte slice of every 4 KiB row: with 4 KiB pages that is a
 * TLB miss per row. */
static void *s_alloc_page_kv(size_t bytes)
{
    size_t huge = (size_t)2 << 20;
    void *p = NULL;
    if (bytes < huge)
        return malloc(bytes);
    bytes = (bytes + huge - 1) & ~(huge - 1);
    if (posix_memalign(&p, huge, bytes))
        return NULL;
    madvise(p, bytes, MADV_HUGEPAGE);
    return p;
}

/* Pack l in the model's precision unless it already is. */
static int s_pack(DonutModel *m, DmLinear *l, DmErr *err)
{
    int bf16 = m->precision == DM_PREC_BF16;
    if (m->training || donut_packed_as(l, bf16))
        return 0;
    return donut_pack_linear(m, l, bf16, err);
}

/* The cross keys' and values' projections packed: they run on all the
 * encoder's tokens of every page. */
static int s_pack_cross_kv(const DonutModel *cm, DmErr *err)
{
    DonutModel *m = (DonutModel *)cm; /* only .packed slots change */
    int rc = 0;
    donut_pack_lock();
    for (int l = 0; l < m->cfg.dec.layers && rc == 0; l++) {
        DecAttn *a = &m->dec.layers[l].cross;
        if (a->present && !(rc = s_pack(m, &a->k, err)))
            rc = s_pack(m, &a->v, err);
    }
    donut_pack_unlock();
    return rc;
}

int dec_pack(const DonutModel *cm, DmErr *err)
{
    DonutModel *m = (DonutModel *)cm;
    MBartWeights *w = &m->dec;
    int rc = 0, bf16 = m->precision == DM_PREC_BF16;
    DmLinear *lin[DM_DEC_LINEARS_MAX];
    donut_pack_lock();
    int n = donut_dec_linears(m, lin);
    for (int i = 0; i < n && rc == 0; i++)
        rc = s_pack(m, lin[i], err);
    if (rc == 0 && !m->training && !donut_packed_as(&w->head, bf16)) {
        w->head.w = bf16 ? NULL : w->lm_head;
        w->head.wbf = bf16 ? w->lm_head_bf16 : NULL;
        w->head.b = NULL;
        w->head.out = m->cfg.dec.vocab;
        w->head.in = m->cfg.dec.d_model;
        rc = donut_pack_linear(m, &w->head, bf16, err);
    }
    donut_pack_unlock();
    return rc;
}

int dec_page_init(DecPage *p, const DonutModel *m, const float *enc, int n_enc, DmErr *err)
{
    memset(p, 0, sizeof *p);
    if (s_pack_cross_kv(m, err))
        return -1;
    p->m = m;
    p->n_enc = n_enc;
    p->enc = enc;
    const MBartConfig *c = &m->cfg.dec;
    int bf16 = m->precision == DM_PREC_BF16;
    float *tmp = NULL;
    for (int l = 0; l < c->layers; l++) {
        const DecAttn *a = &m->dec.layers[l].cross;
        if (!a->present)
            continue;
        size_t n = (size_t)n_enc * a->k.out;
        /* one projection buffer for every layer: as wide as the widest
         * (pruned layers keep fewer heads) */
        if (!tmp && !(tmp = malloc((size_t)n_enc * c->heads * m->dec.head_dim * sizeof(float))))
            goto oom;
        /* projected in float32 rows; keys transposed, values head by
         * head, and in bf16 both rounded */
        if (!bf16) {
            p->ck[l] = s_alloc_page_kv(n * sizeof(float));
            p->cv[l] = s_alloc_page_kv(n * sizeof(float));
            if (!p->ck[l] || !p->cv[l])
                goto oom;
            donut_linear(&a->k, enc, n_enc, tmp);
            kern_transpose(tmp, n_enc, a->k.out, p->ck[l], NULL);
            donut_linear(&a->v, enc, n_enc, tmp);
            kern_heads_major(tmp, n_enc, a->nheads, m->dec.head_dim, p->cv[l], NULL);
            continue;
        }
        p->ckb[l] = s_alloc_page_kv(n * sizeof(uint16_t));
        p->cvb[l] = s_alloc_page_kv(n * sizeof(uint16_t));
        if (!p->ckb[l] || !p->cvb[l])
            goto oom;
        donut_linear(&a->k, enc, n_enc, tmp);
        kern_transpose(tmp, n_enc, a->k.out, NULL, p->ckb[l]);
        donut_linear(&a->v, enc, n_enc, tmp);
        kern_heads_major(tmp, n_enc, a->nheads, m->dec.head_dim, NULL, p->cvb[l]);
    }
    free(tmp);
    return 0;
oom:
    free(tmp);
    dec_page_free(p);
    return dm_err(err, "out of memory for the cross-attention keys and values of %d tokens", n_enc);
}

void dec_page_free(DecPage *p)
{
    for (int l = 0; l < DM_MAX_LAYERS; l++) {
        free(p->ck[l]);
        free(p->cv[l]);
        free(p->ckb[l]);
        free(p->cvb[l]);
        p->ck[l] = p->cv[l] = NULL;
        p->ckb[l] = p->cvb[l] = NULL;
    }
}

int dec_seq_init(DecSeq *s, const DonutModel *m, int cap, DmErr *err)
{
    memset(s, 0, sizeof *s);
    s->cap = cap;
    const MBartConfig *c = &m->cfg.dec;
    for (int l = 0; l < c->layers; l++) {
        const DecAttn *a = &m->dec.layers[l].self;
        if (!a->present)
            continue;
        size_t n = (size_t)cap * a->k.out;
        if (s_kv_alloc(&s->sk[l], &s->sv[l], n)) {
            dec_seq_free(s);
            return dm_err(err, "out of memory for the self-attention cache");
        }
    }
    return 0;
}

void dec_seq_free(DecSeq *s)
{
    for (int l = 0; l < DM_MAX_LAYERS; l++) {
        free(s->sk[l]);
        free(s->sv[l]);
        s->sk[l] = s->sv[l] = NULL;
    }
    s->len = 0;
}

/* Scratch for one pass over R rows. */
typedef struct Scratch {
    float *x, *h, *q, *k, *v, *ctx, *out, *ff, *probs;
    size_t probs_cap;
    float *kw, *vw; /* cross keys and values widened from bfloat16 */
} Scratch;

static void s_scratch_free(Scratch *s)
{
    free(s->x);
    free(s->h);
    free(s->q);
    free(s->k);
    free(s->v);
    free(s->ctx);
    free(s->out);
    free(s->ff);
    free(s->probs);
    free(s->kw);
    free(s->vw);
}

/* The cross keys and values of a layer as float32: the page's own, or its
 * bfloat16 ones widened into the scratch. */
static int s_cross_kv(const DecPage *p, int layer, int inner, Scratch *sc, const float **K,
                      const float **V, DmErr *err)
{
    *K = p->ck[layer];
    *V = p->cv[layer];
    if (!p->ckb[layer])
        return 0;
    size_t n = (size_t)p->n_enc * inner;
    /* room for the widest layer (pruned layers keep fewer heads) */
    size_t cap = (size_t)p->n_enc * p->m->cfg.dec.heads * p->m->dec.head_dim;
    if (!sc->kw) {
        sc->kw = malloc(cap * sizeof(float));
        sc->vw = malloc(cap * sizeof(float));
        if (!sc->kw || !sc->vw) {
            free(sc->kw);
            free(sc->vw);
            sc->kw = sc->vw = NULL;
            return dm_err(err, "out of memory for cross-attention keys");
        }
    }
    for (size_t i = 0; i < n; i++) {
        sc->kw[i] = kern_bf16_f32(p->ckb[layer][i]);
        sc->vw[i] = kern_bf16_f32(p->cvb[layer][i]);
    }
    *K = sc->kw;
    *V = sc->vw;
    return 0;
}

/* The sequences of a block, as the hook sees them. */
typedef struct Block {
    int B;
    const int *counts;
} Block;

static int s_hook(const DecHooks *hooks, const Block *blk, int layer, int kind, DecHookPoint pt,
                  float *data, int ndim, int64_t d0, int64_t d1, int64_t d2, int pos0, DmErr *err)
{
    if (!hooks || !hooks->fn)
        return 0;
    int one = (int)(ndim == 3 ? d1 : d0);
    DecHookEvent ev = {layer, kind, pt, data, ndim, {d0, d1, d2}, pos0,
                       blk ? blk->B : 1, blk ? blk->counts : &one};
    if (hooks->fn(hooks->ctx, &ev) != 0)
        return dm_err(err, "decoder hook stopped the pass at layer %d", layer);
    return 0;
}

static void s_emit(const DmProbe *probe, const char *name, int ndim, const int64_t *shape,
                   const float *data)
{
    if (probe && probe->emit)
        probe->emit(probe->ctx, name, ndim, shape, data);
}

/* Rows of one cross-attention GEMM over several sequences. */
#define DEC_CROSS_CHUNK 128

/* Room for n attention scores in sc->probs. */
static int s_probs_reserve(Scratch *sc, size_t n, DmErr *err)
{
    if (n <= sc->probs_cap)
        return 0;
    free(sc->probs);
    sc->probs = malloc(n * sizeof(float));
    sc->probs_cap = sc->probs ? n : 0;
    return sc->probs ? 0 : dm_err(err, "out of memory for attention scores");
}

/* The attention probabilities [H, T, S] of a single sequence to the hook
 * and the probe. */
static int s_attn_report(const DecHooks *hooks, const DmProbe *probe, int layer, int is_self,
                         float *probs, int H, int T, int S, int pos0, DmErr *err)
{
    if (s_hook(hooks, NULL, layer, is_self ? DM_SUB_S : DM_SUB_C, DEC_HOOK_ATTN, probs, 3, H, T, S,
               pos0, err))
        return -1;
    char name[64];
    snprintf(name, sizeof name, "decoder.%s_attentions.%d", is_self ? "self" : "cross", layer);
    int64_t shape[4] = {1, H, T, S};
    s_emit(probe, name, 4, shape, probs);
    return 0;
}

/* An attention sub-layer's output projection of the heads' context, which
 * the hook sees first. */
static int s_out_proj(const DecAttn *a, Scratch *sc, int R, const DecHooks *hooks,
                      const Block *blk, int layer, int is_self, int pos0, DmErr *err)
{
    if (s_hook(hooks, blk, layer, is_self ? DM_SUB_S : DM_SUB_C, DEC_HOOK_HEADS, sc->ctx, 2, R,
               a->o.in, 0, pos0, err))
        return -1;
    donut_linear(&a->o, sc->ctx, R, sc->out);
    return 0;
}

/* One attention sub-layer over all rows.  For self-attention the new keys
 * and values are appended to each sequence's cache first; causal masking
 * lets row i of sequence b see cache positions <= len_b + i. */
static int s_attention(const DecPage *p, DecSeq **seqs, const int *counts, int B, int layer,
                       int is_self, Scratch *sc, int R, const DecHooks *hooks,
                       const DmProbe *probe, DmErr *err)
{
    const DonutModel *m = p->m;
    const MBartConfig *c = &m->cfg.dec;
    const DecAttn *a = is_self ? &m->dec.layers[layer].self : &m->dec.layers[layer].cross;
    int D = c->d_model, hd = m->dec.head_dim, H = a->nheads, inner = H * hd;
    float scale = 1.0f / sqrtf((float)hd);
    Block blk = {B, counts};

    kern_layernorm(sc->x, R, D, a->ln.g, a->ln.b, c->ln_eps, sc->h);
    donut_linear(&a->q, sc->h, R, sc->q);
    if (s_hook(hooks, &blk, layer, is_self ? DM_SUB_S : DM_SUB_C, DEC_HOOK_QUERY, sc->q, 2, R,
               inner, 0, seqs[0]->len, err))
        return -1;
    for (size_t i = 0; i < (size_t)R * inner; i++)
        sc->q[i] *= scale;
    if (is_self) {
        donut_linear(&a->k, sc->h, R, sc->k);
        donut_linear(&a->v, sc->h, R, sc->v);
        for (int b = 0, r = 0; b < B; r += counts[b], b++) {
            DecSeq *s = seqs[b];
            memcpy(s->sk[layer] + (size_t)s->len * inner, sc->k + (size_t)r * inner,
                   (size_t)counts[b] * inner * sizeof(float));
            memcpy(s->sv[layer] + (size_t)s->len * inner, sc->v + (size_t)r * inner,
                   (size_t)counts[b] * inner * sizeof(float));
        }
    }
    int all_one = 1;
    for (int b = 0; b < B; b++)
        all_one &= counts[b] == 1;
    /* Cross-attention of a few rows (a prompt), or of bf16 keys and values,
     * when nothing watches the probabilities: the decoding step's head
     * kernel, 16 rows at a time, straight from the page's keys and values
     * in their own precision (no widened float32 copy per pass).  The
     * queries are scaled already. */
    int watched = (hooks && hooks->fn) || (probe && probe->emit);
    if (!is_self && !watched && (kern_small_m(R) || p->ckb[layer])) {
        int S = p->n_enc;
        if (s_probs_reserve(sc, (size_t)H * 16 * S, err))
            return -1;
        for (int r0 = 0; r0 < R; r0 += 16) {
            int n = R - r0 < 16 ? R - r0 : 16;
#pragma omp parallel for schedule(static)
            for (int h = 0; h < H; h++) {
                const void *K, *V;
                int bf;
                s_page_head(p, layer, h, &K, &V, &bf);
                kern_cross_head(sc->q + (size_t)r0 * inner + h * hd, n, inner, 1.0f, K, S, V, hd,
                                bf, S, hd, sc->probs + (size_t)h * 16 * S,
                                sc->ctx + (size_t)r0 * inner + h * hd, inner);
            }
        }
        return s_out_proj(a, sc, R, hooks, &blk, layer, is_self, seqs[0]->len, err);
    }
    const float *cK = NULL, *cV = NULL;
    if (!is_self && s_cross_kv(p, layer, inner, sc, &cK, &cV, err))
        return -1;
    /* Cross-attention (outside the decoding step): no mask, and every row
     * of every sequence attends to the same keys and values, so one GEMM
     * per head covers all the rows of a chunk (DEC_CROSS_CHUNK rows bound
     * the scores; one sequence is one chunk, as its hook sees all its
     * rows). */
    if (!is_self) {
        int S = p->n_enc, chunk = B == 1 || R < DEC_CROSS_CHUNK ? R : DEC_CROSS_CHUNK;
        if (s_probs_reserve(sc, (size_t)H * chunk * S, err))
            return -1;
        /* Heads are independent: each thread takes whole heads, and the
         * GEMMs it calls inside the region run on that thread alone. */
        for (int r0 = 0; r0 < R; r0 += chunk) {
            int n = R - r0 < chunk ? R - r0 : chunk;
#pragma omp parallel for schedule(static)
            for (int h = 0; h < H; h++) {
                float *P = sc->probs + (size_t)h * n * S;
                kern_gemm_nn(n, S, hd, 1.0f, sc->q + (size_t)r0 * inner + h * hd, inner,
                             cK + (size_t)h * hd * S, S, 0.0f, P, S);
                kern_softmax_rows_finite(P, n, S);
            }
            if (B == 1 &&
                s_attn_report(hooks, probe, layer, 0, sc->probs, H, n, S, seqs[0]->len, err))
                return -1;
#pragma omp parallel for schedule(static)
            for (int h = 0; h < H; h++)
                kern_gemm_nn(n, hd, S, 1.0f, sc->probs + (size_t)h * n * S, S,
                             cV + (size_t)h * S * hd, hd, 0.0f,
                             sc->ctx + (size_t)r0 * inner + h * hd, inner);
        }
        return s_out_proj(a, sc, R, hooks, &blk, layer, is_self, seqs[0]->len, err);
    }
    /* Self-attention of several fresh sequences (prompts, teacher-forced
     * sequences, an item's intervention runs): their keys are their own
     * rows of the block, so each thread takes whole heads and runs each
     * sequence's causal [T_b, T_b] block as two GEMMs (no work between
     * sequences, the same sums as a single sequence's pass). */
    int fresh = is_self && B > 1 && !all_one;
    int tmax = 0;
    for (int b = 0; fresh && b < B; b++) {
        fresh = seqs[b]->len == 0;
        tmax = counts[b] > tmax ? counts[b] : tmax;
    }
    if (fresh) {
        if (s_probs_reserve(sc, (size_t)H * tmax * tmax, err))
            return -1;
#pragma omp parallel for schedule(static)
        for (int h = 0; h < H; h++) {
            float *P = sc->probs + (size_t)h * tmax * tmax;
            for (int b = 0, r0 = 0; b < B; r0 += counts[b], b++) {
                int T = counts[b];
                size_t off = (size_t)r0 * inner + h * hd;
                kern_gemm_nt(T, T, hd, 1.0f, sc->q + off, inner, sc->k + off, inner, 0.0f, P, T);
                for (int i = 0; i < T; i++)
                    for (int j = i + 1; j < T; j++)
                        P[(size_t)i * T + j] = -INFINITY;
                kern_softmax_rows(P, T, T);
                kern_gemm_nn(T, hd, T, 1.0f, P, T, sc->v + off, inner, 0.0f, sc->ctx + off, inner);
            }
        }
        return s_out_proj(a, sc, R, hooks, &blk, layer, is_self, seqs[0]->len, err);
    }
    /* Self-attention of each sequence against its own cache. */
    for (int b = 0, r = 0; b < B; r += counts[b], b++) {
        int T = counts[b];
        int pos0 = seqs[b]->len;
        int S = pos0 + T;
        const float *K = seqs[b]->sk[layer];
        const float *V = seqs[b]->sv[layer];
        size_t need = (size_t)H * T * S;
        if (need > sc->probs_cap) {
            free(sc->probs);
            sc->probs = malloc(need * sizeof(float));
            sc->probs_cap = sc->probs ? need : 0;
            if (!sc->probs)
                return dm_err(err, "out of memory for attention scores");
        }
        /* One new token (a decoding step): stream the cache once for all
         * heads; the causal mask is implicit, the row sees all S. */
        if (T == 1)
            kern_attend_scores(sc->q + (size_t)r * inner, 1, inner, K, S, H, hd, inner, sc->probs);
        for (int h = 0; T > 1 && h < H; h++) {
            float *P = sc->probs + (size_t)h * T * S;
            kern_gemm_nt(T, S, hd, 1.0f, sc->q + (size_t)r * inner + h * hd, inner, K + h * hd,
                         inner, 0.0f, P, S);
            for (int i = 0; i < T; i++)
                for (int j = pos0 + i + 1; j < S; j++)
                    P[(size_t)i * S + j] = -INFINITY;
            kern_softmax_rows(P, T, S);
        }
        if (B == 1 && s_attn_report(hooks, probe, layer, 1, sc->probs, H, T, S, pos0, err))
            return -1;
        if (T == 1)
            kern_attend_values(sc->probs, 1, V, S, H, hd, inner, sc->ctx + (size_t)r * inner, inner);
        for (int h = 0; T > 1 && h < H; h++)
            kern_gemm_nn(T, hd, S, 1.0f, sc->probs + (size_t)h * T * S, S, V + h * hd, inner,
                         0.0f, sc->ctx + (size_t)r * inner + h * hd, inner);
    }
    return s_out_proj(a, sc, R, hooks, &blk, layer, is_self, seqs[0]->len, err);
}

static int s_ffn(const DonutModel *m, int layer, Scratch *sc, int R)
{
    const MBartConfig *c = &m->cfg.dec;
    const DecFfn *f = &m->dec.layers[layer].ffn;
    kern_layernorm(sc->x, R, c->d_model, f->ln.g, f->ln.b, c->ln_eps, sc->h);
    donut_linear_gelu(&f->fc1, sc->h, R, sc->ff);
    donut_linear(&f->fc2, sc->ff, R, sc->out);
    return 0;
}

/* Row `id` of the token embedding, as float32. */
static void s_embed_token(const MBartWeights *w, int id, int D, float *out)
{
    if (w->embed_tokens_bf16)
        for (int d = 0; d < D; d++)
            out[d] = kern_bf16_f32(w->embed_tokens_bf16[(size_t)id * D + d]);
    else
        memcpy(out, w->embed_tokens + (size_t)id * D, (size_t)D * sizeof(float));
}

/* The LM head as a linear of the model's current weights, with its packed
 * form (donut_linear uses it only if packed in that precision). */
static void s_lm_head(const MBartWeights *w, const float *x, int R, int D, int V, float *y)
{
    DmLinear head = {.w = w->lm_head, .wbf = w->lm_head_bf16, .out = V, .in = D,
                     .packed = w->head.packed};
    donut_linear(&head, x, R, y);
}

/* ------------------------------------------------------ decoding step
 * One new token for each of B sequences, as one parallel region: a step
 * is ~60 small operations, and a fork and join (or a barrier) per
 * operation costs the most when the cores are shared.  Here only the data
 * dependencies synchronise: per attention sub-layer the heads and the
 * output projection (2 barriers, when the heads split evenly over the
 * team and each thread projects its own heads' rows; else 3), per
 * feed-forward fc1 and fc2 (2), where the operation-per-call path pays
 * ~14 per layer.  The residual stream x is shared; each thread normalises
 * it into its own copy (a LayerNorm of B rows is cheaper than a barrier),
 * output projections add straight into x, fc1 applies GELU as it goes,
 * self-attention keys and values land in the caches directly, and a
 * head's scores, softmax and context are one thread's work.  Every element
 * is computed in the order the operation-per-call path uses, except the
 * attention context (one pass per head instead of per-thread partials), so
 * both agree to rounding. */

typedef struct StepCtx {
    const DecPage *p;
    DecSeq **seqs;
    int B, nth;
    float *x, *q, *ctx, *ff, *logits;
    float *priv;      /* per thread: LayerNorm rows [B, D], then scores [B, S_max] */
    uint16_t *privb;  /* per thread: rows rounded to bfloat16 [B, max(D, inner, ffn)] */
    size_t priv_n, privb_n;
} StepCtx;

/* Rows rounded to bfloat16 for a linear that has bfloat16 weights. */
static const uint16_t *s_round_rows(const DmLinear *l, const float *x, int M, uint16_t *xb)
{
    if (!l->wbf)
        return NULL;
    for (size_t i = 0; i < (size_t)M * l->in; i++)
        xb[i] = kern_f32_bf16(x[i]);
    return xb;
}

static void s_team_linear(const DmLinear *l, const float *x, int M, uint16_t *xb, float *const *y,
                          int flags)
{
    kern_linear_team(x, s_round_rows(l, x, M, xb), M, l->in, l->w, l->wbf, l->b, l->out, y, flags);
}

/* Self-attention head hh of question b over its cache (the step's own
 * key and value already in it). */
static void s_step_self_head(StepCtx *st, int layer, int b, int hh, int hd, int inner,
                             float scale, float *scores)
{
    const DecSeq *s = st->seqs[b];
    kern_attend_head(st->q + (size_t)b * inner + hh * hd, 1, inner, scale, s->sk[layer] + hh * hd,
                     s->sv[layer] + hh * hd, 0, s->len + 1, hd, inner, scores,
                     st->ctx + (size_t)b * inner + hh * hd, inner);
}

/* Cross-attention head hh: the page's keys and values, streamed once for
 * all the step's questions. */
static void s_step_cross_head(StepCtx *st, int layer, int hh, int hd, int inner, float scale,
                              float *scores)
{
    const DecPage *p = st->p;
    const void *K, *V;
    int bf;
    s_page_head(p, layer, hh, &K, &V, &bf);
    kern_cross_head(st->q + hh * hd, st->B, inner, scale, K, p->n_enc, V, hd, bf, p->n_enc, hd,
                    scores, st->ctx + hh * hd, inner);
}

/* A projection of the step's rows: output rows j0 .. j1-1 on this thread
 * alone (own), or shared out over the team by kern_linear_team. */
static void s_step_proj(const DmLinear *l, const float *h, const uint16_t *hr, int B, int own,
                        int j0, int j1, float **rows, int flags)
{
    if (own)
        kern_linear_part(h, hr, B, l->in, l->w, l->wbf, l->b, j0, j1, rows, flags);
    else
        kern_linear_team(h, hr, B, l->in, l->w, l->wbf, l->b, l->out, rows, flags);
}

static void s_step_attn(StepCtx *st, const DecAttn *a, int layer, int is_self, float *h,
                        uint16_t *hb, float *scores, float **rows)
{
    const DecPage *p = st->p;
    const MBartConfig *c = &p->m->cfg.dec;
    int B = st->B, D = c->d_model, hd = p->m->dec.head_dim, H = a->nheads, inner = H * hd;
    float scale = 1.0f / sqrtf((float)hd);
    /* When the heads split evenly over the team, each thread projects the
     * q (and k, v) rows of its own heads and runs those heads: no barrier
     * until the output projection, which needs every head's context.
     * Otherwise the projections are shared out by rows and the heads by
     * (question, head), with a barrier after each. */
    int T = omp_get_num_threads(), t = omp_get_thread_num();
    int own = H % T == 0;
    int h0 = own ? H / T * t : 0, h1 = own ? H / T * (t + 1) : H;
    kern_layernorm(st->x, B, D, a->ln.g, a->ln.b, c->ln_eps, h);
    for (int b = 0; b < B; b++)
        rows[b] = st->q + (size_t)b * inner;
    const uint16_t *hr = s_round_rows(&a->q, h, B, hb);
    s_step_proj(&a->q, h, hr, B, own, h0 * hd, h1 * hd, rows, is_self ? KERN_NOWAIT : 0);
    if (is_self) {
        for (int b = 0; b < B; b++)
            rows[b] = st->seqs[b]->sk[layer] + (size_t)st->seqs[b]->len * inner;
        s_step_proj(&a->k, h, hr, B, own, h0 * hd, h1 * hd, rows, KERN_NOWAIT);
        for (int b = 0; b < B; b++)
            rows[b] = st->seqs[b]->sv[layer] + (size_t)st->seqs[b]->len * inner;
        s_step_proj(&a->v, h, hr, B, own, h0 * hd, h1 * hd, rows, 0);
        if (own) {
            for (int b = 0; b < B; b++)
                for (int hh = h0; hh < h1; hh++)
                    s_step_self_head(st, layer, b, hh, hd, inner, scale, scores);
        } else {
#pragma omp for schedule(static)
            for (int i = 0; i < B * H; i++)
                s_step_self_head(st, layer, i / H, i % H, hd, inner, scale, scores);
        }
    } else if (own) {
        for (int hh = h0; hh < h1; hh++)
            s_step_cross_head(st, layer, hh, hd, inner, scale, scores);
    } else {
#pragma omp for schedule(static)
        for (int hh = 0; hh < H; hh++)
            s_step_cross_head(st, layer, hh, hd, inner, scale, scores);
    }
    if (own) {
#pragma omp barrier
    }
    for (int b = 0; b < B; b++)
        rows[b] = st->x + (size_t)b * D;
    s_team_linear(&a->o, st->ctx, B, hb, rows, KERN_ACC);
}

static void s_step_run(StepCtx *st)
{
    const DonutModel *m = st->p->m;
    const MBartConfig *c = &m->cfg.dec;
    const MBartWeights *w = &m->dec;
    int B = st->B, D = c->d_model;
    int t = omp_get_thread_num();
    float *h = st->priv + (size_t)t * st->priv_n;
    float *scores = h + (size_t)B * D;
    uint16_t *hb = st->privb + (size_t)t * st->privb_n;
    float *rows[64];
    for (int l = 0; l < c->layers; l++) {
        const DecLayer *L = &w->layers[l];
        if (L->self.present)
            s_step_attn(st, &L->self, l, 1, h, hb, scores, rows);
        if (L->cross.present)
            s_step_attn(st, &L->cross, l, 0, h, hb, scores, rows);
        if (L->ffn.present) {
            const DecFfn *f = &L->ffn;
            kern_layernorm(st->x, B, D, f->ln.g, f->ln.b, c->ln_eps, h);
            for (int b = 0; b < B; b++)
                rows[b] = st->ff + (size_t)b * c->ffn;
            s_team_linear(&f->fc1, h, B, hb, rows, KERN_GELU);
            for (int b = 0; b < B; b++)
                rows[b] = st->x + (size_t)b * D;
            s_team_linear(&f->fc2, st->ff, B, hb, rows, KERN_ACC);
        }
    }
    if (!st->logits)
        return;
    kern_layernorm(st->x, B, D, w->ln_final.g, w->ln_final.b, c->ln_eps, h);
    for (int b = 0; b < B; b++)
        rows[b] = st->logits + (size_t)b * c->vocab;
    const uint16_t *hr = NULL;
    if (w->lm_head_bf16) {
        for (size_t i = 0; i < (size_t)B * D; i++)
            hb[i] = kern_f32_bf16(h[i]);
        hr = hb;
    }
    kern_linear_team(h, hr, B, D, w->lm_head, w->lm_head_bf16, NULL, c->vocab, rows, 0);
}

static int s_step(const DecPage *p, DecSeq **seqs, const int32_t *const *ids, int B,
                  float *logits, DmErr *err)
{
    const DonutModel *m = p->m;
    const MBartConfig *c = &m->cfg.dec;
    const MBartWeights *w = &m->dec;
    int D = c->d_model, inner = c->heads * w->head_dim;
    int smax = p->n_enc;
    for (int b = 0; b < B; b++)
        smax = seqs[b]->len + 1 > smax ? seqs[b]->len + 1 : smax;
    int widest = D > inner ? D : inner;
    widest = c->ffn > widest ? c->ffn : widest;
    StepCtx st = {p, seqs, B, omp_get_max_threads()};
    st.priv_n = (size_t)B * D + (size_t)B * smax;
    st.privb_n = (size_t)B * widest;
    st.x = malloc((size_t)B * D * sizeof(float));
    st.q = malloc((size_t)B * inner * sizeof(float));
    st.ctx = malloc((size_t)B * inner * sizeof(float));
    st.ff = malloc((size_t)B * c->ffn * sizeof(float));
    st.priv = malloc(st.nth * st.priv_n * sizeof(float));
    st.privb = malloc(st.nth * st.privb_n * sizeof(uint16_t));
    st.logits = logits;
    int rc = 0;
    if (!st.x || !st.q || !st.ctx || !st.ff || !st.priv || !st.privb) {
        rc = dm_err(err, "decoder: out of memory for a step of %d sequences", B);
        goto done;
    }
    float escale = c->scale_embedding ? (float)sqrt((double)D) : 1.0f;
    for (int b = 0; b < B; b++) {
        const float *pe = w->embed_positions + (size_t)(seqs[b]->len + 2) * D;
        float *xr = st.x + (size_t)b * D;
        s_embed_token(w, ids[b][0], D, xr);
        for (int d = 0; d < D; d++)
            xr[d] = xr[d] * escale + pe[d];
    }
    kern_layernorm(st.x, B, D, w->ln_emb.g, w->ln_emb.b, c->ln_eps, st.x);
#pragma omp parallel num_threads(st.nth)
    s_step_run(&st);
    for (int b = 0; b < B; b++)
        seqs[b]->len++;
done:
    free(st.x);
    free(st.q);
    free(st.ctx);
    free(st.ff);
    free(st.priv);
    free(st.privb);
    return rc;
}

/* The pass behind dec_forward, dec_forward_rows and dec_forward_from
 * (start > 0 or x0 set: from that sub-layer, on the stream x0): logits of
 * the last row
 * of each sequence, of every row (all_logits), or of rows from[b].. of
 * sequence b (from non-NULL). */
static int s_forward(const DecPage *p, DecSeq **seqs, const int32_t *const *ids, const int *counts,
                     int B, float *logits, int all_logits, const int *from, int start,
                     const float *x0, const DecHooks *hooks, const DmProbe *probe, DmErr *err)
{
    const DonutModel *m = p->m;
    const MBartConfig *c = &m->cfg.dec;
    const MBartWeights *w = &m->dec;
    int D = c->d_model, R = 0;
    if (B < 1)
        return dm_err(err, "decoder: no sequences");
    for (int b = 0; b < B; b++) {
        if (counts[b] < 1)
            return dm_err(err, "decoder: sequence %d has no tokens", b);
        if (seqs[b]->len + counts[b] > seqs[b]->cap ||
            seqs[b]->len + counts[b] > c->max_pos)
            return dm_err(err, "decoder: sequence of %d tokens exceeds the model's %d positions",
                          seqs[b]->len + counts[b], c->max_pos);
        for (int i = 0; i < counts[b]; i++)
            if (ids[b][i] < 0 || ids[b][i] >= c->vocab)
                return dm_err(err, "decoder: token id %d is outside the vocabulary (%d)",
                              ids[b][i], c->vocab);
        R += counts[b];
    }
    if (B > 1)
        probe = NULL;
    Block blk = {B, counts};
    int step = B <= 64 && !x0 && (!hooks || !hooks->fn) && (!probe || !probe->emit);
    for (int b = 0; b < B; b++)
        step &= counts[b] == 1;
    if (step)
        return s_step(p, seqs, ids, B, logits, err);
    int inner_max = c->heads * w->head_dim;
    Scratch sc = {0};
    sc.x = malloc((size_t)R * D * sizeof(float));
    sc.h = malloc((size_t)R * D * sizeof(float));
    sc.out = malloc((size_t)R * D * sizeof(float));
    sc.q = malloc((size_t)R * inner_max * sizeof(float));
    sc.k = malloc((size_t)R * inner_max * sizeof(float));
    sc.v = malloc((size_t)R * inner_max * sizeof(float));
    sc.ctx = malloc((size_t)R * inner_max * sizeof(float));
    sc.ff = malloc((size_t)R * c->ffn * sizeof(float));
    int rc = -1;
    if (!sc.x || !sc.h || !sc.out || !sc.q || !sc.k || !sc.v || !sc.ctx || !sc.ff) {
        dm_err(err, "decoder: out of memory for %d rows", R);
        goto done;
    }
    /* Embeddings (or the stream given, entering sub-layer `start`).  The
     * scale is a float32 multiply, as torch does with a Python float. */
    float escale = c->scale_embedding ? (float)sqrt((double)D) : 1.0f;
    for (int b = 0, r = 0; !x0 && b < B; r += counts[b], b++)
        for (int i = 0; i < counts[b]; i++) {
            const float *pe = w->embed_positions + (size_t)(seqs[b]->len + i + 2) * D;
            float *xr = sc.x + (size_t)(r + i) * D;
            s_embed_token(w, ids[b][i], D, xr);
            for (int d = 0; d < D; d++)
                xr[d] = xr[d] * escale + pe[d];
        }
    if (x0)
        memcpy(sc.x, x0, (size_t)R * D * sizeof(float));
    else
        kern_layernorm(sc.x, R, D, w->ln_emb.g, w->ln_emb.b, c->ln_eps, sc.x);
    int64_t hshape[3] = {1, R, D};
    s_emit(probe, "decoder.hidden_states.0", 3, hshape, sc.x);

    int pos0 = seqs[0]->len;
    for (int l = 0; l < c->layers; l++) {
        const DecLayer *L = &w->layers[l];
        for (int kind = DM_SUB_S; kind <= DM_SUB_M; kind++) {
            int present = kind == DM_SUB_S ? L->self.present
                          : kind == DM_SUB_C ? L->cross.present
                                             : L->ffn.present;
            if (!present || 3 * l + kind < start)
                continue;
            if (s_hook(hooks, &blk, l, kind, DEC_HOOK_INPUT, sc.x, 2, R, D, 0, pos0, err))
                goto done;
            if (kind == DM_SUB_M)
                s_ffn(m, l, &sc, R);
            else if (s_attention(p, seqs, counts, B, l, kind == DM_SUB_S, &sc, R, hooks, probe,
                                 err))
                goto done;
            if (s_hook(hooks, &blk, l, kind, DEC_HOOK_OUTPUT, sc.out, 2, R, D, 0, pos0, err))
                goto done;
            kern_add(sc.x, sc.out, (size_t)R * D);
        }
        if (l + 1 < c->layers) {
            char name[64];
            snprintf(name, sizeof name, "decoder.hidden_states.%d", l + 1);
            s_emit(probe, name, 3, hshape, sc.x);
        }
    }
    s_emit(probe, "decoder.last_layer_output", 3, hshape, sc.x);
    kern_layernorm(sc.x, R, D, w->ln_final.g, w->ln_final.b, c->ln_eps, sc.x);
    {
        char name[64];
        snprintf(name, sizeof name, "decoder.hidden_states.%d", c->layers);
        s_emit(probe, name, 3, hshape, sc.x);
    }
    for (int b = 0; b < B; b++)
        seqs[b]->len += counts[b];
    if (logits && from) {
        /* The wanted rows of each sequence, gathered: one GEMM. */
        int n = 0;
        for (int b = 0, r = 0; b < B; r += counts[b], b++)
            for (int i = from[b]; i < counts[b]; i++, n++)
                memmove(sc.h + (size_t)n * D, sc.x + (size_t)(r + i) * D, (size_t)D * sizeof(float));
        s_lm_head(w, sc.h, n, D, c->vocab, logits);
    } else if (logits) {
        if (all_logits) {
            s_lm_head(w, sc.x, R, D, c->vocab, logits);
            int64_t lshape[3] = {1, R, c->vocab};
            s_emit(probe, "decoder.logits", 3, lshape, logits);
        } else {
            /* Only each sequence's last row: gather them, one GEMM. */
            for (int b = 0, r = 0; b < B; b++) {
                r += counts[b];
                memmove(sc.h + (size_t)b * D, sc.x + (size_t)(r - 1) * D, (size_t)D * sizeof(float));
            }
            s_lm_head(w, sc.h, B, D, c->vocab, logits);
        }
    }
    rc = 0;
done:
    s_scratch_free(&sc);
    return rc;
}

int dec_forward(const DecPage *p, DecSeq **seqs, const int32_t *const *ids, const int *counts,
                int B, float *logits, int all_logits, const DecHooks *hooks,
                const DmProbe *probe, DmErr *err)
{
    return s_forward(p, seqs, ids, counts, B, logits, all_logits, NULL, 0, NULL, hooks, probe, err);
}

/* dec_forward_rows from sub-layer start on the stream x (0, NULL: from
 * the embedding). */
static int s_forward_rows(const DecPage *p, DecSeq **seqs, const int32_t *const *ids,
                          const int *counts, const int *from, int B, int start, const float *x,
                          float *logits, const DecHooks *hooks, DmErr *err)
{
    for (int b = 0; b < B; b++)
        if (from[b] < 0 || from[b] > counts[b])
            return dm_err(err, "decoder: sequence %d: logits from row %d of %d", b, from[b],
                          counts[b]);
    return s_forward(p, seqs, ids, counts, B, logits, 0, from, start, x, hooks, NULL, err);
}

int dec_forward_rows(const DecPage *p, DecSeq **seqs, const int32_t *const *ids,
                     const int *counts, const int *from, int B, float *logits,
                     const DecHooks *hooks, DmErr *err)
{
    return s_forward_rows(p, seqs, ids, counts, from, B, 0, NULL, logits, hooks, err);
}

int dec_forward_from(const DecPage *p, DecSeq **seqs, const int32_t *const *ids,
                     const int *counts, const int *from, int B, int start, const float *x,
                     float *logits, const DecHooks *hooks, DmErr *err)
{
    if (start < 0 || start > 3 * p->m->cfg.dec.layers)
        return dm_err(err, "decoder: no sub-layer %d to start from", start);
    for (int b = 0; b < B; b++)
        if (seqs[b]->len)
            return dm_err(err, "decoder: sequence %d already holds %d tokens", b, seqs[b]->len);
    return s_forward_rows(p, seqs, ids, counts, from, B, start, x, logits, hooks, err);
}
