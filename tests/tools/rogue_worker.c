/* rogue_worker.c - a worker that holds the job's keys and misbehaves, for
 * tests/mpi/rogue_worker.sh.
 *
 *   rogue_worker KEYS_FILE [SECONDS] [--key KEY_FILE]
 *
 * It reads OUTPUT/worker.keys like `docmint worker --keys`, then, each
 * with its own CURVE connection and a random routing id (a fresh identity
 * per attempt, as a client with the keys can make any number of them):
 *   hoard    3 identities ask for 100 shards each, after every shard ask
 *            again, heartbeat, and never answer;
 *   forge    results for the hoarders' shards: a guessed (sequential)
 *            lease id with a random token, no token at all, and the
 *            hoarder's real token sent from another identity (a leaked
 *            token), each answering "FORGED";
 *   autoid   a forged result from a connection without a routing id of
 *            its own (the ROUTER's own ids are guessable);
 *   flood    identities that take a shard with a valid lease and answer it
 *            with: an 8 MiB answer, 2000 token ids, a NaN log-probability,
 *            a token id past the vocabulary, 100 KB error reasons, errors
 *            for question ids outside the shard;
 * and then keeps the hoarders heartbeating until the coordinator says
 * NO_MORE to them, or SECONDS (default 90) pass.
 * Prints one line per attempt and, last, "hoard: most shards one identity
 * held: N" and "end: NO_MORE" (or "end: time limit").  The worker names
 * (rogue-hoard-N, rogue-forge-guess, ...) are what the coordinator logs.
 *
 * With --key (a job with an allow-list, job key worker_keys) it connects
 * with that keypair instead and only: takes a shard as "rogue-keyed" and
 * answers it with a NaN log-probability, then tries again as
 * "rogue-keyed-again" (a new routing id, the same key) for 5 s and prints
 * "again: N shards". */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <zmq.h>

#include "common/wire.h"

#define MAX_IDS 32
#define NHOARD 3

typedef struct Ident {
    char name[64];
    void *sock;
    int shards;             /* SHARDs received */
    int no_more;            /* NO_MORE received */
    Docmint__Envelope *last; /* the last SHARD */
    int hoard;              /* asks again after each shard */
} Ident;

static void *s_ctx;
static WireJoin s_join;
static Ident s_ids[MAX_IDS];
static int s_nids;
static double s_next_hb;

static void s_die(const char *what, const char *msg)
{
    fprintf(stderr, "rogue_worker: %s: %s\n", what, msg);
    exit(2);
}

static void s_send(Ident *id, Docmint__Envelope *e)
{
    DmErr err;
    e->worker = id->name;
    /* Never wait: a connection the coordinator refuses has no peer to
     * send to (such a message is simply not sent). */
    if (wire_send(id->sock, NULL, 0, e, ZMQ_DONTWAIT, &err) && zmq_errno() != EAGAIN)
        s_die(id->name, err.msg);
}

static void s_send_kind(Ident *id, int kind, uint32_t credit)
{
    Docmint__Envelope e;
    docmint__envelope__init(&e);
    e.kind = kind;
    e.credit = credit;
    s_send(id, &e);
}

/* A new identity: own connection, own random routing id (none when
 * autoid), HELLO with credit. */
static Ident *s_ident(const char *name, uint32_t credit, int autoid)
{
    if (s_nids == MAX_IDS)
        s_die(name, "too many identities");
    Ident *id = &s_ids[s_nids++];
    memset(id, 0, sizeof *id);
    snprintf(id->name, sizeof id->name, "%s", name);
    DmErr err;
    unsigned char rid[WIRE_ROUTING_ID_BYTES];
    id->sock = zmq_socket(s_ctx, ZMQ_DEALER);
    if (!id->sock || wire_socket_defaults(id->sock, &err) || wire_curve_client(id->sock, &s_join, &err))
        s_die(name, "socket");
    if (!autoid && (wire_routing_id_new(rid, &err) ||
                    zmq_setsockopt(id->sock, ZMQ_ROUTING_ID, rid, sizeof rid) != 0))
        s_die(name, "routing id");
    if (zmq_connect(id->sock, s_join.endpoint) != 0)
        s_die(name, zmq_strerror(zmq_errno()));
    s_send_kind(id, DOCMINT__ENVELOPE__KIND__HELLO, credit);
    return id;
}

