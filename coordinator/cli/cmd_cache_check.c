/* cmd_cache_check.c - `docmint cache-check`: proof that a teacher-logit
 * store is faithful.  For the store's records it recomputes the teacher
 * live (same page, same training sequence) and compares, at temperature T,
 * the distillation loss T^2 * mean_t KL(p_T || q_T) against a student:
 * from the cache at k = 8, 32, 64, 256 and full (kd_loss.h: kept tokens
 * exact, the rest in one "other" bucket) and from the live teacher's full
 * logits.  It also compares every cached log-probability with the live
 * one: they must agree within float16 rounding of the logits, else the
 * command fails.  A store with features (keep_features) has the encoder
 * output of each page checked too, against the live encoder. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/cli/commands.h"
#include "worker/data/corpus.h"
#include "coordinator/job.h"
#include "worker/train/kd_loss.h"
#include "common/logit_store.h"
#include "worker/model/page_encode.h"
#include "worker/stages/stage_cache.h"
#include "common/store.h"
#include "worker/image/image.h"

#define NK 5
static const int s_ks[NK] = {8, 32, 64, 256, 0}; /* 0: full */

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: docmint cache-check TEACHER_DIR STORE [--student DIR] [--T X] [--limit N]\n"
            "  Recompute the teacher on the store's (question, answer) items and compare the\n"
            "  distillation loss T^2 * mean KL(teacher_T || student_T) from the cache (k = 8, 32,\n"
            "  64, 256, full) with the live teacher's; check every cached log-probability against\n"
            "  the live one (float16 rounding).  The corpus is the one the store's job names.\n"
            "  --student DIR  the student (default: the teacher itself)\n"
            "  --T X          temperature, one the store keeps (default 2 if kept, else 1)\n"
            "  --limit N      check the first N records (default 64)\n");
}

typedef struct Item {
    void *val;
    size_t len;
} Item;

typedef struct Collect {
    Item *v;
    int n, cap;
} Collect;

static int s_collect(void *ctx, const void *key, size_t klen, const void *val, size_t vlen)
{
    Collect *c = ctx;
    if (c->n == c->cap)
        return 1;
    c->v[c->n].val = malloc(vlen ? vlen : 1);
    if (!c->v[c->n].val)
        return 1;
    memcpy(c->v[c->n].val, val, vlen);
    c->v[c->n++].len = vlen;
    return 0;
}

/* A model with its page state, encoded lazily and kept while the page
 * stays the same (records sort by questionId, so a page's come together). */
typedef struct Side {
    QaModel qa;
    PreprocConfig pc;
    int page; /* corpus page encoded, -1 none */
    float *enc;
    DecPage dp;
} Side;

static int s_side_open(const char *dir, Side *s, DmErr *err)
{
    memset(s, 0, sizeof *s);
    s->page = -1;
    if (qa_open(dir, &s->qa, err))
        return -1;
    char path[4200];
    snprintf(path, sizeof path, "%s/preprocessor_config.json", dir);
    return preproc_config_load(path, &s->pc, err);
}

static void s_side_close(Side *s)
{
    dec_page_free(&s->dp);
    free(s->enc);
    qa_close(&s->qa);
}

static int s_side_page(Side *s, const Corpus *c, int page, int dpi, DmErr *err)
{
    if (s->page == page)
        return 0;
    dec_page_free(&s->dp);
    free(s->enc);
    s->enc = NULL;
    s->page = -1;
    int n_enc = 0;
    const CorpusPage *p = &c->pages[page];
    if (page_encode(s->qa.model, &s->pc, p->image_path, p->page_no, dpi, &s->enc, &n_enc, err) ||
        dec_page_init(&s->dp, s->qa.model, s->enc, n_enc, err))
        return -1;
    s->page = page;
    return 0;
}

typedef struct FeatSums {
    long pages, values, over;
    double max_diff;
} FeatSums;

/* The store's features of the page the teacher just encoded against its
 * live encoder output: float16 rounding (half an ulp, |x| 2^-11, or 2^-25
 * below float16's normal range) plus 1e-5 (1 + |x|) for float32 sums taken
 * in another order (another thread count).  A page without features is
 * skipped; a malformed record is an error. */
