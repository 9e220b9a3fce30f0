/* an_item.c - every analysis of one item (analyze.h): runs on the clean
 * page with one intervention each, the lens and reprojection from the
 * clean trace, the attention statistics, the transcription projection,
 * then the corrupted page, patching from the clean run, and attribution
 * patching from one backward pass.  Results of sub-layers or heads that a
 * pruned model lacks are NaN. */
#include "worker/analyze/analyze.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/kern.h"

typedef struct Item {
    const AnItem *it;
    const DonutModel *m;
    const AnSink *sink;
    int L, H, nsub, T, a, P, V, D, hd;
    const int32_t *targets;
    DmErr *err;
    AnStats *stats;
} Item;

static void s_f32(Item *x, const char *name, int ndim, const int64_t *shape, const float *d)
{
    x->sink->f32(x->sink->ctx, name, ndim, shape, d);
}

static void s_i64(Item *x, const char *name, int ndim, const int64_t *shape, const int64_t *d)
{
    x->sink->i64(x->sink->ctx, name, ndim, shape, d);
}

static void s_scalar(Item *x, const char *name, double v)
{
    float f = (float)v;
    int64_t one = 1;
    s_f32(x, name, 1, &one, &f);
}

static const DecAttn *s_attn(const DonutModel *m, int sub)
{
    const DecLayer *L = &m->dec.layers[sub / 3];
    return sub % 3 == DM_SUB_S ? &L->self : sub % 3 == DM_SUB_C ? &L->cross : NULL;
}

static int s_present(const DonutModel *m, int sub)
{
    const DecLayer *L = &m->dec.layers[sub / 3];
    return sub % 3 == DM_SUB_S ? L->self.present : sub % 3 == DM_SUB_C ? L->cross.present
                                                                        : L->ffn.present;
}

/* NLL of one run on a page with the given interventions. */
static int s_nll(Item *x, const DecPage *page, const AnOp *ops, int nops, double *nll,
                 float *logits)
{
    AnTrace tr;
    if (x->stats)
        x->stats->passes++;
    if (an_run(page, x->it->ids, x->T, x->a, ops, nops, 0, &tr, x->err))
        return -1;
    *nll = tr.nll;
    if (logits)
        memcpy(logits, tr.logits, (size_t)x->P * x->V * sizeof(float));
    an_trace_free(&tr);
    return 0;
}

/* nll.skip and nll.reproject */
static int s_skip_reproject(Item *x, const AnTrace *clean, unsigned A)
{
    if (!(A & (AN_A_SKIP | AN_A_REPROJECT)))
        return 0;
    int nsub = x->nsub;
    float *skip = malloc(nsub * sizeof(float)), *rep = malloc((nsub + 1) * sizeof(float));
    float *y = malloc((size_t)x->T * x->D * sizeof(float));
    float *lg = malloc((size_t)x->T * x->V * sizeof(float));
    int rc = -1;
    if (!skip || !rep || !y || !lg) {
        dm_err(x->err, "analyze: out of memory");
        goto done;
    }
    for (int i = 0; i < nsub; i++) {
        double v;
        skip[i] = rep[i] = NAN;
        if (!s_present(x->m, i))
            continue;
        AnOp op = {.site = {i, AN_OUT, 0}, .op = AN_ZERO, .row0 = 0, .row1 = x->T};
        if ((A & AN_A_SKIP) && s_nll(x, x->it->clean, &op, 1, &v, NULL))
            goto done;
        skip[i] = (A & AN_A_SKIP) ? (float)v : NAN;
        op.site.point = AN_IN;
        op.op = AN_REPROJECT;
        if ((A & AN_A_REPROJECT) && s_nll(x, x->it->clean, &op, 1, &v, NULL))
            goto done;
        rep[i] = (A & AN_A_REPROJECT) ? (float)v : NAN;
    }
    int64_t n1 = nsub, n2 = nsub + 1;
    if (A & AN_A_SKIP)
        s_f32(x, "nll.skip", 1, &n1, skip);
    if (!(A & AN_A_REPROJECT)) {
        rc = 0;
        goto done;
    }
    /* the final residual reprojected, then the head */
    const float *fin = clean->resid + (size_t)nsub * x->T * x->D;
    if (an_reproject(x->m, fin, x->T, y, x->err) ||
        an_lens(x->m, y + (size_t)x->a * x->D, x->P, lg, x->err))
        goto done;
    rep[nsub] = (float)an_nll(lg, x->P, x->V, x->targets);
    s_f32(x, "nll.reproject", 1, &n2, rep);
    rc = 0;
done:
    free(skip);
    free(rep);
    free(y);
    free(lg);
    return rc;
}

