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

/* The item's intervention runs, gathered before any runs so that they go
 * out as rows of block forwards (an_runs): each job's NLL lands in *dst
 * once they have run. */
typedef struct Jobs {
    AnJob *job;
    float **dst;
    AnOp *ops;           /* every job's interventions, job k's from op0[k] */
    int *op0;
    int n, cap, nops, opcap;
} Jobs;

static void s_jobs_free(Jobs *j)
{
    free(j->job);
    free(j->dst);
    free(j->ops);
    free(j->op0);
    memset(j, 0, sizeof *j);
}

/* A run on page with interventions ops[0 .. nops-1], its NLL into *dst
 * (and its scored logits into logits when not NULL); base is the page's
 * run without interventions. */
static int s_job(Item *x, Jobs *j, const DecPage *page, const AnTrace *base, const AnOp *ops,
                 int nops, float *dst, float *logits)
{
    if (j->n == j->cap) {
        int cap = j->cap ? 2 * j->cap : 64;
        AnJob *nj = realloc(j->job, cap * sizeof *nj);
        if (nj)
            j->job = nj;
        float **nd = nj ? realloc(j->dst, cap * sizeof *nd) : NULL;
        if (nd)
            j->dst = nd;
        int *no = nd ? realloc(j->op0, cap * sizeof *no) : NULL;
        if (!no)
            return dm_err(x->err, "analyze: out of memory for %d runs", cap);
        j->op0 = no;
        j->cap = cap;
    }
    if (j->nops + nops > j->opcap) {
        int cap = j->opcap ? 2 * j->opcap : 64;
        while (cap < j->nops + nops)
            cap *= 2;
        AnOp *no = realloc(j->ops, cap * sizeof *no);
        if (!no)
            return dm_err(x->err, "analyze: out of memory for %d interventions", cap);
        j->ops = no;
        j->opcap = cap;
    }
    memcpy(j->ops + j->nops, ops, nops * sizeof *ops);
    j->job[j->n] = (AnJob){.page = page, .ids = x->it->ids, .T = x->T, .answer_start = x->a,
                           .nops = nops, .base = base, .logits = logits};
    j->dst[j->n] = dst;
    j->op0[j->n++] = j->nops;
    j->nops += nops;
    return 0;
}

