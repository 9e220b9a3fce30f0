/* test_dispatch.c - the coordinator's pieces that need no model: shard
 * planning, the lease table (expiry, dead workers, first result wins,
 * duplicates), progress lines, the join document, and CURVE + ZAP over a
 * real loopback socket (the job's client key gets in, another does not). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "coordinator/lease.h"
#include "coordinator/progress.h"
#include "coordinator/results.h"
#include "common/store.h"
#include "tutil.h"
#include "common/wire.h"
#include "coordinator/zap_auth.h"

/* ------------------------------------------------------------ a tiny corpus */

static CorpusQuestion s_q[8];
static CorpusPage s_pages[4];
static Corpus s_corpus;

/* Pages: a (qids 1 2), b (3 4 5), c (6), d (7 and 1 again: a duplicate). */
static void s_make_corpus(void)
{
    static const int64_t ids[8] = {1, 2, 3, 4, 5, 6, 7, 1};
    static const int counts[4] = {2, 3, 1, 2};
    static char *names[4] = {"a.png", "b.png", "c.png", "d.png"};
    memset(s_q, 0, sizeof s_q);
    for (int i = 0; i < 8; i++) {
        s_q[i].qid = ids[i];
        s_q[i].text = "q?";
    }
    int k = 0;
    for (int p = 0; p < 4; p++) {
        s_pages[p] = (CorpusPage){names[p], names[p], 0, &s_q[k], counts[p]};
        k += counts[p];
    }
    s_corpus = (Corpus){s_pages, 4, 8};
}

static int s_done_4_6(void *ctx, int64_t qid)
{
    (void)ctx;
    return qid == 4 || qid == 6;
}

static void test_plan(void)
{
    s_make_corpus();
    Plan *p = NULL;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(plan_build(&s_corpus, 2, s_done_4_6, NULL, &p, &err), 0);
    CU_ASSERT_EQUAL(p->total_q, 7); /* 1..7, the repeated 1 counted once */
    CU_ASSERT_EQUAL(p->dup_q, 1);
    CU_ASSERT_EQUAL(p->held_q, 2);
    CU_ASSERT_EQUAL(p->todo_q, 5);
    /* page c has nothing left: pages a, b, d remain -> shards {a,b}, {d} */
    CU_ASSERT_EQUAL(p->npages, 3);
    CU_ASSERT_EQUAL(p->nshards, 2);
    CU_ASSERT_EQUAL(p->shards[0].npages, 2);
    CU_ASSERT_EQUAL(p->shards[0].nq, 4); /* 1 2 3 5 */
    CU_ASSERT_EQUAL(p->shards[1].nq, 1); /* 7 */
    CU_ASSERT_EQUAL(p->pages[1].nq, 2);
    CU_ASSERT_EQUAL(p->pages[1].qidx[0], 0);
    CU_ASSERT_EQUAL(p->pages[1].qidx[1], 2);
    CU_ASSERT_EQUAL(p->pages[2].page, 3);
    plan_free(&p);
    CU_ASSERT_PTR_NULL(p);

    /* one page per shard, nothing done */
    CU_ASSERT_EQUAL_FATAL(plan_build(&s_corpus, 1, NULL, NULL, &p, &err), 0);
    CU_ASSERT_EQUAL(p->nshards, 4);
    CU_ASSERT_EQUAL(p->todo_q, 7);
    CU_ASSERT_EQUAL(p->shards[3].nq, 1); /* d: 7 (1 was planned with a) */
    plan_free(&p);

    CU_ASSERT_EQUAL(plan_build(&s_corpus, 0, NULL, NULL, &p, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "pages_per_shard"));
}

static int s_all_done(void *ctx, int64_t qid)
{
    (void)ctx;
    (void)qid;
    return 1;
}

static void test_plan_nothing_left(void)
{
    s_make_corpus();
    Plan *p = NULL;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(plan_build(&s_corpus, 3, s_all_done, NULL, &p, &err), 0);
    CU_ASSERT_EQUAL(p->nshards, 0);
    CU_ASSERT_EQUAL(p->held_q, 7);
    CU_ASSERT(lease_all_done(p));
    CU_ASSERT_EQUAL(lease_take(p, 0, 0, 10), -1);
    plan_free(&p);
}