/* lens.target_logprob, lens.top1, lens.target_rank over every residual */
static int s_lens(Item *x, const AnTrace *clean)
{
    int R = x->nsub + 1, P = x->P, V = x->V;
    float *lp = malloc((size_t)R * P * sizeof(float));
    int64_t *top = malloc((size_t)R * P * sizeof(int64_t));
    int64_t *rank = malloc((size_t)R * P * sizeof(int64_t));
    float *lg = malloc((size_t)P * V * sizeof(float));
    int rc = -1;
    if (!lp || !top || !rank || !lg) {
        dm_err(x->err, "analyze: out of memory");
        goto done;
    }
    for (int r = 0; r < R; r++) {
        const float *h = clean->resid + ((size_t)r * x->T + x->a) * x->D;
        if (an_lens(x->m, h, P, lg, x->err))
            goto done;
        for (int t = 0; t < P; t++) {
            size_t k = (size_t)r * P + t;
            lp[k] = (float)an_logprob(lg + (size_t)t * V, V, x->targets[t], &rank[k], &top[k]);
        }
    }
    int64_t sh[2] = {R, P};
    s_f32(x, "lens.target_logprob", 2, sh, lp);
    s_i64(x, "lens.top1", 2, sh, top);
    s_i64(x, "lens.target_rank", 2, sh, rank);
    rc = 0;
done:
    free(lp);
    free(top);
    free(rank);
    free(lg);
    return rc;
}

/* heads.sa_entropy and heads.ca_variance: per head, averaged over the
 * scored query positions */
static int s_head_stats(Item *x, const AnTrace *clean)
{
    int L = x->L, H = x->H;
    float *ent = malloc((size_t)L * H * sizeof(float)), *var = malloc((size_t)L * H * sizeof(float));
    if (!ent || !var) {
        free(ent);
        free(var);
        return dm_err(x->err, "analyze: out of memory");
    }
    for (int i = 0; i < L * H; i++)
        ent[i] = var[i] = NAN;
    for (int l = 0; l < L; l++)
        for (int kind = DM_SUB_S; kind <= DM_SUB_C; kind++) {
            int sub = 3 * l + kind;
            const DecAttn *a = s_attn(x->m, sub);
            if (!a->present || !clean->probs[sub])
                continue;
            int S = clean->probs_S[sub];
            for (int k = 0; k < a->nheads; k++) {
                double acc = 0.0;
                for (int t = x->a; t < x->a + x->P; t++) {
                    const float *p = clean->probs[sub] + ((size_t)k * x->T + t) * S;
                    double s = 0.0;
                    for (int j = 0; j < S; j++) {
                        if (kind == DM_SUB_S)
                            s -= p[j] > 0.0f ? (double)p[j] * log((double)p[j]) : 0.0;
                        else
                            s += ((double)p[j] - 1.0 / S) * ((double)p[j] - 1.0 / S);
                    }
                    acc += kind == DM_SUB_S ? s : s / S;
                }
                (kind == DM_SUB_S ? ent : var)[l * H + a->head_ids[k]] = (float)(acc / x->P);
            }
        }
    int64_t sh[2] = {L, H};
    s_f32(x, "heads.sa_entropy", 2, sh, ent);
    s_f32(x, "heads.ca_variance", 2, sh, var);
    free(ent);
    free(var);
    return 0;
}

/* One NLL per head of every attention sub-layer, [L, 2, H]: the head's
 * output zeroed (src NULL) or set from src's heads, on the given page. */
