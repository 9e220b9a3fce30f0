/* analyze_report.c - aggregates, figures and report of an analyze job
 * (analyze_report.h). */
#include "coordinator/analyze_report.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dm_fs.h"
#include "common/store.h"
#include "coordinator/analyze_plot.h"
#include "coordinator/kv_report.h"
#include "worker/data/corpus.h"
#include "worker/text/tokenizer.h"
#include "records.pb-c.h"

/* ------------------------------------------------------------ JSON line */

static json_t *s_num(double v) { return isfinite(v) ? json_real(v) : json_null(); }

static json_t *s_floats(const float *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        json_array_append_new(a, s_num(v[i]));
    return a;
}

static json_t *s_ints(const int32_t *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        json_array_append_new(a, json_integer(v[i]));
    return a;
}

char *analyze_record_json(const void *val, size_t vlen, DmErr *err)
{
    Docmint__AnalysisRecord *r = docmint__analysis_record__unpack(NULL, vlen, val);
    if (!r) {
        dm_err(err, "%zu bytes are not an AnalysisRecord (schemas/records.proto)", vlen);
        return NULL;
    }
    json_t *named = json_object();
    for (size_t i = 0; named && i < r->n_named; i++)
        json_object_set_new(named, r->named[i]->name, s_num(r->named[i]->value));
    json_t *o = json_pack(
        "{s:I s:i s:s s:s s:s s:o s:i s:i s:i s:o s:o s:o s:o s:o s:o s:o s:o s:o s:o s:o s:o s:o "
        "s:o s:o s:o s:o s:o}",
        "questionId", (json_int_t)r->question_id, "answer_index", (int)r->answer_index, "answer",
        r->answer, "page_id", r->page_id, "question", r->question, "token_ids",
        s_ints(r->token_ids, r->n_token_ids), "answer_start", (int)r->answer_start, "layers",
        (int)r->layers, "heads", (int)r->heads, "nll_clean", s_num(r->nll_clean), "nll_skip",
        s_floats(r->nll_skip, r->n_nll_skip), "nll_reproject",
        s_floats(r->nll_reproject, r->n_nll_reproject), "lens_target_logprob",
        s_floats(r->lens_target_logprob, r->n_lens_target_logprob), "lens_top1",
        s_ints(r->lens_top1, r->n_lens_top1), "lens_target_rank",
        s_ints(r->lens_target_rank, r->n_lens_target_rank), "sa_entropy",
        s_floats(r->sa_entropy, r->n_sa_entropy), "ca_variance",
        s_floats(r->ca_variance, r->n_ca_variance), "nll_head_ablation",
        s_floats(r->nll_head_ablation, r->n_nll_head_ablation), "nll_m_last_cancels_c_last",
        s_num(r->nll_m_last_cancels_c_last), "transcribe_top1",
        s_ints(r->transcribe_top1, r->n_transcribe_top1), "transcribe_entropy",
        s_floats(r->transcribe_entropy, r->n_transcribe_entropy), "nll_corrupt",
        s_num(r->nll_corrupt), "nll_patch_query", s_num(r->nll_patch_query), "nll_patch_head",
        s_floats(r->nll_patch_head, r->n_nll_patch_head), "atp_head",
        s_floats(r->atp_head, r->n_atp_head), "named", named, "kv_retrieval", kv_record_json(r));
    char *line = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    docmint__analysis_record__free_unpacked(r, NULL);
    if (!line)
        dm_err(err, "out of memory");
    return line;
}

/* ------------------------------------------------------------ aggregates */

/* Running sums of one field, element by element (NaN entries skipped). */
typedef struct Agg {
    char name[96];
    int n;          /* elements */
    double *s, *s2;
    long *cnt;
} Agg;

typedef struct Aggs {
    Agg *a;
    int n, cap;
    long records;
    int layers, heads;
    /* attribution against patching, per head: sums over records */
    double sx, sy, sxx, syy, sxy;
    long pairs;
    int oom;
} Aggs;

