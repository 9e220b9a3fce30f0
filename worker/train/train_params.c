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

int train_params_init(DonutModel *m, TrainParams *tp, DmErr *err)
{
    memset(tp, 0, sizeof *tp);
    if (!m->cfg.dec.tie_word_embeddings)
        return dm_err(err, "%s: training needs the LM head tied to the token embeddings", m->dir);
    if (m->precision != DM_PREC_F32 || s_drop_second_forms(m))
        return dm_err(err, "%s: the model is loaded with bfloat16 weights; training needs plain "
                      "float32", m->dir);
    Walk w = {0};
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
    free(w.s);
    return 0;
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
