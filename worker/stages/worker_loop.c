/* worker_loop.c - the worker's network and compute threads (worker_loop.h). */
#include "worker/stages/worker_loop.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "kernels/cpu/kern.h"
#include "worker/image/image.h"
#include "worker/stages/stage_cache.h"
#include "worker/stages/stage_infer.h"
#include "worker/stages/stage_result.h"

#define BACKOFF_MIN 1.0
#define BACKOFF_MAX 32.0
#define GIVE_UP_DEFAULT 60.0
/* Compute threads left behind on a hung page that may still be alive;
 * one more hang and the worker stops (each holds a core or a blocked
 * read, and its own copy of the model). */
#define MAX_HUNG 2

/* Frames on the pipe: compute -> network "R"+packed RESULT envelope, or
 * "F"+message (fatal); network -> compute: packed SHARD envelope, or an
 * empty frame (stop). */

typedef struct Compute {
    void *pipe;          /* this thread's end, connected before it starts */
    InferStage *stage;   /* the job's stage: one of these two (NULL: the thread opens it) */
    CacheStage *cache;
    const WireJoin *join;
    const WorkerStageOps *ops; /* or a stage from WorkerOpts.stages (ext: its state) */
    void *ext;
    const char *name;
    const char *prefix;
    const char *hang;    /* test hook DOCMINT_TEST_HANG_PAGE */
    int verbose;
    atomic_int cancel;
    atomic_int ended; /* the compute thread returned */
    double stall;
    int threads;
    pthread_t thread;
    /* The watchdog (page_timeout_seconds): the shard being computed, and
     * the end of a shard against the network thread giving up on it. */
    atomic_int busy;
    _Atomic uint64_t cur_shard, cur_lease;
    _Atomic double started;
    pthread_mutex_t mu;
    int abandoned; /* under mu: the thread must not touch its pipe again */
} Compute;

static atomic_int s_hung; /* abandoned compute threads still alive */