static int s_per_head(Item *x, const DecPage *page, const AnTrace *src, const char *name)
{
    int L = x->L, H = x->H;
    float *out = malloc((size_t)L * 2 * H * sizeof(float));
    if (!out)
        return dm_err(x->err, "analyze: out of memory");
    for (int i = 0; i < L * 2 * H; i++)
        out[i] = NAN;
    for (int l = 0; l < L; l++)
        for (int kind = DM_SUB_S; kind <= DM_SUB_C; kind++) {
            int sub = 3 * l + kind;
            const DecAttn *a = s_attn(x->m, sub);
            for (int k = 0; a->present && k < a->nheads; k++) {
                AnOp op = {.site = {sub, AN_HEAD, a->head_ids[k]}, .op = src ? AN_SET : AN_ZERO,
                           .src = src ? src->heads[sub] : NULL, .row0 = 0, .row1 = x->T};
                double v;
                if (s_nll(x, page, &op, 1, &v, NULL)) {
                    free(out);
                    return -1;
                }
                out[(l * 2 + kind) * H + a->head_ids[k]] = (float)v;
            }
        }
    int64_t sh[3] = {L, 2, H};
    s_f32(x, name, 3, sh, out);
    free(out);
    return 0;
}

/* The last present cross-attention's layer, or -1. */
static int s_last_cross(const DonutModel *m)
{
    for (int l = m->cfg.dec.layers - 1; l >= 0; l--)
        if (m->dec.layers[l].cross.present)
            return l;
    return -1;
}

/* transcribe.<tag>.top1 / .entropy (and .logits) */
static int s_transcribe(Item *x, int layer, const int *keep, const char *tag, int logits)
{
    const DecPage *p = x->it->clean;
    int N = p->n_enc, V = x->V;
    float *z = malloc((size_t)N * V * sizeof(float)), *ent = malloc(N * sizeof(float));
    int64_t *top = malloc(N * sizeof(int64_t));
    int rc = -1;
    if (!z || !ent || !top) {
        dm_err(x->err, "analyze: out of memory for the transcription of %d tokens", N);
        goto done;
    }
    if (an_transcribe(x->m, layer, p->enc, N, keep, z, x->err))
        goto done;
    for (int j = 0; j < N; j++) {
        top[j] = kern_argmax(z + (size_t)j * V, V);
        ent[j] = (float)an_entropy_logits(z + (size_t)j * V, V);
    }
    char name[64];
    int64_t n = N, sh[2] = {N, V};
    snprintf(name, sizeof name, "transcribe.%s.top1", tag);
    s_i64(x, name, 1, &n, top);
    snprintf(name, sizeof name, "transcribe.%s.entropy", tag);
    s_f32(x, name, 1, &n, ent);
    if (logits) {
        snprintf(name, sizeof name, "transcribe.%s.logits", tag);
        s_f32(x, name, 2, sh, z);
    }
    rc = 0;
done:
    free(z);
    free(ent);
    free(top);
    return rc;
}

/* nll.corrupt, nll.patch_query, logits.patch_query, nll.patch_head and
 * atp.head against the clean trace */