static Agg *s_agg(Aggs *g, const char *name, int n)
{
    for (int i = 0; i < g->n; i++)
        if (!strcmp(g->a[i].name, name))
            return g->a[i].n == n ? &g->a[i] : NULL; /* another length: not summed */
    if (g->n == g->cap) {
        int cap = g->cap ? 2 * g->cap : 32;
        Agg *v = realloc(g->a, (size_t)cap * sizeof *v);
        if (!v) {
            g->oom = 1;
            return NULL;
        }
        g->a = v;
        g->cap = cap;
    }
    Agg *a = &g->a[g->n];
    memset(a, 0, sizeof *a);
    snprintf(a->name, sizeof a->name, "%s", name);
    a->n = n;
    a->s = calloc(n ? n : 1, sizeof(double));
    a->s2 = calloc(n ? n : 1, sizeof(double));
    a->cnt = calloc(n ? n : 1, sizeof(long));
    if (!a->s || !a->s2 || !a->cnt) {
        free(a->s);
        free(a->s2);
        free(a->cnt);
        g->oom = 1;
        return NULL;
    }
    g->n++;
    return a;
}

static void s_addv(Aggs *g, const char *name, const double *v, int n)
{
    Agg *a = n > 0 ? s_agg(g, name, n) : NULL;
    for (int i = 0; a && i < n; i++)
        if (isfinite(v[i])) {
            a->s[i] += v[i];
            a->s2[i] += v[i] * v[i];
            a->cnt[i]++;
        }
}

static void s_addf(Aggs *g, const char *name, const float *v, size_t n)
{
    double *d = malloc((n ? n : 1) * sizeof *d);
    if (!d) {
        g->oom = 1;
        return;
    }
    for (size_t i = 0; i < n; i++)
        d[i] = v[i];
    s_addv(g, name, d, (int)n);
    free(d);
}

static void s_add1(Aggs *g, const char *name, double v) { s_addv(g, name, &v, 1); }

static void s_add_record(Aggs *g, const Docmint__AnalysisRecord *r)
{
    g->records++;
    g->layers = (int)r->layers;
    g->heads = (int)r->heads;
    s_add1(g, "nll_clean", r->nll_clean);
    s_add1(g, "nll_m_last_cancels_c_last", r->nll_m_last_cancels_c_last);
    s_add1(g, "nll_corrupt", r->nll_corrupt);
    s_add1(g, "nll_patch_query", r->nll_patch_query);
    s_addf(g, "nll_skip", r->nll_skip, r->n_nll_skip);
    s_addf(g, "nll_reproject", r->nll_reproject, r->n_nll_reproject);
    s_addf(g, "sa_entropy", r->sa_entropy, r->n_sa_entropy);
    s_addf(g, "ca_variance", r->ca_variance, r->n_ca_variance);
    s_addf(g, "nll_head_ablation", r->nll_head_ablation, r->n_nll_head_ablation);
    s_addf(g, "nll_patch_head", r->nll_patch_head, r->n_nll_patch_head);
    s_addf(g, "atp_head", r->atp_head, r->n_atp_head);
    /* per record, over its positions: the lens's mean target log-probability
     * and the share of positions where the target is its top token */
    int R = 3 * (int)r->layers + 1;
    if (r->n_lens_target_logprob && r->n_lens_target_logprob % R == 0) {
        int P = (int)(r->n_lens_target_logprob / R);
        double lp[3 * 64 + 1], top[3 * 64 + 1];
        for (int i = 0; i < R && i <= 3 * 64; i++) {
            lp[i] = top[i] = 0;
            for (int t = 0; t < P; t++) {
                lp[i] += r->lens_target_logprob[i * P + t] / P;
                if (r->n_lens_target_rank == r->n_lens_target_logprob)
                    top[i] += (r->lens_target_rank[i * P + t] == 0) / (double)P;
            }
        }
        s_addv(g, "lens_target_logprob", lp, R);
        if (r->n_lens_target_rank == r->n_lens_target_logprob)
            s_addv(g, "lens_target_top1_share", top, R);
    }
    if (r->n_transcribe_entropy) {
        double e = 0;
        for (size_t j = 0; j < r->n_transcribe_entropy; j++)
            e += r->transcribe_entropy[j] / r->n_transcribe_entropy;
        s_add1(g, "transcribe_entropy_mean", e);
    }
    /* the patching effect of each head, and attribution against it */
    if (r->n_nll_patch_head && isfinite(r->nll_corrupt)) {
        double *eff = malloc(r->n_nll_patch_head * sizeof *eff);
        if (eff) {
            for (size_t i = 0; i < r->n_nll_patch_head; i++) {
                eff[i] = r->nll_patch_head[i] - r->nll_corrupt;
                double x = i < r->n_atp_head ? r->atp_head[i] : NAN, y = eff[i];
                if (r->n_atp_head == r->n_nll_patch_head && isfinite(x) && isfinite(y)) {
                    g->sx += x;
                    g->sy += y;
                    g->sxx += x * x;
                    g->syy += y * y;
                    g->sxy += x * y;
                    g->pairs++;
                }
            }
            s_addv(g, "patch_head_effect", eff, (int)r->n_nll_patch_head);
            if (r->n_atp_head == r->n_nll_patch_head) {
                for (size_t i = 0; i < r->n_nll_patch_head; i++)
                    eff[i] = r->atp_head[i] - eff[i];
                s_addv(g, "atp_minus_patching", eff, (int)r->n_nll_patch_head);
            }
            free(eff);
        }
    }
    for (size_t i = 0; i < r->n_named; i++) {
        char name[96];
        snprintf(name, sizeof name, "named.%s", r->named[i]->name);
        s_add1(g, name, r->named[i]->value);
    }
}