static void s_sleep(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void s_send_fatal(void *pipe, const char *msg)
{
    size_t n = strlen(msg);
    char *buf = malloc(n + 1);
    if (!buf)
        return;
    buf[0] = 'F';
    memcpy(buf + 1, msg, n);
    zmq_send(pipe, buf, n + 1, 0);
    free(buf);
}

/* The stage the job names computes the shard. */
static int s_stage_shard(Compute *c, const Docmint__Shard *sh, Docmint__Result *res, DmErr *err)
{
    if (c->ops)
        return c->ops->shard(c->ext, sh, res, &c->cancel, err);
    return c->cache ? cache_shard(c->cache, sh, res, &c->cancel, err)
                    : infer_shard(c->stage, sh, res, &c->cancel, err);
}

static void s_stage_clear(Compute *c, Docmint__Result *res)
{
    if (c->ops)
        c->ops->clear(res);
    else if (c->cache)
        cache_result_clear(res);
    else
        infer_result_clear(res);
}

/* Open the job's stage (a replacement compute thread does it itself, so
 * the network thread keeps its heartbeats going meanwhile). */
static int s_stage_open(Compute *c, DmErr *err)
{
    const WireJoin *j = c->join;
    if (c->ops)
        return c->ops->open(j, &c->ext, err);
    if (!strcmp(j->stage, "cache-logits")) {
        CacheOpts co = {.top_k = j->top_k, .n_temps = j->n_temps,
                        .first_answer_only = j->first_answer_only, .pdf_dpi = j->pdf_dpi};
        memcpy(co.temps, j->temps, sizeof co.temps);
        return cache_open(j->model, &co, &c->cache, err);
    }
    return infer_open(j->model, j->max_length, j->pdf_dpi, j->precision, &c->stage, err);
}

static void s_compute_free(Compute *c)
{
    infer_close(&c->stage);
    cache_close(&c->cache);
    if (c->ops && c->ext)
        c->ops->close(&c->ext);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* Test hook: a shard with a page whose image path contains c->hang
 * never ends (a blocking wait, as a read of a pipe would be). */
static void s_test_hang(const Compute *c, const Docmint__Shard *sh)
{
    for (size_t p = 0; c->hang && p < sh->n_pages; p++)
        if (sh->pages[p]->image_path && strstr(sh->pages[p]->image_path, c->hang)) {
            fprintf(stderr, "%s: DOCMINT_TEST_HANG_PAGE: page %s hangs\n", c->prefix,
                    sh->pages[p]->page_id);
            for (;;)
                s_sleep(1.0);
        }
}

static void *s_compute(void *arg)
{
    Compute *c = arg;
    /* Here, not in the caller: OpenMP's thread count is per thread. */
    if (c->threads > 0)
        kern_set_threads(c->threads);
    void *pipe = c->pipe;
    if (!c->stage && !c->cache && !c->ext) {
        DmErr e = {{0}};
        if (s_stage_open(c, &e)) {
            /* the network thread ends the worker on this; compute nothing */
            s_send_fatal(pipe, e.msg);
            while (!atomic_load(&c->cancel))
                s_sleep(0.05);
            zmq_close(pipe);
            atomic_store(&c->ended, 1);
            return NULL;
        }
    }
    for (;;) {
        /* The empty frame says stop; cancel is looked at between waits as
         * well, so a stop that was never delivered cannot leave us here. */
        zmq_pollitem_t it = {pipe, 0, ZMQ_POLLIN, 0};
        if (atomic_load(&c->cancel))
            break;
        int pr = zmq_poll(&it, 1, 200);
        if (pr < 0 && zmq_errno() != EINTR)
            break;
        if (pr <= 0)
            continue;
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, pipe, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            if (zmq_errno() == EINTR || zmq_errno() == EAGAIN)
                continue;
            break;
        }
        if (zmq_msg_size(&m) == 0 || atomic_load(&c->cancel)) {
            zmq_msg_close(&m);
            break;
        }
        Docmint__Envelope *in = docmint__envelope__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
        zmq_msg_close(&m);
        if (!in || !in->shard) {
            if (in)
                docmint__envelope__free_unpacked(in, NULL);
            s_send_fatal(pipe, "malformed shard from the coordinator");
            continue;
        }
        const Docmint__Shard *sh = in->shard;
        if (c->stall > 0) {
            fprintf(stderr, "%s: DOCMINT_TEST_STALL_SECONDS: stalling %.1f s on shard %" PRIu64
                            " (lease %" PRIu64 ")\n",
                    c->prefix, c->stall, sh->shard_id, sh->lease_id);
            for (double t = 0; t < c->stall && !atomic_load(&c->cancel); t += 0.1)
                s_sleep(0.1);
        }
        /* The watchdog's clock starts here (the stall hook above stands
         * for a worker that holds a shard without computing it: the lease's
         * business, not the watchdog's). */
        atomic_store(&c->cur_shard, sh->shard_id);
        atomic_store(&c->cur_lease, sh->lease_id);
        atomic_store(&c->started, dm_now());
        atomic_store(&c->busy, 1);
        s_test_hang(c, sh);
        double t0 = dm_now();
        Docmint__Result res;
        docmint__result__init(&res);
        DmErr err = {{0}};
        int rc = s_stage_shard(c, sh, &res, &err);
        pthread_mutex_lock(&c->mu);
        if (c->abandoned) { /* the watchdog gave up on this shard and on us */
            pthread_mutex_unlock(&c->mu);
            s_stage_clear(c, &res);
            docmint__envelope__free_unpacked(in, NULL);
            atomic_fetch_sub(&s_hung, 1);
            s_compute_free(c);
            return NULL;
        }
        if (rc == 0) {
            Docmint__Envelope out;
            docmint__envelope__init(&out);
            out.kind = DOCMINT__ENVELOPE__KIND__RESULT;
            out.credit = 1;
            out.result = &res;
            out.worker = (char *)c->name;
            size_t len = docmint__envelope__get_packed_size(&out);
            uint8_t *buf = malloc(len + 1);
            if (!buf) {
                s_send_fatal(pipe, "out of memory packing a result");
            } else {
                buf[0] = 'R';
                docmint__envelope__pack(&out, buf + 1);
                if (c->verbose)
                    fprintf(stderr, "%s: shard %" PRIu64 ": %zu records, %zu errors in %.2f s\n",
                            c->prefix, sh->shard_id, res.n_answers + res.n_logits + res.n_analyses,
                            res.n_errors,
                            dm_now() - t0);
                zmq_send(pipe, buf, len + 1, 0);
                free(buf);
            }
        } else if (!atomic_load(&c->cancel)) {
            s_send_fatal(pipe, err.msg);
        }
        atomic_store(&c->busy, 0);
        pthread_mutex_unlock(&c->mu);
        s_stage_clear(c, &res);
        docmint__envelope__free_unpacked(in, NULL);
    }
    zmq_close(pipe);
    atomic_store(&c->ended, 1);
    return NULL;
}

/* ---------------------------------------------------------------- network */

typedef struct Net {
    const WorkerOpts *o;
    void *zctx;
    const char *endpoint;
    void *sock, *mon;
    char mon_ep[80];
    int nconn;
    unsigned char rid[WIRE_ROUTING_ID_BYTES]; /* ours, kept across reconnects */
    double hb;
    int liveness;
    int credit;
    int inflight;           /* shards given to the compute thread */
    double last_heard;      /* last message from the coordinator */
    double next_hb;
    zmq_msg_t *pending;     /* results waiting for a connection */
    int npending, cappending;
    WorkerStats st;
    /* Shards given to the compute thread and not yet answered, in order
     * (a copy of each message): the watchdog answers a hung one with error
     * records and hands the others to a new compute thread. */
    struct Held {
        uint64_t shard, lease;
        int pages;
        zmq_msg_t msg;
    } *held;
    int nheld, capheld;
} Net;

static void s_disconnect(Net *n)
{
    if (n->sock) {
        zmq_socket_monitor(n->sock, NULL, 0);
        zmq_close(n->sock);
        n->sock = NULL;
    }
    if (n->mon) {
        zmq_close(n->mon);
        n->mon = NULL;
    }
}

static int s_send_env(Net *n, int kind, uint32_t credit)
{
    Docmint__Envelope e;
    docmint__envelope__init(&e);
    e.kind = kind;
    e.credit = credit;
    e.worker = (char *)n->o->name;
    DmErr err;
    return wire_send(n->sock, NULL, 0, &e, ZMQ_DONTWAIT, &err);
}

static int s_connect(Net *n, DmErr *err)
{
    n->sock = zmq_socket(n->zctx, ZMQ_DEALER);
    if (!n->sock)
        return dm_err(err, "zmq_socket: %s", zmq_strerror(zmq_errno()));
    if (wire_socket_defaults(n->sock, err) || wire_curve_client(n->sock, n->o->join, err))
        goto fail;
    /* The same routing id on every connection: the coordinator binds our
     * leases to it, so a result kept while we were away still counts. */
    if (zmq_setsockopt(n->sock, ZMQ_ROUTING_ID, n->rid, sizeof n->rid) != 0) {
        dm_err(err, "ZMQ_ROUTING_ID: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    snprintf(n->mon_ep, sizeof n->mon_ep, "inproc://docmint-worker-mon-%p-%d", (void *)n,
             n->nconn++);
    if (zmq_socket_monitor(n->sock, n->mon_ep,
                           ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) !=
        0) {
        dm_err(err, "zmq_socket_monitor: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    n->mon = zmq_socket(n->zctx, ZMQ_PAIR);
    int linger = 0;
    if (!n->mon || zmq_setsockopt(n->mon, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_connect(n->mon, n->mon_ep) != 0) {
        dm_err(err, "monitor: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (zmq_connect(n->sock, n->endpoint) != 0) {
        dm_err(err, "connect %s: %s", n->endpoint, zmq_strerror(zmq_errno()));
        goto fail;
    }
    int want = n->credit - n->inflight - n->npending;
    s_send_env(n, DOCMINT__ENVELOPE__KIND__HELLO, want > 0 ? (uint32_t)want : 0);
    /* Results finished while we were away go first. */
    for (int i = 0; i < n->npending; i++) {
        zmq_msg_send(&n->pending[i], n->sock, ZMQ_DONTWAIT);
        zmq_msg_close(&n->pending[i]);
    }
    n->npending = 0;
    n->next_hb = dm_now() + n->hb;
    return 0;
fail:
    s_disconnect(n);
    return -1;
}

/* Monitor events: returns -1 (with err) when the coordinator refused us. */
static int s_monitor(Net *n, DmErr *err)
{
    for (;;) {
        zmq_msg_t m1, m2;
        zmq_msg_init(&m1);
        if (zmq_msg_recv(&m1, n->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m1);
            return 0;
        }
        uint16_t ev = 0;
        uint32_t val = 0;
        if (zmq_msg_size(&m1) >= 6) {
            memcpy(&ev, zmq_msg_data(&m1), 2);
            memcpy(&val, (char *)zmq_msg_data(&m1) + 2, 4);
        }
        int more = zmq_msg_more(&m1);
        zmq_msg_close(&m1);
        if (more) {
            zmq_msg_init(&m2);
            zmq_msg_recv(&m2, n->mon, 0);
            zmq_msg_close(&m2);
        }
        if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
            return dm_err(err,
                          "the coordinator at %s refused our CURVE key (status %u): the keys file "
                          "is not this job's",
                          n->endpoint, val);
        if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL && n->o->verbose)
            fprintf(stderr, "%s: handshake with %s failed (protocol error %u)\n",
                    n->o->log_prefix, n->endpoint, val);
    }
}

static int s_pend(Net *n, zmq_msg_t *m)
{
    if (n->npending == n->cappending) {
        int cap = n->cappending ? 2 * n->cappending : 4;
        zmq_msg_t *v = realloc(n->pending, (size_t)cap * sizeof *v);
        if (!v)
            return -1;
        n->pending = v;
        n->cappending = cap;
    }
    zmq_msg_init(&n->pending[n->npending]);
    zmq_msg_move(&n->pending[n->npending], m);
    n->npending++;
    return 0;
}

static struct Held *s_held_find(Net *n, uint64_t shard, uint64_t lease)
{
    for (int i = 0; i < n->nheld; i++)
        if (n->held[i].shard == shard && n->held[i].lease == lease)
            return &n->held[i];
    return NULL;
}

static void s_held_drop(Net *n, uint64_t shard, uint64_t lease)
{
    struct Held *h = s_held_find(n, shard, lease);
    if (!h)
        return;
    zmq_msg_close(&h->msg);
    int i = (int)(h - n->held);
    memmove(h, h + 1, (size_t)(n->nheld - i - 1) * sizeof *h);
    n->nheld--;
}

/* Keep a copy of a shard message handed to the compute thread. */
static void s_held_add(Net *n, zmq_msg_t *m, uint64_t shard, uint64_t lease, int pages)
{
    if (n->nheld == n->capheld) {
        int cap = n->capheld ? 2 * n->capheld : 4;
        struct Held *v = realloc(n->held, (size_t)cap * sizeof *v);
        if (!v)
            return; /* then a hang of this shard is left to the lease */
        n->held = v;
        n->capheld = cap;
    }
    struct Held *h = &n->held[n->nheld];
    zmq_msg_init(&h->msg);
    if (zmq_msg_copy(&h->msg, m) != 0) {
        zmq_msg_close(&h->msg);
        return;
    }
    h->shard = shard;
    h->lease = lease;
    h->pages = pages > 0 ? pages : 1;
    n->nheld++;
}

/* A message from the compute thread. */
static int s_from_compute(Net *n, void *pipe, DmErr *err)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, pipe, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return 0;
    }
    const char *d = zmq_msg_data(&m);
    size_t len = zmq_msg_size(&m);
    if (len == 0) {
        zmq_msg_close(&m);
        return 0;
    }
    if (d[0] == 'F') {
        dm_err(err, "%.*s", (int)(len - 1 < 900 ? len - 1 : 900), d + 1);
        zmq_msg_close(&m);
        return -1;
    }
    n->inflight--;
    Docmint__Envelope *e = docmint__envelope__unpack(NULL, len - 1, (const uint8_t *)d + 1);
    if (e && e->result) {
        s_held_drop(n, e->result->shard_id, e->result->lease_id);
        n->st.shards++;
        n->st.answers += e->result->n_answers + e->result->n_logits + e->result->n_analyses;
        n->st.errors += e->result->n_errors;
    }
    if (e)
        docmint__envelope__free_unpacked(e, NULL);
    /* Send the envelope without the 'R' byte. */
    zmq_msg_t body;
    zmq_msg_init_size(&body, len - 1);
    memcpy(zmq_msg_data(&body), d + 1, len - 1);
    zmq_msg_close(&m);
    if (n->sock && zmq_msg_send(&body, n->sock, ZMQ_DONTWAIT) >= 0)
        return 0;
    if (s_pend(n, &body) != 0) {
        zmq_msg_close(&body);
        return dm_err(err, "out of memory keeping a result");
    }
    zmq_msg_close(&body);
    return 0;
}

/* Messages from the coordinator.  Returns 1 on NO_MORE. */
static int s_from_coordinator(Net *n, void *pipe)
{
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, n->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return 0;
        }
        n->last_heard = dm_now();
        Docmint__Envelope *e = docmint__envelope__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
        if (!e) {
            zmq_msg_close(&m);
            continue;
        }
        int kind = e->kind, has_shard = e->shard != NULL;
        uint64_t sid = has_shard ? e->shard->shard_id : 0, lid = has_shard ? e->shard->lease_id : 0;
        int pages = has_shard ? (int)e->shard->n_pages : 0;
        docmint__envelope__free_unpacked(e, NULL);
        if (kind == DOCMINT__ENVELOPE__KIND__NO_MORE) {
            zmq_msg_close(&m);
            return 1;
        }
        if (kind == DOCMINT__ENVELOPE__KIND__SHARD && has_shard) {
            s_held_add(n, &m, sid, lid, pages);
            if (zmq_msg_send(&m, pipe, 0) >= 0)
                n->inflight++;
            else
                s_held_drop(n, sid, lid);
        }
        zmq_msg_close(&m);
    }
}

/* ---------------------------------------------------------------- watchdog
 *
 * A page that runs past page_timeout_seconds (a shard gets that per page)
 * must not hold its shard until the lease expires, only to hang the next
 * worker the same way.  A thread cannot be stopped safely from outside, so
 * the network thread gives up on the compute thread instead: it marks it
 * abandoned (under its mutex, so a shard that ends at that moment is
 * either sent or dropped, never both), closes its pipe, answers the hung
 * shard itself with one error record per question (from its own socket,
 * so the result comes from the lease holder), and starts a new compute
 * thread, which opens its own copy of the stage and gets the shards that
 * were queued behind the hung one.  The abandoned thread, if it ever
 * returns, drops its result and frees itself.  After MAX_HUNG such threads
 * the worker stops with an error (restart it). */

/* Start a compute thread like tmpl (its stage opened by the thread). */
static Compute *s_compute_new(const Compute *tmpl, void *zctx, void **pipe, DmErr *err)
{
    Compute *c = calloc(1, sizeof *c);
    if (!c) {
        dm_err(err, "out of memory");
        return NULL;
    }
    c->join = tmpl->join;
    c->ops = tmpl->ops;
    c->name = tmpl->name;
    c->prefix = tmpl->prefix;
    c->hang = tmpl->hang;
    c->verbose = tmpl->verbose;
    c->stall = tmpl->stall;
    c->threads = tmpl->threads;
    pthread_mutex_init(&c->mu, NULL);
    if (wire_pipe(zctx, "docmint-worker", pipe, &c->pipe, err)) {
        s_compute_free(c);
        return NULL;
    }
    if (pthread_create(&c->thread, NULL, s_compute, c) != 0) {
        zmq_close(c->pipe);
        zmq_close(*pipe);
        *pipe = NULL;
        s_compute_free(c);
        dm_err(err, "cannot start a compute thread");
        return NULL;
    }
    return c;
}

static int s_send_result(Net *n, const Docmint__Envelope *e, DmErr *err)
{
    size_t len = docmint__envelope__get_packed_size(e);
    zmq_msg_t body;
    if (zmq_msg_init_size(&body, len) != 0)
        return dm_err(err, "out of memory packing a result");
    docmint__envelope__pack(e, zmq_msg_data(&body));
    if (n->sock && zmq_msg_send(&body, n->sock, ZMQ_DONTWAIT) >= 0)
        return 0;
    int rc = s_pend(n, &body) ? dm_err(err, "out of memory keeping a result") : 0;
    zmq_msg_close(&body);
    return rc;
}

/* The hung shard's questions as error records, sent to the coordinator. */
static int s_report_hung(Net *n, const Compute *c, const struct Held *h, double ran, double limit,
                         DmErr *err)
{
    Docmint__Envelope *in = docmint__envelope__unpack(NULL, zmq_msg_size((zmq_msg_t *)&h->msg),
                                                      zmq_msg_data((zmq_msg_t *)&h->msg));
    if (!in || !in->shard) {
        if (in)
            docmint__envelope__free_unpacked(in, NULL);
        return dm_err(err, "cannot read back shard %" PRIu64, h->shard);
    }
    const char *stage = c->join->stage;
    Docmint__Result res;
    docmint__result__init(&res);
    res.shard_id = h->shard;
    res.lease_id = h->lease;
    res.lease_token = in->shard->lease_token; /* borrowed: `in` is freed after the send */
    int rc = 0;
    for (size_t p = 0; p < in->shard->n_pages && !rc; p++) {
        const Docmint__Page *pg = in->shard->pages[p];
        char reason[1024];
        snprintf(reason, sizeof reason,
                 "%s (page %d): shard of %d page(s) still running after %.0f s, past "
                 "page_timeout_seconds %g per page; the worker gave up on it and went on",
                 pg->image_path, pg->page_no, h->pages, ran, limit);
        for (size_t q = 0; q < pg->n_questions && !rc; q++)
            if (stage_add_error(&res, stage, pg->questions[q]->question_id, -1, reason))
                rc = dm_err(err, "out of memory");
    }
    if (!rc) {
        Docmint__Envelope out;
        docmint__envelope__init(&out);
        out.kind = DOCMINT__ENVELOPE__KIND__RESULT;
        out.credit = 1;
        out.result = &res;
        out.worker = (char *)c->name;
        rc = s_send_result(n, &out, err);
        n->st.shards++;
        n->st.errors += res.n_errors;
    }
    stage_free_errors(&res);
    docmint__envelope__free_unpacked(in, NULL);
    return rc;
}

/* Called every loop turn.  -1 (with err) when the worker must stop. */
static int s_watchdog(Net *n, Compute **cp, void **pipe, double limit, DmErr *err)
{
    Compute *c = *cp;
    if (limit <= 0 || !c || !atomic_load(&c->busy))
        return 0;
    uint64_t sid = atomic_load(&c->cur_shard), lid = atomic_load(&c->cur_lease);
    struct Held *h = s_held_find(n, sid, lid);
    double ran = dm_now() - atomic_load(&c->started);
    if (!h || ran <= limit * h->pages)
        return 0; /* (a shard we hold no copy of is left to its lease) */
    pthread_mutex_lock(&c->mu);
    if (!atomic_load(&c->busy) || atomic_load(&c->cur_shard) != sid ||
        atomic_load(&c->cur_lease) != lid) {
        pthread_mutex_unlock(&c->mu);
        return 0; /* it has just finished */
    }
    /* Once abandoned, the thread may return and free c at any moment:
     * keep what is needed of it first. */
    Compute t;
    memset(&t, 0, sizeof t);
    t.join = c->join;
    t.ops = c->ops;
    t.name = c->name;
    t.prefix = c->prefix;
    t.hang = c->hang;
    t.verbose = c->verbose;
    t.stall = c->stall;
    t.threads = c->threads;
    pthread_t th = c->thread;
    c->abandoned = 1;
    atomic_store(&c->cancel, 1);
    zmq_close(c->pipe); /* the thread does not touch it once abandoned */
    pthread_mutex_unlock(&c->mu);
    c = &t;
    zmq_close(*pipe);
    *pipe = NULL;
    pthread_detach(th);
    *cp = NULL;
    int hung = atomic_fetch_add(&s_hung, 1) + 1;
    fprintf(stderr, "%s: shard %" PRIu64 " still running after %.0f s (page_timeout_seconds %g x %d "
                    "page(s)): its questions are reported as errors and a new compute thread takes "
                    "over\n",
            c->prefix, sid, ran, limit, h->pages);
    n->inflight--;
    int rc = s_report_hung(n, c, h, ran, limit, err);
    s_held_drop(n, sid, lid);
    if (rc)
        return -1;
    if (hung > MAX_HUNG)
        return dm_err(err, "%d compute threads are stuck on pages that ran past page_timeout_seconds: "
                           "stopping this worker (restart it)",
                      hung);
    Compute *nc = s_compute_new(c, n->zctx, pipe, err);
    if (!nc)
        return -1;
    *cp = nc;
    /* the shards queued behind the hung one went with the old pipe */
    for (int i = 0; i < n->nheld; i++) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_copy(&m, &n->held[i].msg) != 0 || zmq_msg_send(&m, *pipe, 0) < 0)
            zmq_msg_close(&m);
    }
    return 0;
}