static int s_patching(Item *x, const AnTrace *clean, const AnTrace *cor, unsigned A)
{
    const DecPage *cp = x->it->corrupt;
    int L = x->L, H = x->H, hd = x->hd, T = x->T, rc = -1;
    float **g = NULL, *lg = NULL, *atp = NULL;
    s_scalar(x, "nll.corrupt", cor->nll);
    int lc = s_last_cross(x->m);
    if ((A & AN_A_PATCHING) && lc >= 0) {
        int sub = 3 * lc + DM_SUB_C;
        AnOp op = {.site = {sub, AN_QUERY, 0}, .op = AN_SET, .src = clean->query[sub],
                   .row0 = x->a, .row1 = T - 1};
        double v;
        if (!(lg = malloc((size_t)x->P * x->V * sizeof(float)))) {
            dm_err(x->err, "analyze: out of memory");
            goto done;
        }
        if (s_nll(x, cp, &op, 1, &v, lg))
            goto done;
        s_scalar(x, "nll.patch_query", v);
        int64_t sh[2] = {x->P, x->V};
        s_f32(x, "logits.patch_query", 2, sh, lg);
    }
    if ((A & AN_A_PATCHING) && s_per_head(x, cp, clean, "nll.patch_head"))
        goto done;
    if (!(A & AN_A_ATTRIBUTION)) {
        rc = 0;
        goto done;
    }
    if (x->stats)
        x->stats->backward++;
    if (an_head_grads(cp, x->it->ids, x->a, cor, &g, x->err))
        goto done;
    if (!(atp = malloc((size_t)L * 2 * H * sizeof(float)))) {
        dm_err(x->err, "analyze: out of memory");
        goto done;
    }
    for (int i = 0; i < L * 2 * H; i++)
        atp[i] = NAN;
    for (int l = 0; l < L; l++)
        for (int kind = DM_SUB_S; kind <= DM_SUB_C; kind++) {
            int sub = 3 * l + kind;
            const DecAttn *a = s_attn(x->m, sub);
            if (!a->present)
                continue;
            int inner = a->nheads * hd;
            for (int k = 0; k < a->nheads; k++) {
                double s = 0.0;
                for (int t = 0; t < T; t++)
                    for (int d = 0; d < hd; d++) {
                        size_t e = (size_t)t * inner + k * hd + d;
                        s += ((double)clean->heads[sub][e] - cor->heads[sub][e]) * g[sub][e];
                    }
                atp[(l * 2 + kind) * H + a->head_ids[k]] = (float)s;
            }
        }
    int64_t sh3[3] = {L, 2, H};
    s_f32(x, "atp.head", 3, sh3, atp);
    rc = 0;
done:
    if (g) {
        for (int i = 0; i < x->nsub; i++)
            free(g[i]);
        free(g);
    }
    free(lg);
    free(atp);
    return rc;
}

/* A trace's array at a site (AN_HEAD: the sub-layer's heads). */
static const float *s_site_values(const AnTrace *tr, const AnSite *s)
{
    switch (s->point) {
    case AN_IN: return tr->resid + (size_t)s->sub * tr->T * tr->D;
    case AN_OUT: return tr->out[s->sub];
    case AN_HEAD: return tr->heads[s->sub];
    default: return tr->query[s->sub];
    }
}

/* The named skip sets, patched sites and replacements of the job. */
static int s_more(Item *x, const AnCfg *cfg, const AnTrace *clean, const AnTrace *cor)
{
    char name[160], site[32];
    double v;
    for (int i = 0; i < cfg->nskip_sets; i++) {
        const AnSkipSet *k = &cfg->skip_sets[i];
        AnOp ops[3 * DM_MAX_LAYERS];
        for (int j = 0; j < k->n; j++)
            ops[j] = (AnOp){.site = {k->subs[j], AN_OUT, 0}, .op = AN_ZERO, .row0 = 0,
                            .row1 = x->T};
        if (s_nll(x, x->it->clean, ops, k->n, &v, NULL))
            return -1;
        snprintf(name, sizeof name, "nll.skip_set.%s", k->name);
        s_scalar(x, name, v);
    }
    for (int i = 0; cor && i < cfg->npatch; i++) {
        const AnSite *s = &cfg->patch_sites[i];
        an_site_name(s, site, sizeof site);
        for (int dir = 0; dir < 2; dir++) {
            /* dir 0: the clean run's values into the corrupted run */
            const AnTrace *src = dir ? cor : clean;
            AnOp op = {.site = *s, .op = AN_SET, .src = s_site_values(src, s),
                       .row0 = cfg->patch_all_positions ? 0 : x->a,
                       .row1 = cfg->patch_all_positions ? x->T : x->T - 1};
            if (s_nll(x, dir ? x->it->clean : x->it->corrupt, &op, 1, &v, NULL))
                return -1;
            snprintf(name, sizeof name, "nll.patch.%s.%s", site,
                     dir ? "corrupt_into_clean" : "clean_into_corrupt");
            s_scalar(x, name, v);
        }
    }
    for (int i = 0; i < cfg->nreplace; i++) {
        const AnReplace *r = &cfg->replaces[i];
        AnOp op = {.site = r->dst, .op = AN_SCALE_SITE, .from = r->src, .coef = r->coef,
                   .row0 = 0, .row1 = x->T};
        if (s_nll(x, x->it->clean, &op, 1, &v, NULL))
            return -1;
        snprintf(name, sizeof name, "nll.replace.%s", r->name);
        s_scalar(x, name, v);
    }
    return 0;
}

