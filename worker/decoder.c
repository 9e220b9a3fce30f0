/* decoder.c - mBART decoder forward pass (pre-LN layers, KV cache, cross
 * K/V once per page), with hooks for analysis and probes for checking.
 *
 * Numerics follow transformers' MBartDecoder: token embedding times
 * sqrt(d_model) when scale_embedding, plus learned position p + 2, then
 * layernorm_embedding; per layer S, C, M each as LayerNorm -> sub-layer ->
 * residual add; queries scaled by head_dim^-0.5 after their bias; final
 * layer_norm; LM head without bias. */
#include "decoder.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kern.h"

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

int dec_page_init(DecPage *p, const DonutModel *m, const float *enc, int n_enc, DmErr *err)
{
    memset(p, 0, sizeof *p);
    p->m = m;
    p->n_enc = n_enc;
    p->enc = enc;
    const MBartConfig *c = &m->cfg.dec;
    for (int l = 0; l < c->layers; l++) {
        const DecAttn *a = &m->dec.layers[l].cross;
        if (!a->present)
            continue;
        size_t n = (size_t)n_enc * a->k.out;
        if (s_kv_alloc(&p->ck[l], &p->cv[l], n)) {
            dec_page_free(p);
            return dm_err(err, "out of memory for cross-attention keys (%zu floats)", 2 * n);
        }
        kern_linear(enc, n_enc, c->d_model, a->k.w, a->k.b, a->k.out, p->ck[l]);
        kern_linear(enc, n_enc, c->d_model, a->v.w, a->v.b, a->v.out, p->cv[l]);
    }
    return 0;
}

