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
#include "worker/stages/stage_cache.h"
#include "worker/stages/stage_infer.h"

#define BACKOFF_MIN 1.0
#define BACKOFF_MAX 32.0
#define GIVE_UP_DEFAULT 60.0

/* Frames on the pipe: compute -> network "R"+packed RESULT envelope, or
 * "F"+message (fatal); network -> compute: packed SHARD envelope, or an
 * empty frame (stop). */

typedef struct Compute {
    void *pipe;          /* this thread's end, connected before it starts */
    InferStage *stage;   /* the job's stage: one of these two */
    CacheStage *cache;
    const WorkerStageOps *ops; /* or a stage from WorkerOpts.stages */
    void *ext;
    const char *name;
    const char *prefix;
    int verbose;
    atomic_int cancel;
    atomic_int ended; /* the compute thread returned */
    double stall;
    int threads;
} Compute;

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

static void *s_compute(void *arg)
{
    Compute *c = arg;
    /* Here, not in the caller: OpenMP's thread count is per thread. */
    if (c->threads > 0)
        kern_set_threads(c->threads);
    void *pipe = c->pipe;
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
        double t0 = dm_now();
        Docmint__Result res;
        docmint__result__init(&res);
        DmErr err = {{0}};
        int rc = s_stage_shard(c, sh, &res, &err);
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
    double hb;
    int liveness;
    int credit;
    int inflight;           /* shards given to the compute thread */
    double last_heard;      /* last message from the coordinator */
    double next_hb;
    zmq_msg_t *pending;     /* results waiting for a connection */
    int npending, cappending;
    WorkerStats st;
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
        docmint__envelope__free_unpacked(e, NULL);
        if (kind == DOCMINT__ENVELOPE__KIND__NO_MORE) {
            zmq_msg_close(&m);
            return 1;
        }
        if (kind == DOCMINT__ENVELOPE__KIND__SHARD && has_shard) {
            if (zmq_msg_send(&m, pipe, 0) >= 0)
                n->inflight++;
        }
        zmq_msg_close(&m);
    }
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
    Compute c;
    memset(&c, 0, sizeof c);
    c.threads = o->threads;
    const char *fp;
    if (ops) {
        if (ops->open(j, &c.ext, err))
            return -1;
        c.ops = ops;
        fp = ops->fingerprint(c.ext);
    } else if (is_cache) {
        CacheOpts co = {.top_k = j->top_k, .n_temps = j->n_temps,
                        .first_answer_only = j->first_answer_only, .pdf_dpi = j->pdf_dpi};
        memcpy(co.temps, j->temps, sizeof co.temps);
        if (cache_open(j->model, &co, &c.cache, err))
            return -1;
        fp = cache_fingerprint(c.cache);
    } else {
        if (infer_open(j->model, j->max_length, j->pdf_dpi, j->precision, &c.stage, err))
            return -1;
        fp = infer_fingerprint(c.stage);
    }
    if (j->model_fingerprint[0] && strcmp(j->model_fingerprint, fp)) {
        dm_err(err, "%s: weights fingerprint %s, but the job's model is %s (the checkpoint changed?)",
               j->model, fp, j->model_fingerprint);
        infer_close(&c.stage);
        cache_close(&c.cache);
        if (c.ops)
            c.ops->close(&c.ext);
        return -1;
    }
    const char *stall = getenv("DOCMINT_TEST_STALL_SECONDS");
    c.stall = stall ? atof(stall) : 0;
    c.name = o->name;
    c.prefix = o->log_prefix;
    c.verbose = o->verbose;
    atomic_init(&c.cancel, 0);
    atomic_init(&c.ended, 0);

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
    pthread_t th;
    void *pipe = NULL;
    if (!n.zctx) {
        dm_err(err, "zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
        goto done;
    }
    if (wire_pipe(n.zctx, "docmint-worker", &pipe, &c.pipe, err))
        goto done;
    if (pthread_create(&th, NULL, s_compute, &c) != 0) {
        dm_err(err, "cannot start the compute thread");
        zmq_close(c.pipe);
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
        if (atomic_load(&c.ended)) {
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
    atomic_store(&c.cancel, 1);
    if (started) {
        zmq_send(pipe, "", 0, ZMQ_DONTWAIT);
        pthread_join(th, NULL);
    }
    s_disconnect(&n);
    for (int i = 0; i < n.npending; i++)
        zmq_msg_close(&n.pending[i]);
    free(n.pending);
    if (pipe)
        zmq_close(pipe);
    if (n.zctx && !o->zctx)
        zmq_ctx_term(n.zctx);
    infer_close(&c.stage);
    cache_close(&c.cache);
    if (c.ops)
        c.ops->close(&c.ext);
    if (o->stats)
        *o->stats = n.st;
    return rc;
}