/* The question types of a questionId (the corpus's question_types). */
typedef struct QTypes {
    int64_t qid;
    char **types;
    int n;
} QTypes;

/* Aggregates by question type. */
typedef struct Group {
    char name[64];
    Aggs g;
} Group;

typedef struct Report {
    Aggs all;
    int64_t lens_qid;          /* -1: the first record */
    Docmint__AnalysisRecord *lens; /* the record of the lens figure */
    QTypes *qt;
    int nqt;
    Group *groups;
    int ngroups, capgroups;
    KvReport kv;
} Report;

static int s_cmp_qt(const void *a, const void *b)
{
    int64_t x = ((const QTypes *)a)->qid, y = ((const QTypes *)b)->qid;
    return x < y ? -1 : x > y;
}

static Aggs *s_group(Report *rp, const char *name)
{
    for (int i = 0; i < rp->ngroups; i++)
        if (!strcmp(rp->groups[i].name, name))
            return &rp->groups[i].g;
    if (rp->ngroups == rp->capgroups) {
        int cap = rp->capgroups ? 2 * rp->capgroups : 8;
        Group *v = realloc(rp->groups, (size_t)cap * sizeof *v);
        if (!v)
            return NULL;
        rp->groups = v;
        rp->capgroups = cap;
    }
    Group *gr = &rp->groups[rp->ngroups++];
    memset(gr, 0, sizeof *gr);
    snprintf(gr->name, sizeof gr->name, "%s", name);
    return &gr->g;
}

static int s_visit(void *ctx, const void *key, size_t klen, const void *val, size_t vlen)
{
    Report *rp = ctx;
    Docmint__AnalysisRecord *r = docmint__analysis_record__unpack(NULL, vlen, val);
    if (!r)
        return 0; /* not a record of this stage */
    s_add_record(&rp->all, r);
    kv_report_add(&rp->kv, r);
    int keep = !rp->lens && (rp->lens_qid < 0 || rp->lens_qid == r->question_id);
    QTypes k = {r->question_id, NULL, 0};
    const QTypes *q = rp->nqt ? bsearch(&k, rp->qt, rp->nqt, sizeof k, s_cmp_qt) : NULL;
    for (int i = 0; q && i < q->n; i++) {
        Aggs *g = s_group(rp, q->types[i]);
        if (!g) {
            rp->all.oom = 1;
            break;
        }
        s_add_record(g, r);
    }
    if (keep)
        rp->lens = r;
    else
        docmint__analysis_record__free_unpacked(r, NULL);
    (void)key;
    (void)klen;
    return 0;
}