void dec_page_free(DecPage *p)
{
    for (int l = 0; l < DM_MAX_LAYERS; l++) {
        free(p->ck[l]);
        free(p->cv[l]);
        p->ck[l] = p->cv[l] = NULL;
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
}

static int s_hook(const DecHooks *hooks, int layer, int kind, DecHookPoint pt, float *data,
                  int ndim, int64_t d0, int64_t d1, int64_t d2, int pos0, DmErr *err)
{
    if (!hooks || !hooks->fn)
        return 0;
    DecHookEvent ev = {layer, kind, pt, data, ndim, {d0, d1, d2}, pos0};
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
    if (s_hook(hooks, layer, is_self ? DM_SUB_S : DM_SUB_C, DEC_HOOK_ATTN, probs, 3, H, T, S, pos0,
               err))
        return -1;
    char name[64];
    snprintf(name, sizeof name, "decoder.%s_attentions.%d", is_self ? "self" : "cross", layer);
    int64_t shape[4] = {1, H, T, S};
    s_emit(probe, name, 4, shape, probs);
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

    kern_layernorm(sc->x, R, D, a->ln.g, a->ln.b, c->ln_eps, sc->h);
    kern_linear(sc->h, R, D, a->q.w, a->q.b, inner, sc->q);
    for (size_t i = 0; i < (size_t)R * inner; i++)
        sc->q[i] *= scale;
    if (is_self) {
        kern_linear(sc->h, R, D, a->k.w, a->k.b, inner, sc->k);
        kern_linear(sc->h, R, D, a->v.w, a->v.b, inner, sc->v);
        for (int b = 0, r = 0; b < B; r += counts[b], b++) {
            DecSeq *s = seqs[b];
            memcpy(s->sk[layer] + (size_t)s->len * inner, sc->k + (size_t)r * inner,
                   (size_t)counts[b] * inner * sizeof(float));
            memcpy(s->sv[layer] + (size_t)s->len * inner, sc->v + (size_t)r * inner,
                   (size_t)counts[b] * inner * sizeof(float));
        }
    }
    /* Cross-attention of a decoding step: every question of the page
     * attends to the same keys and values, so stream them once for all. */
    int all_one = 1;
    for (int b = 0; b < B; b++)
        all_one &= counts[b] == 1;
    if (!is_self && all_one && B > 1) {
        size_t need = (size_t)B * H * p->n_enc;
        if (need > sc->probs_cap) {
            free(sc->probs);
            sc->probs = malloc(need * sizeof(float));
            sc->probs_cap = sc->probs ? need : 0;
            if (!sc->probs)
                return dm_err(err, "out of memory for attention scores");
        }
        kern_attend_scores(sc->q, B, inner, p->ck[layer], p->n_enc, H, hd, inner, sc->probs);
        kern_attend_values(sc->probs, B, p->cv[layer], p->n_enc, H, hd, inner, sc->ctx, inner);
        kern_linear(sc->ctx, R, inner, a->o.w, a->o.b, D, sc->out);
        return 0;
    }
    /* Cross-attention over blocks of rows (a prompt, teacher-forced
     * sequences): no mask, and every row of every sequence attends to the
     * same keys and values, so one GEMM per head covers all the rows of a
     * chunk (DEC_CROSS_CHUNK rows bound the scores; one sequence is one
     * chunk, as its hook sees all its rows). */
    if (!is_self && !all_one) {
        int S = p->n_enc, chunk = B == 1 || R < DEC_CROSS_CHUNK ? R : DEC_CROSS_CHUNK;
        if (s_probs_reserve(sc, (size_t)H * chunk * S, err))
            return -1;
        for (int r0 = 0; r0 < R; r0 += chunk) {
            int n = R - r0 < chunk ? R - r0 : chunk;
            for (int h = 0; h < H; h++) {
                float *P = sc->probs + (size_t)h * n * S;
                kern_gemm_nt(n, S, hd, 1.0f, sc->q + (size_t)r0 * inner + h * hd, inner,
                             p->ck[layer] + h * hd, inner, 0.0f, P, S);
                kern_softmax_rows(P, n, S);
            }
            if (B == 1 &&
                s_attn_report(hooks, probe, layer, 0, sc->probs, H, n, S, seqs[0]->len, err))
                return -1;
            for (int h = 0; h < H; h++)
                kern_gemm_nn(n, hd, S, 1.0f, sc->probs + (size_t)h * n * S, S,
                             p->cv[layer] + h * hd, inner, 0.0f,
                             sc->ctx + (size_t)r0 * inner + h * hd, inner);
        }
        kern_linear(sc->ctx, R, inner, a->o.w, a->o.b, D, sc->out);
        return 0;
    }
    /* Self-attention of several fresh sequences (prompts, teacher-forced
     * sequences): their keys are the block's own rows, so one GEMM per head
     * over the whole block, with a mask that is causal inside each sequence
     * and closed between them. */
    int fresh = is_self && B > 1 && !all_one;
    for (int b = 0; fresh && b < B; b++)
        fresh = seqs[b]->len == 0;
    if (fresh) {
        if (s_probs_reserve(sc, (size_t)H * R * R, err))
            return -1;
        for (int h = 0; h < H; h++) {
            float *P = sc->probs + (size_t)h * R * R;
            kern_gemm_nt(R, R, hd, 1.0f, sc->q + h * hd, inner, sc->k + h * hd, inner, 0.0f, P, R);
            for (int b = 0, r0 = 0; b < B; r0 += counts[b], b++)
                for (int i = r0; i < r0 + counts[b]; i++)
                    for (int j = 0; j < R; j++)
                        if (j < r0 || j > i)
                            P[(size_t)i * R + j] = -INFINITY;
            kern_softmax_rows(P, R, R);
            kern_gemm_nn(R, hd, R, 1.0f, P, R, sc->v + h * hd, inner, 0.0f, sc->ctx + h * hd,
                         inner);
        }
        kern_linear(sc->ctx, R, inner, a->o.w, a->o.b, D, sc->out);
        return 0;
    }
    for (int b = 0, r = 0; b < B; r += counts[b], b++) {
        int T = counts[b];
        int pos0 = seqs[b]->len;
        int S = is_self ? pos0 + T : p->n_enc;
        const float *K = is_self ? seqs[b]->sk[layer] : p->ck[layer];
        const float *V = is_self ? seqs[b]->sv[layer] : p->cv[layer];
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
            if (is_self)
                for (int i = 0; i < T; i++)
                    for (int j = pos0 + i + 1; j < S; j++)
                        P[(size_t)i * S + j] = -INFINITY;
            kern_softmax_rows(P, T, S);
        }
        if (B == 1 && s_attn_report(hooks, probe, layer, is_self, sc->probs, H, T, S, pos0, err))
            return -1;
        if (T == 1)
            kern_attend_values(sc->probs, 1, V, S, H, hd, inner, sc->ctx + (size_t)r * inner, inner);
        for (int h = 0; T > 1 && h < H; h++)
            kern_gemm_nn(T, hd, S, 1.0f, sc->probs + (size_t)h * T * S, S, V + h * hd, inner,
                         0.0f, sc->ctx + (size_t)r * inner + h * hd, inner);
    }
    kern_linear(sc->ctx, R, inner, a->o.w, a->o.b, D, sc->out);
    return 0;
}

