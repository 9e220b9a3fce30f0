/* train_params.c - the trainable decoder weights in one buffer, and AdamW
 * (train.h). */
#include "worker/train/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One trainable tensor found in the model: its name, shape and the model's
 * pointer to it (repointed into the buffer). */
typedef struct Slot {
    const float **ptr;
    TrainParam p;
} Slot;

typedef struct Walk {
    Slot *s;
    int n, cap;
} Walk;

static void s_add4(Walk *w, const char *name, const float **ptr, int ndim, const int64_t *shape)
{
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 64;
        w->s = dm_xrealloc(w->s, (size_t)w->cap * sizeof *w->s);
    }
    Slot *s = &w->s[w->n++];
    memset(s, 0, sizeof *s);
    s->ptr = ptr;
    snprintf(s->p.name, sizeof s->p.name, "%s", name);
    s->p.ndim = ndim;
    s->p.count = 1;
    for (int i = 0; i < ndim; i++) {
        s->p.shape[i] = shape[i];
        s->p.count *= (size_t)shape[i];
    }
}

static void s_add(Walk *w, const char *name, const float **ptr, int ndim, int64_t d0, int64_t d1)
{
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 64;
        w->s = dm_xrealloc(w->s, (size_t)w->cap * sizeof *w->s);
    }
    Slot *s = &w->s[w->n++];
    memset(s, 0, sizeof *s);
    s->ptr = ptr;
    snprintf(s->p.name, sizeof s->p.name, "%s", name);
    s->p.ndim = ndim;
    s->p.shape[0] = d0;
    s->p.shape[1] = ndim == 2 ? d1 : 0;
    s->p.count = (size_t)d0 * (size_t)(ndim == 2 ? d1 : 1);
}

static void s_norm(Walk *w, const char *prefix, DmNorm *n)
{
    char nm[160];
    snprintf(nm, sizeof nm, "%s.weight", prefix);
    s_add(w, nm, &n->g, 1, n->n, 0);
    snprintf(nm, sizeof nm, "%s.bias", prefix);
    s_add(w, nm, &n->b, 1, n->n, 0);
}

static void s_linear(Walk *w, const char *prefix, DmLinear *l)
{
    char nm[160];
    snprintf(nm, sizeof nm, "%s.weight", prefix);
    s_add(w, nm, &l->w, 2, l->out, l->in);
    if (!l->b) /* the encoder's q/k/v without qkv_bias, patch merging */
        return;
    snprintf(nm, sizeof nm, "%s.bias", prefix);
    s_add(w, nm, &l->b, 1, l->out, 0);
}

static void s_attn(Walk *w, const char *prefix, const char *ln, DecAttn *a)
{
    static const char *proj[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};
    DmLinear *lin[4] = {&a->q, &a->k, &a->v, &a->o};
    char nm[160];
    for (int i = 0; i < 4; i++) {
        snprintf(nm, sizeof nm, "%s.%s", prefix, proj[i]);
        s_linear(w, nm, lin[i]);
    }
    s_norm(w, ln, &a->ln);
}

/* The trainable tensors in the checkpoint loader's binding order, with the
 * shapes of the (possibly cut) student. */
static void s_walk(DonutModel *m, Walk *w)
{
    MBartWeights *d = &m->dec;
    const char *pre = "decoder.model.decoder";
    char a[160], b[160];
    snprintf(a, sizeof a, "%s.embed_positions.weight", pre);
    s_add(w, a, &d->embed_positions, 2, m->cfg.dec.max_pos + 2, m->cfg.dec.d_model);
    snprintf(a, sizeof a, "%s.layernorm_embedding", pre);
    s_norm(w, a, &d->ln_emb);
    snprintf(a, sizeof a, "%s.layer_norm", pre);
    s_norm(w, a, &d->ln_final);
    for (int l = 0; l < m->cfg.dec.layers; l++) {
        DecLayer *L = &d->layers[l];
        if (L->self.present) {
            snprintf(a, sizeof a, "%s.layers.%d.self_attn", pre, l);
            snprintf(b, sizeof b, "%s.layers.%d.self_attn_layer_norm", pre, l);
            s_attn(w, a, b, &L->self);
        }
        if (L->cross.present) {
            snprintf(a, sizeof a, "%s.layers.%d.encoder_attn", pre, l);
            snprintf(b, sizeof b, "%s.layers.%d.encoder_attn_layer_norm", pre, l);
            s_attn(w, a, b, &L->cross);
        }
        if (L->ffn.present) {
            snprintf(a, sizeof a, "%s.layers.%d.fc1", pre, l);
            s_linear(w, a, &L->ffn.fc1);
            snprintf(a, sizeof a, "%s.layers.%d.fc2", pre, l);
            s_linear(w, a, &L->ffn.fc2);
            snprintf(a, sizeof a, "%s.layers.%d.final_layer_norm", pre, l);
            s_norm(w, a, &L->ffn.ln);
        }
    }
}