static double s_mean(const Agg *a, int i) { return a->cnt[i] ? a->s[i] / a->cnt[i] : NAN; }

static double s_se(const Agg *a, int i)
{
    long n = a->cnt[i];
    if (n < 2)
        return NAN;
    double m = a->s[i] / n, var = (a->s2[i] - n * m * m) / (n - 1);
    return sqrt(var > 0 ? var / n : 0);
}

static const Agg *s_find(const Aggs *g, const char *name)
{
    for (int i = 0; i < g->n; i++)
        if (!strcmp(g->a[i].name, name))
            return &g->a[i];
    return NULL;
}

/* "S1.H3" of flat index i of an [L, 2, H] array. */
static void s_head_name(int i, int H, char *out, size_t n)
{
    int h = i % H, k = (i / H) % 2, l = i / H / 2;
    snprintf(out, n, "%c%d.H%d", k ? 'C' : 'S', l, h);
}

static json_t *s_json(const Aggs *g)
{
    json_t *root = json_object(), *fields = json_object();
    if (!root || !fields) {
        json_decref(root);
        json_decref(fields);
        return NULL;
    }
    json_object_set_new(root, "records", json_integer(g->records));
    json_object_set_new(root, "layers", json_integer(g->layers));
    json_object_set_new(root, "heads", json_integer(g->heads));
    for (int i = 0; i < g->n; i++) {
        const Agg *a = &g->a[i];
        json_t *f = json_object();
        if (a->n == 1) {
            json_object_set_new(f, "mean", s_num(s_mean(a, 0)));
            json_object_set_new(f, "stderr", s_num(s_se(a, 0)));
            json_object_set_new(f, "count", json_integer(a->cnt[0]));
        } else {
            json_t *m = json_array(), *se = json_array(), *c = json_array();
            for (int k = 0; k < a->n; k++) {
                json_array_append_new(m, s_num(s_mean(a, k)));
                json_array_append_new(se, s_num(s_se(a, k)));
                json_array_append_new(c, json_integer(a->cnt[k]));
            }
            json_object_set_new(f, "mean", m);
            json_object_set_new(f, "stderr", se);
            json_object_set_new(f, "count", c);
        }
        json_object_set_new(fields, a->name, f);
    }
    json_object_set_new(root, "fields", fields);
    /* attribution against exhaustive patching */
    if (g->pairs > 1) {
        double n = (double)g->pairs, cov = g->sxy - g->sx * g->sy / n;
        double vx = g->sxx - g->sx * g->sx / n, vy = g->syy - g->sy * g->sy / n;
        json_t *ap = json_object(), *dis = json_array();
        json_object_set_new(ap, "pearson", s_num(vx > 0 && vy > 0 ? cov / sqrt(vx * vy) : NAN));
        json_object_set_new(ap, "pairs", json_integer(g->pairs));
        const Agg *d = s_find(g, "atp_minus_patching"), *e = s_find(g, "patch_head_effect"),
                  *t = s_find(g, "atp_head");
        /* the heads where the mean estimate and the mean effect differ most */
        int used[4 * 64 * 2] = {0};
        for (int k = 0; d && e && t && k < 5 && k < d->n && d->n <= 4 * 64 * 2; k++) {
            int best = -1;
            for (int i = 0; i < d->n; i++)
                if (!used[i] && isfinite(s_mean(d, i)) &&
                    (best < 0 || fabs(s_mean(d, i)) > fabs(s_mean(d, best))))
                    best = i;
            if (best < 0)
                break;
            used[best] = 1;
            char name[32];
            s_head_name(best, g->heads, name, sizeof name);
            json_array_append_new(dis, json_pack("{s:s s:o s:o}", "head", name, "atp",
                                                 s_num(s_mean(t, best)), "patching",
                                                 s_num(s_mean(e, best))));
        }
        json_object_set_new(ap, "largest_disagreements", dis);
        json_object_set_new(root, "attribution_vs_patching", ap);
    }
    return root;
}