/* Read what arrived and heartbeat, for ms milliseconds. */
static void s_pump(double seconds)
{
    double end = dm_now() + seconds;
    do {
        zmq_pollitem_t it[MAX_IDS];
        for (int i = 0; i < s_nids; i++)
            it[i] = (zmq_pollitem_t){s_ids[i].sock, 0, ZMQ_POLLIN, 0};
        double left = end - dm_now();
        zmq_poll(it, s_nids, left > 0.05 ? 50 : (long)(left * 1000) + 1);
        for (int i = 0; i < s_nids; i++) {
            Ident *id = &s_ids[i];
            for (;;) {
                Docmint__Envelope *e = NULL;
                DmErr err;
                if (wire_recv(id->sock, NULL, NULL, &e, ZMQ_DONTWAIT, &err) != 1)
                    break;
                if (e->kind == DOCMINT__ENVELOPE__KIND__NO_MORE)
                    id->no_more = 1;
                if (e->kind == DOCMINT__ENVELOPE__KIND__SHARD && e->shard) {
                    id->shards++;
                    if (id->last)
                        docmint__envelope__free_unpacked(id->last, NULL);
                    id->last = e;
                    e = NULL;
                    if (id->hoard)
                        s_send_kind(id, DOCMINT__ENVELOPE__KIND__REQUEST, 100);
                }
                if (e)
                    docmint__envelope__free_unpacked(e, NULL);
            }
        }
        if (dm_now() >= s_next_hb) {
            for (int i = 0; i < s_nids; i++)
                if (!s_ids[i].no_more)
                    s_send_kind(&s_ids[i], DOCMINT__ENVELOPE__KIND__HEARTBEAT, 0);
            s_next_hb = dm_now() + s_join.heartbeat_seconds;
        }
    } while (dm_now() < end);
}

/* A result for shard sh with one record per question, made by fill. */
typedef void (*Fill)(Docmint__Result *r, const Docmint__Shard *sh);

static void s_result(Ident *id, const Docmint__Shard *sh, uint64_t lease_id, const uint8_t *token,
                     size_t toklen, Fill fill)
{
    Docmint__Result r;
    docmint__result__init(&r);
    r.shard_id = sh->shard_id;
    r.lease_id = lease_id;
    r.lease_token.data = (uint8_t *)token;
    r.lease_token.len = toklen;
    fill(&r, sh);
    Docmint__Envelope e;
    docmint__envelope__init(&e);
    e.kind = DOCMINT__ENVELOPE__KIND__RESULT;
    e.credit = 1;
    e.result = &r;
    s_send(id, &e);
    for (size_t i = 0; i < r.n_answers; i++) {
        free(r.answers[i]->token_ids);
        if (r.answers[i]->answer && strcmp(r.answers[i]->answer, "FORGED"))
            free(r.answers[i]->answer);
        free(r.answers[i]);
    }
    for (size_t i = 0; i < r.n_errors; i++) {
        free(r.errors[i]->reason);
        free(r.errors[i]);
    }
    free(r.answers);
    free(r.errors);
}

static size_t s_nq(const Docmint__Shard *sh)
{
    size_t n = 0;
    for (size_t p = 0; p < sh->n_pages; p++)
        n += sh->pages[p]->n_questions;
    return n;
}

/* One answer per question; the first one shaped by how. */
static void s_answers(Docmint__Result *r, const Docmint__Shard *sh, int how)
{
    size_t n = s_nq(sh), k = 0;
    r->answers = calloc(n ? n : 1, sizeof *r->answers);
    for (size_t p = 0; p < sh->n_pages; p++)
        for (size_t q = 0; q < sh->pages[p]->n_questions; q++, k++) {
            Docmint__AnswerRecord *a = calloc(1, sizeof *a);
            docmint__answer_record__init(a);
            a->question_id = sh->pages[p]->questions[q]->question_id;
            a->answer = "FORGED";
            a->mean_logprob = -0.5f;
            a->page_id = sh->pages[p]->page_id;
            a->question = sh->pages[p]->questions[q]->text;
            if (k == 0 && how == 1) { /* 8 MiB of text */
                size_t big = (size_t)8 << 20;
                a->answer = malloc(big + 1);
                memset(a->answer, 'A', big);
                a->answer[big] = '\0';
            } else if (k == 0 && (how == 2 || how == 4)) { /* 2000 ids, or an id past the vocabulary */
                a->n_token_ids = how == 2 ? 2000 : 3;
                a->token_ids = calloc(a->n_token_ids, sizeof *a->token_ids);
                for (size_t t = 0; t < a->n_token_ids; t++)
                    a->token_ids[t] = how == 2 ? 5 : 1 << 30;
            } else if (k == 0 && how == 3) {
                a->mean_logprob = NAN;
            }
            r->answers[r->n_answers++] = a;
        }
}