static int s_ffn(const DonutModel *m, int layer, Scratch *sc, int R)
{
    const MBartConfig *c = &m->cfg.dec;
    const DecFfn *f = &m->dec.layers[layer].ffn;
    kern_layernorm(sc->x, R, c->d_model, f->ln.g, f->ln.b, c->ln_eps, sc->h);
    kern_linear(sc->h, R, c->d_model, f->fc1.w, f->fc1.b, c->ffn, sc->ff);
    kern_gelu(sc->ff, (size_t)R * c->ffn);
    kern_linear(sc->ff, R, c->ffn, f->fc2.w, f->fc2.b, c->d_model, sc->out);
    return 0;
}

/* The pass behind dec_forward and dec_forward_rows: logits of the last row
 * of each sequence, of every row (all_logits), or of rows from[b].. of
 * sequence b (from non-NULL). */
static int s_forward(const DecPage *p, DecSeq **seqs, const int32_t *const *ids, const int *counts,
                     int B, float *logits, int all_logits, const int *from,
                     const DecHooks *hooks, const DmProbe *probe, DmErr *err)
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
    if (B > 1) {
        hooks = NULL;
        probe = NULL;
    }
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
    /* Embeddings.  The scale is a float32 multiply, as torch does with a
     * Python float. */
    float escale = c->scale_embedding ? (float)sqrt((double)D) : 1.0f;
    for (int b = 0, r = 0; b < B; r += counts[b], b++)
        for (int i = 0; i < counts[b]; i++) {
            const float *te = w->embed_tokens + (size_t)ids[b][i] * D;
            const float *pe = w->embed_positions + (size_t)(seqs[b]->len + i + 2) * D;
            float *xr = sc.x + (size_t)(r + i) * D;
            for (int d = 0; d < D; d++)
                xr[d] = te[d] * escale + pe[d];
        }
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
            if (!present)
                continue;
            if (B == 1 && s_hook(hooks, l, kind, DEC_HOOK_INPUT, sc.x, 2, R, D, 0, pos0, err))
                goto done;
            if (kind == DM_SUB_M)
                s_ffn(m, l, &sc, R);
            else if (s_attention(p, seqs, counts, B, l, kind == DM_SUB_S, &sc, R, hooks, probe,
                                 err))
                goto done;
            if (B == 1 && s_hook(hooks, l, kind, DEC_HOOK_OUTPUT, sc.out, 2, R, D, 0, pos0, err))
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
        kern_linear(sc.h, n, D, w->lm_head, NULL, c->vocab, logits);
    } else if (logits) {
        if (all_logits) {
            kern_linear(sc.x, R, D, w->lm_head, NULL, c->vocab, logits);
            int64_t lshape[3] = {1, R, c->vocab};
            s_emit(probe, "decoder.logits", 3, lshape, logits);
        } else {
            /* Only each sequence's last row: gather them, one GEMM. */
            for (int b = 0, r = 0; b < B; b++) {
                r += counts[b];
                memmove(sc.h + (size_t)b * D, sc.x + (size_t)(r - 1) * D, (size_t)D * sizeof(float));
            }
            kern_linear(sc.h, B, D, w->lm_head, NULL, c->vocab, logits);
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
    return s_forward(p, seqs, ids, counts, B, logits, all_logits, NULL, hooks, probe, err);
}

int dec_forward_rows(const DecPage *p, DecSeq **seqs, const int32_t *const *ids,
                     const int *counts, const int *from, int B, float *logits, DmErr *err)
{
    for (int b = 0; b < B; b++)
        if (from[b] < 0 || from[b] > counts[b])
            return dm_err(err, "decoder: sequence %d: logits from row %d of %d", b, from[b],
                          counts[b]);
    return s_forward(p, seqs, ids, counts, B, logits, 0, from, NULL, NULL, err);
}