/* The means as the tensors an item's figures take. */
static int s_figures(const Aggs *g, const char *dir, DmErr *err)
{
    AnTensors ts = {0};
    int L = g->layers, H = g->heads;
    struct {
        const char *agg, *name;
        int ndim;
        int64_t shape[3];
    } map[] = {
        {"nll_clean", "nll.clean", 1, {1}},
        {"nll_corrupt", "nll.corrupt", 1, {1}},
        {"nll_skip", "nll.skip", 1, {3 * L}},
        {"nll_reproject", "nll.reproject", 1, {3 * L + 1}},
        {"sa_entropy", "heads.sa_entropy", 2, {L, H}},
        {"ca_variance", "heads.ca_variance", 2, {L, H}},
        {"nll_head_ablation", "nll.head_ablation", 3, {L, 2, H}},
        {"nll_patch_head", "nll.patch_head", 3, {L, 2, H}},
        {"atp_head", "atp.head", 3, {L, 2, H}},
    };
    int rc = 0;
    for (size_t i = 0; i < sizeof map / sizeof *map && !rc; i++) {
        const Agg *a = s_find(g, map[i].agg);
        if (!a)
            continue;
        float *m = malloc((size_t)a->n * sizeof *m);
        if (!m)
            return dm_err(err, "out of memory");
        for (int k = 0; k < a->n; k++)
            m[k] = (float)s_mean(a, k);
        rc = an_tensors_add(&ts, map[i].name, map[i].ndim, map[i].shape, m, NULL)
                 ? dm_err(err, "out of memory")
                 : 0;
        free(m);
    }
    if (!rc)
        rc = dm_mkdirs(dir, err) || analyze_figures(&ts, NULL, 0, 0, NULL, dir, err) ? -1 : 0;
    an_tensors_free(&ts);
    return rc;
}

/* figures/lens.png: the logit-lens grid of one record, tokens named by
 * the model's tokenizer when it has one. */
static int s_lens_figure(const Docmint__AnalysisRecord *r, const char *model, const char *dir,
                         DmErr *err)
{
    int R = 3 * (int)r->layers + 1;
    if (!r->n_lens_target_logprob || r->n_lens_target_logprob % R ||
        r->n_lens_top1 != r->n_lens_target_logprob)
        return 0;
    int64_t sh[2] = {R, (int64_t)(r->n_lens_target_logprob / R)};
    int64_t *top = malloc(r->n_lens_top1 * sizeof *top);
    AnTensors ts = {0};
    Tokenizer *tok = NULL;
    DmErr terr = {{0}};
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", model);
    FILE *f = fopen(path, "rb");
    if (f) {
        fclose(f);
        if (tokenizer_load(model, &tok, &terr))
            tok = NULL; /* tokens then named by id */
    }
    int rc = top ? 0 : dm_err(err, "out of memory");
    for (size_t i = 0; top && i < r->n_lens_top1; i++)
        top[i] = r->lens_top1[i];
    if (!rc && (an_tensors_add(&ts, "lens.target_logprob", 2, sh, r->lens_target_logprob, NULL) ||
                an_tensors_add(&ts, "lens.top1", 2, sh, NULL, top)))
        rc = dm_err(err, "out of memory");
    if (!rc)
        rc = analyze_figures(&ts, r->token_ids, (int)r->n_token_ids, (int)r->answer_start, tok,
                             dir, err);
    an_tensors_free(&ts);
    tokenizer_free(&tok);
    free(top);
    return rc;
}

