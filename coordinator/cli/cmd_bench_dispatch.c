/* cmd_bench_dispatch.c - `docmint bench-dispatch`: the coordinator's own
 * overhead, measured with no-op workers.
 *
 * Writes a JSON lines corpus of N questions (Q per page; the page images
 * need not exist: the no-op workers never open them), a job file and, unless
 * --model names one, a tiny random-weight checkpoint (the coordinator loads
 * the model once at start to check it).  Then it runs the real coordinator
 * (dispatch_open / dispatch_run, as `docmint run` does) in this process
 * with W worker threads that join like external workers: each reads
 * OUTPUT/worker.keys, connects a CURVE DEALER over TCP loopback with its own
 * ZeroMQ context and a random routing id, sends HELLO with the job's credit, answers every SHARD at
 * once with one AnswerRecord per question (empty answer, no compute) and a
 * credit of 1, heartbeats, and stops on NO_MORE.
 *
 * Timed: from the first SHARD any worker receives to dispatch_run's return
 * (every record committed).  Reported: questions dispatched and stored per
 * second, the store's write rate (records/s and MB/s of record bytes), and
 * a check that the store holds exactly N records and no errors.  The last
 * line of stdout is one JSON object with the same figures. */
#define _GNU_SOURCE /* mkdtemp, nftw */
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "coordinator/cli/commands.h"
#include "coordinator/dispatch.h"
#include "common/store.h"
#include "common/wire.h"

#define PREFIX "docmint bench-dispatch"

static volatile sig_atomic_t s_stop;

static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: docmint bench-dispatch [--questions N] [--per-page Q] [--workers W]\n"
            "                              [--commit-every C] [--credit K] [--pages-per-shard P]\n"
            "                              [--model DIR] [--config CONFIG.json] [--dir DIR]\n"
            "  the coordinator's own overhead: the real coordinator of `docmint run` with W no-op\n"
            "  worker threads (CURVE DEALERs over loopback TCP, joined through OUTPUT/worker.keys)\n"
            "  that answer every shard at once with empty answers\n"
            "  --questions N        questions in the generated corpus (default 100000)\n"
            "  --per-page Q         questions per page (default 8; pages = N/Q, rounded up)\n"
            "  --workers W          no-op worker threads (default 2)\n"
            "  --commit-every C     records per store transaction (default: the job default)\n"
            "  --credit K           shards a worker may hold (default: the job default)\n"
            "  --pages-per-shard P  pages per shard (default: the job default)\n"
            "  --model DIR          checkpoint the coordinator checks (default: a tiny random one\n"
            "                       written with --config, default jobs/configs/tiny.json)\n"
            "  --dir DIR            work folder, kept (default: a temporary folder, removed)\n");
}

/* ------------------------------------------------------- no-op workers */

typedef struct NoopWorker {
    int index;
    char keys[4096];
    atomic_int *stop;  /* the coordinator ended */
    double first_shard;/* dm_now() of the first SHARD received; 0: none */
    uint64_t shards, answers;
    int failed;
    DmErr err;
    pthread_t th;
} NoopWorker;

static int s_send(void *sock, Docmint__Envelope *e, DmErr *err)
{
    return wire_send(sock, NULL, 0, e, 0, err);
}

/* A RESULT for the shard: one empty AnswerRecord per question. */
static int s_answer_shard(NoopWorker *w, void *sock, const char *name, const Docmint__Shard *sh,
                          DmErr *err)
{
    size_t nq = 0;
    for (size_t p = 0; p < sh->n_pages; p++)
        nq += sh->pages[p]->n_questions;
    Docmint__AnswerRecord *recs = calloc(nq ? nq : 1, sizeof *recs);
    Docmint__AnswerRecord **ptrs = calloc(nq ? nq : 1, sizeof *ptrs);
    if (!recs || !ptrs) {
        free(recs);
        free(ptrs);
        return dm_err(err, "out of memory");
    }
    size_t k = 0;
    for (size_t p = 0; p < sh->n_pages; p++) {
        const Docmint__Page *pg = sh->pages[p];
        for (size_t q = 0; q < pg->n_questions; q++, k++) {
            docmint__answer_record__init(&recs[k]);
            recs[k].question_id = pg->questions[q]->question_id;
            recs[k].answer = "";
            recs[k].page_id = pg->page_id;
            recs[k].question = pg->questions[q]->text;
            ptrs[k] = &recs[k];
        }
    }
    Docmint__Result res;
    docmint__result__init(&res);
    res.shard_id = sh->shard_id;
    res.lease_id = sh->lease_id;
    res.lease_token = sh->lease_token;
    res.n_answers = nq;
    res.answers = ptrs;
    Docmint__Envelope out;
    docmint__envelope__init(&out);
    out.kind = DOCMINT__ENVELOPE__KIND__RESULT;
    out.credit = 1;
    out.result = &res;
    out.worker = (char *)name;
    int rc = s_send(sock, &out, err);
    free(recs);
    free(ptrs);
    if (rc == 0) {
        w->shards++;
        w->answers += nq;
    }
    return rc;
}