/* Every gathered run, in blocks; the NLLs to their places. */
static int s_jobs_run(Item *x, Jobs *j)
{
    for (int k = 0; k < j->n; k++)
        j->job[k].ops = j->ops + j->op0[k];
    if (an_runs(j->job, j->n, x->stats, x->err))
        return -1;
    for (int k = 0; k < j->n; k++)
        *j->dst[k] = (float)j->job[k].nll;
    return 0;
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

/* The last present cross-attention's layer, or -1. */
static int s_last_cross(const DonutModel *m)
{
    for (int l = m->cfg.dec.layers - 1; l >= 0; l--)
        if (m->dec.layers[l].cross.present)
            return l;
    return -1;
}

/* transcribe.<tag>.top1 / .entropy (and .logits); k = 0 for "all", 1 for
 * "subset".  Without logits, what the item's memo holds for its page is
 * used, and what is computed is kept there. */
static int s_transcribe(Item *x, int layer, const int *keep, int k, int logits)
{
    const DecPage *p = x->it->clean;
    AnMemo *memo = x->it->memo;
    const char *tag = k ? "subset" : "all";
    int N = p->n_enc, V = x->V;
    char name[64];
    int64_t n = N, sh[2] = {N, V};
    if (memo && (memo->page != p || memo->enc != p->enc || memo->n_enc != N)) {
        an_memo_free(memo);
        memo->page = p;
        memo->enc = p->enc;
        memo->n_enc = N;
    }
    if (memo && !logits && memo->top1[k]) {
        snprintf(name, sizeof name, "transcribe.%s.top1", tag);
        s_i64(x, name, 1, &n, memo->top1[k]);
        snprintf(name, sizeof name, "transcribe.%s.entropy", tag);
        s_f32(x, name, 1, &n, memo->entropy[k]);
        return 0;
    }
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
    snprintf(name, sizeof name, "transcribe.%s.top1", tag);
    s_i64(x, name, 1, &n, top);
    snprintf(name, sizeof name, "transcribe.%s.entropy", tag);
    s_f32(x, name, 1, &n, ent);
    if (logits) {
        snprintf(name, sizeof name, "transcribe.%s.logits", tag);
        s_f32(x, name, 2, sh, z);
    }
    if (memo && !memo->top1[k]) {
        memo->top1[k] = top;
        memo->entropy[k] = ent;
        top = NULL;
        ent = NULL;
    }
    rc = 0;
done:
    free(z);
    free(ent);
    free(top);
    return rc;
}

void an_memo_free(AnMemo *memo)
{
    for (int k = 0; k < 2; k++) {
        free(memo->top1[k]);
        free(memo->entropy[k]);
    }
    memset(memo, 0, sizeof *memo);
}

/* The NLLs of the item's intervention runs, by analysis (NaN where a
 * pruned model lacks the sub-layer or head, or the analysis is off). */
typedef struct Nlls {
    float *skip, *rep;      /* [nsub], [nsub + 1] */
    float *abl, *ph;        /* nll.head_ablation, nll.patch_head [L, 2, H] */
    float *sets, *patch;    /* [nskip_sets], [npatch, 2] */
    float *repl;            /* [nreplace] */
    float *pq_logits;       /* logits.patch_query [P, V] */
    float mlast, pq;        /* nll.m_last_cancels_c_last, nll.patch_query */
} Nlls;

static void s_nlls_free(Nlls *o)
{
    free(o->skip);
    free(o->rep);
    free(o->abl);
    free(o->ph);
    free(o->sets);
    free(o->patch);
    free(o->repl);
    free(o->pq_logits);
}

static float *s_nans(size_t n)
{
    float *v = malloc((n ? n : 1) * sizeof *v);
    for (size_t i = 0; v && i < n; i++)
        v[i] = NAN;
    return v;
}

static int s_nlls_init(Item *x, const AnCfg *cfg, Nlls *o)
{
    size_t heads = (size_t)x->L * 2 * x->H;
    memset(o, 0, sizeof *o);
    o->mlast = o->pq = NAN;
    o->skip = s_nans(x->nsub);
    o->rep = s_nans(x->nsub + 1);
    o->abl = s_nans(heads);
    o->ph = s_nans(heads);
    o->sets = s_nans(cfg->nskip_sets);
    o->patch = s_nans(2 * (size_t)cfg->npatch);
    o->repl = s_nans(cfg->nreplace);
    o->pq_logits = s_nans((size_t)x->P * x->V);
    if (!o->skip || !o->rep || !o->abl || !o->ph || !o->sets || !o->patch || !o->repl ||
        !o->pq_logits)
        return dm_err(x->err, "analyze: out of memory");
    return 0;
}

/* One run per head of every attention sub-layer on page (base: its run
 * without interventions): the head's output zeroed (src NULL) or set from
 * src's heads, into out [L, 2, H]. */
static int s_per_head(Item *x, Jobs *j, const DecPage *page, const AnTrace *base,
                      const AnTrace *src, float *out)
{
    for (int l = 0; l < x->L; l++)
        for (int kind = DM_SUB_S; kind <= DM_SUB_C; kind++) {
            int sub = 3 * l + kind;
            const DecAttn *a = s_attn(x->m, sub);
            for (int k = 0; a->present && k < a->nheads; k++) {
                AnOp op = {.site = {sub, AN_HEAD, a->head_ids[k]}, .op = src ? AN_SET : AN_ZERO,
                           .src = src ? src->heads[sub] : NULL, .row0 = 0, .row1 = x->T};
                if (s_job(x, j, page, base, &op, 1, &out[(l * 2 + kind) * x->H + a->head_ids[k]],
                          NULL))
                    return -1;
            }
        }
    return 0;
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

/* Every intervention run of the item (cor: the corrupted run, or NULL
 * when there is none), gathered into j with its place in o. */
static int s_plan(Item *x, const AnCfg *cfg, const AnTrace *clean, const AnTrace *cor, Jobs *j,
                  Nlls *o)
{
    unsigned A = cfg->analyses;
    const DecPage *cp = x->it->clean, *xp = x->it->corrupt;
    int T = x->T;
    for (int i = 0; i < x->nsub; i++) {
        if (!s_present(x->m, i))
            continue;
        AnOp zero = {.site = {i, AN_OUT, 0}, .op = AN_ZERO, .row0 = 0, .row1 = T};
        AnOp rep = {.site = {i, AN_IN, 0}, .op = AN_REPROJECT, .row0 = 0, .row1 = T};
        if (((A & AN_A_SKIP) && s_job(x, j, cp, clean, &zero, 1, &o->skip[i], NULL)) ||
            ((A & AN_A_REPROJECT) && s_job(x, j, cp, clean, &rep, 1, &o->rep[i], NULL)))
            return -1;
    }
    if ((A & AN_A_ABLATION) && s_per_head(x, j, cp, clean, NULL, o->abl))
        return -1;
    /* the last feed-forward replaced by minus the last cross-attention */
    int l = x->L - 1;
    AnOp ml = {.site = {3 * l + DM_SUB_M, AN_OUT, 0}, .op = AN_SCALE_SITE,
               .from = {3 * l + DM_SUB_C, AN_OUT, 0}, .coef = -1.0f, .row0 = 0, .row1 = T};
    if ((A & AN_A_SKIP) && s_present(x->m, ml.site.sub) && s_present(x->m, ml.from.sub) &&
        s_job(x, j, cp, clean, &ml, 1, &o->mlast, NULL))
        return -1;
    int lc = s_last_cross(x->m);
    if (cor && (A & AN_A_PATCHING) && lc >= 0) {
        int sub = 3 * lc + DM_SUB_C;
        AnOp op = {.site = {sub, AN_QUERY, 0}, .op = AN_SET, .src = clean->query[sub],
                   .row0 = x->a, .row1 = T - 1};
        if (s_job(x, j, xp, cor, &op, 1, &o->pq, o->pq_logits))
            return -1;
    }
    if (cor && (A & AN_A_PATCHING) && s_per_head(x, j, xp, cor, clean, o->ph))
        return -1;
    for (int i = 0; i < cfg->nskip_sets; i++) {
        const AnSkipSet *k = &cfg->skip_sets[i];
        AnOp ops[3 * DM_MAX_LAYERS];
        for (int s = 0; s < k->n; s++)
            ops[s] = (AnOp){.site = {k->subs[s], AN_OUT, 0}, .op = AN_ZERO, .row0 = 0, .row1 = T};
        if (s_job(x, j, cp, clean, ops, k->n, &o->sets[i], NULL))
            return -1;
    }
    for (int i = 0; cor && i < cfg->npatch; i++) {
        const AnSite *s = &cfg->patch_sites[i];
        for (int dir = 0; dir < 2; dir++) {
            /* dir 0: the clean run's values into the corrupted run */
            AnOp op = {.site = *s, .op = AN_SET, .src = s_site_values(dir ? cor : clean, s),
                       .row0 = cfg->patch_all_positions ? 0 : x->a,
                       .row1 = cfg->patch_all_positions ? T : T - 1};
            if (s_job(x, j, dir ? cp : xp, dir ? clean : cor, &op, 1, &o->patch[2 * i + dir],
                      NULL))
                return -1;
        }
    }
    for (int i = 0; i < cfg->nreplace; i++) {
        const AnReplace *r = &cfg->replaces[i];
        AnOp op = {.site = r->dst, .op = AN_SCALE_SITE, .from = r->src, .coef = r->coef,
                   .row0 = 0, .row1 = T};
        if (s_job(x, j, cp, clean, &op, 1, &o->repl[i], NULL))
            return -1;
    }
    return 0;
}

/* nll.skip and nll.reproject, the last entry of which is the final
 * residual reprojected, then the head */
static int s_skip_reproject(Item *x, const AnTrace *clean, unsigned A, Nlls *o)
{
    int64_t n1 = x->nsub, n2 = x->nsub + 1;
    if (A & AN_A_SKIP)
        s_f32(x, "nll.skip", 1, &n1, o->skip);
    if (!(A & AN_A_REPROJECT))
        return 0;
    float *y = malloc((size_t)x->T * x->D * sizeof(float));
    float *lg = malloc((size_t)x->P * x->V * sizeof(float));
    int rc = -1;
    if (!y || !lg) {
        dm_err(x->err, "analyze: out of memory");
        goto done;
    }
    const float *fin = clean->resid + (size_t)x->nsub * x->T * x->D;
    if (an_reproject(x->m, fin, x->T, y, x->err) ||
        an_lens(x->m, y + (size_t)x->a * x->D, x->P, lg, x->err))
        goto done;
    o->rep[x->nsub] = (float)an_nll(lg, x->P, x->V, x->targets);
    s_f32(x, "nll.reproject", 1, &n2, o->rep);
    rc = 0;
done:
    free(y);
    free(lg);
    return rc;
}

/* nll.corrupt, nll.patch_query, logits.patch_query, nll.patch_head and
 * atp.head: atp from one backward pass of the corrupted run */
static int s_patching(Item *x, const AnTrace *clean, const AnTrace *cor, unsigned A, Nlls *o)
{
    const DecPage *cp = x->it->corrupt;
    int L = x->L, H = x->H, hd = x->hd, T = x->T, rc = -1;
    float **g = NULL, *atp = NULL;
    int64_t sh3[3] = {L, 2, H}, sh2[2] = {x->P, x->V};
    s_scalar(x, "nll.corrupt", cor->nll);
    if ((A & AN_A_PATCHING) && s_last_cross(x->m) >= 0) {
        s_scalar(x, "nll.patch_query", o->pq);
        s_f32(x, "logits.patch_query", 2, sh2, o->pq_logits);
    }
    if (A & AN_A_PATCHING)
        s_f32(x, "nll.patch_head", 3, sh3, o->ph);
    if (!(A & AN_A_ATTRIBUTION))
        return 0;
    if (x->stats)
        x->stats->backward++;
    if (an_head_grads(cp, x->it->ids, x->a, cor, &g, x->err))
        goto done;
    if (!(atp = s_nans((size_t)L * 2 * H))) {
        dm_err(x->err, "analyze: out of memory");
        goto done;
    }
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
    s_f32(x, "atp.head", 3, sh3, atp);
    rc = 0;
done:
    if (g) {
        for (int i = 0; i < x->nsub; i++)
            free(g[i]);
        free(g);
    }
    free(atp);
    return rc;
}

/* The named skip sets, patched sites and replacements of the job. */
static void s_more(Item *x, const AnCfg *cfg, int corrupted, const Nlls *o)
{
    char name[160], site[32];
    for (int i = 0; i < cfg->nskip_sets; i++) {
        snprintf(name, sizeof name, "nll.skip_set.%s", cfg->skip_sets[i].name);
        s_scalar(x, name, o->sets[i]);
    }
    for (int i = 0; corrupted && i < cfg->npatch; i++) {
        an_site_name(&cfg->patch_sites[i], site, sizeof site);
        for (int dir = 0; dir < 2; dir++) {
            snprintf(name, sizeof name, "nll.patch.%s.%s", site,
                     dir ? "corrupt_into_clean" : "clean_into_corrupt");
            s_scalar(x, name, o->patch[2 * i + dir]);
        }
    }
    for (int i = 0; i < cfg->nreplace; i++) {
        snprintf(name, sizeof name, "nll.replace.%s", cfg->replaces[i].name);
        s_scalar(x, name, o->repl[i]);
    }
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
    AnTrace clean = {0}, cor = {0};
    Jobs jobs = {0};
    Nlls o;
    double t0 = dm_now();
    int rc = -1;
    if (s_nlls_init(&x, cfg, &o))
        goto done;
    if (an_run(it->clean, it->ids, it->T, it->answer_start, NULL, 0, 1, &clean, err))
        goto done;
    if (x.stats) {
        x.stats->passes++;
        x.stats->clean_seconds = dm_now() - t0;
    }
    int corrupted = it->corrupt && ((A & (AN_A_PATCHING | AN_A_ATTRIBUTION)) || cfg->npatch);
    if (corrupted && an_run(it->corrupt, it->ids, it->T, it->answer_start, NULL, 0, 1, &cor, err))
        goto done;
    if (corrupted && x.stats)
        x.stats->passes++;
    /* every intervention run at once, then the results in their order */
    if (s_plan(&x, cfg, &clean, corrupted ? &cor : NULL, &jobs, &o) || s_jobs_run(&x, &jobs))
        goto done;
    s_scalar(&x, "nll.clean", clean.nll);
    if (s_skip_reproject(&x, &clean, A, &o) || ((A & AN_A_LENS) && s_lens(&x, &clean)) ||
        ((A & AN_A_HEADS) && s_head_stats(&x, &clean)))
        goto done;
    if (A & AN_A_ABLATION) {
        int64_t sh[3] = {x.L, 2, x.H};
        s_f32(&x, "nll.head_ablation", 3, sh, o.abl);
    }
    if (A & AN_A_SKIP)
        s_scalar(&x, "nll.m_last_cancels_c_last", o.mlast);
    int lc = s_last_cross(m);
    if ((A & AN_A_TRANSCRIBE) && lc >= 0 &&
        s_transcribe(&x, lc, NULL, 0, cfg->transcribe_logits))
        goto done;
    if ((A & AN_A_TRANSCRIBE) && cfg->subset_layer >= 0 &&
        s_transcribe(&x, cfg->subset_layer, cfg->subset_keep, 1, cfg->transcribe_logits))
        goto done;
    if (corrupted && (A & (AN_A_PATCHING | AN_A_ATTRIBUTION)) && s_patching(&x, &clean, &cor, A, &o))
        goto done;
    s_more(&x, cfg, corrupted, &o);
    rc = 0;
    if (x.stats)
        x.stats->seconds = dm_now() - t0;
done:
    s_nlls_free(&o);
    s_jobs_free(&jobs);
    an_trace_free(&clean);
    an_trace_free(&cor);
    return rc;
}
