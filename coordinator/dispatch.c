/* dispatch.c - the coordinator's set-up, its workers and ROUTER loop
 * (dispatch.h); a worker's result is dispatch_result.c's. */
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
#include "coordinator/dispatch_int.h"
#include "coordinator/job.h"
#include "coordinator/lease.h"
#include "common/logit_store.h"
#include "coordinator/progress.h"
#include "coordinator/result_check.h"
#include "coordinator/results.h"
#include "coordinator/store_ids.h"
#include "worker/stages/stage_infer.h"
#include "common/store.h"
#include "coordinator/zap_auth.h"
#include "worker/image/image.h"
#include "common/dm_fs.h"
#include "worker/analyze/stage_analyze.h"

#define GRACE_SECONDS 0.5  /* after NO_MORE, answer stragglers this long */
#define KEYS_FILE "worker.keys"

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

/* The settings an answer store records in meta: a resumed store must have
 * been made with the same ones (results_check_meta; the model fingerprint
 * and the corpus are checked apart). */
static void s_infer_meta(Dispatch *d, int max_length)
{
    const Job *j = d->job;
    snprintf(d->m_maxlen, sizeof d->m_maxlen, "%d", max_length);
    int n = 0;
    d->extra[n++] = "precision";
    d->extra[n++] = j->precision ? "bf16" : "fp32";
    d->extra[n++] = "max_length";
    d->extra[n++] = d->m_maxlen;
    d->extra[n++] = "corpus";
    d->extra[n++] = j->corpus.path;
    if (j->corpus.questions) {
        d->extra[n++] = "questions";
        d->extra[n++] = j->corpus.questions;
    }
    d->extra[n] = NULL;
}

/* The corpus must ask every question the store holds: a grown corpus (more
 * questions, more documents in an archive) resumes, another one (other
 * questions, another split) is refused. */