/* The encoder's tensors in the checkpoint loader's binding order. */
static void s_walk_encoder(DonutModel *m, Walk *w)
{
    const SwinConfig *c = &m->cfg.enc;
    SwinWeights *e = &m->enc;
    int64_t psh[4] = {c->embed_dim, c->channels, c->patch, c->patch};
    s_add4(w, "encoder.embeddings.patch_embeddings.projection.weight", &e->patch_w, 4, psh);
    s_add(w, "encoder.embeddings.patch_embeddings.projection.bias", &e->patch_b, 1, c->embed_dim,
          0);
    s_norm(w, "encoder.embeddings.norm", &e->patch_norm);
    int nrel = (2 * c->window - 1) * (2 * c->window - 1);
    char p[160], nm[200];
    for (int s = 0; s < c->nstages; s++) {
        SwinStage *st = &e->stages[s];
        for (int k = 0; k < st->depth; k++) {
            SwinBlock *bl = &st->blocks[k];
            snprintf(p, sizeof p, "encoder.encoder.layers.%d.blocks.%d", s, k);
#define PFX(suffix) (snprintf(nm, sizeof nm, "%s.%s", p, suffix), nm)
            s_norm(w, PFX("layernorm_before"), &bl->ln_before);
            s_linear(w, PFX("attention.self.query"), &bl->q);
            s_linear(w, PFX("attention.self.key"), &bl->k);
            s_linear(w, PFX("attention.self.value"), &bl->v);
            s_add(w, PFX("attention.self.relative_position_bias_table"), &bl->rel_bias, 2, nrel,
                  st->heads);
            s_linear(w, PFX("attention.output.dense"), &bl->proj);
            s_norm(w, PFX("layernorm_after"), &bl->ln_after);
            s_linear(w, PFX("intermediate.dense"), &bl->fc1);
            s_linear(w, PFX("output.dense"), &bl->fc2);
#undef PFX
        }
        if (st->has_merge) {
            snprintf(p, sizeof p, "encoder.encoder.layers.%d.downsample.norm", s);
            s_norm(w, p, &st->merge_norm);
            snprintf(p, sizeof p, "encoder.encoder.layers.%d.downsample.reduction", s);
            s_linear(w, p, &st->merge);
        }
    }
    s_add(w, "decoder.model.decoder.embed_tokens.weight", &m->dec.embed_tokens, 2,
          m->cfg.dec.vocab, m->cfg.dec.d_model);
}

/* Drop the encoder's packed GEMM forms (q.packed holds q|k|v fused): they
 * would keep serving the weights they were packed from.  swin_encode packs
 * again from the current weights on its next page. */
static int s_drop_encoder_forms(DonutModel *m)
{
    int bf = 0;
    for (int s = 0; s < m->cfg.enc.nstages; s++) {
        SwinStage *st = &m->enc.stages[s];
        for (int k = 0; k < st->depth; k++) {
            SwinBlock *bl = &st->blocks[k];
            DmLinear *ls[6] = {&bl->q, &bl->k, &bl->v, &bl->proj, &bl->fc1, &bl->fc2};
            for (int i = 0; i < 6; i++) {
                bf |= ls[i]->wbf != NULL;
                donut_unpack_linear(m, ls[i]);
            }
        }
        if (st->has_merge) {
            bf |= st->merge.wbf != NULL;
            donut_unpack_linear(m, &st->merge);
        }
    }
    return bf;
}

/* A weight stored in a second form would keep serving the old values
 * after repointing: pre-packed GEMM operands are dropped (the decoder packs
 * for passes over many rows) and, with m->training set, not made again;
 * returns 1 when a bfloat16 copy exists (refused by the caller). */
static int s_drop_second_forms(DonutModel *m)
{
    DmLinear *lin[DM_DEC_LINEARS_MAX];
    int bf = 0, n = donut_dec_linears(m, lin);
    for (int i = 0; i < n; i++)
        bf |= lin[i]->wbf != NULL;
    donut_unpack_decoder(m);
    m->training = 1;
    return bf;
}