/* report.md: the headline numbers and links to the figures. */
static int s_markdown(const Aggs *g, const json_t *rep, const Docmint__AnalysisRecord *lens,
                      const char *path, DmErr *err)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return dm_err_errno(err, "%s: cannot write", path);
    const Agg *c = s_find(g, "nll_clean"), *s = s_find(g, "nll_skip"),
              *co = s_find(g, "nll_corrupt"), *pq = s_find(g, "nll_patch_query");
    fprintf(f, "# Analysis report\n\n%ld (question, answer) sequences, %d layers of %d heads.\n\n",
            g->records, g->layers, g->heads);
    if (c)
        fprintf(f, "- clean NLL %.4f +- %.4f (perplexity %.4g)\n", s_mean(c, 0), s_se(c, 0),
                exp(s_mean(c, 0)));
    if (c && s) {
        int hi = 0, lo = 0;
        for (int i = 1; i < s->n; i++) {
            hi = s_mean(s, i) > s_mean(s, hi) ? i : hi;
            lo = s_mean(s, i) < s_mean(s, lo) ? i : lo;
        }
        fprintf(f, "- skipping %c%d hurts most: NLL %+.4f; skipping %c%d least: %+.4f\n",
                "SCM"[hi % 3], hi / 3, s_mean(s, hi) - s_mean(c, 0), "SCM"[lo % 3], lo / 3,
                s_mean(s, lo) - s_mean(c, 0));
    }
    if (co)
        fprintf(f, "- corrupted page NLL %.4f +- %.4f\n", s_mean(co, 0), s_se(co, 0));
    if (pq)
        fprintf(f, "- corrupted page with the last cross-attention's clean query: NLL %.4f\n",
                s_mean(pq, 0));
    json_t *ap = json_object_get(rep, "attribution_vs_patching");
    if (ap)
        fprintf(f, "- attribution patching against exhaustive head patching: Pearson r = %.3f "
                   "over %lld (sequence, head) pairs\n",
                json_number_value(json_object_get(ap, "pearson")),
                (long long)json_integer_value(json_object_get(ap, "pairs")));
    json_t *by = json_object_get(rep, "by_question_type");
    const char *ty;
    json_t *tv;
    if (json_object_size(by))
        fprintf(f, "\n| question type | sequences | clean NLL |\n|---|---|---|\n");
    json_object_foreach(by, ty, tv) {
        json_t *cl = json_object_get(json_object_get(json_object_get(tv, "fields"), "nll_clean"),
                                     "mean");
        fprintf(f, "| %s | %lld | %.4f |\n", ty,
                (long long)json_integer_value(json_object_get(tv, "records")),
                json_number_value(cl));
    }
    fprintf(f, "\nEvery mean, standard error and count: [report.json](report.json).\n\n"
               "## Figures (means over the sequences)\n\n");
    static const char *const figs[][2] = {
        {"skip", "Sub-layer skipping"},  {"reproject", "Token reprojection"},
        {"sa_entropy", "Self-attention head entropy"},
        {"ca_variance", "Cross-attention head variance"},
        {"head_ablation", "Head ablation"}, {"patch_head", "Head patching"},
        {"atp_head", "Attribution patching"}};
    for (size_t i = 0; i < sizeof figs / sizeof *figs; i++)
        fprintf(f, "### %s\n\n![%s](figures/%s.png)\n\n", figs[i][1], figs[i][1], figs[i][0]);
    if (lens)
        fprintf(f, "### Logit lens of question %lld (answer \"%s\")\n\n![Logit lens](figures/lens.png)\n\n",
                (long long)lens->question_id, lens->answer);
    json_t *kv = json_object_get(rep, "kv_retrieval");
    if (kv)
        kv_report_markdown(f, kv);
    return fclose(f) ? dm_err_errno(err, "%s: cannot write", path) : 0;
}