/* The token of shard i's current lease. */
#define TOK(p, i) (p)->shards[i].token, LEASE_TOKEN_BYTES

static void test_leases(void)
{
    s_make_corpus();
    Plan *p = NULL;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(plan_build(&s_corpus, 1, NULL, NULL, &p, &err), 0);
    /* 4 shards; worker 0 takes two, worker 1 one */
    int a = lease_take(p, 0, 0.0, 10.0);
    int b = lease_take(p, 0, 0.0, 10.0);
    int c = lease_take(p, 1, 1.0, 10.0);
    CU_ASSERT_EQUAL(a, 0);
    CU_ASSERT_EQUAL(b, 1);
    CU_ASSERT_EQUAL(c, 2);
    CU_ASSERT_EQUAL(p->nout, 3);
    CU_ASSERT_EQUAL(p->qlen, 1);
    uint64_t la = p->shards[a].lease_id, lb = p->shards[b].lease_id;
    CU_ASSERT_NOT_EQUAL(la, lb);
    /* tokens are random: 16 bytes that differ between leases */
    CU_ASSERT_NOT_EQUAL(memcmp(p->shards[a].token, p->shards[b].token, LEASE_TOKEN_BYTES), 0);
    uint8_t tb[LEASE_TOKEN_BYTES];
    memcpy(tb, p->shards[b].token, sizeof tb);
    CU_ASSERT_DOUBLE_EQUAL(lease_next_deadline(p), 10.0, 1e-9);

    /* a's token from another worker is a forgery and changes nothing; a
     * token of another shard, a wrong length or a flipped bit is unknown */
    CU_ASSERT_EQUAL(lease_complete(p, (uint64_t)a, TOK(p, a), 1), LEASE_FOREIGN);
    CU_ASSERT_EQUAL(lease_complete(p, (uint64_t)a, TOK(p, b), 0), LEASE_UNKNOWN);
    CU_ASSERT_EQUAL(lease_complete(p, (uint64_t)a, p->shards[a].token, 8, 0), LEASE_UNKNOWN);
    uint8_t flipped[LEASE_TOKEN_BYTES];
    memcpy(flipped, p->shards[a].token, sizeof flipped);
    flipped[15] ^= 1;
    CU_ASSERT_EQUAL(lease_complete(p, (uint64_t)a, flipped, sizeof flipped, 0), LEASE_UNKNOWN);
    CU_ASSERT_EQUAL(p->ndone, 0);
    /* results: accept, then the same again is a duplicate */
    CU_ASSERT_EQUAL(lease_complete(p, (uint64_t)a, TOK(p, a), 0), LEASE_ACCEPT);
    CU_ASSERT_EQUAL(lease_complete(p, (uint64_t)a, TOK(p, a), 0), LEASE_DUPLICATE);
    CU_ASSERT_EQUAL(lease_complete(p, 99, TOK(p, a), 0), LEASE_UNKNOWN);
    CU_ASSERT_EQUAL(p->ndone, 1);

    /* worker 0 dies: its remaining shard b goes back to the front, and its
     * hand-out is closed */
    CU_ASSERT_EQUAL(p->shards[b].issued[0].open, 1);
    CU_ASSERT_EQUAL(lease_release_owner(p, 0), 1);
    CU_ASSERT_EQUAL(p->shards[b].issued[0].open, 0);
    CU_ASSERT_EQUAL(p->qlen, 2);
    CU_ASSERT_EQUAL(p->queue[p->qhead], b);
    CU_ASSERT_EQUAL(p->shards[b].state, LEASE_QUEUED);

    /* worker 1's lease expires at 11 */
    CU_ASSERT_EQUAL(lease_expire(p, 10.5, NULL, NULL), 0);
    CU_ASSERT_EQUAL(lease_expire(p, 11.5, NULL, NULL), 1);
    CU_ASSERT_EQUAL(p->shards[c].expiries, 1);
    CU_ASSERT_EQUAL(p->nout, 0);
    CU_ASSERT_EQUAL(p->qlen, 3);
    CU_ASSERT_EQUAL(p->queue[p->qhead], c);

    /* c handed out again (new lease, new token); the old lease's result
     * arrives first and wins; the new lease's result is then a duplicate */
    uint8_t tc_old[LEASE_TOKEN_BYTES];
    memcpy(tc_old, p->shards[c].token, sizeof tc_old);
    uint64_t lc_old = p->shards[c].lease_id;
    int c2 = lease_take(p, 2, 12.0, 10.0);
    CU_ASSERT_EQUAL(c2, c);
    CU_ASSERT_NOT_EQUAL(p->shards[c].lease_id, lc_old);
    CU_ASSERT_NOT_EQUAL(memcmp(p->shards[c].token, tc_old, sizeof tc_old), 0);
    /* worker 2 cannot hand in the old lease (it is worker 1's) */
    CU_ASSERT_EQUAL(lease_complete(p, (uint64_t)c, tc_old, sizeof tc_old, 2), LEASE_FOREIGN);
    CU_ASSERT_EQUAL(lease_complete(p, (uint64_t)c, tc_old, sizeof tc_old, 1), LEASE_ACCEPT);
    CU_ASSERT_EQUAL(lease_complete(p, (uint64_t)c, TOK(p, c), 2), LEASE_DUPLICATE);
    CU_ASSERT_EQUAL(p->nout, 0);

    /* b is queued again; its first lease's result (worker 0, back) still
     * completes it and takes it out of the queue */
    CU_ASSERT_EQUAL(lease_complete(p, (uint64_t)b, tb, sizeof tb, 0), LEASE_ACCEPT);
    CU_ASSERT_EQUAL(p->qlen, 1);
    int d = lease_take(p, 1, 13.0, 10.0);
    CU_ASSERT_EQUAL(d, 3);
    CU_ASSERT_EQUAL(lease_take(p, 1, 13.0, 10.0), -1);
    CU_ASSERT(!lease_all_done(p));
    CU_ASSERT_EQUAL(lease_complete(p, (uint64_t)d, TOK(p, d), 1), LEASE_ACCEPT);
    CU_ASSERT(lease_all_done(p));
    CU_ASSERT(lease_next_deadline(p) > 1e200);
    plan_free(&p);
}