static int s_init(DonutModel *m, TrainParams *tp, int whole, DmErr *err)
{
    memset(tp, 0, sizeof *tp);
    if (!m->cfg.dec.tie_word_embeddings)
        return dm_err(err, "%s: training needs the LM head tied to the token embeddings", m->dir);
    if (m->precision != DM_PREC_F32 || s_drop_second_forms(m) ||
        (whole && s_drop_encoder_forms(m)))
        return dm_err(err, "%s: the model is loaded with bfloat16 weights; training needs plain "
                      "float32", m->dir);
    Walk w = {0};
    if (whole)
        s_walk_encoder(m, &w);
    s_walk(m, &w);
    size_t total = 0;
    for (int i = 0; i < w.n; i++) {
        w.s[i].p.offset = total;
        total += w.s[i].p.count;
    }
    tp->data = malloc(total * sizeof(float));
    tp->grad = calloc(total, sizeof(float));
    tp->p = malloc((size_t)w.n * sizeof *tp->p);
    if (!tp->data || !tp->grad || !tp->p) {
        free(w.s);
        train_params_free(tp);
        return dm_err(err, "out of memory for %zu trainable weights", total);
    }
    for (int i = 0; i < w.n; i++) {
        float *dst = tp->data + w.s[i].p.offset;
        memcpy(dst, *w.s[i].ptr, w.s[i].p.count * sizeof(float));
        *w.s[i].ptr = dst;
        tp->p[i] = w.s[i].p;
    }
    tp->n = w.n;
    tp->total = total;
    tp->whole = whole;
    if (whole) /* the tied LM head is the token embedding */
        m->dec.lm_head = m->dec.embed_tokens;
    free(w.s);
    return 0;
}

int train_params_init(DonutModel *m, TrainParams *tp, DmErr *err)
{
    return s_init(m, tp, 0, err);
}

int train_params_init_all(DonutModel *m, TrainParams *tp, DmErr *err)
{
    return s_init(m, tp, 1, err);
}

void train_params_set_mask(TrainParams *tp, const DmMask *k)
{
    free(tp->keep);
    tp->keep = NULL;
    tp->held = 0;
    if (!k)
        return;
    tp->keep = dm_xmalloc(tp->total);
    memset(tp->keep, 1, tp->total);
    for (int i = 0; i < tp->n; i++) {
        size_t n = 0;
        const uint8_t *b = mask_find(k, tp->p[i].name, &n);
        if (!b || n != tp->p[i].count) /* mask_load checked the shapes */
            continue;
        memcpy(tp->keep + tp->p[i].offset, b, n);
    }
    for (size_t i = 0; i < tp->total; i++)
        tp->held += !tp->keep[i];
}

void train_params_hold_mask(TrainParams *tp, int grad)
{
    if (!tp->keep)
        return;
    float *x = grad ? tp->grad : tp->data;
    for (size_t i = 0; i < tp->total; i++)
        if (!tp->keep[i])
            x[i] = 0.0f;
}

void train_params_free(TrainParams *tp)
{
    free(tp->keep);
    free(tp->p);
    free(tp->data);
    free(tp->grad);
    memset(tp, 0, sizeof *tp);
}

const TrainParam *train_param_find(const TrainParams *tp, const char *name)
{
    for (int i = 0; i < tp->n; i++)
        if (!strcmp(tp->p[i].name, name))
            return &tp->p[i];
    return NULL;
}

int adamw_init(AdamW *o, size_t n, double beta1, double beta2, double eps, double weight_decay,
               DmErr *err)
{
    memset(o, 0, sizeof *o);
    o->m = calloc(n ? n : 1, sizeof(float));
    o->v = calloc(n ? n : 1, sizeof(float));
    if (!o->m || !o->v) {
        adamw_free(o);
        return dm_err(err, "out of memory for the AdamW moments of %zu weights", n);
    }
    o->n = n;
    o->beta1 = beta1;
    o->beta2 = beta2;
    o->eps = eps;
    o->weight_decay = weight_decay;
    return 0;
}

/* The float32 operations of PyTorch 1.13's single-tensor AdamW, in its
 * order: the Python-float factors are rounded to float once, the bias
 * corrections are computed in double as Python does. */
void adamw_step(AdamW *o, float *w, const float *g, double lr)
{
    o->step++;
    double bc1 = 1.0 - pow(o->beta1, (double)o->step);
    double bc2 = 1.0 - pow(o->beta2, (double)o->step);
    float decay = (float)(1.0 - lr * o->weight_decay);
    float b1 = (float)o->beta1, c1 = (float)(1.0 - o->beta1);
    float b2 = (float)o->beta2, c2 = (float)(1.0 - o->beta2);
    float bc2_sqrt = (float)sqrt(bc2), eps = (float)o->eps, step = (float)(-(lr / bc1));
#pragma omp parallel for schedule(static) if (o->n > 65536)
    for (size_t i = 0; i < o->n; i++) {
        w[i] *= decay;
        o->m[i] = o->m[i] * b1 + c1 * g[i];
        o->v[i] = o->v[i] * b2 + c2 * g[i] * g[i];
        float denom = sqrtf(o->v[i]) / bc2_sqrt + eps;
        w[i] += step * o->m[i] / denom;
    }
}

void adamw_free(AdamW *o)
{
    free(o->m);
    free(o->v);
    memset(o, 0, sizeof *o);
}