/* One error record per question: 100 KB reasons, or ids outside. */
static void s_errors(Docmint__Result *r, const Docmint__Shard *sh, int outside)
{
    size_t n = s_nq(sh), k = 0;
    r->errors = calloc(n ? n : 1, sizeof *r->errors);
    for (size_t p = 0; p < sh->n_pages; p++)
        for (size_t q = 0; q < sh->pages[p]->n_questions; q++, k++) {
            Docmint__ErrorRecord *e = calloc(1, sizeof *e);
            docmint__error_record__init(e);
            e->question_id = outside ? (int64_t)1000000000000 + (int64_t)k
                                     : sh->pages[p]->questions[q]->question_id;
            e->stage = "infer";
            size_t len = outside ? 20 : 100000;
            e->reason = malloc(len + 1);
            memset(e->reason, 'E', len);
            e->reason[len] = '\0';
            r->errors[r->n_errors++] = e;
        }
}

static void s_fill_forged(Docmint__Result *r, const Docmint__Shard *sh) { s_answers(r, sh, 0); }
static void s_fill_big(Docmint__Result *r, const Docmint__Shard *sh) { s_answers(r, sh, 1); }
static void s_fill_ids(Docmint__Result *r, const Docmint__Shard *sh) { s_answers(r, sh, 2); }
static void s_fill_nan(Docmint__Result *r, const Docmint__Shard *sh) { s_answers(r, sh, 3); }
static void s_fill_vocab(Docmint__Result *r, const Docmint__Shard *sh) { s_answers(r, sh, 4); }
static void s_fill_reason(Docmint__Result *r, const Docmint__Shard *sh) { s_errors(r, sh, 0); }
static void s_fill_outside(Docmint__Result *r, const Docmint__Shard *sh) { s_errors(r, sh, 1); }

/* Wait (pumping) until id has a shard; 0 when it has one. */
static int s_wait_shard(Ident *id, double seconds)
{
    double end = dm_now() + seconds;
    while (!id->last && !id->no_more && dm_now() < end)
        s_pump(0.05);
    return id->last ? 0 : -1;
}