static void *s_worker(void *arg)
{
    NoopWorker *w = arg;
    DmErr *err = &w->err;
    WireJoin join;
    void *ctx = NULL, *sock = NULL;
    char name[64];
    snprintf(name, sizeof name, "noop%d", w->index);
    /* The keys file is written by dispatch_open, before this thread starts. */
    if (wire_join_read(w->keys, &join, err))
        goto fail;
    ctx = zmq_ctx_new();
    if (!ctx) {
        dm_err(err, "zmq_ctx_new failed");
        goto fail;
    }
    sock = zmq_socket(ctx, ZMQ_DEALER);
    if (!sock) {
        dm_err(err, "zmq_socket: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    unsigned char rid[WIRE_ROUTING_ID_BYTES];
    if (wire_socket_defaults(sock, err) || wire_curve_client(sock, &join, err) ||
        wire_routing_id_new(rid, err))
        goto fail;
    if (zmq_setsockopt(sock, ZMQ_ROUTING_ID, rid, sizeof rid) != 0) {
        dm_err(err, "ZMQ_ROUTING_ID: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (zmq_connect(sock, join.endpoint) != 0) {
        dm_err(err, "%s: connect %s: %s", w->keys, join.endpoint, zmq_strerror(zmq_errno()));
        goto fail;
    }
    Docmint__Envelope hello;
    docmint__envelope__init(&hello);
    hello.kind = DOCMINT__ENVELOPE__KIND__HELLO;
    hello.credit = (uint32_t)(join.credit > 0 ? join.credit : 1);
    hello.worker = name;
    if (s_send(sock, &hello, err))
        goto fail;
    double hb = join.heartbeat_seconds > 0 ? join.heartbeat_seconds : 1.0;
    double next_hb = dm_now() + hb;
    while (!atomic_load(w->stop)) {
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        double wait = next_hb - dm_now();
        long ms = wait > 0 ? (long)(wait * 1000) + 1 : 0;
        if (ms > 100)
            ms = 100; /* look at the stop flag now and then */
        int n = zmq_poll(&it, 1, ms);
        if (n < 0 && zmq_errno() != EINTR) {
            dm_err(err, "zmq_poll: %s", zmq_strerror(zmq_errno()));
            goto fail;
        }
        for (;;) {
            Docmint__Envelope *e = NULL;
            int got = wire_recv(sock, NULL, NULL, &e, ZMQ_DONTWAIT, err);
            if (got < 0)
                goto fail;
            if (got == 0) {
                if (e)
                    docmint__envelope__free_unpacked(e, NULL);
                break;
            }
            int kind = e->kind, rc = 0;
            if (kind == DOCMINT__ENVELOPE__KIND__SHARD && e->shard) {
                if (w->first_shard == 0)
                    w->first_shard = dm_now();
                rc = s_answer_shard(w, sock, name, e->shard, err);
            }
            docmint__envelope__free_unpacked(e, NULL);
            if (rc)
                goto fail;
            if (kind == DOCMINT__ENVELOPE__KIND__NO_MORE)
                goto done;
        }
        if (dm_now() >= next_hb) {
            Docmint__Envelope h;
            docmint__envelope__init(&h);
            h.kind = DOCMINT__ENVELOPE__KIND__HEARTBEAT;
            h.worker = name;
            if (s_send(sock, &h, err))
                goto fail;
            next_hb = dm_now() + hb;
        }
    }
done:
    zmq_close(sock);
    zmq_ctx_term(ctx);
    memset(&join, 0, sizeof join);
    return NULL;
fail:
    w->failed = 1;
    if (sock)
        zmq_close(sock);
    if (ctx)
        zmq_ctx_term(ctx);
    memset(&join, 0, sizeof join);
    return NULL;
}

/* The coordinator polls this: a failed no-op worker ends the run. */
static int s_failed(void *ctx, DmErr *err)
{
    NoopWorker *ws = ctx;
    for (int i = 0; ws[i].index >= 0; i++)
        if (ws[i].failed) {
            dm_err(err, "no-op worker %d: %s", i, ws[i].err.msg);
            return 1;
        }
    return 0;
}

/* ------------------------------------------------------------- the files */

static int s_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int s_write_corpus(const char *path, long n, int per_page, DmErr *err)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return dm_err_errno(err, "%s: cannot create", path);
    for (long i = 0; i < n; i++)
        fprintf(f,
                "{\"questionId\": %ld, \"question\": \"what is the value of item %ld?\", "
                "\"image\": \"pages/page%06ld.png\", \"answers\": [\"%ld\"]}\n",
                i, i % per_page, i / per_page, i);
    if (fclose(f) != 0)
        return dm_err_errno(err, "%s: write failed", path);
    return 0;
}

static int s_write_job(const char *path, const char *model, const char *corpus, const char *out,
                       int commit_every, int credit, int pps, DmErr *err)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return dm_err_errno(err, "%s: cannot create", path);
    fprintf(f,
            "{\"model\": \"%s\", \"output\": \"%s\",\n"
            " \"corpus\": {\"path\": \"%s\", \"format\": \"jsonl\"},\n"
            " \"endpoint\": \"tcp://127.0.0.1:0\", \"quiet\": true",
            model, out, corpus);
    if (commit_every > 0)
        fprintf(f, ", \"commit_every\": %d", commit_every);
    if (credit > 0)
        fprintf(f, ", \"credit\": %d", credit);
    if (pps > 0)
        fprintf(f, ", \"pages_per_shard\": %d", pps);
    fprintf(f, "}\n");
    if (fclose(f) != 0)
        return dm_err_errno(err, "%s: write failed", path);
    return 0;
}

typedef struct Bytes {
    uint64_t key, val, n;
} Bytes;

static int s_count_bytes(void *ctx, const void *key, size_t klen, const void *val, size_t vlen)
{
    (void)key;
    (void)val;
    Bytes *b = ctx;
    b->key += klen;
    b->val += vlen;
    b->n++;
    return 0;
}

/* Every record of a store copied out, to write them again elsewhere. */
typedef struct Copy {
    unsigned char *buf;
    size_t len, cap;
    StoreItem *items;
    size_t n, capn;
    int oom;
} Copy;

static int s_copy(void *ctx, const void *key, size_t klen, const void *val, size_t vlen)
{
    Copy *c = ctx;
    if (c->len + klen + vlen > c->cap) {
        size_t cap = c->cap ? c->cap : 1 << 20;
        while (cap < c->len + klen + vlen)
            cap *= 2;
        unsigned char *b = realloc(c->buf, cap);
        if (!b) {
            c->oom = 1;
            return 1;
        }
        c->buf = b;
        c->cap = cap;
    }
    if (c->n == c->capn) {
        size_t cap = c->capn ? 2 * c->capn : 1024;
        StoreItem *v = realloc(c->items, cap * sizeof *v);
        if (!v) {
            c->oom = 1;
            return 1;
        }
        c->items = v;
        c->capn = cap;
    }
    /* Offsets now, pointers once the buffer stops moving. */
    c->items[c->n++] = (StoreItem){STORE_RECORDS, (void *)(uintptr_t)c->len, klen,
                                   (void *)(uintptr_t)(c->len + klen), vlen};
    memcpy(c->buf + c->len, key, klen);
    memcpy(c->buf + c->len + klen, val, vlen);
    c->len += klen + vlen;
    return 0;
}

/* The store alone: the run's records written again into a fresh store at
 * path, `batch` per transaction.  Returns the seconds taken, -1 on error. */
static double s_store_alone(Store *from, const char *path, int batch, DmErr *err)
{
    Copy c = {0};
    double secs = -1;
    Store *to = NULL;
    if (store_foreach(from, STORE_RECORDS, s_copy, &c, err) < 0)
        goto done;
    if (c.oom) {
        dm_err(err, "out of memory copying the records");
        goto done;
    }
    for (size_t i = 0; i < c.n; i++) {
        c.items[i].key = c.buf + (uintptr_t)c.items[i].key;
        c.items[i].val = c.buf + (uintptr_t)c.items[i].val;
    }
    if (store_open(path, STORE_WRITE, &to, err) < 0)
        goto done;
    double t0 = dm_now();
    for (size_t i = 0; i < c.n; i += (size_t)batch) {
        int n = c.n - i < (size_t)batch ? (int)(c.n - i) : batch;
        if (store_put_batch(to, c.items + i, n, err))
            goto done;
    }
    secs = dm_now() - t0;
done:
    store_close(&to);
    free(c.buf);
    free(c.items);
    return secs;
}

/* ------------------------------------------------------------------ run */

static int s_int_arg(const char *opt, const char *v, long lo, long *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || end == v || x < lo) {
        fprintf(stderr, "%s: %s %s: expected an integer >= %ld\n", PREFIX, opt, v, lo);
        return -1;
    }
    *out = x;
    return 0;
}