static int s_check_corpus(Dispatch *d, DmErr *err)
{
    int64_t in = 0, stored = results_stored_count(d->res);
    if (stored == 0)
        return 0;
    for (int p = 0; p < d->corpus->npages; p++)
        for (int q = 0; q < d->corpus->pages[p].nq; q++)
            in += results_stored(d->res, d->corpus->pages[p].q[q].qid);
    if (in >= stored)
        return 0;
    const Job *j = d->job;
    char *oc = store_meta_get(d->store, "corpus", err);
    char *oq = store_meta_get(d->store, "questions", err);
    char was[2 * PATH_MAX], now[2 * PATH_MAX];
    if (oc)
        snprintf(was, sizeof was, "corpus %s%s%s", oc, oq ? " with questions " : "", oq ? oq : "");
    else
        snprintf(was, sizeof was, "another corpus");
    snprintf(now, sizeof now, "corpus %s%s%s", j->corpus.path,
             j->corpus.questions ? " with questions " : "",
             j->corpus.questions ? j->corpus.questions : "");
    dm_err(err, "%s: the store holds %lld questions that this job does not ask: it was made from "
                "%s, this job reads %s: choose another output, or rerun with --force-new (a "
                "fresh store; the old one is moved aside)",
           j->output, (long long)(stored - in), was, now);
    free(oc);
    free(oq);
    return -1;
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
                                       "noise_scale", "seed",        "kv_max_tokens"};
    json_t *o = json_object();
    for (size_t i = 0; o && i < sizeof keys / sizeof *keys; i++) {
        json_t *v = json_object_get(job->doc, keys[i]);
        /* kv_max_tokens at its default is left out: the settings of stores
         * made before the key existed stay the same */
        if (v && !strcmp(keys[i], "kv_max_tokens") &&
            json_integer_value(v) == ANALYZE_KV_MAX_TOKENS)
            continue;
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
    /* Handover: a worker that reconnects (same routing id) takes its id
     * back even before the old connection is gone.  Routing ids are 16
     * random bytes only their worker knows, so no one else can claim one. */
    if (zmq_setsockopt(r, ZMQ_ROUTER_MANDATORY, &one, sizeof one) != 0 ||
        zmq_setsockopt(r, ZMQ_ROUTER_HANDOVER, &one, sizeof one) != 0 ||
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
    if (job_load(o->job_path, &d->job, err) || job_check(d->job, err))
        goto fail;
    Job *job = d->job;
    d->quiet = o->quiet || job->quiet;
    d->hb = job->heartbeat_seconds;
    d->liveness = job->heartbeat_liveness;
    d->lease_s = job->lease_seconds;
    d->max_expiries = job->max_lease_expiries > 0 ? job->max_lease_expiries : 3;
    d->cache = strcmp(job->stage, "cache-logits") == 0;
    d->analyze = strcmp(job->stage, "analyze") == 0;
    if (strcmp(job->stage, "infer") != 0 && !d->cache && !d->analyze) {
        /* distill runs on every rank (distill.h), not through dispatch */
        dm_err(err, "%s: stage \"%s\" is not a stage the coordinator hands out (infer, "
                    "cache-logits, analyze)",
               job->path, job->stage);
        goto fail;
    }
    if (d->analyze && s_analyze_settings(d, err))
        goto fail;
    if (!realpath(job->model, model_abs)) {
        dm_err_errno(err, "%s: model %s", job->path, job->model);
        goto fail;
    }
    /* An archive's page counts come from the store's last scan while the
     * documents keep their size and modification time. */
    char *scan_cache = NULL;
    if (job->corpus.format == CORPUS_ARCHIVE) {
        scan_cache = store_ids_read_scan(job->output);
        job->corpus.scan_cache = scan_cache;
        job->corpus.progress = d->quiet ? NULL : stderr;
    }
    int loaded = corpus_load(&job->corpus, &d->corpus, err);
    job->corpus.scan_cache = NULL;
    job->corpus.progress = NULL;
    free(scan_cache);
    if (loaded || job_check_corpus(job, d->corpus, err))
        goto fail;
    if (job->corpus.format == CORPUS_ARCHIVE && !d->quiet)
        fprintf(stderr, "%s: %s: %d documents, %d pages (%d counted, %d from the earlier scan)\n",
                o->log_prefix ? o->log_prefix : "docmint", job->corpus.path,
                d->corpus->scan_counted + d->corpus->scan_reused, d->corpus->npages,
                d->corpus->scan_counted, d->corpus->scan_reused);
    image_set_max_pixels(job->corpus.max_page_pixels);
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
    if (d->analyze && job->kv_retrieval &&
        (kv_table_load(job->corrupt_corpus, &d->kv, err) ||
         kv_table_pair(d->kv, d->corpus, job->corpus.path, err)))
        goto fail;
    /* The model must load here, so a bad checkpoint is one clear error
     * before any worker starts; its fingerprint guards resumed stores. */
    if (infer_open(model_abs, job->max_length, job->corpus.pdf_dpi, job->precision, &stage, err))
        goto fail;
    if (d->analyze && s_analyze_check_model(d, model_abs, err))
        goto fail;
    char fp[17], tok_fp[17];
    snprintf(fp, sizeof fp, "%s", infer_fingerprint(stage));
    snprintf(tok_fp, sizeof tok_fp, "%s", infer_tokenizer_fingerprint(stage));
    /* What a worker's result may hold comes from this model and job. */
    infer_limits(stage, &d->lim.m);
    d->lim.cache = d->cache;
    d->lim.analyze = d->analyze;
    d->lim.top_k = job->top_k;
    d->lim.n_temps = job->n_temps;
    memcpy(d->lim.temps, job->temps, sizeof d->lim.temps);
    d->lim.keep_features = job->keep_features;
    int max_length = infer_max_length(stage);
    infer_close(&stage);
    if (o->force_new && job_move_aside(job, d->moved_to, sizeof d->moved_to, err))
        goto fail;
    /* "created when absent", parents too */
    if (dm_mkdirs(job->output, err) || store_open(job->output, STORE_WRITE, &d->store, err))
        goto fail;
    if (results_open(d->store, job->commit_every, o->retry_errors, &d->res, err))
        goto fail;
    if (!d->cache && !d->analyze) {
        s_infer_meta(d, max_length);
        results_set_kind(d->res, "answers", "infer", d->extra);
    }
    if (d->analyze) {
        /* kv_retrieval: the twins' file too, so a store is not resumed with another */
        const char *const kv[] = {"analyze", d->join.analyze, "corpus", job->corpus.path,
                                  job->kv_retrieval ? "corrupt_corpus" : NULL,
                                  job->corrupt_corpus, NULL};
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
    if (job->corpus.format == CORPUS_ARCHIVE) {
        int legacy = store_ids_legacy(d->store, err);
        if (legacy < 0)
            goto fail;
        if (legacy) {
            dm_err(err, "%s: the store was made before archive questionIds became 53-bit: a rerun "
                        "into it would ask every question again; `docmint export` still reads "
                        "it; give the job a new output",
                   job->output);
            goto fail;
        }
    }
    if (s_check_corpus(d, err) ||
        plan_build(d->corpus, job->pages_per_shard, s_held, d->res, &d->plan, err))
        goto fail;
    results_forget_held(d->res);
    d->st.total_q = d->plan->total_q;
    d->st.held_q = d->plan->held_q;
    d->st.todo_q = d->plan->todo_q;
    char *job_text = json_dumps(job->doc, JSON_COMPACT | JSON_SORT_KEYS);
    int started = job_text ? results_start(d->res, job_text, fp, tok_fp, d->plan->held_q, err)
                           : dm_err(err, "out of memory");
    free(job_text);
    if (started || store_ids_mark(d->store, d->corpus->scan, err))
        goto fail;

    WireJoin *j = &d->join;
    snprintf(j->model, sizeof j->model, "%s", model_abs);
    if (!realpath(job->path, j->job))
        snprintf(j->job, sizeof j->job, "%s", job->path);
    snprintf(j->model_fingerprint, sizeof j->model_fingerprint, "%s", fp);
    snprintf(j->stage, sizeof j->stage, "%s", job->stage);
    j->max_length = job->max_length;
    j->pdf_dpi = job->corpus.pdf_dpi;
    j->max_page_pixels = job->corpus.max_page_pixels;
    j->page_timeout_seconds = job->page_timeout_seconds;
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
            (job->worker_keys && zap_allow_file(d->zap, job->worker_keys, err)) ||
            s_bind(d, server_secret, err))
            goto fail;
        snprintf(d->keys_path, sizeof d->keys_path, "%s/%s", job->output, KEYS_FILE);
        /* With an allow-list the file holds no client key: outside workers
         * bring their own; the shared one stays with the MPI ranks. */
        WireJoin outside = *j;
        if (job->worker_keys)
            outside.client_public[0] = outside.client_secret[0] = '\0';
        int wrc = wire_join_write(d->keys_path, &outside, err);
        memset(&outside, 0, sizeof outside);
        if (wrc) {
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
const char *dispatch_keys_path(const Dispatch *d) { return d->keys_path; }
const char *dispatch_output(const Dispatch *d) { return d->job->output; }
const char *dispatch_moved_to(const Dispatch *d) { return d->moved_to; }
size_t dispatch_retried(const Dispatch *d) { return results_retried(d->res); }

int64_t dispatch_store_errors(Dispatch *d, DmErr *err)
{
    uint64_t n = 0;
    if (store_count(d->store, STORE_ERRORS, &n, err))
        return -1;
    return (int64_t)n;
}
const char *dispatch_local_endpoint(const Dispatch *d) { return d->local_ep; }
const DispatchStats *dispatch_stats(const Dispatch *d) { return &d->st; }

void dispatch_set_failed(Dispatch *d, int (*failed)(void *ctx, DmErr *err), void *ctx)
{
    d->failed = failed;
    d->failed_ctx = ctx;
}

/* ---------------------------------------------------------------- workers */

static int s_slot(Dispatch *d, const WirePeer *peer)
{
    const unsigned char *id = peer->id;
    size_t idlen = peer->idlen;
    for (int i = 0; i < d->nw; i++)
        if (d->w[i].idlen == idlen && memcmp(d->w[i].id, id, idlen) == 0 &&
            !strcmp(d->w[i].user, peer->user))
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
    snprintf(s->user, sizeof s->user, "%s", peer->user);
    snprintf(s->name, sizeof s->name, "?");
    /* A connection made before its key was refused is refused too. */
    for (int j = 0; j < d->nw && s->user[0] && strcmp(s->user, d->join.client_public); j++)
        if (d->w[j].banned && !strcmp(d->w[j].user, s->user))
            s->banned = 1;
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

void dispatch_worker_lost(Dispatch *d, int i, const char *why)
{
    WorkerSlot *s = &d->w[i];
    if (!s->alive)
        return;
    s->alive = 0;
    s->want = 0;
    s->held = 0; /* its hand-outs are closed with the release */
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

void dispatch_send_kind(Dispatch *d, int i, int kind)
{
    Docmint__Envelope e;
    docmint__envelope__init(&e);
    e.kind = kind;
    if (s_send(d, i, &e) != 0 && zmq_errno() == EHOSTUNREACH)
        dispatch_worker_lost(d, i, "disconnected");
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
    sh.lease_token.data = (uint8_t *)ls->token;
    sh.lease_token.len = sizeof ls->token;
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
        pages[p].document = cp->document;
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
        if (d->kv && d->kv->twin_of_page[plp->page]) {
            pages[p].kv_image_path = d->kv->twin_of_page[plp->page]; /* absolute */
            pages[p].kv_page_no = 0;
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
            qs[nq].kv = d->kv && kv_table_find(d->kv, cq->qid);
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

/* Whether a worker other than `not` can take a shard soon: alive, not
 * dropped, and either proven (has delivered a valid result) or with credit
 * to spare.  A worker that only sits on its shards is neither. */
static int s_other_can_take(const Dispatch *d, int not)
{
    for (int j = 0; j < d->nw; j++) {
        const WorkerSlot *w = &d->w[j];
        if (j != not && w->alive && !w->banned && (w->results > 0 || w->held < d->join.credit))
            return 1;
    }
    return 0;
}

int dispatch_other_alive(const Dispatch *d, int not)
{
    for (int j = 0; j < d->nw; j++)
        if (j != not && d->w[j].alive && !d->w[j].banned)
            return 1;
    return 0;
}

static int s_other_proven(const Dispatch *d, int not)
{
    for (int j = 0; j < d->nw; j++)
        if (j != not && d->w[j].alive && !d->w[j].banned && d->w[j].results > 0)
            return 1;
    return 0;
}

/* Which queued shard may go to `owner`: not one that reported errors on it
 * (while another worker can retry it), and not one whose lease expired
 * before to a worker that has delivered nothing yet (while a worker that
 * has delivered is there): a shard is not fed to one idle identity after
 * another until it is given up. */
static int s_may_take(void *ctx, const LeaseShard *ls, int owner)
{
    const Dispatch *d = ctx;
    if (ls->avoid == owner && s_other_can_take(d, owner))
        return 0;
    if (ls->expiries > 0 && d->w[owner].results == 0 && s_other_proven(d, owner))
        return 0;
    return 1;
}

/* Hand queued shards to workers that asked, one at a time round-robin; a
 * worker holds at most the job's credit (an expired lease counts until
 * its worker answers it). */
static void s_serve(Dispatch *d, double now)
{
    int progress = 1;
    while (progress && d->plan->qlen > 0) {
        progress = 0;
        for (int i = 0; i < d->nw && d->plan->qlen > 0; i++) {
            WorkerSlot *s = &d->w[i];
            if (!s->alive || s->banned || s->want <= 0 || s->held >= d->join.credit)
                continue;
            int k = lease_take_if(d->plan, i, now, d->lease_s, s_may_take, d);
            if (k < 0)
                continue;
            LeaseShard *ls = &d->plan->shards[k];
            if (s_send_shard(d, i, k) != 0) {
                int e = zmq_errno();
                ls->issued[ls->nissued - 1].open = 0;
                lease_requeue(d->plan, k);
                if (e == EHOSTUNREACH)
                    dispatch_worker_lost(d, i, "disconnected");
                /* else its queue is full (EAGAIN): try again next turn */
                continue;
            }
            s->want--;
            s->held++;
            d->st.dispatched += ls->nq;
            progress = 1;
        }
    }
}

/* ------------------------------------------------------------------ loop */

static int s_handle(Dispatch *d, const WirePeer *peer, Docmint__Envelope *e, double now,
                    DmErr *err)
{
    int i = s_slot(d, peer);
    if (i < 0)
        return dm_err(err, "out of memory");
    WorkerSlot *s = &d->w[i];
    if (s->banned)
        return 0;
    if (e->worker && e->worker[0])
        snprintf(s->name, sizeof s->name, "%.100s", e->worker);
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
    case DOCMINT__ENVELOPE__KIND__HELLO: {
        /* A worker says HELLO when it (re)connects.  A shard sent to it
         * while its old connection was going away is lost, so what it held
         * goes back to the queue; the results it kept still count when
         * they come (first result wins), and its HELLO's credit already
         * leaves out the shards it is still computing. */
        int n = lease_release_owner(d->plan, i);
        s->held = 0;
        if (n > 0) {
            d->st.requeued_dead += n;
            fprintf(stderr, "%s: worker %s reconnected: %d shard%s handed out again\n",
                    d->o.log_prefix, s->name, n, n == 1 ? "" : "s");
        }
        s->want = (int)(e->credit < (uint32_t)credit ? e->credit : (uint32_t)credit);
        break;
    }
    case DOCMINT__ENVELOPE__KIND__REQUEST:
        s->want += (int)(e->credit < (uint32_t)credit ? e->credit : (uint32_t)credit);
        break;
    case DOCMINT__ENVELOPE__KIND__RESULT:
        if (e->result) {
            int rr = dispatch_result(d, i, e->result, peer->bytes, now, err);
            if (rr < 0)
                return -1;
            if (rr > 0)
                return 0; /* rejected: dropped */
        }
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

/* An expired lease: handed out again, or, the max_lease_expiries-th time,
 * given up with an error record per question. */
static int s_on_expire(void *ctx, const LeaseShard *ls, double now)
{
    Dispatch *d = ctx;
    d->st.expired++;
    const char *who = ls->owner >= 0 && ls->owner < d->nw ? d->w[ls->owner].name : "?";
    double after = d->lease_s + (now - ls->deadline);
    if (ls->expiries < d->max_expiries) {
        fprintf(stderr, "%s: lease %" PRIu64 " of shard %" PRIu64 " (worker %s) expired after %.1f "
                        "s: handed out again\n",
                d->o.log_prefix, ls->lease_id, ls->id, who, after);
        return 0;
    }
    char reason[300];
    snprintf(reason, sizeof reason, "gave up after %d leases: last worker %s (expired after %.1f s)",
             ls->expiries, who, after);
    fprintf(stderr, "%s: shard %" PRIu64 ": %s; its %d question%s stored as errors\n",
            d->o.log_prefix, ls->id, reason, ls->nq, ls->nq == 1 ? "" : "s");
    int n = 0;
    ShardQuestion *q = dispatch_shard_questions(d, ls, &n);
    if (!q) {
        d->expire_failed = 1;
        dm_err(&d->expire_err, "out of memory");
        return 1;
    }
    for (int k = 0; k < n && !d->expire_failed; k++)
        if (results_add_error(d->res, q[k].qid, NULL, reason, now, &d->expire_err))
            d->expire_failed = 1;
    free(q);
    d->st.given_up++;
    return 1;
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
            dispatch_send_kind(d, i, DOCMINT__ENVELOPE__KIND__NO_MORE);
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
            WirePeer peer;
            Docmint__Envelope *e = NULL;
            DmErr rerr = {{0}};
            int got = wire_recv_peer(d->router, &peer, &e, ZMQ_DONTWAIT, &rerr);
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
            if (peer.idlen != WIRE_ROUTING_ID_BYTES || peer.id[0] == 0) {
                /* Not a docmint worker (those choose a random routing id):
                 * an id the ROUTER made up is guessable, so it gets nothing. */
                if (d->bad_ids++ == 0)
                    fprintf(stderr, "%s: ignoring a peer without a worker routing id (%s)\n",
                            d->o.log_prefix, e->worker ? e->worker : "?");
                docmint__envelope__free_unpacked(e, NULL);
                continue;
            }
            int hr = s_handle(d, &peer, e, now, err);
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
        if (d->expire_failed) {
            dm_err(err, "%s", d->expire_err.msg);
            break;
        }
        for (int i = 0; i < d->nw; i++)
            if (d->w[i].alive && now - d->w[i].last_seen > d->hb * d->liveness) {
                char why[64];
                snprintf(why, sizeof why, "silent for %.1f s", now - d->w[i].last_seen);
                dispatch_worker_lost(d, i, why);
            }
        s_serve(d, now);
        for (int i = 0; i < d->nw; i++)
            if (d->w[i].alive && now - d->w[i].last_sent >= d->hb)
                dispatch_send_kind(d, i, DOCMINT__ENVELOPE__KIND__HEARTBEAT);
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
    if (!*interrupted)
        s_goodbye(d); /* interrupted: mpirun ends the workers in a second */
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
    kv_table_free(&d->kv);
    job_free(&d->job);
    progress_free(&d->prog);
    free(d->w);
    memset(&d->join, 0, sizeof d->join);
    free(d);
    *pd = NULL;
}