static void s_aggs_free(Aggs *g)
{
    for (int i = 0; i < g->n; i++) {
        free(g->a[i].s);
        free(g->a[i].s2);
        free(g->a[i].cnt);
    }
    free(g->a);
}

/* report.json: the aggregates over every record, then by question type. */
static json_t *s_report_json(const Report *rp)
{
    json_t *root = s_json(&rp->all), *by = json_object();
    if (!root || !by) {
        json_decref(root);
        json_decref(by);
        return NULL;
    }
    for (int i = 0; i < rp->ngroups; i++) {
        json_t *g = s_json(&rp->groups[i].g);
        if (!g) {
            json_decref(root);
            json_decref(by);
            return NULL;
        }
        json_object_set_new(by, rp->groups[i].name, g);
    }
    json_object_set_new(root, "by_question_type", by);
    if (kv_report_items(&rp->kv)) {
        json_t *kv = kv_report_json(&rp->kv);
        if (!kv) {
            json_decref(root);
            return NULL;
        }
        json_object_set_new(root, "kv_retrieval", kv);
    }
    return root;
}

int analyze_report(const char *output, const CorpusSpec *corpus, const char *model,
                   int64_t lens_qid, DmErr *err)
{
    Store *st = NULL;
    Report rp = {{0}};
    rp.lens_qid = lens_qid;
    Aggs *gp = &rp.all;
    Corpus *c = NULL;
    json_t *rep = NULL;
    char *text = NULL;
    char path[4200];
    int rc = -1;
    if (corpus) {
        if (corpus_load(corpus, &c, err))
            goto done;
        if (!(rp.qt = calloc((size_t)c->nquestions + 1, sizeof *rp.qt)))
            goto oom;
        for (int p = 0; p < c->npages; p++)
            for (int q = 0; q < c->pages[p].nq && rp.nqt < c->nquestions; q++) {
                const CorpusQuestion *cq = &c->pages[p].q[q];
                rp.qt[rp.nqt++] = (QTypes){cq->qid, cq->qtypes, cq->nqtypes};
            }
        qsort(rp.qt, rp.nqt, sizeof *rp.qt, s_cmp_qt);
    }
    if (store_open(output, STORE_WRITE, &st, err) ||
        store_foreach(st, STORE_RECORDS, s_visit, &rp, err) < 0)
        goto done;
    if (gp->oom || !(rep = s_report_json(&rp)) || !(text = json_dumps(rep, JSON_INDENT(1))))
        goto oom;
    snprintf(path, sizeof path, "%s/report.json", output);
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fputc('\n', f) < 0) {
        if (f)
            fclose(f);
        dm_err_errno(err, "%s: cannot write", path);
        goto done;
    }
    if (fclose(f)) {
        dm_err_errno(err, "%s: cannot write", path);
        goto done;
    }
    if (store_meta_set(st, "aggregates", text, err))
        goto done;
    snprintf(path, sizeof path, "%s/figures", output);
    if (gp->records && s_figures(gp, path, err))
        goto done;
    if (rp.lens && s_lens_figure(rp.lens, model, path, err))
        goto done;
    if (kv_report_items(&rp.kv)) {
        char png[4300];
        snprintf(png, sizeof png, "%s/kv_retrieval.png", path);
        if (dm_mkdirs(path, err) || kv_report_figure(&rp.kv, png, err))
            goto done;
    }
    snprintf(path, sizeof path, "%s/report.md", output);
    rc = s_markdown(gp, rep, rp.lens, path, err);
    goto done;
oom:
    dm_err(err, "out of memory aggregating %s", output);
done:
    s_aggs_free(&rp.all);
    for (int i = 0; i < rp.ngroups; i++)
        s_aggs_free(&rp.groups[i].g);
    free(rp.groups);
    free(rp.qt);
    if (rp.lens)
        docmint__analysis_record__free_unpacked(rp.lens, NULL);
    corpus_free(&c);
    free(text);
    json_decref(rep);
    store_close(&st);
    return rc;
}