static int s_check_features(Store *store, const char *page_id, const DecPage *dp, FeatSums *f,
                            DmErr *err)
{
    float *got = NULL;
    int tokens = 0, dim = 0;
    int found = logit_store_features(store, page_id, &got, &tokens, &dim, err);
    if (found <= 0)
        return found;
    int rc = 0;
    if (tokens != dp->n_enc || dim != dp->m->cfg.enc.hidden_size) {
        rc = dm_err(err, "%s: features of page %s are %d x %d, the live encoder gives %d x %d",
                    store_path(store), page_id, tokens, dim, dp->n_enc, dp->m->cfg.enc.hidden_size);
    } else {
        for (size_t i = 0; i < (size_t)tokens * dim; i++) {
            double x = dp->enc[i], d = fabs(got[i] - x);
            f->over += d > fabs(x) * 0x1p-11 + 0x1p-25 + 1e-5 * (1 + fabs(x));
            f->max_diff = d > f->max_diff ? d : f->max_diff;
        }
        f->pages++;
        f->values += (long)tokens * dim;
    }
    free(got);
    return rc;
}

typedef struct Sums {
    double kl_cache[NK], kl_live;
    int have[NK];
    long positions, records;
    double max_dlp, worst_excess; /* |log p cache - log p live|, and over its bound */
    long over;
} Sums;

/* One record against the live logits t (teacher) and s (student). */
static int s_compare(const Docmint__LogitRecord *r, const float *t, const float *s, int V,
                     double T, int ti, Sums *z, DmErr *err)
{
    int P = logit_record_positions(r), K = (int)r->k;
    double *vals = malloc((size_t)K * sizeof *vals), *kv = malloc((size_t)K * sizeof *kv);
    float *vf = malloc((size_t)K * sizeof *vf);
    uint32_t *ids = malloc((size_t)K * sizeof *ids), *ord = malloc((size_t)K * sizeof *ord),
             *kid = malloc((size_t)K * sizeof *kid);
    if (!vals || !ids || !ord || !kv || !kid || !vf) {
        free(vals), free(ids), free(ord), free(kv), free(kid), free(vf);
        return dm_err(err, "out of memory");
    }
    for (int p = 0; p < P; p++) {
        const float *tr = t + (size_t)(r->answer_start + p) * V;
        const float *sr = s + (size_t)(r->answer_start + p) * V;
        double lse = r->lse[(size_t)p * r->n_temperatures + ti], lse_live = kd_lse(tr, V, T);
        for (int i = 0; i < K; i++) {
            vals[i] = logit_record_value(r, p, i);
            ids[i] = logit_record_id(r, p, i);
            vf[i] = (float)vals[i];
            /* float16 keeps 11 significant bits of z - shift: half an ulp
             * is |z - shift| 2^-11 at most; shift and lse are float32. */
            double d = fabs((vals[i] / T - lse) - (tr[ids[i]] / T - lse_live));
            double bound = fabs(vals[i] - r->shift[p]) * ldexp(1.0, -11) / T +
                           1e-5 * (1 + fabs(lse) + fabs(r->shift[p]) / T);
            if (d > z->max_dlp)
                z->max_dlp = d;
            if (d > bound) {
                z->over++;
                if (d - bound > z->worst_excess)
                    z->worst_excess = d - bound;
            }
        }
        /* The kept tokens largest first, whatever the stored order. */
        kd_topk(vf, K, K, ord);
        double rest_all = r->full ? -INFINITY : r->lse_rest[(size_t)p * r->n_temperatures + ti];
        z->kl_live += kd_kl_full(tr, sr, V, T);
        for (int j = 0; j < NK; j++) {
            int k = s_ks[j] ? s_ks[j] : V;
            if (k > K || (s_ks[j] && k >= V && !r->full)) {
                z->have[j] = -1; /* the store keeps fewer */
                continue;
            }
            for (int i = 0; i < k; i++) {
                kv[i] = vals[ord[i]];
                kid[i] = ids[ord[i]];
            }
            /* k below the stored K: the tokens between k and K join the
             * left-out ones in the "other" bucket. */
            double rest = rest_all;
            for (int i = k; i < K; i++) {
                double x = vals[ord[i]] / T, hi = rest > x ? rest : x;
                rest = hi + log(exp(rest - hi) + exp(x - hi));
            }
            z->kl_cache[j] += kd_kl_topk(kv, kid, k, lse, rest, sr, V, T);
            if (z->have[j] == 0)
                z->have[j] = 1;
        }
        z->positions++;
    }
    z->records++;
    free(vals), free(ids), free(ord), free(kv), free(kid), free(vf);
    return 0;
}