/* on_expire gives a shard up on its third expiry */
static int s_give_up_third(void *ctx, const LeaseShard *s, double now)
{
    (void)now;
    (*(int *)ctx)++;
    return s->expiries >= 3;
}

static int s_not_avoided(void *ctx, const LeaseShard *s, int owner)
{
    (void)ctx;
    return s->avoid != owner;
}

static void test_lease_expiries_retry(void)
{
    s_make_corpus();
    Plan *p = NULL;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(plan_build(&s_corpus, 2, NULL, NULL, &p, &err), 0);
    CU_ASSERT_EQUAL_FATAL(p->nshards, 2);
    int calls = 0;
    /* shard 0 expires three times, with workers 1, 2, 3: given up (DONE) */
    for (int t = 0; t < 3; t++) {
        CU_ASSERT_EQUAL(lease_take(p, t + 1, 10.0 * t, 5.0), 0);
        CU_ASSERT_EQUAL(lease_expire(p, 10.0 * t + 6.0, s_give_up_third, &calls), 1);
    }
    CU_ASSERT_EQUAL(calls, 3);
    CU_ASSERT_EQUAL(p->shards[0].state, LEASE_DONE);
    CU_ASSERT_EQUAL(p->shards[0].last_owner, 3);
    CU_ASSERT_EQUAL(p->ndone, 1);
    CU_ASSERT_EQUAL(p->nout, 0);
    CU_ASSERT_EQUAL(p->qlen, 1);
    /* a late result of a given-up shard is a duplicate */
    CU_ASSERT_EQUAL(lease_complete(p, 0, TOK(p, 0), 3), LEASE_DUPLICATE);

    /* shard 1: worker 4 reports errors; retried, not by worker 4 */
    CU_ASSERT_EQUAL(lease_take(p, 4, 40.0, 5.0), 1);
    CU_ASSERT_EQUAL(lease_check(p, 1, TOK(p, 1), 4, NULL), LEASE_ACCEPT);
    lease_retry(p, 1, 4);
    CU_ASSERT_EQUAL(p->shards[1].state, LEASE_QUEUED);
    CU_ASSERT(p->shards[1].error_retried);
    CU_ASSERT_EQUAL(lease_take_if(p, 4, 41.0, 5.0, s_not_avoided, NULL), -1);
    CU_ASSERT_EQUAL(p->qlen, 1);
    CU_ASSERT_EQUAL(lease_take_if(p, 5, 41.0, 5.0, s_not_avoided, NULL), 1);
    CU_ASSERT_EQUAL(lease_complete(p, 1, TOK(p, 1), 5), LEASE_ACCEPT);
    CU_ASSERT(lease_all_done(p));
    plan_free(&p);
}