static const char *const s_analysis_names[] = {"skip", "reproject", "lens", "heads",
                                                "ablation", "patching", "attribution",
                                                "transcribe", "kv_retrieval"};

unsigned an_analysis_bit(const char *name)
{
    for (int i = 0; i < (int)(sizeof s_analysis_names / sizeof *s_analysis_names); i++)
        if (!strcmp(name, s_analysis_names[i]))
            return 1u << i;
    return 0;
}

const char *an_analysis_name(int i)
{
    return i >= 0 && i < (int)(sizeof s_analysis_names / sizeof *s_analysis_names)
               ? s_analysis_names[i]
               : NULL;
}

int an_item(const AnItem *it, const AnCfg *cfg, const AnSink *sink, DmErr *err)
{
    unsigned A = cfg->analyses;
    const DonutModel *m = it->clean->m;
    const MBartConfig *c = &m->cfg.dec;
    Item x = {it, m, sink, c->layers, c->heads, 3 * c->layers, it->T, it->answer_start,
              it->T - 1 - it->answer_start, c->vocab, c->d_model, m->dec.head_dim,
              it->ids + it->answer_start + 1, err, cfg->stats};
    if (it->corrupt && it->corrupt->m != m)
        return dm_err(err, "analyze: the clean and corrupted pages are of different models");
    AnTrace clean, cor = {0};
    double t0 = dm_now();
    if (an_run(it->clean, it->ids, it->T, it->answer_start, NULL, 0, 1, &clean, err))
        return -1;
    if (x.stats) {
        x.stats->passes++;
        x.stats->clean_seconds = dm_now() - t0;
    }
    int rc = -1;
    s_scalar(&x, "nll.clean", clean.nll);
    if (s_skip_reproject(&x, &clean, A) || ((A & AN_A_LENS) && s_lens(&x, &clean)))
        goto done;
    if (((A & AN_A_HEADS) && s_head_stats(&x, &clean)) ||
        ((A & AN_A_ABLATION) && s_per_head(&x, it->clean, NULL, "nll.head_ablation")))
        goto done;
    /* the last feed-forward replaced by minus the last cross-attention */
    if (A & AN_A_SKIP) {
        int l = x.L - 1;
        double v = NAN;
        AnOp op = {.site = {3 * l + DM_SUB_M, AN_OUT, 0}, .op = AN_SCALE_SITE,
                   .from = {3 * l + DM_SUB_C, AN_OUT, 0}, .coef = -1.0f, .row0 = 0, .row1 = x.T};
        if (s_present(m, op.site.sub) && s_present(m, op.from.sub) &&
            s_nll(&x, it->clean, &op, 1, &v, NULL))
            goto done;
        s_scalar(&x, "nll.m_last_cancels_c_last", v);
    }
    int lc = s_last_cross(m);
    if ((A & AN_A_TRANSCRIBE) && lc >= 0 &&
        s_transcribe(&x, lc, NULL, "all", cfg->transcribe_logits))
        goto done;
    if ((A & AN_A_TRANSCRIBE) && cfg->subset_layer >= 0 &&
        s_transcribe(&x, cfg->subset_layer, cfg->subset_keep, "subset", cfg->transcribe_logits))
        goto done;
    int corrupted = it->corrupt && ((A & (AN_A_PATCHING | AN_A_ATTRIBUTION)) || cfg->npatch);
    if (corrupted && an_run(it->corrupt, it->ids, it->T, it->answer_start, NULL, 0, 1, &cor, err))
        goto done;
    if (corrupted && x.stats)
        x.stats->passes++;
    if ((corrupted && (A & (AN_A_PATCHING | AN_A_ATTRIBUTION)) && s_patching(&x, &clean, &cor, A)) ||
        s_more(&x, cfg, &clean, it->corrupt ? &cor : NULL))
        goto done;
    rc = 0;
    if (x.stats)
        x.stats->seconds = dm_now() - t0;
done:
    an_trace_free(&clean);
    an_trace_free(&cor);
    return rc;
}