int worker_run(const WorkerOpts *o, DmErr *err)
{
    const WireJoin *j = o->join;
    int is_cache = strcmp(j->stage, "cache-logits") == 0;
    const WorkerStageOps *ops = NULL;
    for (int i = 0; o->stages && o->stages[i]; i++)
        if (!strcmp(o->stages[i]->stage, j->stage))
            ops = o->stages[i];
    if (strcmp(j->stage, "infer") != 0 && !is_cache && !ops)
        return dm_err(err, "stage \"%s\": this worker computes \"infer\", \"cache-logits\"%s",
                      j->stage, o->stages ? " and \"analyze\"" : "");
    image_set_max_pixels(j->max_page_pixels); /* decompression bombs: refused from the header */
    Compute *c = calloc(1, sizeof *c);
    if (!c)
        return dm_err(err, "out of memory");
    pthread_mutex_init(&c->mu, NULL);
    c->threads = o->threads;
    c->join = j;
    c->ops = ops;
    if (s_stage_open(c, err)) {
        s_compute_free(c);
        return -1;
    }
    const char *fp = c->ops ? c->ops->fingerprint(c->ext)
                     : is_cache ? cache_fingerprint(c->cache) : infer_fingerprint(c->stage);
    if (j->model_fingerprint[0] && strcmp(j->model_fingerprint, fp)) {
        dm_err(err, "%s: weights fingerprint %s, but the job's model is %s (the checkpoint changed?)",
               j->model, fp, j->model_fingerprint);
        s_compute_free(c);
        return -1;
    }
    const char *stall = getenv("DOCMINT_TEST_STALL_SECONDS");
    c->stall = stall ? atof(stall) : 0;
    c->hang = getenv("DOCMINT_TEST_HANG_PAGE");
    c->name = o->name;
    c->prefix = o->log_prefix;
    c->verbose = o->verbose;

    Net n;
    memset(&n, 0, sizeof n);
    n.o = o;
    n.zctx = o->zctx ? o->zctx : zmq_ctx_new();
    n.endpoint = o->endpoint ? o->endpoint : j->endpoint;
    n.hb = j->heartbeat_seconds;
    n.liveness = j->heartbeat_liveness;
    n.credit = j->credit;
    double give_up = o->give_up_seconds > 0 ? o->give_up_seconds : GIVE_UP_DEFAULT;
    int rc = -1, started = 0;
    void *pipe = NULL;
    if (!n.zctx) {
        dm_err(err, "zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
        goto done;
    }
    if (wire_routing_id_new(n.rid, err) ||
        wire_pipe(n.zctx, "docmint-worker", &pipe, &c->pipe, err))
        goto done;
    if (pthread_create(&c->thread, NULL, s_compute, c) != 0) {
        dm_err(err, "cannot start the compute thread");
        zmq_close(c->pipe);
        goto done;
    }
    started = 1;
    n.last_heard = dm_now(); /* give-up counts from the start */
    if (s_connect(&n, err))
        goto done;
    /* Liveness counts from the later of the last message and the last
     * (re)connect, so a handshake has its time. */
    double conn_at = dm_now(), backoff = BACKOFF_MIN;
    for (;;) {
        if (o->should_stop && o->should_stop(o->stop_ctx)) {
            rc = 0;
            break;
        }
        if (atomic_load(&c->ended)) {
            dm_err(err, "the compute thread stopped: %s", zmq_strerror(zmq_errno()));
            break;
        }
        double now = dm_now();
        double wait = n.next_hb - now; /* next heartbeat, or the reconnect time */
        if (wait > n.hb)
            wait = n.hb;
        if (wait < 0)
            wait = 0;
        zmq_pollitem_t it[3] = {{pipe, 0, ZMQ_POLLIN, 0},
                                {n.sock, 0, ZMQ_POLLIN, 0},
                                {n.mon, 0, ZMQ_POLLIN, 0}};
        int nit = n.sock ? 3 : 1;
        int pr = zmq_poll(it, nit, (long)(wait * 1000) + 1);
        if (pr < 0 && zmq_errno() != EINTR) {
            dm_err(err, "zmq_poll: %s", zmq_strerror(zmq_errno()));
            break;
        }
        if (pr > 0 && (it[0].revents & ZMQ_POLLIN))
            if (s_from_compute(&n, pipe, err))
                break;
        if (n.sock && pr > 0 && (it[2].revents & ZMQ_POLLIN))
            if (s_monitor(&n, err))
                break;
        if (n.sock && pr > 0 && (it[1].revents & ZMQ_POLLIN)) {
            double before = n.last_heard;
            if (s_from_coordinator(&n, pipe)) {
                rc = 0;
                break;
            }
            if (n.last_heard != before)
                backoff = BACKOFF_MIN;
        }
        if (s_watchdog(&n, &c, &pipe, j->page_timeout_seconds, err))
            break;
        now = dm_now();
        if (now - n.last_heard > give_up) {
            dm_err(err, "no word from the coordinator at %s for %.0f s: giving up", n.endpoint,
                   now - n.last_heard);
            break;
        }
        if (n.sock) {
            if (now >= n.next_hb) {
                s_send_env(&n, DOCMINT__ENVELOPE__KIND__HEARTBEAT, 0);
                n.next_hb = now + n.hb;
            }
            double ref = n.last_heard > conn_at ? n.last_heard : conn_at;
            if (now - ref > n.hb * n.liveness) {
                fprintf(stderr,
                        "%s: the coordinator at %s is silent (%.1f s); reconnecting in %.0f s\n",
                        o->log_prefix, n.endpoint, now - n.last_heard, backoff);
                s_disconnect(&n);
                n.next_hb = now + backoff; /* the reconnect time */
                backoff = backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : backoff * 2;
            }
        } else if (now >= n.next_hb) {
            if (s_connect(&n, err))
                break;
            n.st.reconnects++;
            conn_at = dm_now();
        }
    }
done:
    if (c)
        atomic_store(&c->cancel, 1);
    if (started && c) {
        zmq_send(pipe, "", 0, ZMQ_DONTWAIT);
        pthread_join(c->thread, NULL);
    }
    s_disconnect(&n);
    for (int i = 0; i < n.npending; i++)
        zmq_msg_close(&n.pending[i]);
    free(n.pending);
    if (pipe)
        zmq_close(pipe);
    if (n.zctx && !o->zctx)
        zmq_ctx_term(n.zctx);
    if (c)
        s_compute_free(c);
    for (int i = 0; i < n.nheld; i++)
        zmq_msg_close(&n.held[i].msg);
    free(n.held);
    if (o->stats)
        *o->stats = n.st;
    return rc;
}