/* ------------------------------------------------------------------ progress */

static void test_progress_format(void)
{
    char buf[256];
    progress_duration(buf, sizeof buf, 5);
    CU_ASSERT_STRING_EQUAL(buf, "5s");
    progress_duration(buf, sizeof buf, 125);
    CU_ASSERT_STRING_EQUAL(buf, "2m05s");
    progress_duration(buf, sizeof buf, 3723);
    CU_ASSERT_STRING_EQUAL(buf, "1h02m03s");
    ProgressCounts c = {100, 20, 30, 2, 3};
    progress_format(buf, sizeof buf, &c, 10.0); /* 3 q/s, 50 left -> 17 s */
    CU_ASSERT_STRING_EQUAL(buf, "50/100 questions (50.0%), 3.00 q/s, ETA 17s, 2 errors, 3 workers");
    ProgressCounts z = {10, 0, 0, 1, 1};
    progress_format(buf, sizeof buf, &z, 0.0);
    CU_ASSERT_STRING_EQUAL(buf, "0/10 questions (0.0%), 0.00 q/s, ETA ?, 1 error, 1 worker");
}

/* --------------------------------------------------------------------- wire */

static void s_join(WireJoin *j, char secret[WIRE_KEY_CHARS + 1])
{
    DmErr err = {{0}};
    memset(j, 0, sizeof *j);
    CU_ASSERT_EQUAL_FATAL(wire_keys_generate(j, secret, &err), 0);
    snprintf(j->endpoint, sizeof j->endpoint, "tcp://127.0.0.1:5555");
    snprintf(j->job, sizeof j->job, "/x/job.json");
    snprintf(j->model, sizeof j->model, "/x/model");
    snprintf(j->stage, sizeof j->stage, "infer");
    j->pdf_dpi = 200;
    j->heartbeat_seconds = 0.5;
    j->heartbeat_liveness = 3;
    j->credit = 2;
}