int main(int argc, char **argv)
{
    const char *key = argc == 5 && !strcmp(argv[3], "--key") ? argv[4] : NULL;
    if (argc < 2 || (argc > 3 && !key)) {
        fprintf(stderr, "usage: rogue_worker KEYS_FILE [SECONDS] [--key KEY_FILE]\n");
        return 2;
    }
    double limit = argc >= 3 ? atof(argv[2]) : 90;
    double t_end = dm_now() + limit;
    DmErr err;
    if (wire_join_read(argv[1], &s_join, &err))
        s_die(argv[1], err.msg);
    s_ctx = zmq_ctx_new();
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (key) {
        char kname[65];
        if (wire_key_file_read(key, kname, s_join.client_public, s_join.client_secret, &err))
            s_die(key, err.msg);
        Ident *id = s_ident("rogue-keyed", 1, 0);
        if (s_wait_shard(id, 30) != 0) {
            printf("keyed: no shard within 30 s\n");
            return 1;
        }
        const Docmint__Shard *sh = id->last->shard;
        s_result(id, sh, sh->lease_id, sh->lease_token.data, sh->lease_token.len, s_fill_nan);
        printf("keyed: %s answered shard %" PRIu64 " with a NaN\n", id->name, sh->shard_id);
        s_pump(1.0);
        Ident *again = s_ident("rogue-keyed-again", 1, 0);
        s_pump(5.0);
        printf("again: %d shards\n", again->shards);
        for (int i = 0; i < s_nids; i++) {
            if (s_ids[i].last)
                docmint__envelope__free_unpacked(s_ids[i].last, NULL);
            zmq_close(s_ids[i].sock);
        }
        zmq_ctx_term(s_ctx);
        return 0;
    }

    /* hoard */
    Ident *hoard[NHOARD];
    for (int h = 0; h < NHOARD; h++) {
        char name[32];
        snprintf(name, sizeof name, "rogue-hoard-%d", h);
        hoard[h] = s_ident(name, 100, 0);
        hoard[h]->hoard = 1;
    }
    Ident *victim = NULL;
    for (double end = dm_now() + 20; !victim && dm_now() < end;) {
        s_pump(0.1);
        for (int h = 0; h < NHOARD && !victim; h++)
            if (hoard[h]->last)
                victim = hoard[h];
    }
    if (!victim) {
        printf("hoard: no shard within 20 s\n");
        return 1;
    }
    const Docmint__Shard *vs = victim->last->shard;
    printf("hoard: %s holds shard %" PRIu64 " (lease %" PRIu64 ")\n", victim->name, vs->shard_id,
           vs->lease_id);

    /* forge: the victim's shard, from other identities */
    uint8_t guess[16];
    if (getrandom(guess, sizeof guess, 0) != (ssize_t)sizeof guess)
        s_die("getrandom", strerror(errno));
    Ident *f = s_ident("rogue-forge-guess", 0, 0);
    s_pump(0.3);
    s_result(f, vs, vs->lease_id, guess, sizeof guess, s_fill_forged);
    printf("forge: %s sent a result for shard %" PRIu64 " with lease %" PRIu64
           " and a guessed token\n", f->name, vs->shard_id, vs->lease_id);
    f = s_ident("rogue-forge-notoken", 0, 0);
    s_pump(0.3);
    for (uint64_t l = 1; l <= 8; l++) /* sequential lease ids, no token */
        s_result(f, vs, l, NULL, 0, s_fill_forged);
    printf("forge: %s sent results for shard %" PRIu64 " with lease ids 1..8 and no token\n",
           f->name, vs->shard_id);
    f = s_ident("rogue-forge-replay", 0, 0);
    s_pump(0.3);
    s_result(f, vs, vs->lease_id, vs->lease_token.data, vs->lease_token.len, s_fill_forged);
    printf("forge: %s sent a result for shard %" PRIu64 " with %s's own token\n", f->name,
           vs->shard_id, victim->name);
    f = s_ident("rogue-autoid", 0, 1);
    s_pump(0.3);
    s_result(f, vs, vs->lease_id, vs->lease_token.data, vs->lease_token.len, s_fill_forged);
    printf("forge: %s (no routing id of its own) sent a result for shard %" PRIu64 "\n", f->name,
           vs->shard_id);

    /* flood: each with a lease of its own */
    static const struct {
        const char *name;
        Fill fill;
    } floods[] = {{"rogue-flood-big", s_fill_big},       {"rogue-flood-ids", s_fill_ids},
                  {"rogue-flood-nan", s_fill_nan},       {"rogue-flood-vocab", s_fill_vocab},
                  {"rogue-flood-reason", s_fill_reason}, {"rogue-flood-outside", s_fill_outside}};
    for (size_t k = 0; k < sizeof floods / sizeof floods[0]; k++) {
        Ident *id = s_ident(floods[k].name, 1, 0);
        if (s_wait_shard(id, 20) != 0) {
            printf("flood: %s got no shard within 20 s\n", id->name);
            continue;
        }
        const Docmint__Shard *sh = id->last->shard;
        s_result(id, sh, sh->lease_id, sh->lease_token.data, sh->lease_token.len, floods[k].fill);
        printf("flood: %s answered shard %" PRIu64 " (%zu questions)\n", id->name, sh->shard_id,
               s_nq(sh));
    }

    /* keep hoarding until the job ends */
    int ended = 0;
    while (!ended && dm_now() < t_end) {
        s_pump(0.2);
        ended = 1;
        for (int h = 0; h < NHOARD; h++)
            ended &= hoard[h]->no_more;
    }
    int most = 0;
    for (int h = 0; h < NHOARD; h++)
        if (hoard[h]->shards > most)
            most = hoard[h]->shards;
    printf("hoard: most shards one identity held: %d\n", most);
    printf("end: %s\n", ended ? "NO_MORE" : "time limit");
    for (int i = 0; i < s_nids; i++) {
        if (s_ids[i].last)
            docmint__envelope__free_unpacked(s_ids[i].last, NULL);
        zmq_close(s_ids[i].sock);
    }
    zmq_ctx_term(s_ctx);
    return 0;
}
