/* dispatch.c - the coordinator's set-up and ROUTER loop (dispatch.h). */
#include "coordinator/dispatch.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "worker/data/corpus.h"
#include "coordinator/job.h"
#include "coordinator/lease.h"
#include "common/logit_store.h"
#include "coordinator/progress.h"
#include "coordinator/results.h"
#include "worker/stages/stage_infer.h"
#include "common/store.h"
#include "coordinator/zap_auth.h"
#include "worker/analyze/stage_analyze.h"

#define GRACE_SECONDS 0.5  /* after NO_MORE, answer stragglers this long */
#define KEYS_FILE "worker.keys"

typedef struct WorkerSlot {
    unsigned char id[256];
    size_t idlen;
    char name[128];
    int alive;
    int want;          /* shards asked for and not sent yet */
    double last_seen;  /* last message from it */
    double last_sent;  /* last message to it */
    uint64_t results;
} WorkerSlot;

struct Dispatch {
    DispatchOpts o;
    Job *job;
    Corpus *corpus;
    Store *store;
    Plan *plan;
    ZapAuth *zap;
    void *router;
    WireJoin join;
    char local_ep[512];
    char keys_path[4200];
    char cwd[4096];
    int quiet;
    double hb, lease_s;
    int liveness;
    WorkerSlot *w;
    int nw, capw;
    Results *res;
    DispatchStats st;
    Progress *prog;
    int (*failed)(void *ctx, DmErr *err);
    void *failed_ctx;
    /* cache-logits: records per (question, answer), and the store's extra meta */
    int cache;
    int analyze;  /* stage analyze: records per (question, answer) as well */
    int corrupt_page; /* analyze: another page corrupts each page */
    uint64_t seed;
    char m_fp[17], m_topk[16], m_temps[400], m_foa[8], m_kf[8];
    const char *extra[16];
};

/* The settings a logit store records in meta (results_set_kind): a resumed
 * store must have been made with the same ones. */
static void s_cache_meta(Dispatch *d, const char *fp)
{
    const Job *j = d->job;
    snprintf(d->m_fp, sizeof d->m_fp, "%s", fp);
    if (j->top_k > 0)
        snprintf(d->m_topk, sizeof d->m_topk, "%d", j->top_k);
    else
        snprintf(d->m_topk, sizeof d->m_topk, "full");
    size_t n = (size_t)snprintf(d->m_temps, sizeof d->m_temps, "[");
    for (int i = 0; i < j->n_temps && n < sizeof d->m_temps; i++)
        n += (size_t)snprintf(d->m_temps + n, sizeof d->m_temps - n, "%s%.9g", i ? ", " : "",
                              (double)(float)j->temps[i]);
    if (n < sizeof d->m_temps)
        snprintf(d->m_temps + n, sizeof d->m_temps - n, "]");
    snprintf(d->m_foa, sizeof d->m_foa, "%s", j->first_answer_only ? "true" : "false");
    snprintf(d->m_kf, sizeof d->m_kf, "%s", j->keep_features ? "true" : "false");
    const char *const kv[] = {"teacher_fingerprint", d->m_fp, "top_k", d->m_topk,
                              "temperatures", d->m_temps, "first_answer_only", d->m_foa,
                              "keep_features", d->m_kf, "corpus", j->corpus.path, NULL};
    memcpy(d->extra, kv, sizeof kv);
}

static int s_held(void *ctx, int64_t qid) { return results_held(ctx, qid); }

long dispatch_corpus_answers(const Corpus *c)
{
    long n = 0;
    for (int p = 0; p < c->npages; p++)
        for (int q = 0; q < c->pages[p].nq; q++)
            n += c->pages[p].q[q].nanswers > 0;
    return n;
}

int dispatch_analyze_settings(const Job *job, char *out, size_t n, DmErr *err)
{
    static const char *const keys[] = {"analyses",     "skip_sets",   "patch_sites",
                                       "patch_scope",  "replacements", "corruption",
                                       "noise_scale", "seed"};
    json_t *o = json_object();
    for (size_t i = 0; o && i < sizeof keys / sizeof *keys; i++) {
        json_t *v = json_object_get(job->doc, keys[i]);
        if (v)
            json_object_set(o, keys[i], v);
    }
    char *t = o ? json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(o);
    if (!t || strlen(t) >= n) {
        free(t);
        return dm_err(err, "%s: the analyze settings are too long", job->path);
    }
    snprintf(out, n, "%s", t);
    free(t);
    AnalyzeOpts ao;
    return analyze_opts_parse(out, job->path, &ao, err);
}