static int s_find(const Corpus *c, int64_t qid, int *page, int *q)
{
    for (int p = 0; p < c->npages; p++)
        for (int i = 0; i < c->pages[p].nq; i++)
            if (c->pages[p].q[i].qid == qid) {
                *page = p;
                *q = i;
                return 0;
            }
    return -1;
}

int cmd_cache_check(int argc, char **argv)
{
    const char *tdir = NULL, *spath = NULL, *sdir = NULL;
    double T = 0;
    int limit = 64;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--student") && i + 1 < argc) {
            sdir = argv[++i];
        } else if (!strcmp(argv[i], "--T") && i + 1 < argc) {
            T = atof(argv[++i]);
            if (!(T > 0)) {
                fprintf(stderr, "docmint cache-check: --T %s: expected a positive number\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(argv[i], "--limit") && i + 1 < argc) {
            limit = atoi(argv[++i]);
            if (limit < 1) {
                fprintf(stderr, "docmint cache-check: --limit %s: expected a positive integer\n", argv[i]);
                return 2;
            }
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "docmint cache-check: unknown flag %s (docmint cache-check --help)\n", argv[i]);
            return 2;
        } else if (!tdir) {
            tdir = argv[i];
        } else if (!spath) {
            spath = argv[i];
        } else {
            fprintf(stderr, "docmint cache-check: unexpected argument %s\n", argv[i]);
            return 2;
        }
    }
    if (!tdir || !spath) {
        s_usage(stderr);
        return 2;
    }
    DmErr err = {{0}};
    Side te, st;
    Side *stu = &te;
    Store *store = NULL;
    Job *job = NULL;
    Corpus *corpus = NULL;
    Collect col = {0};
    float *tl = NULL, *sl = NULL;
    int32_t *ids = NULL;
    int rc = 1, have_st = 0;
    memset(&st, 0, sizeof st);
    if (s_side_open(tdir, &te, &err))
        goto out_te;
    if (store_open(spath, STORE_READ, &store, &err) ||
        logit_store_check(store, te.qa.model->fingerprint, tokenizer_fingerprint(te.qa.tok), &err))
        goto out;
    if (sdir) {
        have_st = 1;
        if (s_side_open(sdir, &st, &err))
            goto out;
        if (strcmp(tokenizer_fingerprint(st.qa.tok), tokenizer_fingerprint(te.qa.tok))) {
            dm_err(&err, "%s: the student's tokenizer %s differs from the teacher's %s", sdir,
                   tokenizer_fingerprint(st.qa.tok), tokenizer_fingerprint(te.qa.tok));
            goto out;
        }
        stu = &st;
    }
    char *jtext = store_meta_get(store, "job", &err);
    if (!jtext) {
        dm_err(&err, "%s: meta has no job (the corpus is unknown)", spath);
        goto out;
    }
    int jrc = job_parse(jtext, "the store's job", &job, &err);
    free(jtext);
    if (!jrc)
        image_set_max_pixels(job->corpus.max_page_pixels);
    if (jrc || corpus_load(&job->corpus, &corpus, &err))
        goto out;
    col.cap = limit;
    col.v = calloc((size_t)limit, sizeof *col.v);
    if (!col.v || store_foreach(store, STORE_RECORDS, s_collect, &col, &err) < 0)
        goto out;
    if (col.n == 0) {
        dm_err(&err, "%s: no records to check", spath);
        goto out;
    }
    int V = te.qa.model->cfg.dec.vocab;
    Sums z = {0};
    FeatSums fz = {0};
    int ti = -1;
    for (int i = 0; i < col.n; i++) {
        Docmint__LogitRecord *r = logit_record_unpack(col.v[i].val, col.v[i].len, &err);
        if (!r)
            goto out;
        if (T == 0)
            T = logit_record_temp_index(r, 2.0) >= 0 ? 2.0 : 1.0;
        ti = logit_record_temp_index(r, T);
        int page = 0, qi = 0, n = 0, a0 = 0, bad = 0;
        if (ti < 0)
            bad = dm_err(&err, "%s: T %g is not among the store's temperatures", spath, T);
        else if ((int)r->vocab != V)
            bad = dm_err(&err, "%s: records of vocabulary %u, the teacher has %d", spath, r->vocab, V);
        else if (s_find(corpus, r->question_id, &page, &qi) ||
                 (int)r->answer_index >= corpus->pages[page].q[qi].nanswers)
            bad = dm_err(&err, "%s: question %" PRId64 " answer %u is not in the corpus %s", spath,
                         r->question_id, r->answer_index, job->corpus.path);
        const CorpusQuestion *q = bad ? NULL : &corpus->pages[page].q[qi];
        if (!bad && cache_sequence(&te.qa, q->text, q->answers[r->answer_index], &ids, &n, &a0, &err))
            bad = -1;
        if (!bad && (n != (int)r->n_token_ids || a0 != (int)r->answer_start ||
                     memcmp(ids, r->token_ids, (size_t)n * sizeof *ids)))
            bad = dm_err(&err, "question %" PRId64 " answer %u: the stored sequence differs from "
                               "the one built now", r->question_id, r->answer_index);
        int fresh = te.page != page;
        if (!bad && (s_side_page(&te, corpus, page, job->corpus.pdf_dpi, &err) ||
                     (fresh && s_check_features(store, corpus->pages[page].page_id, &te.dp, &fz,
                                                &err) < 0) ||
                     cache_forward(te.qa.model, &te.dp, ids, n, &tl, &err)))
            bad = -1;
        if (!bad && stu != &te &&
            (s_side_page(stu, corpus, page, job->corpus.pdf_dpi, &err) ||
             cache_forward(stu->qa.model, &stu->dp, ids, n, &sl, &err)))
            bad = -1;
        if (!bad && s_compare(r, tl, stu == &te ? tl : sl, V, T, ti, &z, &err))
            bad = -1;
        logit_record_free(&r);
        free(ids), free(tl), free(sl);
        ids = NULL, tl = NULL, sl = NULL;
        if (bad)
            goto out;
    }
    double scale = T * T / (double)z.positions, live = z.kl_live * scale;
    printf("cache-check: %ld records, %ld positions, T %g, student %s\n", z.records, z.positions, T,
           sdir ? sdir : "(the teacher)");
    printf("%-6s %14s %14s %12s %10s\n", "k", "kd(cache)", "kd(live)", "abs err", "rel err");
    for (int j = 0; j < NK; j++) {
        char kname[16];
        snprintf(kname, sizeof kname, s_ks[j] ? "%d" : "full", s_ks[j]);
        if (z.have[j] != 1) {
            printf("%-6s %14s %14.8f %12s %10s\n", kname, "-", live, "-", "(not kept)");
            continue;
        }
        double c = z.kl_cache[j] * scale, d = fabs(c - live);
        printf("%-6s %14.8f %14.8f %12.3e %10.3e\n", kname, c, live, d,
               live > 0 ? d / live : 0.0);
    }
    printf("max |log p(cache) - log p(live)|: %.3e over kept tokens; %ld beyond float16 rounding\n",
           z.max_dlp, z.over);
    if (fz.pages)
        printf("features: %ld pages, %ld values, max |f16 - live| %.3e; %ld beyond float16 "
               "rounding\n", fz.pages, fz.values, fz.max_diff, fz.over);
    if (z.over) {
        dm_err(&err, "%s: %ld cached log-probabilities differ from the live teacher's beyond float16 "
                     "rounding (worst by %.3e)", spath, z.over, z.worst_excess);
        goto out;
    }
    if (fz.over) {
        dm_err(&err, "%s: %ld feature values differ from the live encoder's beyond float16 rounding",
               spath, fz.over);
        goto out;
    }
    rc = 0;
out:
    if (have_st)
        s_side_close(&st);
    s_side_close(&te);
out_te:
    for (int i = 0; i < col.n; i++)
        free(col.v[i].val);
    free(col.v);
    free(ids), free(tl), free(sl);
    corpus_free(&corpus);
    job_free(&job);
    store_close(&store);
    if (rc)
        fprintf(stderr, "docmint cache-check: %s\n", err.msg);
    return rc;
}