static void test_join_roundtrip(void)
{
    WireJoin j, k;
    char secret[WIRE_KEY_CHARS + 1];
    s_join(&j, secret);
    CU_ASSERT(wire_key_valid(j.server_public));
    CU_ASSERT(wire_key_valid(secret));
    CU_ASSERT(!wire_key_valid("short"));
    DmErr err = {{0}};
    char *text = NULL;
    CU_ASSERT_EQUAL_FATAL(wire_join_to_json(&j, &text, &err), 0);
    CU_ASSERT_PTR_NULL(strstr(text, secret)); /* the server secret never leaves rank 0 */
    CU_ASSERT_EQUAL(wire_join_parse(text, "t", &k, &err), 0);
    CU_ASSERT_STRING_EQUAL(k.client_secret, j.client_secret);
    CU_ASSERT_STRING_EQUAL(k.model, "/x/model");
    CU_ASSERT_DOUBLE_EQUAL(k.heartbeat_seconds, 0.5, 1e-12);
    CU_ASSERT_EQUAL(k.credit, 2);
    CU_ASSERT_EQUAL(k.n_temps, 1);
    CU_ASSERT_DOUBLE_EQUAL(k.temps[0], 1.0, 0);
    CU_ASSERT_EQUAL(k.max_page_pixels, 0); /* absent: the worker's default */
    CU_ASSERT_DOUBLE_EQUAL(k.page_timeout_seconds, 0, 0);
    free(text);
    /* the page limits travel */
    j.max_page_pixels = 1234567;
    j.page_timeout_seconds = 42.5;
    CU_ASSERT_EQUAL_FATAL(wire_join_to_json(&j, &text, &err), 0);
    CU_ASSERT_EQUAL(wire_join_parse(text, "t", &k, &err), 0);
    CU_ASSERT_EQUAL(k.max_page_pixels, 1234567);
    CU_ASSERT_DOUBLE_EQUAL(k.page_timeout_seconds, 42.5, 0);
    free(text);
    j.max_page_pixels = 0;
    j.page_timeout_seconds = 0;
    /* the cache-logits settings travel too */
    j.top_k = 8;
    j.n_temps = 2;
    j.temps[0] = 1.0;
    j.temps[1] = 2.5;
    j.first_answer_only = 1;
    CU_ASSERT_EQUAL_FATAL(wire_join_to_json(&j, &text, &err), 0);
    CU_ASSERT_EQUAL(wire_join_parse(text, "t", &k, &err), 0);
    CU_ASSERT(k.top_k == 8 && k.n_temps == 2 && k.temps[1] == 2.5 && k.first_answer_only == 1);
    CU_ASSERT_EQUAL(k.precision, 0);
    free(text);
    /* and the precision of the workers' model */
    j.precision = 1;
    CU_ASSERT_EQUAL_FATAL(wire_join_to_json(&j, &text, &err), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\"bf16\""));
    CU_ASSERT_EQUAL(wire_join_parse(text, "t", &k, &err), 0);
    CU_ASSERT_EQUAL(k.precision, 1);
    char *at = strstr(text, "\"bf16\"");
    memcpy(at, "\"fp16\"", 6);
    CU_ASSERT_EQUAL(wire_join_parse(text, "t", &k, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "precision"));
    free(text);
    j.precision = 0;

    char path[] = "/tmp/docmint-join-XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    CU_ASSERT_EQUAL(wire_join_write(path, &j, &err), 0);
    CU_ASSERT_EQUAL(wire_join_read(path, &k, &err), 0);
    CU_ASSERT_STRING_EQUAL(k.server_public, j.server_public);
    unlink(path);

    CU_ASSERT_EQUAL(wire_join_parse("{\"endpoint\": 1}", "bad.keys", &k, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "bad.keys"));
    CU_ASSERT_EQUAL(wire_join_parse("not json", "bad.keys", &k, &err), -1);
    CU_ASSERT_EQUAL(wire_join_read("/nonexistent/worker.keys", &k, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "/nonexistent/worker.keys"));
}

static void test_endpoints(void)
{
    char out[256];
    int wild = -1;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL(wire_advertise_endpoint("tcp://127.0.0.1:4000", out, sizeof out, &wild, &err), 0);
    CU_ASSERT_STRING_EQUAL(out, "tcp://127.0.0.1:4000");
    CU_ASSERT_EQUAL(wild, 0);
    CU_ASSERT_EQUAL(wire_advertise_endpoint("tcp://0.0.0.0:4000", out, sizeof out, &wild, &err), 0);
    CU_ASSERT_EQUAL(wild, 1);
    CU_ASSERT_NSTRING_EQUAL(out, "tcp://", 6);
    CU_ASSERT_PTR_NULL(strstr(out, "0.0.0.0"));
    CU_ASSERT(strlen(out) > 11 && !strcmp(out + strlen(out) - 5, ":4000"));
    wire_loopback_endpoint("tcp://0.0.0.0:4000", out, sizeof out);
    CU_ASSERT_STRING_EQUAL(out, "tcp://127.0.0.1:4000");
    wire_loopback_endpoint("ipc:///tmp/x", out, sizeof out);
    CU_ASSERT_STRING_EQUAL(out, "ipc:///tmp/x");
}

/* A DEALER with the given client keys sends HELLO; does the ROUTER get it,
 * and does the client see an authentication failure? */