/* The analyze stage's job keys into the join document, checked here so a
 * bad key is one error before any worker starts; the sites are checked
 * against the model when it is loaded. */
static int s_analyze_settings(Dispatch *d, DmErr *err)
{
    AnalyzeOpts ao;
    if (dispatch_analyze_settings(d->job, d->join.analyze, sizeof d->join.analyze, err) ||
        analyze_opts_parse(d->join.analyze, d->job->path, &ao, err))
        return -1;
    d->corrupt_page = ao.corrupt_page;
    d->seed = ao.seed;
    return 0;
}

/* The page that corrupts page p (analyze, "corruption": "page"): another
 * page of the corpus, the same for a page in every run, chosen from the
 * seed and the page id. */
static int s_corrupt_page(const Dispatch *d, int p)
{
    int n = d->corpus->npages;
    uint64_t h = 0xcbf29ce484222325ull ^ d->seed;
    for (const char *s = d->corpus->pages[p].page_id; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return (int)((p + 1 + h % (uint64_t)(n - 1)) % (uint64_t)n);
}

/* The analyze stage's sites and sub-layers against the model. */
static int s_analyze_check_model(Dispatch *d, const char *model_dir, DmErr *err)
{
    AnalyzeOpts ao;
    DonutModel *m = NULL;
    if (analyze_opts_parse(d->join.analyze, d->job->path, &ao, err) ||
        donut_load(model_dir, &m, err))
        return -1;
    int rc = analyze_opts_check(m, &ao, err);
    if (rc)
        dm_err_prefix(err, "%s", d->job->path);
    donut_free(&m);
    return rc;
}

/* ---------------------------------------------------------------- set-up */

static int s_bind(Dispatch *d, const char *server_secret, DmErr *err)
{
    void *r = zmq_socket(d->o.zctx, ZMQ_ROUTER);
    if (!r)
        return dm_err(err, "zmq_socket: %s", zmq_strerror(zmq_errno()));
    d->router = r;
    int one = 1;
    const char *domain = "docmint";
    if (wire_socket_defaults(r, err))
        return -1;
    if (zmq_setsockopt(r, ZMQ_ROUTER_MANDATORY, &one, sizeof one) != 0 ||
        zmq_setsockopt(r, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
        zmq_setsockopt(r, ZMQ_CURVE_SECRETKEY, server_secret, WIRE_KEY_CHARS) != 0 ||
        zmq_setsockopt(r, ZMQ_ZAP_DOMAIN, domain, strlen(domain)) != 0)
        return dm_err(err, "ROUTER options: %s", zmq_strerror(zmq_errno()));
    if (zmq_bind(r, d->job->endpoint) != 0)
        return dm_err(err, "%s: endpoint %s: %s", d->job->path, d->job->endpoint,
                      zmq_strerror(zmq_errno()));
    char bound[512];
    size_t blen = sizeof bound;
    if (zmq_getsockopt(r, ZMQ_LAST_ENDPOINT, bound, &blen) != 0)
        return dm_err(err, "ZMQ_LAST_ENDPOINT: %s", zmq_strerror(zmq_errno()));
    int wildcard;
    if (wire_advertise_endpoint(bound, d->join.endpoint, sizeof d->join.endpoint, &wildcard, err))
        return -1;
    if (wildcard)
        wire_loopback_endpoint(bound, d->local_ep, sizeof d->local_ep);
    else
        snprintf(d->local_ep, sizeof d->local_ep, "%s", d->join.endpoint);
    return 0;
}

int dispatch_open(const DispatchOpts *o, Dispatch **out, WireJoin *join, DmErr *err)
{
    *out = NULL;
    Dispatch *d = calloc(1, sizeof *d);
    if (!d)
        return dm_err(err, "out of memory");
    d->o = *o;
    InferStage *stage = NULL;
    char model_abs[PATH_MAX], server_secret[WIRE_KEY_CHARS + 1];
    if (!getcwd(d->cwd, sizeof d->cwd))
        d->cwd[0] = '\0';
    if (job_load(o->job_path, &d->job, err))
        goto fail;
    Job *job = d->job;
    d->quiet = o->quiet || job->quiet;
    d->hb = job->heartbeat_seconds;
    d->liveness = job->heartbeat_liveness;
    d->lease_s = job->lease_seconds;
    d->cache = strcmp(job->stage, "cache-logits") == 0;
    d->analyze = strcmp(job->stage, "analyze") == 0;
    if (strcmp(job->stage, "infer") != 0 && !d->cache && !d->analyze) {
        dm_err(err, "%s: stage \"%s\": docmint run computes \"infer\", \"cache-logits\" and "
                    "\"analyze\"",
               job->path, job->stage);
        goto fail;
    }
    if (d->analyze && s_analyze_settings(d, err))
        goto fail;
    if (!realpath(job->model, model_abs)) {
        dm_err_errno(err, "%s: model %s", job->path, job->model);
        goto fail;
    }
    if (corpus_load(&job->corpus, &d->corpus, err))
        goto fail;
    if (d->analyze && d->corrupt_page && d->corpus->npages < 2) {
        dm_err(err, "%s: corruption \"page\" needs a corpus of two pages or more (%s has %d)",
               job->path, job->corpus.path, d->corpus->npages);
        goto fail;
    }
    if (d->analyze && dispatch_corpus_answers(d->corpus) == 0) {
        dm_err(err, "%s: corpus %s has no gold answers: stage analyze teacher-forces them",
               job->path, job->corpus.path);
        goto fail;
    }
    /* The model must load here, so a bad checkpoint is one clear error
     * before any worker starts; its fingerprint guards resumed stores. */
    if (infer_open(model_abs, job->max_length, job->corpus.pdf_dpi, job->precision, &stage, err))
        goto fail;
    if (d->analyze && s_analyze_check_model(d, model_abs, err))
        goto fail;
    char fp[17], tok_fp[17];
    snprintf(fp, sizeof fp, "%s", infer_fingerprint(stage));
    snprintf(tok_fp, sizeof tok_fp, "%s", infer_tokenizer_fingerprint(stage));
    infer_close(&stage);
    if (store_open(job->output, STORE_WRITE, &d->store, err))
        goto fail;
    if (results_open(d->store, job->commit_every, &d->res, err))
        goto fail;
    if (d->analyze) {
        const char *const kv[] = {"analyze", d->join.analyze, "corpus", job->corpus.path, NULL};
        memcpy(d->extra, kv, sizeof kv);
        results_set_kind(d->res, "analysis", "analyze", d->extra);
    }
    if (d->cache) {
        s_cache_meta(d, fp);
        results_set_kind(d->res, "logits", "cache-logits", d->extra);
        /* Resuming a logit store: the same teacher and tokenizer, or stop
         * with both fingerprints. */
        char *kind = store_meta_get(d->store, "kind", err);
        int mismatch = kind && !strcmp(kind, "logits") && logit_store_check(d->store, fp, tok_fp, err);
        free(kind);
        if (mismatch) {
            dm_err_prefix(err, "%s", job->path);
            goto fail;
        }
    }
    if (results_check_meta(d->res, job->output, job->model, fp, err))
        goto fail;
    if (plan_build(d->corpus, job->pages_per_shard, s_held, d->res, &d->plan, err))
        goto fail;
    results_forget_held(d->res);
    d->st.total_q = d->plan->total_q;
    d->st.held_q = d->plan->held_q;
    d->st.todo_q = d->plan->todo_q;
    char *job_text = json_dumps(job->doc, JSON_COMPACT | JSON_SORT_KEYS);
    int started = job_text ? results_start(d->res, job_text, fp, tok_fp, d->plan->held_q, err)
                           : dm_err(err, "out of memory");
    free(job_text);
    if (started)
        goto fail;

    WireJoin *j = &d->join;
    snprintf(j->model, sizeof j->model, "%s", model_abs);
    if (!realpath(job->path, j->job))
        snprintf(j->job, sizeof j->job, "%s", job->path);
    snprintf(j->model_fingerprint, sizeof j->model_fingerprint, "%s", fp);
    snprintf(j->stage, sizeof j->stage, "%s", job->stage);
    j->max_length = job->max_length;
    j->pdf_dpi = job->corpus.pdf_dpi;
    j->threads = job->threads;
    j->precision = job->precision;
    j->heartbeat_seconds = d->hb;
    j->heartbeat_liveness = d->liveness;
    j->credit = job->credit > 0 ? job->credit : 1;
    j->top_k = job->top_k;
    j->n_temps = job->n_temps;
    memcpy(j->temps, job->temps, sizeof j->temps);
    j->first_answer_only = job->first_answer_only;
    if (d->plan->nshards > 0) {
        if (wire_keys_generate(j, server_secret, err) ||
            zap_start(o->zctx, j->client_public, o->log_prefix, &d->zap, err) ||
            s_bind(d, server_secret, err))
            goto fail;
        snprintf(d->keys_path, sizeof d->keys_path, "%s/%s", job->output, KEYS_FILE);
        if (wire_join_write(d->keys_path, j, err)) {
            d->keys_path[0] = '\0';
            goto fail;
        }
    }
    memset(server_secret, 0, sizeof server_secret);
    d->prog = progress_new(stderr, o->log_prefix, d->quiet);
    *join = *j;
    *out = d;
    return 0;
fail:
    memset(server_secret, 0, sizeof server_secret);
    infer_close(&stage);
    dispatch_close(&d);
    return -1;
}

int64_t dispatch_todo(const Dispatch *d) { return d->plan->todo_q; }
const char *dispatch_local_endpoint(const Dispatch *d) { return d->local_ep; }
const DispatchStats *dispatch_stats(const Dispatch *d) { return &d->st; }

void dispatch_set_failed(Dispatch *d, int (*failed)(void *ctx, DmErr *err), void *ctx)
{
    d->failed = failed;
    d->failed_ctx = ctx;
}

/* ---------------------------------------------------------------- workers */

static int s_slot(Dispatch *d, const unsigned char *id, size_t idlen)
{
    for (int i = 0; i < d->nw; i++)
        if (d->w[i].idlen == idlen && memcmp(d->w[i].id, id, idlen) == 0)
            return i;
    if (d->nw == d->capw) {
        int cap = d->capw ? 2 * d->capw : 16;
        WorkerSlot *v = realloc(d->w, (size_t)cap * sizeof *v);
        if (!v)
            return -1;
        d->w = v;
        d->capw = cap;
    }
    WorkerSlot *s = &d->w[d->nw];
    memset(s, 0, sizeof *s);
    memcpy(s->id, id, idlen);
    s->idlen = idlen;
    snprintf(s->name, sizeof s->name, "?");
    d->st.workers_seen++;
    return d->nw++;
}

static int s_alive_count(const Dispatch *d)
{
    int n = 0;
    for (int i = 0; i < d->nw; i++)
        n += d->w[i].alive;
    return n;
}

static void s_worker_lost(Dispatch *d, int i, const char *why)
{
    WorkerSlot *s = &d->w[i];
    if (!s->alive)
        return;
    s->alive = 0;
    s->want = 0;
    int n = lease_release_owner(d->plan, i);
    d->st.requeued_dead += n;
    if (n > 0 || !lease_all_done(d->plan))
        fprintf(stderr, "%s: worker %s %s: %d shard%s handed out again\n", d->o.log_prefix,
                s->name, why, n, n == 1 ? "" : "s");
}

static int s_send(Dispatch *d, int i, Docmint__Envelope *e)
{
    DmErr err;
    WorkerSlot *s = &d->w[i];
    if (wire_send(d->router, s->id, s->idlen, e, ZMQ_DONTWAIT, &err) != 0)
        return -1;
    s->last_sent = dm_now();
    return 0;
}

static void s_send_kind(Dispatch *d, int i, int kind)
{
    Docmint__Envelope e;
    docmint__envelope__init(&e);
    e.kind = kind;
    if (s_send(d, i, &e) != 0 && zmq_errno() == EHOSTUNREACH)
        s_worker_lost(d, i, "disconnected");
}

/* Build and send shard k to worker i.  Returns 0 when sent. */
static int s_send_shard(Dispatch *d, int i, int k)
{
    const LeaseShard *ls = &d->plan->shards[k];
    Docmint__Shard sh;
    docmint__shard__init(&sh);
    sh.shard_id = ls->id;
    sh.lease_id = ls->lease_id;
    sh.lease_seconds = d->lease_s;
    sh.n_pages = (size_t)ls->npages;
    Docmint__Page *pages = calloc((size_t)ls->npages, sizeof *pages);
    Docmint__Page **pp = calloc((size_t)ls->npages, sizeof *pp);
    Docmint__Question *qs = calloc((size_t)ls->nq, sizeof *qs);
    Docmint__Question **qp = calloc((size_t)ls->nq, sizeof *qp);
    char **paths = calloc((size_t)ls->npages, sizeof *paths);
    char **cpaths = calloc((size_t)ls->npages, sizeof *cpaths);
    int rc = -1, nq = 0;
    if (!pages || !pp || !qs || !qp || !paths || !cpaths)
        goto done;
    for (int p = 0; p < ls->npages; p++) {
        const PlanPage *plp = &d->plan->pages[ls->first + p];
        const CorpusPage *cp = &d->corpus->pages[plp->page];
        docmint__page__init(&pages[p]);
        pp[p] = &pages[p];
        pages[p].page_id = cp->page_id;
        /* Workers may run in another folder: send absolute paths. */
        if (cp->image_path[0] != '/' && d->cwd[0]) {
            size_t n = strlen(d->cwd) + strlen(cp->image_path) + 2;
            paths[p] = malloc(n);
            if (!paths[p])
                goto done;
            snprintf(paths[p], n, "%s/%s", d->cwd, cp->image_path);
            pages[p].image_path = paths[p];
        } else {
            pages[p].image_path = cp->image_path;
        }
        pages[p].page_no = cp->page_no;
        if (d->corrupt_page) {
            /* absolute, as the page's own path */
            const CorpusPage *op = &d->corpus->pages[s_corrupt_page(d, plp->page)];
            int rel = op->image_path[0] != '/' && d->cwd[0];
            size_t n = strlen(d->cwd) + strlen(op->image_path) + 2;
            if (!(cpaths[p] = malloc(n)))
                goto done;
            snprintf(cpaths[p], n, "%s%s%s", rel ? d->cwd : "", rel ? "/" : "", op->image_path);
            pages[p].corrupt_image_path = cpaths[p];
            pages[p].corrupt_page_no = op->page_no;
        }
        /* A page whose features a committed batch holds is not asked for
         * them again (a failed look-up asks: the write is idempotent). */
        if (d->job->keep_features) {
            DmErr herr;
            pages[p].features = store_has(d->store, STORE_FEATURES, cp->page_id,
                                          strlen(cp->page_id), &herr) != 1;
        }
        pages[p].questions = qp + nq;
        pages[p].n_questions = (size_t)plp->nq;
        for (int q = 0; q < plp->nq; q++) {
            const CorpusQuestion *cq = &cp->q[plp->qidx[q]];
            docmint__question__init(&qs[nq]);
            qs[nq].question_id = cq->qid;
            qs[nq].text = cq->text;
            if (d->cache || d->analyze) { /* the gold answers are the teacher's input */
                qs[nq].answers = cq->answers;
                qs[nq].n_answers = (size_t)cq->nanswers;
            }
            qp[nq] = &qs[nq];
            nq++;
        }
    }
    sh.pages = pp;
    Docmint__Envelope e;
    docmint__envelope__init(&e);
    e.kind = DOCMINT__ENVELOPE__KIND__SHARD;
    e.shard = &sh;
    rc = s_send(d, i, &e);
done:
    for (int p = 0; paths && p < ls->npages; p++)
        free(paths[p]);
    for (int p = 0; cpaths && p < ls->npages; p++)
        free(cpaths[p]);
    free(paths);
    free(cpaths);
    free(pages);
    free(pp);
    free(qs);
    free(qp);
    return rc;
}

/* Hand queued shards to workers that asked, one at a time round-robin. */
static void s_serve(Dispatch *d, double now)
{
    int progress = 1;
    while (progress && d->plan->qlen > 0) {
        progress = 0;
        for (int i = 0; i < d->nw && d->plan->qlen > 0; i++) {
            WorkerSlot *s = &d->w[i];
            if (!s->alive || s->want <= 0)
                continue;
            int k = lease_take(d->plan, i, now, d->lease_s);
            if (k < 0)
                return;
            if (s_send_shard(d, i, k) != 0) {
                int e = zmq_errno();
                lease_requeue(d->plan, k);
                if (e == EHOSTUNREACH)
                    s_worker_lost(d, i, "disconnected");
                /* else its queue is full (EAGAIN): try again next turn */
                continue;
            }
            s->want--;
            d->st.dispatched += d->plan->shards[k].nq;
            progress = 1;
        }
    }
}

/* --------------------------------------------------------------- results */

typedef struct Want {
    int64_t qid;
    int taken;
} Want;

static int s_cmp_want(const void *a, const void *b)
{
    int64_t x = ((const Want *)a)->qid, y = ((const Want *)b)->qid;
    return x < y ? -1 : x > y;
}

static int s_result(Dispatch *d, int i, const Docmint__Result *r, double now, DmErr *err)
{
    int64_t nitems = (int64_t)(r->n_answers + r->n_logits + r->n_analyses + r->n_errors);
    int st = lease_complete(d->plan, r->shard_id, r->lease_id);
    if (st != LEASE_ACCEPT) {
        d->st.dropped += nitems;
        return 0;
    }
    d->w[i].results++;
    const LeaseShard *ls = &d->plan->shards[r->shard_id];
    Want *want = calloc((size_t)ls->nq + 1, sizeof *want);
    if (!want)
        return dm_err(err, "out of memory");
    int n = 0;
    for (int p = 0; p < ls->npages; p++) {
        const PlanPage *plp = &d->plan->pages[ls->first + p];
        for (int q = 0; q < plp->nq; q++)
            want[n++].qid = d->corpus->pages[plp->page].q[plp->qidx[q]].qid;
    }
    qsort(want, (size_t)n, sizeof *want, s_cmp_want);
    int rc = -1;
    size_t na = r->n_answers, nl = r->n_logits, ny = r->n_analyses;
    int per_answer = d->cache || d->analyze;
    for (size_t a = 0; a < na + nl + ny + r->n_errors; a++) {
        const Docmint__AnswerRecord *ar = a < na ? r->answers[a] : NULL;
        const Docmint__LogitRecord *lr = a >= na && a < na + nl ? r->logits[a - na] : NULL;
        const Docmint__AnalysisRecord *yr =
            a >= na + nl && a < na + nl + ny ? r->analyses[a - na - nl] : NULL;
        Docmint__ErrorRecord *er = a >= na + nl + ny ? r->errors[a - na - nl - ny] : NULL;
        Want key = {ar ? ar->question_id : lr ? lr->question_id : yr ? yr->question_id
                                                                     : er->question_id, 0};
        Want *w = bsearch(&key, want, (size_t)n, sizeof *want, s_cmp_want);
        /* infer: one record per question; cache-logits and analyze: one per
         * answer (and errors per answer), so only unknown questions are
         * dropped there. */
        if (!w || (w->taken && !per_answer)) {
            d->st.dropped++;
            continue;
        }
        w->taken = 1;
        if (ar ? results_add_answer(d->res, ar, now, err)
               : lr ? results_add_logit(d->res, lr, now, err)
               : yr ? results_add_analysis(d->res, yr, now, err)
                    /* a per-answer error keeps its item ("QID" or "QID/INDEX"),
                     * so one bad answer does not hide the question's others */
                    : per_answer ? results_add_error_item(d->res, er, now, err)
                                 : results_add_error(d->res, key.qid, er, NULL, now, err))
            goto done;
    }
    /* Features: only of the shard's pages, and only when the job keeps them. */
    for (size_t f = 0; f < r->n_features; f++) {
        const Docmint__FeatureRecord *fr = r->features[f];
        int ours = 0;
        for (int p = 0; d->job->keep_features && p < ls->npages && !ours; p++) {
            const char *id = d->corpus->pages[d->plan->pages[ls->first + p].page].page_id;
            ours = fr->page_id && !strcmp(fr->page_id, id);
        }
        if (!ours)
            d->st.dropped++;
        else if (results_add_feature(d->res, fr, now, err))
            goto done;
    }
    /* Every question of the shard gets a record, even if the worker
     * forgot one. */
    for (int k = 0; k < n; k++) {
        if (want[k].taken)
            continue;
        char reason[256];
        snprintf(reason, sizeof reason, "worker %s returned no result for this question",
                 d->w[i].name);
        if (results_add_error(d->res, want[k].qid, NULL, reason, now, err))
            goto done;
    }
    rc = 0;
done:
    free(want);
    return rc;
}

/* ------------------------------------------------------------------ loop */

static int s_handle(Dispatch *d, const unsigned char *id, size_t idlen, Docmint__Envelope *e,
                    double now, DmErr *err)
{
    int i = s_slot(d, id, idlen);
    if (i < 0)
        return dm_err(err, "out of memory");
    WorkerSlot *s = &d->w[i];
    if (e->worker && e->worker[0])
        snprintf(s->name, sizeof s->name, "%s", e->worker);
    int credit = d->join.credit;
    if (!s->alive) {
        /* New, or back after being counted dead (its shards went back to
         * the queue): it gets its full credit, whatever its first message
         * is - a DEALER that reconnected by itself sends no HELLO. */
        s->alive = 1;
        s->want = credit;
        s->last_sent = now;
    }
    s->last_seen = now;
    switch (e->kind) {
    case DOCMINT__ENVELOPE__KIND__HELLO:
        s->want = (int)(e->credit < (uint32_t)credit ? e->credit : (uint32_t)credit);
        break;
    case DOCMINT__ENVELOPE__KIND__REQUEST:
        s->want += (int)(e->credit < (uint32_t)credit ? e->credit : (uint32_t)credit);
        break;
    case DOCMINT__ENVELOPE__KIND__RESULT:
        if (e->result && s_result(d, i, e->result, now, err))
            return -1;
        s->want += (int)(e->credit < (uint32_t)credit ? e->credit : (uint32_t)credit);
        break;
    default:
        break; /* HEARTBEAT: being alive is the message */
    }
    /* A worker never holds more than the job's credit in requests. */
    if (s->want > credit)
        s->want = credit;
    return 0;
}

static void s_on_expire(void *ctx, const LeaseShard *ls, double now)
{
    Dispatch *d = ctx;
    d->st.expired++;
    const char *who = ls->owner >= 0 && ls->owner < d->nw ? d->w[ls->owner].name : "?";
    fprintf(stderr, "%s: lease %" PRIu64 " of shard %" PRIu64 " (worker %s) expired after %.1f s: "
                    "handed out again\n",
            d->o.log_prefix, ls->lease_id, ls->id, who, d->lease_s + (now - ls->deadline));
}

static ProgressCounts s_counts(const Dispatch *d)
{
    const ResultsCounts *rc = results_counts(d->res);
    ProgressCounts c = {d->plan->total_q, d->plan->held_q, rc->acc_answers + rc->acc_errors,
                        (int64_t)rc->errors0 + rc->acc_errors, s_alive_count(d)};
    return c;
}

/* After the last shard: NO_MORE to everyone, then answer stragglers. */
static void s_goodbye(Dispatch *d)
{
    if (!d->router)
        return;
    for (int i = 0; i < d->nw; i++)
        if (d->w[i].alive)
            s_send_kind(d, i, DOCMINT__ENVELOPE__KIND__NO_MORE);
    double end = dm_now() + GRACE_SECONDS;
    for (double now = dm_now(); now < end; now = dm_now()) {
        zmq_pollitem_t it = {d->router, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, (long)((end - now) * 1000) + 1) <= 0)
            continue;
        unsigned char id[256];
        size_t idlen = 0;
        Docmint__Envelope *e = NULL;
        DmErr err;
        if (wire_recv(d->router, id, &idlen, &e, ZMQ_DONTWAIT, &err) == 1) {
            Docmint__Envelope no;
            docmint__envelope__init(&no);
            no.kind = DOCMINT__ENVELOPE__KIND__NO_MORE;
            wire_send(d->router, id, idlen, &no, ZMQ_DONTWAIT, &err);
            docmint__envelope__free_unpacked(e, NULL);
        }
    }
}

static int s_flush(Dispatch *d, const char *finished_at, DmErr *err)
{
    if (results_flush(d->res, d->st.dispatched, d->st.dropped, finished_at, err))
        return -1;
    const ResultsCounts *c = results_counts(d->res);
    d->st.answers = c->answers;
    d->st.errors = c->errors;
    d->st.computed = c->answers + c->errors;
    return 0;
}

int dispatch_run(Dispatch *d, int *interrupted, DmErr *err)
{
    *interrupted = 0;
    double t0 = dm_now();
    progress_start(d->prog, t0);
    int rc = -1;
    double tick = d->hb / 2 < 0.25 ? d->hb / 2 : 0.25;
    while (!lease_all_done(d->plan)) {
        if (d->o.stop && *d->o.stop) {
            *interrupted = 1;
            dm_err(err, "interrupted");
            break;
        }
        if (d->failed && d->failed(d->failed_ctx, err))
            break;
        zmq_pollitem_t it = {d->router, 0, ZMQ_POLLIN, 0};
        int pr = zmq_poll(&it, 1, (long)(tick * 1000));
        if (pr < 0 && zmq_errno() != EINTR) {
            dm_err(err, "zmq_poll: %s", zmq_strerror(zmq_errno()));
            break;
        }
        double now = dm_now();
        int failed = 0;
        for (int k = 0; pr > 0 && k < 1000; k++) {
            unsigned char id[256];
            size_t idlen = 0;
            Docmint__Envelope *e = NULL;
            DmErr rerr = {{0}};
            int got = wire_recv(d->router, id, &idlen, &e, ZMQ_DONTWAIT, &rerr);
            if (got < 0) {
                dm_err(err, "%s", rerr.msg);
                failed = 1;
                break;
            }
            if (got == 0) {
                if (rerr.msg[0])
                    continue; /* malformed: dropped */
                break;
            }
            int hr = s_handle(d, id, idlen, e, now, err);
            docmint__envelope__free_unpacked(e, NULL);
            if (hr) {
                failed = 1;
                break;
            }
        }
        if (failed)
            break;
        now = dm_now();
        lease_expire(d->plan, now, s_on_expire, d);
        for (int i = 0; i < d->nw; i++)
            if (d->w[i].alive && now - d->w[i].last_seen > d->hb * d->liveness) {
                char why[64];
                snprintf(why, sizeof why, "silent for %.1f s", now - d->w[i].last_seen);
                s_worker_lost(d, i, why);
            }
        s_serve(d, now);
        for (int i = 0; i < d->nw; i++)
            if (d->w[i].alive && now - d->w[i].last_sent >= d->hb)
                s_send_kind(d, i, DOCMINT__ENVELOPE__KIND__HEARTBEAT);
        if (results_due(d->res, now) && s_flush(d, NULL, err))
            break;
        ProgressCounts c = s_counts(d);
        progress_update(d->prog, &c, now);
    }
    if (lease_all_done(d->plan)) {
        char end[32];
        results_iso_now(end, sizeof end);
        if (s_flush(d, end, err) == 0)
            rc = 0;
    } else {
        /* Keep what arrived; the error already in err stays the message. */
        DmErr ferr = {{0}};
        if (s_flush(d, NULL, &ferr) != 0)
            fprintf(stderr, "%s: %s\n", d->o.log_prefix, ferr.msg);
    }
    s_goodbye(d);
    if (rc == 0) {
        ProgressCounts c = s_counts(d);
        char tail[5000];
        snprintf(tail, sizeof tail, "store %s", d->job->output);
        progress_finish(d->prog, &c, dm_now(), tail);
    }
    return rc;
}

void dispatch_close(Dispatch **pd)
{
    Dispatch *d = *pd;
    if (!d)
        return;
    if (d->router)
        zmq_close(d->router);
    zap_stop(&d->zap);
    if (d->keys_path[0])
        unlink(d->keys_path);
    results_free(&d->res);
    store_close(&d->store);
    plan_free(&d->plan);
    corpus_free(&d->corpus);
    job_free(&d->job);
    progress_free(&d->prog);
    free(d->w);
    memset(&d->join, 0, sizeof d->join);
    free(d);
    *pd = NULL;
}
