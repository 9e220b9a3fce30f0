/* an_lens.c - the logit lens, scores of a row of logits, the token
 * reprojection and the transcription projection (analyze.h). */
#include "worker/analyze/analyze.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/kern.h"

/* The tied LM head as a linear of the model's current weights. */
static DmLinear s_head(const DonutModel *m)
{
    const MBartWeights *w = &m->dec;
    DmLinear h = {.w = w->lm_head, .wbf = w->lm_head_bf16, .out = m->cfg.dec.vocab,
                  .in = m->cfg.dec.d_model, .packed = w->head.packed};
    return h;
}

int an_lens(const DonutModel *m, const float *x, int n, float *y, DmErr *err)
{
    const MBartConfig *c = &m->cfg.dec;
    float *h = malloc((size_t)n * c->d_model * sizeof(float));
    if (!h)
        return dm_err(err, "analyze: out of memory for the logit lens");
    kern_layernorm(x, n, c->d_model, m->dec.ln_final.g, m->dec.ln_final.b, c->ln_eps, h);
    DmLinear head = s_head(m);
    donut_linear(&head, h, n, y);
    free(h);
    return 0;
}

/* log sum exp of a row, in double. */
static double s_lse(const float *row, int V)
{
    float mx = row[kern_argmax(row, V)];
    double s = 0.0;
    for (int v = 0; v < V; v++)
        s += exp((double)row[v] - mx);
    return mx + log(s);
}

double an_logprob(const float *row, int V, int target, int64_t *rank, int64_t *top1)
{
    if (rank) {
        /* log softmax is increasing in the logit: compare logits */
        int64_t k = 0;
        for (int v = 0; v < V; v++)
            k += row[v] > row[target];
        *rank = k;
    }
    if (top1)
        *top1 = kern_argmax(row, V);
    return (double)row[target] - s_lse(row, V);
}

double an_nll(const float *logits, int n, int V, const int32_t *targets)
{
    double s = 0.0;
    for (int t = 0; t < n; t++)
        s -= an_logprob(logits + (size_t)t * V, V, targets[t], NULL, NULL);
    return s / n;
}

double an_entropy_logits(const float *row, int V)
{
    double lse = s_lse(row, V), h = 0.0;
    for (int v = 0; v < V; v++) {
        double lp = row[v] - lse, p = exp(lp);
        if (p > 0.0)
            h -= p * lp;
    }
    return h;
}

int an_reproject(const DonutModel *m, const float *x, int T, float *y, DmErr *err)
{
    const MBartConfig *c = &m->cfg.dec;
    const MBartWeights *w = &m->dec;
    int D = c->d_model, V = c->vocab;
    float *lens = malloc((size_t)T * V * sizeof(float));
    if (!lens)
        return dm_err(err, "analyze: out of memory for a reprojection");
    if (an_lens(m, x, T, lens, err)) {
        free(lens);
        return -1;
    }
    /* the decoder's embedding: the scale is a float32 multiply */
    float escale = c->scale_embedding ? (float)sqrt((double)D) : 1.0f;
    for (int t = 0; t < T; t++) {
        int id = kern_argmax(lens + (size_t)t * V, V);
        const float *pe = w->embed_positions + (size_t)(t + 2) * D;
        float *yr = y + (size_t)t * D;
        for (int d = 0; d < D; d++) {
            float e = w->embed_tokens_bf16 ? kern_bf16_f32(w->embed_tokens_bf16[(size_t)id * D + d])
                                           : w->embed_tokens[(size_t)id * D + d];
            yr[d] = e * escale + pe[d];
        }
    }
    kern_layernorm(y, T, D, w->ln_emb.g, w->ln_emb.b, c->ln_eps, y);
    free(lens);
    return 0;
}

int an_transcribe(const DonutModel *m, int layer, const float *enc, int n, const int *keep,
                  float *z, DmErr *err)
{
    const MBartConfig *c = &m->cfg.dec;
    const DecAttn *a = &m->dec.layers[layer].cross;
    int hd = m->dec.head_dim, inner = a->nheads * hd;
    if (layer < 0 || layer >= c->layers || !a->present)
        return dm_err(err, "analyze: no cross-attention C%d to project through", layer);
    float *v = malloc((size_t)n * inner * sizeof(float));
    float *o = malloc((size_t)n * c->d_model * sizeof(float));
    if (!v || !o) {
        free(v);
        free(o);
        return dm_err(err, "analyze: out of memory for the transcription of %d tokens", n);
    }
    donut_linear(&a->v, enc, n, v);
    for (int k = 0; keep && k < a->nheads; k++) {
        if (keep[a->head_ids[k]])
            continue;
        for (int j = 0; j < n; j++)
            memset(v + (size_t)j * inner + k * hd, 0, (size_t)hd * sizeof(float));
    }
    donut_linear(&a->o, v, n, o);
    DmLinear head = s_head(m);
    donut_linear(&head, o, n, z);
    free(v);
    free(o);
    return 0;
}