int cmd_bench_dispatch(int argc, char **argv)
{
    long nq = 100000, per_page = 8, nworkers = 2, commit_every = 0, credit = 0, pps = 0;
    const char *model = NULL, *config = "jobs/configs/tiny.json", *dir_arg = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        long *dst = !strcmp(a, "--questions")         ? &nq
                    : !strcmp(a, "--per-page")        ? &per_page
                    : !strcmp(a, "--workers")         ? &nworkers
                    : !strcmp(a, "--commit-every")    ? &commit_every
                    : !strcmp(a, "--credit")          ? &credit
                    : !strcmp(a, "--pages-per-shard") ? &pps
                                                      : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            s_usage(stdout);
            return 0;
        } else if (dst && i + 1 < argc) {
            if (s_int_arg(a, argv[i + 1], 1, dst))
                return 2;
            i++;
        } else if (!strcmp(a, "--model") && i + 1 < argc) {
            model = argv[++i];
        } else if (!strcmp(a, "--config") && i + 1 < argc) {
            config = argv[++i];
        } else if (!strcmp(a, "--dir") && i + 1 < argc) {
            dir_arg = argv[++i];
        } else {
            fprintf(stderr, "%s: unknown or incomplete argument %s (see --help)\n", PREFIX, a);
            return 2;
        }
    }
    if (nworkers > 256) {
        fprintf(stderr, "%s: --workers %ld: at most 256\n", PREFIX, nworkers);
        return 2;
    }

    DmErr err = {{0}};
    int rc = 1, made_dir = 0, interrupted = 0;
    char dir[4096], corpus[4200], job[4200], out[4200], keys[4300], model_dir[4200];
    NoopWorker *ws = NULL;
    atomic_int stop;
    atomic_init(&stop, 0);
    void *zctx = NULL;
    Dispatch *d = NULL;
    int started = 0;

    /* The work folder. */
    if (dir_arg) {
        if (mkdir(dir_arg, 0777) != 0 && errno != EEXIST) {
            fprintf(stderr, "%s: --dir %s: %s\n", PREFIX, dir_arg, strerror(errno));
            return 1;
        }
        if (!realpath(dir_arg, dir)) {
            fprintf(stderr, "%s: --dir %s: %s\n", PREFIX, dir_arg, strerror(errno));
            return 1;
        }
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/docmint-bench-dispatch-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(dir)) {
            fprintf(stderr, "%s: %s: cannot create a temporary folder: %s\n", PREFIX, dir,
                    strerror(errno));
            return 1;
        }
        made_dir = 1;
    }
    snprintf(corpus, sizeof corpus, "%s/questions.jsonl", dir);
    snprintf(job, sizeof job, "%s/job.json", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(keys, sizeof keys, "%s/worker.keys", out);
    if (dir_arg) {
        /* A fresh store each run: a kept one would already hold the corpus. */
        nftw(out, s_rm, 16, FTW_DEPTH | FTW_PHYS);
    }

    /* The model the coordinator checks. */
    if (model) {
        if (!realpath(model, model_dir)) {
            dm_err_errno(&err, "--model %s", model);
            goto fail;
        }
    } else {
        snprintf(model_dir, sizeof model_dir, "%s/model", dir);
        struct stat st;
        if (stat(config, &st) != 0) {
            dm_err_errno(&err, "--config %s", config);
            goto fail;
        }
        char *init_argv[] = {"init", model_dir, "--config", (char *)config, "--seed", "1", NULL};
        fflush(stdout);
        int saved = dup(STDOUT_FILENO);
        FILE *devnull = fopen("/dev/null", "w");
        if (devnull && saved >= 0)
            dup2(fileno(devnull), STDOUT_FILENO);
        int irc = cmd_init(6, init_argv);
        fflush(stdout);
        if (saved >= 0) {
            dup2(saved, STDOUT_FILENO);
            close(saved);
        }
        if (devnull)
            fclose(devnull);
        if (irc != 0) {
            dm_err(&err, "%s: writing the tiny model from %s failed (see above)", model_dir, config);
            goto fail;
        }
    }

    double t0 = dm_now();
    if (s_write_corpus(corpus, nq, (int)per_page, &err) ||
        s_write_job(job, model_dir, corpus, out, (int)commit_every, (int)credit, (int)pps, &err))
        goto fail;
    double t_files = dm_now() - t0;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    zctx = zmq_ctx_new();
    if (!zctx) {
        dm_err(&err, "zmq_ctx_new failed");
        goto fail;
    }
    WireJoin join;
    memset(&join, 0, sizeof join);
    DispatchOpts o = {0};
    o.job_path = job;
    o.quiet = 1;
    o.log_prefix = PREFIX;
    o.zctx = zctx;
    o.stop = &s_stop;
    double t_open0 = dm_now();
    if (dispatch_open(&o, &d, &join, &err))
        goto fail;
    double t_open = dm_now() - t_open0;
    memset(&join, 0, sizeof join);
    if (dispatch_todo(d) != nq) {
        dm_err(&err, "%s: the coordinator plans %" PRId64 " questions, expected %ld", job,
               dispatch_todo(d), nq);
        goto fail;
    }

    ws = calloc((size_t)nworkers + 1, sizeof *ws);
    if (!ws) {
        dm_err(&err, "out of memory");
        goto fail;
    }
    ws[nworkers].index = -1; /* end mark for s_failed */
    for (long i = 0; i < nworkers; i++) {
        ws[i].index = (int)i;
        snprintf(ws[i].keys, sizeof ws[i].keys, "%s", keys);
        ws[i].stop = &stop;
    }
    for (long i = 0; i < nworkers; i++) {
        if (pthread_create(&ws[i].th, NULL, s_worker, &ws[i]) != 0) {
            dm_err(&err, "cannot start no-op worker thread %ld", i);
            atomic_store(&stop, 1);
            for (long k = 0; k < i; k++)
                pthread_join(ws[k].th, NULL);
            goto fail;
        }
        started++;
    }
    dispatch_set_failed(d, s_failed, ws);
    int run_rc = dispatch_run(d, &interrupted, &err);
    double t_end = dm_now();
    atomic_store(&stop, 1);
    for (int i = 0; i < started; i++)
        pthread_join(ws[i].th, NULL);
    started = 0;
    if (run_rc)
        goto fail;

    DispatchStats st = *dispatch_stats(d);
    dispatch_close(&d);
    zmq_ctx_term(zctx);
    zctx = NULL;

    double first = 0;
    uint64_t shards = 0, answers = 0;
    for (long i = 0; i < nworkers; i++) {
        if (ws[i].first_shard > 0 && (first == 0 || ws[i].first_shard < first))
            first = ws[i].first_shard;
        shards += ws[i].shards;
        answers += ws[i].answers;
    }
    double secs = first > 0 ? t_end - first : 0;

    /* The store as a reader sees it. */
    Store *s = NULL;
    uint64_t nrec = 0, nerr = 0, map_bytes = 0, used_bytes = 0;
    Bytes b = {0};
    if (store_open(out, STORE_READ, &s, &err) < 0 || store_count(s, STORE_RECORDS, &nrec, &err) < 0 ||
        store_count(s, STORE_ERRORS, &nerr, &err) < 0 ||
        store_foreach(s, STORE_RECORDS, s_count_bytes, &b, &err) < 0 ||
        store_sizes(s, &map_bytes, &used_bytes, &err) < 0) {
        store_close(&s);
        goto fail;
    }
    /* The job default of commit_every (schemas/job.schema.json) */
    int batch = commit_every > 0 ? (int)commit_every : 256;
    char raw[4300];
    snprintf(raw, sizeof raw, "%s/store-alone", dir);
    nftw(raw, s_rm, 16, FTW_DEPTH | FTW_PHYS);
    double raw_secs = s_store_alone(s, raw, batch, &err);
    store_close(&s);
    nftw(raw, s_rm, 16, FTW_DEPTH | FTW_PHYS);
    if (raw_secs < 0)
        goto fail;
    if (nrec != (uint64_t)nq || nerr != 0) {
        dm_err(&err, "%s: the store holds %" PRIu64 " records and %" PRIu64 " errors, expected %ld "
                     "records and no errors",
               out, nrec, nerr, nq);
        goto fail;
    }

    double qps = secs > 0 ? (double)nq / secs : 0;
    double mbps = secs > 0 ? (double)(b.key + b.val) / secs / 1e6 : 0;
    long pages = (nq + per_page - 1) / per_page;
    char ce[32] = "default";
    if (commit_every > 0)
        snprintf(ce, sizeof ce, "%ld", commit_every);
    printf("%s: %ld questions on %ld pages, %ld no-op workers, %" PRIu64 " shards, "
           "commit_every %s\n",
           PREFIX, nq, pages, nworkers, shards, ce);
    printf("  setup: corpus + job %.2f s, dispatch_open (corpus, model check, store, keys) %.2f s\n",
           t_files, t_open);
    printf("  first shard -> store complete: %.3f s\n", secs);
    printf("  dispatched and stored: %.0f questions/s (%.0f shards/s; dispatched %" PRId64
           ", dropped %" PRId64 ", expired leases %" PRId64 ")\n",
           qps, secs > 0 ? (double)shards / secs : 0, st.dispatched, st.dropped, st.expired);
    printf("  store writes: %.0f records/s, %.2f MB/s of record bytes (%" PRIu64 " records, "
           "%.1f MB keys+values, %.0f B each; LMDB used %.1f MB)\n",
           qps, mbps, nrec, (double)(b.key + b.val) / 1e6,
           nrec ? (double)(b.key + b.val) / (double)nrec : 0.0, (double)used_bytes / 1e6);
    printf("  the store alone (the same records into a fresh store, %d per transaction): "
           "%.0f records/s, %.2f MB/s\n",
           batch, raw_secs > 0 ? (double)nrec / raw_secs : 0,
           raw_secs > 0 ? (double)(b.key + b.val) / raw_secs / 1e6 : 0);
    printf("  check: the store holds exactly %" PRIu64 " records, %" PRIu64 " errors: ok\n", nrec,
           nerr);
    printf("{\"bench\":\"dispatch\",\"questions\":%ld,\"per_page\":%ld,\"workers\":%ld,"
           "\"shards\":%" PRIu64 ",\"commit_every\":%ld,\"seconds\":%.4f,\"questions_per_s\":%.1f,"
           "\"store_records_per_s\":%.1f,\"store_mb_per_s\":%.3f,\"record_bytes\":%" PRIu64
           ",\"store_alone_records_per_s\":%.1f,\"store_alone_mb_per_s\":%.3f,\"records\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"dispatched\":%" PRId64
           ",\"dropped\":%" PRId64 ",\"answers_sent\":%" PRIu64 "}\n",
           nq, per_page, nworkers, shards, commit_every, secs, qps, qps, mbps,
           b.key + b.val, raw_secs > 0 ? (double)nrec / raw_secs : 0,
           raw_secs > 0 ? (double)(b.key + b.val) / raw_secs / 1e6 : 0, nrec, nerr, st.dispatched, st.dropped, answers);
    rc = 0;
    goto end;
fail:
    if (interrupted || s_stop)
        fprintf(stderr, "%s: interrupted\n", PREFIX);
    else
        fprintf(stderr, "%s: %s\n", PREFIX, err.msg);
    rc = 1;
end:
    if (started) {
        atomic_store(&stop, 1);
        for (int i = 0; i < started; i++)
            pthread_join(ws[i].th, NULL);
    }
    free(ws);
    dispatch_close(&d);
    if (zctx)
        zmq_ctx_term(zctx);
    if (made_dir)
        nftw(dir, s_rm, 16, FTW_DEPTH | FTW_PHYS);
    return rc;
}