static int s_try_client(void *ctx, const char *ep, const WireJoin *keys, void *router,
                        int *auth_failed)
{
    DmErr err = {{0}};
    void *d = zmq_socket(ctx, ZMQ_DEALER);
    wire_socket_defaults(d, &err);
    wire_curve_client(d, keys, &err);
    zmq_socket_monitor(d, "inproc://test-dispatch-mon", ZMQ_EVENT_HANDSHAKE_FAILED_AUTH);
    void *mon = zmq_socket(ctx, ZMQ_PAIR);
    zmq_connect(mon, "inproc://test-dispatch-mon");
    zmq_connect(d, ep);
    Docmint__Envelope e;
    docmint__envelope__init(&e);
    e.kind = DOCMINT__ENVELOPE__KIND__HELLO;
    e.credit = 3;
    e.worker = "test";
    wire_send(d, NULL, 0, &e, 0, &err);
    int got = 0;
    *auth_failed = 0;
    /* Either outcome ends the wait at once; the limit only bounds a
     * handshake that never ends, on however loaded a machine. */
    double end = dm_now() + 20;
    while (dm_now() < end && !got && !*auth_failed) {
        zmq_pollitem_t it[2] = {{router, 0, ZMQ_POLLIN, 0}, {mon, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(it, 2, 100) <= 0)
            continue;
        if (it[0].revents & ZMQ_POLLIN) {
            unsigned char id[256];
            size_t idlen = 0;
            Docmint__Envelope *r = NULL;
            if (wire_recv(router, id, &idlen, &r, ZMQ_DONTWAIT, &err) == 1) {
                got = r->kind == DOCMINT__ENVELOPE__KIND__HELLO && r->credit == 3 &&
                      !strcmp(r->worker, "test");
                docmint__envelope__free_unpacked(r, NULL);
            }
        }
        if (it[1].revents & ZMQ_POLLIN) {
            uint8_t ev[6];
            char addr[256];
            zmq_recv(mon, ev, sizeof ev, 0);
            zmq_recv(mon, addr, sizeof addr, 0);
            uint16_t id;
            memcpy(&id, ev, 2);
            if (id == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
                *auth_failed = 1;
        }
    }
    zmq_socket_monitor(d, NULL, 0);
    zmq_close(mon);
    zmq_close(d);
    return got;
}

static void test_curve_zap(void)
{
    WireJoin job, other;
    char secret[WIRE_KEY_CHARS + 1], other_secret[WIRE_KEY_CHARS + 1];
    s_join(&job, secret);
    s_join(&other, other_secret);
    /* A forged keys file: the real server key (public knowledge), a
     * client keypair that is not the job's. */
    memcpy(other.server_public, job.server_public, sizeof job.server_public);
    DmErr err = {{0}};
    void *ctx = zmq_ctx_new();
    ZapAuth *zap = NULL;
    CU_ASSERT_EQUAL_FATAL(zap_start(ctx, job.client_public, "test_dispatch", &zap, &err), 0);
    void *r = zmq_socket(ctx, ZMQ_ROUTER);
    int one = 1;
    wire_socket_defaults(r, &err);
    zmq_setsockopt(r, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(r, ZMQ_CURVE_SERVER, &one, sizeof one);
    zmq_setsockopt(r, ZMQ_CURVE_SECRETKEY, secret, WIRE_KEY_CHARS);
    zmq_setsockopt(r, ZMQ_ZAP_DOMAIN, "docmint", 7);
    CU_ASSERT_EQUAL_FATAL(zmq_bind(r, "tcp://127.0.0.1:0"), 0);
    char ep[256];
    size_t eplen = sizeof ep;
    zmq_getsockopt(r, ZMQ_LAST_ENDPOINT, ep, &eplen);

    int auth_failed = 0;
    printf("\n    (a line \"refused a connection\" below is expected) ");
    fflush(stdout);
    CU_ASSERT_EQUAL(s_try_client(ctx, ep, &other, r, &auth_failed), 0);
    CU_ASSERT_EQUAL(auth_failed, 1);
    CU_ASSERT(zap_refused(zap) >= 1);
    CU_ASSERT_EQUAL(s_try_client(ctx, ep, &job, r, &auth_failed), 1);
    CU_ASSERT_EQUAL(auth_failed, 0);
    CU_ASSERT(zap_accepted(zap) >= 1);

    zmq_close(r);
    zap_stop(&zap);
    CU_ASSERT_PTR_NULL(zap);
    zmq_ctx_term(ctx);
}

/* ------------------------------------------------------------------ results */

static void test_results_writer(void)
{
    char dir[] = "/tmp/docmint-results-XXXXXX";
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/out", dir);
    DmErr err = {{0}};
    Store *s = NULL;
    Results *r = NULL;
    CU_ASSERT_EQUAL_FATAL(store_open(path, STORE_WRITE, &s, &err), 0);
    CU_ASSERT_EQUAL_FATAL(results_open(s, 2, 0, &r, &err), 0);
    CU_ASSERT(!results_held(r, 1));
    CU_ASSERT_EQUAL(results_start(r, "{\"stage\":\"infer\"}", "00ff", "abcd", 0, &err), 0);
    CU_ASSERT(!results_due(r, dm_now()));

    Docmint__AnswerRecord a;
    docmint__answer_record__init(&a);
    a.question_id = 7;
    a.answer = "seven";
    a.page_id = "p.png";
    a.question = "q?";
    CU_ASSERT_EQUAL(results_add_answer(r, &a, 100.0, &err), 0);
    CU_ASSERT(!results_due(r, 100.5));  /* 1 record, half a second */
    CU_ASSERT(results_due(r, 101.5));   /* the oldest waited a second */
    Docmint__ErrorRecord e;
    docmint__error_record__init(&e);
    e.item = "something else";
    e.stage = "infer";
    e.reason = "x.png: empty file";
    e.question_id = 9;
    CU_ASSERT_EQUAL(results_add_error(r, 9, &e, NULL, 100.0, &err), 0);
    CU_ASSERT(results_due(r, 100.0));   /* commit_every 2 reached */
    /* an answer that is not UTF-8 becomes an error record */
    a.question_id = 8;
    a.answer = "\xff\xfe";
    CU_ASSERT_EQUAL(results_add_answer(r, &a, 100.0, &err), 0);
    const ResultsCounts *c = results_counts(r);
    CU_ASSERT_EQUAL(c->acc_answers, 1);
    CU_ASSERT_EQUAL(c->acc_errors, 2);
    CU_ASSERT_EQUAL(c->answers, 0);
    CU_ASSERT_EQUAL(results_flush(r, 3, 1, "2024-01-01T00:00:00Z", &err), 0);
    CU_ASSERT_EQUAL(c->answers, 1);
    CU_ASSERT_EQUAL(c->errors, 2);
    char *v = store_meta_get(s, "computed_this_run", &err);
    CU_ASSERT_STRING_EQUAL(v ? v : "", "3");
    free(v);
    v = store_meta_get(s, "count_errors", &err);
    CU_ASSERT_STRING_EQUAL(v ? v : "", "2");
    free(v);
    v = store_meta_get(s, "model_fingerprint", &err);
    CU_ASSERT_STRING_EQUAL(v ? v : "", "00ff");
    free(v);
    /* the error's key is the questionId, whatever the worker's item was */
    void *val = NULL;
    size_t vlen = 0;
    CU_ASSERT_EQUAL(store_get(s, STORE_ERRORS, "9", 1, &val, &vlen, &err), 1);
    free(val);
    results_free(&r);

    /* A second run sees what the first stored, and refuses another model. */
    CU_ASSERT_EQUAL_FATAL(results_open(s, 2, 0, &r, &err), 0);
    CU_ASSERT(results_held(r, 7));
    CU_ASSERT(results_held(r, 8));
    CU_ASSERT(results_held(r, 9));
    CU_ASSERT(!results_held(r, 10));
    CU_ASSERT_EQUAL(results_counts(r)->records0, 1);
    CU_ASSERT_EQUAL(results_counts(r)->errors0, 2);
    CU_ASSERT_EQUAL(results_check_meta(r, path, "m", "00ff", &err), 0);
    CU_ASSERT_EQUAL(results_check_meta(r, path, "m", "", &err), 0);
    CU_ASSERT_EQUAL(results_check_meta(r, path, "m", "1234", &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "00ff"));
    CU_ASSERT_EQUAL(results_start(r, "{}", "00ff", "abcd", 3, &err), 0);
    v = store_meta_get(s, "runs", &err);
    CU_ASSERT_STRING_EQUAL(v ? v : "", "2");
    free(v);
    results_free(&r);
    store_close(&s);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CU_ASSERT_EQUAL(system(cmd), 0);
}

/* --retry-errors: errored questions are not held (a cache-logits question
 * with a record and an error on another answer included), the error
 * records are deleted in results_start's transaction, and the store's
 * distinct questions count each question once. */
static void test_results_retry(void)
{
    char dir[] = "/tmp/docmint-retry-XXXXXX";
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/out", dir);
    DmErr err = {{0}};
    Store *s = NULL;
    Results *r = NULL;
    CU_ASSERT_EQUAL_FATAL(store_open(path, STORE_WRITE, &s, &err), 0);
    CU_ASSERT_EQUAL_FATAL(results_open(s, 100, 0, &r, &err), 0);
    CU_ASSERT_EQUAL(results_start(r, "{}", "00ff", "abcd", 0, &err), 0);
    Docmint__AnswerRecord a;
    docmint__answer_record__init(&a);
    a.answer = "x";
    a.page_id = "p.png";
    a.question = "q?";
    for (int q = 1; q <= 2; q++) { /* answers for 1 and 2 */
        a.question_id = q;
        CU_ASSERT_EQUAL(results_add_answer(r, &a, 1.0, &err), 0);
    }
    Docmint__ErrorRecord e;
    docmint__error_record__init(&e);
    e.stage = "infer";
    e.reason = "bad page";
    CU_ASSERT_EQUAL(results_add_error(r, 3, &e, NULL, 1.0, &err), 0); /* key "3" */
    e.item = "2/1"; /* question 2's second answer (cache-logits style) */
    e.question_id = 2;
    CU_ASSERT_EQUAL(results_add_error_item(r, &e, 1.0, &err), 0);
    e.item = "features of page p.png"; /* no question */
    e.question_id = 0;
    CU_ASSERT_EQUAL(results_add_error_item(r, &e, 1.0, &err), 0);
    CU_ASSERT_EQUAL(results_flush(r, 0, 0, NULL, &err), 0);
    results_free(&r);

    /* without retry: 1, 2, 3 held, three distinct questions */
    CU_ASSERT_EQUAL_FATAL(results_open(s, 100, 0, &r, &err), 0);
    CU_ASSERT(results_held(r, 1) && results_held(r, 2) && results_held(r, 3));
    CU_ASSERT_EQUAL(results_stored_count(r), 3);
    CU_ASSERT_EQUAL(results_retried(r), 0);
    results_free(&r);

    /* with retry: only 1 held; 2 and 3 still count as stored */
    CU_ASSERT_EQUAL_FATAL(results_open(s, 100, 1, &r, &err), 0);
    CU_ASSERT(results_held(r, 1));
    CU_ASSERT(!results_held(r, 2));
    CU_ASSERT(!results_held(r, 3));
    CU_ASSERT(results_stored(r, 2) && results_stored(r, 3) && !results_stored(r, 4));
    CU_ASSERT_EQUAL(results_stored_count(r), 3);
    CU_ASSERT_EQUAL(results_retried(r), 3);
    CU_ASSERT_EQUAL(results_counts(r)->errors0, 0);
    uint64_t n = 99;
    CU_ASSERT_EQUAL(store_count(s, STORE_ERRORS, &n, &err), 0);
    CU_ASSERT_EQUAL(n, 3); /* nothing deleted before the start */
    CU_ASSERT_EQUAL(results_start(r, "{}", "00ff", "abcd", 1, &err), 0);
    CU_ASSERT_EQUAL(store_count(s, STORE_ERRORS, &n, &err), 0);
    CU_ASSERT_EQUAL(n, 0);
    CU_ASSERT_EQUAL(store_count(s, STORE_RECORDS, &n, &err), 0);
    CU_ASSERT_EQUAL(n, 2);
    char *v = store_meta_get(s, "count_errors", &err);
    CU_ASSERT_STRING_EQUAL(v ? v : "", "0");
    free(v);
    results_free(&r);
    store_close(&s);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CU_ASSERT_EQUAL(system(cmd), 0);
}

void tests_dispatch(void)
{
    TU_SUITE("dispatch", {"plan: questions held, duplicates, shards", test_plan},
             {"plan: nothing left", test_plan_nothing_left},
             {"leases: expiry, dead worker, first result wins", test_leases},
             {"leases: given up after N expiries, errors retried elsewhere", test_lease_expiries_retry},
             {"progress line", test_progress_format},
             {"join document round trip and errors", test_join_roundtrip},
             {"advertised endpoints", test_endpoints},
             {"results: batches, counts, held set, model check", test_results_writer},
             {"results: --retry-errors releases and deletes error records", test_results_retry},
             {"CURVE + ZAP: only the job's client key gets in", test_curve_zap});
}
